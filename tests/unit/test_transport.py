"""The peer transport over real sockets on 127.0.0.1, ephemeral ports only.

Each node's listener socket is bound to port 0 before any transport exists, because every
transport must know its peers' addresses at construction; a bound socket that is not yet
listening refuses connections, which is exactly a peer that has not started.
"""

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import aiohttp
import msgpack
import pytest
from aiohttp import web

from cluster.limits import PEER_DEFAULTS, PeerDefaults
from cluster.messages import Message, ReplicaMergeAck, ReplicaRead, encode
from node.transport import PEER_PATH, PeerTransport, UnknownPeerError, peer_app

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


@dataclass
class Node:
    node_id: str
    port: int
    sock: socket.socket | None  # reserved, not yet listening; None once handed to the listener
    inbox: list[tuple[str, Message]] = field(default_factory=list)
    transport: PeerTransport | None = None
    runner: web.AppRunner | None = None

    @property
    def t(self) -> PeerTransport:
        assert self.transport is not None
        return self.transport

    def round_ids_from(self, sender: str) -> list[int]:
        return [m.round_id for s, m in self.inbox if s == sender]

    async def listen(self) -> None:
        runner = web.AppRunner(peer_app(self.t))
        await runner.setup()
        if self.sock is not None:
            site: web.BaseSite = web.SockSite(runner, self.sock)
            self.sock = None
        else:  # a restart: the port this node was given first
            site = web.TCPSite(runner, "127.0.0.1", self.port)
        await site.start()
        self.runner = runner

    async def stop_listening(self) -> None:
        assert self.runner is not None
        await self.runner.cleanup()
        self.runner = None


class Cluster:
    def __init__(self) -> None:
        self.nodes: dict[str, Node] = {}

    async def start(
        self, *node_ids: str, listening: tuple[str, ...] | None = None, defaults: PeerDefaults = PEER_DEFAULTS
    ) -> list[Node]:
        """Nodes that know each other; all listen unless `listening` names a subset."""
        for node_id in node_ids:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", 0))
            self.nodes[node_id] = Node(node_id, sock.getsockname()[1], sock)
        peers = {n.node_id: f"127.0.0.1:{n.port}" for n in self.nodes.values()}
        for node in self.nodes.values():
            node.transport = PeerTransport(node.node_id, peers, SECRET, _collect(node.inbox), defaults)
        for node in self.nodes.values():
            if listening is None or node.node_id in listening:
                await node.listen()
            await node.t.start()
        return list(self.nodes.values())

    async def close(self) -> None:
        for node in self.nodes.values():
            if node.transport is not None:
                await node.transport.close()
        for node in self.nodes.values():
            if node.runner is not None:
                await node.stop_listening()
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


def url(node: Node) -> str:
    return f"http://127.0.0.1:{node.port}{PEER_PATH}"


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
    ("headers", "status", "code"),
    [
        ({"Titra-Node-Id": "a"}, 401, "unauthorized"),
        ({"Authorization": "Bearer wrong-secret", "Titra-Node-Id": "a"}, 401, "unauthorized"),
        ({"Authorization": f"Basic {SECRET}", "Titra-Node-Id": "a"}, 401, "unauthorized"),
        ({"Authorization": f"Bearer {SECRET}", "Titra-Node-Id": "mallory"}, 403, "forbidden"),
        ({"Authorization": f"Bearer {SECRET}"}, 403, "forbidden"),
    ],
)
async def test_peer_endpoint_refuses_before_upgrading(
    cluster: Cluster, headers: dict[str, str], status: int, code: str
) -> None:
    _, b = await cluster.start("a", "b")
    async with aiohttp.ClientSession() as session:
        async with session.get(url(b), headers=headers) as resp:
            assert resp.status == status
            body = await resp.json()
        assert body["error"]["code"] == code
        assert body["error"]["message"]
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await session.ws_connect(url(b), headers=headers)
        assert refused.value.status == status
        # The control: the same endpoint upgrades with the secret and a known node id.
        ws = await session.ws_connect(url(b), headers={"Authorization": f"Bearer {SECRET}", "Titra-Node-Id": "a"})
        await ws.close()


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
    await until(lambda: not a.t.is_reachable("b"), "a noticing b's listener is gone")
    a.t.send("b", ack(7))  # queued while b is down
    await b.listen()
    await until(lambda: a.t.is_reachable("b"), "a reconnected to b")
    await until(lambda: b.round_ids_from("a") == [7], "the message queued during the outage at b")


async def test_malformed_frames_are_dropped_and_the_connection_keeps_working(cluster: Cluster) -> None:
    _, b = await cluster.start("a", "b")
    headers = {"Authorization": f"Bearer {SECRET}", "Titra-Node-Id": "a"}
    async with aiohttp.ClientSession() as session, session.ws_connect(url(b), headers=headers) as ws:
        await ws.send_bytes(b"\xc1")  # a byte msgpack never uses
        await until(lambda: b.t.stats.decode_errors == 1, "the bad msgpack counted")
        await ws.send_bytes(msgpack.packb(5))  # msgpack, but not a list of messages
        await ws.send_str("text")  # the wrong kind of frame
        await until(lambda: b.t.stats.decode_errors == 3, "the non-list and the text frame counted")
        frame = msgpack.packb([[999, 1], [1, "too", "few"], encode(ack(42))], use_bin_type=True)
        await ws.send_bytes(frame)
        await until(lambda: b.round_ids_from("a") == [42], "the good message of a mixed frame at b")
        assert b.t.stats.decode_errors == 5  # the unknown tag and the wrong arity
        await ws.send_bytes(msgpack.packb([encode(ack(43))], use_bin_type=True))
        await until(lambda: b.round_ids_from("a") == [42, 43], "a well-formed frame after the bad ones")
        assert not ws.closed


async def test_close_is_idempotent_and_leaves_nothing_reachable(cluster: Cluster) -> None:
    a, _ = await cluster.start("a", "b")
    await until(lambda: a.t.is_reachable("b"), "a connected to b")
    await a.t.close()
    await a.t.close()
    assert not a.t.is_reachable("b")
    assert a.t.status()["b"]["connected"] is False
