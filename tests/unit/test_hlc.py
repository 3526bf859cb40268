"""Hybrid logical clocks (cluster.hlc): monotonic whatever the wall clock does, bounded drift,
a total order, and encodings that keep the order."""

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cluster.hlc import ClockDriftError, HybridClock, Timestamp, TimestampDecodeError
from cluster.limits import ClockDefaults

MAX_OFFSET_MS = 500
wall_times = st.integers(0, 2**41)  # about the year 2039; any order, so time may step backwards
node_ids = st.sampled_from(["n1", "n2", "n10", "node.with.dots"])
timestamps = st.builds(Timestamp, st.integers(0, 2**48 - 1), st.integers(0, 2**32 - 1), node_ids)

# An event is ("now", wall) or ("observe", wall, remote offset from wall, remote logical, remote node).
events = st.lists(
    st.one_of(
        st.tuples(st.just("now"), wall_times),
        st.tuples(st.just("observe"), wall_times, st.integers(-10_000, 1_000), st.integers(0, 9), node_ids),
    ),
    max_size=60,
)


@given(events)
def test_timestamps_only_grow_and_stay_within_the_offset_of_the_wall_clock(
    script: list[tuple[str, int] | tuple[str, int, int, int, str]],
) -> None:
    clock = HybridClock("n1", max_offset_ms=MAX_OFFSET_MS, logical_max=4)
    previous = clock.last
    latest_wall_ms = 0
    for event in script:
        latest_wall_ms = max(latest_wall_ms, event[1])
        match event:
            case ("now", int(wall_ms)):
                stamp = clock.now(wall_ms)
            case ("observe", int(wall_ms), int(ahead_ms), int(logical), str(node)):
                remote = Timestamp(max(0, wall_ms + ahead_ms), logical, node)
                if ahead_ms > MAX_OFFSET_MS:
                    with pytest.raises(ClockDriftError):
                        clock.observe(remote, wall_ms)
                    assert clock.last == previous  # a refused message changes nothing
                    continue
                stamp = clock.observe(remote, wall_ms)
                assert stamp > remote  # the receive event follows the send event
            case _:
                raise AssertionError(f"unknown event {event}")
        assert stamp > previous
        assert stamp == clock.last and stamp.node_id == "n1"
        assert stamp.physical_ms >= wall_ms  # never behind the wall clock
        # Never further ahead than the offset (+1 ms per carry of the tiny logical_max used here).
        assert stamp.physical_ms <= latest_wall_ms + MAX_OFFSET_MS + len(script)
        previous = stamp


@given(st.lists(wall_times, max_size=40))
def test_two_nodes_never_mint_equal_timestamps(walls: list[int]) -> None:
    one, two = HybridClock("n1"), HybridClock("n2")
    minted = [clock.now(wall_ms) for wall_ms in walls for clock in (one, two)]
    assert len(set(minted)) == len(minted)


@given(timestamps, timestamps)
def test_the_order_is_total_and_the_string_form_sorts_the_same(a: Timestamp, b: Timestamp) -> None:
    assert (a < b) + (b < a) + (a == b) == 1
    assert (a < b) == ((a.physical_ms, a.logical, a.node_id) < (b.physical_ms, b.logical, b.node_id))
    assert (a.encode() < b.encode()) == (a < b)


@given(timestamps)
def test_string_and_msgpack_round_trips(stamp: Timestamp) -> None:
    assert Timestamp.decode(stamp.encode()) == stamp
    assert Timestamp.from_wire(msgpack.unpackb(msgpack.packb(stamp.to_wire()))) == stamp


def test_a_remote_clock_too_far_ahead_is_refused() -> None:
    clock = HybridClock("n1", max_offset_ms=500)
    before = clock.now(10_000)
    with pytest.raises(ClockDriftError) as refused:
        clock.observe(Timestamp(10_501, 0, "n2"), 10_000)
    assert refused.value.ahead_ms == 501 and refused.value.remote.node_id == "n2"
    assert clock.last == before
    accepted = clock.observe(Timestamp(10_500, 7, "n2"), 10_000)
    assert accepted == Timestamp(10_500, 8, "n1")


def test_a_stalled_wall_clock_counts_logically_then_carries() -> None:
    clock = HybridClock("n1", logical_max=2)
    stamps = [clock.now(1_000) for _ in range(4)]
    assert [(s.physical_ms, s.logical) for s in stamps] == [(1_000, 0), (1_000, 1), (1_000, 2), (1_001, 0)]
    assert clock.now(999) == Timestamp(1_001, 1, "n1")  # the wall clock stepped back
    assert clock.now(5_000) == Timestamp(5_000, 0, "n1")  # and caught up again


def test_a_restarted_clock_continues_after_its_persisted_timestamp() -> None:
    clock = HybridClock("n1", start=Timestamp(9_000, 3, "n1"))
    assert clock.now(1_000) == Timestamp(9_000, 4, "n1")


def test_the_receive_rule_counts_on_from_the_clock_that_is_ahead() -> None:
    clock = HybridClock("n1")
    clock.now(100)
    assert clock.observe(Timestamp(200, 5, "n2"), 150) == Timestamp(200, 6, "n1")
    assert clock.observe(Timestamp(200, 9, "n3"), 150) == Timestamp(200, 10, "n1")
    assert clock.observe(Timestamp(100, 50, "n2"), 150) == Timestamp(200, 11, "n1")
    assert clock.observe(Timestamp(100, 50, "n2"), 300) == Timestamp(300, 0, "n1")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (42, "must be a string"),
        ("0000000003e8.00000000", "physical.logical.node"),
        ("3e8.00000000.n1", "physical_ms must be 12 lowercase hex digits"),
        ("0000000003E8.00000000.n1", "physical_ms must be 12 lowercase hex digits"),
        ("00000000_3e8.00000000.n1", "physical_ms must be 12 lowercase hex digits"),
        ("0000000003e8.0000000g.n1", "logical must be 8 lowercase hex digits"),
        ("0000000003e8.00000000.", "node id must be a non-empty string"),
        ("0000000003e8.00000000.abcdefghi", "longer than 8 bytes"),
    ],
)
def test_malformed_strings_are_rejected(text: object, problem: str) -> None:
    with pytest.raises(TimestampDecodeError, match=problem):
        Timestamp.decode(text, ClockDefaults(node_id_bytes_max=8))


@pytest.mark.parametrize(
    ("wire", "problem"),
    [
        ("0000000003e8.00000000.n1", "must be a list"),
        ([1000, 0], "must be a list"),
        ([1000, -1, "n1"], "logical -1 is outside"),
        ([2**48, 0, "n1"], "physical_ms .* is outside"),
        ([1000, 2**32, "n1"], "logical .* is outside"),
        ([True, 0, "n1"], "physical_ms must be an integer"),
        ([1000, 0, b"n1"], "node id must be a non-empty string"),
    ],
)
def test_malformed_wire_tuples_are_rejected(wire: object, problem: str) -> None:
    with pytest.raises(TimestampDecodeError, match=problem):
        Timestamp.from_wire(wire)
