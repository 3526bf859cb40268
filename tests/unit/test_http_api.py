"""The client HTTP API (docs/api.md) against an in-memory fake coordinator that records calls.

What is shown: bad input gets the right 4xx and reaches no coordinator; outcomes map to their
statuses; the consistency receipt and the context token round-trip; siblings render three ways;
and every response seen here conforms to the OpenAPI document (checked at fixture teardown).
"""

import asyncio
import base64
import email.parser
import email.policy
import json
import random
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import msgpack
import pytest
from aiohttp.test_utils import TestClient
from edge_server import EdgeTestServer, LimitedTestServer
from prometheus_client.parser import text_string_to_metric_families
from test_openapi import Recorded, conformance_problems

from cluster.context import decode_token, encode_token, scoped_key, version_of
from cluster.dvv import VersionVector
from cluster.hlc import Timestamp
from cluster.limits import REQUEST_DEFAULTS
from cluster.requests import (
    ContextEntry,
    KeyspaceDef,
    KeyspaceOutcome,
    Level,
    ListOutcome,
    Outcome,
    ReadOutcome,
    ReadRequest,
    ReadStatus,
    WriteOutcome,
    WriteRequest,
    WriteStatus,
    achieved_level,
    required_acks,
)
from cluster.siblings import Sibling
from node.http import build_client_app
from node.http.errors import CODES
from node.http.openapi import build_document

SECRET = b"test-cluster-secret"
RECEIPT = (
    "Titra-Context",
    "Titra-Consistency-Requested",
    "Titra-Consistency-Achieved",
    "Titra-Replicas",
    "Titra-Fallbacks",
    "Titra-Timestamp",
    "Titra-Coordinator",
)
FAKE_SIBLINGS_MAX = 3


@dataclass
class Stored:
    version: VersionVector
    live: list[Sibling]


@dataclass
class FakeCoordinator:
    """A one-node model of the runtime: versions from one counter, siblings for concurrent
    writes, preconditions and idempotency keys; `script_*` replaces the next outcomes."""

    node_id: str = "n1"
    secret: bytes = SECRET
    writes: list[WriteRequest] = field(default_factory=list)
    reads: list[ReadRequest] = field(default_factory=list)
    lists: list[tuple[str, bytes, bytes | None, int, int]] = field(default_factory=list)
    created: list[KeyspaceDef] = field(default_factory=list)
    keyspaces: dict[str, KeyspaceDef] = field(
        default_factory=lambda: {"default": KeyspaceDef("default", 3, "siblings")}
    )
    data: dict[tuple[str, bytes], Stored] = field(default_factory=dict)
    idempotency: dict[str, tuple[bytes, WriteOutcome]] = field(default_factory=dict)
    script_write: WriteOutcome | None = None
    script_read: ReadOutcome | None = None
    script_keyspace: KeyspaceOutcome | None = None
    read_deps: tuple[ContextEntry, ...] = ()
    fail_with: Exception | None = None
    is_ready: bool = True
    counter: int = 0

    def _timestamp(self) -> str:
        return Timestamp(1_700_000_000_000 + self.counter, 0, self.node_id).encode()

    def _write(self, status: WriteStatus, req: WriteRequest, n: int, version: VersionVector | None) -> WriteOutcome:
        acks = ("n1", "n2") if status is WriteStatus.OK else ()
        required = required_acks(Level(req.level), n, req.w)
        return WriteOutcome(status.value, self.node_id, acks, required, version, self._timestamp(),
                            achieved_level(len(acks), n), "")  # fmt: skip

    async def put(self, req: WriteRequest) -> WriteOutcome:
        self.writes.append(req)
        if self.fail_with is not None:
            raise self.fail_with
        if self.script_write is not None:
            return self.script_write
        space = self.keyspaces.get(req.keyspace)
        if space is None:
            return self._write(WriteStatus.NO_KEYSPACE, req, 3, None)
        if req.w is not None and req.w > space.n:
            return self._write(WriteStatus.INVALID, req, space.n, None)
        if req.idempotency_key in self.idempotency:
            digest, first = self.idempotency[req.idempotency_key]
            return (
                first if digest == req.request_digest else self._write(WriteStatus.IDEMPOTENCY_MISMATCH, req, 3, None)
            )
        stored = self.data.get((req.keyspace, req.key))
        if (req.if_none_match and stored is not None and stored.live) or (
            req.if_match is not None and (stored is None or stored.version != req.if_match)
        ):
            return self._write(WriteStatus.PRECONDITION_FAILED, req, space.n, None)
        seen = version_of(req.context, scoped_key(req.keyspace, req.key)) or VersionVector()
        kept = [] if stored is None or seen.descends(stored.version) else list(stored.live)
        if len(kept) + 1 > FAKE_SIBLINGS_MAX:
            return self._write(WriteStatus.SIBLINGS_LIMIT, req, space.n, None)
        self.counter += 1
        version = (stored.version if stored else VersionVector()).merge(VersionVector.of({"n1": self.counter}))
        if not req.deleted:
            kept.append(Sibling(req.value, req.content_type, Timestamp(1_700_000_000_000 + self.counter, 0, "n1")))
        self.data[(req.keyspace, req.key)] = Stored(version, kept)
        outcome = self._write(WriteStatus.OK, req, space.n, version)
        if req.idempotency_key:
            self.idempotency[req.idempotency_key] = (req.request_digest, outcome)
        return outcome

    async def get(self, req: ReadRequest) -> ReadOutcome:
        self.reads.append(req)
        if self.script_read is not None:
            return self.script_read
        space = self.keyspaces.get(req.keyspace)
        n = space.n if space else 3

        def outcome(status: ReadStatus, stored: Stored | None = None) -> ReadOutcome:
            live = tuple(stored.live) if stored else ()
            version = stored.version if stored else None
            return ReadOutcome(status.value, self.node_id, ("n1", "n2"), required_acks(Level(req.level), n, req.r),
                               live, version, self.read_deps, self._timestamp(), achieved_level(2, n), "")  # fmt: skip

        if space is None:
            return outcome(ReadStatus.NO_KEYSPACE)
        if req.r is not None and req.r > space.n:
            return outcome(ReadStatus.INVALID)
        stored = self.data.get((req.keyspace, req.key))
        return outcome(ReadStatus.OK if stored and stored.live else ReadStatus.NOT_FOUND, stored)

    async def list_keys(
        self, keyspace: str, prefix: bytes, after: bytes | None, limit: int, timeout_ms: int
    ) -> ListOutcome:
        self.lists.append((keyspace, prefix, after, limit, timeout_ms))
        if keyspace not in self.keyspaces:
            return ListOutcome(Outcome.NO_KEYSPACE.value, (), None, ("n1",), "")
        keys = sorted(k for (ks, k), s in self.data.items() if ks == keyspace and k.startswith(prefix) and s.live)
        keys = [k for k in keys if after is None or k > after]
        page = tuple(keys[:limit])
        return ListOutcome(Outcome.OK.value, page, page[-1] if len(keys) > limit else None, ("n1", "n2"), "")

    async def create_keyspace(self, definition: KeyspaceDef, timeout_ms: int) -> KeyspaceOutcome:
        self.created.append(definition)
        if self.script_keyspace is not None:
            return self.script_keyspace
        existing = self.keyspaces.get(definition.name)
        if existing is None:
            self.keyspaces[definition.name] = definition
            return KeyspaceOutcome(Outcome.CREATED.value, definition, "")
        return KeyspaceOutcome((Outcome.OK if existing == definition else Outcome.CONFLICT).value, existing, "")

    async def get_keyspace(self, name: str, timeout_ms: int) -> KeyspaceDef | None:
        return self.keyspaces.get(name)

    async def list_keyspaces(self) -> list[KeyspaceDef]:
        return sorted(self.keyspaces.values(), key=lambda d: d.name)

    def status(self) -> dict[str, object]:
        return {"node": self.node_id, "ring": {"vnodes_per_node": 64}, "peers": ["n2", "n3"]}

    def ready(self) -> bool:
        return self.is_ready

    def saw_nothing(self) -> bool:
        return not (self.writes or self.reads or self.lists or self.created)


