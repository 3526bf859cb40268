"""The per-key register linearizability checker (chaos.checkers.linearizable): known-good and
known-bad histories, and a property: a real sequential execution seen through random overlapping
intervals is always accepted, and one provably wrong read makes it rejected."""

import itertools
import random
from dataclasses import replace
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from chaos.checkers import check_linearizable
from chaos.history import Operation, Outcome

_op_ids = itertools.count()
MS = 1_000_000


def operation(
    process: int, f: str, start_ms: float, end_ms: float | None, *, value_in: Any = None, value_out: Any = None,
    outcome: Outcome = "ok", key: str = "k",
) -> Operation:  # fmt: skip
    complete_ns = None if end_ms is None else int(end_ms * MS)
    return Operation(
        process, next(_op_ids), f, key, value_in, value_out, outcome, int(start_ms * MS), complete_ns, "n1", "all"
    )


def write(
    process: int, value: Any, start_ms: float, end_ms: float | None, outcome: Outcome = "ok", key: str = "k"
) -> Operation:
    return operation(process, "write", start_ms, end_ms, value_in=value, outcome=outcome, key=key)


def delete(process: int, start_ms: float, end_ms: float | None, outcome: Outcome = "ok", key: str = "k") -> Operation:
    return operation(process, "delete", start_ms, end_ms, outcome=outcome, key=key)


def read(process: int, seen: list[Any] | None, start_ms: float, end_ms: float | None, key: str = "k") -> Operation:
    return operation(process, "read", start_ms, end_ms, value_out=seen, key=key)


def test_sequential_writes_and_reads_are_linearizable() -> None:
    history = [write(0, 1, 0, 1), read(1, [1], 2, 3), write(0, 2, 4, 5), read(1, [2], 6, 7)]
    result = check_linearizable(history)
    assert result.valid is True
    assert result.counts["keys"] == 1 and result.counts["keys_linearizable"] == 1 and result.counts["ops"] == 4
    assert result.verdict == "ok"


def test_stale_read_after_a_completed_write_is_not_linearizable() -> None:
    history = [write(0, 1, 0, 1), write(0, 2, 2, 3), read(1, [1], 4, 5)]
    result = check_linearizable(history)
    assert result.valid is False
    assert result.counts["keys_violating"] == 1
    assert len(result.examples) == 1 and "3 ops conflict" in result.examples[0]
    assert "p1 read 'k' -> [1] ok [4.000..5.000 ms]" in result.examples[0]


def test_concurrent_write_and_read_may_see_either() -> None:
    for seen in ([1], [2]):
        history = [write(0, 1, 0, 1), write(0, 2, 2, 10), read(1, seen, 3, 4)]
        assert check_linearizable(history).valid is True, seen


def test_a_read_sees_absent_before_the_first_write_and_after_a_delete() -> None:
    history = [read(1, [], 0, 1), write(0, 1, 2, 3), read(1, [1], 4, 5), delete(0, 6, 7), read(1, None, 8, 9)]
    assert check_linearizable(history).valid is True


def test_absent_after_a_completed_write_is_not_linearizable() -> None:
    history = [write(0, 1, 0, 1), read(1, [], 2, 3)]
    assert check_linearizable(history).valid is False


def test_unknown_write_may_take_effect_late() -> None:
    # The write of 2 never answered: it may land long after its invocation, or never.
    history = [write(0, 1, 0, 1), write(0, 2, 2, None, outcome="info"), read(1, [1], 10, 11), read(1, [2], 20, 21)]
    assert check_linearizable(history).valid is True


def test_unknown_write_may_never_take_effect() -> None:
    history = [write(0, 1, 0, 1), write(0, 2, 2, 3, outcome="info"), read(1, [1], 10, 11), read(1, [1], 20, 21)]
    assert check_linearizable(history).valid is True


