"""The WAL writer's own thread (node/storage/wal.py): its life cycle, its order, its fail-stop.

Batches and log maintenance (rotate, drop segments, sync, close) go to one writer thread through
one queue, so they happen in the order queued; the thread answers each with one wake-up of the
event loop; after a failed file operation it writes nothing more; close() leaves no thread
behind. A batch is held on disk, where a test needs one in flight, by a file whose fsync waits at
a gate, never by sleeping.
"""

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import pytest
from gated_disk import GATE_TIMEOUT_S, GatedDisk

from cluster.store import Durability, StoreClosed, StoreFailed
from node.storage import StoreConfig, WalStore
from node.storage.disk import FileHandle, SimDisk
from node.storage.framing import HEADER_BYTES, RecordType
from node.storage.wal import WalWriter, segment_name

WAL_DIR = "wal"
COMMIT = RecordType.COMMIT
NO_BACKGROUND_SYNC_MS = 600_000


def wal_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "titra-wal"]


def segment_bytes(disk: SimDisk, first_lsn: int) -> int:
    return disk.size(f"{WAL_DIR}/{segment_name(first_lsn)}")


async def open_writer(disk: SimDisk, segment_bytes_max: int = 1 << 20) -> WalWriter:
    disk.makedirs(WAL_DIR)
    wal = WalWriter(disk, WAL_DIR, [], 1, segment_bytes_max, NO_BACKGROUND_SYNC_MS)
    await wal.start()
    return wal


def count_thread_wake_ups(monkeypatch: pytest.MonkeyPatch) -> list[Callable[..., Any]]:
    """The callbacks the writer thread hands to the running loop (one per job), as they come."""
    loop = asyncio.get_running_loop()
    calls: list[Callable[..., Any]] = []
    original = loop.call_soon_threadsafe

    def counting(callback: Callable[..., Any], *args: Any, **kwargs: Any) -> asyncio.Handle:
        calls.append(callback)
        return original(callback, *args, **kwargs)

    monkeypatch.setattr(loop, "call_soon_threadsafe", counting)
    return calls


async def wait_until_sync_reached(disk: GatedDisk) -> None:
    """The writer thread is inside an fsync held at the gate."""
    reached = await asyncio.to_thread(disk.sync_reached.wait, GATE_TIMEOUT_S)
    assert reached, "the writer thread never reached the fsync"


# --- life cycle ------------------------------------------------------------------------------


async def test_stores_opened_and_closed_leave_no_writer_thread() -> None:
    before = len(wal_threads())
    disk = SimDisk()
    for n in range(20):
        store = await WalStore.open("node1", StoreConfig(), disk=disk)
        assert len(wal_threads()) == before + 1, "each open store has exactly one writer thread"
        await store.put(f"k{n}".encode(), b"v")
        await store.close()
        assert len(wal_threads()) == before, f"store {n} left its writer thread running after close"
    store = await WalStore.open("node1", StoreConfig(), disk=disk)
    try:
        assert store.memtable.last_lsn == 20
    finally:
        await store.close()


async def test_a_writer_that_fails_to_start_stops_its_thread() -> None:
    class NoAppendDisk(SimDisk):
        def open_append(self, path: str) -> FileHandle:
            raise OSError(28, "injected: no space left on device")

    before = len(wal_threads())
    disk = NoAppendDisk()
    disk.makedirs(WAL_DIR)
    wal = WalWriter(disk, WAL_DIR, [], 1, 1 << 20, NO_BACKGROUND_SYNC_MS)
    with pytest.raises(OSError, match="no space left"):
        await wal.start()
    assert len(wal_threads()) == before
    # close() after a failed start returns instead of waiting for a thread that is gone.
    await asyncio.wait_for(wal.close(), 5)


