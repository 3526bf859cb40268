"""The peer transport over real sockets on 127.0.0.1, ephemeral ports only.

Each node's listener socket is bound to port 0 before any transport exists, because every
transport must know its peers' addresses at construction; a bound socket that is not yet
listening refuses connections, which is exactly a peer that has not started. Tests that play a
misbehaving peer speak the wire protocol by hand through `RawPeer`.
"""

import asyncio
import functools
import json
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import msgpack
import pytest
from peer_heads import upgrade_head

from cluster.limits import KIB, MIB, PEER_DEFAULTS, PeerDefaults
from cluster.messages import Message, ReplicaMergeAck, ReplicaRead, ReplicaReadReply, encode
from node.transport import NODE_ID_HEADER, PEER_PATH, PEER_PROTOCOL, PeerTransport, UnknownPeerError

SECRET = "cluster-secret-for-tests"


async def until(pred: Callable[[], bool], what: str, timeout_s: float = 5.0) -> None:
    """Poll `pred` until it holds; fail naming `what` was awaited if the deadline passes first."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not pred():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.005)  # the poll interval, not a wait for state


def ack(round_id: int) -> ReplicaMergeAck:
    return ReplicaMergeAck(round_id=round_id, ok=True)


def messages_sent(transport: PeerTransport, count: int) -> Callable[[], bool]:
    return lambda: transport.stats.messages_sent == count


@dataclass
class Node:
    node_id: str
    port: int
    sock: socket.socket | None  # reserved, not yet listening; None once handed to the listener
    inbox: list[tuple[str, Message]] = field(default_factory=list)
    transport: PeerTransport | None = None

    @property
    def t(self) -> PeerTransport:
        assert self.transport is not None
        return self.transport

    def round_ids_from(self, sender: str) -> list[int]:
        return [getattr(m, "round_id", -1) for s, m in self.inbox if s == sender]

    async def listen(self) -> None:
        if self.sock is not None:
            sock, self.sock = self.sock, None
            await self.t.listen(sock=sock)
        else:  # a restart: the port this node was given first
            await self.t.listen("127.0.0.1", self.port)

    async def stop_listening(self) -> None:
        await self.t.close_inbound()


class Cluster:
    def __init__(self) -> None:
        self.nodes: dict[str, Node] = {}

    async def start(
        self,
        *node_ids: str,
        listening: tuple[str, ...] | None = None,
        defaults: PeerDefaults = PEER_DEFAULTS,
        admit_unknown_peers: bool = False,
    ) -> list[Node]:
        """Nodes that know each other; all listen unless `listening` names a subset."""
        for node_id in node_ids:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", 0))
            self.nodes[node_id] = Node(node_id, sock.getsockname()[1], sock)
        peers = {n.node_id: f"127.0.0.1:{n.port}" for n in self.nodes.values()}
        for node in self.nodes.values():
            node.transport = PeerTransport(
                node.node_id, peers, SECRET, _collect(node.inbox), defaults, admit_unknown_peers
            )
        for node in self.nodes.values():
            if listening is None or node.node_id in listening:
                await node.listen()
            await node.t.start()
        return list(self.nodes.values())

    async def close(self) -> None:
        for node in self.nodes.values():
            if node.transport is not None:
                await node.transport.close()
            if node.sock is not None:
                node.sock.close()


def _collect(inbox: list[tuple[str, Message]]) -> Callable[[str, Message], None]:
    def on_message(sender: str, message: Message) -> None:
        inbox.append((sender, message))

    return on_message


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    c = Cluster()
    yield c
    await c.close()


# A well-formed request from peer "a" unless told otherwise.
upgrade_request = functools.partial(upgrade_head, secret=SECRET)


def frame(payload: bytes) -> bytes:
    return len(payload).to_bytes(4, "big") + payload


def messages_frame(*messages: Message) -> bytes:
    return frame(msgpack.packb([encode(m) for m in messages], use_bin_type=True))


class RawPeer:
    """A client speaking the wire protocol by hand, to play peers that misbehave."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, node: Node) -> "RawPeer":
        reader, writer = await asyncio.open_connection("127.0.0.1", node.port)
        return cls(reader, writer)

    @classmethod
    async def upgraded(cls, node: Node, node_id: str = "a") -> "RawPeer":
        raw = await cls.connect(node)
        raw.writer.write(upgrade_request(node_id))
        async with asyncio.timeout(5):
            head = await raw.reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101 ") and f"Upgrade: {PEER_PROTOCOL}".encode() in head
        return raw

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def read_to_eof(self, timeout_s: float = 5.0) -> bytes:
        """Everything the listener sends until it closes the connection."""
        async with asyncio.timeout(timeout_s):
            return await self.reader.read()

    def close(self) -> None:
        self.writer.close()


