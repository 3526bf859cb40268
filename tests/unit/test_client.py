"""The Python client (cluster.client) against a fake node that speaks just enough of docs/api.md.

The fake keeps siblings the way a dotted-version-vector store does, in miniature: its context
token "W.S" says the session saw every write up to number W, and a write replaces exactly the
siblings its context covers (the others stay beside it). Faults are scripted per request:
a status to answer with, or "drop" to close the connection before answering.
"""

import asyncio
import base64
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import unquote_to_bytes

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDict

from cluster.client import (
    AsyncClient,
    BadRequest,
    Client,
    Conflict,
    IdempotencyMismatch,
    NotFound,
    OutcomeUnknown,
    PreconditionFailed,
    ProtocolError,
    ServerError,
    SiblingsPresent,
    TitraError,
    TooLarge,
    Unauthorized,
    Unavailable,
    UnsupportedMediaType,
)
from cluster.client_wire import Reply, parse_siblings
from cluster.limits import ClientDefaults

# Retries as in production, backoff shrunk so that a test's retries take milliseconds.
FAST = ClientDefaults(retry_backoff_ms=1, retry_backoff_ms_max=1)
NO_RETRIES = ClientDefaults(write_retries_max=0, read_retries_max=0, retry_backoff_ms=1, retry_backoff_ms_max=1)

ERROR_CODES = {
    400: "invalid_consistency",
    401: "unauthorized",
    409: "siblings_limit",
    412: "precondition_failed",
    413: "value_too_large",
    415: "unsupported_media_type",
    422: "idempotency_mismatch",
    500: "internal",
    503: "unavailable",
    504: "timeout",
}


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, str]
    headers: CIMultiDict[str]
    body: bytes


@dataclass
class Stored:
    value: bytes
    content_type: str
    timestamp: str
    write: int  # the fake's write number that made it


