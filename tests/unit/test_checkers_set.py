"""The set checker (chaos.checkers.set_checker): acknowledged adds must survive, nothing else may
appear, a failed add must not appear; unknown adds may go either way."""

import itertools
from typing import Any

from chaos.checkers import check_set
from chaos.history import Operation, Outcome

_op_ids = itertools.count()
MS = 1_000_000


def add(process: int, element: Any, start_ms: int, end_ms: int | None, outcome: Outcome = "ok") -> Operation:
    complete_ns = None if end_ms is None else end_ms * MS
    return Operation(
        process,
        next(_op_ids),
        "add",
        f"set/{element}",
        element,
        None,
        outcome,
        start_ms * MS,
        complete_ns,
        "n1",
        "quorum",
    )


def read_set(
    process: int, seen: list[Any] | None, start_ms: int, node: str = "n1", outcome: Outcome = "ok"
) -> Operation:
    return Operation(
        process, next(_op_ids), "read_set", "set", None, seen, outcome, start_ms * MS, (start_ms + 1) * MS, node, "all"
    )


ADDS = [add(0, 1, 0, 1), add(1, 2, 0, 2), add(0, 3, 2, 3)]


def test_every_acknowledged_add_present_is_valid() -> None:
    result = check_set([*ADDS, read_set(2, [3, 1, 2], 10)])
    assert result.valid is True
    assert result.counts == {
        "attempted": 3, "acknowledged": 3, "unknown": 0, "failed": 0, "reads": 1, "lost": 0, "unexpected": 0,
        "recovered": 0, "failed_but_present": 0, "unverified": 0, "reads_incomplete": 0,
    }  # fmt: skip
    assert result.examples == []


def test_lost_acknowledged_add_is_reported() -> None:
    result = check_set([*ADDS, read_set(2, [1, 3], 10)])
    assert result.valid is False
    assert result.counts["lost"] == 1
    assert result.examples == [
        "lost: p1 add 'set/2' 2 ok [0.000..2.000 ms] via n1 @quorum, absent from every final read"
    ]


def test_element_read_but_never_added_is_unexpected() -> None:
    result = check_set([*ADDS, read_set(2, [1, 2, 3, 99], 10)])
    assert result.valid is False
    assert result.counts["unexpected"] == 1
    assert "99" in result.examples[0]


def test_failed_add_that_is_present_is_a_violation() -> None:
    result = check_set([*ADDS, add(1, 4, 3, 4, outcome="fail"), read_set(2, [1, 2, 3, 4], 10)])
    assert result.valid is False
    assert result.counts["failed"] == 1 and result.counts["failed_but_present"] == 1
    assert result.examples[0].startswith("failed but present: p1 add 'set/4' 4 fail")


def test_unknown_adds_may_be_present_or_absent() -> None:
    unknown = [add(1, 4, 3, None, outcome="info"), add(1, 5, 4, 5, outcome="info")]
    result = check_set([*ADDS, *unknown, read_set(2, [1, 2, 3, 5], 10)])
    assert result.valid is True
    assert result.counts["unknown"] == 2 and result.counts["recovered"] == 1 and result.counts["lost"] == 0


def test_several_final_reads_use_their_union_and_report_disagreement() -> None:
    reads = [
        read_set(2, [1, 2], 10, node="n1"),
        read_set(3, [2, 3], 10, node="n2"),
        read_set(4, [1, 2, 3], 10, node="n3"),
    ]
    result = check_set([*ADDS, *reads])
    assert result.valid is True
    assert result.counts["reads"] == 3 and result.counts["reads_incomplete"] == 2
    assert (
        result.examples[0] == "final read by p2 via n1 at 10.000 ms misses 1 of the 3 elements of the union, e.g. [3]"
    )


def test_without_a_final_read_the_verdict_is_unknown() -> None:
    result = check_set(ADDS)
    assert result.valid is None and result.verdict == "unknown"
    assert "no final read" in result.examples[0]


def test_reads_before_the_last_add_and_failed_reads_are_not_final() -> None:
    history = [read_set(2, [], 0), *ADDS, read_set(2, None, 10, outcome="fail")]
    result = check_set(history)
    assert result.valid is None
    assert result.counts["reads"] == 0
    assert "1 ok read_set before the last add" in result.examples[0]


def test_an_add_acknowledged_after_the_final_read_began_is_unverified_not_lost() -> None:
    result = check_set([*ADDS, add(1, 4, 5, 20), read_set(2, [1, 2, 3], 10)])
    assert result.valid is True
    assert result.counts["lost"] == 0 and result.counts["unverified"] == 1


def test_an_element_added_twice_takes_its_strongest_outcome() -> None:
    history = [add(0, 7, 0, 1, outcome="fail"), add(0, 7, 2, 3), read_set(2, [7], 10)]
    result = check_set(history)
    assert result.valid is True
    assert (result.counts["attempted"], result.counts["acknowledged"], result.counts["failed"]) == (1, 1, 0)
