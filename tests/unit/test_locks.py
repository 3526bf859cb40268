"""The pure lock manager (node.storage.locks): compatibility, FIFO queueing, ranges, cancel, deadlocks.

Plain synchronous tests, as h11 tests its sans-I/O core: no event loop, no store. The last test is
a Hypothesis state machine that drives the manager the way the store's driver does (a deadlock
victim aborts at once) and checks it against a model built from the rules in the module header.
"""

from collections.abc import Iterable
from dataclasses import dataclass

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from node.storage.locks import KeyLock, LockManager, LockMode, LockOutcome, LockRequest, RangeLock, Resource

S, X = LockMode.SHARED, LockMode.EXCLUSIVE
T1, T2, T3, T4 = 1, 2, 3, 4  # a lower id is an older transaction


def key(k: bytes) -> KeyLock:
    return KeyLock(k)


def granted(outcome: LockOutcome) -> bool:
    return outcome.granted and not outcome.victims


def queued(outcome: LockOutcome) -> bool:
    return not outcome.granted and not outcome.victims


def txns_of(requests: Iterable[LockRequest]) -> list[int]:
    return [req.txn for req in requests]


# --- compatibility -------------------------------------------------------------------------------


def test_shared_locks_are_compatible() -> None:
    locks = LockManager()
    assert granted(locks.request(T1, key(b"a"), S))
    assert granted(locks.request(T2, key(b"a"), S))
    assert locks.held_by(T1) == {key(b"a"): S}
    assert locks.held_by(T2) == {key(b"a"): S}


def test_shared_and_exclusive_conflict_both_ways() -> None:
    locks = LockManager()
    assert granted(locks.request(T1, key(b"a"), S))
    assert queued(locks.request(T2, key(b"a"), X))
    assert granted(locks.request(T3, key(b"b"), X))
    assert queued(locks.request(T4, key(b"b"), S))
    assert locks.waiting_count() == 2
    assert locks.held_by(T2) == {}
    assert locks.held_by(T4) == {}


def test_exclusive_locks_conflict() -> None:
    locks = LockManager()
    assert granted(locks.request(T1, key(b"a"), X))
    assert queued(locks.request(T2, key(b"a"), X))
    assert locks.held_by(T2) == {}


def test_locks_on_different_keys_do_not_conflict() -> None:
    locks = LockManager()
    assert granted(locks.request(T1, key(b"a"), X))
    assert granted(locks.request(T2, key(b"b"), X))


def test_requests_are_reentrant() -> None:
    locks = LockManager()
    assert granted(locks.request(T1, key(b"a"), S))
    assert granted(locks.request(T1, key(b"a"), S))
    assert granted(locks.request(T1, key(b"b"), X))
    assert granted(locks.request(T1, key(b"b"), X))
    # An exclusive lock covers a shared request; it is not weakened to shared.
    assert granted(locks.request(T1, key(b"b"), S))
    assert locks.held_by(T1) == {key(b"a"): S, key(b"b"): X}
    assert locks.holds(T1, key(b"b"), S)
    assert not locks.holds(T1, key(b"a"), X)


def test_sole_shared_holder_upgrades_to_exclusive() -> None:
    locks = LockManager()
    assert granted(locks.request(T1, key(b"a"), S))
    assert granted(locks.request(T1, key(b"a"), X))
    assert locks.held_by(T1) == {key(b"a"): X}
    assert queued(locks.request(T2, key(b"a"), S))


def test_upgrade_waits_for_the_other_shared_holders() -> None:
    locks = LockManager()
    assert granted(locks.request(T1, key(b"a"), S))
    assert granted(locks.request(T2, key(b"a"), S))
    assert queued(locks.request(T1, key(b"a"), X))
    assert txns_of(locks.release_all(T2)) == [T1]
    assert locks.held_by(T1) == {key(b"a"): X}


