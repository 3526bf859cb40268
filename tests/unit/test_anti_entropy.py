"""Anti-entropy: the pure exchange between two cores over a fake link, the tombstone purge rule,
and three node runtimes in one process that converge without a single client read.

The pure tests follow h11's style: synchronous, a virtual clock, messages handed over by hand.
A "replica" there is a dict of key -> (digest, tombstone ms); merging keeps the greater digest,
which is commutative and idempotent like DVV sync, so replicas converge to the same digests.
"""

import asyncio
import json
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace

import pytest

from cluster.anti_entropy import AntiEntropy, Purge, Push
from cluster.context import scoped_key
from cluster.hlc import HybridClock
from cluster.limits import ANTI_ENTROPY_DEFAULTS, HINT_DEFAULTS
from cluster.memory_store import MemoryStore
from cluster.merkle import MerkleIndex, clock_digest
from cluster.messages import AeKeys, Message, decode, encode
from cluster.replica import Replica
from cluster.requests import ReadRequest, WriteRequest
from cluster.ring import Ring
from cluster.rounds import Send
from cluster.tombstones import RepairSettings, TombstoneTracker, may_purge
from node.anti_entropy import repair_settings_from_env
from node.runtime import NodeRuntime

FAST = replace(ANTI_ENTROPY_DEFAULTS, interval_ms=0, tick_ms=10, merkle_depth=6, rate_bytes_per_s=10**9)
GRACE_MS = 1_000


def k(i: int) -> bytes:
    return scoped_key("default", b"key-%05d" % i)


@dataclass
class Link:
    """Two or more pure cores; `run` ticks them on a virtual clock and delivers everything."""

    nodes: tuple[str, ...] = ("a", "b")
    settings: object = FAST
    now_ms: int = 0
    wall_ms: int = 1_000_000
    cores: dict[str, AntiEntropy] = field(default_factory=dict)
    data: dict[str, dict[bytes, tuple[bytes, int | None]]] = field(default_factory=dict)
    down: set[str] = field(default_factory=set)
    sent: list[Message] = field(default_factory=list)
    queue: deque[tuple[str, str, Message]] = field(default_factory=deque)

    def __post_init__(self) -> None:
        ring = Ring(frozenset(self.nodes), vnodes_per_node=8)
        for node in self.nodes:
            self.cores[node] = AntiEntropy(node, MerkleIndex(ring, FAST.merkle_depth), self.settings)  # type: ignore[arg-type]
            self.cores[node].set_replication({"default": len(self.nodes)})
            self.data[node] = {}

    def put(self, node: str, key: bytes, version: str, deleted_ms: int | None = None) -> None:
        self.data[node][key] = (clock_digest(version.encode()), deleted_ms)
        self.cores[node].on_save(key, self.data[node][key][0], deleted_ms)

    def apply(self, node: str, effects: list[object]) -> None:
        for effect in effects:
            match effect:
                case Send(to=to, message=message):
                    self.sent.append(message)
                    if to not in self.down and node not in self.down:
                        self.queue.append((node, to, message))
                case Push(to=to, keys=keys):
                    for key in keys:
                        self._merge(to, scoped_key("default", key), self.data[node][scoped_key("default", key)])
                case Purge(key=key, digest=digest):
                    skey = scoped_key("default", key)
                    if self.data[node].get(skey, (None,))[0] == digest:
                        del self.data[node][skey]
                        self.cores[node].on_save(skey, None, None)
                        self.cores[node].tombstones.purged += 1

    def _merge(self, node: str, skey: bytes, incoming: tuple[bytes, int | None]) -> None:
        if node in self.down:
            return
        mine = self.data[node].get(skey)
        # Like DVV sync here: a tombstone supersedes the live value; otherwise the greater digest wins.
        if mine is None or (incoming[1] is not None, incoming[0]) > (mine[1] is not None, mine[0]):
            self.data[node][skey] = incoming
            self.cores[node].on_save(skey, incoming[0], incoming[1])

    def run(self, duration_ms: int) -> None:
        end = self.now_ms + duration_ms
        while self.now_ms < end:
            self.now_ms += 10
            self.wall_ms += 10
            for node in self.nodes:
                if node not in self.down:
                    effects = self.cores[node].on_tick(self.now_ms, self.wall_ms, lambda peer: peer not in self.down)
                    self.apply(node, list(effects))
            while self.queue:
                sender, to, message = self.queue.popleft()
                self.apply(to, list(self.cores[to].on_message(sender, message, self.now_ms, self.wall_ms)))

    def converged(self) -> bool:
        first = self.data[self.nodes[0]]
        return all(self.data[node] == first for node in self.nodes[1:])


