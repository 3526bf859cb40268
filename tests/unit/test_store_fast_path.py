"""The store's autocommit operations (get, put, delete) against locking transactions.

`get` reads the committed state with no transaction, and `put`/`delete` take the key's exclusive
lock without the general lock path when it is free (node/storage/store.py). These tests pin what
that must not change: a write in flight is invisible to `get` and blocks locking readers until it
is applied, and a write waits for every transaction that holds a shared lock on its key or on a
range around it. A write is kept in flight by a disk whose fsync waits at a gate; "X waits" is
observed on the lock manager (`waiting_count`), never by sleeping.
"""

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any

import pytest
from gated_disk import GATE_TIMEOUT_S, GatedDisk

from cluster.store import Isolation, Transaction
from node.storage import StoreConfig, WalStore

RU, RR, SER = Isolation.READ_UNCOMMITTED, Isolation.REPEATABLE_READ, Isolation.SERIALIZABLE
K = b"k"
NO_LOCK_TIMEOUT = StoreConfig(lock_timeout_ms=60_000)  # a wait can only end by the other's end


@asynccontextmanager
async def opened() -> AsyncIterator[tuple[WalStore, GatedDisk]]:
    disk = GatedDisk()
    store = await WalStore.open("/sim/data", NO_LOCK_TIMEOUT, disk)
    try:
        async with asyncio.timeout(GATE_TIMEOUT_S / 2):
            yield store, disk
    finally:
        disk.sync_gate.set()
        await store.close()