@dataclass
class Reply:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def code(self) -> str:
        return str(self.json()["error"]["code"])

    @property
    def context(self) -> tuple[ContextEntry, ...]:
        return decode_token(self.headers["Titra-Context"], SECRET)


class Api:
    def __init__(self, client: TestClient[Any, Any], fake: FakeCoordinator) -> None:
        self.client, self.fake = client, fake
        self.records: list[Recorded] = []

    async def call(
        self, method: str, path: str, body: bytes | None = None, headers: Mapping[str, str] | None = None, **kw: Any
    ) -> Reply:
        async with self.client.request(method, path, data=body, headers=headers, **kw) as response:
            reply = Reply(response.status, response.headers, await response.read())
            sent_path = response.url.raw_path  # as sent: the client drops dot segments, for one
        self.records.append(Recorded(method, sent_path, reply.status, reply.headers, reply.body))
        return reply


# Every test runs against both front doors of the client port: aiohttp alone, and the edge's
# fast path in front of it (what a node serves), which must answer exactly alike.
@pytest.fixture(params=["aiohttp", "edge"])
async def api(request: pytest.FixtureRequest) -> AsyncIterator[Api]:
    fake = FakeCoordinator()
    app = build_client_app(fake)
    # aiohttp alone gets the node's limits too (node/server.py), so both refuse the same heads.
    server = EdgeTestServer(app) if request.param == "edge" else LimitedTestServer(app)
    async with TestClient(server) as client:
        harness = Api(client, fake)
        yield harness
    problems = [problem[:300] for record in harness.records for problem in conformance_problems(record)]
    assert not problems, "responses that do not conform to the OpenAPI document:\n" + "\n".join(problems[:20])


def assert_receipt(reply: Reply) -> None:
    missing = [name for name in RECEIPT if name not in reply.headers]
    assert not missing, f"receipt headers missing: {missing}"
    assert reply.headers["Titra-Coordinator"] == "n1"


# --- Writing and reading. ---


