"""Idempotency records: the first outcome of a write, kept by its coordinating replica.

Stored in the node's own store (under an internal keyspace that clients cannot name), so they
survive a restart, and kept for `idempotency_ttl_s` (10 minutes by default, Stripe's and the
IETF draft's practice is 24 h; a retry storm is over in minutes). A background sweep drops
expired records a page at a time, and the table is bounded by `idempotency_entries_max`.

A record whose write timed out (outcome unknown) is not final: a retry does not mint the write
again; it replicates what this replica already stored and reports the new outcome.
"""

import time

import msgpack

from cluster.context import scoped_key
from cluster.dvv import VersionVector
from cluster.frozen import frozen
from cluster.limits import REQUEST_DEFAULTS
from cluster.requests import WriteOutcome
from cluster.store import Durability, Store

KEYSPACE = "_idempotency"


@frozen
class IdempotencyRecord:
    digest: bytes
    keyspace: str
    key: bytes
    outcome: WriteOutcome
    expires_ms: int


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


class IdempotencyTable:
    def __init__(self, store: Store, ttl_s: int = REQUEST_DEFAULTS.idempotency_ttl_s) -> None:
        self._store = store
        self._ttl_ms = ttl_s * 1000
        self.count = 0

    async def get(self, idempotency_key: str) -> IdempotencyRecord | None:
        record = await self._store.get(scoped_key(KEYSPACE, idempotency_key.encode()))
        if record is None:
            return None
        digest, keyspace, key, outcome, expires_ms = msgpack.unpackb(record.value, raw=False)
        if expires_ms < _wall_ms():
            return None
        status, coordinator, acks, required, version, timestamp, achieved, message = outcome
        parsed = WriteOutcome(
            status,
            coordinator,
            tuple(acks),
            required,
            None if version is None else VersionVector.from_wire(version),
            timestamp,
            achieved,
            message,
        )
        return IdempotencyRecord(digest, keyspace, key, parsed, expires_ms)

    async def put(self, idempotency_key: str, digest: bytes, keyspace: str, key: bytes, outcome: WriteOutcome) -> bool:
        """Keep the outcome; False when the table is full (the write still happened)."""
        skey = scoped_key(KEYSPACE, idempotency_key.encode())
        if self.count >= REQUEST_DEFAULTS.idempotency_entries_max and await self._store.get(skey) is None:
            return False
        wire = [
            outcome.status,
            outcome.coordinator,
            list(outcome.acks),
            outcome.required,
            None if outcome.version is None else outcome.version.to_wire(),
            outcome.timestamp,
            outcome.achieved,
            outcome.message,
        ]
        value = msgpack.packb([digest, keyspace, key, wire, _wall_ms() + self._ttl_ms], use_bin_type=True)
        # fsync: the record must be as durable as the write it describes, or a retry after a
        # crash would write again.
        await self._store.put(skey, bytes(value), durability=Durability.FSYNC)
        self.count += 1
        return True

    async def sweep(self, page_limit: int = 500) -> int:
        """Drop expired records; returns how many were dropped. Bounded work per call."""
        base = scoped_key(KEYSPACE, b"")
        now = _wall_ms()
        dropped = 0
        after: bytes | None = None
        live = 0
        while True:
            page = await self._store.scan(base, after, page_limit)
            for skey, record in page.items:
                expires_ms = msgpack.unpackb(record.value, raw=False)[4]
                if expires_ms < now:
                    await self._store.delete(skey, Durability.ASYNC)
                    dropped += 1
                else:
                    live += 1
            if page.cursor is None:
                break
            after = page.cursor
        self.count = live
        return dropped
