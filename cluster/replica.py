"""One node's replica: reads and writes of sibling sets on top of the local `Store`.

The only cluster module that awaits a store; the logic is the pure DVV functions. Each
read-modify-write of a key runs under a per-key lock of this process (the store is ours alone),
so a mint or a merge never loses a concurrent one, and the store's own locks never deadlock.

- `mint` coordinates a client write: it applies the write to the local clock with a new dot
  from this node (DVVSet update), checks the conditions and limits, and stores it durably.
- `merge` stores a clock received from another replica (DVVSet sync): idempotent, commutative,
  so duplicated or reordered replication messages are harmless.
"""

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress

from cluster import dvv
from cluster.context import scoped_key
from cluster.dvv import DVVSet, VersionVector
from cluster.enums import by_value
from cluster.frozen import frozen
from cluster.hlc import ClockDriftError, HybridClock, Timestamp
from cluster.limits import CLOCK_DEFAULTS, REQUEST_DEFAULTS
from cluster.merkle import clock_digest
from cluster.requests import WriteStatus
from cluster.siblings import (
    STORED_CONTENT_TYPE,
    Resolution,
    Sibling,
    decode_clock,
    encode_clock,
    live,
    meta_is_deleted,
    record_meta,
    resolve,
    total_bytes,
)
from cluster.store import Durability, Store


@frozen
class Minted:
    status: WriteStatus  # OK, PRECONDITION_FAILED or SIBLINGS_LIMIT
    clock: DVVSet[Sibling] | None
    timestamp: Timestamp | None
    message: str = ""
    encoded: bytes = b""  # the stored clock's encoding, which replication sends as it is


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


