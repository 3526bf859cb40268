"""Titra's Python client: the protocol once (`AsyncClient`, on aiohttp), and a blocking `Client`.

The contract is docs/api.md; reading replies is `cluster.client_wire` (pure). A client is a
session: every response's `Titra-Context` replaces the token it keeps and every request sends it
back, which is what `causal` needs for read-your-writes through any node (Bayou's session
guarantees, Terry et al. 1994). Each logical write carries one `Idempotency-Key`, so a retry
after a lost connection, a 503 or a 504 cannot apply twice; a write whose outcome stays unknown
raises `OutcomeUnknown`, never "not written" (Jepsen's indeterminate operations).

Concurrent calls on one session are allowed; the token of whichever reply lands last is kept.
"""

import asyncio
import json
import random
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Collection, Coroutine, Iterator, Mapping, Sequence
from typing import Any, Concatenate, ParamSpec, TypeVar
from urllib.parse import quote

import aiohttp
from yarl import URL

from cluster.client_wire import (
    OCTET_STREAM,
    BadRequest,
    Conflict,
    GetResult,
    Health,
    IdempotencyMismatch,
    Key,
    KeyPage,
    Keyspace,
    NotFound,
    OutcomeUnknown,
    PreconditionFailed,
    ProtocolError,
    Receipt,
    Reply,
    RequestError,
    ServerError,
    Sibling,
    SiblingsPresent,
    TitraError,
    TooLarge,
    Unauthorized,
    Unavailable,
    UnsupportedMediaType,
    WriteResult,
    error_from,
    json_object,
    key_page,
    key_path,
    query_params,
    read_result,
)
from cluster.limits import CLIENT_DEFAULTS, REQUEST_DEFAULTS, ClientDefaults

__all__ = [
    "DEFAULT_ENDPOINT",
    "OCTET_STREAM",
    "AsyncClient",
    "BadRequest",
    "Client",
    "Conflict",
    "GetResult",
    "Health",
    "IdempotencyMismatch",
    "Key",
    "KeyPage",
    "Keyspace",
    "NotFound",
    "OutcomeUnknown",
    "PreconditionFailed",
    "ProtocolError",
    "Receipt",
    "RequestError",
    "ServerError",
    "Sibling",
    "SiblingsPresent",
    "TitraError",
    "TooLarge",
    "Unauthorized",
    "Unavailable",
    "UnsupportedMediaType",
    "WriteResult",
]

DEFAULT_ENDPOINT = "http://127.0.0.1:7070"


class _NotSent(Exception):
    """No connection was made: the request reached no node."""


class _Lost(Exception):
    """The connection failed after the request may have been sent."""


