"""A simulated cluster: real `NodeRuntime`s over the simulated network, crashable, with clients.

The cluster a FoundationDB-style simulation drives (FoundationDB's simulator, TigerBeetle's VOPR).
Rules:
- Each node is the production stack minus sockets and threads, wired as `node.server.serve` wires
  it: `MembershipDriver` (seeded gossip) and `NodeRuntime(Replica(store, HybridClock))` with its
  repair drivers, over a `MemoryStore` (never the WAL store: its thread pool's timing would make
  runs unrepeatable) and a `SimTransport`; gossip messages go to membership, the rest to the runtime.
- A node's wall clock is the virtual clock plus a per-node skew drawn from the seed.
- A crash is a process dying: the network forgets the incarnation, its tasks are cancelled (oldest
  first) and its store handle is fenced. A restart builds a fresh runtime over the same
  `MemoryStore`, whose data survives like a disk's.
- Store faults hit single-key writes (put, delete) of a booted node: a stall, or a failure that is
  transient (raised before anything changes) or, with `store_fail_fatal`, the WAL store's
  `StoreFailed` (the write may have landed; the process dies and restarts).
- Clients are sessions: each issues writes of unique values, deletes and reads through random nodes
  at random levels, carrying its causal context as the HTTP edge does, and records every operation
  as a `chaos.history.Event` with virtual times. Each write's dot (and each delete's cover) goes into
  the event's receipt, so the invariants can tell a lost write from a superseded one.
"""

import asyncio
import contextvars
import functools
import random
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field, replace
from typing import Literal, TypeVar

from chaos.history import Event, EventType
from chaos.sim.faults import FaultOptions, FaultStep
from chaos.sim.invariants import format_dot, format_vv
from chaos.sim.loop import VirtualTimeLoop, context_of
from chaos.sim.network import SimNetwork, Trace
from cluster.context import merge, remember, scoped_key
from cluster.dvv import VersionVector
from cluster.hints import HINTS_KEYSPACE
from cluster.hlc import HybridClock
from cluster.limits import ANTI_ENTROPY_DEFAULTS, HINT_DEFAULTS, REQUEST_DEFAULTS
from cluster.memory_store import MemoryStore
from cluster.messages import GossipAck, GossipSyn, Message
from cluster.replica import Replica
from cluster.requests import ContextEntry, Level, ReadOutcome, ReadRequest, WriteOutcome, WriteRequest
from cluster.ring import Ring
from cluster.store import (
    DEFAULT_CONTENT_TYPE,
    Durability,
    Isolation,
    Record,
    ScanPage,
    Store,
    StoreClosed,
    StoreError,
    StoreFailed,
    Transaction,
    prefix_end,
)
from cluster.tombstones import RepairSettings
from node.membership import MembershipDriver
from node.runtime import NodeRuntime

T = TypeVar("T")

SECRET = b"titra-simulation-cluster-secret!"
KEYSPACE = "default"
EPOCH_MS = 1_700_000_000_000  # virtual time 0 on the nodes' wall clocks (HLC timestamps need a date)
NEMESIS = -1  # the `process` of fault events (chaos.history)


class InjectedStoreFault(StoreError):
    """A store write failed on purpose (`store_fail_rate`); nothing was written."""

    code = "injected_fault"


class InjectedStoreFailed(StoreFailed):
    """`store_fail_fatal`: the WAL store's fsync failure. The write may have landed; the process dies."""


INJECTED = (InjectedStoreFault, InjectedStoreFailed, StoreClosed)  # StoreClosed: a crashed process's handle


class StoreFaults:
    """Seeded failures and stalls of store writes, shared by every node's store handle."""

    def __init__(self, options: FaultOptions, rng: random.Random, trace: Trace) -> None:
        self.options = options
        self.rng = rng
        self.trace = trace
        self.injected = 0
        self.on_fatal: Callable[[str], None] = lambda node: None  # the cluster crashes and restarts it

    async def write(self, handle: "SimStore", key: bytes, commit: Callable[[], Awaitable[T]]) -> T:
        """Run `commit` (the write), unless the seed says the disk stalls or fails first."""
        handle.check_open()
        if handle.armed and self.rng.random() < self.options.store_stall_rate:
            await asyncio.sleep(self.rng.uniform(0, self.options.store_stall_ms_max) / 1000)
            handle.check_open()  # the process may have died while the disk stalled
        if not handle.armed or self.rng.random() >= self.options.store_fail_rate:
            return await commit()
        self.injected += 1
        self.trace.record(asyncio.get_running_loop().time(), f"store fault {handle.node} {key!r}")
        if not self.options.store_fail_fatal:
            raise InjectedStoreFault(f"injected store failure on {handle.node} writing {key!r}")
        if self.rng.random() < 0.5:
            await commit()  # an fsync error says nothing about whether the record is on disk
        self.on_fatal(handle.node)
        raise InjectedStoreFailed(f"injected fatal store failure on {handle.node} writing {key!r}")


