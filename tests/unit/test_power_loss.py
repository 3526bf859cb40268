"""Power loss on SimDisk: what `fsync` acknowledged survives; `async` loses a suffix, never a hole.

`SimDisk.crash()` drops every byte not yet fsynced (or keeps a seeded torn prefix of them). The
mid-flight tests cut the power at the n-th disk operation, from inside the WAL's writer thread,
through `PowerCutDisk`, so commits are in flight when it happens. Seeds are in the test ids.
"""

import asyncio
import random
from collections.abc import Callable

import pytest

from cluster.store import Durability, Isolation, Record, StoreFailed
from node.storage import StoreConfig, WalStore
from node.storage.disk import Disk, FileHandle, KeepUnsynced, SimDisk

DATA_DIR = "node1"
# The background fdatasync of `async` commits never runs within a test: what is synced is decided
# by the test alone. A short lock timeout turns a leaked lock into a quick failure, not a hang.
NO_BACKGROUND_SYNC = StoreConfig(async_flush_interval_ms=600_000, lock_timeout_ms=500)


def torn_prefixes(seed: int) -> KeepUnsynced:
    """A power loss that keeps a random prefix of each file's unsynced bytes."""
    rng = random.Random(seed)
    return lambda unsynced_bytes: rng.randint(0, unsynced_bytes)


async def open_store(disk: Disk, config: StoreConfig = NO_BACKGROUND_SYNC) -> WalStore:
    return await WalStore.open(DATA_DIR, config, disk=disk)


async def contents(store: WalStore) -> dict[bytes, Record]:
    state: dict[bytes, Record] = {}
    after: bytes | None = None
    while True:
        page = await store.scan(after=after, limit=1_000)
        state.update(page.items)
        if page.cursor is None:
            return state
        after = page.cursor


async def power_loss_and_reopen(store: WalStore, disk: SimDisk, keep: KeepUnsynced | None) -> WalStore:
    """Crash the disk under a quiescent store, abandon the store, reopen on what survived."""
    disk.crash(keep)
    # Every commit was acknowledged, so closing writes nothing: at most it re-syncs the content
    # the crash left, which is already durable.
    await store.close()
    return await open_store(disk)


@pytest.mark.parametrize("torn", [False, True], ids=["clean", "torn"])
@pytest.mark.parametrize("seed", range(4))
async def test_acknowledged_fsync_commits_survive_power_loss(seed: int, torn: bool) -> None:
    rng = random.Random(seed)
    disk = SimDisk()
    store = await open_store(disk, StoreConfig(wal_segment_bytes=1_024))
    expected: dict[bytes, tuple[bytes, int]] = {}

    async def writer(w: int) -> None:
        for n in range(25):
            key = f"w{w}-{rng.randrange(12)}".encode()
            if key in expected and rng.random() < 0.2:
                assert await store.delete(key)
                del expected[key]
            else:
                value = f"{w}-{n}".encode() * rng.randint(1, 8)
                expected[key] = (value, await store.put(key, value))
            if seed % 2 and w == 0 and n % 4 == 3:
                # A checkpoint races the other writers: commits are in flight while it rotates.
                await store.checkpoint()

    await asyncio.gather(*(writer(w) for w in range(8)))
    store = await power_loss_and_reopen(store, disk, torn_prefixes(seed) if torn else None)
    try:
        got = {k: (r.value, r.version) for k, r in (await contents(store)).items()}
        assert got == expected
    finally:
        await store.close()


@pytest.mark.parametrize("seed", range(6))
async def test_async_commits_lose_only_a_suffix(seed: int) -> None:
    """Under `async` a power loss may lose commits, but only the latest ones: no holes."""
    rng = random.Random(seed)
    disk = SimDisk()
    store = await open_store(disk, StoreConfig(wal_segment_bytes=2_048, async_flush_interval_ms=600_000))
    commits = 120
    fsynced_through = 0  # the last commit number acknowledged under fsync
    for n in range(commits):
        durability = Durability.FSYNC if rng.random() < 0.1 else Durability.ASYNC
        await store.put(f"c{n:04d}".encode(), b"x" * rng.randint(1, 80), durability=durability)
        if durability is Durability.FSYNC:
            fsynced_through = n + 1
    store = await power_loss_and_reopen(store, disk, torn_prefixes(seed))
    try:
        survivors = sorted(int(k[1:]) for k in await contents(store))
        kept = len(survivors)
        assert survivors == list(range(kept)), f"a hole in the surviving commits: {survivors}"
        assert kept >= fsynced_through, f"commit {fsynced_through} was fsynced but only {kept} survived"
        assert store.memtable.last_lsn == kept
        # The store is writable again and continues the LSN sequence.
        assert await store.put(b"next", b"1") == kept + 1
    finally:
        await store.close()