def test_an_unknown_write_once_seen_stays_in_effect() -> None:
    history = [write(0, 1, 0, 1), write(0, 2, 2, None, outcome="info"), read(1, [2], 10, 11), read(1, [1], 20, 21)]
    assert check_linearizable(history).valid is False


def test_a_failed_write_did_not_happen() -> None:
    assert check_linearizable([write(0, 1, 0, 1, outcome="fail"), read(1, [], 2, 3)]).valid is True
    result = check_linearizable([write(0, 1, 0, 1, outcome="fail"), read(1, [1], 2, 3)])
    assert result.valid is False
    assert "no write invoked before it wrote" in result.examples[0]


def test_read_from_the_future_is_not_linearizable() -> None:
    result = check_linearizable([read(1, [1], 0, 1), write(0, 1, 2, 3)])
    assert result.valid is False
    assert "p1 read" in result.examples[0]


def test_siblings_are_not_linearizable() -> None:
    history = [write(0, 1, 0, 5), write(2, 2, 0, 5), read(1, [1, 2], 6, 7)]
    result = check_linearizable(history)
    assert result.valid is False
    assert result.counts["sibling_reads"] == 1
    assert "siblings" in result.examples[0]


def test_reads_after_concurrent_writes_must_agree_on_their_order() -> None:
    writes = [write(0, 1, 0, 10), write(2, 2, 0, 10)]
    assert check_linearizable([*writes, read(1, [1], 11, 12), read(1, [2], 13, 14)]).valid is False
    # While the second read is concurrent with the writes, either order is still possible.
    assert check_linearizable([*writes, read(1, [1], 5, 6), read(1, [2], 13, 14)]).valid is True


def test_keys_are_checked_independently() -> None:
    good = [write(0, 1, 0, 1, key="a"), read(1, [1], 2, 3, key="a")]
    bad = [write(0, 1, 0, 1, key="b"), write(0, 2, 2, 3, key="b"), read(1, [1], 4, 5, key="b")]
    result = check_linearizable(good + bad)
    assert result.valid is False
    assert (result.counts["keys"], result.counts["keys_linearizable"], result.counts["keys_violating"]) == (2, 1, 1)
    assert result.examples[0].startswith("key 'b'")


def test_an_exhausted_budget_leaves_the_verdict_unknown() -> None:
    history = [write(p, p, 0, 10) for p in range(6)] + [read(9, [5], 11, 12)]
    result = check_linearizable(history, max_states=3)
    assert result.valid is None and result.verdict == "unknown"
    assert result.counts["undecided_keys"] == 1
    assert check_linearizable(history).valid is True


def test_a_proved_violation_outweighs_an_undecided_key() -> None:
    undecided = [write(p, p, 0, 10, key="a") for p in range(6)] + [read(9, [5], 11, 12, key="a")]
    siblings = [read(1, [1, 2], 0, 1, key="b"), write(0, 1, 0, 1, key="b"), write(0, 2, 0, 1, key="b")]
    result = check_linearizable(undecided + siblings, max_states=3)
    assert result.valid is False
    assert result.counts["undecided_keys"] == 1 and result.counts["keys_violating"] == 1


def test_the_witness_is_the_few_operations_that_conflict() -> None:
    history = []
    for i in range(40):  # write i, read i, one after another
        history += [write(0, i, 10 * i, 10 * i + 2), read(1, [i], 10 * i + 4, 10 * i + 6)]
    history[41] = read(1, [19], 204, 206)  # the read after write 20 returns 19
    result = check_linearizable(history)
    assert result.valid is False
    witness = result.examples[0]
    assert "3 ops conflict" in witness and "read 'k' -> [19] ok [204.000..206.000 ms]" in witness