async def test_put_then_get_returns_the_value_with_its_type_and_a_receipt(api: Api) -> None:
    put = await api.call("PUT", "/v1/kv/default/greeting", b"hello", {"Content-Type": "text/plain; charset=utf-8"})
    assert put.status == 204 and put.body == b""
    assert_receipt(put)
    assert put.headers["Titra-Consistency-Requested"] == "quorum"
    assert put.headers["Titra-Consistency-Achieved"] == "quorum"
    assert put.headers["Titra-Replicas"] == "n1,n2"
    assert put.headers["Titra-Fallbacks"] == ""
    assert Timestamp.decode(put.headers["Titra-Timestamp"]).node_id == "n1"
    got = await api.call("GET", "/v1/kv/default/greeting?consistency=one&r=1")
    assert (got.status, got.body, got.headers["Content-Type"]) == (200, b"hello", "text/plain; charset=utf-8")
    assert_receipt(got)
    assert got.headers["Titra-Consistency-Requested"] == "one;r=1"
    assert (api.fake.reads[0].level, api.fake.reads[0].r) == ("one", 1)


async def test_write_request_carries_every_parameter(api: Api) -> None:
    path = "/v1/kv/default/a%2Fb/c?consistency=all&w=2&timeout_ms=250&durability=async"
    reply = await api.call("PUT", path, b"v", {"Content-Type": "application/json", "Idempotency-Key": "retry 1"})
    assert reply.status == 204
    assert reply.headers["Titra-Consistency-Requested"] == "all;w=2"
    write = api.fake.writes[0]
    assert (write.keyspace, write.key, write.value, write.content_type) == (
        "default",
        b"a/b/c",
        b"v",
        "application/json",
    )
    assert (write.level, write.w, write.timeout_ms, write.durability) == ("all", 2, 250, "async")
    assert (write.deleted, write.context, write.if_match, write.if_none_match) == (False, (), None, False)
    assert write.idempotency_key == "retry 1" and len(write.request_digest) == 32


async def test_defaults_when_nothing_is_given(api: Api) -> None:
    assert (await api.call("PUT", "/v1/kv/default/k", b"v", skip_auto_headers=["Content-Type"])).status == 204
    write = api.fake.writes[0]
    assert (write.content_type, write.level, write.w) == ("application/octet-stream", "quorum", None)
    assert (write.timeout_ms, write.durability) == (REQUEST_DEFAULTS.request_timeout_ms_default, "fsync")


async def test_keys_are_percent_decoded_utf8_from_the_raw_path(api: Api) -> None:
    await api.call("PUT", "/v1/kv/default/caf%C3%A9/x%2Fy", b"1")
    await api.call("PUT", "/v1/kv/default/caf%C3%A9/x/y", b"2")
    assert [w.key for w in api.fake.writes] == ["café/x/y".encode()] * 2


async def test_delete_writes_a_tombstone_and_a_404_read_still_carries_a_context(api: Api) -> None:
    put = await api.call("PUT", "/v1/kv/default/k", b"v")
    deleted = await api.call("DELETE", "/v1/kv/default/k?w=1", None, {"Titra-Context": put.headers["Titra-Context"]})
    assert deleted.status == 204
    assert_receipt(deleted)
    write = api.fake.writes[1]
    assert (write.deleted, write.value, write.w) == (True, b"", 1)
    gone = await api.call("GET", "/v1/kv/default/k")
    assert (gone.status, gone.code) == (404, "key_not_found")
    assert_receipt(gone)
    # The token names the tombstone's version, so a later write with it supersedes the delete.
    assert version_of(gone.context, scoped_key("default", b"k")) == api.fake.data[("default", b"k")].version


async def test_missing_keyspace_is_keyspace_not_found(api: Api) -> None:
    for method in ("PUT", "GET", "DELETE"):
        reply = await api.call(method, "/v1/kv/nothere/k", b"v" if method == "PUT" else None)
        assert (reply.status, reply.code) == (404, "keyspace_not_found")
        assert_receipt(reply)


async def test_w_above_n_is_the_coordinators_400(api: Api) -> None:
    reply = await api.call("PUT", "/v1/kv/default/k?w=4", b"v")
    assert (reply.status, reply.code) == (400, "invalid_request")
    assert len(api.fake.writes) == 1  # the edge cannot know N; the coordinator refused it
    assert_receipt(reply)


# --- Bad input: a clear 4xx, and the coordinator never hears of it. ---

