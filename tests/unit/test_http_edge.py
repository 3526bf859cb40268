"""The client port's fast path (node/http/edge.py): which requests it takes, and that a
connection keeps working, in order, when it takes some and hands the rest to aiohttp.

The whole client API suite (test_http_api.py) also runs through the edge; this file covers
what only a raw socket shows: pipelining, hand-off in the middle of a connection, closing.
"""

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest
from edge_server import EdgeTestServer
from prometheus_client.parser import text_string_to_metric_families
from test_http_api import FakeCoordinator

from cluster.limits import REQUEST_DEFAULTS
from cluster.requests import WriteOutcome, WriteRequest
from node.http import build_client_app
from node.http import edge as edge_module
from node.http.edge import ClientEdge, parse_head

LIMITS = REQUEST_DEFAULTS
LIMIT = LIMITS.value_bytes_max
PLAIN = b"PUT /v1/kv/default/k?consistency=quorum HTTP/1.1\r\nHost: x\r\nContent-Length: 1"


def test_a_plain_write_is_taken() -> None:
    head = parse_head(PLAIN, LIMITS)
    assert head is not None
    assert (head.method, head.raw_path, head.content_length) == ("PUT", "/v1/kv/default/k?consistency=quorum", 1)
    assert dict(head.query) == {"consistency": "quorum"} and head.headers["HOST"] == "x"
    delete = parse_head(b"DELETE /v1/kv/default/k HTTP/1.1\r\nHost: x\r\nConnection: close", LIMITS)
    assert delete is not None and delete.method == "DELETE" and not delete.keep_alive
    read = parse_head(b"GET /v1/kv/default/k?consistency=one HTTP/1.1\r\nHost: x", LIMITS)
    assert read is not None and read.method == "GET" and read.content_length is None


@pytest.mark.parametrize(
    "head",
    [
        PLAIN.replace(b"HTTP/1.1", b"HTTP/1.0"),  # no keep-alive by default: aiohttp's
        PLAIN.replace(b"Host: x\r\n", b""),  # RFC 9112 §3.2: aiohttp's 400
        PLAIN + b"\r\nHost: y",
        PLAIN.replace(b"PUT", b"GET"),  # a read with a body
        PLAIN.replace(b"PUT", b"HEAD"),
        PLAIN.replace(b"PUT", b"POST"),
        PLAIN.replace(b"/v1/kv/default/k", b"/v1/keyspaces/default"),
        PLAIN.replace(b"/v1/kv/", b"http://x/v1/kv/"),  # absolute form
        PLAIN.replace(b"/k?", b"/k#f?"),
        PLAIN.replace(b"PUT /", b"PUT  /"),
        PLAIN + b"\r\nTransfer-Encoding: chunked",
        PLAIN + b"\r\nExpect: 100-continue",
        PLAIN + b"\r\nUpgrade: h2c",
        PLAIN + b"\r\nContent-Length: 1",  # twice
        PLAIN.replace(b"Content-Length: 1", b"Content-Length: +1"),
        PLAIN.replace(b"Content-Length: 1", b"Content-Length: %d" % (LIMIT + 1)),  # aiohttp's 413
        PLAIN + b"\r\n folded: continuation",
        PLAIN + b"\r\nBad Name: x",
        PLAIN + b"\r\nX: caf\xc3\xa9",  # not ASCII
        PLAIN + b"\r\nX: a\x01b",
        PLAIN + b"\r\nConnection: keep-alive, upgrade",
        PLAIN.replace(b"consistency=quorum", b"consistency=%71uorum"),  # needs decoding
        PLAIN.replace(b"consistency=quorum", b"consistency"),
        PLAIN.replace(b"consistency=quorum", b"a=1&&b=2"),
        PLAIN + b"\r\nContent-Type: text/plain\r\nContent-Type: application/json",  # aiohttp's 400
        PLAIN + b"\r\nConnection: close\r\nConnection: keep-alive",  # llhttp combines them
        PLAIN + b"\r\nContent-Encoding: gzip",  # aiohttp decodes the body
        PLAIN + b"\r\nProxy-Connection: close",
        PLAIN + b"\r\nX: a\nb",
        PLAIN.replace(b"Content-Length: 1", b"Content-Length: " + b"0" * 15 + b"1"),
        PLAIN + b"\r\nX: y" * LIMITS.request_headers_max,
        PLAIN + b"\r\nX: " + b"y" * LIMITS.request_header_bytes_max,
        PLAIN.replace(b"/k?", b"/" + b"k" * LIMITS.request_line_bytes_max + b"?"),
    ],
)
def test_anything_unusual_goes_to_aiohttp(head: bytes) -> None:
    assert parse_head(head, LIMITS) is None


