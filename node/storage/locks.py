"""The lock manager: shared/exclusive key locks, range locks, FIFO waiters, deadlock detection.

Pure and synchronous (sans-I/O, as etcd/raft's core): calls return what happened, and the
asyncio driver (node.storage.transaction) turns "queued" into a future and a timeout into
`cancel`. Rules:

- Two locks conflict when their resources overlap and at least one is EXCLUSIVE. A key overlaps a
  range that contains it; ranges [lo, hi) overlap when they intersect. Range locks are how
  SERIALIZABLE scans stop phantoms (predicate locks, Eswaran et al. 1976, reduced to key ranges).
- Waiters are granted strictly first-come first-served: a request waits behind an earlier
  conflicting waiter even if the holders would let it in, so writers are not starved by a stream
  of readers. A lock upgrade (the transaction already holds the resource) goes ahead of waiters.
- Deadlocks are found at once, when a request starts to wait, by a search for a cycle in the
  wait-for graph (holders and earlier waiters). The youngest transaction in the cycle (highest
  id: it has done the least work) is the victim: its waiting request is cancelled and reported,
  and its driver aborts it, which releases its locks and breaks the cycle.
- A transaction releases everything at commit or abort (strict two-phase locking); `release`
  drops one shared lock early, for callers that want short read locks.
- `try_lock_key_exclusive` is `request` for the common case of an autocommit write (a new
  transaction that wants one exclusive key lock) when nothing overlapping is held or awaited: the
  same decision `request` would make, with no request object, queue or wait-for graph.
"""

import enum

from cluster.frozen import frozen


class LockMode(enum.Enum):
    SHARED = "S"
    EXCLUSIVE = "X"


@frozen
class KeyLock:
    key: bytes


@frozen
class RangeLock:
    """The keys k with lo <= k < hi; hi None means no upper bound."""

    lo: bytes
    hi: bytes | None

    def contains(self, key: bytes) -> bool:
        return self.lo <= key and (self.hi is None or key < self.hi)

    def overlaps(self, other: "RangeLock") -> bool:
        below_other_hi = other.hi is None or self.lo < other.hi
        above_other_lo = self.hi is None or other.lo < self.hi
        return below_other_hi and above_other_lo


Resource = KeyLock | RangeLock


def _overlap(a: Resource, b: Resource) -> bool:
    if isinstance(a, KeyLock):
        return a == b if isinstance(b, KeyLock) else b.contains(a.key)
    return a.contains(b.key) if isinstance(b, KeyLock) else a.overlaps(b)


def _compatible(a: LockMode, b: LockMode) -> bool:
    return a is LockMode.SHARED and b is LockMode.SHARED


@frozen
class LockRequest:
    request_id: int
    txn: int
    resource: Resource
    mode: LockMode


@frozen
class LockOutcome:
    """The result of a request: granted now, or queued; `victims` are waiting requests (possibly
    this one) cancelled to break a deadlock: their transactions must abort."""

    request_id: int
    granted: bool
    victims: tuple[LockRequest, ...] = ()