class SimStore:
    """One incarnation's handle on a node's `MemoryStore` (the disk): fenced when the process dies."""

    def __init__(self, node: str, disk: MemoryStore, faults: StoreFaults) -> None:
        self.node = node
        self.disk = disk
        self.faults = faults
        self.fenced = False
        self.armed = False  # store faults hit a running node only

    def check_open(self) -> None:
        if self.fenced:
            raise StoreClosed(f"the process of {self.node} that opened this store has crashed")

    async def get(self, key: bytes) -> Record | None:
        self.check_open()
        return await self.disk.get(key)

    async def put(
        self,
        key: bytes,
        value: bytes,
        content_type: str = DEFAULT_CONTENT_TYPE,
        meta: bytes = b"",
        durability: Durability = Durability.FSYNC,
    ) -> int:
        return await self.faults.write(
            self, key, functools.partial(self.disk.put, key, value, content_type, meta, durability)
        )

    async def delete(self, key: bytes, durability: Durability = Durability.FSYNC) -> bool:
        return await self.faults.write(self, key, functools.partial(self.disk.delete, key, durability))

    async def scan(self, prefix: bytes = b"", after: bytes | None = None, limit: int | None = None) -> ScanPage:
        self.check_open()
        return await self.disk.scan(prefix, after, limit)

    def transaction(
        self, isolation: Isolation = Isolation.SERIALIZABLE, durability: Durability = Durability.FSYNC
    ) -> AbstractAsyncContextManager[Transaction]:
        self.check_open()
        return self.disk.transaction(isolation, durability)

    async def close(self) -> None:
        """The disk outlives the process: closing a handle leaves the data for the next incarnation."""


def _conforms(store: SimStore) -> Store:
    """Checked by mypy: SimStore implements the Store protocol."""
    return store


@dataclass(slots=True)
class SimNode:
    node_id: str
    disk: MemoryStore
    skew_ms: int
    incarnation: int = 0
    runtime: NodeRuntime | None = None
    members: MembershipDriver | None = None
    store: SimStore | None = None
    context: contextvars.Context | None = None

    @property
    def owner(self) -> tuple[str, int]:
        return (self.node_id, self.incarnation)


@dataclass(slots=True)
class Recorder:
    """The run's history (chaos.history events, virtual nanoseconds) and unexpected errors."""

    loop: VirtualTimeLoop
    trace: Trace
    events: list[Event] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)  # exceptions the runtime should not raise

    def now_ns(self) -> int:
        return round(self.loop.time() * 1e9)

    def add(
        self,
        kind: EventType,
        process: int,
        op_id: int,
        f: str,
        *,
        key: str = "",
        value: object = None,
        node: str = "",
        level: str = "",
        receipt: dict[str, str] | None = None,
        error: str = "",
    ) -> None:
        event = Event(kind, process, op_id, f, key, value, self.now_ns(), node, level, receipt or {}, error)
        self.events.append(event)
        self.trace.record(self.loop.time(), f"{kind} p{process}/{op_id} {f} {key} {value!r} {node} {receipt} {error}")


