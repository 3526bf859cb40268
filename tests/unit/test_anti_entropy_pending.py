"""Saves applied lazily to anti-entropy's Merkle trees and tombstone bookkeeping (cluster/anti_entropy.py).

A save only records the key's latest stored bytes; the trees learn them when something reads.
These tests hold the core to an eager reference (each save applied at once, as before) over
random sequences of saves and reads, check the bound on the backlog, that a hot key is hashed
once, that no purge is decided on a replaced digest, and that the start-up scan still loses to a
save recorded while it ran.
"""

from dataclasses import replace

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

import cluster.anti_entropy
from cluster import dvv
from cluster.anti_entropy import AntiEntropy, Purge
from cluster.context import scoped_key
from cluster.hlc import HybridClock, Timestamp
from cluster.limits import ANTI_ENTROPY_DEFAULTS
from cluster.memory_store import MemoryStore
from cluster.merkle import MerkleIndex, clock_digest, keyspace_of
from cluster.replica import Replica
from cluster.requests import ReadOutcome, ReadRequest, WriteOutcome, WriteRequest
from cluster.ring import Ring
from cluster.siblings import Resolution, Sibling
from cluster.store import ScanPage
from cluster.tombstones import Candidate, RepairSettings, TombstoneTracker
from node.anti_entropy import AntiEntropyDriver, deleted_ms
from node.keyspaces import KeyspaceRegistry

RING = Ring(frozenset({"a", "b", "c"}), vnodes_per_node=4)
DEPTH = 4
GRACE_MS = 1_000
KEYSPACES = ("default", "other")
PEERS = ["b", "c"]


def settings_with(pending_saves_max: int) -> object:
    return replace(ANTI_ENTROPY_DEFAULTS, merkle_depth=DEPTH, tombstone_grace_ms=GRACE_MS,
                   pending_saves_max=pending_saves_max)  # fmt: skip


def lazy_core(pending_saves_max: int) -> AntiEntropy:
    return AntiEntropy("a", MerkleIndex(RING, DEPTH), settings_with(pending_saves_max))  # type: ignore[arg-type]


class Eager:
    """The reference: what the core did before saves were recorded, each one applied at once."""

    def __init__(self) -> None:
        self.index = MerkleIndex(RING, DEPTH)
        self.tombstones = TombstoneTracker(GRACE_MS)

    def on_save(self, skey: bytes, digest: bytes | None, deleted_ms: int | None) -> None:
        range_index = self.index.update(skey, digest)
        self.tombstones.observe(skey, digest, deleted_ms, (keyspace_of(skey), range_index))


def snapshot(index: MerkleIndex, tombstones: TombstoneTracker) -> object:
    """Everything a reader can see: every tree's hashes, keys and digests, and the tombstone
    candidates in the order `due` visits them (with their confirmations and purge marks)."""
    trees = {}
    for keyspace in KEYSPACES:
        for i in range(len(index.ranges)):
            tree = index.tree(keyspace, i)
            if tree is not None:
                trees[keyspace, i] = (tree.hashes.tobytes(), tree.leaves, tree.keys)
    candidates: list[tuple[bytes, Candidate]] = list(tombstones.candidates.items())
    return trees, index.keys(), index.trees(), candidates


def skey(key: int) -> bytes:
    return scoped_key(KEYSPACES[key % 2], b"key-%d" % key)


def encoded(key: int, version: int) -> bytes:
    return b"clock of key-%d version %d " % (key, version) + b"x" * 200


KEYS = st.integers(0, 11)  # few keys: the same ones come back, and most ranges hold one or none
VERSIONS = st.integers(0, 3)


