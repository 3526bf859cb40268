"""Merkle trees per (keyspace, ring range): incremental updates, start-up loading, and the diff.

Plain synchronous tests of the pure index (cluster/merkle.py); the exchange that uses it is in
test_anti_entropy.py.
"""

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from cluster.context import scoped_key
from cluster.merkle import (
    MerkleIndex,
    clock_digest,
    descendants,
    diff_entries,
    entry_hash,
    rebuilt,
)
from cluster.ring import Ring, key_token

RING = Ring(frozenset({"n1", "n2", "n3"}), vnodes_per_node=8)


def digest(text: str) -> bytes:
    return clock_digest(text.encode())


def skey(i: int, keyspace: str = "default") -> bytes:
    return scoped_key(keyspace, b"key-%d" % i)


def test_a_key_lands_in_the_range_that_holds_its_token_and_in_a_valid_leaf() -> None:
    index = MerkleIndex(RING, depth=6)
    for i in range(500):
        range_index, leaf = index.locate(skey(i))
        assert index.ranges[range_index].contains(key_token(skey(i)))
        assert 0 <= leaf < 64


def test_leaves_follow_token_order_within_a_range() -> None:
    index = MerkleIndex(RING, depth=4)
    by_range: dict[int, list[tuple[int, int]]] = {}
    for i in range(2_000):
        range_index, leaf = index.locate(skey(i))
        start = index.ranges[range_index].start
        by_range.setdefault(range_index, []).append(((key_token(skey(i)) - start - 1) % 2**64, leaf))
    for points in by_range.values():
        leaves = [leaf for _, leaf in sorted(points)]
        assert leaves == sorted(leaves)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 40), st.one_of(st.none(), st.integers(0, 3))), max_size=120))
def test_incremental_updates_equal_a_build_from_scratch(ops: list[tuple[int, int | None]]) -> None:
    index = MerkleIndex(RING, depth=5)
    final: dict[bytes, bytes] = {}
    for key, version in ops:
        value = None if version is None else digest(f"{key}/{version}")
        index.update(skey(key), value)
        if value is None:
            final.pop(skey(key), None)
        else:
            final[skey(key)] = value
    scratch = MerkleIndex(RING, depth=5)
    for key_bytes, value in final.items():
        scratch.load(key_bytes, value)
    for range_index in range(len(RING.ranges())):
        tree = index.tree("default", range_index)
        fresh = scratch.tree("default", range_index)
        assert index.root("default", range_index) == scratch.root("default", range_index)
        if tree is not None:
            assert list(tree.hashes) == list(rebuilt(tree).hashes)
            if fresh is not None:
                assert list(tree.hashes) == list(fresh.hashes)
    assert index.keys() == len(final)


def test_a_node_hash_is_the_xor_of_its_keys() -> None:
    index = MerkleIndex(RING, depth=3)
    for i in range(300):
        index.update(skey(i), digest(str(i)))
    for range_index in range(len(index.ranges)):
        tree = index.tree("default", range_index)
        if tree is None:
            continue
        expected = 0
        for bucket in tree.leaves.values():
            for key_bytes, value in bucket.items():
                expected ^= entry_hash(key_bytes, value)
        assert tree.root == expected
        for position in range(2):
            below = [tree.hash_at(3, p) for p in descendants(position, 2)]
            combined = 0
            for h in below:
                combined ^= h
            assert tree.hash_at(1, position) == combined


def test_keyspaces_have_separate_trees() -> None:
    index = MerkleIndex(RING, depth=4)
    index.update(skey(1, "a"), digest("x"))
    range_index, _ = index.locate(skey(1, "a"))
    assert index.root("a", range_index) != 0
    assert index.root("b", range_index) == 0
    index.update(skey(1, "a"), None)
    assert index.root("a", range_index) == 0 and index.keys() == 0


def test_load_does_not_overwrite_a_newer_write() -> None:
    index = MerkleIndex(RING, depth=4)
    index.update(skey(1), digest("new"))
    index.load(skey(1), digest("old"))
    assert index.digest_of(skey(1)) == digest("new")