async def test_fsync_failure_fails_the_commit_in_flight_and_later_writes() -> None:
    disk = SimDisk()
    store = await open_store(disk)
    await store.put(b"acked", b"1")
    disk.fail_next_sync = True
    with pytest.raises(StoreFailed, match="outcome of commit 2 is unknown"):
        await store.put(b"in-flight", b"2")
    with pytest.raises(StoreFailed, match="refuses writes"):
        await store.put(b"later", b"3")
    async with store.transaction() as tx:
        await tx.delete(b"acked")
        with pytest.raises(StoreFailed):
            await tx.commit()
    assert (await store.get(b"acked")) is not None
    await store.close()

    store = await open_store(disk)
    try:
        assert (await store.get(b"acked")) == Record(b"1", version=1)
        assert (await store.get(b"later")) is None
        # The failed commit's outcome is unknown (here it sits in the page cache of a disk that did
        # not crash); if it is there, it is whole, and the log goes on after it.
        last_lsn = store.memtable.last_lsn
        assert last_lsn in (1, 2)
        assert await store.get(b"in-flight") == (Record(b"2", version=2) if last_lsn == 2 else None)
        assert await store.put(b"after-reopen", b"4") == last_lsn + 1
    finally:
        await store.close()


async def test_writes_after_a_failed_fsync_keep_refusing_with_store_failed() -> None:
    """A write refused by a failed log must not keep its key locked or its dirty value visible."""
    disk = SimDisk()
    store = await open_store(disk)
    disk.fail_next_sync = True
    with pytest.raises(StoreFailed):
        await store.put(b"first", b"1")
    for attempt in range(2):
        with pytest.raises(StoreFailed):
            await store.put(b"k", f"refused {attempt}".encode())
    async with store.transaction(Isolation.READ_UNCOMMITTED) as tx:
        assert await tx.get(b"k") is None, "a refused write is visible to READ UNCOMMITTED readers"
    await store.close()


async def test_failed_fsync_during_a_checkpoint_rotation_fails_the_log() -> None:
    """wal.py: 'After a write or fsync error the log is failed' (fsyncgate): no later commit may
    be acknowledged, whichever path hit the failed fsync."""
    disk = SimDisk()
    store = await open_store(disk)
    await store.put(b"a", b"1", durability=Durability.ASYNC)
    disk.fail_next_sync = True  # the sync of the active segment before the checkpoint rotates it
    with pytest.raises(OSError, match="injected fsync failure"):
        await store.checkpoint()
    with pytest.raises(StoreFailed):
        await store.put(b"b", b"2")
    await store.close()


@pytest.mark.parametrize("seed", range(4))
async def test_failed_fsync_then_power_loss_keeps_every_acknowledged_commit(seed: int) -> None:
    disk = SimDisk()
    store = await open_store(disk)
    for n in range(5):
        await store.put(f"k{n}".encode(), b"v")
    disk.fail_next_sync = True
    with pytest.raises(StoreFailed):
        await store.put(b"unknown", b"v")
    store = await power_loss_and_reopen(store, disk, torn_prefixes(seed))
    try:
        state = await contents(store)
        assert set(state) == {f"k{n}".encode() for n in range(5)}, "the unsynced commit is not durable"
    finally:
        await store.close()


# --- power cut in the middle of the writer's work --------------------------------------------


