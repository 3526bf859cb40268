"""The in-memory reference `Store`: a sorted dict, no durability, one transaction at a time.

It exists to pin down the contract (the conformance suite runs against it and the WAL store
alike) and to back unit tests and the simulator without a disk. Transactions run one after
another under one lock, so every isolation level is trivially met (serial execution is stronger
than SERIALIZABLE); durability settings are accepted and have no effect.
"""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sortedcontainers import SortedDict

from cluster.limits import STORE_LIMITS, StoreLimits
from cluster.store import (
    DEFAULT_CONTENT_TYPE,
    Durability,
    Isolation,
    LimitExceeded,
    Record,
    SavepointNotFound,
    ScanPage,
    Store,
    StoreClosed,
    TransactionClosed,
    check_key,
    check_record,
    page_limit,
    prefix_end,
)

_DELETED = None


class MemoryTransaction:
    def __init__(self, store: "MemoryStore") -> None:
        self._store = store
        self._writes: dict[bytes, Record | None] = {}
        self._undo: list[tuple[bytes, bool, Record | None]] = []  # key, had a write, previous
        self._savepoints: dict[str, int] = {}
        self._bytes = 0
        self.closed = False

    def _check_open(self) -> None:
        if self.closed:
            raise TransactionClosed("the transaction is already finished")

    def _view(self, key: bytes) -> Record | None:
        if key in self._writes:
            return self._writes[key]
        got: Record | None = self._store.records.get(key)
        return got

    async def get(self, key: bytes) -> Record | None:
        self._check_open()
        check_key(key, self._store.limits)
        return self._view(key)

    async def put(self, key: bytes, value: bytes, content_type: str = DEFAULT_CONTENT_TYPE, meta: bytes = b"") -> None:
        self._check_open()
        check_key(key, self._store.limits)
        check_record(value, content_type, meta, self._store.limits)
        self._write(key, Record(value, content_type, meta, 0), len(key) + len(value) + len(content_type) + len(meta))

    async def delete(self, key: bytes) -> bool:
        self._check_open()
        check_key(key, self._store.limits)
        existed = self._view(key) is not None
        self._write(key, _DELETED, len(key))
        return existed

    def _write(self, key: bytes, record: Record | None, size: int) -> None:
        limits = self._store.limits
        if key not in self._writes and len(self._writes) + 1 > limits.transaction_ops_max:
            raise LimitExceeded("transaction (writes)", len(self._writes) + 1, limits.transaction_ops_max)
        if self._bytes + size > limits.transaction_bytes_max:
            raise LimitExceeded("transaction", self._bytes + size, limits.transaction_bytes_max)
        self._undo.append((key, key in self._writes, self._writes.get(key)))
        self._writes[key] = record
        self._bytes += size

    async def scan(self, prefix: bytes = b"", after: bytes | None = None, limit: int | None = None) -> ScanPage:
        self._check_open()
        count = page_limit(limit, self._store.limits)
        hi = prefix_end(prefix)
        keys = set(self._store.records.irange(prefix, hi, inclusive=(True, False)))
        keys.update(k for k in self._writes if k >= prefix and (hi is None or k < hi))
        items: list[tuple[bytes, Record]] = []
        last: bytes | None = None
        for key in sorted(k for k in keys if after is None or k > after):
            last = key
            record = self._view(key)
            if record is not None:
                items.append((key, record))
                if len(items) == count:
                    return ScanPage(items, last)
        return ScanPage(items, None)

    async def savepoint(self, name: str) -> None:
        self._check_open()
        if name not in self._savepoints and len(self._savepoints) >= self._store.limits.savepoints_max:
            raise LimitExceeded("savepoints", len(self._savepoints) + 1, self._store.limits.savepoints_max)
        self._savepoints.pop(name, None)
        self._savepoints[name] = len(self._undo)

    async def rollback_to(self, name: str) -> None:
        self._check_open()
        if name not in self._savepoints:
            raise SavepointNotFound(f"no savepoint named {name!r} in this transaction")
        mark = self._savepoints[name]
        while len(self._undo) > mark:
            key, had, previous = self._undo.pop()
            if had:
                self._writes[key] = previous
            else:
                del self._writes[key]
        names = list(self._savepoints)
        for later in names[names.index(name) + 1 :]:
            del self._savepoints[later]

    async def commit(self) -> int | None:
        self._check_open()
        self.closed = True
        if not self._writes:
            return None
        return self._store.apply(self._writes)

    async def rollback(self) -> None:
        self.closed = True


class MemoryStore:
    def __init__(self, limits: StoreLimits = STORE_LIMITS) -> None:
        self.limits = limits
        self.records: SortedDict = SortedDict()
        self.last_lsn = 0
        self._serial = asyncio.Lock()
        self._closed = False

    def apply(self, writes: dict[bytes, Record | None]) -> int:
        self.last_lsn += 1
        for key, record in writes.items():
            if record is None:
                self.records.pop(key, None)
            else:
                self.records[key] = Record(record.value, record.content_type, record.meta, self.last_lsn)
        return self.last_lsn

    @asynccontextmanager
    async def transaction(
        self, isolation: Isolation = Isolation.SERIALIZABLE, durability: Durability = Durability.FSYNC
    ) -> AsyncIterator[MemoryTransaction]:
        if self._closed:
            raise StoreClosed("the store is closed")
        async with self._serial:
            tx = MemoryTransaction(self)
            try:
                yield tx
            except BaseException:
                await tx.rollback()
                raise
            if not tx.closed:
                await tx.commit()

    async def get(self, key: bytes) -> Record | None:
        async with self.transaction() as tx:
            return await tx.get(key)

    async def put(
        self,
        key: bytes,
        value: bytes,
        content_type: str = DEFAULT_CONTENT_TYPE,
        meta: bytes = b"",
        durability: Durability = Durability.FSYNC,
    ) -> int:
        async with self.transaction() as tx:
            await tx.put(key, value, content_type, meta)
            lsn = await tx.commit()
        assert lsn is not None
        return lsn

    async def delete(self, key: bytes, durability: Durability = Durability.FSYNC) -> bool:
        async with self.transaction() as tx:
            existed = await tx.delete(key)
            if not existed:
                await tx.rollback()
        return existed

    async def scan(self, prefix: bytes = b"", after: bytes | None = None, limit: int | None = None) -> ScanPage:
        async with self.transaction() as tx:
            return await tx.scan(prefix, after, limit)

    async def close(self) -> None:
        self._closed = True


def _conforms(store: MemoryStore) -> Store:
    """Checked by mypy: MemoryStore implements the Store protocol."""
    return store