class AsyncClient:
    """One session against one or more endpoints of a cluster (failover in order, sticky)."""

    def __init__(
        self,
        endpoints: str | Sequence[str] = DEFAULT_ENDPOINT,
        *,
        context: str | None = None,
        defaults: ClientDefaults = CLIENT_DEFAULTS,
    ) -> None:
        self.endpoints = tuple(e.rstrip("/") for e in ([endpoints] if isinstance(endpoints, str) else endpoints))
        if not 1 <= len(self.endpoints) <= defaults.endpoints_max:
            raise ValueError(f"1 to {defaults.endpoints_max} endpoints, not {len(self.endpoints)}")
        for endpoint in self.endpoints:
            # Checked here: aiohttp would report a bad URL as a failed request, i.e. an unknown outcome.
            url = URL(endpoint)
            if url.scheme not in ("http", "https") or not url.host or url.path not in ("", "/"):
                raise ValueError(f"an endpoint is http[s]://host:port, not {endpoint!r}")
        self.context = context  # the session's causal context token
        self.defaults = defaults
        self._preferred = 0  # the endpoint that answered last
        self._session: aiohttp.ClientSession | None = None
        self._jitter = random.Random()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def put(
        self,
        keyspace: str,
        key: Key,
        value: bytes,
        content_type: str = OCTET_STREAM,
        *,
        consistency: str | None = None,
        w: int | None = None,
        timeout_ms: int | None = None,
        durability: str | None = None,
        if_match: str | None = None,
        if_none_match: bool = False,
        idempotency_key: str | None = None,
        context: str | None = None,
    ) -> WriteResult:
        """Write `value`. `context` overrides the session's token for this call ("" sends none)."""
        headers = {"Content-Type": content_type}
        if if_match is not None:
            headers["If-Match"] = if_match
        if if_none_match:
            headers["If-None-Match"] = "*"
        query = query_params(consistency=consistency, w=w, timeout_ms=timeout_ms, durability=durability)
        return await self._write("PUT", key_path(keyspace, key), query, headers, value, idempotency_key, context)

    async def delete(
        self,
        keyspace: str,
        key: Key,
        *,
        consistency: str | None = None,
        w: int | None = None,
        timeout_ms: int | None = None,
        durability: str | None = None,
        if_match: str | None = None,
        idempotency_key: str | None = None,
        context: str | None = None,
    ) -> WriteResult:
        """Write a tombstone; acknowledged, retried and reported like a put."""
        headers = {} if if_match is None else {"If-Match": if_match}
        query = query_params(consistency=consistency, w=w, timeout_ms=timeout_ms, durability=durability)
        return await self._write("DELETE", key_path(keyspace, key), query, headers, None, idempotency_key, context)

    async def get(
        self,
        keyspace: str,
        key: Key,
        *,
        consistency: str | None = None,
        r: int | None = None,
        timeout_ms: int | None = None,
        context: str | None = None,
    ) -> GetResult:
        """Read a key: one value, siblings, or `found=False` (which still carries a context)."""
        reply, _ = await self._call(
            "GET",
            key_path(keyspace, key),
            query=query_params(consistency=consistency, r=r, timeout_ms=timeout_ms),
            headers={"Accept": "multipart/mixed"},
            context=context,
            timeout_ms=timeout_ms,
            ok={200, 300, 404},
        )
        return read_result(reply)

    async def list_keys(
        self, keyspace: str, prefix: str = "", limit: int | None = None, cursor: str | None = None
    ) -> KeyPage:
        """One page of keys, in order."""
        query = query_params(prefix=prefix or None, limit=limit, cursor=cursor)
        reply, _ = await self._call("GET", f"/v1/kv/{quote(keyspace, safe='')}", query=query)
        return key_page(reply)

    async def iter_keys(self, keyspace: str, prefix: str = "", page_size: int | None = None) -> AsyncIterator[str]:
        """Every key under `prefix`, in order, one page at a time."""
        cursor: str | None = None
        while True:
            page = await self.list_keys(keyspace, prefix, page_size, cursor)
            for key in page.keys:
                yield key
            if page.cursor is None:
                return
            if page.cursor == cursor:
                raise ProtocolError(200, "unreadable_response", f"listing cursor {cursor!r} did not advance")
            cursor = page.cursor

    async def create_keyspace(
        self, name: str, n: int = REQUEST_DEFAULTS.replicas_default, resolution: str = "siblings"
    ) -> Keyspace:
        """Create a keyspace; `created` is False when it existed with this definition (a 200)."""
        # Idempotent by definition (the same definition again is a 200), so it retries like a write.
        reply, _ = await self._call(
            "PUT",
            f"/v1/keyspaces/{quote(name, safe='')}",
            headers={"Content-Type": "application/json"},
            body=json.dumps({"n": n, "resolution": resolution}).encode(),
            ok={200, 201},
            write=True,
        )
        return Keyspace(name, n, resolution, created=reply.status == 201)

    async def status(self) -> dict[str, Any]:
        """`GET /v1/status`: this node, the ring, the peers (JSON as the node sends it)."""
        reply, _ = await self._call("GET", "/v1/status")
        return json_object(reply)

    async def health(self, probe: str = "") -> Health:
        """`GET /health[/live|/ready]`; a 503 "not ready" is an answer here, not an error."""
        reply, _ = await self._call("GET", f"/health/{probe}" if probe else "/health", ok=range(100, 600))
        try:
            body = json_object(reply)
        except ProtocolError:
            body = {"text": reply.body[:1024].decode(errors="replace")}
        return Health(reply.status == 200, reply.status, body)

    async def _write(
        self,
        method: str,
        path: str,
        query: dict[str, str],
        headers: dict[str, str],
        body: bytes | None,
        idempotency_key: str | None,
        context: str | None,
    ) -> WriteResult:
        # One key per logical write, reused by every retry: the coordinator answers a retry with the
        # first outcome instead of applying it again (api.md, "Idempotency").
        headers["Idempotency-Key"] = idempotency_key or str(uuid.uuid4())
        reply, attempts = await self._call(
            method,
            path,
            query=query,
            headers=headers,
            body=body,
            context=context,
            timeout_ms=int(query["timeout_ms"]) if "timeout_ms" in query else None,
            ok={200, 201, 204},
            write=True,
        )
        return WriteResult(Receipt.from_headers(reply.headers), headers["Idempotency-Key"], attempts)

    async def _call(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
        context: str | None = None,
        timeout_ms: int | None = None,
        ok: Collection[int] = (200,),
        write: bool = False,
    ) -> tuple[Reply, int]:
        """Send with retries and failover: the reply whose status is in `ok`, and the attempts made."""
        sent = dict(headers or {})
        # Chosen once: a retry must be the same request, context included, or it is a 422.
        token = self.context if context is None else context
        if token:
            sent["Titra-Context"] = token
        retries = self.defaults.write_retries_max if write else self.defaults.read_retries_max
        index, lost_here, maybe_applied = self._preferred, 0, False
        failure: TitraError | None = None
        for attempt in range(retries + 1):
            if attempt:
                await asyncio.sleep(self._backoff_s(attempt))
            endpoint = self.endpoints[index % len(self.endpoints)]
            try:
                reply = await self._send(endpoint, method, path, query or {}, sent, body, timeout_ms)
            except _NotSent as exc:
                # Nothing reached that node, so no idempotency record can be there: move on.
                failure = Unavailable(0, "unreachable", f"{endpoint}: {exc}")
                index, lost_here = index + 1, 0
                continue
            except _Lost as exc:
                maybe_applied = maybe_applied or write
                failure = (OutcomeUnknown if write else Unavailable)(0, "connection_lost", f"{endpoint}: {exc}")
                # The node may hold the outcome under our Idempotency-Key: ask it once more first.
                lost_here += 1
                if lost_here > 1:
                    index, lost_here = index + 1, 0
                continue
            self._preferred = index % len(self.endpoints)
            if "Titra-Context" in reply.headers:
                self.context = reply.headers["Titra-Context"]
            if reply.status in ok:
                return reply, attempt + 1
            failure = error_from(reply)
            # 503 (surely not written) and 504 (unknown) are safe to retry under one key; a 4xx never is.
            if not (write and reply.status in (503, 504)):
                break
            maybe_applied = maybe_applied or reply.status == 504
        assert failure is not None, "the loop runs at least once"
        if maybe_applied and not isinstance(failure, OutcomeUnknown):
            # The last answer speaks for the last attempt only; an earlier one may have landed.
            message = f"an earlier attempt may have been applied; the last got {failure}"
            raise OutcomeUnknown(failure.status, failure.code, message, failure.details, failure.receipt) from failure
        raise failure

    def _backoff_s(self, attempt: int) -> float:
        cap_ms = min(self.defaults.retry_backoff_ms_max, self.defaults.retry_backoff_ms * 2 ** (attempt - 1))
        return self._jitter.uniform(0, cap_ms) / 1000

    async def _send(
        self,
        endpoint: str,
        method: str,
        path: str,
        query: Mapping[str, str],
        headers: Mapping[str, str],
        body: bytes | None,
        timeout_ms: int | None,
    ) -> Reply:
        if self._session is None:
            self._session = aiohttp.ClientSession()
            # Our loop owns retries (it counts them and moves between endpoints); aiohttp would
            # otherwise resend a PUT/DELETE once on a dropped connection, unseen. Its test_utils does this too.
            self._session._retry_connection = False
        server_ms = timeout_ms or REQUEST_DEFAULTS.request_timeout_ms_default
        timeout = aiohttp.ClientTimeout(
            total=(server_ms + self.defaults.timeout_slack_ms) / 1000,
            sock_connect=self.defaults.connect_timeout_ms / 1000,
        )
        # encoded=True: the key is already percent-encoded, and a %2F in it must stay one.
        url = URL(endpoint + path, encoded=True).with_query(query)
        try:
            async with self._session.request(
                method, url, headers=headers, data=body, timeout=timeout, allow_redirects=False
            ) as response:
                data = bytearray()
                async for chunk in response.content.iter_chunked(64 * 1024):
                    data += chunk
                    if len(data) > self.defaults.response_bytes_max:
                        raise ProtocolError(response.status, "response_too_large", f"over {len(data)} bytes")
                return Reply(response.status, response.headers, bytes(data))
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            raise _NotSent(str(exc)) from exc
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _Lost(str(exc) or type(exc).__name__) from exc


