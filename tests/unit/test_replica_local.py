"""One replica on its own (cluster/replica.py): the per-key lock and the decoded-clock cache."""

import asyncio

from cluster import dvv
from cluster.context import scoped_key
from cluster.hlc import HybridClock
from cluster.limits import CLOCK_DEFAULTS
from cluster.memory_store import MemoryStore
from cluster.replica import Replica
from cluster.requests import WriteStatus
from cluster.siblings import Resolution, decode_clock, encode_clock
from cluster.store import Durability


def make_replica(node_id: str = "a") -> Replica:
    return Replica(node_id, MemoryStore(), HybridClock(node_id), wall=lambda: 1_700_000_000_000)


async def put(replica: Replica, key: bytes, value: bytes) -> None:
    minted = await replica.mint(
        "ks", Resolution.SIBLINGS, key, value, "text/plain", False, (), None, None, False, "async"
    )
    assert minted.status is WriteStatus.OK


async def test_the_key_lock_is_handed_over_in_arrival_order() -> None:
    replica = make_replica()
    order: list[int] = []
    await replica._lock(b"k")  # held: every later taker queues

    async def taker(number: int) -> None:
        await replica._lock(b"k")
        order.append(number)
        replica._unlock(b"k")

    tasks = [asyncio.create_task(taker(n)) for n in range(5)]
    await asyncio.sleep(0)  # let them all queue
    assert order == [] and len(replica._key_locks[b"k"]) == 5
    replica._unlock(b"k")
    await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert order == [0, 1, 2, 3, 4]
    assert b"k" not in replica._key_locks  # the last release forgets the key


async def take_and_release(replica: Replica, name: str, got: list[str]) -> None:
    """Wait for the key's lock, note who got it, give it back."""
    await replica._lock(b"k")
    got.append(name)
    replica._unlock(b"k")


async def test_a_cancelled_waiter_neither_takes_nor_blocks_the_lock() -> None:
    replica = make_replica()
    await replica._lock(b"k")
    got: list[str] = []
    first, second = (asyncio.create_task(take_and_release(replica, name, got)) for name in ("first", "second"))
    await asyncio.sleep(0)
    first.cancel()
    replica._unlock(b"k")
    await asyncio.wait_for(asyncio.gather(first, second, return_exceptions=True), 5)
    assert first.cancelled() and got == ["second"]
    assert b"k" not in replica._key_locks


async def test_a_waiter_cancelled_just_as_it_is_handed_the_lock_passes_it_on() -> None:
    replica = make_replica()
    await replica._lock(b"k")
    got: list[str] = []
    first, second = (asyncio.create_task(take_and_release(replica, name, got)) for name in ("first", "second"))
    await asyncio.sleep(0)
    replica._unlock(b"k")  # hands the lock to `first`...
    first.cancel()  # ...which is cancelled before it runs
    await asyncio.wait_for(asyncio.gather(first, second, return_exceptions=True), 5)
    assert first.cancelled() and got == ["second"]
    assert b"k" not in replica._key_locks


async def test_concurrent_mints_of_one_key_lose_no_write() -> None:
    replica = make_replica()
    await asyncio.gather(*(put(replica, b"k", b"v%d" % n) for n in range(20)))
    stored = await replica.read("ks", b"k")
    assert stored is not None
    assert sorted(s.value for s in dvv.values(decode_clock(stored))) == sorted(b"v%d" % n for n in range(20))


async def test_the_decoded_clock_cache_follows_the_stored_bytes_whoever_wrote_them() -> None:
    replica = make_replica()
    await put(replica, b"k", b"mine")
    skey = scoped_key("ks", b"k")
    assert skey in replica._decoded
    # Another writer of the store (as after a restart, or a test) changes the bytes: the cache
    # must not answer with what it decoded before.
    other = make_replica("b")
    await put(other, b"k", b"theirs")
    foreign = await other.read("ks", b"k")
    assert foreign is not None
    await replica.store.put(skey, foreign, durability=Durability.ASYNC)
    loaded = await replica._load(skey)
    assert loaded is not None and [s.value for s in dvv.values(loaded)] == [b"theirs"]
    assert replica._decoded[skey][0] == foreign


async def test_the_decoded_clock_cache_is_bounded() -> None:
    replica = make_replica()
    extra = 10
    for n in range(CLOCK_DEFAULTS.decoded_clocks_cached + extra):
        skey = b"k%d" % n
        replica._remember(skey, encode_clock(dvv.DVVSet()), dvv.DVVSet())
    assert len(replica._decoded) == CLOCK_DEFAULTS.decoded_clocks_cached
    assert b"k0" not in replica._decoded  # the oldest went first
    assert b"k%d" % (CLOCK_DEFAULTS.decoded_clocks_cached + extra - 1) in replica._decoded


async def test_the_decoded_clock_cache_is_bounded_in_bytes_and_skips_large_sets() -> None:
    replica = make_replica()
    budget = CLOCK_DEFAULTS.decoded_clocks_bytes_max
    big = b"x" * (budget // 16 - 1024)  # just under the size kept at all
    for n in range(40):
        replica._remember(b"k%d" % n, big, dvv.DVVSet())
    assert replica._decoded_bytes <= budget
    assert replica._decoded_bytes == sum(len(encoded) for encoded, _ in replica._decoded.values())
    assert b"k39" in replica._decoded and b"k0" not in replica._decoded
    huge = b"x" * (budget // 16 + 1)
    replica._remember(b"k39", huge, dvv.DVVSet())  # replaces, and is too large to keep
    assert b"k39" not in replica._decoded
    assert replica._decoded_bytes == sum(len(encoded) for encoded, _ in replica._decoded.values())


async def test_a_stored_clock_reencodes_to_the_same_bytes() -> None:
    # A replica stores an incoming clock's bytes as they came when that clock is the merge, so
    # Merkle digests agree across replicas only while every node encodes a clock canonically.
    a, b = make_replica("a"), make_replica("b")
    await put(a, b"k", b"one")
    await put(a, b"k", b"two")
    stored = await a.read("ks", b"k")
    assert stored is not None
    assert await b.merge("ks", Resolution.SIBLINGS, b"k", stored, "async")
    kept = await b.read("ks", b"k")
    assert kept is not None and encode_clock(decode_clock(kept)) == kept == stored

