"""The consistent-hash ring (cluster.ring): distinct preference lists, the same ring everywhere,
even load, and minimal movement when a node joins or leaves (Dynamo §4.2)."""

from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cluster.ring import TOKEN_SPACE, Ring, RingError, key_token, vnode_token

TEN = frozenset(f"n{i}" for i in range(1, 11))
SAMPLE_KEYS = [b"key-%d" % i for i in range(20_000)]

keys = st.binary(max_size=64)
clusters = st.frozensets(st.sampled_from([f"n{i}" for i in range(1, 9)]), min_size=1)


@given(clusters, keys, st.integers(1, 10))
def test_preference_lists_are_distinct_and_as_long_as_the_cluster_allows(
    nodes: frozenset[str], key: bytes, n: int
) -> None:
    ring = Ring(nodes, vnodes_per_node=8)
    replicas = ring.preference_list(key, n)
    assert len(replicas) == min(n, len(nodes))
    assert len(set(replicas)) == len(replicas) and set(replicas) <= nodes
    assert replicas[0] == ring.owner(key)
    # A longer list extends a shorter one: replication factor 3 keeps the first two replicas of 2.
    assert ring.preference_list(key, n + 1)[: len(replicas)] == replicas


def test_the_ring_is_the_same_in_every_process_and_for_every_insertion_order() -> None:
    # Golden values: they change only if the hashing changes, which would move every key.
    assert key_token(b"titra") == 13741481432447746596
    assert vnode_token("n1", 0) == 6869073113605981781
    ring = Ring(frozenset({"n1", "n2", "n3"}))
    assert ring.preference_list(b"user:42", 3) == ["n3", "n1", "n2"]
    rebuilt = Ring(frozenset(["n3", "n2"])).with_node("n1")
    assert rebuilt == ring
    assert all(rebuilt.preference_list(k, 2) == ring.preference_list(k, 2) for k in SAMPLE_KEYS[:2_000])


@pytest.mark.parametrize("size", [3, 5, 10, 20])
def test_every_node_owns_close_to_its_fair_share(size: int) -> None:
    ring = Ring(frozenset(f"n{i}" for i in range(1, size + 1)))
    shares = ring.ownership()
    assert sum(shares.values()) == pytest.approx(1.0)
    # 64 vnodes give a spread of about 1/sqrt(64) = 12.5% per node; a single vnode would not pass.
    assert all(0.7 <= share * size <= 1.4 for share in shares.values()), shares


def test_keys_land_where_the_ownership_says() -> None:
    ring = Ring(TEN)
    counts = dict.fromkeys(TEN, 0)
    for key in SAMPLE_KEYS:
        counts[ring.owner(key)] += 1
    shares = ring.ownership()
    assert all(abs(counts[node] / len(SAMPLE_KEYS) - shares[node]) < 0.01 for node in TEN), counts


def test_a_joining_node_takes_about_one_nth_of_the_keys_and_only_moves_keys_to_itself() -> None:
    before, after = Ring(TEN), Ring(TEN).with_node("n11")
    moved = [key for key in SAMPLE_KEYS if before.owner(key) != after.owner(key)]
    assert all(after.owner(key) == "n11" for key in moved)
    assert 0.6 / 11 <= len(moved) / len(SAMPLE_KEYS) <= 1.4 / 11


def test_a_leaving_node_gives_away_only_its_own_keys() -> None:
    before, after = Ring(TEN), Ring(TEN).without_node("n3")
    moved = [key for key in SAMPLE_KEYS if before.owner(key) != after.owner(key)]
    assert {before.owner(key) for key in moved} == {"n3"}
    assert len(moved) / len(SAMPLE_KEYS) == pytest.approx(before.ownership()["n3"], abs=0.01)


@given(keys, st.integers(1, 5))
def test_a_join_inserts_the_new_node_into_preference_lists_and_changes_nothing_else(key: bytes, n: int) -> None:
    before, after = Ring(TEN, vnodes_per_node=16), Ring(TEN, vnodes_per_node=16).with_node("new")
    new_list, old_list = after.preference_list(key, n), before.preference_list(key, n)
    others = [node for node in new_list if node != "new"]
    assert others == old_list[: len(others)]
    assert len(others) >= n - 1


@given(st.integers(1, 5), keys)
def test_ranges_cover_the_ring_once_and_share_the_preference_list_of_their_keys(n: int, key: bytes) -> None:
    ring = Ring(frozenset({"a", "b", "c", "d"}), vnodes_per_node=8)
    ranges = ring.ranges()
    assert sum(r.width() for r in ranges) == TOKEN_SPACE
    holding = [r for r in ranges if r.contains(key_token(key))]
    assert len(holding) == 1
    assert ring.owners_of_range(holding[0], n) == ring.preference_list(key, n)
    assert holding[0] in ring.ranges_of(ring.owner(key), n)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_each_range_is_replicated_by_exactly_n_nodes(n: int) -> None:
    ring = Ring(TEN, vnodes_per_node=16)
    held = sum(r.width() for node in TEN for r in ring.ranges_of(node, n))
    assert held == n * TOKEN_SPACE


def test_a_single_node_ring_holds_everything() -> None:
    ring = Ring(frozenset({"solo"}), vnodes_per_node=1)
    [whole] = ring.ranges()
    assert whole.width() == TOKEN_SPACE and whole.contains(0) and whole.contains(TOKEN_SPACE - 1)
    assert ring.preference_list(b"k", 3) == ["solo"]


@pytest.mark.parametrize(
    ("build", "problem"),
    [
        (lambda: Ring(frozenset()), "at least one node"),
        (lambda: Ring(frozenset({"a"}), vnodes_per_node=0), "vnodes_per_node is 0"),
        (lambda: Ring(frozenset({"a"}), vnodes_per_node=100_000), "vnodes_per_node is 100000"),
        (lambda: Ring(frozenset({""})), "non-empty strings"),
        (lambda: Ring(frozenset({"a"})).preference_list(b"k", 0), "at least one node, not 0"),
        (lambda: Ring(TEN).owners_of_range(Ring(frozenset({"x"})).ranges()[0], 1), "not a range"),
    ],
)
def test_bad_rings_and_arguments_are_refused(build: Callable[[], object], problem: str) -> None:
    with pytest.raises(RingError, match=problem):
        build()