class PowerCutDisk:
    """A SimDisk whose power fails at the n-th mutating operation after `arm`: that operation
    happens or not (seeded), the SimDisk crashes, and from then on every operation raises EIO,
    so the abandoned store cannot touch what survived."""

    def __init__(self, sim: SimDisk, seed: int) -> None:
        self.sim = sim
        self._rng = random.Random(seed)
        self._countdown: int | None = None
        self._keep: KeepUnsynced | None = None
        self.dead = False

    def arm(self, operations: int, keep: KeepUnsynced | None) -> None:
        self._countdown, self._keep = operations, keep

    def mutate(self, operation: Callable[[], object]) -> None:
        if self.dead:
            raise OSError(5, "power lost")
        if self._countdown is not None:
            self._countdown -= 1
            if self._countdown == 0:
                if self._rng.random() < 0.5:
                    operation()
                self.sim.crash(self._keep)
                self.dead = True
                raise OSError(5, "power lost")
        operation()

    def _alive(self) -> None:
        if self.dead:
            raise OSError(5, "power lost")

    def makedirs(self, path: str) -> None:
        self.mutate(lambda: self.sim.makedirs(path))

    def listdir(self, path: str) -> list[str]:
        self._alive()
        return self.sim.listdir(path)

    def exists(self, path: str) -> bool:
        self._alive()
        return self.sim.exists(path)

    def size(self, path: str) -> int:
        self._alive()
        return self.sim.size(path)

    def read(self, path: str, offset: int = 0, length: int = -1) -> bytes:
        self._alive()
        return self.sim.read(path, offset, length)

    def open_append(self, path: str) -> FileHandle:
        handles: list[FileHandle] = []
        self.mutate(lambda: handles.append(self.sim.open_append(path)))
        return _CutHandle(self, handles[0])

    def open_truncate(self, path: str) -> FileHandle:
        handles: list[FileHandle] = []
        self.mutate(lambda: handles.append(self.sim.open_truncate(path)))
        return _CutHandle(self, handles[0])

    def truncate(self, path: str, size: int) -> None:
        self.mutate(lambda: self.sim.truncate(path, size))

    def rename(self, src: str, dst: str) -> None:
        self.mutate(lambda: self.sim.rename(src, dst))

    def remove(self, path: str) -> None:
        self.mutate(lambda: self.sim.remove(path))

    def sync_dir(self, path: str) -> None:
        self.mutate(lambda: self.sim.sync_dir(path))


class _CutHandle:
    def __init__(self, disk: PowerCutDisk, inner: FileHandle) -> None:
        self._disk = disk
        self._inner = inner

    def write(self, data: bytes) -> None:
        self._disk.mutate(lambda: self._inner.write(data))

    def sync(self) -> None:
        self._disk.mutate(self._inner.sync)

    def close(self) -> None:
        self._inner.close()


@pytest.mark.parametrize("torn", [False, True], ids=["clean", "torn"])
@pytest.mark.parametrize("seed", range(8))
async def test_power_cut_with_commits_in_flight(seed: int, torn: bool) -> None:
    """Eight writers commit new keys under fsync until the power fails under them. Every
    acknowledged commit survives; a commit reported as failed may or may not; the survivors are a
    prefix of the log (no holes)."""
    rng = random.Random(seed)
    sim = SimDisk()
    disk = PowerCutDisk(sim, seed)
    store = await open_store(disk, StoreConfig(wal_segment_bytes=512, async_flush_interval_ms=600_000))
    disk.arm(rng.randint(1, 60), torn_prefixes(seed) if torn else None)
    acked: dict[bytes, int] = {}
    unknown: set[bytes] = set()

    async def writer(w: int) -> None:
        for n in range(100):
            key = f"w{w}-{n:03d}".encode()
            try:
                acked[key] = await store.put(key, key, durability=Durability.FSYNC)
            except StoreFailed:
                unknown.add(key)
                return
            if n % 10 == 9 and w == 0:
                await store.checkpoint()

    results = await asyncio.gather(*(writer(w) for w in range(8)), return_exceptions=True)
    assert disk.dead, "the power cut never came: raise the writers' budget"
    # Only writer 0 checkpoints; a checkpoint cut by the power loss fails with the disk's error.
    assert all(r is None or isinstance(r, OSError) for r in results), results
    await store.close()

    store = await open_store(sim)
    try:
        state = await contents(store)
        for key, lsn in acked.items():
            assert key in state, f"acknowledged {key!r} (LSN {lsn}) was lost"
            assert state[key].version == lsn
        assert set(state) <= set(acked) | unknown, "a key no writer attempted"
        versions = sorted(r.version for r in state.values())
        assert versions == list(range(1, len(versions) + 1)), f"holes in the surviving log: {versions}"
        assert store.memtable.last_lsn == len(versions)
    finally:
        await store.close()