def test_equal_replicas_exchange_only_roots() -> None:
    link = Link()
    for i in range(500):
        link.put("a", k(i), f"v{i}")
        link.put("b", k(i), f"v{i}")
    link.run(200)
    a = link.cores["a"].stats
    assert a.full_passes >= 1 and a.ranges_compared > 0 and a.ranges_differing == 0 and a.keys_repaired == 0
    assert not [m for m in link.sent if isinstance(m, AeKeys)]


def test_differing_replicas_converge_in_both_directions_pushing_only_the_differing_keys() -> None:
    link = Link()
    for i in range(2_000):
        link.put("a", k(i), f"v{i}")
        link.put("b", k(i), f"v{i}")
    changed_on_a = set(range(0, 2_000, 97))
    changed_on_b = set(range(5, 2_000, 211)) - changed_on_a
    for i in changed_on_a:
        link.put("a", k(i), f"a{i}")
    for i in changed_on_b:
        link.put("b", k(i), f"b{i}")
    link.put("a", k(5_000), "only-a")
    link.put("b", k(5_001), "only-b")
    link.run(1_000)
    assert link.converged()
    differing = len(changed_on_a) + len(changed_on_b) + 2
    repaired = link.cores["a"].stats.keys_repaired + link.cores["b"].stats.keys_repaired
    # Each differing key is pushed by both sides at most once per exchange, and each side initiates.
    assert differing <= repaired <= 4 * differing
    for node in ("a", "b"):
        index = link.cores[node].index
        assert index.keys() == 2_002


def test_the_byte_budget_slows_an_exchange_down() -> None:
    def time_to_converge(rate: int) -> int:
        link = Link(settings=replace(FAST, rate_bytes_per_s=rate))
        for i in range(300):
            link.put("a", k(i), f"a{i}")
        while not link.converged():
            link.run(10)
            assert link.now_ms < 600_000, "never converged"
        return link.now_ms

    assert time_to_converge(2_000) > 5 * time_to_converge(10**9)


def test_a_silent_peer_is_abandoned_and_the_exchange_retried_later() -> None:
    link = Link(settings=replace(FAST, session_timeout_ms=100))
    link.put("a", k(1), "x")
    core = link.cores["a"]
    link.apply("a", list(core.on_tick(10, link.wall_ms, lambda peer: True)))  # b never answers
    link.queue.clear()
    link.now_ms = 10
    link.run(200)
    assert core.stats.sessions_failed >= 1
    link.run(200)
    assert link.converged()


@pytest.mark.parametrize(
    ("age_ms", "confirmed", "expected"),
    [
        (GRACE_MS, {"b": b"d", "c": b"d"}, True),  # grace passed, every other replica holds it
        (GRACE_MS - 1, {"b": b"d", "c": b"d"}, False),  # too young
        (GRACE_MS * 10, {"b": b"d"}, False),  # c never confirmed
        (GRACE_MS * 10, {"b": b"d", "c": b"other"}, False),  # c holds another version
        (GRACE_MS * 10, {"b": b"d", "c": b"d", "x": b"zzz"}, True),  # non-replicas do not matter
    ],
)
def test_purge_rule(age_ms: int, confirmed: dict[str, bytes], expected: bool) -> None:
    assert may_purge(b"d", 5_000, 5_000 + age_ms, GRACE_MS, ["b", "c"], confirmed) is expected


