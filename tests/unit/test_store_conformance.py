"""One conformance suite for every Store implementation (riak_kv_backend's backend_eqc idea).

Each test runs against the in-memory reference store and the WAL store.
"""

from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path

import pytest

from cluster.limits import STORE_LIMITS, StoreLimits
from cluster.memory_store import MemoryStore
from cluster.store import (
    InvalidArgument,
    LimitExceeded,
    SavepointNotFound,
    Store,
    TransactionClosed,
    prefix_end,
)
from node.storage import StoreConfig, WalStore

StoreFactory = Callable[[StoreLimits], "object"]


@pytest.fixture(params=["memory", "wal"])
async def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Callable[..., object]]:
    opened: list[Store] = []

    async def factory(limits: StoreLimits = STORE_LIMITS) -> Store:
        store: Store
        if request.param == "memory":
            store = MemoryStore(limits)
        else:
            store = await WalStore.open(str(tmp_path / f"data{len(opened)}"), StoreConfig(limits=limits))
        opened.append(store)
        return store

    yield factory
    for store in opened:
        await store.close()


@pytest.fixture
async def store(make_store: Callable[..., object]) -> Store:
    got = await make_store()  # type: ignore[misc]
    return got  # type: ignore[no-any-return]


async def test_put_then_get_returns_value_content_type_and_meta(store: Store) -> None:
    v1 = await store.put(b"k", b"value", "text/plain", b"meta")
    got = await store.get(b"k")
    assert got is not None
    assert (got.value, got.content_type, got.meta, got.version) == (b"value", "text/plain", b"meta", v1)
    v2 = await store.put(b"k", b"other")
    assert v2 > v1
    again = await store.get(b"k")
    assert again is not None and again.value == b"other" and again.version == v2


async def test_missing_key_reads_none(store: Store) -> None:
    assert await store.get(b"absent") is None


async def test_delete_reports_whether_the_key_existed(store: Store) -> None:
    await store.put(b"k", b"v")
    assert await store.delete(b"k") is True
    assert await store.get(b"k") is None
    assert await store.delete(b"k") is False


async def test_scan_is_ordered_prefixed_and_paginated(store: Store) -> None:
    for key in [b"b/3", b"a/1", b"b/1", b"c/1", b"b/2", b"b/4", b"b/5"]:
        await store.put(key, key)
    keys: list[bytes] = []
    after = None
    pages = 0
    while True:
        page = await store.scan(b"b/", after=after, limit=2)
        pages += 1
        keys += [k for k, _ in page.items]
        assert len(page.items) <= 2
        if page.cursor is None:
            break
        after = page.cursor
    assert keys == [b"b/1", b"b/2", b"b/3", b"b/4", b"b/5"]
    assert pages >= 3
    everything = await store.scan(limit=100)
    assert [k for k, _ in everything.items] == [b"a/1", b"b/1", b"b/2", b"b/3", b"b/4", b"b/5", b"c/1"]
    assert everything.cursor is None


async def test_scan_limit_is_bounded(store: Store) -> None:
    with pytest.raises(InvalidArgument):
        await store.scan(limit=0)
    with pytest.raises(LimitExceeded):
        await store.scan(limit=STORE_LIMITS.scan_page_max + 1)


@pytest.mark.parametrize(
    ("key", "value", "meta", "error"),
    [
        (b"", b"v", b"", InvalidArgument),
        (b"k" * (STORE_LIMITS.key_bytes_max + 1), b"v", b"", LimitExceeded),
        (b"k", b"v" * (STORE_LIMITS.value_bytes_max + 1), b"", LimitExceeded),
        (b"k", b"v", b"m" * (STORE_LIMITS.meta_bytes_max + 1), LimitExceeded),
        ("text-key", b"v", b"", InvalidArgument),
    ],
)
async def test_limits_and_bad_arguments_are_rejected_and_nothing_is_written(
    store: Store, key: bytes, value: bytes, meta: bytes, error: type[Exception]
) -> None:
    with pytest.raises(error) as info:
        await store.put(key, value, meta=meta)
    assert str(info.value)  # the error names the problem
    assert (await store.scan()).items == []