class SimCluster:
    def __init__(
        self, loop: VirtualTimeLoop, options: FaultOptions, rngs: dict[str, random.Random], recorder: Recorder
    ) -> None:
        self.loop = loop
        self.options = options
        self.recorder = recorder
        self.node_ids = tuple(f"n{i}" for i in range(1, options.nodes + 1))
        self.ring = Ring(frozenset(self.node_ids))
        self.replicas_per_key = min(REQUEST_DEFAULTS.replicas_default, options.nodes)
        self.network = SimNetwork(loop, self.node_ids, options, rngs["network"], recorder.trace)
        self.store_faults = StoreFaults(options, rngs["store"], recorder.trace)
        self.gossip_seeds = rngs["gossip"]
        self.repair = repair_settings(options)
        self.store_faults.on_fatal = self.fatal
        self.network.on_link_up = self.link_up
        skews = rngs["clock"]
        self.nodes = {
            node: SimNode(node, MemoryStore(), skews.randint(-options.clock_skew_ms_max, options.clock_skew_ms_max))
            for node in self.node_ids
        }

    # --- processes ------------------------------------------------------------------------------

    def wall_ms(self, node: str) -> int:
        return EPOCH_MS + self.nodes[node].skew_ms + int(self.loop.time() * 1000)

    async def start(self, node_id: str) -> None:
        """Boot a node as `node.server.serve` does, minus sockets: membership, then the runtime.
        Nothing if it is running."""
        node = self.nodes[node_id]
        if node.runtime is not None:
            return  # already restarted (a fatal store failure's restart and the plan's can meet)
        node.incarnation += 1
        node.context = context_of(node.owner)
        store = node.store = SimStore(node_id, node.disk, self.store_faults)
        replica = Replica(node_id, store, HybridClock(node_id), wall=functools.partial(self.wall_ms, node_id))
        transport = self.network.transport(node_id, node.incarnation)
        peers = {peer: peer_address(peer) for peer in self.node_ids}
        gossip_rng = random.Random(self.gossip_seeds.getrandbits(64))
        members = MembershipDriver(node_id, peers[node_id], peers, [], store, transport, rng=gossip_rng)
        runtime = NodeRuntime(node_id, list(self.node_ids), replica, transport, SECRET, members, self.repair)

        def deliver(sender: str, message: Message) -> None:
            if isinstance(message, GossipSyn | GossipAck):
                members.on_message(sender, message)
            else:
                runtime.on_message(sender, message)

        node.runtime, node.members = runtime, members
        self.network.attach(node_id, node.incarnation, deliver, node.context)
        boot = self.loop.create_task(_boot(members, runtime), context=node.context)
        await asyncio.wait([boot])  # a crash during boot cancels it: no error of the harness
        if boot.cancelled():
            return
        boot.result()
        self.network.serving(node_id)
        store.armed = not store.fenced  # a disk that fails at boot is a node that never starts: not simulated

    def link_up(self, node_id: str, peer: str) -> None:
        """The node's connection to `peer` came up: tell its membership, as PeerTransport does."""
        node = self.nodes[node_id]
        if node.members is not None and node.context is not None:
            node.context.run(node.members.on_connected, peer)

    def crash(self, node_id: str) -> None:
        """Kill the node's process (nothing if it is down already)."""
        node = self.nodes[node_id]
        if node.runtime is None or node.store is None:
            return
        self.network.detach(node_id)
        node.store.fenced = True
        self.loop.cancel_owned(node.owner)
        node.runtime = node.members = None

    def fatal(self, node_id: str) -> None:
        """The node's store failed for good: the process dies, and its supervisor restarts it."""
        self.recorder.add("nemesis", NEMESIS, 0, "start", value=f"crash {node_id} (fatal store failure)")
        self.crash(node_id)

        def restart() -> None:
            if self.nodes[node_id].runtime is None:
                self.recorder.add("nemesis", NEMESIS, 0, "stop", value=f"restart {node_id}")
                self.loop.create_task(self.start(node_id))

        self.loop.call_later(self.options.crash_downtime_ms / 1000, restart)

    def running(self) -> list[NodeRuntime]:
        return [node.runtime for node in self.nodes.values() if node.runtime is not None]

    async def apply(self, step: FaultStep) -> None:
        self.recorder.add(
            "nemesis", NEMESIS, 0, "start" if step.kind in ("partition", "crash") else "stop", value=step.describe()
        )
        if step.kind == "partition":
            self.network.partition(step.groups)
        elif step.kind == "heal":
            self.network.heal()
        elif step.kind == "crash":
            self.crash(step.node)
        else:
            await self.start(step.node)

    async def run_faults(self, plan: list[FaultStep]) -> None:
        for step in plan:
            await asyncio.sleep(max(0.0, step.at_ms / 1000 - self.loop.time()))
            await self.apply(step)

    async def final_heal(self) -> None:
        """Everything healed, every node up, and no more random faults."""
        self.recorder.add("nemesis", NEMESIS, 0, "stop", value="final heal")
        self.network.heal()
        self.options = self.network.options = self.store_faults.options = self.options.healed()
        for node_id in self.node_ids:
            if self.nodes[node_id].runtime is None:
                await self.start(node_id)

    async def stop(self) -> None:
        for node_id in self.node_ids:
            if self.nodes[node_id].runtime is not None:
                self.crash(node_id)
        await asyncio.sleep(0.001)  # let the cancelled tasks unwind

    # --- what the checks look at ----------------------------------------------------------------

    def stored(self) -> dict[str, dict[bytes, bytes]]:
        """Each node's replica of the keyspace, read straight off its disk: key -> encoded clock."""
        base = scoped_key(KEYSPACE, b"")
        end = prefix_end(base)
        out: dict[str, dict[bytes, bytes]] = {}
        for node_id, node in self.nodes.items():
            records = node.disk.records
            out[node_id] = {skey[len(base) :]: records[skey].value for skey in records.irange(base, end, (True, False))}
        return out

    def hint_backlog(self) -> dict[str, int]:
        """Hints each node holds on its disk (cluster/hints.py keeps them in its own keyspace)."""
        base = scoped_key(HINTS_KEYSPACE, b"")
        end = prefix_end(base)
        return {
            node_id: sum(1 for _ in node.disk.records.irange(base, end, (True, False)))
            for node_id, node in self.nodes.items()
        }

    def owners(self, key: bytes) -> tuple[str, ...]:
        return tuple(self.ring.preference_list(scoped_key(KEYSPACE, key), self.replicas_per_key))


