"""The session checker (chaos.checkers.session): read-your-writes and monotonic reads per client
session, judged in real time, with unknown writes counted as possibly concurrent."""

import itertools
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from chaos.checkers import check_sessions
from chaos.history import Operation, Outcome

_op_ids = itertools.count()
MS = 1_000_000


def operation(
    process: int, f: str, start_ms: int, end_ms: int | None, *, value_in: Any = None, value_out: Any = None,
    outcome: Outcome = "ok", key: str = "k",
) -> Operation:  # fmt: skip
    complete_ns = None if end_ms is None else end_ms * MS
    return Operation(
        process, next(_op_ids), f, key, value_in, value_out, outcome, start_ms * MS, complete_ns, "n2", "one"
    )


def write(
    process: int, value: Any, start_ms: int, end_ms: int | None, outcome: Outcome = "ok", key: str = "k"
) -> Operation:
    return operation(process, "write", start_ms, end_ms, value_in=value, outcome=outcome, key=key)


def delete(process: int, start_ms: int, end_ms: int | None) -> Operation:
    return operation(process, "delete", start_ms, end_ms)


def read(
    process: int, seen: list[Any] | None, start_ms: int, end_ms: int, outcome: Outcome = "ok", key: str = "k"
) -> Operation:
    return operation(process, "read", start_ms, end_ms, value_out=seen, outcome=outcome, key=key)


def test_reading_your_own_write_is_valid() -> None:
    result = check_sessions([write(0, 1, 0, 1), read(0, [1], 2, 3), read(0, [1, 7], 4, 5)])
    assert result.valid is True
    assert result.counts == {"sessions": 1, "reads_checked": 2, "ryw_violations": 0, "monotonic_read_violations": 0}


def test_read_your_writes_violation() -> None:
    result = check_sessions([write(0, 1, 0, 1), read(0, [], 2, 3)])
    assert result.valid is False
    assert result.counts["ryw_violations"] == 1
    assert result.examples == [
        "read-your-writes: p0 read 'k' -> [] ok [2.000..3.000 ms] via n2 @one "
        "after its own p0 write 'k' 1 ok [0.000..1.000 ms] via n2 @one"
    ]


def test_reading_a_value_older_than_your_write_violates_read_your_writes() -> None:
    history = [write(1, 0, 0, 1), write(0, 1, 2, 3), read(0, [0], 4, 5)]
    assert check_sessions(history).counts["ryw_violations"] == 1


def test_a_newer_write_by_another_session_may_replace_yours() -> None:
    history = [write(0, 1, 0, 1), write(1, 2, 2, 3), read(0, [2], 4, 5)]
    assert check_sessions(history).valid is True


def test_a_concurrent_write_may_be_read_instead_of_yours() -> None:
    history = [write(1, 2, 0, 10), write(0, 1, 1, 2), read(0, [2], 3, 4)]
    assert check_sessions(history).valid is True


def test_an_unknown_write_counts_as_possibly_concurrent() -> None:
    history = [write(1, 0, 0, 1, outcome="info"), write(0, 1, 2, 3), read(0, [0], 4, 5)]
    assert check_sessions(history).valid is True


def test_a_delete_not_known_to_precede_your_write_explains_not_found() -> None:
    assert check_sessions([write(0, 1, 0, 1), delete(1, 2, 3), read(0, [], 4, 5)]).valid is True
    result = check_sessions([delete(1, 0, 1), write(0, 1, 2, 3), read(0, [], 4, 5)])
    assert result.counts["ryw_violations"] == 1


def test_reading_the_value_you_deleted_violates_read_your_writes() -> None:
    history = [write(0, 1, 0, 1), delete(0, 2, 3), read(0, [1], 4, 5)]
    assert check_sessions(history).counts["ryw_violations"] == 1
    assert check_sessions([*history[:2], read(0, [], 4, 5)]).valid is True


def test_other_sessions_and_other_keys_are_not_bound_by_your_writes() -> None:
    history = [write(0, 1, 0, 1), read(1, [], 2, 3), read(0, [], 2, 3, key="another key")]
    result = check_sessions(history)
    assert result.valid is True and result.counts["sessions"] == 2


def test_monotonic_read_violation() -> None:
    history = [write(1, 1, 0, 1), write(1, 2, 2, 3), read(0, [2], 4, 5), read(0, [1], 6, 7)]
    result = check_sessions(history)
    assert result.valid is False
    assert result.counts["monotonic_read_violations"] == 1 and result.counts["ryw_violations"] == 0
    assert result.examples == [
        "monotonic reads: p0 read 'k' -> [1] ok [6.000..7.000 ms] via n2 @one after p0 read 'k' -> [2] ok "
        "[4.000..5.000 ms] via n2 @one (that value's p1 write 'k' 2 ok [2.000..3.000 ms] via n2 @one)"
    ]


def test_going_back_to_not_found_is_a_monotonic_read_violation() -> None:
    history = [write(1, 1, 0, 1), read(0, [1], 2, 3), read(0, [], 4, 5)]
    assert check_sessions(history).counts["monotonic_read_violations"] == 1


def test_a_sibling_then_either_concurrent_value_is_monotonic() -> None:
    history = [write(1, 1, 0, 5), write(2, 2, 0, 5), read(0, [1, 2], 6, 7), read(0, [2], 8, 9), read(0, [1], 10, 11)]
    assert check_sessions(history).valid is True


def test_failed_and_unknown_reads_are_not_checked() -> None:
    history = [write(0, 1, 0, 1), read(0, [], 2, 3, outcome="fail"), read(0, None, 4, 5, outcome="info")]
    result = check_sessions(history)
    assert result.valid is None and result.counts["reads_checked"] == 0


# A real execution on one atomic register: each step is (kind, outcome, ms before its instant, ms after).
steps = st.lists(
    st.tuples(
        st.sampled_from(["write", "write", "read", "read", "delete"]),
        st.sampled_from(["ok", "ok", "ok", "info_applied", "info_lost", "fail"]),
        st.integers(0, 35),
        st.integers(0, 35),
    ),
    min_size=1,
    max_size=30,
)


@settings(max_examples=200, deadline=None)
@given(steps)
def test_a_linearizable_history_keeps_every_session_guarantee(script: list[tuple[str, str, int, int]]) -> None:
    state: list[Any] = []
    busy_until_ms: list[float] = []  # per session: it issues one operation at a time
    history = []
    for i, (kind, outcome, before_ms, after_ms) in enumerate(script):
        start_ms, end_ms = 10 * i - before_ms, 10 * i + after_ms
        recorded: Outcome = "ok" if outcome == "ok" or kind == "read" else ("fail" if outcome == "fail" else "info")
        free = [p for p, until_ms in enumerate(busy_until_ms) if until_ms < start_ms]
        process = free[0] if free else len(busy_until_ms)
        if process == len(busy_until_ms):
            busy_until_ms.append(0)
        busy_until_ms[process] = float("inf") if recorded == "info" else end_ms  # an unknown op retires its session
        if kind == "read":
            history.append(read(process, list(state), start_ms, end_ms))
            continue
        if outcome in ("ok", "info_applied"):
            state = [] if kind == "delete" else [i]
        history.append(operation(process, kind, start_ms, end_ms, value_in=i, outcome=recorded))
    result = check_sessions(history)
    assert result.valid is not False, result.examples