def test_upgrade_goes_ahead_of_earlier_waiters() -> None:
    locks = LockManager()
    assert granted(locks.request(T1, key(b"a"), S))
    assert queued(locks.request(T2, key(b"a"), X))
    # T1 is the only holder: its upgrade need not queue behind T2 (who waits for T1 anyway).
    assert granted(locks.request(T1, key(b"a"), X))
    assert locks.waiting_count() == 1


# --- FIFO ----------------------------------------------------------------------------------------


def test_reader_queues_behind_a_waiting_writer_so_writers_are_not_starved() -> None:
    locks = LockManager()
    assert granted(locks.request(T1, key(b"a"), S))
    assert queued(locks.request(T2, key(b"a"), X))
    # Only S is held, so T3's S would be compatible with the holders; it must still wait for T2.
    assert queued(locks.request(T3, key(b"a"), S))
    assert locks.held_by(T3) == {}

    assert txns_of(locks.release_all(T1)) == [T2]
    assert locks.held_by(T2) == {key(b"a"): X}
    assert locks.held_by(T3) == {}
    assert txns_of(locks.release_all(T2)) == [T3]
    assert locks.held_by(T3) == {key(b"a"): S}


def test_release_all_grants_waiters_in_arrival_order() -> None:
    locks = LockManager()
    assert granted(locks.request(T1, key(b"a"), X))
    assert queued(locks.request(T3, key(b"a"), S))
    assert queued(locks.request(T2, key(b"a"), S))
    assert queued(locks.request(T4, key(b"a"), X))

    # The two compatible readers come in together, in arrival order; the writer keeps waiting.
    assert txns_of(locks.release_all(T1)) == [T3, T2]
    assert locks.held_by(T4) == {}
    assert locks.release_all(T3) == []
    assert txns_of(locks.release_all(T2)) == [T4]
    assert locks.waiting_count() == 0


def test_a_waiter_on_another_resource_is_not_held_up_by_the_queue() -> None:
    locks = LockManager()
    assert granted(locks.request(T1, key(b"a"), X))
    assert queued(locks.request(T2, key(b"a"), X))
    assert granted(locks.request(T3, key(b"b"), X))


def test_release_all_drops_the_waiting_request_of_the_transaction() -> None:
    locks = LockManager()
    assert granted(locks.request(T1, key(b"a"), X))
    assert queued(locks.request(T2, key(b"a"), X))
    assert locks.release_all(T2) == []
    assert locks.waiting_count() == 0
    assert locks.release_all(T1) == []
    assert locks.held_by(T1) == {}


def test_early_release_frees_only_shared_locks() -> None:
    locks = LockManager()
    assert granted(locks.request(T1, key(b"a"), S))
    assert granted(locks.request(T1, key(b"b"), X))
    assert queued(locks.request(T2, key(b"a"), X))
    assert txns_of(locks.release(T1, key(b"a"))) == [T2]
    assert locks.release(T1, key(b"b")) == []  # exclusive locks are kept to the end
    assert locks.held_by(T1) == {key(b"b"): X}


# --- ranges --------------------------------------------------------------------------------------


def test_a_shared_range_lock_blocks_writes_inside_the_half_open_range_only() -> None:
    locks = LockManager()
    assert granted(locks.request(T1, RangeLock(b"p/", b"p0"), S))
    assert queued(locks.request(T2, key(b"p/"), X))  # lo is inside
    assert granted(locks.request(T3, key(b"p0"), X))  # hi is outside
    assert granted(locks.request(T4, key(b"o"), X))
    assert locks.held_by(T2) == {}


def test_a_key_inside_the_range_waits_and_proceeds_when_the_range_is_released() -> None:
    locks = LockManager()
    assert granted(locks.request(T1, RangeLock(b"p/", b"p0"), S))
    assert queued(locks.request(T2, key(b"p/x"), X))
    assert queued(locks.request(T3, key(b"p/x"), S))  # behind T2's waiting X (FIFO)
    assert txns_of(locks.release_all(T1)) == [T2]


