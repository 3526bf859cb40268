"""The client port's front: a lean HTTP/1.1 path for plain KV requests, aiohttp for the rest.

Why: on the quorum-write benchmark, answering these requests here instead of through aiohttp's
request cycle (its protocol, request and response objects, router and middleware chain) cut
16% of the CPU of a write across the three nodes (docs/performance.md). Redis, etcd and Cassandra
each parse their client protocol themselves on the hot path; this module does the same for
the requests that dominate a load, reads and writes of one key, and nothing else.

How (rules):
- Every connection starts here. A request is taken by the fast path only when its head is in a
  strict, boring subset of HTTP/1.1: `PUT`, `DELETE` or `GET` of `/v1/kv/...` in origin form,
  `HTTP/1.1`, ASCII only, token header names, one `Host`, no header repeated, no
  `Transfer-Encoding`, `Content-Encoding`, `Expect` or `Upgrade`, a query of plain `name=value`
  pairs, a `Content-Length` body within the value limit.
- Anything else, including every request the shared parser (node/http/parse.py) refuses, is
  handed, with every byte of it and after it, to aiohttp's own protocol on the same connection,
  which then keeps the connection: aiohttp's parser and limits answer it exactly as they answer
  a connection that never met the fast path, in Titra's error body (a JSON `bad_request` naming
  what aiohttp found: errors.json_errors_protocol). So the fast path never has to produce
  an error of its own about HTTP syntax, and nothing it accepts differs from aiohttp.
- The request itself is the aiohttp route's own code: the same parsers (`parse.parse_write`,
  `parse.parse_read`), the same coordination and receipt (`ClientApi.coordinate_write`,
  `coordinate_read`), the same error bodies (`errors.error_parts`) and the same metrics series.
- One request at a time per connection: pipelined requests wait in the buffer and are answered
  in order. The socket stops being read while the buffer holds more than one maximal request
  or while answers are not drained (a client that sends but does not read), as aiohttp's
  `drain` does. A client that half-closes gets the answers to the requests the fast path took
  (after a hand-off, aiohttp's own handling of a half-close applies).
- A buffer that cannot start a fast-path head (another route, a bare-LF request, a TLS hello)
  goes to aiohttp at once, and each byte of a head is scanned once, however it trickles in.
"""

import asyncio
import functools
import http
import logging
import re
import time
from email.utils import formatdate
from typing import Any, cast

from aiohttp import web
from aiohttp.http import SERVER_SOFTWARE
from multidict import CIMultiDict, MultiDict

from cluster.limits import RequestDefaults
from cluster.requests import ReadRequest, WriteRequest
from node.http import parse
from node.http.app import API_KEY, METRICS_KEY, ClientApi
from node.http.errors import HttpError, error_parts, internal_error, json_errors_protocol
from node.http.metrics import HttpMetrics

log = logging.getLogger(__name__)

# The metrics label of the KV route, as aiohttp names it (test_http_api.py's metrics test, run
# through both front doors, checks).
KEY_ROUTE_LABEL = "/v1/kv/{keyspace}/{key}"
_METHODS = frozenset({b"PUT", b"DELETE", b"GET"})
# What a buffer must start with to be a fast-path head; anything else is aiohttp's at once.
_PREFIXES = (b"PUT /v1/kv/", b"GET /v1/kv/", b"DELETE /v1/kv/")
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# A target of visible ASCII without a fragment (a fragment is not a key's: aiohttp's URL
# parsing decides what it is), and a query of plain `name=value` pairs.
_TARGET = re.compile(rb"/v1/kv/[\x21-\x22\x24-\x7e]*")
_QUERY = re.compile(rb"[A-Za-z0-9_.-]+=[A-Za-z0-9_.-]*(?:&[A-Za-z0-9_.-]+=[A-Za-z0-9_.-]*)*")
_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
# Headers whose presence sends a request to aiohttp: framing, body decoding, protocol switches
# and connection management it handles (llhttp combines some of them in ways not worth copying).
_AIOHTTP_HEADERS = frozenset(
    {
        "transfer-encoding",
        "content-encoding",
        "expect",
        "upgrade",
        "proxy-connection",
        "sec-websocket-key1",
    }
)
_SERVER = SERVER_SOFTWARE.encode()