K = "/v1/kv/default/k"
BAD_WRITES = [
    (f"{K}?colour=red", {}, 400, "unknown_parameter", "'colour'"),
    (f"{K}?r=1", {}, 400, "unknown_parameter", "consistency, w, timeout_ms, durability"),
    (f"{K}?consistency=strong", {}, 400, "invalid_consistency", "one, quorum, all, causal"),
    (f"{K}?consistency=one&consistency=all", {}, 400, "duplicate_parameter", "consistency"),
    *[(f"{K}?w={w}", {}, 400, "invalid_replica_count", "w must be") for w in ("0", "-1", "two", "1.5", "10", "")],
    *[(f"{K}?timeout_ms={t}", {}, 400, "invalid_timeout", "timeout_ms") for t in ("0", "60001", "1e3", " 5")],
    (f"{K}?durability=eventually", {}, 400, "invalid_durability", "fsync, async"),
    ("/v1/kv/_system/k", {}, 400, "invalid_keyspace_name", "_system"),
    ("/v1/kv/Default/k", {}, 400, "invalid_keyspace_name", "must match"),
    ("/v1/kv/" + "a" * 65 + "/k", {}, 400, "invalid_keyspace_name", "must match"),
    ("/v1/kv/a%2Fb/k", {}, 400, "invalid_keyspace_name", "a/b"),
    ("/v1/kv/default/", {}, 400, "invalid_key", "empty"),
    ("/v1/kv/default/%FF", {}, 400, "invalid_key", "UTF-8"),
    ("/v1/kv/default/" + "k" * 513, {}, 413, "key_too_large", "512"),
    (K, {"Titra-Context": "not-a-token"}, 400, "invalid_context", "Titra-Context"),
    (K, {"If-Match": "not-a-token"}, 400, "invalid_context", "If-Match"),
    (K, {"If-None-Match": '"etag"'}, 400, "invalid_if_none_match", "'*'"),
    (K, {"Idempotency-Key": "k" * 129}, 400, "invalid_idempotency_key", "128"),
    (K, {"Idempotency-Key": ""}, 400, "invalid_idempotency_key", "printable ASCII"),
]
BAD_CONTENT_TYPES = [
    (K, {"Content-Type": "text"}, 400, "invalid_content_type", "media type"),
    (K, {"Content-Type": "text/plain; charset"}, 400, "invalid_content_type", "media type"),
    (K, {"Content-Type": "text/" + "x" * 300}, 400, "invalid_content_type", "255"),
]


@pytest.mark.parametrize(("path", "headers", "status", "code", "mention"), BAD_WRITES + BAD_CONTENT_TYPES)
async def test_bad_put_is_refused_before_coordination(
    api: Api, path: str, headers: dict[str, str], status: int, code: str, mention: str
) -> None:
    reply = await api.call("PUT", path, b"value", headers)
    assert (reply.status, reply.code) == (status, code)
    assert mention in reply.json()["error"]["message"]
    assert api.fake.saw_nothing()
    assert reply.headers["Titra-Coordinator"] == "n1"


@pytest.mark.parametrize(("path", "headers", "status", "code", "mention"), BAD_WRITES)
async def test_bad_delete_is_refused_before_coordination(
    api: Api, path: str, headers: dict[str, str], status: int, code: str, mention: str
) -> None:
    reply = await api.call("DELETE", path, None, headers)
    assert (reply.status, reply.code) == (status, code)
    assert api.fake.saw_nothing()


@pytest.mark.parametrize(
    ("path", "headers", "status", "code"),
    [
        (f"{K}?w=1", {}, 400, "unknown_parameter"),
        (f"{K}?durability=fsync", {}, 400, "unknown_parameter"),
        (f"{K}?consistency=eventual", {}, 400, "invalid_consistency"),
        (f"{K}?r=0", {}, 400, "invalid_replica_count"),
        (f"{K}?r=10", {}, 400, "invalid_replica_count"),
        (f"{K}?timeout_ms=forever", {}, 400, "invalid_timeout"),
        ("/v1/kv/-x/k", {}, 400, "invalid_keyspace_name"),
        ("/v1/kv/default/%C3", {}, 400, "invalid_key"),
        ("/v1/kv/default/" + "%41" * 513, {}, 413, "key_too_large"),
        (K, {"Titra-Context": "AAAA"}, 400, "invalid_context"),
    ],
)
async def test_bad_get_is_refused_before_coordination(
    api: Api, path: str, headers: dict[str, str], status: int, code: str
) -> None:
    reply = await api.call("GET", path, None, headers)
    assert (reply.status, reply.code) == (status, code)
    assert api.fake.saw_nothing()


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ("limit=0", "invalid_limit"),
        ("limit=1001", "invalid_limit"),
        ("limit=ten", "invalid_limit"),
        ("cursor=!!", "invalid_cursor"),
        ("cursor=", "invalid_cursor"),
        ("cursor=" + "QUFB" * 200, "invalid_cursor"),
        ("prefix=" + "p" * 513, "invalid_prefix"),
        ("consistency=one", "unknown_parameter"),
        ("timeout_ms=0", "invalid_timeout"),
    ],
)
async def test_bad_listing_is_refused_before_coordination(api: Api, query: str, code: str) -> None:
    reply = await api.call("GET", f"/v1/kv/default?{query}")
    assert (reply.status, reply.code) == (400, code)
    assert api.fake.saw_nothing()


async def test_a_declared_oversized_body_gets_413_before_it_is_read(api: Api) -> None:
    """Raw HTTP: a 1 GB Content-Length and no body at all; the answer cannot have read it."""
    for expect in ("", "Expect: 100-continue\r\n"):
        reader, writer = await asyncio.open_connection(api.client.server.host, api.client.server.port)
        writer.write(f"PUT {K} HTTP/1.1\r\nHost: t\r\n{expect}Content-Length: 1000000000\r\n\r\n".encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)  # deadline, not a pause
        writer.close()
        # With Expect, the client is never invited to send (no "100 Continue" before the 413).
        assert head.startswith(b"HTTP/1.1 413 "), head
        assert b"Connection: close" in head
    assert api.fake.saw_nothing()


