"""`titra-node bench-repair`: what anti-entropy costs.

1. Repair cost: two replicas (`Replica` over `MemoryStore`, both replicating every range of a
   two-node ring) hold the same `--keys` keys, then differ in 0%, 1% and 10% of them (half newer
   on each side). The two anti-entropy cores exchange messages in process, with no rate limit and
   no pause between exchanges, until every Merkle root matches. Reported: bytes exchanged
   (messages and pushed clocks), keys pushed, and the time to repair (CPU-bound: in one process).
2. Foreground cost: quorum write throughput of three in-process node runtimes (MemoryStore, every
   message through the real codec) with anti-entropy running every `--interval-ms` against it
   turned off (no exchanges and no Merkle index), as a ratio.

No data point asserts anything; the numbers are printed (`--json`: one JSON object).
"""

import argparse
import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import asdict, replace

from cluster import dvv
from cluster.anti_entropy import AeEffect, AntiEntropy, Purge, Push
from cluster.context import scoped_key
from cluster.frozen import frozen
from cluster.hlc import HybridClock, Timestamp
from cluster.limits import ANTI_ENTROPY_DEFAULTS, HINT_DEFAULTS
from cluster.memory_store import MemoryStore
from cluster.merkle import MerkleIndex, clock_digest
from cluster.messages import Message, decode, encode
from cluster.replica import Replica
from cluster.requests import Level, WriteRequest
from cluster.ring import Ring
from cluster.rounds import Send
from cluster.siblings import STORED_CONTENT_TYPE, Resolution, Sibling, encode_clock, record_meta
from cluster.tombstones import RepairSettings
from node.anti_entropy import deleted_ms
from node.runtime import NodeRuntime

KEYSPACE = "default"
LOAD_BATCH = 5_000  # puts per store transaction (under transaction_ops_max)
VALUE = b"x" * 100


@frozen
class RepairPoint:
    differing_pct: float
    differing_keys: int
    bytes_exchanged: int
    keys_pushed: int
    messages: int
    seconds: float


@frozen
class ThroughputPoint:
    anti_entropy: bool
    writes: int
    writes_per_s: float
    exchanges: int


def _clock(key: bytes, node: str, base: dvv.DVVSet[Sibling]) -> dvv.DVVSet[Sibling]:
    """A write of `key` coordinated by `node` over `base` (it supersedes what base holds)."""
    sibling = Sibling(VALUE + key, "text/plain", Timestamp(1_700_000_000_000, 0, node))
    return dvv.update(dvv.Write(sibling, dvv.join(base)), base, node)


async def _load(replica: Replica, clocks: dict[bytes, dvv.DVVSet[Sibling]]) -> None:
    items = list(clocks.items())
    for start in range(0, len(items), LOAD_BATCH):
        async with replica.store.transaction() as tx:
            for key, clock in items[start : start + LOAD_BATCH]:
                await tx.put(scoped_key(KEYSPACE, key), encode_clock(clock), STORED_CONTENT_TYPE, record_meta(clock))


