"""Which anomalies each isolation level of the WAL store allows, and how it prevents the others.

Every scenario is a two-transaction script on a real WalStore (a tmp_path data dir), with both
transactions at the level under test. Steps are ordered with tasks, and "T2 waits for T1" is
observed on the lock manager (`waiting_count`), never by sleeping. The expected outcome of each
(anomaly, level) pair is data: the EXPECTED table below.
"""

import asyncio
import enum
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cluster.store import DeadlockDetected, Isolation, ScanPage, Transaction, TransactionAborted
from node.storage import WalStore

RU = Isolation.READ_UNCOMMITTED
RC = Isolation.READ_COMMITTED
RR = Isolation.REPEATABLE_READ
SER = Isolation.SERIALIZABLE
LEVELS = (RU, RC, RR, SER)


class Seen(enum.Enum):
    ANOMALY = "anomaly"  # the anomalous history happened: the level allows it
    WAITED = "waited"  # prevented: the conflicting step waited until the other transaction ended
    COMMITTED = "committed"  # prevented: the reader got the last committed value without waiting
    DEADLOCK = "deadlock"  # prevented: the younger transaction got DeadlockDetected; its retry is correct


A, W, C, D = Seen.ANOMALY, Seen.WAITED, Seen.COMMITTED, Seen.DEADLOCK

# Berenson et al., "A Critique of ANSI SQL Isolation Levels" (1995), Table 4, for the locking levels
# of node/storage/transaction.py's header (READ COMMITTED reads the committed state, as PostgreSQL):
# P0 dirty write, P1 dirty read, P2 fuzzy read, P3 phantom, P4 lost update, A5B write skew. Write
# skew through inserts into a range both read is a phantom (P3): only range locks stop it.
# fmt: off
#                            RU RC RR SER
EXPECTED: dict[str, tuple[Seen, Seen, Seen, Seen]] = {
    "dirty_write":           (W, W, W, W),  # P0: long exclusive locks at every level
    "dirty_read":            (A, C, W, W),  # P1: RC reads the committed state; RR's S lock waits
    "non_repeatable_read":   (A, A, W, W),  # P2: long shared locks from RR up
    "phantom":               (A, A, A, W),  # P3: range locks at SERIALIZABLE only
    "lost_update":           (A, A, D, D),  # P4: both S->X upgrades wait for each other
    "write_skew":            (A, A, D, D),  # A5B: each deletes a key the other S-locked
    "write_skew_on_inserts": (A, A, A, D),  # P3's form of A5B: each inserts into the other's range
}
# fmt: on

# The same table read as Berenson's "possible" entries: the levels at which each anomaly happens.
ALLOWED = {
    anomaly: {lvl for lvl, seen in zip(LEVELS, row, strict=True) if seen is A} for anomaly, row in EXPECTED.items()
}


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[WalStore]:
    opened = await WalStore.open(str(tmp_path / "data"))
    yield opened
    await opened.close()