def test_a_new_digest_forgets_confirmations() -> None:
    tracker = TombstoneTracker(GRACE_MS)
    tracker.observe(k(1), b"d1", 0, ("default", 0))
    tracker.confirm("b", k(1), b"d1")
    assert tracker.due(GRACE_MS, lambda where: ["b"], 10) == [(k(1), b"d1")]
    assert tracker.due(GRACE_MS, lambda where: ["b"], 10) == [], "handed out once"
    tracker.observe(k(1), b"d2", 0, ("default", 0))
    assert tracker.due(GRACE_MS, lambda where: ["b"], 10) == []
    tracker.confirm("b", k(1), b"d1")  # a stale report does not count for the new digest
    assert tracker.due(GRACE_MS, lambda where: ["b"], 10) == []
    tracker.observe(k(1), b"d3", None, ("default", 0))  # a live value: no longer a tombstone
    assert len(tracker) == 0


def test_tombstones_are_purged_everywhere_once_all_replicas_hold_them_and_grace_passed() -> None:
    link = Link(nodes=("a", "b", "c"), settings=replace(FAST, tombstone_grace_ms=GRACE_MS))
    deleted_at = link.wall_ms
    for node in ("a", "b", "c"):
        link.put(node, k(1), "live")
    link.put("a", k(1), "tombstone", deleted_ms=deleted_at)
    link.down.add("c")
    link.run(3 * GRACE_MS)
    assert k(1) in link.data["a"] and k(1) in link.data["b"], "c has not confirmed: nothing is purged"
    link.down.clear()
    link.run(3 * GRACE_MS)
    assert all(k(1) not in link.data[node] for node in ("a", "b", "c"))
    assert sum(link.cores[node].tombstones.purged for node in ("a", "b", "c")) == 3


def test_an_expired_tombstone_is_not_pushed_to_a_replica_that_lacks_the_key() -> None:
    link = Link(settings=replace(FAST, tombstone_grace_ms=GRACE_MS))
    link.put("a", k(1), "tombstone", deleted_ms=link.wall_ms - 2 * GRACE_MS)
    link.run(500)
    assert k(1) not in link.data["b"] and k(1) not in link.data["a"], "purged on a, never sent to b"


def test_a_young_tombstone_is_pushed_to_a_replica_that_lacks_the_key() -> None:
    link = Link(settings=replace(FAST, tombstone_grace_ms=10 * GRACE_MS))
    link.put("a", k(1), "tombstone", deleted_ms=link.wall_ms)
    link.run(500)
    assert k(1) in link.data["b"]


def test_recording_saves_lazily_changes_nothing_a_peer_sees() -> None:
    """The same writes, exchanges and purges with every save applied at once (pending_saves_max
    0) and with saves recorded until a reader needs them: the same messages, in the same order."""

    def exchange(pending_saves_max: int) -> tuple[list[Message], list[dict[str, int]], object]:
        settings = replace(FAST, tombstone_grace_ms=GRACE_MS, pending_saves_max=pending_saves_max)
        link = Link(nodes=("a", "b", "c"), settings=settings)
        for i in range(300):
            for node in ("a", "b", "c"):
                link.put(node, k(i), f"v{i}")
        for round_no in range(20):  # hot keys, rewritten between exchanges
            for i in range(0, 300, 7):
                link.put("a" if round_no % 2 else "b", k(i), f"r{round_no}-{i}")
            link.put("c", k(1_000 + round_no), "tombstone", deleted_ms=link.wall_ms)
            link.run(100)
        link.run(3 * GRACE_MS)
        assert link.converged()
        stats = [vars(link.cores[node].stats) for node in link.nodes]
        return link.sent, stats, link.data

    eager = exchange(0)
    assert sum(stats["purges_issued"] for stats in eager[1]) == 60, "each tombstone purged on its 3 replicas"
    assert exchange(ANTI_ENTROPY_DEFAULTS.pending_saves_max) == eager