async def test_a_chunked_body_over_the_limit_is_413(api: Api) -> None:
    limit = REQUEST_DEFAULTS.value_bytes_max

    async def chunks(total: int) -> AsyncIterator[bytes]:
        for start in range(0, total, 64 * 1024):
            yield b"x" * min(64 * 1024, total - start)

    over = await api.call("PUT", K, chunks(limit + 1))  # type: ignore[arg-type]
    assert (over.status, over.code) == (413, "value_too_large")
    assert api.fake.saw_nothing()
    exact = await api.call("PUT", K, chunks(limit))  # type: ignore[arg-type]
    assert exact.status == 204 and len(api.fake.writes[0].value) == limit


# --- Keyspaces. ---


async def test_keyspace_create_same_again_and_conflict(api: Api) -> None:
    body = json.dumps({"n": 5, "resolution": "lww"}).encode()
    created = await api.call("PUT", "/v1/keyspaces/orders", body, {"Content-Type": "application/json"})
    assert (created.status, created.json()) == (201, {"name": "orders", "n": 5, "resolution": "lww"})
    again = await api.call("PUT", "/v1/keyspaces/orders?timeout_ms=100", body, {"Content-Type": "application/json"})
    assert again.status == 200
    other = await api.call("PUT", "/v1/keyspaces/orders", b'{"n": 3}', {"Content-Type": "application/json"})
    assert (other.status, other.code) == (409, "keyspace_conflict")
    assert other.json()["keyspace"] == {"name": "orders", "n": 5, "resolution": "lww"}
    assert api.fake.created[2] == KeyspaceDef("orders", 3, "siblings")  # the documented defaults
    assert (await api.call("GET", "/v1/keyspaces/orders")).json()["n"] == 5
    assert (await api.call("GET", "/v1/keyspaces/nothere")).code == "keyspace_not_found"
    listed = await api.call("GET", "/v1/keyspaces")
    assert [d["name"] for d in listed.json()["keyspaces"]] == ["default", "orders"]


JSON_CT = {"Content-Type": "application/json"}


@pytest.mark.parametrize(
    ("path", "headers", "body", "status", "code"),
    [
        ("/v1/keyspaces/ks", {"Content-Type": "text/plain"}, b'{"n": 3}', 415, "unsupported_media_type"),
        ("/v1/keyspaces/ks", {}, b'{"n": 3}', 415, "unsupported_media_type"),
        ("/v1/keyspaces/ks", JSON_CT, b"{", 400, "invalid_body"),
        ("/v1/keyspaces/ks", JSON_CT, b"[" * 3000, 400, "invalid_body"),
        ("/v1/keyspaces/ks", JSON_CT, b"[3]", 400, "invalid_body"),
        ("/v1/keyspaces/ks", JSON_CT, b'{"n": 3, "colour": 1}', 400, "invalid_keyspace_definition"),
        *[
            ("/v1/keyspaces/ks", JSON_CT, b'{"n": %s}' % n, 400, "invalid_keyspace_definition")
            for n in (b"0", b"10", b"true", b'"3"', b"3.0", b"null")
        ],
        ("/v1/keyspaces/ks", JSON_CT, b'{"resolution": "crdt"}', 400, "invalid_keyspace_definition"),
        ("/v1/keyspaces/ks", JSON_CT, b" " * 5000 + b"{}", 413, "body_too_large"),
        ("/v1/keyspaces/_system", JSON_CT, b"{}", 400, "invalid_keyspace_name"),
        ("/v1/keyspaces/ks?timeout_ms=0", JSON_CT, b"{}", 400, "invalid_timeout"),
        ("/v1/keyspaces/ks?n=3", JSON_CT, b"{}", 400, "unknown_parameter"),
    ],
)
async def test_bad_keyspace_definition_is_refused(
    api: Api, path: str, headers: dict[str, str], body: bytes, status: int, code: str
) -> None:
    reply = await api.call("PUT", path, body, headers, skip_auto_headers=["Content-Type"])
    assert (reply.status, reply.code) == (status, code)
    assert api.fake.created == []


# --- Causal context, preconditions, idempotency. ---


async def test_context_from_a_response_is_accepted_and_a_tampered_one_is_not(api: Api) -> None:
    first = await api.call("PUT", K, b"1")
    token = first.headers["Titra-Context"]
    assert version_of(first.context, scoped_key("default", b"k")) == api.fake.data[("default", b"k")].version
    second = await api.call("PUT", K, b"2", {"Titra-Context": token})
    assert second.status == 204
    assert api.fake.writes[1].context == first.context
    read = await api.call("GET", K, None, {"Titra-Context": second.headers["Titra-Context"]})
    assert read.body == b"2"  # the context covered the first value, so the second replaced it
    assert api.fake.reads[0].context == second.context
    tampered = token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1]
    refused = await api.call("PUT", K, b"3", {"Titra-Context": tampered})
    assert (refused.status, refused.code) == (400, "invalid_context")
    assert len(api.fake.writes) == 2
    forged = encode_token(first.context, b"another-cluster")
    assert (await api.call("GET", K, None, {"Titra-Context": forged})).code == "invalid_context"


async def test_a_causal_read_inherits_the_writers_dependencies(api: Api) -> None:
    await api.call("PUT", K, b"v")
    dependency = ContextEntry(scoped_key("default", b"other"), VersionVector.of({"n2": 5}))
    api.fake.read_deps = (dependency,)
    causal = await api.call("GET", f"{K}?consistency=causal")
    assert [entry.key for entry in causal.context] == [dependency.key, scoped_key("default", b"k")]
    quorum = await api.call("GET", K)
    assert [entry.key for entry in quorum.context] == [scoped_key("default", b"k")]