def test_an_unbounded_range_covers_every_key_from_lo() -> None:
    locks = LockManager()
    assert granted(locks.request(T1, RangeLock(b"m", None), S))
    assert queued(locks.request(T2, key(b"\xff" * 8), X))
    assert queued(locks.request(T3, key(b"m"), X))
    assert granted(locks.request(T4, key(b"l\xff"), X))


def test_a_range_request_waits_for_an_exclusive_key_lock_inside_it() -> None:
    locks = LockManager()
    assert granted(locks.request(T1, key(b"p/x"), X))
    assert queued(locks.request(T2, RangeLock(b"p/", b"p0"), S))
    assert granted(locks.request(T3, RangeLock(b"q", None), S))
    assert granted(locks.request(T4, RangeLock(b"a", b"p/x"), S))  # hi excludes p/x
    assert txns_of(locks.release_all(T1)) == [T2]


def test_shared_range_locks_are_compatible_with_shared_key_locks() -> None:
    locks = LockManager()
    assert granted(locks.request(T1, key(b"p/x"), S))
    assert granted(locks.request(T2, RangeLock(b"p/", b"p0"), S))
    assert granted(locks.request(T3, RangeLock(b"p/a", None), S))


# --- the autocommit fast path (try_lock_key_exclusive) ----------------------------------------


def test_a_free_key_is_locked_exclusively_at_once_and_blocks_others_like_a_requested_lock() -> None:
    locks = LockManager()
    assert locks.try_lock_key_exclusive(T1, b"a")
    assert locks.held_by(T1) == {key(b"a"): X}
    assert queued(locks.request(T2, key(b"a"), S))
    assert queued(locks.request(T3, RangeLock(b"a", b"b"), S))
    assert granted(locks.request(T4, key(b"b"), X))
    assert txns_of(locks.release_all(T1)) == [T2, T3]
    assert locks.held_by(T1) == {}


def test_the_fast_path_refuses_a_key_someone_holds_or_a_range_covers_and_changes_nothing() -> None:
    locks = LockManager()
    assert granted(locks.request(T1, key(b"a"), S))
    assert granted(locks.request(T2, RangeLock(b"p/", b"p0"), S))
    for held_key in (b"a", b"p/", b"p/x"):
        assert not locks.try_lock_key_exclusive(T3, held_key), held_key
    assert locks.held_by(T3) == {}
    assert locks.waiting_count() == 0
    assert locks.try_lock_key_exclusive(T3, b"p0")  # hi is outside the range


def test_the_fast_path_does_not_jump_a_waiter_for_the_key_or_a_range_around_it() -> None:
    locks = LockManager()
    assert granted(locks.request(T1, key(b"p/a"), X))
    assert queued(locks.request(T2, RangeLock(b"p/", b"p0"), S))  # waits for T1's p/a
    # Nobody holds p/b, but T2 waits for a range that covers it: FIFO puts a writer behind T2.
    assert not locks.try_lock_key_exclusive(T3, b"p/b")
    assert queued(locks.request(T3, key(b"p/b"), X))
    assert locks.try_lock_key_exclusive(T4, b"q")
    assert txns_of(locks.release_all(T1)) == [T2]
    assert txns_of(locks.release_all(T2)) == [T3]


# --- cancel (lock timeout) -----------------------------------------------------------------------


def test_cancel_removes_a_waiter_and_lets_those_behind_it_proceed() -> None:
    locks = LockManager()
    assert granted(locks.request(T1, key(b"a"), S))
    writer = locks.request(T2, key(b"a"), X)
    assert queued(writer)
    assert queued(locks.request(T3, key(b"a"), S))

    # T2 times out: T3's S is compatible with T1's S and nothing is queued ahead of it any more.
    assert txns_of(locks.cancel(writer.request_id)) == [T3]
    assert locks.held_by(T2) == {}
    assert locks.held_by(T3) == {key(b"a"): S}
    assert locks.waiting_count() == 0


def test_cancel_of_a_request_no_longer_waiting_does_nothing() -> None:
    locks = LockManager()
    assert granted(locks.request(T1, key(b"a"), X))
    waiter = locks.request(T2, key(b"a"), X)
    assert txns_of(locks.release_all(T1)) == [T2]
    assert locks.cancel(waiter.request_id) == []
    assert locks.held_by(T2) == {key(b"a"): X}