async def until(condition: Callable[[], bool], what: str, timeout_s: float = 5.0) -> None:
    """Wait until `condition` holds, polling the event loop; fail naming what was awaited."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not condition():
        if loop.time() > deadline:
            pytest.fail(f"gave up after {timeout_s} s waiting until {what}")
        await asyncio.sleep(0.001)


@dataclass
class Step:
    task: "asyncio.Task[Any]"
    waited: bool  # the step was queued for a lock (it may have been granted later)

    def deadlocked(self) -> bool:
        return self.task.done() and isinstance(self.task.exception(), DeadlockDetected)


async def start(store: WalStore, step: Coroutine[Any, Any, Any], what: str) -> Step:
    """Run `step` until it finishes or queues for a lock."""
    waiting_before = store.locks.waiting_count()
    task = asyncio.create_task(step)
    await until(lambda: task.done() or store.locks.waiting_count() > waiting_before, f"{what} ends or waits")
    return Step(task, waited=not task.done())


def keys(page: ScanPage) -> list[bytes]:
    return [k for k, _ in page.items]


async def value(read: Awaitable[Any]) -> bytes | None:
    record = await read
    return None if record is None else bytes(record.value)


async def put_and_commit(tx: Transaction, key: bytes, val: bytes) -> None:
    await tx.put(key, val)
    await tx.commit()


# --- the scenarios: each returns what it saw, after checking the end state is consistent ---------


async def dirty_write(store: WalStore, level: Isolation) -> Seen:
    await store.put(b"x", b"committed")
    t1, t2 = store.begin(level), store.begin(level)
    await t1.put(b"x", b"t1")
    t2_write = await start(store, t2.put(b"x", b"t2"), "T2's write of x")
    await t1.rollback()
    await t2_write.task
    await t2.commit()
    assert await value(store.get(b"x")) == b"t2", "T1's rollback must not undo T2's write"
    return W if t2_write.waited else A


async def dirty_read(store: WalStore, level: Isolation) -> Seen:
    await store.put(b"x", b"committed")
    t1, t2 = store.begin(level), store.begin(level)
    await t1.put(b"x", b"uncommitted")
    read = await start(store, value(t2.get(b"x")), "T2's read of x")
    await t1.rollback()
    seen = await read.task
    await t2.commit()
    if seen == b"uncommitted":
        assert not read.waited
        return A
    assert seen == b"committed"
    return W if read.waited else C


async def non_repeatable_read(store: WalStore, level: Isolation) -> Seen:
    await store.put(b"x", b"1")
    t1, t2 = store.begin(level), store.begin(level)
    first = await value(t1.get(b"x"))
    write = await start(store, put_and_commit(t2, b"x", b"2"), "T2's write and commit of x")
    second = await value(t1.get(b"x"))
    await t1.commit()
    await write.task
    assert await value(store.get(b"x")) == b"2"
    if second != first:
        assert (first, second) == (b"1", b"2") and not write.waited
        return A
    assert write.waited, "T1 read the same value twice although T2 committed in between"
    return W


async def phantom(store: WalStore, level: Isolation) -> Seen:
    await store.put(b"p/a", b"1")
    await store.put(b"p/b", b"1")
    t1, t2 = store.begin(level), store.begin(level)
    first = keys(await t1.scan(b"p/"))
    insert = await start(store, put_and_commit(t2, b"p/c", b"new"), "T2's insert into T1's scanned range")
    second = keys(await t1.scan(b"p/"))
    await t1.commit()
    await insert.task
    assert first == [b"p/a", b"p/b"]
    assert keys(await store.scan(b"p/")) == [b"p/a", b"p/b", b"p/c"]
    if second != first:
        assert second == [b"p/a", b"p/b", b"p/c"] and not insert.waited
        return A
    assert insert.waited
    return W


COUNTER = b"counter"


async def increment(store: WalStore, level: Isolation) -> None:
    async with store.transaction(level) as tx:
        seen = await value(tx.get(COUNTER))
        assert seen is not None
        await tx.put(COUNTER, b"%d" % (int(seen) + 1))


async def lost_update(store: WalStore, level: Isolation) -> Seen:
    await store.put(COUNTER, b"0")
    t1, t2 = store.begin(level), store.begin(level)
    seen1, seen2 = await value(t1.get(COUNTER)), await value(t2.get(COUNTER))
    assert seen1 == seen2 == b"0"
    w1 = await start(store, t1.put(COUNTER, b"1"), "T1's write of counter")
    w2 = await start(store, t2.put(COUNTER, b"1"), "T2's write of counter")
    if w2.deadlocked():
        # T1 waits to upgrade its S lock while T2 holds S; T2's upgrade closes the cycle.
        assert w1.waited
        await w1.task
        await t1.commit()
        with pytest.raises(TransactionAborted):
            await t2.get(COUNTER)
        await increment(store, level)  # the application retries T2
        assert await value(store.get(COUNTER)) == b"2"
        return D
    assert not w1.waited and w2.waited  # T2's write waits for T1's exclusive lock, then overwrites
    await t1.commit()
    await w2.task
    await t2.commit()
    assert await value(store.get(COUNTER)) == b"1"
    return A


ONCALL = b"oncall/"
ALICE, BOB = ONCALL + b"alice", ONCALL + b"bob"


async def go_off_call(store: WalStore, level: Isolation, doctor: bytes) -> None:
    """The rule: a doctor may leave only while another one stays on call."""
    async with store.transaction(level) as tx:
        if len((await tx.scan(ONCALL)).items) >= 2:
            await tx.delete(doctor)


async def write_skew(store: WalStore, level: Isolation) -> Seen:
    await store.put(ALICE, b"on call")
    await store.put(BOB, b"on call")
    t1, t2 = store.begin(level), store.begin(level)
    assert len((await t1.scan(ONCALL)).items) == 2
    assert len((await t2.scan(ONCALL)).items) == 2
    d1 = await start(store, t1.delete(ALICE), "T1's delete of alice")
    d2 = await start(store, t2.delete(BOB), "T2's delete of bob")
    if d2.deadlocked():
        assert d1.waited
        assert await d1.task
        await t1.commit()
        await go_off_call(store, level, BOB)  # the retry sees that bob is the last one
        assert keys(await store.scan(ONCALL)) == [BOB]
        return D
    assert not d1.waited and not d2.waited
    assert await d1.task and await d2.task
    await t1.commit()
    await t2.commit()
    assert keys(await store.scan(ONCALL)) == []
    return A


SHIFT = b"shift/monday/"


async def sign_up(store: WalStore, level: Isolation, volunteer: bytes) -> None:
    """The rule: at most one volunteer per shift."""
    async with store.transaction(level) as tx:
        if not (await tx.scan(SHIFT)).items:
            await tx.put(SHIFT + volunteer, b"yes")


async def write_skew_on_inserts(store: WalStore, level: Isolation) -> Seen:
    t1, t2 = store.begin(level), store.begin(level)
    assert keys(await t1.scan(SHIFT)) == []
    assert keys(await t2.scan(SHIFT)) == []
    i1 = await start(store, t1.put(SHIFT + b"alice", b"yes"), "T1's insert")
    i2 = await start(store, t2.put(SHIFT + b"bob", b"yes"), "T2's insert")
    if i2.deadlocked():
        assert i1.waited
        await i1.task
        await t1.commit()
        await sign_up(store, level, b"bob")  # the retry sees alice already signed up
        assert keys(await store.scan(SHIFT)) == [SHIFT + b"alice"]
        return D
    assert not i1.waited and not i2.waited
    await i1.task
    await i2.task
    await t1.commit()
    await t2.commit()
    assert keys(await store.scan(SHIFT)) == [SHIFT + b"alice", SHIFT + b"bob"]
    return A


SCENARIOS: dict[str, Callable[[WalStore, Isolation], Awaitable[Seen]]] = {
    "dirty_write": dirty_write,
    "dirty_read": dirty_read,
    "non_repeatable_read": non_repeatable_read,
    "phantom": phantom,
    "lost_update": lost_update,
    "write_skew": write_skew,
    "write_skew_on_inserts": write_skew_on_inserts,
}


@pytest.mark.parametrize("level", LEVELS, ids=lambda lvl: lvl.name)
@pytest.mark.parametrize("anomaly", list(EXPECTED))
async def test_isolation_level_allows_or_prevents_anomaly(store: WalStore, anomaly: str, level: Isolation) -> None:
    expected = EXPECTED[anomaly][LEVELS.index(level)]
    seen = await SCENARIOS[anomaly](store, level)
    assert seen is expected, f"{anomaly} at {level.name}: expected {expected.value}, saw {seen.value}"
    assert store.locks.waiting_count() == 0


def test_each_level_allows_a_subset_of_what_the_weaker_levels_allow() -> None:
    assert set(SCENARIOS) == set(EXPECTED)
    for anomaly, allowed in ALLOWED.items():
        assert allowed == set(LEVELS[: len(allowed)]), f"{anomaly}: allowed at {allowed}, not a prefix"


# --- a scan that waits for a lock while the committed state changes under it --------------------


@pytest.mark.parametrize("change", ["delete_waited_key", "insert_after_waited_key"])
async def test_repeatable_read_scan_that_waits_for_a_lock_still_returns_every_untouched_key(
    store: WalStore, change: str
) -> None:
    for k in (b"p/a", b"p/b", b"p/c"):
        await store.put(k, b"v")
    writer = store.begin(RC)
    if change == "delete_waited_key":
        await writer.delete(b"p/a")
        expected_keys = [b"p/b", b"p/c"]
    else:
        await writer.put(b"p/a", b"v2")
        await writer.put(b"p/a0", b"new")
        expected_keys = [b"p/a", b"p/b", b"p/c"]
    reader = store.begin(RR)
    scan = await start(store, reader.scan(b"p/"), "the reader's scan")
    assert scan.waited  # for the writer's exclusive lock on p/a
    await writer.commit()
    page = await scan.task
    await reader.commit()
    # p/b and p/c were committed before either transaction began and nobody touched them; p/a0 is a
    # phantom, which REPEATABLE READ may or may not show.
    assert [k for k in keys(page) if k != b"p/a0"] == expected_keys