async def test_if_match_maps_to_the_version_of_this_key(api: Api) -> None:
    token = (await api.call("PUT", K, b"1")).headers["Titra-Context"]
    version = api.fake.data[("default", b"k")].version
    matched = await api.call("PUT", K, b"2", {"If-Match": f'"{token}"'})  # entity-tag quotes are tolerated
    assert matched.status == 204 and api.fake.writes[1].if_match == version
    stale = await api.call("PUT", K, b"3", {"If-Match": token})
    assert (stale.status, stale.code) == (412, "precondition_failed")
    assert_receipt(stale)
    other = (await api.call("PUT", "/v1/kv/default/other", b"x")).headers["Titra-Context"]
    writes = len(api.fake.writes)
    never_saw = await api.call("PUT", K, b"4", {"If-Match": other})
    assert (never_saw.status, never_saw.code) == (412, "precondition_failed")
    assert len(api.fake.writes) == writes  # decided at the edge
    assert "Titra-Context" not in never_saw.headers


async def test_if_none_match_star(api: Api) -> None:
    first = await api.call("PUT", K, b"1", {"If-None-Match": "*"})
    assert first.status == 204 and api.fake.writes[0].if_none_match is True
    second = await api.call("PUT", K, b"2", {"If-None-Match": "*"})
    assert (second.status, second.code) == (412, "precondition_failed")
    assert (await api.call("GET", K)).body == b"1"


async def test_idempotency_key_reuse_with_another_request_is_422(api: Api) -> None:
    key = {"Idempotency-Key": "order-42"}
    assert (await api.call("PUT", f"{K}?consistency=all&timeout_ms=9", b"1", key)).status == 204
    assert (await api.call("PUT", f"{K}?timeout_ms=9&consistency=all", b"1", key)).status == 204
    assert api.fake.writes[0].request_digest == api.fake.writes[1].request_digest  # query order is normalized
    mismatch = await api.call("PUT", f"{K}?consistency=all&timeout_ms=9", b"2", key)
    assert (mismatch.status, mismatch.code) == (422, "idempotency_mismatch")
    assert_receipt(mismatch)
    digests = {w.request_digest for w in api.fake.writes}
    await api.call("PUT", f"{K}?consistency=all&timeout_ms=10", b"1", key)
    await api.call("DELETE", f"{K}?consistency=all&timeout_ms=9", None, key)
    assert len(digests | {w.request_digest for w in api.fake.writes}) == 4


# --- Siblings. ---


async def _two_siblings(api: Api) -> None:
    await api.call("PUT", K, b"left", {"Content-Type": "text/plain"})
    await api.call("PUT", K, b"\x00right", {"Content-Type": "application/octet-stream"})


async def test_siblings_as_json_then_resolved_by_a_put_with_the_context(api: Api) -> None:
    await _two_siblings(api)
    reply = await api.call("GET", K)
    assert reply.status == 300 and reply.headers["Content-Type"] == "application/json"
    assert_receipt(reply)
    siblings = reply.json()["siblings"]
    assert [base64.b64decode(s["value_base64"]) for s in siblings] == [b"left", b"\x00right"]
    assert [s["content_type"] for s in siblings] == ["text/plain", "application/octet-stream"]
    assert siblings[0]["timestamp"] < siblings[1]["timestamp"]
    resolved = await api.call("PUT", K, b"merged", {"Titra-Context": reply.headers["Titra-Context"]})
    assert resolved.status == 204
    assert (await api.call("GET", K)).body == b"merged"


async def test_siblings_as_msgpack_carry_raw_bytes(api: Api) -> None:
    await _two_siblings(api)
    reply = await api.call("GET", K, None, {"Accept": "application/msgpack"})
    assert reply.status == 300 and reply.headers["Content-Type"] == "application/msgpack"
    siblings = msgpack.unpackb(reply.body, raw=False)["siblings"]
    assert [s["value"] for s in siblings] == [b"left", b"\x00right"]
    assert_receipt(reply)


async def test_siblings_as_multipart_mixed(api: Api) -> None:
    await _two_siblings(api)
    reply = await api.call("GET", K, None, {"Accept": "multipart/mixed, application/json;q=0.5"})
    assert reply.status == 300 and reply.headers["Content-Type"].startswith("multipart/mixed; boundary=")
    assert_receipt(reply)
    head = f"Content-Type: {reply.headers['Content-Type']}\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + reply.body)
    parts = list(message.iter_parts())
    assert [p.get_payload(decode=True) for p in parts] == [b"left", b"\x00right"]
    assert [p["Content-Type"] for p in parts] == ["text/plain", "application/octet-stream"]
    stamps = [p["Titra-Timestamp"] for p in parts]
    assert all(Timestamp.decode(s).node_id == "n1" for s in stamps) and stamps == sorted(stamps)


async def test_a_write_past_the_siblings_limit_is_409(api: Api) -> None:
    for value in (b"1", b"2", b"3"):
        assert (await api.call("PUT", K, value)).status == 204
    reply = await api.call("PUT", K, b"4")
    assert (reply.status, reply.code) == (409, "siblings_limit")
    assert_receipt(reply)