class LazyAgainstEager(RuleBasedStateMachine):
    """Random saves and reads; every read must see on the lazy core what the eager one holds."""

    @initialize(pending_saves_max=st.sampled_from([0, 1, 2, 3, 7, ANTI_ENTROPY_DEFAULTS.pending_saves_max]))
    def start(self, pending_saves_max: int) -> None:
        self.bound = pending_saves_max
        self.core, self.eager = lazy_core(pending_saves_max), Eager()

    @rule(key=KEYS, version=st.one_of(st.none(), VERSIONS), tombstone=st.booleans(), as_bytes=st.booleans())
    def save(self, key: int, version: int | None, tombstone: bool, as_bytes: bool) -> None:
        """version None: the key is purged; as_bytes: the driver's path (stored bytes, hashed later)."""
        stored = None if version is None else encoded(key, version)
        digest = None if stored is None else clock_digest(stored)
        deleted_ms = 100 * key if tombstone and stored is not None else None
        if as_bytes:
            self.core.on_save_encoded(skey(key), stored, deleted_ms)
        else:
            self.core.on_save(skey(key), digest, deleted_ms)
        self.eager.on_save(skey(key), digest, deleted_ms)

    @rule(key=KEYS, version=VERSIONS, peer=st.sampled_from(PEERS))
    def confirm(self, key: int, version: int, peer: str) -> None:
        self.core.tombstones.confirm(peer, skey(key), clock_digest(encoded(key, version)))
        self.eager.tombstones.confirm(peer, skey(key), clock_digest(encoded(key, version)))

    @rule(key=KEYS, peer=st.sampled_from(PEERS))
    def confirm_range(self, key: int, peer: str) -> None:
        where = (keyspace_of(skey(key)), self.eager.index.locate(skey(key))[0])
        self.core.tombstones.confirm_range(peer, where)
        self.eager.tombstones.confirm_range(peer, where)

    @rule(wall_ms=st.integers(0, 3 * GRACE_MS))
    def due(self, wall_ms: int) -> None:
        handed = self.core.tombstones.due(wall_ms, lambda where: PEERS, 2)
        assert handed == self.eager.tombstones.due(wall_ms, lambda where: PEERS, 2)

    @rule(key=KEYS)
    def knows(self, key: int) -> None:
        waiting = self.core.pending_saves
        assert self.core.knows(skey(key)) is (self.eager.index.digest_of(skey(key)) is not None)
        assert self.core.pending_saves == waiting, "asking applies nothing"

    @rule()
    def read(self) -> None:
        assert snapshot(self.core.index, self.core.tombstones) == snapshot(self.eager.index, self.eager.tombstones)

    @rule()
    def status(self) -> None:
        status = self.core.status()
        assert self.core.pending_saves == 0, "the status applied the backlog"
        assert (status["index_keys"], status["trees"], status["tombstones_pending"]) == (
            self.eager.index.keys(),
            self.eager.index.trees(),
            len(self.eager.tombstones),
        )

    @invariant()
    def backlog_within_bound(self) -> None:
        assert self.core.pending_saves <= self.bound

    def teardown(self) -> None:
        self.read()


LazyAgainstEager.TestCase.settings = settings(max_examples=200, stateful_step_count=60, deadline=None)
test_recorded_saves_leave_what_applying_each_at_once_leaves = LazyAgainstEager.TestCase


def test_a_key_saved_and_purged_between_two_reads_still_made_its_tree() -> None:
    """The status counts trees made; eagerly, the save made one before the purge emptied it."""
    core, eager = lazy_core(ANTI_ENTROPY_DEFAULTS.pending_saves_max), Eager()
    for core_or_eager in (core, eager):
        core_or_eager.on_save(skey(4), clock_digest(encoded(4, 0)), None)
        core_or_eager.on_save(skey(4), None, None)
    assert core.index.trees() == eager.index.trees() == 1


def test_tombstones_are_handed_out_in_the_order_of_their_last_save() -> None:
    core, eager = lazy_core(ANTI_ENTROPY_DEFAULTS.pending_saves_max), Eager()
    for key, version in [(0, 0), (2, 0), (0, 1)]:
        for core_or_eager in (core, eager):
            core_or_eager.on_save(skey(key), clock_digest(encoded(key, version)), 5)
    assert list(core.tombstones.candidates) == list(eager.tombstones.candidates) == [skey(2), skey(0)]


def test_a_hot_key_is_hashed_once_between_two_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    hashed: list[bytes] = []

    def counting_digest(stored: bytes) -> bytes:
        hashed.append(stored)
        return clock_digest(stored)

    monkeypatch.setattr(cluster.anti_entropy, "clock_digest", counting_digest)
    core, eager = lazy_core(ANTI_ENTROPY_DEFAULTS.pending_saves_max), Eager()
    for version in range(1_000):
        core.on_save_encoded(skey(1), encoded(1, version), None)
    assert core.pending_saves == 1 and hashed == []
    eager.on_save(skey(1), clock_digest(encoded(1, 999)), None)
    range_index = eager.index.locate(skey(1))[0]
    assert core.index.root(keyspace_of(skey(1)), range_index) == eager.index.root(keyspace_of(skey(1)), range_index)
    assert hashed == [encoded(1, 999)], "only the last version is hashed"


@pytest.mark.parametrize("pending_saves_max", [1, 16, ANTI_ENTROPY_DEFAULTS.pending_saves_max])
def test_the_backlog_stays_below_its_bound_without_any_reader(pending_saves_max: int) -> None:
    core = lazy_core(pending_saves_max)
    most = 0
    for key in range(3 * pending_saves_max + 5):
        core.on_save_encoded(skey(key), encoded(key, 0), None)
        most = max(most, core.pending_saves)
    # The bound, and not something else, decides when the backlog is applied.
    assert most == pending_saves_max - 1
    assert core.index.keys() == 3 * pending_saves_max + 5