@pytest.fixture
async def edge() -> AsyncIterator[tuple[EdgeTestServer, FakeCoordinator]]:
    fake = FakeCoordinator()
    server = EdgeTestServer(build_client_app(fake))
    await server.start_server()
    try:
        yield server, fake
    finally:
        await server.close()


def put(key: str, value: bytes, extra: bytes = b"") -> bytes:
    return b"PUT /v1/kv/default/%s HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n%s\r\n%s" % (
        key.encode(),
        len(value),
        extra,
        value,
    )


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    lines = head.decode().split("\r\n")
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return int(lines[0].split(" ")[1]), headers, body


def hold_writes(fake: FakeCoordinator) -> asyncio.Event:
    """Writes wait at the coordinator until the returned event is set."""
    gate = asyncio.Event()
    original = fake.put

    async def held_put(req: WriteRequest) -> WriteOutcome:
        await gate.wait()
        return await original(req)

    fake.put = held_put  # type: ignore[method-assign]
    return gate


def counters(server: EdgeTestServer) -> ClientEdge:
    assert server.edge is not None
    return server.edge


async def test_pipelined_writes_are_answered_in_order(edge: tuple[EdgeTestServer, FakeCoordinator]) -> None:
    server, fake = edge
    reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(b"".join(put(f"k{i}", b"v%d" % i) for i in range(5)))  # one segment, five requests
    statuses = [(await read_response(reader))[0] for _ in range(5)]
    assert statuses == [204] * 5
    assert [w.key for w in fake.writes] == [b"k0", b"k1", b"k2", b"k3", b"k4"]
    assert counters(server).fast_requests == 5 and counters(server).handed_off == 0
    writer.close()


async def test_a_connection_is_handed_to_aiohttp_mid_stream_and_keeps_its_order(
    edge: tuple[EdgeTestServer, FakeCoordinator],
) -> None:
    server, fake = edge
    reader, writer = await asyncio.open_connection(server.host, server.port)
    get = b"GET /v1/kv/default/a HTTP/1.1\r\nHost: t\r\n\r\n"
    listing = b"GET /v1/kv/default HTTP/1.1\r\nHost: t\r\n\r\n"
    # A fast write and read, then a listing (aiohttp's) pipelined with a write and a read behind it.
    writer.write(put("a", b"first") + get + listing + put("a", b"second") + get)
    first, read, keys, second, read_again = [await read_response(reader) for _ in range(5)]
    assert first[0] == 204 and read[0] == 200 and read[2] == b"first"
    assert keys[0] == 200 and b'"keys":["a"]' in keys[2]
    assert second[0] == 204 and read_again[0] == 300  # no context: siblings, answered by aiohttp
    assert counters(server).fast_requests == 2 and counters(server).handed_off == 1
    assert [w.value for w in fake.writes] == [b"first", b"second"]
    writer.close()


async def test_a_refused_write_is_answered_by_aiohttp_exactly(edge: tuple[EdgeTestServer, FakeCoordinator]) -> None:
    server, fake = edge
    reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(b"PUT /v1/kv/default/k?w=9&consistency=bogus HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\n\r\nv")
    status, headers, body = await read_response(reader)
    assert status == 400 and b"invalid_consistency" in body and headers["titra-coordinator"] == "n1"
    assert not fake.writes and counters(server).handed_off == 1
    writer.close()