class Replica:
    def __init__(self, node_id: str, store: Store, clock: HybridClock, wall: Callable[[], int] = wall_ms) -> None:
        self.node_id = node_id
        self.store = store
        self.clock = clock
        # Wall-clock milliseconds; a simulator passes its virtual clock here.
        self.wall = wall
        self._key_locks: dict[bytes, list[asyncio.Future[None]]] = {}  # held key -> its waiters
        # scoped key -> (stored bytes, their decoded clock), oldest first; see _load.
        self._decoded: dict[bytes, tuple[bytes, DVVSet[Sibling]]] = {}
        self._decoded_bytes = 0  # the stored size of what _decoded holds
        # Called after every write of a key, with the stored clock and its encoding (None, None: the
        # key was purged); anti-entropy's Merkle trees are kept current from here (cluster/merkle.py).
        self.save_listeners: list[Callable[[bytes, DVVSet[Sibling] | None, bytes | None], None]] = []

    async def _lock(self, key: bytes) -> None:
        """Take the key's lock; every caller releases it with `_unlock` in a `finally`.

        A held key maps to its waiters, oldest first; a release hands the lock to the first
        (FIFO, like asyncio.Lock). Not asyncio.Lock itself: building one per write showed in
        profiles, and the uncontended case here is a dict insert with no await."""
        waiters = self._key_locks.get(key)
        if waiters is None:
            self._key_locks[key] = []
            return
        handoff: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiters.append(handoff)
        try:
            await handoff
        except asyncio.CancelledError:
            if handoff.done() and not handoff.cancelled():
                self._unlock(key)  # handed the lock as we were cancelled: pass it on
            else:
                with suppress(ValueError):  # a release may have dropped it already
                    waiters.remove(handoff)
            raise

    def _unlock(self, key: bytes) -> None:
        waiters = self._key_locks[key]
        while waiters:
            handoff = waiters.pop(0)
            if not handoff.done():
                handoff.set_result(None)  # the lock now belongs to that waiter
                return
        del self._key_locks[key]

    @asynccontextmanager
    async def _locked(self, key: bytes) -> AsyncIterator[None]:
        await self._lock(key)
        try:
            yield
        finally:
            self._unlock(key)

    async def _load(self, skey: bytes) -> DVVSet[Sibling] | None:
        record = await self.store.get(skey)
        if record is None:
            return None
        # Our own stored bytes decode to what we last saved or loaded for the key: reuse it. Equal
        # bytes mean an equal clock whoever wrote them, so the cache cannot go stale.
        cached = self._decoded.get(skey)
        if cached is not None and cached[0] == record.value:
            return cached[1]
        clock = decode_clock(record.value)
        self._remember(skey, record.value, clock)
        return clock

    def _remember(self, skey: bytes, encoded: bytes, clock: DVVSet[Sibling]) -> None:
        decoded = self._decoded
        self._forget(skey)
        if len(encoded) > CLOCK_DEFAULTS.decoded_clocks_bytes_max // 16:
            return  # too large to keep (limits.py)
        decoded[skey] = (encoded, clock)
        self._decoded_bytes += len(encoded)
        while (
            len(decoded) > CLOCK_DEFAULTS.decoded_clocks_cached
            or self._decoded_bytes > CLOCK_DEFAULTS.decoded_clocks_bytes_max
        ):
            oldest = next(iter(decoded))
            self._decoded_bytes -= len(decoded.pop(oldest)[0])

    def _forget(self, skey: bytes) -> None:
        old = self._decoded.pop(skey, None)
        if old is not None:
            self._decoded_bytes -= len(old[0])

    async def _save(
        self, skey: bytes, clock: DVVSet[Sibling] | None, durability: str, encoded: bytes | None = None
    ) -> bytes | None:
        """The one place a replica writes a key (None: purges it); returns what it stored.
        `encoded`, when given, is `clock`'s encoding (saves encoding it again)."""
        if clock is None:
            self._forget(skey)
            await self.store.delete(skey, _durability(durability))
        else:
            encoded = encoded or encode_clock(clock)
            self._remember(skey, encoded, clock)
            await self.store.put(skey, encoded, STORED_CONTENT_TYPE, record_meta(clock), _durability(durability))
        for listener in self.save_listeners:
            listener(skey, clock, encoded)
        return encoded

    async def purge(self, keyspace: str, key: bytes, digest: bytes) -> bool:
        """Delete a key whose stored clock still has this digest (cluster/tombstones.py): a write
        that landed since the purge was decided changed the digest, and is kept."""
        skey = scoped_key(keyspace, key)
        async with self._locked(skey):
            record = await self.store.get(skey)
            if record is None or clock_digest(record.value) != digest:
                return False
            await self._save(skey, None, Durability.ASYNC.value)
            return True

    def _observe(self, clock: DVVSet[Sibling]) -> None:
        """Keep our hybrid clock ahead of every timestamp we store, so a write that follows
        another (it read it) gets a later timestamp even across nodes, as `lww` needs."""
        newest: Timestamp | None = None
        for entry in clock.entries:  # usually one sibling in all: no list, generator or max()
            for sibling in entry.values:
                if newest is None or sibling.timestamp > newest:
                    newest = sibling.timestamp
        if newest is not None and newest > self.clock.last:
            # A value from a clock far ahead is stored, but does not drag ours along.
            with suppress(ClockDriftError):
                self.clock.observe(newest, self.wall())

    async def mint(
        self,
        keyspace: str,
        resolution: Resolution,
        key: bytes,
        sibling_value: bytes,
        content_type: str,
        deleted: bool,
        deps: tuple[tuple[bytes, VersionVector], ...],
        context: VersionVector | None,
        if_match: VersionVector | None,
        if_none_match: bool,
        durability: str,
    ) -> Minted:
        skey = scoped_key(keyspace, key)
        await self._lock(skey)
        try:
            local = await self._load(skey) or DVVSet()
            if if_match is not None and dvv.join(local) != if_match:
                return Minted(
                    WriteStatus.PRECONDITION_FAILED, None, None, "If-Match: the key changed since that context"
                )
            if if_none_match and live(local):
                return Minted(WriteStatus.PRECONDITION_FAILED, None, None, "If-None-Match: the key has a value")
            if deleted and context is None:
                # A delete without a context removes what this replica holds now, as Riak's delete
                # fetches the object's clock first; a blind tombstone would only become a sibling.
                context = dvv.join(local)
            self._observe(local)
            stamp = self.clock.now(self.wall())
            sibling = Sibling(sibling_value, content_type, stamp, deleted, deps)
            # A replica without an entry of its own for the key may have minted dots for it before
            # a tombstone purge removed them; a counter from the hybrid clock (which every mint
            # advances) is above them all (Riak KV 2.0's key epochs solve the same problem).
            first = (stamp.physical_ms << 14) + min(stamp.logical, 2**14 - 1) + 1
            updated = resolve(
                dvv.update(dvv.Write(sibling, context or VersionVector()), local, self.node_id, first), resolution
            )
            if dvv.size(updated) > CLOCK_DEFAULTS.siblings_max:
                return Minted(
                    WriteStatus.SIBLINGS_LIMIT,
                    None,
                    None,
                    f"the key would have {dvv.size(updated)} siblings; the limit is {CLOCK_DEFAULTS.siblings_max}: "
                    "read it and write with its context to resolve them",
                )
            if total_bytes(updated) > REQUEST_DEFAULTS.sibling_set_bytes_max:
                return Minted(
                    WriteStatus.SIBLINGS_LIMIT,
                    None,
                    None,
                    f"the key's siblings would hold {total_bytes(updated)} bytes; the limit is "
                    f"{REQUEST_DEFAULTS.sibling_set_bytes_max}: resolve them by writing with their context",
                )
            encoded = await self._save(skey, updated, durability)
            assert encoded is not None
            return Minted(WriteStatus.OK, updated, stamp, encoded=encoded)
        finally:
            self._unlock(skey)

    async def merge(self, keyspace: str, resolution: Resolution, key: bytes, encoded: bytes, durability: str) -> bool:
        """Merge a clock from another replica; True if the local state changed."""
        incoming = decode_clock(encoded)
        skey = scoped_key(keyspace, key)
        await self._lock(skey)
        try:
            local = await self._load(skey)
            merged = resolve(incoming if local is None else dvv.sync(local, incoming), resolution)
            if local is not None and merged == local:
                return False
            self._observe(merged)
            # Usually the incoming clock supersedes ours and is the merge: store the bytes as they
            # came (every node encodes a clock the same way, so replicas' digests still agree).
            await self._save(skey, merged, durability, encoded if merged == incoming else None)
            return True
        finally:
            self._unlock(skey)

    async def read(self, keyspace: str, key: bytes) -> bytes | None:
        record = await self.store.get(scoped_key(keyspace, key))
        return None if record is None else record.value

    async def digest(
        self, keyspace: str, after: bytes | None, limit: int
    ) -> tuple[list[tuple[bytes, str]], bytes | None]:
        """(key, digest of the stored clock) for this replica's keys of `keyspace`, tombstones too."""
        base = scoped_key(keyspace, b"")
        page = await self.store.scan(base, None if after is None else base + after, limit)
        entries = [(skey[len(base) :], hashlib.sha256(record.value).hexdigest()[:32]) for skey, record in page.items]
        cursor = None if page.cursor is None else page.cursor[len(base) :]
        return entries, cursor

    async def list_keys(
        self, keyspace: str, prefix: bytes, after: bytes | None, limit: int
    ) -> tuple[list[bytes], bool]:
        """Live keys of `keyspace` starting with `prefix`, after `after`; True when no more follow."""
        base = scoped_key(keyspace, b"")
        cursor = None if after is None else base + after
        keys: list[bytes] = []
        while True:
            page = await self.store.scan(base + prefix, cursor, min(limit * 2, 1_000))
            for skey, record in page.items:
                if not meta_is_deleted(record.meta):
                    keys.append(skey[len(base) :])
                    if len(keys) == limit:
                        return keys, False
            if page.cursor is None:
                return keys, True
            cursor = page.cursor


_durability = by_value(Durability)
