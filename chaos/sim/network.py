"""The simulated network: every message crosses the real codec, and the seed decides its fate.

The in-memory network of FoundationDB's simulator and TigerBeetle's VOPR. Rules:
- A message is packed exactly as `node.transport.PeerTransport` packs it (msgpack of
  `cluster.messages.encode`) and decoded on delivery, so the codec is exercised on every message.
- Per message between two nodes, drawn from the network's own seeded generator in send order:
  drop (`drop_rate`), delay (uniform in [delay_ms_min, delay_ms_max]; independent delays reorder
  messages unless `reorder` is off), duplicate (`duplicate_rate`, the copy with its own delay).
  A node's messages to itself are never faulted, as the real transport hands them over in-process.
- Partitions are groups of nodes: a message between groups is dropped when sent and, if the
  partition began while it was in flight, when it arrives. `is_reachable` reflects partitions and
  crashed nodes, as the real transport's connection state does.
- A message is delivered to the incarnation of its receiver that was up when it was sent (a crash
  kills the connection); a message to a node that is down is lost. With `deliver_across_restart`,
  as the real transport's per-peer queue does, a message for a down node waits and is delivered to
  its next incarnation right after the restart.
- Every send, drop and delivery is fed to the trace hash, so two runs can be compared exactly.
"""

import asyncio
import contextvars
import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import msgpack

from chaos.sim.faults import FaultOptions
from cluster.messages import (
    ForwardWrite,
    ForwardWriteReply,
    GossipAck,
    GossipSyn,
    ListKeys,
    ListKeysReply,
    Message,
    ReplicaMergeAck,
    ReplicaRead,
    ReplicaReadReply,
    decode,
    encode,
)

# Messages that neither replicate nor repair; with `sabotage_no_repair`, everything else (ReplicaMerge,
# and hint and anti-entropy messages, whatever their names) is dropped.
_NOT_REPAIR = (
    ReplicaRead,
    ReplicaReadReply,
    ReplicaMergeAck,
    ForwardWrite,
    ForwardWriteReply,
    ListKeys,
    ListKeysReply,
    GossipSyn,
    GossipAck,
)


class Trace:
    """A running hash of everything that happened, with virtual times; optionally the lines too."""

    def __init__(self, keep_lines: bool = False) -> None:
        self._hash = hashlib.sha256()
        self.count = 0
        self.lines: list[str] | None = [] if keep_lines else None

    def record(self, time_s: float, what: str, payload: bytes = b"") -> None:
        line = f"{round(time_s * 1e6)} {what}"
        self._hash.update(line.encode())
        self._hash.update(hashlib.sha256(payload).digest() if payload else b"\n")
        self.count += 1
        if self.lines is not None:
            self.lines.append(line)

    def digest(self) -> str:
        return self._hash.hexdigest()


@dataclass(slots=True)
class NetworkStats:
    sent: int = 0
    delivered: int = 0
    dropped_random: int = 0
    dropped_partition: int = 0
    dropped_down: int = 0  # the receiver was down, or had restarted since the send
    dropped_sabotage: int = 0
    duplicated: int = 0


@dataclass(slots=True)
class _Endpoint:
    """A node as the network sees it: up or down, and whom to hand its messages."""

    incarnation: int = 0
    up: bool = False
    serving: bool = False  # booted: its connections to peers come up
    deliver: Callable[[str, Message], None] | None = None
    context: contextvars.Context | None = None