def _random_history(rng: random.Random, keys: int, ops_per_key: int, concurrency_ms: int) -> list[Operation]:
    """Real sequential executions (one per key) with each op's interval around its instant."""
    history = []
    for k in range(keys):
        state: list[Any] = []
        for i in range(ops_per_key):
            at_ms = 10 * i
            start_ms, end_ms = at_ms - rng.randint(0, concurrency_ms), at_ms + rng.randint(0, concurrency_ms)
            if rng.random() < 0.4:
                state = [f"{k}-{i}"]
                history.append(write(i % 7, state[0], start_ms, end_ms, key=f"key{k}"))
            else:
                history.append(read(i % 7, list(state), start_ms, end_ms, key=f"key{k}"))
    return history


def test_ten_keys_of_three_hundred_overlapping_ops_are_checked_quickly() -> None:
    history = _random_history(random.Random(20260101), keys=10, ops_per_key=300, concurrency_ms=40)
    result = check_linearizable(history)
    assert result.valid is True
    assert result.counts["keys_linearizable"] == 10 and result.counts["ops"] == 3000
    assert result.counts["states_explored"] < 20 * 3000  # the memo and the read rule keep the search near linear


# A sequential execution: each step is (kind, outcome, ms before its instant, ms after).
steps = st.lists(
    st.tuples(
        st.sampled_from(["write", "write", "read", "read", "delete"]),
        st.sampled_from(["ok", "ok", "ok", "info_applied", "info_lost", "fail"]),
        st.integers(0, 35),
        st.integers(0, 35),
    ),
    min_size=1,
    max_size=25,
)


def _execute(script: list[tuple[str, str, int, int]]) -> list[Operation]:
    state: list[Any] = []
    history = []
    for i, (kind, outcome, before_ms, after_ms) in enumerate(script):
        at_ms = 10 * i
        start_ms, end_ms = at_ms - before_ms, at_ms + after_ms
        if kind == "read":
            history.append(read(i % 4, list(state), start_ms, end_ms))
            continue
        took_effect = outcome in ("ok", "info_applied")
        if took_effect:
            state = [] if kind == "delete" else [i]
        recorded: Outcome = "ok" if outcome == "ok" else ("fail" if outcome == "fail" else "info")
        unanswered = recorded == "info" and after_ms % 2 == 0  # some unknown ops never complete at all
        history.append(operation(i % 4, kind, start_ms, None if unanswered else end_ms, value_in=i, outcome=recorded))
    return history


@settings(max_examples=200, deadline=None)
@given(steps)
def test_a_real_execution_seen_through_overlapping_intervals_is_linearizable(
    script: list[tuple[str, str, int, int]],
) -> None:
    assert check_linearizable(_execute(script)).valid is True


@settings(max_examples=200, deadline=None)
@given(steps, st.data())
def test_a_read_of_a_value_never_written_is_rejected(
    script: list[tuple[str, str, int, int]], data: st.DataObject
) -> None:
    history = _execute(script)
    reads = [i for i, op in enumerate(history) if op.f == "read"]
    if not reads:
        return
    victim = data.draw(st.sampled_from(reads))
    history[victim] = replace(history[victim], value_out=[-1])
    assert check_linearizable(history).valid is False


@settings(max_examples=200, deadline=None)
@given(steps, st.data())
def test_a_read_of_a_provably_stale_value_is_rejected(
    script: list[tuple[str, str, int, int]], data: st.DataObject
) -> None:
    history = _execute(script)
    done = [op for op in history if op.outcome == "ok" and op.f in ("write", "delete")]
    mutations = [
        (i, stale.value_in)
        for i, op in enumerate(history)
        if op.f == "read"
        for stale in done
        if stale.f == "write"  # its value was overwritten by a later write (or delete) that completed before the read
        and any(_before(stale, later) and _before(later, op) for later in done)
    ]
    if not mutations:
        return
    victim, stale_value = data.draw(st.sampled_from(mutations))
    history[victim] = replace(history[victim], value_out=[stale_value])
    assert check_linearizable(history).valid is False


def _before(first: Operation, second: Operation) -> bool:
    return first.complete_ns is not None and first.complete_ns < second.invoke_ns