# --- deadlocks -----------------------------------------------------------------------------------


def test_two_cycle_is_detected_when_it_closes_and_the_youngest_is_the_victim() -> None:
    locks = LockManager()
    assert granted(locks.request(T1, key(b"a"), X))
    assert granted(locks.request(T2, key(b"b"), X))
    assert queued(locks.request(T1, key(b"b"), X))
    closing = locks.request(T2, key(b"a"), X)

    assert not closing.granted
    assert [(v.request_id, v.txn) for v in closing.victims] == [(closing.request_id, T2)]
    assert locks.waiting_count() == 1  # T1 still waits, for T2 to abort
    assert txns_of(locks.release_all(T2)) == [T1]
    assert locks.held_by(T1) == {key(b"a"): X, key(b"b"): X}


def test_when_the_older_transaction_closes_the_cycle_the_younger_waiter_is_the_victim() -> None:
    locks = LockManager()
    assert granted(locks.request(T1, key(b"a"), X))
    assert granted(locks.request(T2, key(b"b"), X))
    younger_wait = locks.request(T2, key(b"a"), X)
    assert queued(younger_wait)
    closing = locks.request(T1, key(b"b"), X)

    assert not closing.granted
    assert [(v.request_id, v.txn) for v in closing.victims] == [(younger_wait.request_id, T2)]
    assert txns_of(locks.release_all(T2)) == [T1]


def test_shared_lock_upgrade_deadlock_is_detected() -> None:
    locks = LockManager()
    assert granted(locks.request(T1, key(b"a"), S))
    assert granted(locks.request(T2, key(b"a"), S))
    assert queued(locks.request(T1, key(b"a"), X))
    closing = locks.request(T2, key(b"a"), X)
    assert txns_of(closing.victims) == [T2]
    assert txns_of(locks.release_all(T2)) == [T1]
    assert locks.held_by(T1) == {key(b"a"): X}


def test_three_cycle_is_detected_when_it_closes() -> None:
    locks = LockManager()
    for txn, k in ((T1, b"a"), (T2, b"b"), (T3, b"c")):
        assert granted(locks.request(txn, key(k), X))
    assert queued(locks.request(T1, key(b"b"), X))
    assert queued(locks.request(T2, key(b"c"), X))
    closing = locks.request(T3, key(b"a"), X)
    assert [(v.request_id, v.txn) for v in closing.victims] == [(closing.request_id, T3)]
    # T3 aborts: T2 gets c, and once T2 ends T1 gets b.
    assert txns_of(locks.release_all(T3)) == [T2]
    assert txns_of(locks.release_all(T2)) == [T1]


def test_three_cycle_closed_by_the_oldest_picks_the_youngest_waiter() -> None:
    locks = LockManager()
    for txn, k in ((T1, b"a"), (T2, b"b"), (T3, b"c")):
        assert granted(locks.request(txn, key(k), X))
    youngest_wait = locks.request(T3, key(b"a"), X)
    assert queued(youngest_wait)
    assert queued(locks.request(T2, key(b"c"), X))
    closing = locks.request(T1, key(b"b"), X)
    assert not closing.granted
    assert [(v.request_id, v.txn) for v in closing.victims] == [(youngest_wait.request_id, T3)]
    assert txns_of(locks.release_all(T3)) == [T2]


def test_cycle_through_a_range_lock_is_detected() -> None:
    locks = LockManager()
    assert granted(locks.request(T1, RangeLock(b"p/", b"p0"), S))
    assert granted(locks.request(T2, RangeLock(b"p/", b"p0"), S))
    assert queued(locks.request(T1, key(b"p/a"), X))
    closing = locks.request(T2, key(b"p/b"), X)
    assert txns_of(closing.victims) == [T2]