# --- Outcomes: 503 (not written) versus 504 (unknown), and every status mapped. ---


def _scripted_write(status: WriteStatus, acks: tuple[str, ...] = (), required: int = 2) -> WriteOutcome:
    return WriteOutcome(status.value, "n1", acks, required, None, "", achieved_level(len(acks), 3), "")


async def test_503_says_not_written_and_504_says_unknown(api: Api) -> None:
    api.fake.script_write = _scripted_write(WriteStatus.UNAVAILABLE)
    unavailable = await api.call("PUT", K, b"v")
    assert unavailable.status == 503
    assert unavailable.json() | {"error": None} == {
        "error": None, "acknowledged": 0, "acknowledged_by": [], "required": 2, "outcome": "not_written"
    }  # fmt: skip
    assert_receipt(unavailable)
    api.fake.script_write = _scripted_write(WriteStatus.TIMEOUT, acks=("n2",))
    timeout = await api.call("PUT", K, b"v")
    assert (timeout.status, timeout.code) == (504, "timeout")
    assert timeout.json()["acknowledged"] == 1 and timeout.json()["acknowledged_by"] == ["n2"]
    assert timeout.json()["outcome"] == "unknown" and timeout.headers["Titra-Replicas"] == "n2"
    assert timeout.headers["Titra-Consistency-Achieved"] == "one"


@pytest.mark.parametrize("status", list(WriteStatus))
async def test_every_write_status_maps_to_a_non_500(api: Api, status: WriteStatus) -> None:
    api.fake.script_write = _scripted_write(status)
    reply = await api.call("DELETE", K)
    expected = {"ok": 204, "unavailable": 503, "timeout": 504, "precondition_failed": 412, "siblings_limit": 409,
                "no_keyspace": 404, "failed": 504, "invalid": 400, "idempotency_mismatch": 422}  # fmt: skip
    assert reply.status == expected[status.value]
    assert_receipt(reply)


@pytest.mark.parametrize("status", list(ReadStatus))
async def test_every_read_status_maps_to_a_non_500(api: Api, status: ReadStatus) -> None:
    api.fake.script_read = ReadOutcome(status.value, "n1", ("n3",), 2, (), None, (), "", "", "")
    reply = await api.call("GET", K)
    expected = {"ok": 404, "not_found": 404, "unavailable": 503, "timeout": 504, "no_keyspace": 404, "invalid": 400}
    assert reply.status == expected[status.value]
    if status in (ReadStatus.UNAVAILABLE, ReadStatus.TIMEOUT):
        assert (reply.json()["acknowledged"], reply.json()["required"]) == (1, 2)
    assert_receipt(reply)


@pytest.mark.parametrize("status", list(Outcome))
async def test_every_keyspace_outcome_maps_to_a_non_500(api: Api, status: Outcome) -> None:
    api.fake.script_keyspace = KeyspaceOutcome(status.value, None, "")
    reply = await api.call("PUT", "/v1/keyspaces/ks", b"{}", JSON_CT)
    expected = {"ok": 200, "created": 201, "conflict": 409, "unavailable": 503, "timeout": 504,
                "no_keyspace": 404, "invalid": 400}  # fmt: skip
    assert reply.status == expected[status.value]


async def test_an_unexpected_failure_is_a_json_500(api: Api) -> None:
    api.fake.fail_with = RuntimeError("disk on fire")
    crashed = await api.call("PUT", K, b"v")
    assert (crashed.status, crashed.code) == (500, "internal")
    assert "disk on fire" not in crashed.body.decode()
    api.fake.fail_with = None
    api.fake.script_write = replace(_scripted_write(WriteStatus.OK), status="a status nobody knows")
    assert (await api.call("PUT", K, b"v")).code == "internal"


async def test_no_input_produces_a_500(api: Api) -> None:
    """Seeded random paths, parameters and headers: all answered, none with a 5xx."""
    rng = random.Random(20240611)
    pieces = ["k", "%", "%00", "%FF", "%2F", "..", "é", "~", "default", "_x", "%C3%A9", "a" * 600, ""]
    names = ["consistency", "r", "w", "timeout_ms", "durability", "limit", "cursor", "prefix", "x"]
    values = ["one", "all", "causal", "1", "3", "0", "-1", "99999999999999999999", "", "fsync", "%", "é"]
    headers = ["Titra-Context", "If-Match", "If-None-Match", "Idempotency-Key", "Content-Type", "Accept"]
    junk = ["*", "", "x", "AAAA", "text/plain", "application/msgpack", 'a/b; c="d"', "~" * 200]
    for _ in range(150):
        path = "/v1/kv/" + "/".join(rng.choice(pieces) for _ in range(rng.randint(1, 3)))
        query = "&".join(f"{rng.choice(names)}={rng.choice(values)}" for _ in range(rng.randint(0, 3)))
        sent = {name: rng.choice(junk) for name in rng.sample(headers, rng.randint(0, 3))}
        method = rng.choice(["GET", "PUT", "DELETE"])
        reply = await api.call(method, f"{path}?{query}" if query else path, b"v" if method == "PUT" else None, sent)
        assert reply.status < 500, (method, path, query, sent, reply.body)
        if reply.status >= 400:
            assert reply.headers["Content-Type"] in ("application/json", "application/msgpack")