class LockManager:
    def __init__(self) -> None:
        self._next_request_id = 1
        # Granted locks, indexed for conflict checks: per key, and the (few) ranges.
        # A plain dict: point lookups are the hot path; a range request scans the (few) locked keys.
        self._key_holders: dict[bytes, dict[int, LockMode]] = {}
        self._range_holders: dict[RangeLock, dict[int, LockMode]] = {}
        self._held: dict[int, dict[Resource, LockMode]] = {}
        # Waiting requests in arrival order (dicts keep insertion order); one per transaction.
        self._waiting: dict[int, LockRequest] = {}
        self._waiting_of_txn: dict[int, int] = {}

    # --- queries ---------------------------------------------------------------------------

    def held_by(self, txn: int) -> dict[Resource, LockMode]:
        return dict(self._held.get(txn, {}))

    def waiting_count(self) -> int:
        return len(self._waiting)

    def held_count(self) -> int:
        """Locks granted and not yet released, over all transactions."""
        return sum(len(held) for held in self._held.values())

    def holds(self, txn: int, resource: Resource, mode: LockMode) -> bool:
        held = self._held.get(txn, {}).get(resource)
        return held is LockMode.EXCLUSIVE or held is mode

    # --- requests --------------------------------------------------------------------------

    def request(self, txn: int, resource: Resource, mode: LockMode) -> LockOutcome:
        assert txn not in self._waiting_of_txn, "a transaction waits for one lock at a time"
        request_id = self._next_request_id
        self._next_request_id += 1
        if self.holds(txn, resource, mode):
            return LockOutcome(request_id, granted=True)
        req = LockRequest(request_id, txn, resource, mode)
        if not self._blockers(req, self._waiting_before(req)):
            self._grant(req)
            return LockOutcome(request_id, granted=True)
        self._waiting[request_id] = req
        self._waiting_of_txn[txn] = request_id
        # The new wait may close several cycles at once: break every one of them. Cancelling a
        # victim's waiting request removes its out-edges; its locks go when its driver aborts it.
        victims: list[LockRequest] = []
        while (victim := self._deadlock_victim(txn)) is not None:
            self._remove_waiting(victim)
            victims.append(victim)
            if victim.request_id == request_id:
                break
        return LockOutcome(request_id, granted=False, victims=tuple(victims))

    def try_lock_key_exclusive(self, txn: int, key: bytes) -> bool:
        """Grant `txn`, a transaction holding no locks, an exclusive lock on `key` if no one holds
        a lock that overlaps it and no one waits for one; else change nothing and return False, and
        the caller goes through `request` (which then queues it and looks for deadlocks).

        This is exactly when `request` would grant at once: an exclusive lock conflicts with every
        overlapping holder, and, FIFO, with every overlapping waiter (all are earlier, and a new
        transaction's request is no upgrade). A granted request never waits, so it adds no edge to
        the wait-for graph. Commonly one dict lookup: ranges and waiters are rare.
        """
        assert txn not in self._held and txn not in self._waiting_of_txn, "only for a new transaction"
        if key in self._key_holders:
            return False
        resource = KeyLock(key)
        if self._range_holders and any(rng.contains(key) for rng in self._range_holders):
            return False
        if self._waiting and any(_overlap(w.resource, resource) for w in self._waiting.values()):
            return False
        mode = LockMode.EXCLUSIVE  # an enum member lookup is not free (3.11): once
        self._held[txn] = {resource: mode}
        self._key_holders[key] = {txn: mode}
        return True

    def cancel(self, request_id: int) -> list[LockRequest]:
        """Withdraw a waiting request (lock timeout). Returns requests granted as a result."""
        req = self._waiting.get(request_id)
        if req is None:
            return []
        self._remove_waiting(req)
        return self._grant_waiters()

    def release(self, txn: int, resource: Resource) -> list[LockRequest]:
        """Release one SHARED lock early (READ COMMITTED). Exclusive locks are kept to the end."""
        held = self._held.get(txn, {})
        if held.get(resource) is not LockMode.SHARED:
            return []
        self._ungrant(txn, resource)
        return self._grant_waiters()

    def release_all(self, txn: int) -> list[LockRequest]:
        """Commit or abort: drop every lock and any waiting request of `txn`."""
        waiting_id = self._waiting_of_txn.get(txn)
        if waiting_id is not None:
            self._remove_waiting(self._waiting[waiting_id])
        held = self._held.pop(txn, None)
        if held is not None:
            for resource in held:
                self._unindex(txn, resource)
        # Nothing waits in the common case (uncontended autocommit writes): skip the queue pass.
        return self._grant_waiters() if self._waiting else []

    # --- internals -------------------------------------------------------------------------

    def _waiting_before(self, req: LockRequest) -> list[LockRequest]:
        """The waiters `req` must queue behind: all earlier ones, unless it is an upgrade."""
        if req.resource in self._held.get(req.txn, {}):
            return []
        earlier = []
        for other in self._waiting.values():
            if other.request_id >= req.request_id:
                break
            earlier.append(other)
        return earlier

    def _blockers(self, req: LockRequest, earlier_waiters: list[LockRequest]) -> set[int]:
        """Transactions that `req` must wait for."""
        blockers: set[int] = set()
        res, mode = req.resource, req.mode
        if isinstance(res, KeyLock):
            for txn, held in self._key_holders.get(res.key, {}).items():
                if txn != req.txn and not _compatible(held, mode):
                    blockers.add(txn)
        else:
            for key, holders in self._key_holders.items():
                if res.contains(key):
                    for txn, held in holders.items():
                        if txn != req.txn and not _compatible(held, mode):
                            blockers.add(txn)
        for rng, holders in self._range_holders.items():
            if _overlap(rng, res):
                for txn, held in holders.items():
                    if txn != req.txn and not _compatible(held, mode):
                        blockers.add(txn)
        for other in earlier_waiters:
            if other.txn != req.txn and _overlap(other.resource, res) and not _compatible(other.mode, mode):
                blockers.add(other.txn)
        return blockers

    def _grant(self, req: LockRequest) -> None:
        held = self._held.setdefault(req.txn, {})
        if held.get(req.resource) is LockMode.EXCLUSIVE:
            return
        held[req.resource] = req.mode
        if isinstance(req.resource, KeyLock):
            holders = self._key_holders.get(req.resource.key)
            if holders is None:
                holders = self._key_holders[req.resource.key] = {}
            holders[req.txn] = req.mode
        else:
            self._range_holders.setdefault(req.resource, {})[req.txn] = req.mode

    def _ungrant(self, txn: int, resource: Resource) -> None:
        self._held[txn].pop(resource, None)
        self._unindex(txn, resource)

    def _unindex(self, txn: int, resource: Resource) -> None:
        """Drop a lock of `txn` from the conflict-check indexes (not from `_held`)."""
        if isinstance(resource, KeyLock):
            holders = self._key_holders.get(resource.key)
            if holders is not None:
                holders.pop(txn, None)
                if not holders:
                    del self._key_holders[resource.key]
        else:
            range_holders = self._range_holders.get(resource)
            if range_holders is not None:
                range_holders.pop(txn, None)
                if not range_holders:
                    del self._range_holders[resource]

    def _remove_waiting(self, req: LockRequest) -> None:
        del self._waiting[req.request_id]
        del self._waiting_of_txn[req.txn]

    def _grant_waiters(self) -> list[LockRequest]:
        granted: list[LockRequest] = []
        still_waiting: list[LockRequest] = []
        for req in list(self._waiting.values()):
            upgrade = req.resource in self._held.get(req.txn, {})
            if not self._blockers(req, [] if upgrade else still_waiting):
                self._remove_waiting(req)
                self._grant(req)
                granted.append(req)
            else:
                still_waiting.append(req)
        return granted

    def _waits_for(self, txn: int) -> set[int]:
        request_id = self._waiting_of_txn.get(txn)
        if request_id is None:
            return set()
        req = self._waiting[request_id]
        return self._blockers(req, self._waiting_before(req))

    def _deadlock_victim(self, start: int) -> LockRequest | None:
        """Search the wait-for graph for a cycle through `start`; pick its youngest waiter.

        A cycle not through `start` would have been found when its last edge was added.
        """
        path: list[int] = [start]
        on_path = {start}
        finished: set[int] = set()
        edges = [iter(sorted(self._waits_for(start)))]
        while edges:
            nxt = next(edges[-1], None)
            if nxt is None:
                edges.pop()
                done = path.pop()
                on_path.discard(done)
                finished.add(done)
                continue
            if nxt == start:
                youngest = max(path)  # every transaction on the path is waiting
                return self._waiting[self._waiting_of_txn[youngest]]
            if nxt in finished or nxt in on_path:
                continue
            path.append(nxt)
            on_path.add(nxt)
            edges.append(iter(sorted(self._waits_for(nxt))))
        return None
