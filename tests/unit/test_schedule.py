"""chaos.schedule: the seeded fault schedule and the partition shapes (Jepsen's nemesis shapes)."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chaos.schedule import JITTER, NEMESES, PARTITION_SHAPES, Rng, Step, build_schedule, partition

THREE = ("n1", "n2", "n3")
FIVE = ("n1", "n2", "n3", "n4", "n5")


def test_splitmix64_matches_its_published_first_output() -> None:
    # The reference implementation (Vigna's splitmix64.c) seeded with 0 first returns this value.
    assert Rng(0).next_u64() == 0xE220A8397B1DCDAF


def test_the_same_seed_gives_the_same_schedule_and_another_seed_another() -> None:
    one = build_schedule("partition-halves", FIVE, seed=42, duration_s=120)
    assert one == build_schedule("partition-halves", FIVE, seed=42, duration_s=120)
    assert one != build_schedule("partition-halves", FIVE, seed=43, duration_s=120)


@pytest.mark.parametrize("nemesis", [n for n in NEMESES if n != "none"])
@given(
    seed=st.integers(min_value=0, max_value=2**64 - 1),
    duration_s=st.floats(min_value=0, max_value=600),
    interval_s=st.floats(min_value=2, max_value=30),
    fault_fraction=st.floats(min_value=0.1, max_value=0.9),
)
def test_a_schedule_alternates_one_fault_at_a_time_ends_healed_and_respects_spacing(
    nemesis: str, seed: int, duration_s: float, interval_s: float, fault_fraction: float
) -> None:
    fault_s = interval_s * fault_fraction
    steps = build_schedule(nemesis, THREE, seed, duration_s, interval_s, fault_s)
    assert [s.action for s in steps] == ["start", "stop"] * (len(steps) // 2)  # empty or ends with a heal
    quiet_min_s = (interval_s - fault_s) * (1 - JITTER)
    previous_stop: Step | None = None
    for start, stop in zip(steps[::2], steps[1::2], strict=True):
        assert start.fault == stop.fault and start.fault.name == nemesis
        assert stop.at_s - start.at_s == pytest.approx(fault_s, abs=0.002)
        gap_from = 0.0 if previous_stop is None else previous_stop.at_s
        assert start.at_s - gap_from >= quiet_min_s - 0.002
        assert start.at_s >= 0 and stop.at_s <= duration_s + 0.001
        previous_stop = stop


def test_faults_come_about_every_interval() -> None:
    steps = build_schedule("kill", THREE, seed=7, duration_s=100, interval_s=10, fault_s=4)
    assert 8 <= len(steps) // 2 <= 11


def test_no_fault_means_no_steps_and_bad_timing_is_refused() -> None:
    assert build_schedule("none", THREE, seed=1, duration_s=60) == []
    with pytest.raises(ValueError, match="fault_s"):
        build_schedule("kill", THREE, seed=1, duration_s=60, interval_s=5, fault_s=5)
    with pytest.raises(ValueError, match="unknown nemesis"):
        build_schedule("flood", THREE, seed=1, duration_s=60)


def connected(nodes: tuple[str, ...], cuts: tuple[tuple[str, str], ...], node: str) -> set[str]:
    """Who `node` can still talk to (itself included)."""
    return {peer for peer in nodes if peer == node or (min(node, peer), max(node, peer)) not in cuts}


@pytest.mark.parametrize("nodes", [THREE, FIVE])
def test_isolate_one_cuts_one_node_from_all_others_only(nodes: tuple[str, ...]) -> None:
    fault = partition("isolate-one", nodes, Rng(3))
    (alone,) = fault.targets
    assert connected(nodes, fault.cuts, alone) == {alone}
    for other in set(nodes) - {alone}:
        assert connected(nodes, fault.cuts, other) == set(nodes) - {alone}


@pytest.mark.parametrize(("nodes", "sizes"), [(THREE, [1, 2]), (FIVE, [2, 3])])
def test_halves_are_a_minority_and_a_majority_cut_apart(nodes: tuple[str, ...], sizes: list[int]) -> None:
    fault = partition("halves", nodes, Rng(5))
    assert [len(g) for g in fault.groups] == sizes
    for group in fault.groups:
        for node in group:
            assert connected(nodes, fault.cuts, node) == set(group)


@pytest.mark.parametrize("nodes", [THREE, FIVE])
def test_the_bridge_sees_both_halves_which_do_not_see_each_other(nodes: tuple[str, ...]) -> None:
    fault = partition("bridge", nodes, Rng(9))
    left, (bridge,), right = fault.groups
    assert connected(nodes, fault.cuts, bridge) == set(nodes)
    for node in left:
        assert connected(nodes, fault.cuts, node) == {*left, bridge}
    for node in right:
        assert connected(nodes, fault.cuts, node) == {*right, bridge}


def test_majorities_ring_with_five_nodes_gives_every_node_its_own_majority() -> None:
    for seed in range(20):
        fault = partition("majorities-ring", FIVE, Rng(seed))
        views = [frozenset(connected(FIVE, fault.cuts, node)) for node in FIVE]
        assert all(len(view) == 3 for view in views)  # a majority of five, never more
        assert len(set(views)) == 5  # no two nodes share one


def test_majorities_ring_with_three_nodes_degenerates_to_no_cut_and_says_so() -> None:
    fault = partition("majorities-ring", THREE, Rng(1))
    assert fault.cuts == ()
    assert "degenerate" in fault.note


def test_every_shape_describes_itself_for_the_history() -> None:
    for shape in PARTITION_SHAPES:
        described = partition(shape, FIVE, Rng(2)).describe()
        assert described["kind"] == "partition" and described["nemesis"] == f"partition-{shape}"
        assert all(len(cut) == 2 for cut in described["cuts"])