# --- Listing, structured bodies, operations. ---


async def test_listing_pages_through_keys_in_order(api: Api) -> None:
    for key in ("b", "a", "c", "zz"):
        await api.call("PUT", f"/v1/kv/default/{key}", b"v")
    first = await api.call("GET", "/v1/kv/default?limit=2")
    assert first.json()["keys"] == ["a", "b"] and first.headers["Titra-Replicas"] == "n1,n2"
    second = await api.call("GET", f"/v1/kv/default?limit=2&cursor={first.json()['cursor']}")
    assert second.json() == {"keyspace": "default", "keys": ["c", "zz"], "cursor": None}
    assert api.fake.lists[1][2] == b"b"
    packed = await api.call("GET", "/v1/kv/default?prefix=z", None, {"Accept": "application/msgpack"})
    assert msgpack.unpackb(packed.body, raw=False)["keys"] == [b"zz"]
    missing = await api.call("GET", "/v1/kv/nothere")
    assert (missing.status, missing.code) == (404, "keyspace_not_found")


async def test_structured_bodies_in_msgpack(api: Api) -> None:
    accept = {"Accept": "application/msgpack"}
    error = await api.call("GET", f"{K}?consistency=x", None, accept)
    assert error.headers["Content-Type"] == "application/msgpack"
    assert msgpack.unpackb(error.body, raw=False)["error"]["code"] == "invalid_consistency"
    spaces = await api.call("GET", "/v1/keyspaces", None, accept)
    assert msgpack.unpackb(spaces.body, raw=False)["keyspaces"][0]["name"] == "default"
    status = await api.call("GET", "/v1/status", None, accept)
    assert msgpack.unpackb(status.body, raw=False)["peers"] == ["n2", "n3"]
    weighted = await api.call("GET", "/v1/keyspaces", None, {"Accept": "application/msgpack;q=0.1, */*"})
    assert weighted.headers["Content-Type"] == "application/json"


async def test_health_and_readiness(api: Api) -> None:
    for path in ("/health", "/health/live", "/health/ready"):
        assert (await api.call("GET", path)).status == 200
    api.fake.is_ready = False
    assert (await api.call("GET", "/health/ready")).status == 503
    assert (await api.call("GET", "/health")).json()["ready"] is False
    assert (await api.call("GET", "/health/live")).status == 200


async def test_status_and_openapi_endpoints(api: Api) -> None:
    assert (await api.call("GET", "/v1/status")).json() == api.fake.status()
    assert (await api.call("GET", "/v1/openapi.json")).json() == build_document()


async def test_unknown_routes_and_methods_get_json_errors(api: Api) -> None:
    missing = await api.call("GET", "/v2/nothing")
    assert (missing.status, missing.code) == (404, "route_not_found")
    wrong = await api.call("POST", K, b"v")
    assert (wrong.status, wrong.code) == (405, "method_not_allowed")
    assert "PUT" in wrong.headers["Allow"]


async def test_metrics_count_requests_by_route_method_status_and_level(api: Api) -> None:
    await api.call("PUT", f"{K}?consistency=all", b"v")
    await api.call("GET", f"{K}?consistency=bogus")
    text = (await api.call("GET", "/metrics")).body.decode()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    route = "/v1/kv/{keyspace}/{key}"

    def labels(method: str, status: str, level: str) -> tuple[tuple[str, str], ...]:
        return tuple(sorted({"route": route, "method": method, "status": status, "level": level}.items()))

    assert samples[("titra_http_requests_total", labels("PUT", "204", "all"))] == 1.0
    assert samples[("titra_http_requests_total", labels("GET", "400", ""))] == 1.0
    assert samples[("titra_http_request_duration_seconds_count", labels("PUT", "204", "all"))] == 1.0


def test_every_error_code_has_a_4xx_or_5xx_status() -> None:
    assert all(400 <= status <= 599 for status in CODES.values())


async def test_linearizable_is_not_built_yet_and_says_so_with_501(api: Api) -> None:
    reply = await api.call("PUT", "/v1/kv/default/k?consistency=linearizable", b"x")
    assert reply.status == 501 and reply.json()["error"]["code"] == "not_implemented"
    assert "linearizable" in reply.json()["error"]["message"]
    assert api.fake.writes == []


async def test_both_front_doors_take_and_refuse_the_same_header_sizes(api: Api) -> None:
    # A header line longer than aiohttp's default (8,190 bytes), as a maximal context token is.
    padded = await api.call("PUT", K, b"v", {"X-Pad": "a" * 12_000})
    assert padded.status == 204
    too_long = await api.call("PUT", K, b"v", {"X-Pad": "a" * (REQUEST_DEFAULTS.request_header_bytes_max + 1)})
    assert too_long.status == 400
    # A head the HTTP parser refuses is answered before any route, with the JSON error body
    # (errors.json_errors_protocol), on both doors alike.
    refused = api.records.pop()
    assert refused.headers["Content-Type"] == "application/json"
    assert json.loads(refused.body)["error"]["code"] == "bad_request"
    assert len(api.fake.writes) == 1
