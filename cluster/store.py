"""The `Store` protocol: what the cluster layer needs from one node's local store.

Kept to about a dozen calls, as riak_kv_backend keeps its backend contract small, and checked by
one conformance suite (tests/unit/test_store_conformance.py) that every implementation must pass:
the in-memory reference store (cluster.memory_store) and the WAL store (node.storage).

Keys are ordered bytes; a value is a `Record`: bytes, a content type, and an opaque metadata blob
that the cluster layer uses for its clocks and tombstones. The store never looks inside `meta`.
"""

import enum
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import Protocol

from cluster.frozen import frozen
from cluster.limits import STORE_LIMITS, StoreLimits

DEFAULT_CONTENT_TYPE = "application/octet-stream"


class Durability(enum.Enum):
    """When a commit returns (see docs/storage.md)."""

    FSYNC = "fsync"  # after the commit record is on stable storage
    ASYNC = "async"  # after write(2); a background fdatasync bounds the loss window


class Isolation(enum.Enum):
    """ANSI isolation levels, implemented with locks as in Berenson et al., 'A Critique of ANSI SQL
    Isolation Levels' (1995), Table 2."""

    READ_UNCOMMITTED = "read_uncommitted"
    READ_COMMITTED = "read_committed"
    REPEATABLE_READ = "repeatable_read"
    SERIALIZABLE = "serializable"


@frozen
class Record:
    """One stored value. `version` is the log sequence number of the commit that wrote it
    (0 until committed)."""

    value: bytes
    content_type: str = DEFAULT_CONTENT_TYPE
    meta: bytes = b""
    version: int = 0


@frozen
class ScanPage:
    """One page of an ordered scan. `cursor` is the last key returned when more may follow;
    pass it back as `after` for the next page. None means the scan is complete."""

    items: Sequence[tuple[bytes, Record]]
    cursor: bytes | None


# --- Operating errors (mapped to HTTP status at the edge); broken invariants are asserts. ---


class StoreError(Exception):
    """Base of every error the store reports to its caller. `code` is stable and machine-readable."""

    code = "store_error"


class LimitExceeded(StoreError):
    """A key, value, metadata, content type or transaction is over its limit (HTTP 413 / 400)."""

    code = "limit_exceeded"

    def __init__(self, what: str, size: int, limit: int) -> None:
        super().__init__(f"{what} is {size} bytes/items; the limit is {limit}")
        self.what = what
        self.size = size
        self.limit = limit


class InvalidArgument(StoreError):
    code = "invalid_argument"


class TransactionAborted(StoreError):
    """The transaction was aborted by the store; it made no change. The caller may retry it."""

    code = "transaction_aborted"


class DeadlockDetected(TransactionAborted):
    """This transaction was chosen as the victim of a deadlock (a cycle in the wait-for graph)."""

    code = "deadlock"


class LockTimeout(TransactionAborted):
    """A lock was not granted within the lock timeout."""

    code = "lock_timeout"


class TransactionClosed(StoreError):
    """The transaction was already committed or rolled back."""

    code = "transaction_closed"


class SavepointNotFound(StoreError):
    code = "savepoint_not_found"


class StoreClosed(StoreError):
    code = "store_closed"


class StoreFailed(StoreError):
    """The store hit an I/O error it cannot recover from while committing. The outcome of the
    commits in flight is unknown (the record may or may not be durable); the store refuses further
    writes until it is reopened (fsync errors cannot be retried safely: PostgreSQL's 'fsyncgate')."""

    code = "store_failed"


def check_key(key: bytes, limits: StoreLimits = STORE_LIMITS) -> None:
    if not isinstance(key, bytes):
        raise InvalidArgument(f"key must be bytes, not {type(key).__name__}")
    if not key:
        raise InvalidArgument("key must not be empty")
    if len(key) > limits.key_bytes_max:
        raise LimitExceeded("key", len(key), limits.key_bytes_max)


def check_record(value: bytes, content_type: str, meta: bytes, limits: StoreLimits = STORE_LIMITS) -> None:
    if not isinstance(value, bytes):
        raise InvalidArgument(f"value must be bytes, not {type(value).__name__}")
    if len(value) > limits.value_bytes_max:
        raise LimitExceeded("value", len(value), limits.value_bytes_max)
    if len(content_type.encode()) > limits.content_type_bytes_max:
        raise LimitExceeded("content type", len(content_type.encode()), limits.content_type_bytes_max)
    if not isinstance(meta, bytes):
        raise InvalidArgument(f"meta must be bytes, not {type(meta).__name__}")
    if len(meta) > limits.meta_bytes_max:
        raise LimitExceeded("metadata", len(meta), limits.meta_bytes_max)


def prefix_end(prefix: bytes) -> bytes | None:
    """The smallest key greater than every key that starts with `prefix` (None: no bound)."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes([stripped[-1] + 1])


class Transaction(Protocol):
    """A local transaction. Writes are buffered and committed as ONE atomic log record."""

    async def get(self, key: bytes) -> Record | None: ...

    async def put(
        self, key: bytes, value: bytes, content_type: str = DEFAULT_CONTENT_TYPE, meta: bytes = b""
    ) -> None: ...

    async def delete(self, key: bytes) -> bool:
        """Delete `key`; True if it existed (as this transaction sees it)."""
        ...

    async def scan(self, prefix: bytes = b"", after: bytes | None = None, limit: int | None = None) -> ScanPage: ...

    async def savepoint(self, name: str) -> None: ...

    async def rollback_to(self, name: str) -> None:
        """Undo every write made after savepoint `name`; the savepoint stays (SQL semantics)."""
        ...

    async def commit(self) -> int | None:
        """Commit; returns the commit's log sequence number, or None for a read-only transaction."""
        ...

    async def rollback(self) -> None: ...


class Store(Protocol):
    """One node's local store. Single-key calls are autocommit transactions."""

    async def get(self, key: bytes) -> Record | None: ...

    async def put(
        self,
        key: bytes,
        value: bytes,
        content_type: str = DEFAULT_CONTENT_TYPE,
        meta: bytes = b"",
        durability: Durability = Durability.FSYNC,
    ) -> int:
        """Write one key; returns the commit's log sequence number (the record's new version)."""
        ...

    async def delete(self, key: bytes, durability: Durability = Durability.FSYNC) -> bool: ...

    async def scan(self, prefix: bytes = b"", after: bytes | None = None, limit: int | None = None) -> ScanPage:
        """Keys starting with `prefix`, in order, strictly after `after`, at most `limit`."""
        ...

    def transaction(
        self, isolation: Isolation = Isolation.SERIALIZABLE, durability: Durability = Durability.FSYNC
    ) -> AbstractAsyncContextManager[Transaction]:
        """`async with store.transaction() as tx:` commits on a normal exit, rolls back on an error."""
        ...

    async def close(self) -> None: ...


def page_limit(limit: int | None, limits: StoreLimits = STORE_LIMITS) -> int:
    if limit is None:
        return limits.scan_page_default
    if not isinstance(limit, int) or limit < 1:
        raise InvalidArgument(f"scan limit must be a positive integer, not {limit!r}")
    if limit > limits.scan_page_max:
        raise LimitExceeded("scan limit", limit, limits.scan_page_max)
    return limit