async def until(condition: Callable[[], bool], what: str, timeout_s: float = 5.0) -> None:
    """Wait until `condition` holds, polling the event loop; fail naming what was awaited."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not condition():
        if loop.time() > deadline:
            pytest.fail(f"gave up after {timeout_s} s waiting until {what}")
        await asyncio.sleep(0.001)


async def in_flight(store: WalStore, disk: GatedDisk, write: Coroutine[Any, Any, Any]) -> "asyncio.Task[Any]":
    """Start an autocommit write and return once its record waits for the fsync."""
    disk.hold_syncs()
    task = asyncio.create_task(write)
    await until(disk.sync_reached.is_set, "the write's record reaches the fsync")
    assert not task.done()
    return task


async def start_waiting(store: WalStore, step: Coroutine[Any, Any, Any], what: str) -> "asyncio.Task[Any]":
    """Start `step` and return once it is queued for a lock."""
    waiting_before = store.locks.waiting_count()
    task = asyncio.create_task(step)
    await until(lambda: task.done() or store.locks.waiting_count() > waiting_before, f"{what} ends or waits")
    assert not task.done(), f"{what} did not wait for a lock"
    return task


async def value(store: WalStore, key: bytes) -> bytes | None:
    record = await store.get(key)
    return None if record is None else record.value


async def tx_value(tx: Transaction, key: bytes) -> bytes | None:
    record = await tx.get(key)
    return None if record is None else record.value


def assert_idle(store: WalStore) -> None:
    assert store.locks.waiting_count() == 0
    assert store.locks.held_count() == 0, "a lock outlived its owner"
    assert store.dirty == {}


def write_of(store: WalStore, op: str, key: bytes, val: bytes) -> Coroutine[Any, Any, Any]:
    return store.put(key, val) if op == "put" else store.delete(key)


# --- a write in flight ---------------------------------------------------------------------------


@pytest.mark.parametrize("op", ["put", "delete"])
async def test_get_never_sees_a_write_before_it_is_durable_and_applied(op: str) -> None:
    async with opened() as (store, disk):
        await store.put(K, b"old")
        write = await in_flight(store, disk, write_of(store, op, K, b"new"))
        assert await value(store, K) == b"old", "get saw a write that a crash could take back"
        async with store.transaction(RU) as dirty_reader:  # READ UNCOMMITTED may see it, and does
            assert await tx_value(dirty_reader, K) == (b"new" if op == "put" else None)
        disk.sync_gate.set()
        await write
        assert await value(store, K) == (b"new" if op == "put" else None)
        assert_idle(store)


@pytest.mark.parametrize("level", [RR, SER], ids=lambda lvl: lvl.name)
async def test_a_locking_read_waits_for_a_write_in_flight_and_sees_it(level: Isolation) -> None:
    async with opened() as (store, disk):
        await store.put(K, b"old")
        write = await in_flight(store, disk, store.put(K, b"new"))
        reader = store.begin(level)
        read = await start_waiting(store, tx_value(reader, K), "the reader's get")
        disk.sync_gate.set()
        version = await write
        assert await read == b"new"
        record = await reader.get(K)
        assert record is not None and record.version == version
        await reader.commit()
        assert_idle(store)


# --- a write waits for the transactions that read its key ----------------------------------------


@pytest.mark.parametrize("end", ["commit", "rollback"])
@pytest.mark.parametrize("op", ["put", "delete"])
@pytest.mark.parametrize("level", [RR, SER], ids=lambda lvl: lvl.name)
async def test_a_write_waits_until_a_transaction_that_read_the_key_ends(level: Isolation, op: str, end: str) -> None:
    async with opened() as (store, _):
        await store.put(K, b"old")
        reader = store.begin(level)
        assert await tx_value(reader, K) == b"old"
        write = await start_waiting(store, write_of(store, op, K, b"new"), f"an autocommit {op}")
        assert await tx_value(reader, K) == b"old", "the read did not repeat"
        assert await value(store, K) == b"old"
        await (reader.commit() if end == "commit" else reader.rollback())
        await write
        assert await value(store, K) == (b"new" if op == "put" else None)
        assert_idle(store)


async def test_a_write_into_a_range_a_serializable_scan_read_waits_and_others_do_not() -> None:
    async with opened() as (store, _):
        await store.put(b"p/a", b"1")
        reader = store.begin(SER)
        first = await reader.scan(b"p/")
        insert = await start_waiting(store, store.put(b"p/b", b"phantom"), "an insert into the range")
        delete = await start_waiting(store, store.delete(b"p/a"), "a delete in the range")
        await store.put(b"q", b"outside")  # not covered: it goes ahead while the others wait
        assert (await reader.scan(b"p/")).items == first.items, "the scan saw a phantom"
        await reader.commit()
        await insert
        assert await delete is True
        assert [k for k, _ in (await store.scan(b"p/")).items] == [b"p/b"]
        assert_idle(store)


# --- writes queue behind earlier waiters ---------------------------------------------------------


async def test_a_write_of_a_free_key_queues_behind_a_waiting_scan_that_covers_it() -> None:
    async with opened() as (store, disk):
        held = await in_flight(store, disk, store.put(b"p/a", b"1"))  # holds p/a until applied
        reader = store.begin(SER)
        scan = await start_waiting(store, reader.scan(b"p/"), "a serializable scan")
        # Nobody holds p/b, but the scan waits for a range that covers it: first come, first served.
        write = await start_waiting(store, store.put(b"p/b", b"2"), "a write of p/b")
        disk.sync_gate.set()
        await held
        assert [k for k, _ in (await scan).items] == [b"p/a"]
        assert not write.done()
        await reader.commit()
        await write
        assert [k for k, _ in (await store.scan(b"p/")).items] == [b"p/a", b"p/b"]
        assert_idle(store)


async def test_concurrent_writes_of_one_key_commit_one_after_the_other_in_arrival_order() -> None:
    async with opened() as (store, disk):
        first = await in_flight(store, disk, store.put(K, b"1"))
        second = await start_waiting(store, store.put(K, b"2"), "a second write of the key")
        third = await start_waiting(store, store.delete(K), "a delete of the key")
        disk.sync_gate.set()
        v1, v2, existed = await asyncio.gather(first, second, third)
        assert v1 < v2 and existed is True
        assert await value(store, K) is None
        assert_idle(store)


async def test_a_cancelled_write_waiting_for_a_lock_leaves_no_lock_or_waiter_behind() -> None:
    async with opened() as (store, _):
        reader = store.begin(SER)
        await reader.get(K)
        write = await start_waiting(store, store.put(K, b"never"), "a write of the key")
        write.cancel()
        with pytest.raises(asyncio.CancelledError):
            await write
        assert store.locks.waiting_count() == 0
        await reader.commit()
        assert await value(store, K) is None
        assert_idle(store)
