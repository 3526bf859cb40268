"""The WAL store: one node's durable, transactional, ordered key-value store.

The edge that ties the pure parts together: recovery at open, the WAL writer (group commit),
the committed state (memtable), the lock manager driven with futures, and checkpoints taken in
the background. See docs/storage.md for the design and the visibility rule:

    A committed write becomes visible to other transactions only after its commit record is
    written to the log, and under `fsync` durability only after it is durable. Writes are applied
    to the shared state by the log writer in LSN order and the writer's locks are released after
    that, so a reader never sees a write that a crash could take back, except one committed with
    `async` durability, which is the trade that setting makes. Because the log is written in
    order, a later commit that read such a write is durable only if the write is too.
"""

import asyncio
import gc
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field

import msgpack

from cluster.frozen import frozen
from cluster.limits import STORE_DEFAULTS, STORE_LIMITS, StoreLimits
from cluster.store import (
    DEFAULT_CONTENT_TYPE,
    DeadlockDetected,
    Durability,
    Isolation,
    LimitExceeded,
    LockTimeout,
    Record,
    ScanPage,
    Store,
    StoreClosed,
    StoreFailed,
    check_key,
    check_record,
)
from node.storage.checkpoint import LoadedCheckpoint, remove_old_checkpoints, write_checkpoint
from node.storage.disk import Disk, OsDisk, join
from node.storage.framing import RecordType
from node.storage.locks import KeyLock, LockManager, LockMode, LockRequest, Resource
from node.storage.memtable import Memtable
from node.storage.ops import Delete, Put, WriteOp, encode_commit
from node.storage.recovery import CHECKPOINT_DIR, WAL_DIR, RecoveryReport, recover
from node.storage.transaction import WalTransaction
from node.storage.wal import WalWriter

log = logging.getLogger("titra.storage")


@frozen
class StoreConfig:
    """Settings of one store; defaults live in cluster.limits (documented in docs/limits.md)."""

    wal_segment_bytes: int = STORE_DEFAULTS.wal_segment_bytes
    async_flush_interval_ms: int = STORE_DEFAULTS.async_flush_interval_ms
    lock_timeout_ms: int = STORE_DEFAULTS.lock_timeout_ms
    checkpoint_wal_bytes: int = STORE_DEFAULTS.checkpoint_wal_bytes
    checkpoint_interval_s: float = STORE_DEFAULTS.checkpoint_interval_s
    checkpoint_chunk_records: int = STORE_DEFAULTS.checkpoint_chunk_records
    # Start-up only: truncate the WAL at damage in the middle of the log instead of refusing to start.
    repair_wal: bool = False
    limits: StoreLimits = STORE_LIMITS


@dataclass
class StoreStats:
    open_seconds: float = 0.0
    checkpoints: int = 0
    checkpoint_failures: int = 0
    last_checkpoint_lsn: int = 0
    deadlocks: int = 0
    lock_timeouts: int = 0
    recovery: RecoveryReport = field(default_factory=RecoveryReport)


