"""The WAL store against a `dict`, as Bitcask's QuickCheck FSM tests do, on SimDisk.

Every commit uses `fsync` durability, so the crash-and-reopen rule (a power loss, with a seeded
torn prefix of any unsynced bytes) must leave the model unchanged. The model also carries each
key's version: the LSN of the commit that last wrote it, which must survive checkpoints and
replay. The store is async; each machine drives it on its own event loop.
"""

import asyncio
import random
from collections.abc import Coroutine
from typing import Any, TypeVar

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from cluster.store import Durability, Record
from node.storage import StoreConfig, WalStore
from node.storage.disk import SimDisk

T = TypeVar("T")

DATA_DIR = "node1"
CONFIG = StoreConfig(wal_segment_bytes=512, checkpoint_chunk_records=3)

# A few short keys that are prefixes of one another, so prefix scans have something to cut.
KEY_SPACE = [b"a", b"aa", b"ab", b"aba", b"b", b"ba", b"bb", b"c", b"\xff", b"\xff\x00"]
KEYS = st.sampled_from(KEY_SPACE)
PREFIXES = st.sampled_from([b"", b"a", b"ab", b"b", b"c", b"d", b"\xff"])
VALUES = st.binary(max_size=24)
METAS = st.sampled_from([b"", b"m1", b"\x00clock"])
WRITES = st.lists(st.tuples(KEYS, st.none() | VALUES), min_size=1, max_size=5)


class StoreModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.disk = SimDisk()
        self.store = self.run(WalStore.open(DATA_DIR, CONFIG, disk=self.disk))
        self.model: dict[bytes, Record] = {}

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    # --- single-key autocommit -----------------------------------------------------------------

    @rule(key=KEYS, value=VALUES, meta=METAS)
    def put(self, key: bytes, value: bytes, meta: bytes) -> None:
        lsn = self.run(self.store.put(key, value, meta=meta, durability=Durability.FSYNC))
        assert lsn == self.store.memtable.last_lsn
        self.model[key] = Record(value, meta=meta, version=lsn)

    @rule(key=KEYS)
    def delete(self, key: bytes) -> None:
        existed = self.run(self.store.delete(key, durability=Durability.FSYNC))
        assert existed == (key in self.model)
        self.model.pop(key, None)

    # --- transactions --------------------------------------------------------------------------

    async def _apply(self, tx: Any, writes: list[tuple[bytes, bytes | None]], seen: dict[bytes, bytes | None]) -> None:
        """Do `writes` in `tx`, checking that it reads its own writes; `seen` tracks its view."""
        for key, value in writes:
            if value is None:
                assert await tx.delete(key) == (seen.get(key) is not None)
            else:
                await tx.put(key, value)
            seen[key] = value
            got = await tx.get(key)
            assert (got.value if got else None) == value

    def _committed_view(self) -> dict[bytes, bytes | None]:
        return {k: r.value for k, r in self.model.items()}

    def _commit_into_model(self, lsn: int | None, final: dict[bytes, bytes | None], touched: set[bytes]) -> None:
        if not touched:
            assert lsn is None, "a transaction with no writes wrote a commit record"
            return
        assert lsn is not None
        for key in touched:
            value = final[key]
            if value is None:
                self.model.pop(key, None)
            else:
                self.model[key] = Record(value, version=lsn)

    @rule(writes=WRITES)
    def transaction_commits(self, writes: list[tuple[bytes, bytes | None]]) -> None:
        async def go() -> int | None:
            tx = self.store.begin(durability=Durability.FSYNC)
            await self._apply(tx, writes, self._committed_view())
            return await tx.commit()

        view = self._committed_view()
        for key, value in writes:
            view[key] = value
        self._commit_into_model(self.run(go()), view, {k for k, _ in writes})

    @rule(writes=WRITES)
    def transaction_rolls_back(self, writes: list[tuple[bytes, bytes | None]]) -> None:
        async def go() -> None:
            tx = self.store.begin(durability=Durability.FSYNC)
            await self._apply(tx, writes, self._committed_view())
            await tx.rollback()

        last_lsn = self.store.memtable.last_lsn
        self.run(go())
        assert self.store.memtable.last_lsn == last_lsn, "a rolled-back transaction wrote a commit"

    @rule(before=WRITES, undone=WRITES, after=st.lists(st.tuples(KEYS, st.none() | VALUES), max_size=3))
    def transaction_with_savepoint_rolled_back_to(
        self,
        before: list[tuple[bytes, bytes | None]],
        undone: list[tuple[bytes, bytes | None]],
        after: list[tuple[bytes, bytes | None]],
    ) -> None:
        async def go() -> int | None:
            tx = self.store.begin(durability=Durability.FSYNC)
            seen = self._committed_view()
            await self._apply(tx, before, seen)
            at_savepoint = dict(seen)
            await tx.savepoint("sp")
            await self._apply(tx, undone, seen)
            await tx.rollback_to("sp")
            for key, _ in undone:
                got = await tx.get(key)
                assert (got.value if got else None) == at_savepoint.get(key), f"rollback_to left {key!r}"
            await self._apply(tx, after, at_savepoint)
            return await tx.commit()

        view = self._committed_view()
        for key, value in [*before, *after]:
            view[key] = value
        self._commit_into_model(self.run(go()), view, {k for k, _ in [*before, *after]})

    # --- reads ---------------------------------------------------------------------------------

    @rule(prefix=PREFIXES, page=st.integers(1, 4))
    def paginated_scan(self, prefix: bytes, page: int) -> None:
        async def go() -> list[tuple[bytes, Record]]:
            listing: list[tuple[bytes, Record]] = []
            after: bytes | None = None
            for _ in range(len(KEY_SPACE) + 1):  # a bound: each page returns at least one key
                got = await self.store.scan(prefix, after, page)
                assert len(got.items) <= page
                listing.extend(got.items)
                if got.cursor is None:
                    return listing
                after = got.cursor
            raise AssertionError("the scan never ended")

        expected = [(k, self.model[k]) for k in sorted(self.model) if k.startswith(prefix)]
        assert self.run(go()) == expected

    # --- durability ----------------------------------------------------------------------------

    @rule()
    def checkpoint(self) -> None:
        lsn = self.run(self.store.checkpoint())
        assert lsn == self.store.memtable.last_lsn

    @rule(torn_seed=st.none() | st.integers(0, 2**32 - 1))
    def crash_and_reopen(self, torn_seed: int | None) -> None:
        """Power loss (keeping a seeded torn prefix of unsynced bytes unless `torn_seed` is None)."""
        rng = random.Random(torn_seed)
        self.disk.crash(None if torn_seed is None else lambda unsynced: rng.randint(0, unsynced))
        # Abandon the old store: every commit was acknowledged, so closing it writes nothing.
        self.run(self.store.close())
        self.store = self.run(WalStore.open(DATA_DIR, CONFIG, disk=self.disk))
        assert self.store.stats.recovery.repair is None

    @invariant()
    def every_key_reads_as_the_model_says(self) -> None:
        for key in KEY_SPACE:
            assert self.run(self.store.get(key)) == self.model.get(key), key

    def teardown(self) -> None:
        try:
            self.run(self.store.close())
            self.run(self.loop.shutdown_default_executor())
        finally:
            self.loop.close()


StoreModel.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestStoreModel = StoreModel.TestCase
