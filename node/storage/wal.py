"""The write-ahead log writer: one writer thread, segment files, group commit.

Commits are queued on the event loop and given consecutive LSNs; once per loop iteration
whatever has queued goes to the writer thread as ONE write(2) and, if any commit in the batch
asked for `fsync` durability, ONE fdatasync. Commits that arrive while a batch is on disk form the next batch, so
concurrent committers share fsyncs (group commit, as in PostgreSQL's commit_delay-free group
flush and RocksDB's write groups). The fsync never runs on the event loop.

Ordering rules (as etcd/raft states them for its Ready batch):
- A batch's `on_written` callbacks run in LSN order, on the event loop, after the batch is written
  (and synced if any commit in it asked for fsync) and before any commit of it is acknowledged.
- Before a new segment receives records, the previous one is fdatasync'ed and the new file's
  directory entry is made durable, so the durable log is always a prefix of the written one.
- After a write or fsync error the log is failed: the commits in flight are reported with
  `StoreFailed` (outcome unknown) and no further write is accepted, because after a failed fsync
  the page cache can no longer be trusted (PostgreSQL's "fsyncgate", 2018).
"""

import asyncio
import concurrent.futures
import contextlib
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from cluster.store import Durability, StoreClosed, StoreFailed
from node.storage.disk import Disk, FileHandle, join
from node.storage.framing import encode_frame

T = TypeVar("T")

SEGMENT_SUFFIX = ".wal"


def segment_name(first_lsn: int) -> str:
    return f"{first_lsn:016x}{SEGMENT_SUFFIX}"


def parse_segment_name(name: str) -> int | None:
    if not name.endswith(SEGMENT_SUFFIX) or len(name) != 16 + len(SEGMENT_SUFFIX):
        return None
    try:
        return int(name[:16], 16)
    except ValueError:
        return None


@dataclass(slots=True)
class _Pending:
    lsn: int
    frame: bytes
    durability: Durability
    future: "asyncio.Future[int]"
    on_written: Callable[[int], None] | None
    on_failed: Callable[[BaseException], None] | None


@dataclass
class WalStats:
    commits: int = 0
    batches: int = 0
    fsyncs: int = 0
    bytes_written: int = 0
    segments_created: int = 0