async def test_close_drains_queued_commits_then_refuses_everything() -> None:
    disk = SimDisk()
    wal = await open_writer(disk)
    futures = [wal.append(COMMIT, f"r{n}".encode(), Durability.FSYNC) for n in range(10)]
    await wal.close()
    assert [f.result() for f in futures] == list(range(1, 11))
    disk.crash()  # only what was synced survives: close() wrote and synced every queued commit
    assert segment_bytes(disk, 1) == sum(HEADER_BYTES + len(f"r{n}") for n in range(10))
    with pytest.raises(StoreClosed):
        wal.append(COMMIT, b"late", Durability.FSYNC)
    with pytest.raises(StoreClosed):
        await wal.rotate()


async def test_close_syncs_async_commits() -> None:
    disk = SimDisk()
    wal = await open_writer(disk)
    for n in range(5):
        await wal.append(COMMIT, f"r{n}".encode(), Durability.ASYNC)
    syncs_before = wal.stats.fsyncs
    await wal.close()
    assert wal.stats.fsyncs == syncs_before + 1
    disk.crash()
    assert segment_bytes(disk, 1) == 5 * (HEADER_BYTES + 2)


async def test_the_syncer_wakes_the_writer_only_when_async_commits_wait_for_it(monkeypatch: pytest.MonkeyPatch) -> None:
    disk = SimDisk()
    disk.makedirs(WAL_DIR)
    wal = WalWriter(disk, WAL_DIR, [], 1, 1 << 20, 5)  # a 5 ms background sync interval
    await wal.start()
    loop = asyncio.get_running_loop()
    hand_offs = count_thread_wake_ups(monkeypatch)
    wake_ups = 0
    original_sleep = asyncio.sleep

    async def counting_sleep(delay: float, *args: Any) -> Any:
        nonlocal wake_ups
        if delay == 0.005:
            wake_ups += 1
        return await original_sleep(delay, *args)

    monkeypatch.setattr(asyncio, "sleep", counting_sleep)

    async def until(condition: Callable[[], bool], what: str) -> None:
        deadline = loop.time() + GATE_TIMEOUT_S
        while not condition():
            assert loop.time() < deadline, f"timed out waiting until {what}"
            await original_sleep(0.001)  # the poll interval, not a wait for state

    await until(lambda: wake_ups >= 5, "the syncer woke five times")
    assert hand_offs == [] and wal.stats.fsyncs == 0, "an idle log's syncer must not wake the writer thread"

    await wal.append(COMMIT, b"durable", Durability.FSYNC)
    settled, seen = len(hand_offs), wake_ups
    await until(lambda: wake_ups >= seen + 5, "five more wake-ups after an fsync commit")
    assert len(hand_offs) == settled, "an fsync commit leaves the syncer nothing to do"

    fsyncs = wal.stats.fsyncs
    await wal.append(COMMIT, b"later", Durability.ASYNC)
    await until(lambda: wal.stats.fsyncs == fsyncs + 1, "the syncer synced the async commit")
    disk.crash()
    assert segment_bytes(disk, 1) == 2 * HEADER_BYTES + len(b"durable") + len(b"later")
    await wal.close()


# --- order -----------------------------------------------------------------------------------


async def test_maintenance_runs_in_order_with_batches() -> None:
    disk = SimDisk()
    wal = await open_writer(disk)
    assert await wal.append(COMMIT, b"first", Durability.ASYNC) == 1
    # The second record's batch is handed over (call_soon) before the rotation task first runs,
    # so the thread must write it to the old segment before it rotates.
    second = wal.append(COMMIT, b"second", Durability.ASYNC)
    rotated = asyncio.create_task(wal.rotate())
    assert await second == 2
    await rotated
    assert await wal.append(COMMIT, b"third", Durability.ASYNC) == 3
    assert wal.segments == [1, 3], "the rotation ran out of order with the batches"
    assert segment_bytes(disk, 1) == 2 * HEADER_BYTES + len(b"first") + len(b"second")
    assert segment_bytes(disk, 3) == HEADER_BYTES + len(b"third")
    assert await wal.drop_segments_through(2) == [1]
    assert wal.segments == [3]
    await wal.close()