async def test_limit_at_the_boundary_is_accepted(store: Store) -> None:
    key = b"k" * STORE_LIMITS.key_bytes_max
    await store.put(key, b"v" * STORE_LIMITS.value_bytes_max)
    got = await store.get(key)
    assert got is not None and len(got.value) == STORE_LIMITS.value_bytes_max


async def test_transaction_commits_all_writes_together(store: Store) -> None:
    await store.put(b"gone", b"x")
    async with store.transaction() as tx:
        await tx.put(b"a", b"1")
        await tx.put(b"b", b"2")
        assert await tx.delete(b"gone") is True
        assert (await tx.get(b"a")) is not None  # reads its own writes
        assert await tx.get(b"gone") is None
        page = await tx.scan()
        assert [k for k, _ in page.items] == [b"a", b"b"]
    a, b = await store.get(b"a"), await store.get(b"b")
    assert a is not None and b is not None and a.version == b.version  # one commit
    assert await store.get(b"gone") is None


async def test_rollback_and_error_leave_nothing_behind(store: Store) -> None:
    async with store.transaction() as tx:
        await tx.put(b"a", b"1")
        await tx.rollback()
    with pytest.raises(RuntimeError):
        async with store.transaction() as tx:
            await tx.put(b"b", b"1")
            raise RuntimeError("application error")
    assert (await store.scan()).items == []


async def test_savepoint_rollback_undoes_only_later_writes(store: Store) -> None:
    await store.put(b"x", b"old")
    async with store.transaction() as tx:
        await tx.put(b"a", b"1")
        await tx.savepoint("s1")
        await tx.put(b"b", b"2")
        await tx.put(b"a", b"changed")
        await tx.delete(b"x")
        await tx.savepoint("s2")
        await tx.put(b"c", b"3")
        await tx.rollback_to("s1")
        with pytest.raises(SavepointNotFound):
            await tx.rollback_to("s2")  # later savepoints go with the rollback
        a = await tx.get(b"a")
        assert a is not None and a.value == b"1"
        assert await tx.get(b"b") is None
        x = await tx.get(b"x")
        assert x is not None and x.value == b"old"
    assert [k for k, _ in (await store.scan()).items] == [b"a", b"x"]


async def test_unknown_savepoint_is_an_error(store: Store) -> None:
    async with store.transaction() as tx:
        with pytest.raises(SavepointNotFound):
            await tx.rollback_to("nope")


async def test_a_finished_transaction_refuses_further_use(store: Store) -> None:
    async with store.transaction() as tx:
        await tx.put(b"a", b"1")
        lsn = await tx.commit()
        assert lsn is not None
        with pytest.raises(TransactionClosed):
            await tx.put(b"b", b"2")


async def test_read_only_transaction_commits_nothing(store: Store) -> None:
    async with store.transaction() as tx:
        await tx.get(b"a")
        assert await tx.commit() is None


async def test_transaction_size_limits(make_store: Callable[..., object]) -> None:
    small = replace(STORE_LIMITS, transaction_ops_max=3, transaction_bytes_max=STORE_LIMITS.value_bytes_max * 2)
    store: Store = await make_store(small)  # type: ignore[misc]
    with pytest.raises(LimitExceeded):
        async with store.transaction() as tx:
            for i in range(4):
                await tx.put(b"k%d" % i, b"v")
    with pytest.raises(LimitExceeded):
        async with store.transaction() as tx:
            for i in range(3):
                await tx.put(b"big%d" % i, b"v" * STORE_LIMITS.value_bytes_max)
    assert (await store.scan()).items == []


@pytest.mark.parametrize(
    ("prefix", "end"),
    [(b"", None), (b"a", b"b"), (b"a\xff", b"b"), (b"\xff\xff", None), (b"ab", b"ac")],
)
def test_prefix_end(prefix: bytes, end: bytes | None) -> None:
    assert prefix_end(prefix) == end
