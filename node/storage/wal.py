"""The write-ahead log writer: one writer thread, segment files, group commit.

Commits are queued on the event loop and given consecutive LSNs; once per loop iteration
whatever has queued goes to the writer thread as ONE write(2) and, if any commit in the batch
asked for `fsync` durability, ONE fdatasync. Commits that arrive while a batch is on disk form the next batch, so
concurrent committers share fsyncs (group commit, as in PostgreSQL's commit_delay-free group
flush and RocksDB's write groups). The fsync never runs on the event loop.

The hand-off is as thin as the GIL allows: the loop joins the batch's frames into one bytes
object and puts one job on a `queue.SimpleQueue`; the writer thread, WalWriter's own, writes (and
syncs) it and answers with ONE `call_soon_threadsafe`. Every other step (stats, callbacks,
futures) runs on the loop, because whatever the thread does holding the GIL competes with it.
Log maintenance (open, rotate, drop segments, background sync, close) runs as jobs on the same
queue, so it is ordered with the batches.

Ordering rules (as etcd/raft states them for its Ready batch):
- A batch's `on_written` callbacks run in LSN order, on the event loop, after the batch is written
  (and synced if any commit in it asked for fsync) and before any commit of it is acknowledged.
- Before a new segment receives records, the previous one is fdatasync'ed and the new file's
  directory entry is made durable, so the durable log is always a prefix of the written one.
- After a write or fsync error the log is failed: the commits in flight are reported with
  `StoreFailed` (outcome unknown) and no further write is accepted, because after a failed fsync
  the page cache can no longer be trusted (PostgreSQL's "fsyncgate", 2018). The writer thread
  enforces this itself: once any of its file operations failed it writes and syncs nothing more,
  whatever is already queued behind the failure.
"""

import asyncio
import contextlib
import functools
import queue
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

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


# A job for the writer thread; None tells it to stop.
_Job = Callable[[], None]