@dataclass(slots=True)
class SimNetwork:
    loop: asyncio.AbstractEventLoop
    nodes: tuple[str, ...]
    options: FaultOptions
    rng: random.Random
    trace: Trace
    stats: NetworkStats = field(default_factory=NetworkStats)
    groups: tuple[tuple[str, ...], ...] = ()  # () : no partition
    _endpoints: dict[str, _Endpoint] = field(default_factory=dict)
    _link_clear_at: dict[tuple[str, str], float] = field(default_factory=dict)  # FIFO mode
    _held: dict[str, list[tuple[str, bytes]]] = field(default_factory=dict)  # deliver_across_restart
    _links: set[tuple[str, str]] = field(default_factory=set)  # (from, to): a connection is up
    # Told (from, to) each time a connection comes up, as PeerTransport's `on_connected` is.
    on_link_up: Callable[[str, str], None] = lambda a, b: None

    def __post_init__(self) -> None:
        self._endpoints = {node: _Endpoint() for node in self.nodes}

    # --- the harness's controls -----------------------------------------------------------------

    def attach(
        self, node: str, incarnation: int, deliver: Callable[[str, Message], None], context: contextvars.Context
    ) -> None:
        """`node` is up as `incarnation`; its messages go to `deliver`, run in `context`."""
        endpoint = self._endpoints[node]
        assert incarnation > endpoint.incarnation, "incarnations only grow"
        self._endpoints[node] = _Endpoint(incarnation, up=True, deliver=deliver, context=context)
        for sender, packed in self._held.pop(node, []):
            self.trace.record(self.loop.time(), f"flush {sender}>{node}#{incarnation}")
            self._schedule(sender, node, incarnation, packed, 0.0)

    def serving(self, node: str) -> None:
        """`node` has booted: its connections to the peers it can reach come up, and theirs to it."""
        self._endpoints[node].serving = True
        self._refresh_links()

    def detach(self, node: str) -> None:
        """`node` crashed: messages in flight to it and from now on are lost."""
        self._endpoints[node].up = self._endpoints[node].serving = False
        self._refresh_links()

    def partition(self, groups: tuple[tuple[str, ...], ...]) -> None:
        assert sorted(n for g in groups for n in g) == sorted(self.nodes), "a partition places every node"
        self.groups = groups
        self._refresh_links()

    def heal(self) -> None:
        self.groups = ()
        self._refresh_links()

    def _refresh_links(self) -> None:
        serving = [node for node in self.nodes if self._endpoints[node].serving]
        links = {(a, b) for a in serving for b in serving if a != b and self.connected(a, b)}
        came_up = sorted(links - self._links)  # sorted: a set's order would vary between processes
        self._links = links
        for a, b in came_up:
            self.trace.record(self.loop.time(), f"link up {a}>{b}")
            self.on_link_up(a, b)

    def connected(self, a: str, b: str) -> bool:
        return a == b or not self.groups or any(a in group and b in group for group in self.groups)

    def is_up(self, node: str) -> bool:
        endpoint = self._endpoints.get(node)
        return endpoint is not None and endpoint.up

    def transport(self, node: str, incarnation: int) -> "SimTransport":
        return SimTransport(self, node, incarnation)

    # --- carrying messages ----------------------------------------------------------------------

    def send(self, sender: str, incarnation: int, to: str, message: Message) -> None:
        now = self.loop.time()
        name = type(message).__name__
        if self._endpoints[sender].incarnation != incarnation or not self._endpoints[sender].up:
            return  # a crashed incarnation's code (a cancelled task's last gasp) sends nothing
        if to not in self._endpoints:
            self.trace.record(now, f"unknown {sender}>{to} {name}")
            return  # the real transport knows no such peer either
        packed: bytes = msgpack.packb(encode(message), use_bin_type=True)
        self.stats.sent += 1
        self.trace.record(now, f"send {sender}>{to} {name}", packed)
        receiver = self._endpoints[to]
        if to == sender:
            self._schedule(sender, to, receiver.incarnation, packed, 0.0)
            return
        if self.options.sabotage_no_repair and not isinstance(message, _NOT_REPAIR):
            self._drop(now, "sabotage", sender, to, name)
            self.stats.dropped_sabotage += 1
            return
        if not self.connected(sender, to):
            self._drop(now, "partition", sender, to, name)
            self.stats.dropped_partition += 1
            return
        if self.rng.random() < self.options.drop_rate:
            self._drop(now, "random", sender, to, name)
            self.stats.dropped_random += 1
            return
        copies = 2 if self.rng.random() < self.options.duplicate_rate else 1
        self.stats.duplicated += copies - 1
        for _ in range(copies):
            delay_s = self.rng.uniform(self.options.delay_ms_min, self.options.delay_ms_max) / 1000
            if not self.options.reorder:
                link = (sender, to)
                delay_s = max(delay_s, self._link_clear_at.get(link, 0.0) - now)
                self._link_clear_at[link] = now + delay_s
            self._schedule(sender, to, receiver.incarnation, packed, delay_s)

    def _schedule(self, sender: str, to: str, incarnation: int, packed: bytes, delay_s: float) -> None:
        self.loop.call_later(delay_s, self._deliver, sender, to, incarnation, packed)

    def _deliver(self, sender: str, to: str, incarnation: int, packed: bytes) -> None:
        now = self.loop.time()
        receiver = self._endpoints[to]
        if self.options.deliver_across_restart and not receiver.up:
            self.trace.record(now, f"held {sender}>{to} (down)")
            self._held.setdefault(to, []).append((sender, packed))
            return
        stale = receiver.incarnation != incarnation and not self.options.deliver_across_restart
        if not receiver.up or stale or receiver.deliver is None or receiver.context is None:
            self.trace.record(now, f"lost {sender}>{to} (down)")
            self.stats.dropped_down += 1
            return
        if not self.connected(sender, to):
            self.trace.record(now, f"lost {sender}>{to} (partition)")
            self.stats.dropped_partition += 1
            return
        message = decode(msgpack.unpackb(packed, raw=False, use_list=True))
        self.stats.delivered += 1
        self.trace.record(now, f"recv {sender}>{to}#{receiver.incarnation} {type(message).__name__}")
        receiver.context.run(receiver.deliver, sender, message)

    def _drop(self, now: float, why: str, sender: str, to: str, name: str) -> None:
        self.trace.record(now, f"drop({why}) {sender}>{to} {name}")


@dataclass(slots=True)
class SimTransport:
    """One node incarnation's view of the network: `node.runtime.Transport`."""

    network: SimNetwork
    node: str
    incarnation: int

    def send(self, node_id: str, message: Message) -> None:
        self.network.send(self.node, self.incarnation, node_id, message)

    def is_reachable(self, node_id: str) -> bool:
        return self.network.is_up(node_id) and self.network.connected(self.node, node_id)

    def add_peer(self, node_id: str, address: str) -> None:
        """Gossip learned a node: every simulated node is known from the start, so nothing to do."""

    def remove_peer(self, node_id: str) -> None:
        """The simulated cluster has no seed placeholders to retire."""

    def status(self) -> dict[str, dict[str, object]]:
        return {
            peer: {"connected": self.is_reachable(peer), "address": f"sim:{peer}"}
            for peer in self.network.nodes
            if peer != self.node
        }
