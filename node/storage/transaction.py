"""A local transaction of the WAL store: buffered writes, locks by isolation level, savepoints.

Locking by level (Berenson et al., "A Critique of ANSI SQL Isolation Levels", 1995, Table 2):

| level            | reads                                   | writes                  |
|------------------|-----------------------------------------|-------------------------|
| READ UNCOMMITTED | no locks; sees other transactions'      | long exclusive key lock |
|                  | uncommitted writes (the dirty table)    |                         |
| READ COMMITTED   | no locks; the committed state only      | long exclusive key lock |
| REPEATABLE READ  | long shared key locks (scans lock the   | long exclusive key lock |
|                  | keys they return, not the gaps)         |                         |
| SERIALIZABLE     | long shared key locks; scans take a     | long exclusive key lock |
|                  | shared range lock (no phantoms)         |                         |

READ COMMITTED needs no read locks here because uncommitted writes never enter the committed
state (the memtable); it reads the last committed value instead of waiting for a writer, as
PostgreSQL's READ COMMITTED does. All writes of a transaction leave as ONE commit record.
"""

import heapq
from collections.abc import Iterator
from itertools import islice
from typing import TYPE_CHECKING

from cluster.store import (
    DEFAULT_CONTENT_TYPE,
    DeadlockDetected,
    Durability,
    Isolation,
    LimitExceeded,
    LockTimeout,
    Record,
    SavepointNotFound,
    ScanPage,
    TransactionAborted,
    TransactionClosed,
    check_key,
    check_record,
    page_limit,
    prefix_end,
)
from node.storage.framing import RecordType
from node.storage.locks import KeyLock, LockMode, RangeLock, Resource
from node.storage.ops import Delete, Put, WriteOp, encode_commit

if TYPE_CHECKING:
    from node.storage.store import WalStore

_OPEN, _COMMITTING, _DONE = "open", "committing", "done"