P = ParamSpec("P")
T = TypeVar("T")


def _blocking(
    method: Callable[Concatenate[AsyncClient, P], Coroutine[Any, Any, T]],
) -> Callable[Concatenate["Client", P], T]:
    """The blocking form of an AsyncClient method, with its signature, run on the Client's loop."""

    def call(self: "Client", /, *args: P.args, **kwargs: P.kwargs) -> T:
        return self._run(method(self.async_client, *args, **kwargs))

    call.__name__, call.__doc__ = method.__name__, method.__doc__
    return call


class Client:
    """A blocking session: an AsyncClient driven on a private event loop in a daemon thread, so it
    works from plain code and from inside another event loop's thread alike."""

    def __init__(
        self,
        endpoints: str | Sequence[str] = DEFAULT_ENDPOINT,
        *,
        context: str | None = None,
        defaults: ClientDefaults = CLIENT_DEFAULTS,
    ) -> None:
        self.async_client = AsyncClient(endpoints, context=context, defaults=defaults)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="titra-client", daemon=True)
        self._thread.start()

    @property
    def context(self) -> str | None:
        return self.async_client.context

    @context.setter
    def context(self, token: str | None) -> None:
        self.async_client.context = token

    put = _blocking(AsyncClient.put)
    delete = _blocking(AsyncClient.delete)
    get = _blocking(AsyncClient.get)
    list_keys = _blocking(AsyncClient.list_keys)
    create_keyspace = _blocking(AsyncClient.create_keyspace)
    status = _blocking(AsyncClient.status)
    health = _blocking(AsyncClient.health)

    def iter_keys(self, keyspace: str, prefix: str = "", page_size: int | None = None) -> Iterator[str]:
        """Every key under `prefix`, in order (pages fetched as the iteration reaches them)."""
        pages = self.async_client.iter_keys(keyspace, prefix, page_size)

        async def next_key() -> str:
            return await anext(pages)

        while True:
            try:
                yield self._run(next_key())
            except StopAsyncIteration:
                return

    def close(self) -> None:
        if self._loop.is_closed():
            return
        self._run(self.async_client.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _run(self, work: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(work, self._loop).result()