async def test_on_written_runs_in_lsn_order_across_batches_before_acknowledgement() -> None:
    disk = SimDisk()
    wal = await open_writer(disk, segment_bytes_max=256)  # batches cross segment boundaries
    written: list[int] = []

    def on_written(lsn: int) -> None:
        written.append(lsn)

    async def committer(c: int) -> list[int]:
        lsns = []
        for n in range(40):
            durability = Durability.FSYNC if (c + n) % 3 == 0 else Durability.ASYNC
            lsn = await wal.append(COMMIT, f"{c}-{n}".encode() * 4, durability, on_written)
            assert lsn in written, "a commit was acknowledged before its on_written ran"
            lsns.append(lsn)
        return lsns

    results = await asyncio.gather(*(committer(c) for c in range(8)))
    assert written == list(range(1, 321))
    assert all(lsns == sorted(lsns) for lsns in results)
    assert wal.stats.commits == 320
    assert wal.stats.batches < 320, "no two commits ever shared a batch: group commit is broken"
    assert wal.stats.segments_created > 1
    await wal.close()


async def test_one_wake_up_of_the_event_loop_per_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    disk = SimDisk()
    wal = await open_writer(disk)
    calls = count_thread_wake_ups(monkeypatch)
    batches_before = wal.stats.batches
    await asyncio.gather(*(wal.append(COMMIT, b"r", Durability.FSYNC) for _ in range(3)))
    await asyncio.gather(*(wal.append(COMMIT, b"r", Durability.ASYNC) for _ in range(3)))
    assert wal.stats.batches - batches_before == 2
    assert len(calls) == 2, f"expected one thread-to-loop hand-off per batch, got {len(calls)}"
    await wal.close()


# --- fail-stop -------------------------------------------------------------------------------


async def test_failed_fsync_fails_the_batch_in_flight_and_those_queued_behind_it() -> None:
    disk = GatedDisk()
    wal = await open_writer(disk)
    failed: list[int] = []
    written: list[int] = []
    disk.hold_syncs()
    in_flight = [
        wal.append(COMMIT, b"a", Durability.FSYNC, written.append, lambda _e, n=n: failed.append(n))
        for n in (1, 2)
    ]
    await wait_until_sync_reached(disk)
    queued = [
        wal.append(COMMIT, b"b", Durability.FSYNC, written.append, lambda _e, n=n: failed.append(n))
        for n in (3, 4)
    ]
    disk.fail_next_sync = True
    disk.sync_gate.set()
    for future in [*in_flight, *queued]:
        with pytest.raises(StoreFailed, match="outcome of commit"):
            await future
    assert failed == [1, 2, 3, 4]
    assert written == []
    with pytest.raises(StoreFailed):
        wal.append(COMMIT, b"c", Durability.ASYNC)
    with pytest.raises(StoreFailed):
        await wal.rotate()
    assert segment_bytes(disk, 1) == 2 * (HEADER_BYTES + 1), "a batch queued behind the failure was written"
    await wal.close()  # closing a failed log is quiet


async def test_a_batch_queued_behind_a_failed_rotation_is_never_written() -> None:
    """The thread itself is fail-stop: a batch handed to it before the event loop learned of the
    failure is refused, not written and acknowledged."""
    disk = GatedDisk()
    wal = await open_writer(disk)
    await wal.append(COMMIT, b"before", Durability.ASYNC)
    size_before = segment_bytes(disk, 1)
    disk.hold_syncs()
    rotated = asyncio.create_task(wal.rotate())
    await wait_until_sync_reached(disk)  # the rotation's sync of the old segment
    behind = wal.append(COMMIT, b"behind", Durability.ASYNC)
    # The batch's hand-off is already scheduled on the loop, so it reaches the thread before the
    # rotation's outcome reaches the loop.
    disk.fail_next_sync = True
    disk.sync_gate.set()
    with pytest.raises(OSError, match="injected fsync failure"):
        await rotated
    with pytest.raises(StoreFailed):
        await behind
    assert segment_bytes(disk, 1) == size_before, "the batch behind the failure was written"
    assert wal.segments == [1]
    await wal.close()