class _Head:
    """A request head the fast path accepted: what `parse.RequestHead` asks for."""

    __slots__ = ("content_length", "headers", "keep_alive", "method", "query", "raw_path")

    def __init__(
        self,
        method: str,
        raw_path: str,
        query: MultiDict[str],
        headers: CIMultiDict[str],
        content_length: int | None,
        keep_alive: bool,
    ) -> None:
        self.method = method
        self.raw_path = raw_path
        self.query = query
        self.headers = headers
        self.content_length = content_length
        self.keep_alive = keep_alive


def _query(raw: bytes) -> MultiDict[str] | None:
    """Plain `name=value` pairs; anything that needs decoding or guessing is aiohttp's."""
    query: MultiDict[str] = MultiDict()
    if not raw:
        return query
    if not _QUERY.fullmatch(raw):
        return None
    for pair in raw.decode().split("&"):
        name, _, value = pair.partition("=")
        query.add(name, value)
    return query


def could_be_fast(prefix: bytes) -> bool:
    """Whether a buffer starting with `prefix` may still turn out to be a fast-path head."""
    if prefix.startswith(_PREFIXES):  # a whole prefix: the usual case, one C call
        return True
    return any(p.startswith(prefix[: len(p)]) for p in _PREFIXES)


def _bare_line_feed(buffer: bytearray, start: int) -> bool:
    """Whether an LF at or after `start` follows something other than a CR."""
    at = buffer.find(b"\n", start)
    while at >= 0:
        if at == 0 or buffer[at - 1] != 0x0D:
            return True
        at = buffer.find(b"\n", at + 1)
    return False


def parse_head(head: bytes, limits: RequestDefaults) -> _Head | None:
    """The head (without its final CRLF CRLF) if the fast path takes it; None hands it to aiohttp,
    whose limits (the same `limits`, given to it in node/server.py) then answer what is too large."""
    if not head.isascii():
        return None
    lines = head.split(b"\r\n")
    if len(lines) > limits.request_headers_max + 1 or len(lines[0]) > limits.request_line_bytes_max:
        return None
    parts = lines[0].split(b" ")
    if len(parts) != 3 or parts[2] != b"HTTP/1.1" or parts[0] not in _METHODS:
        return None
    target = parts[1]
    if not _TARGET.fullmatch(target):
        return None
    query = _query(target.partition(b"?")[2])
    if query is None:
        return None
    headers: CIMultiDict[str] = CIMultiDict()
    content_length: int | None = None
    keep_alive = True
    for line in lines[1:]:
        if len(line) > limits.request_header_bytes_max:
            return None
        name, sep, raw_value = line.partition(b":")
        if not sep or not _TOKEN.fullmatch(name):
            return None  # also obs-fold: a continuation line starts with a space
        value = raw_value.strip(b" \t")
        if _CONTROL.search(value):
            return None  # a bare LF too: aiohttp refuses it
        text_name = name.decode().lower()
        if text_name in headers or text_name in _AIOHTTP_HEADERS:
            return None  # any repeated header: aiohttp refuses some, llhttp combines others
        text_value = value.decode()
        if text_name == "content-length":
            # More digits than the limit has is over it (and int() refuses over 4,300 digits).
            if not value.isdigit() or len(value) > len(str(limits.value_bytes_max)):
                return None
            content_length = int(value)
            if content_length > limits.value_bytes_max:
                return None  # aiohttp answers the 413 without reading the body
        elif text_name == "connection":
            token = text_value.lower()
            if token not in ("keep-alive", "close"):
                return None
            keep_alive = token == "keep-alive"
        headers.add(text_name, text_value)
    if "host" not in headers:
        return None  # RFC 9112 §3.2: exactly one Host, or aiohttp's 400
    if parts[0] == b"GET" and content_length:
        return None  # a read with a body: aiohttp reads and ignores it
    return _Head(parts[0].decode(), target.decode(), query, headers, content_length, keep_alive)