class WalTransaction:
    def __init__(self, store: "WalStore", txn_id: int, isolation: Isolation, durability: Durability) -> None:
        self._store = store
        self.txn_id = txn_id
        self.isolation = isolation
        self._durability = durability
        self._writes: dict[bytes, WriteOp] = {}
        self._write_bytes = 0
        self._undo: list[tuple[bytes, WriteOp | None]] = []
        self._savepoints: dict[str, int] = {}
        self._state = _OPEN
        self._abort_reason: TransactionAborted | None = None

    # --- reads ---------------------------------------------------------------------------------

    async def get(self, key: bytes) -> Record | None:
        self._check_open()
        check_key(key, self._store.limits)
        own = self._writes.get(key)
        if own is not None:
            return _as_record(own)
        if self.isolation is Isolation.READ_UNCOMMITTED:
            dirty = self._store.dirty.get(key)
            if dirty is not None:
                return _as_record(dirty[1])
        elif self.isolation in (Isolation.REPEATABLE_READ, Isolation.SERIALIZABLE):
            await self._lock(KeyLock(key), LockMode.SHARED)
        return self._store.memtable.get(key)

    async def scan(self, prefix: bytes = b"", after: bytes | None = None, limit: int | None = None) -> ScanPage:
        self._check_open()
        count = page_limit(limit, self._store.limits)
        hi = prefix_end(prefix)
        if self.isolation is Isolation.SERIALIZABLE:
            # Lock the whole range being read: no other transaction can insert into or delete from
            # it until we finish, so a repeated scan sees the same keys (no phantoms).
            await self._lock(RangeLock(prefix, hi), LockMode.SHARED)
        items: list[tuple[bytes, Record]] = []
        last_seen = after
        # Keys are taken a batch at a time with no await in between: a lock wait below lets
        # other transactions commit, which must not disturb an iterator over the live index.
        while len(items) < count:
            batch = list(islice(self._merged_keys(prefix, hi, last_seen), count - len(items) + 16))
            if not batch:
                return ScanPage(items, None)
            for key in batch:
                last_seen = key
                if self.isolation is Isolation.REPEATABLE_READ and key not in self._writes:
                    await self._lock(KeyLock(key), LockMode.SHARED)
                record = self._visible(key)
                if record is not None:
                    items.append((key, record))
                    if len(items) == count:
                        return ScanPage(items, key)
        return ScanPage(items, last_seen)

    def _visible(self, key: bytes) -> Record | None:
        own = self._writes.get(key)
        if own is not None:
            return _as_record(own)
        if self.isolation is Isolation.READ_UNCOMMITTED:
            dirty = self._store.dirty.get(key)
            if dirty is not None:
                return _as_record(dirty[1])
        return self._store.memtable.get(key)

    def _merged_keys(self, lo: bytes, hi: bytes | None, after: bytes | None) -> Iterator[bytes]:
        def in_range(k: bytes) -> bool:
            return k >= lo and (hi is None or k < hi) and (after is None or k > after)

        sources: list[Iterator[bytes]] = [self._store.memtable.keys_in(lo, hi, after)]
        sources.append(iter(sorted(k for k in self._writes if in_range(k))))
        if self.isolation is Isolation.READ_UNCOMMITTED:
            sources.append(iter(sorted(k for k in self._store.dirty if in_range(k))))
        previous: bytes | None = None
        for key in heapq.merge(*sources):
            if key != previous:
                previous = key
                yield key

    # --- writes --------------------------------------------------------------------------------

    async def put(self, key: bytes, value: bytes, content_type: str = DEFAULT_CONTENT_TYPE, meta: bytes = b"") -> None:
        self._check_open()
        check_key(key, self._store.limits)
        check_record(value, content_type, meta, self._store.limits)
        await self._write(Put(key, value, content_type, meta))

    async def delete(self, key: bytes) -> bool:
        self._check_open()
        check_key(key, self._store.limits)
        await self._lock(KeyLock(key), LockMode.EXCLUSIVE)
        existed = self._visible(key) is not None
        await self._write(Delete(key))
        return existed

    async def _write(self, op: WriteOp) -> None:
        limits = self._store.limits
        previous = self._writes.get(op.key)
        new_bytes = self._write_bytes + op.size_bytes - (previous.size_bytes if previous else 0)
        if previous is None and len(self._writes) + 1 > limits.transaction_ops_max:
            raise LimitExceeded("transaction (writes)", len(self._writes) + 1, limits.transaction_ops_max)
        if new_bytes > limits.transaction_bytes_max:
            raise LimitExceeded("transaction", new_bytes, limits.transaction_bytes_max)
        await self._lock(KeyLock(op.key), LockMode.EXCLUSIVE)
        self._undo.append((op.key, previous))
        self._set_write(op.key, op)
        self._write_bytes = new_bytes

    def _set_write(self, key: bytes, op: WriteOp | None) -> None:
        if op is None:
            self._writes.pop(key, None)
            self._store.dirty.pop(key, None)
        else:
            self._writes.pop(key, None)  # keep write order: the latest write goes last
            self._writes[key] = op
            self._store.dirty[key] = (self.txn_id, op)

    # --- savepoints ----------------------------------------------------------------------------

    async def savepoint(self, name: str) -> None:
        self._check_open()
        if name not in self._savepoints and len(self._savepoints) >= self._store.limits.savepoints_max:
            raise LimitExceeded("savepoints", len(self._savepoints) + 1, self._store.limits.savepoints_max)
        self._savepoints.pop(name, None)
        self._savepoints[name] = len(self._undo)

    async def rollback_to(self, name: str) -> None:
        """Undo the writes made since savepoint `name`. Locks taken since are kept (as in
        PostgreSQL and InnoDB): releasing them early would let others see a state we may redo."""
        self._check_open()
        mark = self._savepoints.get(name)
        if mark is None:
            raise SavepointNotFound(f"no savepoint named {name!r} in this transaction")
        while len(self._undo) > mark:
            key, previous = self._undo.pop()
            current = self._writes.get(key)
            self._write_bytes -= current.size_bytes if current else 0
            self._write_bytes += previous.size_bytes if previous else 0
            self._set_write(key, previous)
        names = list(self._savepoints)
        for later in names[names.index(name) + 1 :]:
            del self._savepoints[later]

    # --- end -----------------------------------------------------------------------------------

    async def commit(self) -> int | None:
        self._check_open()
        if not self._writes:
            self._finish()
            return None
        self._state = _COMMITTING
        ops = list(self._writes.values())
        memtable = self._store.memtable

        def written(lsn: int) -> None:
            # Apply, then release the locks: no one can slip between the log and the state. This
            # runs even if the committing task was cancelled: the commit goes on regardless.
            memtable.apply(lsn, ops)
            self._finish()

        try:
            payload = encode_commit(ops, self._store.commit_packer)
            future = self._store.wal.append(
                RecordType.COMMIT, payload, self._durability, written, lambda _exc: self._finish()
            )
        except BaseException:
            # The log refused the record (failed or closed): nothing was written; abort.
            self._state = _OPEN
            self._finish()
            raise
        return await future

    async def rollback(self) -> None:
        if self._state == _OPEN:
            self._finish()

    def _finish(self) -> None:
        if self._state == _DONE:
            return
        self._state = _DONE
        dirty = self._store.dirty
        for key in self._writes:
            owner = dirty.get(key)
            if owner is not None and owner[0] == self.txn_id:
                del dirty[key]
        self._store.release_locks(self.txn_id)

    def _check_open(self) -> None:
        if self._abort_reason is not None:
            raise TransactionAborted(f"transaction {self.txn_id} was aborted: {self._abort_reason}")
        if self._state != _OPEN:
            raise TransactionClosed(f"transaction {self.txn_id} is already {self._state}")

    @property
    def closed(self) -> bool:
        return self._state != _OPEN

    async def _lock(self, resource: Resource, mode: LockMode) -> None:
        try:
            await self._store.acquire_lock(self.txn_id, resource, mode)
        except (DeadlockDetected, LockTimeout) as exc:
            # Abort at once: releasing our locks now is what breaks the cycle or the convoy.
            self._abort_reason = exc
            self._finish()
            raise


def _as_record(op: WriteOp) -> Record | None:
    if isinstance(op, Put):
        return Record(op.value, op.content_type, op.meta, 0)
    assert isinstance(op, Delete)
    return None