@pytest.mark.parametrize(
    ("sent", "named"),
    [
        (b"PUT /v1/kv/default/k HTTP/1.1\r\nHost: t\r\nContent-Length: abc\r\n\r\n", "Content-Length: abc"),
        (b"GARBAGE / HTTP/1.1\r\nHost: t\r\n\r\n", "Invalid method"),
        (b"GET /v1/kv/default/k HTTP/1.1\r\nHost: t\r\nHost: u\r\n\r\n", "Duplicate 'Host' header"),
        (
            b"PUT /v1/kv/default/k HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nContent-Length: 1\r\n\r\nv",
            "Content-Length can't be present with Transfer-Encoding",
        ),
    ],
)
async def test_what_aiohttp_cannot_parse_gets_a_json_error_naming_the_problem(
    edge: tuple[EdgeTestServer, FakeCoordinator], sent: bytes, named: str
) -> None:
    server, fake = edge
    reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(sent)
    status, headers, body = await read_response(reader)
    assert status == 400 and headers["content-type"] == "application/json"
    error = json.loads(body)["error"]
    assert error["code"] == "bad_request" and named in error["message"] and "\n" not in error["message"]
    assert await asyncio.wait_for(reader.read(), 5) == b""  # the connection cannot be trusted: closed
    assert not fake.writes and counters(server).handed_off == 1
    writer.close()


async def test_connection_close_is_honoured(edge: tuple[EdgeTestServer, FakeCoordinator]) -> None:
    server, _ = edge
    reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(put("k", b"v", b"Connection: close\r\n"))
    status, headers, _ = await read_response(reader)
    assert status == 204 and headers["connection"] == "close"
    assert await asyncio.wait_for(reader.read(), 5) == b""  # the server closed it
    assert counters(server).fast_requests == 1
    writer.close()


async def test_errors_after_coordination_are_rendered_by_the_fast_path(
    edge: tuple[EdgeTestServer, FakeCoordinator],
) -> None:
    server, fake = edge
    reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(put("k", b"v", b"Accept: application/msgpack\r\n"))
    fake.fail_with = RuntimeError("disk on fire")
    status, headers, body = await read_response(reader)
    assert status == 500 and headers["content-type"] == "application/msgpack" and b"disk on fire" not in body
    fake.fail_with = None
    writer.write(b"PUT /v1/kv/nosuch/k HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\n\r\nv")
    status, headers, body = await read_response(reader)
    assert status == 404 and b"keyspace_not_found" in body and "titra-context" in headers
    assert counters(server).fast_requests == 2 and counters(server).handed_off == 0
    writer.close()


async def test_an_idle_connection_is_closed_after_the_idle_timeout() -> None:
    limits = replace(REQUEST_DEFAULTS, client_idle_timeout_s=1)
    server = EdgeTestServer(build_client_app(FakeCoordinator(), limits=limits))
    await server.start_server()
    try:
        reader, writer = await asyncio.open_connection(server.host, server.port)
        writer.write(put("k", b"v"))
        assert (await read_response(reader))[0] == 204
        # Idle from here: the sweep (every quarter of the timeout) closes it within ~1.25 s.
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
    finally:
        await server.close()


async def test_closing_lets_the_write_in_flight_answer(edge: tuple[EdgeTestServer, FakeCoordinator]) -> None:
    server, fake = edge
    gate = hold_writes(fake)
    reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(put("k", b"v"))
    deadline = asyncio.get_running_loop().time() + 5
    while not any(c.task is not None for c in counters(server).connections):
        assert asyncio.get_running_loop().time() < deadline, "the write never started"
        await asyncio.sleep(0.005)
    closing = asyncio.create_task(counters(server).close(5))
    gate.set()
    assert (await read_response(reader))[0] == 204
    await closing
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()


async def test_a_half_closed_connection_still_gets_its_answers(edge: tuple[EdgeTestServer, FakeCoordinator]) -> None:
    server, fake = edge
    reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(put("a", b"1") + put("b", b"2") + b"PUT /v1/kv/default/c HTTP/1.1\r\nHost: t\r\nContent-Le")
    writer.write_eof()
    assert [(await read_response(reader))[0] for _ in range(2)] == [204, 204]
    assert await asyncio.wait_for(reader.read(), 5) == b""  # the incomplete third is never answered
    assert [w.key for w in fake.writes] == [b"a", b"b"]
    writer.close()


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []
        self.reading = True
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written.append(bytes(data))

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