class _Clock:
    """The Date header, formatted once a second."""

    def __init__(self) -> None:
        self._second = -1
        self._value = b""

    def date(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._value = formatdate(now, usegmt=True).encode()
        return self._value


@functools.cache
def _status_line(status: int) -> bytes:
    return b"HTTP/1.1 %d %s\r\n" % (status, http.HTTPStatus(status).phrase.encode())


def render(status: int, headers: dict[str, str], body: bytes, date: bytes, close: bool) -> bytes:
    """One HTTP/1.1 response, as aiohttp would frame it: no Content-Length on a 204."""
    # The header lines as one str, encoded once (UTF-8, as aiohttp encodes them).
    out = [_status_line(status), "".join([f"{name}: {value}\r\n" for name, value in headers.items()]).encode()]
    if status != 204:
        out.append(b"Content-Length: %d\r\n" % len(body))
    if close:
        out.append(b"Connection: close\r\n")
    out.append(b"Date: %s\r\nServer: %s\r\n\r\n" % (date, _SERVER))
    out.append(body)
    return b"".join(out)


def aiohttp_limits(limits: RequestDefaults) -> dict[str, Any]:
    """aiohttp's settings (AppRunner keywords) for the limits the fast path applies, so that both
    front doors refuse the same heads and close the same idle connections."""
    return {
        "max_line_size": limits.request_line_bytes_max,
        "max_field_size": limits.request_header_bytes_max,
        "max_headers": limits.request_headers_max,
        "keepalive_timeout": limits.client_idle_timeout_s,
    }


class ClientEdge:
    """The client port's protocol factory (asyncio `create_server`)."""

    def __init__(self, app: web.Application, aiohttp_server: web.Server) -> None:
        self.api: ClientApi = app[API_KEY]
        self.metrics: HttpMetrics = app[METRICS_KEY]
        self.limits: RequestDefaults = self.api.limits
        self.aiohttp_server = aiohttp_server
        self.clock = _Clock()
        self.connections: set[_Connection] = set()
        self.closing = False
        # A connection stops reading while its unanswered bytes exceed one maximal request.
        self.buffer_bytes_max = self.limits.edge_head_bytes_max + self.limits.value_bytes_max
        self.fast_requests = 0
        self.handed_off = 0
        self._sweep_s = max(self.limits.client_idle_timeout_s / 4, 0.05)
        self._sweeper: asyncio.TimerHandle | None = None
        self.metrics.watch_edge(lambda: (self.fast_requests, self.handed_off))

    def __call__(self) -> "_Connection":
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().call_later(self._sweep_s, self._sweep)
        return _Connection(self)

    def _sweep(self) -> None:
        """Close connections idle past the timeout; one timer for all, not one per request."""
        self._sweeper = None
        if self.closing:
            return
        idle_since = time.monotonic() - self.limits.client_idle_timeout_s
        for connection in list(self.connections):
            if connection.task is None and connection.last_active < idle_since:
                connection.close()
        # Rescheduled even with no connection: one may be between __call__ and connection_made.
        self._sweeper = asyncio.get_running_loop().call_later(self._sweep_s, self._sweep)

    async def close(self, timeout_s: float) -> None:
        """Stop taking requests; let those in flight answer for up to `timeout_s`, then close."""
        self.closing = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        busy = []
        for connection in list(self.connections):
            if connection.task is None:
                connection.close()
            else:
                busy.append(connection.task)
        if busy:
            await asyncio.wait(busy, timeout=timeout_s)
        for connection in list(self.connections):
            connection.close()


class _Connection(asyncio.Protocol):
    def __init__(self, edge: ClientEdge) -> None:
        self.edge = edge
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.task: asyncio.Task[None] | None = None  # the request being answered
        self.reading_paused = False
        self.writing_paused = False  # the transport's buffer is past its high-water mark
        self.eof = False  # the client half-closed: answer what is complete, then close
        # The last byte received or answer written: idleness counts from the later (aiohttp's).
        self.last_active = time.monotonic()
        # The first request's head once parsed (its end offset), while its body is still coming,
        # and where the search for the end of a head resumes: each byte is looked at once.
        self.head: tuple[_Head, int] | None = None
        self.scanned = 0
        self.loop: asyncio.AbstractEventLoop | None = None  # the serving loop, once a request came

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.edge.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        # A write in flight goes on (as aiohttp lets handlers finish); its answer has nowhere to go.
        self.edge.connections.discard(self)
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self.last_active = time.monotonic()
        if self.task is None:
            self._next()
        self._flow()

    def eof_received(self) -> bool:
        self.eof = True
        if self.task is None:
            self._next()
        return True  # keep the transport open for the answer in flight, if any

    def pause_writing(self) -> None:
        # A client that sends but does not read: stop reading it too (aiohttp's drain, here).
        self.writing_paused = True
        self._flow()

    def resume_writing(self) -> None:
        self.writing_paused = False
        self._flow()
        if self.task is None:
            self._next()

    def _flow(self) -> None:
        """Read only while the unanswered bytes fit one maximal request and answers drain."""
        if self.transport is None:
            return
        pause = self.writing_paused or len(self.buffer) > self.edge.buffer_bytes_max
        if pause != self.reading_paused:
            self.reading_paused = pause
            if pause:
                self.transport.pause_reading()
            else:
                self.transport.resume_reading()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def _next(self) -> None:
        """Start answering the first request in the buffer, if it is all there."""
        if self.edge.closing:
            self.close()
            return
        if self.transport is None or self.writing_paused or self.task is not None:
            return
        buffer = self.buffer
        if self.head is None:
            if not could_be_fast(bytes(buffer[:16])):
                self._hand_off()  # aiohttp answers a foreign head at once (a 400, or a route)
                return
            limit = self.edge.limits.edge_head_bytes_max
            end = buffer.find(b"\r\n\r\n", max(self.scanned - 3, 0), limit)
            if end < 0:
                if _bare_line_feed(buffer, max(self.scanned - 1, 0)):
                    self._hand_off()  # lines ended by LF alone: aiohttp refuses them at once
                    return
                self.scanned = len(buffer)
                if len(buffer) >= limit:
                    self._hand_off()
                elif self.eof:
                    self.close()  # nothing more will come: an incomplete head is never answered
                return
            head = parse_head(bytes(buffer[:end]), self.edge.limits)
            if head is None:
                self._hand_off()
                return
            self.head = (head, end)
        head, end = self.head
        size = end + 4 + (head.content_length or 0)
        if len(buffer) < size:
            if self.eof:
                self.close()
            return  # the body is still coming
        body = bytes(buffer[end + 4 : size])
        loop = self.loop
        if loop is None:  # cached: asyncio.get_running_loop() is a getpid(2) call on CPython 3.11
            loop = self.loop = asyncio.get_running_loop()
        self.task = loop.create_task(self._answer(head, body, size))

    async def _answer(self, head: _Head, body: bytes, size: int) -> None:
        edge = self.edge
        started = time.perf_counter()

        async def read_body() -> bytes:
            return body

        secret = edge.api.coordinator.secret
        try:
            if head.method == "GET":
                request: WriteRequest | ReadRequest = parse.parse_read(head, secret, edge.limits)
            else:
                deleted = head.method == "DELETE"
                request = await parse.parse_write(head, read_body, secret, edge.limits, deleted=deleted)
        except Exception:
            # aiohttp answers it (an HttpError, or a bug it logs), as it would have without the
            # fast path (module docstring).
            self.task = None
            self._hand_off()
            return
        del self.buffer[:size]
        self.head, self.scanned = None, 0
        edge.fast_requests += 1
        close = not head.keep_alive
        accept = head.headers.get("Accept")
        try:
            if isinstance(request, WriteRequest):
                status, headers, payload = 204, await edge.api.coordinate_write(request), b""
            else:
                status, headers, payload = await edge.api.coordinate_read(request, accept)
        except HttpError as error:
            status, headers, payload = error_parts(error, accept)
        except Exception:
            log.exception("unexpected error serving %s %s", head.method, head.raw_path)
            status, headers, payload = error_parts(internal_error(), accept)
        edge.metrics.observe(KEY_ROUTE_LABEL, head.method, status, request.level, time.perf_counter() - started)
        self.task = None
        if self.transport is None:
            return
        self.transport.write(render(status, headers, payload, edge.clock.date(), close))
        self.last_active = time.monotonic()
        if close:
            self.transport.close()
            return
        self._flow()
        self._next()

    def _hand_off(self) -> None:
        """aiohttp's protocol takes the connection, from the first unanswered byte on."""
        transport = self.transport
        if transport is None:
            return
        self.edge.connections.discard(self)
        self.edge.handed_off += 1
        self.transport = None
        protocol = json_errors_protocol(self.edge.aiohttp_server)
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        if self.reading_paused:
            transport.resume_reading()
        if self.buffer:
            data, self.buffer = bytes(self.buffer), bytearray()
            protocol.data_received(data)
        if self.eof:
            protocol.eof_received()