@dataclass
class FakeNode:
    node_id: str = "n1"
    url: str = ""
    seen: list[Seen] = field(default_factory=list)
    script: list[int | str] = field(default_factory=list)  # the next requests' faults, in order
    keys: dict[tuple[str, bytes], list[Stored]] = field(default_factory=dict)
    keyspaces: dict[str, dict[str, object]] = field(
        default_factory=lambda: {"default": {"n": 3, "resolution": "siblings"}}
    )
    outcomes: dict[str, tuple[tuple[object, ...], int]] = field(
        default_factory=dict
    )  # Idempotency-Key -> (request, status)
    siblings_as_json: bool = False
    writes: int = 0
    serial: int = 0

    def kv_requests(self, method: str) -> list[Seen]:
        return [seen for seen in self.seen if seen.method == method and seen.path.startswith("/v1/kv/")]

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self.record_and_fault])
        app.router.add_route("*", "/v1/kv/{keyspace}/{key:.+}", self.kv)
        app.router.add_get("/v1/kv/{keyspace}", self.listing)
        app.router.add_put("/v1/keyspaces/{name}", self.create_keyspace)
        app.router.add_get("/v1/status", self.status)
        app.router.add_get("/health/ready", self.ready)
        return app

    @web.middleware
    async def record_and_fault(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        body = await request.read()
        path = request.raw_path.split("?")[0]
        self.seen.append(Seen(request.method, path, dict(request.query), CIMultiDict(request.headers), body))
        fault = self.script.pop(0) if self.script else None
        if fault == "drop":
            assert request.transport is not None
            request.transport.close()
            return web.Response(status=204)
        if isinstance(fault, int):
            extra = {"acknowledged": 1, "required": 2} if fault == 504 else {}
            error = {"error": {"code": ERROR_CODES[fault], "message": f"scripted {fault}"}, **extra}
            return web.json_response(error, status=fault, headers=self.receipt(request))
        return await handler(request)

    def receipt(self, request: web.Request) -> dict[str, str]:
        self.serial += 1
        level = request.query.get("consistency", "quorum")
        return {
            "Titra-Context": f"{self.writes}.{self.serial}",
            "Titra-Consistency-Requested": level + (f";w={request.query['w']}" if "w" in request.query else ""),
            "Titra-Consistency-Achieved": level,
            "Titra-Replicas": f"{self.node_id}, n2",
            "Titra-Fallbacks": "",
            "Titra-Timestamp": f"1700000000000.{self.writes}",
            "Titra-Coordinator": self.node_id,
        }

    def error(self, request: web.Request, status: int, code: str) -> web.Response:
        return web.json_response(
            {"error": {"code": code, "message": f"{code}!"}}, status=status, headers=self.receipt(request)
        )

    async def kv(self, request: web.Request) -> web.Response:
        keyspace = request.match_info["keyspace"]
        if keyspace not in self.keyspaces:
            return self.error(request, 404, "keyspace_not_found")
        key = (keyspace, unquote_to_bytes(request.raw_path.split("?")[0].split("/", 4)[4]))
        if request.method == "GET":
            return self.read(request, self.keys.get(key, []))
        idempotency_key = request.headers.get("Idempotency-Key", "")
        digest = (request.method, request.raw_path, await request.read(), request.headers.get("Titra-Context"))
        if idempotency_key in self.outcomes:
            first, status = self.outcomes[idempotency_key]
            if first != digest:
                return self.error(request, 422, "idempotency_mismatch")
            return web.Response(status=status, headers=self.receipt(request))  # the first outcome, not applied again
        status = self.write(request, key, await request.read())
        self.outcomes[idempotency_key] = (digest, status)
        if status == 412:
            return self.error(request, 412, "precondition_failed")
        return web.Response(status=status, headers=self.receipt(request))

    def write(self, request: web.Request, key: tuple[str, bytes], value: bytes) -> int:
        current = self.keys.get(key, [])
        seen_writes = int(request.headers.get("Titra-Context", "0.0").split(".")[0])
        if request.headers.get("If-None-Match") == "*" and current:
            return 412
        if "If-Match" in request.headers and any(
            s.write > int(request.headers["If-Match"].split(".")[0]) for s in current
        ):
            return 412
        self.writes += 1
        kept = [s for s in current if s.write > seen_writes]  # concurrent with this write: siblings
        if request.method == "PUT":
            content_type = request.headers.get("Content-Type", "application/octet-stream")
            kept.append(Stored(value, content_type, f"1700000000000.{self.writes}", self.writes))
        self.keys[key] = kept
        return 204

    def read(self, request: web.Request, siblings: list[Stored]) -> web.Response:
        if not siblings:
            return self.error(request, 404, "key_not_found")
        if len(siblings) == 1:
            return web.Response(
                body=siblings[0].value, headers={**self.receipt(request), "Content-Type": siblings[0].content_type}
            )
        if self.siblings_as_json:
            items = [
                {
                    "value_base64": base64.b64encode(s.value).decode(),
                    "content_type": s.content_type,
                    "timestamp": s.timestamp,
                }
                for s in siblings
            ]
            return web.json_response({"siblings": items}, status=300, headers=self.receipt(request))
        with aiohttp.MultipartWriter("mixed", boundary="sibling-boundary") as parts:
            for s in siblings:
                parts.append(s.value, {"Content-Type": s.content_type, "Titra-Timestamp": s.timestamp})
        return web.Response(status=300, body=parts, headers=self.receipt(request))

    async def listing(self, request: web.Request) -> web.Response:
        keyspace, prefix = request.match_info["keyspace"], request.query.get("prefix", "")
        limit, after = int(request.query.get("limit", "100")), request.query.get("cursor", "")
        names = sorted(k.decode() for (ks, k), v in self.keys.items() if ks == keyspace and v)
        matching = [name for name in names if name.startswith(prefix) and name > after]
        page = matching[:limit]
        cursor = page[-1] if len(matching) > limit else None
        return web.json_response({"keys": page, "cursor": cursor}, headers=self.receipt(request))

    async def create_keyspace(self, request: web.Request) -> web.Response:
        name, definition = request.match_info["name"], await request.json()
        if name in self.keyspaces and self.keyspaces[name] != definition:
            return self.error(request, 409, "keyspace_conflict")
        status = 200 if name in self.keyspaces else 201
        self.keyspaces[name] = definition
        return web.json_response({"name": name, **definition}, status=status)

    async def status(self, request: web.Request) -> web.Response:
        peers = [{"node_id": "n2", "state": "up"}, {"node_id": "n3", "state": "down"}]
        return web.json_response({"node_id": self.node_id, "ring": {"nodes": 3}, "peers": peers})

    async def ready(self, request: web.Request) -> web.Response:
        return web.json_response({"ready": True})


@pytest.fixture
async def fake() -> AsyncIterator[FakeNode]:
    node = FakeNode()
    runner = web.AppRunner(node.app())
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    node.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield node
    await runner.cleanup()


@pytest.fixture
async def client(fake: FakeNode) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(fake.url, defaults=FAST) as session:
        yield session


@pytest.fixture
def dead_endpoint() -> str:
    """A port nothing listens on: bound once by us to pick it, then closed (connection refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


async def test_the_session_sends_back_the_context_of_each_reply(client: AsyncClient, fake: FakeNode) -> None:
    put = await client.put("default", "k", b"v1")
    got = await client.get("default", "k")
    await client.delete("default", "k")
    sent = [seen.headers.get("Titra-Context") for seen in fake.seen]
    assert sent == [None, put.context, got.context]
    assert put.context != got.context and client.context == "2.3"


async def test_a_call_can_override_the_session_context(client: AsyncClient, fake: FakeNode) -> None:
    client.context = "7.7"
    await client.get("default", "k", context="0.1")
    await client.get("default", "k", context="")
    assert [seen.headers.get("Titra-Context") for seen in fake.seen] == ["0.1", None]
    assert client.context == "0.2"  # a reply's token still replaces the session's


async def test_the_receipt_and_the_query_come_from_the_api_names(client: AsyncClient, fake: FakeNode) -> None:
    result = await client.put(
        "default", "k", b"v", "text/plain", consistency="all", w=2, timeout_ms=250, durability="async"
    )
    assert fake.seen[0].query == {"consistency": "all", "w": "2", "timeout_ms": "250", "durability": "async"}
    receipt = result.receipt
    assert (receipt.requested, receipt.achieved, receipt.coordinator) == ("all;w=2", "all", "n1")
    assert receipt.replicas == ("n1", "n2") and receipt.fallbacks == ()
    assert receipt.timestamp == "1700000000000.1" and receipt.context == "1.1"
    assert result.attempts == 1 and len(result.idempotency_key) == 36  # a UUID, made per write


async def test_keys_are_utf8_or_bytes_and_percent_encoded(client: AsyncClient, fake: FakeNode) -> None:
    await client.put("default", "dir/ü ?%#", b"text key")
    await client.put("default", b"\xff\x00/raw", b"bytes key")
    assert set(fake.keys) == {("default", "dir/ü ?%#".encode()), ("default", b"\xff\x00/raw")}
    assert fake.seen[0].path == "/v1/kv/default/dir%2F%C3%BC%20%3F%25%23"
    assert (await client.get("default", b"\xff\x00/raw")).value == b"bytes key"
    with pytest.raises(ValueError, match="non-empty"):
        await client.get("default", "")


async def test_a_missing_key_is_an_answer_and_a_missing_keyspace_an_error(client: AsyncClient) -> None:
    missing = await client.get("default", "nothing")
    assert (missing.found, missing.value, missing.siblings) == (False, None, ())
    assert missing.context is not None  # api.md: a 404 read still returns a Titra-Context
    with pytest.raises(NotFound) as caught:
        await client.get("nope", "k")
    assert (caught.value.status, caught.value.code) == (404, "keyspace_not_found")


async def test_concurrent_writes_read_back_as_multipart_siblings_and_a_write_resolves_them(fake: FakeNode) -> None:
    async with AsyncClient(fake.url, defaults=FAST) as alice, AsyncClient(fake.url, defaults=FAST) as bob:
        await alice.put("default", "k", b"from alice\r\n--sibling-boundar", "text/plain")
        await bob.put("default", "k", b"\x00\xffbob", "application/octet-stream")
        read = await alice.get("default", "k")
        assert fake.seen[-1].headers["Accept"] == "multipart/mixed"
        assert read.values == (b"from alice\r\n--sibling-boundar", b"\x00\xffbob")
        assert read.content_types == ("text/plain", "application/octet-stream")
        assert [s.timestamp for s in read.siblings] == ["1700000000000.1", "1700000000000.2"]
        with pytest.raises(SiblingsPresent):
            _ = read.value
        await alice.put("default", "k", b"merged")  # carries the read's context, which covers both
        assert (await bob.get("default", "k")).value == b"merged"


async def test_siblings_are_read_from_the_json_form_too(fake: FakeNode) -> None:
    fake.siblings_as_json = True
    async with AsyncClient(fake.url, defaults=FAST) as alice, AsyncClient(fake.url, defaults=FAST) as bob:
        await alice.put("default", "k", b"a", "text/a")
        await bob.put("default", "k", b"b", "text/b")
        read = await bob.get("default", "k")
    assert read.values == (b"a", b"b") and read.content_types == ("text/a", "text/b")


def test_the_multipart_reader_takes_a_preamble_padding_and_a_part_without_headers() -> None:
    body = (
        b"preamble to ignore\r\n--b  \r\nContent-Type: text/x\r\nTitra-Timestamp: 5.1\r\n\r\none\r\n"
        b"--b\r\n\r\ntwo\r\n--b--\r\nepilogue"
    )
    reply = Reply(300, CIMultiDict({"Content-Type": 'multipart/mixed; boundary="b"'}), body)
    siblings = parse_siblings(reply)
    assert [(s.value, s.content_type, s.timestamp) for s in siblings] == [
        (b"one", "text/x", "5.1"),
        (b"two", "text/plain", ""),
    ]
    truncated = Reply(300, reply.headers, body.split(b"--b--")[0])
    with pytest.raises(ProtocolError, match="closing delimiter"):
        parse_siblings(truncated)


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, BadRequest),
        (401, Unauthorized),
        (409, Conflict),
        (412, PreconditionFailed),
        (413, TooLarge),
        (415, UnsupportedMediaType),
        (422, IdempotencyMismatch),
        (500, ServerError),
        (503, Unavailable),
        (504, OutcomeUnknown),
    ],
)
async def test_each_error_status_raises_its_type_with_code_and_message(
    fake: FakeNode, status: int, kind: type[TitraError]
) -> None:
    fake.script = [status]
    async with AsyncClient(fake.url, defaults=NO_RETRIES) as client:
        with pytest.raises(kind) as caught:
            await client.put("default", "k", b"v")
    error = caught.value
    assert type(error) is kind
    assert (error.status, error.code, error.message) == (status, ERROR_CODES[status], f"scripted {status}")
    assert error.receipt is not None and error.receipt.coordinator == "n1"
    if isinstance(error, OutcomeUnknown):
        assert (error.acknowledged, error.required) == (1, 2)


@pytest.mark.parametrize("fault", [504, "drop", 503])
async def test_a_write_is_retried_under_the_same_idempotency_key(
    client: AsyncClient, fake: FakeNode, fault: int | str
) -> None:
    fake.script = [fault]
    result = await client.put("default", "k", b"once")
    puts = fake.kv_requests("PUT")
    assert len(puts) == 2 and result.attempts == 2
    assert puts[0].headers["Idempotency-Key"] == puts[1].headers["Idempotency-Key"] == result.idempotency_key
    assert puts[0].body == puts[1].body == b"once"
    assert fake.writes == 1


async def test_a_write_that_stays_unanswered_is_outcome_unknown_after_exactly_the_retries(
    client: AsyncClient, fake: FakeNode
) -> None:
    fake.script = ["drop"] * (FAST.write_retries_max + 1)
    with pytest.raises(OutcomeUnknown) as caught:
        await client.put("default", "k", b"v")
    assert caught.value.status == 0 and caught.value.code == "connection_lost"
    # Exactly ours: aiohttp's own silent resend of a PUT would make more.
    assert len({seen.headers["Idempotency-Key"] for seen in fake.kv_requests("PUT")}) == 1
    assert len(fake.kv_requests("PUT")) == FAST.write_retries_max + 1


async def test_a_503_after_a_504_is_still_outcome_unknown(client: AsyncClient, fake: FakeNode) -> None:
    fake.script = [504, *([503] * FAST.write_retries_max)]
    with pytest.raises(OutcomeUnknown, match="earlier attempt may have been applied") as caught:
        await client.put("default", "k", b"v")
    assert isinstance(caught.value.__cause__, Unavailable)


async def test_a_4xx_is_never_retried(client: AsyncClient, fake: FakeNode) -> None:
    fake.script = [400]
    with pytest.raises(BadRequest):
        await client.put("default", "k", b"v")
    await client.put("default", "k", b"v")
    with pytest.raises(PreconditionFailed):
        await client.put("default", "k", b"again", if_none_match=True)
    assert len(fake.kv_requests("PUT")) == 3
    assert fake.kv_requests("PUT")[-1].headers["If-None-Match"] == "*"


async def test_a_reused_idempotency_key_with_another_request_is_422(client: AsyncClient, fake: FakeNode) -> None:
    first = await client.put("default", "k", b"a", idempotency_key="op-1", context="")
    again = await client.put("default", "k", b"a", idempotency_key="op-1", context="")
    assert first.idempotency_key == again.idempotency_key == "op-1" and fake.writes == 1
    with pytest.raises(IdempotencyMismatch):
        await client.put("default", "k", b"b", idempotency_key="op-1", context="")
    assert len(fake.kv_requests("PUT")) == 3


async def test_a_read_is_retried_after_a_dropped_connection_but_not_after_a_504(
    client: AsyncClient, fake: FakeNode
) -> None:
    await client.put("default", "k", b"v")
    fake.script = ["drop"]
    assert (await client.get("default", "k")).value == b"v"
    fake.script = [504]
    with pytest.raises(OutcomeUnknown):
        await client.get("default", "k")
    assert len(fake.kv_requests("GET")) == 3


async def test_the_client_fails_over_to_the_next_endpoint_and_stays_there(fake: FakeNode, dead_endpoint: str) -> None:
    async with AsyncClient([dead_endpoint, fake.url], defaults=FAST) as client:
        first = await client.put("default", "k", b"v")
        second = await client.put("default", "k2", b"v")
        assert (await client.get("default", "k")).value == b"v"
    assert (first.attempts, second.attempts) == (2, 1)
    assert len(fake.kv_requests("PUT")) == 2


def test_endpoints_are_checked_before_any_request() -> None:
    for bad in ["127.0.0.1:7070", "ftp://host", "http://host/v1", "http://"]:
        with pytest.raises(ValueError, match="an endpoint is"):
            AsyncClient(bad)
    with pytest.raises(ValueError, match="endpoints"):
        AsyncClient([])


async def test_no_reachable_endpoint_is_unavailable_not_unknown(dead_endpoint: str) -> None:
    async with AsyncClient([dead_endpoint], defaults=FAST) as client:
        with pytest.raises(Unavailable) as caught:
            await client.put("default", "k", b"v")
    assert (caught.value.status, caught.value.code) == (0, "unreachable")


async def test_keys_are_listed_in_pages_and_iterated_across_them(client: AsyncClient, fake: FakeNode) -> None:
    for name in ["b", "a2", "a1", "c", "a3"]:
        await client.put("default", name, b"v")
    page = await client.list_keys("default", prefix="a", limit=2)
    assert page.keys == ("a1", "a2") and page.cursor == "a2"
    assert fake.seen[-1].query == {"prefix": "a", "limit": "2"}
    assert [key async for key in client.iter_keys("default", page_size=2)] == ["a1", "a2", "a3", "b", "c"]
    assert fake.seen[-1].query == {"limit": "2", "cursor": "b"}


async def test_keyspaces_status_and_health(client: AsyncClient, fake: FakeNode) -> None:
    created = await client.create_keyspace("users", n=5, resolution="lww")
    again = await client.create_keyspace("users", n=5, resolution="lww")
    assert (created.created, again.created) == (True, False)
    assert json.loads(fake.seen[0].body) == {"n": 5, "resolution": "lww"}
    with pytest.raises(Conflict) as caught:
        await client.create_keyspace("users", n=3)
    assert caught.value.code == "keyspace_conflict"
    assert (await client.status())["peers"][1] == {"node_id": "n3", "state": "down"}
    health = await client.health("ready")
    assert health.ok and health.body == {"ready": True}


async def test_a_reply_over_the_limit_is_refused(fake: FakeNode) -> None:
    async with AsyncClient(fake.url, defaults=ClientDefaults(response_bytes_max=1_000)) as client:
        await client.put("default", "big", b"x" * 200_000)
        with pytest.raises(ProtocolError) as caught:
            await client.get("default", "big")
    assert caught.value.code == "response_too_large"


async def test_the_blocking_client_is_the_same_session(fake: FakeNode) -> None:
    def scenario() -> tuple[bytes | None, list[str], str | None, list[str | None]]:
        with Client(fake.url, defaults=FAST) as client:
            client.put("default", "k1", b"v1")
            client.put("default", "k2", b"v2")
            value = client.get("default", "k1").value
            keys = list(client.iter_keys("default", page_size=1))
            return value, keys, client.context, [seen.headers.get("Titra-Context") for seen in fake.seen]

    # The fake serves on this loop; the blocking client runs its own loop in its own thread.
    value, keys, context, sent = await asyncio.to_thread(scenario)
    assert (value, keys) == (b"v1", ["k1", "k2"])
    assert sent[:3] == [None, "1.1", "2.2"] and context == "2.5"