def test_zero_applies_every_save_at_once() -> None:
    core = lazy_core(0)
    core.on_save_encoded(skey(3), encoded(3, 0), None)
    assert core.pending_saves == 0 and core.index.digest_of(skey(3)) == clock_digest(encoded(3, 0))


def tombstone_ready_to_purge(core: AntiEntropy) -> bytes:
    """A tombstone of key 2 past its grace period that both other replicas have confirmed."""
    digest = clock_digest(encoded(2, 0))
    core.on_save(skey(2), digest, 0)
    for peer in PEERS:
        core.tombstones.confirm(peer, skey(2), digest)
    return digest


@pytest.mark.parametrize("written_since", [False, True])
def test_a_purge_is_never_decided_on_a_digest_a_recorded_save_replaced(written_since: bool) -> None:
    core = lazy_core(ANTI_ENTROPY_DEFAULTS.pending_saves_max)
    core.set_replication({KEYSPACES[0]: 3})
    digest = tombstone_ready_to_purge(core)
    if written_since:
        core.on_save_encoded(skey(2), encoded(2, 1), None)  # a live value, recorded, not applied
    # Every peer unreachable: the pass ends at once and the purges are decided.
    effects = core.on_tick(0, 10 * GRACE_MS, lambda peer: False)
    purges = [e for e in effects if isinstance(e, Purge)]
    assert purges == ([] if written_since else [Purge(KEYSPACES[0], b"key-2", digest)])


# --- the start-up scan, through the node driver ------------------------------------------------


async def never_write(request: WriteRequest) -> WriteOutcome:
    raise AssertionError("the scan writes nothing")


async def never_read(request: ReadRequest) -> ReadOutcome:
    raise AssertionError("the scan reads no keyspace")


async def test_the_start_up_scan_loses_to_a_save_recorded_while_it_ran(monkeypatch: pytest.MonkeyPatch) -> None:
    store = MemoryStore()
    replica = Replica("a", store, HybridClock("a"))

    async def write(key: bytes, value: bytes) -> None:
        minted = await replica.mint(
            "default", Resolution.SIBLINGS, key, value, "text/plain", False, (), None, None, False, "async"
        )
        assert minted.clock is not None

    for key in (b"k1", b"k2", b"k3"):
        await write(key, b"old")
    driver = AntiEntropyDriver(
        RING, replica, KeyspaceRegistry(3, store, never_write, never_read), lambda to, message: None,
        lambda peer: True, RepairSettings(settings_with(ANTI_ENTROPY_DEFAULTS.pending_saves_max)),  # type: ignore[arg-type]
    )  # fmt: skip
    real_scan = store.scan

    async def scan_then_write(prefix: bytes = b"", after: bytes | None = None, limit: int | None = None) -> ScanPage:
        page = await real_scan(prefix, after, limit)
        if after is None:
            await write(b"k1", b"newer")  # lands after the page was read: its k1 is stale
        return page

    monkeypatch.setattr(store, "scan", scan_then_write)
    assert await driver.build() == 2, "k1 was saved during the scan and is not loaded again"
    for key in (b"k1", b"k2", b"k3"):
        stored = await replica.read("default", key)
        assert stored is not None
        assert driver.core.index.digest_of(scoped_key("default", key)) == clock_digest(stored)


def clock_of(*siblings: tuple[str, int, bool]) -> dvv.DVVSet[Sibling]:
    """Concurrent siblings, one per (node, physical ms, is a tombstone)."""
    clock: dvv.DVVSet[Sibling] = dvv.DVVSet()
    for node, physical_ms, deleted in siblings:
        sibling = Sibling(b"" if deleted else b"v", "text/plain", Timestamp(physical_ms, 0, node), deleted)
        clock = dvv.update(dvv.new(sibling), clock, node)
    return clock


@pytest.mark.parametrize(
    ("clock", "expected"),
    [
        (None, None),  # purged
        (dvv.DVVSet(), None),  # nothing stored
        (clock_of(("a", 5, False)), None),
        (clock_of(("a", 5, True), ("b", 9, False)), None),  # a live sibling: not a tombstone
        (clock_of(("a", 5, False), ("b", 9, True)), None),
        (clock_of(("a", 5, True), ("b", 9, True), ("c", 7, True)), 9),  # the newest tombstone
    ],
)
def test_the_tombstone_time_of_a_clock(clock: dvv.DVVSet[Sibling] | None, expected: int | None) -> None:
    assert deleted_ms(clock) == expected