def test_settings_come_from_the_environment() -> None:
    settings = repair_settings_from_env(
        {"TITRA_AE_INTERVAL_MS": "200", "TITRA_AE_TOMBSTONE_GRACE_MS": "5000", "TITRA_HINT_TTL_MS": "1000",
         "TITRA_HINTS_ENABLED": "0"}
    )  # fmt: skip
    assert settings.anti_entropy.interval_ms == 200 and settings.anti_entropy.tombstone_grace_ms == 5_000
    assert settings.hints.ttl_ms == 1_000 and not settings.hints_enabled and settings.anti_entropy_enabled
    with pytest.raises(ValueError, match="TITRA_AE_INTERVAL_MS"):
        repair_settings_from_env({"TITRA_AE_INTERVAL_MS": "soon"})
    with pytest.raises(ValueError, match="hint TTL"):
        repair_settings_from_env({"TITRA_AE_TOMBSTONE_GRACE_MS": "10", "TITRA_HINT_TTL_MS": "10"})
    assert RepairSettings(ANTI_ENTROPY_DEFAULTS, HINT_DEFAULTS).problems() == []


async def test_pure_cores_need_no_event_loop() -> None:
    # The same core runs inside an event loop unchanged (the driver only forwards effects).
    link = Link()
    link.put("a", k(1), "x")
    await asyncio.sleep(0)
    link.run(100)
    assert link.converged()


# --- Three node runtimes in one process (the fake network drops what crosses a cut link) -----------

NODES = ["n1", "n2", "n3"]
SECRET = b"s" * 32
TEST_REPAIR = RepairSettings(
    replace(FAST, interval_ms=20, session_timeout_ms=500, tombstone_grace_ms=400),
    replace(HINT_DEFAULTS, ttl_ms=200, tick_ms=10, replay_ack_timeout_ms=500),
)


@dataclass
class RuntimeNet:
    runtimes: dict[str, NodeRuntime] = field(default_factory=dict)
    cut: set[frozenset[str]] = field(default_factory=set)

    def link(self, a: str, b: str) -> bool:
        return a == b or frozenset((a, b)) not in self.cut

    def isolate(self, node: str) -> None:
        self.cut |= {frozenset((node, other)) for other in self.runtimes if other != node}

    def heal(self) -> None:
        self.cut.clear()

    async def start(self, settings: RepairSettings = TEST_REPAIR, nodes: list[str] = NODES) -> "RuntimeNet":
        for node in nodes:
            replica = Replica(node, MemoryStore(), HybridClock(node))
            runtime = NodeRuntime(node, nodes, replica, NetTransport(self, node), SECRET, None, settings)
            self.runtimes[node] = runtime
        for runtime in self.runtimes.values():
            await runtime.start()
        return self

    async def close(self) -> None:
        for runtime in self.runtimes.values():
            await runtime.close()

    async def digests(self, node: str, keyspace: str = "default") -> list[tuple[bytes, str]]:
        entries, cursor = await self.runtimes[node].replica.digest(keyspace, None, 1_000)
        assert cursor is None
        return entries

    async def converged(self, keyspace: str = "default") -> bool:
        first = await self.digests(NODES[0], keyspace)
        return all([await self.digests(node, keyspace) == first for node in self.runtimes])


@dataclass
class NetTransport:
    net: RuntimeNet
    node: str

    def send(self, to: str, message: Message) -> None:
        if not self.net.link(self.node, to):
            return
        wire = encode(message)

        def deliver() -> None:
            if self.net.link(self.node, to):
                self.net.runtimes[to].on_message(self.node, decode(wire))

        asyncio.get_running_loop().call_soon(deliver)

    def is_reachable(self, to: str) -> bool:
        return self.net.link(self.node, to)

    def status(self) -> dict[str, dict[str, object]]:
        return {}


def request(
    key: bytes, value: bytes = b"v", level: str = "quorum", deleted: bool = False, **kw: object
) -> WriteRequest:
    fields: dict[str, object] = {"keyspace": "default", "w": None, "timeout_ms": 1_000, "durability": "async",
                                 "context": (), "if_match": None, "if_none_match": False, "idempotency_key": "",
                                 "request_digest": b"", "content_type": "text/plain", **kw}  # fmt: skip
    return WriteRequest(key=key, value=value, deleted=deleted, level=level, **fields)  # type: ignore[arg-type]


async def wait_for(probe: Callable[[], Awaitable[bool]], what: str, timeout_s: float = 10.0) -> float:
    loop = asyncio.get_running_loop()
    started = loop.time()
    while loop.time() - started < timeout_s:
        if await probe():
            return loop.time() - started
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out after {timeout_s} s waiting until {what}")