Kind = Literal["write", "delete", "read"]


class Clients:
    """The workload: `options.clients` sessions of random operations, recorded as a history."""

    def __init__(self, cluster: SimCluster, rng: random.Random) -> None:
        self.cluster = cluster
        self.options = cluster.options
        self.rng = rng
        self.loop = cluster.loop
        self.recorder = cluster.recorder
        self.keys = [f"k{i}" for i in range(self.options.keys)]
        self.written = 0

    async def run(self, until_s: float) -> None:
        await asyncio.gather(*(self.session(process, until_s) for process in range(self.options.clients)))

    async def session(self, process: int, until_s: float) -> None:
        context: tuple[ContextEntry, ...] = ()
        op_id = 0
        options, rng = self.options, self.rng
        while True:
            await asyncio.sleep(rng.uniform(options.think_ms_min, options.think_ms_max) / 1000)
            if self.loop.time() >= until_s:
                return
            node = self.cluster.node_ids[rng.randrange(len(self.cluster.node_ids))]
            key = self.keys[rng.randrange(len(self.keys))]
            level = options.levels[rng.randrange(len(options.levels))]
            roll = rng.random()
            kind: Kind = "write" if roll < options.write_ratio else "read"
            if options.write_ratio <= roll < options.write_ratio + options.delete_ratio:
                kind = "delete"
            op_id += 1
            if kind == "read":
                context = await self.read(process, op_id, node, key, level, context)
            else:
                context = await self.write(process, op_id, node, key, level, context, kind == "delete")

    async def write(
        self,
        process: int,
        op_id: int,
        node: str,
        key: str,
        level: str,
        context: tuple[ContextEntry, ...],
        deleted: bool,
    ) -> tuple[ContextEntry, ...]:
        f = "delete" if deleted else "write"
        value = ""
        if not deleted:
            self.written += 1
            value = f"p{process}-{op_id}"
        self.recorder.add("invoke", process, op_id, f, key=key, value=value or None, node=node, level=level)
        skey = scoped_key(KEYSPACE, key.encode())
        sloppy = self.rng.random() < self.options.sloppy_rate
        request = WriteRequest(
            KEYSPACE, key.encode(), value.encode(), "text/plain", deleted, level, None,
            self.options.request_timeout_ms, Durability.FSYNC.value, context, None, False, "", b"", sloppy,
        )  # fmt: skip
        runtime = self.cluster.nodes[node].runtime
        outcome = await self._call(process, op_id, f, node, runtime.put(request) if runtime is not None else None)
        if not isinstance(outcome, WriteOutcome):
            return context
        receipt = {"required": str(outcome.required)}
        if sloppy and outcome.fallbacks:
            receipt["sloppy"] = ",".join(outcome.fallbacks)  # hints stood in for replicas
        if outcome.version is not None:
            dot_counter = outcome.version.get(outcome.coordinator)
            receipt |= {"dot": format_dot(outcome.coordinator, dot_counter), "version": format_vv(outcome.version)}
            if deleted:
                seen = next((e.version for e in context if e.key == skey), None)
                cover = seen if seen is not None else _without_dot(outcome.version, outcome.coordinator)
                receipt["cover"] = format_vv(cover)
            context = remember(context, skey, outcome.version)
        kind: EventType = "ok" if outcome.status == "ok" else "info" if outcome.status == "timeout" else "fail"
        self.recorder.add(
            kind,
            process,
            op_id,
            f,
            key=key,
            node=node,
            level=level,
            receipt=receipt,
            error="" if kind == "ok" else f"{outcome.status}: {outcome.message}",
        )
        return context

    async def read(
        self, process: int, op_id: int, node: str, key: str, level: str, context: tuple[ContextEntry, ...]
    ) -> tuple[ContextEntry, ...]:
        self.recorder.add("invoke", process, op_id, "read", key=key, node=node, level=level)
        request = ReadRequest(KEYSPACE, key.encode(), level, None, self.options.request_timeout_ms, context)
        runtime = self.cluster.nodes[node].runtime
        outcome = await self._call(process, op_id, "read", node, runtime.get(request) if runtime is not None else None)
        if not isinstance(outcome, ReadOutcome):
            return context
        if outcome.status in ("ok", "not_found"):
            values = [s.value.decode() for s in outcome.siblings]
            receipt = {"required": str(outcome.required)}
            if outcome.version is not None:
                receipt["version"] = format_vv(outcome.version)
            self.recorder.add(
                "ok", process, op_id, "read", key=key, value=values, node=node, level=level, receipt=receipt
            )
        else:
            kind: EventType = "info" if outcome.status == "timeout" else "fail"
            self.recorder.add(
                kind,
                process,
                op_id,
                "read",
                key=key,
                node=node,
                level=level,
                error=f"{outcome.status}: {outcome.message}",
            )
        if level == Level.CAUSAL.value:
            context = merge(context, outcome.deps)
        if outcome.version is not None:
            context = remember(context, scoped_key(KEYSPACE, key.encode()), outcome.version)
        return context

    async def _call(self, process: int, op_id: int, f: str, node: str, call: Awaitable[T] | None) -> T | None:
        """Run `call` as the node's own work (a crash cancels it); None once its failure is recorded."""
        sim_node = self.cluster.nodes[node]
        if call is None or sim_node.context is None:
            self.recorder.add("fail", process, op_id, f, node=node, error="connection refused: the node is down")
            return None
        task = self.loop.create_task(_awaited(call), context=sim_node.context)
        # The client's own deadline, as an HTTP client's: past the server's, so it rarely decides.
        client_timeout_s = self.options.request_timeout_ms / 1000 * 2 + 1
        error = ""
        try:
            return await asyncio.wait_for(asyncio.shield(task), client_timeout_s)
        except TimeoutError:
            error = "client timeout"
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if not task.cancelled() or (current is not None and current.cancelling()):
                raise
            error = "connection lost: the node crashed"
        except INJECTED as exc:
            error = f"server error: {exc}"
        except Exception as exc:  # a bug in the runtime: recorded, and reported by the run
            error = f"server error: {type(exc).__name__}: {exc}"
            self.recorder.unexpected.append(f"p{process}/{op_id} {f} via {node}: {error}")
        self.recorder.add("info", process, op_id, f, node=node, error=error)
        return None


def repair_settings(options: FaultOptions) -> RepairSettings:
    """Production repair settings at simulation speed; all off for the sabotaged variant."""
    settings = RepairSettings(
        replace(
            ANTI_ENTROPY_DEFAULTS,
            interval_ms=options.anti_entropy_interval_ms,
            tombstone_grace_ms=options.tombstone_grace_ms,
        ),
        replace(HINT_DEFAULTS, ttl_ms=options.hint_ttl_ms),
        anti_entropy_enabled=not options.sabotage_no_repair,
        hints_enabled=not options.sabotage_no_repair,
    )
    assert not settings.problems(), settings.problems()
    return settings


async def _boot(members: MembershipDriver, runtime: NodeRuntime) -> None:
    await members.start()
    await runtime.start()


def peer_address(node_id: str) -> str:
    """A node's peer listener as gossip carries it (never dialled: the network is simulated)."""
    return f"{node_id}.sim:7170"


async def _awaited(call: Awaitable[T]) -> T:
    return await call


def _without_dot(version: VersionVector, node: str) -> VersionVector:
    """A delete without a context covers what its coordinator held: its version minus its own dot."""
    counters = version.as_dict()
    counters[node] -= 1
    return VersionVector.of(counters)