class WalWriter:
    def __init__(
        self,
        disk: Disk,
        wal_dir: str,
        segments: list[int],
        next_lsn: int,
        segment_bytes: int,
        async_flush_interval_ms: int,
    ) -> None:
        """`segments`: first LSNs of the existing segment files, ascending; the last is active."""
        self._disk = disk
        self._dir = wal_dir
        self._segments = list(segments)
        self._next_lsn = next_lsn
        self._segment_bytes = segment_bytes
        self._flush_interval_s = async_flush_interval_ms / 1000
        self._pending: list[_Pending] = []
        self._in_flight = False  # a batch is with the writer thread
        self._kick_scheduled = False
        self._drained = asyncio.Event()
        self._loop = asyncio.get_event_loop()
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="titra-wal")
        self._file: FileHandle | None = None
        self._active_bytes = 0
        self._unsynced = False
        self._written_through = next_lsn - 1  # writer thread: last LSN handed to write(2)
        self._failed: BaseException | None = None
        self._closed = False
        self.stats = WalStats()
        self.bytes_since_checkpoint = 0
        self._syncer: asyncio.Task[None] | None = None

    @property
    def next_lsn(self) -> int:
        return self._next_lsn

    @property
    def segments(self) -> list[int]:
        return list(self._segments)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self._loop.run_in_executor(self._executor, self._open_active)
        self._syncer = asyncio.create_task(self._sync_loop(), name="titra-wal-syncer")

    def append(
        self,
        rtype: int,
        payload: bytes,
        durability: Durability,
        on_written: Callable[[int], None] | None = None,
        on_failed: Callable[[BaseException], None] | None = None,
    ) -> "asyncio.Future[int]":
        """Queue one record; the future resolves to its LSN once it is as durable as asked.

        `on_written(lsn)` runs on the event loop in LSN order once the record is written (and
        synced if asked), even if the awaiting task was cancelled; `on_failed(exc)` runs instead
        when the log fails before that."""
        if self._failed is not None:
            raise StoreFailed(f"the write-ahead log failed earlier and refuses writes: {self._failed}")
        if self._closed:
            raise StoreClosed("the store is closed")
        lsn = self._next_lsn
        self._next_lsn += 1
        future: asyncio.Future[int] = self._loop.create_future()
        frame = encode_frame(lsn, rtype, payload)
        self._pending.append(_Pending(lsn, frame, durability, future, on_written, on_failed))
        if not self._kick_scheduled and not self._in_flight:
            # One hand-off per loop iteration: every commit queued in this iteration joins it.
            self._kick_scheduled = True
            self._loop.call_soon(self._kick)
        return future

    async def rotate(self) -> None:
        """Start a new segment at the next LSN written (used before a checkpoint)."""
        await self._guarded(self._rotate)

    async def drop_segments_through(self, lsn: int) -> list[int]:
        """Remove every non-active segment whose records all have LSN <= `lsn`."""
        return await self._guarded(self._drop_segments_through, lsn)

    async def _guarded(self, fn: Callable[..., T], *args: object) -> T:
        """Run log maintenance; an I/O error in it fails the log like one in a commit would
        (rotation fsyncs the old segment: after a failed fsync nothing written can be trusted)."""
        if self._failed is not None:
            raise StoreFailed(f"the write-ahead log failed earlier: {self._failed}")
        try:
            return await self._in_writer(fn, *args)
        except OSError as exc:
            self._fail(exc, [])
            raise

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        while self._in_flight or self._pending:
            self._drained.clear()
            if not self._in_flight:
                self._kick()
            await self._drained.wait()
        if self._syncer is not None:
            self._syncer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._syncer
        if self._failed is None:
            await self._in_writer(self._sync_if_unsynced)
        await self._in_writer(self._close_file)
        self._executor.shutdown(wait=True)

    # --- event-loop side ---------------------------------------------------------------------

    async def _in_writer(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _kick(self) -> None:
        """Hand everything queued to the writer thread as one batch, unless one is on disk."""
        self._kick_scheduled = False
        if self._in_flight or not self._pending or self._failed is not None:
            return
        batch, self._pending = self._pending, []
        data = b"".join(p.frame for p in batch)
        sync = any(p.durability is Durability.FSYNC for p in batch)
        self._in_flight = True
        done = self._loop.run_in_executor(self._executor, self._write, data, batch[0].lsn, batch[-1].lsn, sync)
        done.add_done_callback(functools.partial(self._batch_done, batch, len(data)))

    def _batch_done(self, batch: list[_Pending], size: int, done: "asyncio.Future[None]") -> None:
        self._in_flight = False
        exc = done.exception()
        if exc is not None:
            self._fail(exc, batch)
        else:
            self.stats.commits += len(batch)
            self.stats.batches += 1
            self.bytes_since_checkpoint += size
            for p in batch:
                if p.on_written is not None:
                    p.on_written(p.lsn)
                if not p.future.done():
                    p.future.set_result(p.lsn)
            # Commits that queued while this batch was on disk form the next one (group commit).
            self._kick()
        if not self._in_flight:
            self._drained.set()

    async def _sync_loop(self) -> None:
        """Bound the loss window of `async` commits by syncing at least every interval."""
        while not self._closed and self._failed is None:
            await asyncio.sleep(self._flush_interval_s)
            try:
                await self._in_writer(self._sync_if_unsynced)
            except OSError as exc:
                self._fail(exc, [])
                return

    def _fail(self, exc: BaseException, batch: list[_Pending]) -> None:
        self._failed = exc
        pending, self._pending = [*batch, *self._pending], []
        for p in pending:
            if p.on_failed is not None:
                p.on_failed(exc)
            if not p.future.done():
                p.future.set_exception(
                    StoreFailed(f"write-ahead log I/O error; the outcome of commit {p.lsn} is unknown: {exc}")
                )

    # --- writer-thread side --------------------------------------------------------------------

    def _open_active(self) -> None:
        if not self._segments:
            self._segments.append(self._next_lsn)
        path = join(self._dir, segment_name(self._segments[-1]))
        self._file = self._disk.open_append(path)
        self._active_bytes = self._disk.size(path)
        self._disk.sync_dir(self._dir)

    def _write(self, data: bytes, first_lsn: int, last_lsn: int, sync: bool) -> None:
        assert self._file is not None
        assert first_lsn == self._written_through + 1, "WAL records must be written in LSN order"
        if self._active_bytes > 0 and self._active_bytes + len(data) > self._segment_bytes:
            self._start_segment(first_lsn)
        self._file.write(data)
        self._written_through = last_lsn
        self._active_bytes += len(data)
        self.stats.bytes_written += len(data)
        if sync:
            self._file.sync()
            self.stats.fsyncs += 1
            self._unsynced = False
        else:
            self._unsynced = True

    def _start_segment(self, first_lsn: int) -> None:
        assert self._file is not None
        self._file.sync()  # the durable log must stay a prefix: old segment first
        self._file.close()
        self._unsynced = False
        self._segments.append(first_lsn)
        self._file = self._disk.open_append(join(self._dir, segment_name(first_lsn)))
        self._disk.sync_dir(self._dir)
        self._active_bytes = 0
        self.stats.segments_created += 1

    def _rotate(self) -> None:
        if self._active_bytes > 0:
            self._start_segment(self._written_through + 1)

    def _sync_if_unsynced(self) -> None:
        if self._unsynced and self._file is not None:
            self._file.sync()
            self.stats.fsyncs += 1
            self._unsynced = False

    def _drop_segments_through(self, lsn: int) -> list[int]:
        dropped = []
        while len(self._segments) > 1 and self._segments[1] <= lsn + 1:
            first = self._segments.pop(0)
            self._disk.remove(join(self._dir, segment_name(first)))
            dropped.append(first)
        if dropped:
            self._disk.sync_dir(self._dir)
        return dropped

    def _close_file(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
