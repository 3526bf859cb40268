"""Deadlocks, lock timeouts, lock release and savepoints on a real WalStore.

A deadlock must be broken when it forms, not by the lock timeout: the stores here wait 60 s for a
lock while every test gives up after 5 s, so a DeadlockDetected can only come from detection.
"""

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from cluster.store import (
    DeadlockDetected,
    Isolation,
    LockTimeout,
    StoreFailed,
    Transaction,
    TransactionAborted,
)
from node.storage import StoreConfig, WalStore
from node.storage.disk import SimDisk
from node.storage.locks import KeyLock

A, B, C, D = b"a", b"b", b"c", b"d"
NO_LOCK_TIMEOUT = StoreConfig(lock_timeout_ms=60_000)
TEST_TIMEOUT_S = 5  # far below the 60 s lock timeout above


@asynccontextmanager
async def opened(tmp_path: Path, config: StoreConfig = NO_LOCK_TIMEOUT) -> AsyncIterator[WalStore]:
    store = await WalStore.open(str(tmp_path / "data"), config)
    try:
        yield store
    finally:
        await store.close()


async def until(condition: Callable[[], bool], what: str, timeout_s: float = 5.0) -> None:
    """Wait until `condition` holds, polling the event loop; fail naming what was awaited."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not condition():
        if loop.time() > deadline:
            pytest.fail(f"gave up after {timeout_s} s waiting until {what}")
        await asyncio.sleep(0.001)


async def start_waiting(store: WalStore, step: Coroutine[Any, Any, Any], what: str) -> "asyncio.Task[Any]":
    """Start `step` and return once it is queued for a lock."""
    waiting_before = store.locks.waiting_count()
    task = asyncio.create_task(step)
    await until(lambda: store.locks.waiting_count() > waiting_before, f"{what} waits for a lock")
    assert not task.done()
    return task


async def value(store: WalStore, key: bytes) -> bytes | None:
    record = await store.get(key)
    return None if record is None else record.value


async def tx_value(tx: Transaction, key: bytes) -> bytes | None:
    record = await tx.get(key)
    return None if record is None else record.value


def assert_no_locks(store: WalStore, *txn_ids: int) -> None:
    for txn_id in txn_ids:
        assert store.locks.held_by(txn_id) == {}, f"transaction {txn_id} still holds locks"
    assert store.locks.waiting_count() == 0


# --- deadlocks -----------------------------------------------------------------------------------


@pytest.mark.parametrize("closed_by", ["younger", "older"])
async def test_opposite_lock_order_aborts_the_younger_at_once_and_the_older_commits(
    tmp_path: Path, closed_by: str
) -> None:
    async with opened(tmp_path) as store, asyncio.timeout(TEST_TIMEOUT_S):
        older, younger = store.begin(), store.begin()
        assert older.txn_id < younger.txn_id
        await older.put(A, b"older")
        await younger.put(B, b"younger")
        if closed_by == "younger":
            older_step = await start_waiting(store, older.put(B, b"older"), "the older's write of b")
            with pytest.raises(DeadlockDetected):
                await younger.put(A, b"younger")
        else:
            younger_step = await start_waiting(store, younger.put(A, b"younger"), "the younger's write of a")
            older_step = asyncio.create_task(older.put(B, b"older"))
            with pytest.raises(DeadlockDetected):
                await younger_step
        await older_step
        await older.commit()

        assert store.stats.deadlocks == 1
        assert store.stats.lock_timeouts == 0
        assert (await value(store, A), await value(store, B)) == (b"older", b"older")
        with pytest.raises(TransactionAborted):
            await younger.put(C, b"younger")
        assert_no_locks(store, older.txn_id, younger.txn_id)


async def test_three_transactions_in_a_cycle_lose_only_the_youngest(tmp_path: Path) -> None:
    async with opened(tmp_path) as store, asyncio.timeout(TEST_TIMEOUT_S):
        t1, t2, t3 = store.begin(), store.begin(), store.begin()
        for tx, key in ((t1, A), (t2, B), (t3, C)):
            await tx.put(key, b"%d" % tx.txn_id)
        w1 = await start_waiting(store, t1.put(B, b"1"), "T1's write of b")
        w2 = await start_waiting(store, t2.put(C, b"2"), "T2's write of c")
        with pytest.raises(DeadlockDetected):
            await t3.put(A, b"3")
        await w2
        await t2.commit()
        await w1
        await t1.commit()
        assert [await value(store, k) for k in (A, B, C)] == [b"1", b"1", b"2"]
        assert_no_locks(store, t1.txn_id, t2.txn_id, t3.txn_id)


async def test_a_request_closing_two_cycles_at_once_leaves_no_deadlock_behind(tmp_path: Path) -> None:
    # T2 and T3 share a (S) and each wait for T1; T1's write of a then waits for both of them.
    async with opened(tmp_path) as store, asyncio.timeout(TEST_TIMEOUT_S):
        t1, t2, t3 = store.begin(), store.begin(), store.begin()
        await t1.put(B, b"1")
        await t1.put(C, b"1")
        assert await t2.get(A) is None and await t3.get(A) is None
        w2 = await start_waiting(store, t2.put(B, b"2"), "T2's write of b")
        w3 = await start_waiting(store, t3.put(C, b"3"), "T3's write of c")
        w1 = asyncio.create_task(t1.put(A, b"1"))
        try:
            await until(w1.done, "T1's write of a, once the cycles with T2 and with T3 are both broken", 2)
            await w1
            await t1.commit()
            for victim in (w2, w3):
                with pytest.raises(DeadlockDetected):
                    await victim
        finally:
            for task in (w1, w2, w3):
                task.cancel()
            await asyncio.gather(w1, w2, w3, return_exceptions=True)
        assert [await value(store, k) for k in (A, B, C)] == [b"1", b"1", b"1"]


# --- lock timeouts -------------------------------------------------------------------------------


async def test_lock_timeout_aborts_the_waiter_and_the_holder_goes_on(tmp_path: Path) -> None:
    async with opened(tmp_path, StoreConfig(lock_timeout_ms=100)) as store:
        holder, waiter = store.begin(), store.begin()
        await holder.put(A, b"holder")
        await waiter.put(B, b"waiter")
        with pytest.raises(LockTimeout):
            await waiter.put(A, b"waiter")
        assert store.locks.held_by(waiter.txn_id) == {}
        with pytest.raises(TransactionAborted):
            await waiter.get(B)
        with pytest.raises(TransactionAborted):
            await waiter.commit()

        await holder.put(C, b"holder")
        await holder.commit()
        assert [await value(store, k) for k in (A, B, C)] == [b"holder", None, b"holder"]
        assert store.stats.lock_timeouts == 1
        assert store.stats.deadlocks == 0
        assert_no_locks(store, holder.txn_id, waiter.txn_id)


# --- releasing locks -----------------------------------------------------------------------------


@pytest.mark.parametrize("end", ["commit", "rollback", "read_only_commit"])
async def test_every_lock_is_released_when_the_transaction_ends_and_waiters_proceed(tmp_path: Path, end: str) -> None:
    async with opened(tmp_path) as store, asyncio.timeout(TEST_TIMEOUT_S):
        await store.put(A, b"0")
        tx = store.begin(Isolation.SERIALIZABLE)
        await tx.get(A)
        await tx.scan(b"")
        if end != "read_only_commit":
            await tx.put(B, b"1")
        assert store.locks.held_by(tx.txn_id)
        writer = await start_waiting(store, store.put(A, b"2"), "an autocommit write of a")
        if end == "rollback":
            await tx.rollback()
        else:
            await tx.commit()
        await writer
        assert await value(store, A) == b"2"
        assert await value(store, B) == (b"1" if end == "commit" else None)
        assert_no_locks(store, tx.txn_id)


async def test_an_error_inside_the_transaction_block_rolls_back_and_releases_every_lock(tmp_path: Path) -> None:
    async with opened(tmp_path) as store:
        txn_ids = []
        with pytest.raises(LookupError, match="the application failed"):
            async with store.transaction() as tx:
                await tx.get(A)
                await tx.put(B, b"1")
                assert store.locks.held_by(tx.txn_id)
                txn_ids.append(tx.txn_id)
                raise LookupError("the application failed")
        assert await value(store, B) is None
        assert_no_locks(store, *txn_ids)


async def test_a_commit_the_log_refuses_still_releases_its_locks_and_dirty_writes() -> None:
    disk = SimDisk()
    store = await WalStore.open("/sim/data", disk=disk)
    try:
        first, second = store.begin(), store.begin()
        await first.put(A, b"1")
        await second.put(B, b"2")
        disk.fail_next_sync = True
        with pytest.raises(StoreFailed):
            await first.commit()  # the fsync fails: the log refuses every later write
        assert_no_locks(store, first.txn_id)
        with pytest.raises(StoreFailed):
            await second.commit()  # refused before anything reached the log: it did not happen
        assert store.locks.held_by(second.txn_id) == {}, "a refused commit keeps its locks forever"
        async with store.transaction(Isolation.READ_UNCOMMITTED) as reader:
            assert await reader.get(B) is None, "a refused commit stays visible as a dirty write"
    finally:
        await store.close()


# --- savepoints ----------------------------------------------------------------------------------


async def test_rollback_to_savepoint_undoes_later_writes_and_commits_the_rest_as_one_record(
    tmp_path: Path,
) -> None:
    async with opened(tmp_path) as store:
        await store.put(A, b"a0")
        await store.put(C, b"c0")
        commits_before = store.wal.stats.commits

        tx = store.begin()
        await tx.put(A, b"a1")
        await tx.savepoint("sp")
        await tx.put(B, b"b1")
        await tx.put(A, b"a2")
        assert await tx.delete(C)
        await tx.rollback_to("sp")

        assert [await tx_value(tx, k) for k in (A, B, C)] == [b"a1", None, b"c0"]
        # Locks taken after the savepoint are kept until the end (as PostgreSQL and InnoDB do).
        assert KeyLock(B) in store.locks.held_by(tx.txn_id)
        await tx.put(D, b"d1")
        lsn = await tx.commit()
        assert lsn is not None

        assert store.wal.stats.commits == commits_before + 1
        a, b, c, d = [await store.get(k) for k in (A, B, C, D)]
        assert a is not None and (a.value, a.version) == (b"a1", lsn)
        assert b is None
        assert c is not None and c.value == b"c0" and c.version < lsn
        assert d is not None and (d.value, d.version) == (b"d1", lsn)
        assert_no_locks(store, tx.txn_id)