def descend(a: MerkleIndex, b: MerkleIndex, keyspace: str = "default") -> set[bytes]:
    """What an exchange does: roots, then only differing subtrees, then the leaves' keys."""
    found: set[bytes] = set()
    roots = tuple((r.end, a.root(keyspace, i)) for i, r in enumerate(a.ranges))
    _, differing_ends = b.differing_roots(keyspace, roots)
    for end in differing_ends:
        i = a.range_index(end)
        assert i is not None
        level, positions = 0, [0]
        while level < a.depth:
            below = min(level + 2, a.depth)
            span = below - level
            hashes = tuple((p, a.hash_at(keyspace, i, below, p)) for q in positions for p in descendants(q, span))
            positions = list(b.differing_hashes(keyspace, end, below, hashes))
            level = below
        diff = diff_entries(b.entries(keyspace, i, positions), a.entries(keyspace, i, positions))
        found |= set(diff.differ) | set(diff.only_theirs) | set(diff.only_ours)
    return found


def test_the_diff_finds_exactly_the_keys_that_differ() -> None:
    rng = random.Random(7)
    a, b = MerkleIndex(RING, depth=6), MerkleIndex(RING, depth=6)
    for i in range(3_000):
        a.update(skey(i), digest(f"{i}"))
        b.update(skey(i), digest(f"{i}"))
    assert descend(a, b) == set()
    changed = {skey(i) for i in rng.sample(range(3_000), 40)}
    for key_bytes in changed:
        b.update(key_bytes, digest("changed"))
    only_a = {skey(i) for i in range(3_000, 3_010)}
    for key_bytes in only_a:
        a.update(key_bytes, digest("a"))
    gone_from_a = {skey(i) for i in rng.sample(range(3_000), 5)} - changed
    for key_bytes in gone_from_a:
        a.update(key_bytes, None)
    assert descend(a, b) == changed | only_a | gone_from_a
    assert descend(b, a) == changed | only_a | gone_from_a


def test_an_unknown_range_or_level_differs_everywhere() -> None:
    index = MerkleIndex(RING, depth=4)
    assert index.differing_roots("default", ((12345, 0),)) == ([], [12345])
    assert index.differing_hashes("default", 12345, 1, ((0, 0), (1, 0))) == (0, 1)
    end = index.ranges[0].end
    assert index.differing_hashes("default", end, 9, ((0, 0),)) == (0,)


def test_a_new_ring_rebuckets_from_memory() -> None:
    index = MerkleIndex(RING, depth=4)
    for i in range(200):
        index.update(skey(i), digest(str(i)))
    bigger = index.with_ring(RING.with_node("n4"))
    assert bigger.keys() == 200 and len(bigger.ranges) > len(index.ranges)
    assert all(bigger.digest_of(skey(i)) == digest(str(i)) for i in range(200))


def test_an_entry_hashes_as_every_node_hashes_it() -> None:
    """Peers compare these hashes, so they must not change with how they are computed: blake2b
    of 8 bytes over digest + key, personalised "titra.merkle", read big-endian."""
    from hashlib import blake2b

    for i in range(50):
        expected = blake2b(digest(str(i)) + skey(i), digest_size=8, person=b"titra.merkle").digest()
        assert entry_hash(skey(i), digest(str(i))) == int.from_bytes(expected, "big")


def test_a_listing_goes_by_leaf_then_key_whatever_the_order_of_writes() -> None:
    forwards, backwards = MerkleIndex(RING, depth=2), MerkleIndex(RING, depth=2)
    for i in range(400):
        forwards.update(skey(i), digest(str(i)))
        backwards.update(skey(399 - i), digest(str(399 - i)))
    forwards.update(skey(7), digest("rewritten"))
    backwards.update(skey(7), digest("rewritten"))
    for range_index in range(len(RING.ranges())):
        listed = forwards.entries("default", range_index, [])
        assert list(listed.items()) == list(backwards.entries("default", range_index, []).items())
        keys = list(listed)
        assert keys == sorted(keys, key=lambda key: (forwards.locate(key)[1], key))
        assert list(forwards.entries("default", range_index, [3, 1]).items()) == [
            item for item in listed.items() if forwards.locate(item[0])[1] in (1, 3)
        ]