def _serve(jobs: "queue.SimpleQueue[_Job | None]") -> None:
    """The writer thread: run jobs in the order they were queued until told to stop."""
    while (job := jobs.get()) is not None:
        job()
        # Hold nothing of the writer while idle, so an abandoned writer can be collected (its
        # finalizer then stops this thread).
        del job


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
        self._pending_sync = False  # a commit in `_pending` asked for fsync
        self._in_flight = False  # a batch is with the writer thread
        self._kick_scheduled = False
        # A batch without fsync went to the writer since the last sync: only then has the syncer
        # anything to do, so an idle or fsync-only log never wakes the writer thread for it.
        self._async_handed = False
        self._drained = asyncio.Event()
        self._loop = asyncio.get_event_loop()
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=_serve, args=(self._jobs,), name="titra-wal", daemon=True)
        # Calling it (close, or collection of an abandoned writer) tells the thread to stop, once.
        self._stop_thread = weakref.finalize(self, self._jobs.put, None)
        self._failed: BaseException | None = None  # event-loop side
        self._closed = False
        self.stats = WalStats()
        self.bytes_since_checkpoint = 0
        self._syncer: asyncio.Task[None] | None = None
        # Writer-thread state: only the writer thread touches these after start().
        self._file: FileHandle | None = None
        self._active_bytes = 0
        self._unsynced = False
        self._written_through = next_lsn - 1  # last LSN handed to write(2)
        self._writer_error: BaseException | None = None  # the first failure of a file operation

    @property
    def next_lsn(self) -> int:
        return self._next_lsn

    @property
    def segments(self) -> list[int]:
        return list(self._segments)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread.start()
        try:
            await self._in_writer(self._open_active)
        except BaseException as exc:
            self._stop_thread()
            if not isinstance(exc, asyncio.CancelledError):
                self._thread.join()  # the failed open was its last job: a short wait
            raise
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
        self._pending.append(_Pending(lsn, frame, future, on_written, on_failed))
        if durability is Durability.FSYNC:
            self._pending_sync = True
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
        """Run log maintenance. An I/O error in it fails the log like one in a commit would
        (rotation fsyncs the old segment: after a failed fsync nothing written can be trusted);
        `_job_done` sees to that."""
        if self._failed is not None:
            raise StoreFailed(f"the write-ahead log failed earlier: {self._failed}")
        return await self._in_writer(fn, *args)

    async def close(self) -> None:
        """Write and sync what is queued, close the segment file, end the writer thread."""
        if self._closed:
            return
        self._closed = True
        try:
            while self._in_flight or self._pending:
                self._drained.clear()
                if not self._in_flight:
                    self._kick()
                await self._drained.wait()
            if self._syncer is not None:
                self._syncer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._syncer
            # A failure is reported once, to the commits in flight; closing a failed log is quiet
            # (the writer thread refuses the sync if a failure has not reached the loop yet).
            if self._failed is None:
                with contextlib.suppress(StoreFailed):
                    if await self._in_writer(self._sync_if_unsynced):
                        self.stats.fsyncs += 1
        finally:
            await self._shut_down()

    # --- event-loop side ---------------------------------------------------------------------

    async def _in_writer(self, fn: Callable[..., T], *args: object) -> T:
        """Run `fn(*args)` on the writer thread after every job queued before it."""
        if not self._stop_thread.alive:
            raise StoreClosed("the write-ahead log is closed")
        future: asyncio.Future[T] = self._loop.create_future()
        self._jobs.put(functools.partial(self._run_job, future, fn, args))
        return await future

    def _job_done(self, future: "asyncio.Future[Any]", result: object, exc: BaseException | None) -> None:
        if isinstance(exc, OSError):
            # Whoever awaited it (maybe no one: a cancelled background sync), the log has failed.
            self._fail(exc, [])
        if future.done():  # the awaiting task was cancelled
            return
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(result)

    async def _shut_down(self) -> None:
        """Close the segment file on the writer thread, then end the thread."""
        if not self._stop_thread.alive or not self._thread.is_alive():
            # Never started, or a failed start() already stopped it: no job would ever run.
            self._stop_thread()
            return
        closed: asyncio.Future[None] = self._loop.create_future()
        self._jobs.put(functools.partial(self._run_job, closed, self._close_file, ()))
        self._stop_thread()
        try:
            await closed
        finally:
            if not closed.cancelled():
                # The thread has nothing left to do but to see the stop: this join is short.
                self._thread.join()

    def _kick(self) -> None:
        """Hand everything queued to the writer thread as one batch, unless one is on disk."""
        self._kick_scheduled = False
        if self._in_flight or not self._pending or self._failed is not None:
            return
        batch, self._pending = self._pending, []
        sync, self._pending_sync = self._pending_sync, False
        if not sync:
            self._async_handed = True
        data = b"".join([p.frame for p in batch])
        self._in_flight = True
        self._jobs.put(functools.partial(self._write_batch, batch, data, sync))

    def _batch_done(self, batch: list[_Pending], size: int, sync: bool, exc: BaseException | None) -> None:
        self._in_flight = False
        if exc is not None:
            self._fail(exc, batch)
        else:
            stats = self.stats
            stats.commits += len(batch)
            stats.batches += 1
            stats.bytes_written += size
            if sync:
                stats.fsyncs += 1
                # Batches go one at a time, so this fsync covered every batch before it.
                self._async_handed = False
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
            if not self._async_handed:
                continue
            self._async_handed = False  # a batch handed from here on sets it again
            try:
                if await self._in_writer(self._sync_if_unsynced):
                    self.stats.fsyncs += 1
            except (OSError, StoreFailed):
                return  # the log has failed (`_job_done`)

    def _fail(self, exc: BaseException, batch: list[_Pending]) -> None:
        if self._failed is None:
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
    # Everything here holds the GIL except the file calls: keep it short.

    def _write_batch(self, batch: list[_Pending], data: bytes, sync: bool) -> None:
        exc: BaseException | None = None
        try:
            self._write(data, batch[0].lsn, batch[-1].lsn, sync)
        except BaseException as error:
            exc = error
            if self._writer_error is None:
                self._writer_error = error
        self._reply(self._batch_done, batch, len(data), sync, exc)

    def _run_job(self, future: "asyncio.Future[Any]", fn: Callable[..., object], args: tuple[object, ...]) -> None:
        try:
            result = fn(*args)
        except BaseException as exc:
            if isinstance(exc, OSError) and self._writer_error is None:
                self._writer_error = exc
            self._reply(self._job_done, future, None, exc)
        else:
            self._reply(self._job_done, future, result, None)

    def _reply(self, callback: Callable[..., None], *args: object) -> None:
        """The thread's one wake-up of the event loop per job."""
        try:
            self._loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:
            # The event loop is closed: no one is left to wait for the result.
            return

    def _check_not_failed(self) -> None:
        if self._writer_error is not None:
            raise StoreFailed(f"the write-ahead log failed earlier and refuses writes: {self._writer_error}")

    def _open_active(self) -> None:
        if not self._segments:
            self._segments.append(self._next_lsn)
        path = join(self._dir, segment_name(self._segments[-1]))
        self._file = self._disk.open_append(path)
        self._active_bytes = self._disk.size(path)
        self._disk.sync_dir(self._dir)

    def _write(self, data: bytes, first_lsn: int, last_lsn: int, sync: bool) -> None:
        self._check_not_failed()
        assert self._file is not None
        assert first_lsn == self._written_through + 1, "WAL records must be written in LSN order"
        if self._active_bytes > 0 and self._active_bytes + len(data) > self._segment_bytes:
            self._start_segment(first_lsn)
        self._file.write(data)
        self._written_through = last_lsn
        self._active_bytes += len(data)
        if sync:
            self._file.sync()
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
        self._check_not_failed()
        if self._active_bytes > 0:
            self._start_segment(self._written_through + 1)

    def _sync_if_unsynced(self) -> bool:
        """Whether it synced (the loop side counts the fsync)."""
        self._check_not_failed()
        if self._unsynced and self._file is not None:
            self._file.sync()
            self._unsynced = False
            return True
        return False

    def _drop_segments_through(self, lsn: int) -> list[int]:
        self._check_not_failed()
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