class WalStore:
    """Implements cluster.store.Store. Open with `await WalStore.open(path)`."""

    def __init__(self, disk: Disk, path: str, config: StoreConfig, memtable: Memtable, wal: WalWriter) -> None:
        self.disk = disk
        self.path = path
        self.config = config
        self.limits = config.limits
        self.memtable = memtable
        self.wal = wal
        self.locks = LockManager()
        # Uncommitted writes by key, visible to READ UNCOMMITTED readers only: key -> (txn, op).
        self.dirty: dict[bytes, tuple[int, WriteOp]] = {}
        self._lock_waiters: dict[int, asyncio.Future[None]] = {}
        self._next_txn_id = 1
        self._closed = False
        self._checkpoint_lock = asyncio.Lock()
        self._checkpointer: asyncio.Task[None] | None = None
        self.stats = StoreStats()
        # Commit records are encoded on the event loop only, so one reusable packer serves them all
        # (its buffer may keep the size of the largest commit: at most transaction_bytes_max).
        self.commit_packer = msgpack.Packer(use_bin_type=True)
        # Whether the limits let any single valid write fit in a transaction (they do by default,
        # asserted in cluster.limits): then an autocommit write needs no transaction size check.
        self._any_write_fits = (
            self.limits.key_bytes_max
            + self.limits.value_bytes_max
            + self.limits.content_type_bytes_max
            + self.limits.meta_bytes_max
            <= self.limits.transaction_bytes_max
        )

    @classmethod
    async def open(cls, path: str, config: StoreConfig | None = None, disk: Disk | None = None) -> "WalStore":
        config = config or StoreConfig()
        disk = disk or OsDisk()
        memtable = Memtable()
        started = time.perf_counter()

        def load(checkpoint: LoadedCheckpoint) -> None:
            memtable.load(checkpoint.lsn, checkpoint.items)

        # Recovery allocates millions of long-lived objects and frees none: the cyclic garbage
        # collector would only rescan them again and again (a third of the restart time).
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            report = await asyncio.to_thread(recover, disk, path, config.repair_wal, load, memtable.apply)
        finally:
            if gc_was_enabled:
                gc.enable()
        if report.torn_tail is not None:
            log.warning("WAL torn tail truncated: %s", report.torn_tail)
        if report.repair is not None:
            log.warning("WAL repaired: %s", report.repair)
        wal = WalWriter(
            disk,
            join(path, WAL_DIR),
            report.segments,
            memtable.last_lsn + 1,
            config.wal_segment_bytes,
            config.async_flush_interval_ms,
        )
        await wal.start()
        store = cls(disk, path, config, memtable, wal)
        store.stats.recovery = report
        store.stats.last_checkpoint_lsn = report.checkpoint_lsn
        store.stats.open_seconds = time.perf_counter() - started
        store._checkpointer = asyncio.create_task(store._checkpoint_loop(), name="titra-checkpointer")
        return store

    # --- the Store protocol ------------------------------------------------------------------

    async def get(self, key: bytes) -> Record | None:
        # A READ COMMITTED read of one key is a memtable lookup: the memtable holds exactly the
        # committed state (uncommitted writes never enter it, see "Visibility" in docs/storage.md)
        # and READ COMMITTED takes no read locks, so no transaction, context manager or lock.
        self._check_open()
        check_key(key, self.limits)
        return self.memtable.get(key)

    # put and delete are autocommit transactions of one write, the replication layer's hot path.
    # They skip WalTransaction (no write buffer, undo log or savepoints to keep) but lock as it
    # does: the key's exclusive lock is taken before the record is logged and released only after
    # the record is applied to the memtable, so a transaction holding a shared key or range lock
    # on the key blocks the write and vice versa. The lock is usually free, and then
    # LockManager.try_lock_key_exclusive grants it with a dict lookup; otherwise the write queues
    # through the general path (FIFO, deadlock detection, lock timeout).

    async def put(
        self,
        key: bytes,
        value: bytes,
        content_type: str = DEFAULT_CONTENT_TYPE,
        meta: bytes = b"",
        durability: Durability = Durability.FSYNC,
    ) -> int:
        self._check_open()
        check_key(key, self.limits)
        check_record(value, content_type, meta, self.limits)
        op, durability = Put(key, value, content_type, meta), _as_durability(durability)
        # _lock_for_write's usual case inline: a free key's lock without another coroutine.
        if self._any_write_fits:
            txn = self._new_txn_id()
            if not self.locks.try_lock_key_exclusive(txn, key):
                await self._wait_for_key_lock(txn, key)
        else:
            txn = await self._lock_for_write(op)
        return await self._log_and_apply(txn, op, durability)

    async def delete(self, key: bytes, durability: Durability = Durability.FSYNC) -> bool:
        self._check_open()
        check_key(key, self.limits)
        op, durability = Delete(key), _as_durability(durability)
        txn = await self._lock_for_write(op)
        # Under the key's exclusive lock the memtable holds its latest committed value: every
        # other writer of the key released the lock only after applying its record.
        if self.memtable.get(key) is None:
            self.release_locks(txn)  # nothing to delete: no log record
            return False
        await self._log_and_apply(txn, op, durability)
        return True

    async def _lock_for_write(self, op: WriteOp) -> int:
        """A new autocommit transaction holding `op.key`'s exclusive lock; returns its id."""
        if not self._any_write_fits and op.size_bytes > self.limits.transaction_bytes_max:
            raise LimitExceeded("transaction", op.size_bytes, self.limits.transaction_bytes_max)
        txn = self._new_txn_id()
        if not self.locks.try_lock_key_exclusive(txn, op.key):
            await self._wait_for_key_lock(txn, op.key)
        return txn

    async def _wait_for_key_lock(self, txn: int, key: bytes) -> None:
        try:
            await self.acquire_lock(txn, KeyLock(key), LockMode.EXCLUSIVE)
        except BaseException:
            # A timeout or deadlock left nothing behind, but a cancelled wait leaves the request
            # queued (or just granted): drop it, as WalTransaction's rollback does.
            self.release_locks(txn)
            raise

    def _log_and_apply(self, txn: int, op: WriteOp, durability: Durability) -> "asyncio.Future[int]":
        """Log the one write of autocommit transaction `txn`, which holds `op.key`'s exclusive lock.

        The lock is released in the log writer's callbacks, after the record is applied to the
        memtable (or the log failed), never by the awaiting task: as for WalTransaction.commit, a
        cancelled caller does not cancel the commit, and no one can slip between log and state."""
        ops = [op]
        key = op.key
        # Until it is applied the write is uncommitted: READ UNCOMMITTED readers see it, as they
        # see WalTransaction's. Only the holder of the key's exclusive lock sets or clears the
        # key's dirty entry, so while we hold it the entry is ours.
        self.dirty[key] = (txn, op)

        def end() -> None:
            del self.dirty[key]
            self.release_locks(txn)

        def written(lsn: int) -> None:
            self.memtable.apply(lsn, ops)
            end()

        def failed(_exc: BaseException) -> None:
            end()

        try:
            payload = encode_commit(ops, self.commit_packer)
            return self.wal.append(RecordType.COMMIT, payload, durability, written, failed)
        except BaseException:
            # The log refused the record (failed or closed): nothing was written.
            end()
            raise

    async def scan(self, prefix: bytes = b"", after: bytes | None = None, limit: int | None = None) -> ScanPage:
        async with self.transaction(Isolation.READ_COMMITTED) as tx:
            return await tx.scan(prefix, after, limit)

    def begin(
        self, isolation: Isolation = Isolation.SERIALIZABLE, durability: Durability = Durability.FSYNC
    ) -> WalTransaction:
        self._check_open()
        return WalTransaction(self, self._new_txn_id(), Isolation(isolation), Durability(durability))

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosed("the store is closed")

    def _new_txn_id(self) -> int:
        """Ids increase with age: the lock manager picks the youngest (highest) as deadlock victim."""
        txn_id = self._next_txn_id
        self._next_txn_id += 1
        return txn_id

    @asynccontextmanager
    async def transaction(
        self, isolation: Isolation = Isolation.SERIALIZABLE, durability: Durability = Durability.FSYNC
    ) -> AsyncIterator[WalTransaction]:
        tx = self.begin(isolation, durability)
        try:
            yield tx
        except BaseException:
            await tx.rollback()
            raise
        if not tx.closed:
            await tx.commit()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._checkpointer is not None:
            self._checkpointer.cancel()
            with suppress(asyncio.CancelledError):
                await self._checkpointer
        async with self._checkpoint_lock:
            await self.wal.close()

    # --- locks: the driver of the pure lock manager --------------------------------------------

    async def acquire_lock(self, txn: int, resource: Resource, mode: LockMode) -> None:
        outcome = self.locks.request(txn, resource, mode)
        own_victim = False
        for victim in outcome.victims:
            self.stats.deadlocks += 1
            if victim.request_id == outcome.request_id:
                own_victim = True
                continue
            waiter = self._lock_waiters.pop(victim.request_id, None)
            if waiter is not None and not waiter.done():
                waiter.set_exception(_deadlock_error(victim))
        if own_victim:
            raise _deadlock_error(LockRequest(outcome.request_id, txn, resource, mode))
        if outcome.granted:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._lock_waiters[outcome.request_id] = waiter
        try:
            await asyncio.wait_for(asyncio.shield(waiter), self.config.lock_timeout_ms / 1000)
        except TimeoutError:
            self._wake(self.locks.cancel(outcome.request_id))
            self.stats.lock_timeouts += 1
            raise LockTimeout(
                f"transaction {txn} waited over {self.config.lock_timeout_ms} ms for a "
                f"{mode.name.lower()} lock on {_describe(resource)}"
            ) from None
        finally:
            # Granted, failed, timed out or cancelled: no one will resolve this waiter any more (a
            # cancelled caller's request is dropped by its release_locks).
            self._lock_waiters.pop(outcome.request_id, None)

    def release_locks(self, txn: int) -> None:
        self._wake(self.locks.release_all(txn))

    def _wake(self, granted: list[LockRequest]) -> None:
        for req in granted:
            waiter = self._lock_waiters.pop(req.request_id, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    # --- checkpoints -----------------------------------------------------------------------------

    async def checkpoint(self) -> int:
        """Snapshot the state at the last applied LSN; drop the WAL and checkpoints it covers."""
        async with self._checkpoint_lock:
            lsn, items = self.memtable.snapshot()
            if lsn == self.stats.last_checkpoint_lsn:
                return lsn
            await self.wal.rotate()
            ckpt_dir = join(self.path, CHECKPOINT_DIR)
            self.wal.bytes_since_checkpoint = 0
            chunk = self.config.checkpoint_chunk_records
            await asyncio.to_thread(write_checkpoint, self.disk, ckpt_dir, lsn, items, chunk)
            await asyncio.to_thread(remove_old_checkpoints, self.disk, ckpt_dir, lsn)
            await self.wal.drop_segments_through(lsn)
            self.stats.checkpoints += 1
            self.stats.last_checkpoint_lsn = lsn
            return lsn

    async def _checkpoint_loop(self) -> None:
        loop = asyncio.get_running_loop()
        last = loop.time()
        poll_s = min(1.0, self.config.checkpoint_interval_s)
        while True:
            await asyncio.sleep(poll_s)
            due_by_size = self.wal.bytes_since_checkpoint >= self.config.checkpoint_wal_bytes
            due_by_time = loop.time() - last >= self.config.checkpoint_interval_s
            if not (due_by_size or due_by_time):
                continue
            try:
                await self.checkpoint()
            except StoreFailed:
                log.error("the write-ahead log has failed; no more checkpoints until the store is reopened")
                return
            except OSError:
                # Writing the checkpoint file failed, the log did not: it still holds everything,
                # so a failed checkpoint only delays log truncation.
                self.stats.checkpoint_failures += 1
                log.exception("checkpoint failed; will retry")
            last = loop.time()


def _as_durability(durability: Durability | str) -> Durability:
    """Accept the enum's string value as begin() does, without the enum call's cost when it is the
    enum already. Never pass a string on: the log compares with `is Durability.FSYNC`."""
    return durability if isinstance(durability, Durability) else Durability(durability)


def _describe(resource: Resource) -> str:
    if isinstance(resource, KeyLock):
        return f"key {resource.key!r}"
    return f"range [{resource.lo!r}, {resource.hi!r})"


def _deadlock_error(victim: LockRequest) -> DeadlockDetected:
    return DeadlockDetected(
        f"transaction {victim.txn} aborted to break a deadlock (the youngest in a wait-for cycle) while "
        f"waiting for a {victim.mode.name.lower()} lock on {_describe(victim.resource)}; retry it"
    )


def _conforms(store: WalStore) -> Store:
    """Checked by mypy: WalStore implements the Store protocol."""
    return store