async def test_answers_that_do_not_drain_stop_the_reading(edge: tuple[EdgeTestServer, FakeCoordinator]) -> None:
    server, fake = edge
    connection, transport = counters(server)(), FakeTransport()
    connection.connection_made(transport)
    connection.pause_writing()  # the transport's buffer is full: the client does not read
    assert not transport.reading
    connection.data_received(put("a", b"1") + put("b", b"2"))
    assert connection.task is None and not fake.writes and not transport.written
    connection.resume_writing()
    deadline = asyncio.get_running_loop().time() + 5
    while len(transport.written) < 2:
        assert asyncio.get_running_loop().time() < deadline, "the pipelined writes were not answered"
        await asyncio.sleep(0.005)
    assert all(answer.startswith(b"HTTP/1.1 204 ") for answer in transport.written)
    assert [w.key for w in fake.writes] == [b"a", b"b"] and transport.reading
    connection.connection_lost(None)


async def test_a_head_that_cannot_be_fast_goes_to_aiohttp_before_it_is_complete(
    edge: tuple[EdgeTestServer, FakeCoordinator],
) -> None:
    server, _ = edge
    for sent in (b"GET /health HTTP/1.1\nHost: x\n\n", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"):
        reader, writer = await asyncio.open_connection(server.host, server.port)
        writer.write(sent)  # no CRLF CRLF ever comes: aiohttp answers it at once, not the idle sweep
        status = (await asyncio.wait_for(reader.readline(), 5)).split(b" ")
        assert status[0].startswith(b"HTTP/1.") and status[1] == b"400", sent
        writer.close()
    reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(b"PUT /v1/kv/default/k HTTP/1.1\nHost: x\n")  # a fast-path prefix, bare LFs
    assert (await asyncio.wait_for(reader.readline(), 5)).split(b" ")[1] == b"400"
    writer.close()
    assert counters(server).handed_off == 3


async def test_a_body_trickling_in_does_not_parse_its_head_again(
    edge: tuple[EdgeTestServer, FakeCoordinator], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, fake = edge
    parsed = []
    monkeypatch.setattr(edge_module, "parse_head", lambda head, limits: parsed.append(head) or parse_head(head, limits))
    reader, writer = await asyncio.open_connection(server.host, server.port)
    request = put("k", b"v" * 200)
    for at in range(0, len(request), 7):  # the head and the body a few bytes at a time
        writer.write(request[at : at + 7])
        await writer.drain()
        await asyncio.sleep(0)
    assert (await read_response(reader))[0] == 204
    assert len(parsed) == 1 and fake.writes[0].value == b"v" * 200
    writer.close()


async def test_idleness_counts_from_the_answer_not_only_from_the_request(
    edge: tuple[EdgeTestServer, FakeCoordinator],
) -> None:
    server, fake = edge
    gate = hold_writes(fake)
    connection, transport = counters(server)(), FakeTransport()
    connection.connection_made(transport)
    connection.data_received(put("k", b"v"))
    received = connection.last_active
    deadline = asyncio.get_running_loop().time() + 5
    while connection.task is None or time.monotonic() <= received:
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.001)
    released = time.monotonic()
    gate.set()
    while not transport.written:
        assert asyncio.get_running_loop().time() < deadline, "the write was not answered"
        await asyncio.sleep(0.005)
    assert connection.last_active >= released > received  # a long request does not count as idle
    connection.connection_lost(None)


async def test_metrics_count_the_fast_path_and_the_hand_offs(edge: tuple[EdgeTestServer, FakeCoordinator]) -> None:
    server, _ = edge
    reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(put("k", b"v"))
    assert (await read_response(reader))[0] == 204
    writer.close()
    reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n")  # not a KV route: aiohttp's
    status, _, body = await read_response(reader)
    writer.close()
    assert status == 200
    samples = {s.name: s.value for f in text_string_to_metric_families(body.decode()) for s in f.samples}
    assert samples["titra_http_fast_path_requests_total"] == 1.0
    assert samples["titra_http_handed_off_connections_total"] == 1.0