async def repair_point(keys: int, differing_pct: float) -> RepairPoint:
    nodes = ("a", "b")
    ring = Ring(frozenset(nodes))
    settings = replace(ANTI_ENTROPY_DEFAULTS, interval_ms=0, rate_bytes_per_s=10**12)
    replicas = {node: Replica(node, MemoryStore(), HybridClock(node)) for node in nodes}
    cores = {node: AntiEntropy(node, MerkleIndex(ring, settings.merkle_depth), settings) for node in nodes}
    base = {b"key-%07d" % i: _clock(b"key-%07d" % i, "a", dvv.DVVSet()) for i in range(keys)}
    differing = int(keys * differing_pct / 100)
    for node in nodes:
        clocks = dict(base)
        for i in range(differing):
            if (i % 2 == 0) == (node == "a"):  # half the differing keys are newer on each side
                key = b"key-%07d" % (i * (keys // max(differing, 1)))
                clocks[key] = _clock(key, node, clocks[key])
        await _load(replicas[node], clocks)
        for key, clock in clocks.items():
            encoded = encode_clock(clock)
            cores[node].on_save(scoped_key(KEYSPACE, key), clock_digest(encoded), None)
        cores[node].set_replication({KEYSPACE: 2})
        replicas[node].save_listeners.append(_listener(cores[node]))
    messages = 0
    started = time.perf_counter()
    now_ms = 0
    while True:
        queue: list[tuple[str, str, Message]] = []
        for node in nodes:
            effects = cores[node].on_tick(now_ms, 0, lambda peer: True)
            queue += _sends(node, effects)
            await _pushes(node, effects, replicas, cores)
        while queue:
            sender, to, message = queue.pop(0)
            messages += 1
            effects = cores[to].on_message(sender, decode(encode(message)), now_ms, 0)
            queue += _sends(to, effects)
            await _pushes(to, effects, replicas, cores)
        now_ms += 10
        if _roots_equal(cores["a"].index, cores["b"].index) and cores["a"].stats.full_passes >= 1:
            break
    seconds = time.perf_counter() - started
    exchanged = sum(c.stats.bytes_sent for c in cores.values())
    keys_pushed = sum(c.stats.keys_repaired for c in cores.values())
    return RepairPoint(differing_pct, differing, exchanged, keys_pushed, messages, round(seconds, 3))


def _sends(node: str, effects: list[AeEffect]) -> list[tuple[str, str, Message]]:
    return [(node, e.to, e.message) for e in effects if isinstance(e, Send)]


def _listener(core: AntiEntropy) -> Callable[[bytes, dvv.DVVSet[Sibling] | None, bytes | None], None]:
    def on_save(skey: bytes, clock: dvv.DVVSet[Sibling] | None, encoded: bytes | None) -> None:
        core.on_save(skey, None if encoded is None else clock_digest(encoded), deleted_ms(clock))

    return on_save


async def _pushes(
    node: str, effects: list[AeEffect], replicas: dict[str, Replica], cores: dict[str, AntiEntropy]
) -> None:
    """Carry out pushes as the driver does: read, charge the bytes, the peer merges."""
    for effect in effects:
        if isinstance(effect, Push):
            for key in effect.keys:
                encoded = await replicas[node].read(effect.keyspace, key)
                assert encoded is not None
                cores[node].charge(len(encoded) + len(key) + 32)
                await replicas[effect.to].merge(effect.keyspace, Resolution.SIBLINGS, key, encoded, "async")
        assert not isinstance(effect, Purge), "no tombstones in this benchmark"


def _roots_equal(a: MerkleIndex, b: MerkleIndex) -> bool:
    return all(a.root(KEYSPACE, i) == b.root(KEYSPACE, i) for i in range(len(a.ranges)))


# --- Foreground cost -------------------------------------------------------------------------


class _Net:
    def __init__(self) -> None:
        self.runtimes: dict[str, NodeRuntime] = {}

    def transport(self, node: str) -> "_Transport":
        return _Transport(self, node)


class _Transport:
    def __init__(self, net: _Net, node: str) -> None:
        self.net, self.node = net, node

    def send(self, to: str, message: Message) -> None:
        wire = encode(message)
        asyncio.get_running_loop().call_soon(lambda: self.net.runtimes[to].on_message(self.node, decode(wire)))

    def is_reachable(self, to: str) -> bool:
        return True

    def status(self) -> dict[str, dict[str, object]]:
        return {}


async def throughput_point(enabled: bool, duration_s: float, concurrency: int, interval_ms: int) -> ThroughputPoint:
    nodes = ["n1", "n2", "n3"]
    settings = RepairSettings(
        replace(ANTI_ENTROPY_DEFAULTS, interval_ms=interval_ms), HINT_DEFAULTS, anti_entropy_enabled=enabled
    )
    net = _Net()
    for node in nodes:
        replica = Replica(node, MemoryStore(), HybridClock(node))
        net.runtimes[node] = NodeRuntime(node, nodes, replica, net.transport(node), b"s" * 32, None, settings)
    for runtime in net.runtimes.values():
        await runtime.start()
    writes = 0
    loop = asyncio.get_running_loop()
    deadline = loop.time() + duration_s

    async def writer(index: int) -> None:
        nonlocal writes
        i = 0
        while loop.time() < deadline:
            key = b"load-%d-%d" % (index, i % 500)
            request = WriteRequest(KEYSPACE, key, VALUE, "text/plain", False, Level.QUORUM.value, None, 5_000,
                                   "async", (), None, False, "", b"")  # fmt: skip
            outcome = await net.runtimes[nodes[index % 3]].put(request)
            writes += outcome.status == "ok"
            i += 1

    started = loop.time()
    await asyncio.gather(*(writer(i) for i in range(concurrency)))
    elapsed = loop.time() - started
    exchanges = sum(int(r.anti_entropy.core.stats.sessions) for r in net.runtimes.values())
    for runtime in net.runtimes.values():
        await runtime.close()
    return ThroughputPoint(enabled, writes, round(writes / elapsed, 1), exchanges)


def add_bench_repair_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--keys", type=int, default=100_000, help="keys on each replica (default 100000)")
    parser.add_argument("--duration-s", type=float, default=5.0, help="seconds per throughput point (default 5)")
    parser.add_argument("--concurrency", type=int, default=32, help="concurrent writers (default 32)")
    parser.add_argument("--interval-ms", type=int, default=1_000, help="pause between exchanges when on (default 1000)")
    parser.add_argument("--rounds", type=int, default=3, help="off/on throughput pairs; medians are kept (default 3)")


async def _run(args: argparse.Namespace) -> tuple[list[RepairPoint], ThroughputPoint, ThroughputPoint]:
    repair = [await repair_point(args.keys, pct) for pct in (0.0, 1.0, 10.0)]
    # Off and on alternate, and the median of each is kept: one noisy neighbour moment (the machine
    # is shared) then moves one sample, not the ratio.
    points: dict[bool, list[ThroughputPoint]] = {False: [], True: []}
    for _ in range(args.rounds):
        for enabled in (False, True):
            points[enabled].append(await throughput_point(enabled, args.duration_s, args.concurrency, args.interval_ms))
    off, on = (sorted(points[e], key=lambda p: p.writes_per_s)[args.rounds // 2] for e in (False, True))
    return repair, off, on


def run_bench_repair(args: argparse.Namespace) -> int:
    if args.keys < 100 or args.duration_s <= 0 or args.concurrency < 1 or args.interval_ms < 0 or args.rounds < 1:
        print("titra-node bench-repair: needs --keys >= 100, --duration-s > 0, --concurrency and --rounds >= 1")
        return 2
    repair, off, on = asyncio.run(_run(args))
    ratio = round(on.writes_per_s / off.writes_per_s, 3) if off.writes_per_s else 0.0
    if args.json:
        report = {"keys": args.keys, "repair": [asdict(p) for p in repair], "throughput": [asdict(off), asdict(on)],
                  "interval_ms": args.interval_ms, "on_off_ratio": ratio}  # fmt: skip
        print(json.dumps(report))
        return 0
    print(f"anti-entropy between two replicas of {args.keys} keys (no rate limit, in one process)")
    print(f"{'differing':>10} {'keys':>8} {'bytes':>12} {'pushed':>8} {'messages':>9} {'seconds':>8}")
    for p in repair:
        print(f"{p.differing_pct:>9}% {p.differing_keys:>8} {p.bytes_exchanged:>12} {p.keys_pushed:>8} "
              f"{p.messages:>9} {p.seconds:>8}")  # fmt: skip
    print(f"quorum writes/s, 3 in-process runtimes (median of {args.rounds}): anti-entropy off {off.writes_per_s}, "
          f"on every {args.interval_ms} ms {on.writes_per_s} ({on.exchanges} exchanges): on/off {ratio}")  # fmt: skip
    return 0