def test_waiting_behind_a_chain_is_not_a_deadlock() -> None:
    locks = LockManager()
    assert granted(locks.request(T1, key(b"a"), X))
    assert granted(locks.request(T2, key(b"b"), X))
    assert granted(locks.request(T3, key(b"c"), X))
    # T3 -> T2 -> T1, and T4 queues behind all of them on a: a chain, no cycle.
    assert queued(locks.request(T2, key(b"a"), X))
    assert queued(locks.request(T3, key(b"b"), X))
    assert queued(locks.request(T4, key(b"a"), S))
    assert locks.waiting_count() == 3
    assert txns_of(locks.release_all(T1)) == [T2]
    assert txns_of(locks.release_all(T2)) == [T3, T4]


def test_a_request_that_closes_two_cycles_breaks_both() -> None:
    # T2 and T3 share a and each wait for T1; T1's request for a closes T1->T2->T1 and T1->T3->T1.
    # Aborting only T2 would leave T1 and T3 waiting for each other with no request left to find it.
    locks = LockManager()
    assert granted(locks.request(T1, key(b"b"), X))
    assert granted(locks.request(T1, key(b"c"), X))
    assert granted(locks.request(T2, key(b"a"), S))
    assert granted(locks.request(T3, key(b"a"), S))
    assert queued(locks.request(T2, key(b"b"), X))
    assert queued(locks.request(T3, key(b"c"), X))
    closing = locks.request(T1, key(b"a"), X)

    victims = txns_of(closing.victims)
    for txn in victims:  # what the store's driver does: each victim aborts
        locks.release_all(txn)
    # Every waiter that is left can make progress: none is still in a cycle (T1 <-> T3 here).
    assert locks.waiting_count() == 0, f"victims {victims} leave a deadlock nobody will detect"


# --- a model-checked state machine ---------------------------------------------------------------

KEYS = (b"a", b"b", b"c", b"d")
RESOURCES: tuple[Resource, ...] = (
    *(KeyLock(k) for k in KEYS),
    RangeLock(b"a", b"c"),
    RangeLock(b"b", None),
    RangeLock(b"c", b"d"),
)
TXNS = (T1, T2, T3, T4)


def overlap(a: Resource, b: Resource) -> bool:
    """The header's rule, restated: a resource is the set of KEYS it covers."""

    def covered(r: Resource) -> set[bytes]:
        if isinstance(r, KeyLock):
            return {r.key}
        return {k for k in KEYS if r.lo <= k and (r.hi is None or k < r.hi)}

    return bool(covered(a) & covered(b))


def conflict(a: Resource, ma: LockMode, b: Resource, mb: LockMode) -> bool:
    return overlap(a, b) and X in (ma, mb)


@dataclass(frozen=True)
class Waiting:
    request_id: int
    txn: int
    resource: Resource
    mode: LockMode