def parse_response(data: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode().split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    assert int(headers["content-length"]) == len(body)
    return int(status_line.split(" ")[1]), headers, body


async def refusal(node: Node, request: bytes) -> tuple[int, str]:
    """Send `request` and read the listener's whole answer: (status, error code)."""
    raw = await RawPeer.connect(node)
    try:
        await raw.send(request)
        status, headers, body = parse_response(await raw.read_to_eof())
    finally:
        raw.close()
    assert headers["connection"] == "close"
    assert headers["content-type"].startswith("application/json")
    error = json.loads(body)["error"]
    assert error["message"]
    return status, error["code"]


async def test_two_nodes_exchange_messages_both_ways(cluster: Cluster) -> None:
    a, b = await cluster.start("a", "b")
    a.t.send("b", ReplicaRead(round_id=1, keyspace="ks", key=b"\x00k"))
    b.t.send("a", ack(2))
    await until(lambda: len(a.inbox) == 1 and len(b.inbox) == 1, "one message each way")
    assert b.inbox == [("a", ReplicaRead(round_id=1, keyspace="ks", key=b"\x00k"))]
    assert a.inbox == [("b", ack(2))]
    assert a.t.status()["b"]["sent"] == 1
    assert b.t.status()["a"]["received"] == 1


async def test_three_nodes_every_pair_both_ways(cluster: Cluster) -> None:
    nodes = await cluster.start("a", "b", "c")
    for sender in nodes:
        for receiver in nodes:
            if sender is not receiver:
                sender.t.send(receiver.node_id, ack(ord(sender.node_id)))
    await until(lambda: all(len(n.inbox) == 2 for n in nodes), "two messages at every node")
    for n in nodes:
        assert sorted(s for s, _ in n.inbox) == sorted(o.node_id for o in nodes if o is not n)
        assert all(m == ack(ord(s)) for s, m in n.inbox)


async def test_messages_sent_in_one_tick_leave_in_few_frames_in_order(cluster: Cluster) -> None:
    a, b = await cluster.start("a", "b", defaults=PeerDefaults(batch_messages_max=100))
    await until(lambda: a.t.is_reachable("b"), "a connected to b")
    for i in range(1_000):
        a.t.send("b", ack(i))
    await until(lambda: len(b.inbox) == 1_000, "all 1000 messages at b")
    assert b.round_ids_from("a") == list(range(1_000))
    assert a.t.stats.messages_sent == 1_000
    assert a.t.stats.frames_sent == 10  # one tick, split at batch_messages_max
    assert b.t.stats.messages_received == 1_000


async def test_each_tick_sends_one_frame(cluster: Cluster) -> None:
    a, b = await cluster.start("a", "b")
    await until(lambda: a.t.is_reachable("b"), "a connected to b")
    for tick in range(3):
        for i in range(3):
            a.t.send("b", ack(10 * tick + i))
        await until(messages_sent(a.t, 3 * (tick + 1)), f"tick {tick}'s messages written")
    await until(lambda: len(b.inbox) == 9, "nine messages at b")
    assert b.round_ids_from("a") == [0, 1, 2, 10, 11, 12, 20, 21, 22]
    assert a.t.stats.frames_sent == 3


async def test_frames_are_reassembled_however_the_bytes_arrive(cluster: Cluster) -> None:
    _, b = await cluster.start("a", "b")
    raw = await RawPeer.connect(b)
    await raw.send(upgrade_request() + messages_frame(ack(0)))  # a frame right behind the request
    async with asyncio.timeout(5):
        assert (await raw.reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101 ")
    stream = messages_frame(ack(1)) + messages_frame(ack(2), ack(3)) + messages_frame(ack(4))
    for i in range(len(stream)):  # a byte at a time: every split point of every frame
        await raw.send(stream[i : i + 1])
    await raw.send(messages_frame(ack(5)) + messages_frame(ack(6)))  # two frames in one write
    await until(lambda: len(b.inbox) == 7, "seven messages at b")
    assert b.round_ids_from("a") == [0, 1, 2, 3, 4, 5, 6]
    assert b.t.stats.decode_errors == 0
    raw.close()


async def test_messages_to_self_are_delivered_locally_on_the_next_tick(cluster: Cluster) -> None:
    (a,) = await cluster.start("a")
    a.t.send("a", ack(1))
    a.t.send("a", ack(2))
    assert a.inbox == []  # never re-entrant: the caller finishes its step first
    await until(lambda: len(a.inbox) == 2, "two messages to self")
    assert a.inbox == [("a", ack(1)), ("a", ack(2))]
    assert a.t.is_reachable("a")
    assert a.t.stats.frames_sent == 0


async def test_send_to_an_unknown_node_is_refused(cluster: Cluster) -> None:
    (a,) = await cluster.start("a")
    with pytest.raises(UnknownPeerError):
        a.t.send("zz", ack(1))
    assert not a.t.is_reachable("zz")


@pytest.mark.parametrize(
    ("request_bytes", "status", "code"),
    [
        (upgrade_request(secret=None), 401, "unauthorized"),
        (upgrade_request(secret="wrong-secret"), 401, "unauthorized"),
        (upgrade_request(secret=None).replace(b"Host:", f"Authorization: Basic {SECRET}\r\nHost:".encode()), 401,
         "unauthorized"),
        (upgrade_request(node_id="mallory"), 403, "forbidden"),
        (upgrade_request(node_id=None), 403, "forbidden"),
        (upgrade_request(path="/v1/status"), 404, "route_not_found"),
        (upgrade_request(method="POST"), 400, "bad_request"),
        (upgrade_request(upgrade=None), 400, "bad_request"),
        (upgrade_request(upgrade="websocket"), 400, "bad_request"),
        (b"GET /v1/peer\r\n\r\n", 400, "bad_request"),
        (upgrade_request().replace(b"Host: 127.0.0.1", b"Host 127.0.0.1"), 400, "bad_request"),
        (upgrade_request().replace(b"Host:", f"{NODE_ID_HEADER}: b\r\nHost:".encode()), 400, "bad_request"),
    ],
    ids=[
        "no-secret", "wrong-secret", "basic-auth", "unknown-node", "no-node-id", "other-path", "post",
        "no-upgrade", "other-upgrade", "http-0.9", "bad-header-line", "node-id-twice",
    ],
)  # fmt: skip
async def test_peer_endpoint_refuses_before_upgrading(
    cluster: Cluster, request_bytes: bytes, status: int, code: str
) -> None:
    _, b = await cluster.start("a", "b")
    assert await refusal(b, request_bytes) == (status, code)
    # The control: the same endpoint upgrades with the secret, a known node id and the upgrade headers.
    raw = await RawPeer.upgraded(b)
    await raw.send(messages_frame(ack(1)))
    await until(lambda: b.round_ids_from("a") == [1], "a frame over the control connection")
    raw.close()
    assert b.t.status()["a"]["received"] == 1, "a refused request delivers nothing"


async def test_curl_without_the_secret_gets_the_401_json(cluster: Cluster) -> None:
    _, b = await cluster.start("a", "b")
    raw = await RawPeer.connect(b)
    curl = f"GET {PEER_PATH} HTTP/1.1\r\nHost: 127.0.0.1:{b.port}\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n"
    await raw.send(curl.encode())
    status, headers, body = parse_response(await raw.read_to_eof())
    raw.close()
    assert status == 401
    assert headers["connection"] == "close"
    assert json.loads(body) == {
        "error": {"code": "unauthorized", "message": "peer endpoints need the cluster secret as a Bearer token"}
    }


async def test_a_stranger_with_the_secret_is_admitted_when_membership_allows(cluster: Cluster) -> None:
    (a,) = await cluster.start("a", admit_unknown_peers=True)
    assert await refusal(a, upgrade_request(node_id="a")) == (403, "forbidden")  # itself
    assert await refusal(a, upgrade_request(node_id="x" * 256)) == (403, "forbidden")  # too long for a node id
    assert await refusal(a, upgrade_request(node_id="joiner", secret="wrong")) == (401, "unauthorized")
    assert "joiner" not in a.t.status()
    raw = await RawPeer.upgraded(a, node_id="joiner")
    await raw.send(messages_frame(ack(9)))
    await until(lambda: a.inbox == [("joiner", ack(9))], "the joiner's message at a")
    assert a.t.status()["joiner"]["address"] == ""  # located later, by its gossip
    raw.close()


async def test_a_sender_with_the_wrong_secret_records_the_refusal(cluster: Cluster) -> None:
    a, b = await cluster.start("a", "b")
    await b.t.close()
    b.transport = PeerTransport("b", {"a": f"127.0.0.1:{a.port}"}, "some-other-secret", _collect(b.inbox))
    await b.t.start()
    await until(lambda: "401" in str(b.t.status()["a"]["last_error"]), "b's connect refused with 401")
    assert not b.t.is_reachable("a")


async def test_a_truncated_handshake_is_closed_at_the_timeout(cluster: Cluster) -> None:
    _, b = await cluster.start("a", "b", defaults=PeerDefaults(connect_timeout_ms=100, handshake_timeout_ms=200))
    loop = asyncio.get_running_loop()
    started = loop.time()
    raw = await RawPeer.connect(b)
    await raw.send(upgrade_request()[:30])  # and then nothing
    status, _, body = parse_response(await raw.read_to_eof())
    elapsed = loop.time() - started
    raw.close()
    assert status == 408 and json.loads(body)["error"]["code"] == "request_timeout"
    assert 0.15 < elapsed < 2.0, f"closed after {elapsed:.2f} s, the handshake timeout is 0.2 s"
    assert b.t.status()["a"]["received"] == 0


@pytest.mark.parametrize("terminated", [False, True], ids=["unterminated", "terminated"])
async def test_an_oversized_handshake_head_is_refused_without_waiting(cluster: Cluster, terminated: bool) -> None:
    defaults = PeerDefaults(handshake_timeout_ms=30_000)  # a refusal must not wait for it
    _, b = await cluster.start("a", "b", defaults=defaults)
    padding = f"X-Padding: {'p' * defaults.handshake_head_bytes_max}\r\n".encode()
    request = upgrade_request().replace(b"Host:", padding + b"Host:")
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await refusal(b, request if terminated else request[:-4]) == (400, "bad_request")
    assert loop.time() - started < 5.0


async def test_a_peer_that_starts_late_gets_what_was_queued_for_it(cluster: Cluster) -> None:
    a, b = await cluster.start("a", "b", listening=("a",))
    for i in range(5):
        a.t.send("b", ack(i))
    await until(lambda: a.t.status()["b"]["last_error"] != "", "a failing to reach b")
    assert not a.t.is_reachable("b")
    assert a.t.status()["b"]["queued"] == 5
    await b.listen()
    await until(lambda: len(b.inbox) == 5, "the five queued messages at b")
    assert b.round_ids_from("a") == [0, 1, 2, 3, 4]
    assert a.t.is_reachable("b")
    assert a.t.status()["b"]["queued"] == 0


async def test_a_full_queue_drops_the_oldest(cluster: Cluster) -> None:
    a, b = await cluster.start("a", "b", listening=("a",), defaults=PeerDefaults(queue_messages_max=3))
    for i in range(5):
        a.t.send("b", ack(i))
    assert a.t.stats.dropped == 2
    assert a.t.status()["b"]["queued"] == 3
    await b.listen()
    await until(lambda: len(b.inbox) == 3, "the three newest messages at b")
    assert b.round_ids_from("a") == [2, 3, 4]


async def test_connection_drops_with_the_listener_and_comes_back_by_itself(cluster: Cluster) -> None:
    a, b = await cluster.start("a", "b", defaults=PeerDefaults(reconnect_interval_ms=10, reconnect_interval_ms_max=50))
    await until(lambda: a.t.is_reachable("b"), "a connected to b")
    await b.stop_listening()
    await until(lambda: not a.t.is_reachable("b"), "a noticing b closed its side (EOF on a's socket)")
    assert a.t.status()["b"]["last_error"] == "closed by the peer"
    a.t.send("b", ack(7))  # queued while b is down
    await b.listen()
    await until(lambda: a.t.is_reachable("b"), "a reconnected to b")
    await until(lambda: b.round_ids_from("a") == [7], "the message queued during the outage at b")


async def test_malformed_frames_are_dropped_and_the_connection_keeps_working(cluster: Cluster) -> None:
    _, b = await cluster.start("a", "b")
    raw = await RawPeer.upgraded(b)
    await raw.send(frame(b"\xc1"))  # a byte msgpack never uses
    await until(lambda: b.t.stats.decode_errors == 1, "the bad msgpack counted")
    await raw.send(frame(msgpack.packb(5)))  # msgpack, but not a list of messages
    await raw.send(frame(b""))  # an empty payload
    await until(lambda: b.t.stats.decode_errors == 3, "the non-list and the empty payload counted")
    await raw.send(frame(msgpack.packb([[999, 1], [1, "too", "few"], encode(ack(42))], use_bin_type=True)))
    await until(lambda: b.round_ids_from("a") == [42], "the good message of a mixed frame at b")
    assert b.t.stats.decode_errors == 5  # the unknown tag and the wrong arity
    await raw.send(messages_frame(ack(43)))
    await until(lambda: b.round_ids_from("a") == [42, 43], "a well-formed frame after the bad ones")
    assert not raw.reader.at_eof()
    raw.close()


async def test_a_length_above_the_frame_limit_closes_the_connection(cluster: Cluster) -> None:
    _, b = await cluster.start("a", "b")
    raw = await RawPeer.upgraded(b)
    await raw.send(messages_frame(ack(1)))
    await raw.send((PEER_DEFAULTS.frame_bytes_max + 1).to_bytes(4, "big") + b"\x91")
    assert await raw.read_to_eof() == b"", "the listener closes without an answer"
    assert b.t.stats.decode_errors == 1
    assert b.round_ids_from("a") == [1]
    raw.close()


async def test_a_paused_connection_leaves_frames_in_the_queue(cluster: Cluster) -> None:
    defaults = PeerDefaults(frame_bytes_max=1 * MIB)
    a, b = await cluster.start("a", "b", defaults=defaults)
    await until(lambda: a.t.is_reachable("b") and len(b.t._inbound) == 1, "a connected to b")
    (inbound,) = b.t._inbound
    conn = a.t._peers["b"].conn
    assert conn is not None
    inbound.transport.pause_reading()  # b stops reading: the kernel buffers fill, then a's buffer
    payload = b"v" * (64 * KIB)
    sent = 0
    while not conn.paused:
        assert sent < 4_000, "a's connection never paused though b reads nothing"
        for _ in range(8):
            a.t.send("b", ReplicaReadReply(round_id=sent, clock=payload))
            sent += 1
        await until(lambda: a.t.status()["b"]["queued"] == 0 or conn.paused, "the tick's frames written, or a pause")
    _, high_water = conn.transport.get_write_buffer_limits()
    buffered = conn.transport.get_write_buffer_size()
    assert buffered <= high_water + defaults.frame_bytes_max, "paused as soon as the buffer passed the high mark"
    frames = a.t.stats.frames_sent
    queued = len(a.t._peers["b"].queue)
    for _ in range(5):
        a.t.send("b", ReplicaReadReply(round_id=sent, clock=payload))
        sent += 1
    await until(lambda: not a.t._peers["b"].flush_scheduled, "the tick's flush ran")
    assert a.t.stats.frames_sent == frames, "no frame taken from the queue while paused"
    assert a.t.status()["b"]["queued"] == queued + 5
    assert a.t.is_reachable("b"), "paused is not down"
    inbound.transport.resume_reading()
    await until(lambda: len(b.inbox) == sent, f"all {sent} messages at b once it reads again", timeout_s=20)
    assert b.round_ids_from("a") == list(range(sent))
    assert a.t.status()["b"]["queued"] == 0 and not conn.paused


async def test_close_is_idempotent_and_leaves_nothing_reachable(cluster: Cluster) -> None:
    a, b = await cluster.start("a", "b")
    await until(lambda: a.t.is_reachable("b") and b.t.is_reachable("a"), "a and b connected")
    await a.t.close()
    await a.t.close()
    assert not a.t.is_reachable("b")
    assert a.t.status()["b"]["connected"] is False
    await until(lambda: not b.t.is_reachable("a"), "b noticing a's listener closed its connection")