async def test_runtimes_converge_by_anti_entropy_alone_without_reads() -> None:
    net = await RuntimeNet().start(replace(TEST_REPAIR, hints_enabled=False))
    try:
        net.isolate("n3")
        for i in range(40):
            level = "one" if i % 2 else "quorum"
            out = await net.runtimes["n1" if i % 3 else "n2"].put(request(b"k%d" % i, b"v%d" % i, level))
            assert out.status == "ok" and "n3" not in out.acks
        assert await net.digests("n3") == []
        net.heal()
        await wait_for(net.converged, "every replica holds the same digests")
        assert len(await net.digests("n3")) == 40
        repaired = sum(int(r.anti_entropy.core.stats.keys_repaired) for r in net.runtimes.values())
        assert repaired >= 40
    finally:
        await net.close()


async def test_deleted_keys_are_purged_on_every_replica_after_the_grace_period() -> None:
    net = await RuntimeNet().start()
    try:
        out = await net.runtimes["n1"].put(request(b"gone", level="all"))
        assert out.status == "ok"
        deleted = await net.runtimes["n2"].put(request(b"gone", b"", "all", deleted=True))
        assert deleted.status == "ok"

        async def purged() -> bool:
            return all([await net.digests(node) == [] for node in NODES])

        await wait_for(purged, "the tombstone is purged on all three replicas")
        assert sum(r.anti_entropy.core.tombstones.purged for r in net.runtimes.values()) == 3
        again = await net.runtimes["n3"].put(request(b"gone", b"back", "all"))
        assert again.status == "ok"
        got = await net.runtimes["n1"].get(ReadRequest("default", b"gone", "all", None, 1_000, ()))
        assert [s.value for s in got.siblings] == [b"back"], "a write after the purge is not lost"
    finally:
        await net.close()


async def test_a_write_after_a_partial_purge_is_not_lost() -> None:
    """One replica purged, another has not yet: the new write's dot must not collide with the
    tombstone's (Replica.mint starts an absent entry at an HLC-derived counter)."""
    net = await RuntimeNet().start(replace(TEST_REPAIR, anti_entropy_enabled=False))
    try:
        await net.runtimes["n1"].put(request(b"k", level="all"))
        await net.runtimes["n1"].put(request(b"k", b"", "all", deleted=True))
        replica = net.runtimes["n1"].replica
        stored = await replica.read("default", b"k")
        assert stored is not None and await replica.purge("default", b"k", clock_digest(stored))
        assert not await replica.purge("default", b"k", clock_digest(stored)), "already gone"
        out = await net.runtimes["n1"].put(request(b"k", b"new", "all"))
        assert out.status == "ok"
        for node in NODES:
            got = await net.runtimes[node].get(ReadRequest("default", b"k", "one", None, 1_000, ()))
            assert [s.value for s in got.siblings] == [b"new"]
    finally:
        await net.close()


async def test_status_reports_anti_entropy_progress() -> None:
    net = await RuntimeNet().start()
    try:
        runtime = net.runtimes["n1"]

        async def passed() -> bool:
            return int(runtime.anti_entropy.core.stats.full_passes) >= 1

        await wait_for(passed, "n1 completed a full anti-entropy pass")
        status = runtime.status()["repair"]
        assert isinstance(status, dict)
        assert status["anti_entropy"]["ready"] and status["anti_entropy"]["last_full_pass_wall_ms"] > 0
        assert status["hints"]["backlog"] == 0
    finally:
        await net.close()


def test_bench_repair_runs_and_reports(capsys: pytest.CaptureFixture[str]) -> None:
    """A smoke run of `titra-node bench-repair` (numbers are printed, never asserted)."""
    from node.cli import main

    assert main(["bench-repair", "--keys", "400", "--duration-s", "0.2", "--rounds", "1", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [p["differing_pct"] for p in report["repair"]] == [0.0, 1.0, 10.0]
    assert report["repair"][0]["keys_pushed"] == 0 and report["repair"][2]["keys_pushed"] >= 40
    assert {p["anti_entropy"] for p in report["throughput"]} == {False, True}