class LockManagerMachine(RuleBasedStateMachine):
    """Random requests, releases and timeouts; deadlock victims abort at once, as in the store."""

    def __init__(self) -> None:
        super().__init__()
        self.locks = LockManager()
        self.waiting: list[Waiting] = []  # the model's queue, in arrival order

    def waiting_txns(self) -> set[int]:
        return {w.txn for w in self.waiting}

    def blockers(self, w: Waiting) -> set[int]:
        """Whom `w` waits for, by the header's rules: conflicting holders, and conflicting earlier
        waiters unless `w` is an upgrade."""
        found = {
            txn
            for txn in TXNS
            if txn != w.txn
            for res, mode in self.locks.held_by(txn).items()
            if conflict(res, mode, w.resource, w.mode)
        }
        if w.resource not in self.locks.held_by(w.txn):
            for earlier in self.waiting[: self.waiting.index(w)]:
                if earlier.txn != w.txn and conflict(earlier.resource, earlier.mode, w.resource, w.mode):
                    found.add(earlier.txn)
        return found

    def reaches(self, src: int, dst: int) -> bool:
        seen: set[int] = set()
        todo = [src]
        while todo:
            txn = todo.pop()
            for w in self.waiting:
                if w.txn == txn:
                    for nxt in self.blockers(w) - seen:
                        if nxt == dst:
                            return True
                        seen.add(nxt)
                        todo.append(nxt)
        return False

    def granted(self, requests: list[LockRequest]) -> None:
        for req in requests:
            match = [w for w in self.waiting if w.request_id == req.request_id]
            assert len(match) == 1, f"granted {req} which was not waiting"
            self.waiting.remove(match[0])
            assert self.locks.holds(match[0].txn, match[0].resource, match[0].mode)

    def drop_waiting_of(self, txn: int) -> None:
        self.waiting = [w for w in self.waiting if w.txn != txn]

    @rule(txn=st.sampled_from(TXNS), resource=st.sampled_from(RESOURCES), mode=st.sampled_from((S, X)))
    def request(self, txn: int, resource: Resource, mode: LockMode) -> None:
        if txn in self.waiting_txns():
            return
        outcome = self.locks.request(txn, resource, mode)
        if outcome.granted:
            assert not outcome.victims
            assert self.locks.holds(txn, resource, mode)
            return
        new = Waiting(outcome.request_id, txn, resource, mode)
        self.waiting.append(new)
        assert self.blockers(new), f"{new} was queued although nothing blocks it"
        for victim in outcome.victims:
            assert victim.txn >= txn, "the victim is the youngest of a cycle through the requester"
            assert self.reaches(txn, victim.txn) and self.reaches(victim.txn, txn), (
                f"victim {victim.txn} is not on a cycle with {txn}"
            )
        for victim in outcome.victims:
            self.drop_waiting_of(victim.txn)
            self.granted(self.locks.release_all(victim.txn))

    @rule(txn=st.sampled_from(TXNS))
    def end(self, txn: int) -> None:
        self.drop_waiting_of(txn)
        self.granted(self.locks.release_all(txn))
        assert self.locks.held_by(txn) == {}

    @rule(txn=st.sampled_from(TXNS), k=st.sampled_from(KEYS))
    def autocommit_write(self, txn: int, k: bytes) -> None:
        """A transaction holding nothing takes the fast path: granted exactly when `request` would
        grant at once, that is when nothing overlapping the key is held or awaited."""
        if self.locks.held_by(txn) or txn in self.waiting_txns():
            return
        blocked = any(
            conflict(res, mode, key(k), X) for other in TXNS for res, mode in self.locks.held_by(other).items()
        ) or any(overlap(w.resource, key(k)) for w in self.waiting)
        assert self.locks.try_lock_key_exclusive(txn, k) is not blocked
        assert self.locks.held_by(txn) == ({} if blocked else {key(k): X})

    @precondition(lambda self: bool(self.waiting))
    @rule(data=st.data())
    def time_out(self, data: st.DataObject) -> None:
        w = data.draw(st.sampled_from(self.waiting))
        self.waiting.remove(w)
        self.granted(self.locks.cancel(w.request_id))
        assert not self.locks.holds(w.txn, w.resource, w.mode)

    @invariant()
    def no_two_transactions_hold_conflicting_locks(self) -> None:
        held = [(txn, res, mode) for txn in TXNS for res, mode in self.locks.held_by(txn).items()]
        for t, r, m in held:
            for u, q, n in held:
                assert t == u or not conflict(r, m, q, n), f"T{t} holds {m} {r} while T{u} holds {n} {q}"

    @invariant()
    def the_queue_matches_the_model(self) -> None:
        assert self.locks.waiting_count() == len(self.waiting)

    @invariant()
    def no_waiter_is_left_waiting_for_nothing(self) -> None:
        for w in self.waiting:
            assert self.blockers(w), f"{w} can be granted but still waits (a lost wakeup)"

    @invariant()
    def no_deadlock_survives(self) -> None:
        for w in self.waiting:
            assert not self.reaches(w.txn, w.txn), f"T{w.txn} is in an undetected wait-for cycle"


LockManagerMachine.TestCase.settings = settings(max_examples=300, stateful_step_count=40, deadline=None)
test_lock_manager_model = LockManagerMachine.TestCase
