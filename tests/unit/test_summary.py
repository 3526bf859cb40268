"""chaos.summary on small hand-built histories: every expected number is worked out in the comments."""

from chaos.history import Event, Operation, nemesis_windows, operations
from chaos.summary import (
    Run,
    RunParams,
    availability,
    cell_text,
    check_verdicts,
    choose_bucket_ms,
    end_ns,
    latency_series,
    level_verdict,
    matrix,
    matrix_nemeses,
    percentile,
    render_matrix_markdown,
    throughput_series,
)
from chaos.verdict import CheckResult

MS = 1_000_000


def op(process: int, op_id: int, invoke_ms: float, complete_ms: float | None, outcome: str = "ok") -> list[Event]:
    """An invoke and (unless the run ended first) its completion, as the recorder would log them."""
    events = [Event("invoke", process, op_id, "write", "k", op_id, round(invoke_ms * MS))]
    if complete_ms is not None:
        events.append(Event(outcome, process, op_id, "write", "k", None, round(complete_ms * MS)))  # type: ignore[arg-type]
    return events


def ops_of(*pieces: list[Event]) -> list[Operation]:
    return operations([event for piece in pieces for event in piece])


def fault(start_ms: float, stop_ms: float | None, what: str = "partition") -> list[Event]:
    events = [Event("nemesis", -1, 0, "start", value=what, time_ns=round(start_ms * MS))]
    if stop_ms is not None:
        events.append(Event("nemesis", -1, 0, "stop", value=what, time_ns=round(stop_ms * MS)))
    return events


def params(level: str = "quorum", nemesis: str = "partition", run_id: str = "r1", started: int = 0) -> RunParams:
    return RunParams(run_id, level, "register", nemesis, 1.0, 3, 42, started)


# --- series -------------------------------------------------------------------------------------


def test_throughput_counts_each_outcome_in_the_bucket_of_its_completion() -> None:
    ops = ops_of(
        op(1, 1, 10, 50),  # ok in [0, 100)
        op(1, 2, 60, 150),  # ok in [100, 200)
        op(2, 3, 100, 180),  # ok in [100, 200)
        op(2, 4, 110, 120, "fail"),  # fail in [100, 200)
        op(3, 5, 200, 250, "info"),  # info in [200, 300)
        op(4, 6, 90, None),  # never completed: unknown, counted where it was invoked, [0, 100)
    )
    series = throughput_series(ops, 100)
    assert [(b.start_ms, b.ok, b.fail, b.info) for b in series] == [
        (0, 1, 0, 1),
        (100, 2, 1, 0),
        (200, 0, 0, 1),
    ]


def test_throughput_extends_to_the_end_of_the_run_with_empty_buckets() -> None:
    series = throughput_series(ops_of(op(1, 1, 0, 5)), 100, until_ns=450 * MS)
    assert [(b.start_ms, b.ok) for b in series] == [(0, 1), (100, 0), (200, 0), (300, 0), (400, 0)]


def test_throughput_of_no_ops_is_empty_without_an_end() -> None:
    assert throughput_series([], 100) == []


def test_nearest_rank_percentiles_are_observed_values() -> None:
    assert percentile([7.0], 50) == 7.0
    assert percentile([7.0], 99) == 7.0
    assert percentile([1.0, 2.0], 50) == 1.0  # rank ceil(0.5 * 2) = 1
    assert percentile([1.0, 2.0], 99) == 2.0  # rank ceil(0.99 * 2) = 2
    values = [float(v) for v in range(1, 101)]
    assert (percentile(values, 50), percentile(values, 99)) == (50.0, 99.0)


def test_latency_p50_and_p99_per_bucket_leave_out_unknown_ops() -> None:
    # Bucket [0, 100): ten ops of 1..10 ms (the last one a fail, which still answered).
    pieces = [op(1, n, 0, n, "fail" if n == 10 else "ok") for n in range(1, 11)]
    pieces.append(op(2, 11, 0, 60, "info"))  # a timeout: not a latency of the cluster
    pieces.append(op(3, 12, 200, 230))  # bucket [200, 300): one op of 30 ms; [100, 200) stays empty
    series = latency_series(ops_of(*pieces), 100)
    assert [(b.start_ms, b.count, b.p50_ms, b.p99_ms) for b in series] == [
        (0, 10, 5.0, 10.0),  # ranks ceil(5) = 5 and ceil(9.9) = 10
        (100, 0, None, None),
        (200, 1, 30.0, 30.0),
    ]


def test_availability_splits_ops_by_invocation_inside_half_open_windows() -> None:
    events = [
        *fault(100, 200),
        *fault(400, None),  # never healed: runs to the end
        *op(1, 1, 50, 60),  # outside, ok
        *op(1, 2, 100, 110),  # inside (start included), ok
        *op(1, 3, 150, 160, "fail"),  # inside
        *op(1, 4, 199, 900, "info"),  # inside: unknown is not available
        *op(1, 5, 200, 210),  # outside (stop excluded), ok
        *op(1, 6, 450, 460),  # inside the unhealed window, ok
        *op(1, 7, 500, 510, "fail"),  # inside
    ]
    result = availability(operations(events), nemesis_windows(events))
    assert (result.during_ok, result.during_total, result.outside_ok, result.outside_total) == (2, 5, 2, 2)
    assert (result.during, result.outside) == (0.4, 1.0)


def test_availability_without_faults_has_no_during_fraction() -> None:
    result = availability(ops_of(op(1, 1, 0, 1), op(1, 2, 2, 3, "fail")), [])
    assert result.during is None
    assert result.outside == 0.5


def test_bucket_size_keeps_about_a_hundred_buckets() -> None:
    assert choose_bucket_ms(10_000 * MS) == 100  # 10 s / 120 = 83 ms -> 100
    assert choose_bucket_ms(60_000 * MS) == 500  # exactly 120 buckets
    assert choose_bucket_ms(60_001 * MS) == 1_000
    assert choose_bucket_ms(3_600_000 * MS) == 30_000
    assert choose_bucket_ms(36_000_000 * MS) == 300_000  # 10 h: whole minutes past the table


def test_end_of_run_is_its_duration_or_its_last_event() -> None:
    run = Run(params(), op(1, 1, 0, 10), [])
    assert end_ns(run) == 1_000 * MS  # duration 1 s
    late = Run(params(), op(1, 1, 0, 1_500), [])
    assert end_ns(late) == 1_500 * MS


# --- verdicts -----------------------------------------------------------------------------------


def checks_all_kinds(lin_promised: bool = False) -> list[CheckResult]:
    return [
        CheckResult("set", False, {"attempted": 10, "lost": 2}, ["lost: 7"]),
        CheckResult("session", False, {"ryw_violations": 3, "monotonic_read_violations": 5}),
        CheckResult("linearizable", False, {"keys_violating": 1}, promised=lin_promised),
        CheckResult("convergence", True, {"time_to_converge_ms": 1_500.0}),
    ]


def test_level_verdict_takes_the_headline_numbers_from_the_checks() -> None:
    events = [*fault(100, 300), *op(1, 1, 0, 10), *op(1, 2, 150, 160, "fail"), *op(1, 3, 200, 210)]
    verdict = level_verdict(Run(params(), events, checks_all_kinds()))
    assert verdict == {
        "run_id": "r1",
        "level": "quorum",
        "workload": "register",
        "nemesis": "partition",
        "availability_during_faults": 0.5,
        "availability_outside_faults": 1.0,
        "ops_during_faults": 2,
        "ops_outside_faults": 1,
        "lost_writes": 2,
        "stale_reads": 5,  # the larger session count: one read may break both guarantees
        "linearizable": "violated (not promised)",
        "time_to_converge_s": 1.5,
        "checks": {
            "set": "violated",
            "session": "violated",
            "linearizable": "violated (not promised)",
            "convergence": "ok",
        },
    }


def test_level_verdict_without_checkers_leaves_their_numbers_out_rather_than_zero() -> None:
    verdict = level_verdict(Run(params(), op(1, 1, 0, 10), []))
    assert (verdict["lost_writes"], verdict["stale_reads"]) == (None, None)
    assert (verdict["linearizable"], verdict["time_to_converge_s"]) == (None, None)
    assert verdict["checks"] == {}


def test_a_checker_that_ran_twice_keeps_both_verdicts() -> None:
    checks = [CheckResult("set", True), CheckResult("set", None), CheckResult("set", False, promised=False)]
    assert check_verdicts(checks) == {"set": "ok", "set#2": "unknown", "set#3": "violated (not promised)"}


def test_cell_text_reads_like_the_readme_example() -> None:
    # 5 of 8 ops during the fault are ok: 62.5% shows as 62% (rounded down: 100% means no failure).
    events = [*fault(0, 1_000)]
    for n in range(8):
        events += op(1, n, n * 10, n * 10 + 1, "ok" if n < 5 else "fail")
    checks = [
        CheckResult("set", True, {"lost": 0}),
        CheckResult("session", True, {"ryw_violations": 0, "monotonic_read_violations": 3}, promised=False),
        CheckResult("linearizable", False, promised=False),
        CheckResult("convergence", True, {"time_to_converge_ms": 1_234.0}),
    ]
    # The session check passed, but a count of 3 stale reads was still reported: no mark.
    text = cell_text(level_verdict(Run(params(), events, checks)))
    assert text == "avail 62% · lost 0 · stale 3 · lin ✗ (not promised) · conv 1.2 s"


def test_cell_text_marks_promised_violations_undecided_checks_and_other_checkers() -> None:
    checks = [
        CheckResult("set", False, {"lost": 4}),
        CheckResult("linearizable", None),
        CheckResult("convergence", False, {"differing_keys": 2}),
        CheckResult("bank", False, promised=False),
        CheckResult("counter", True),
    ]
    text = cell_text(level_verdict(Run(params(nemesis="none"), op(1, 1, 0, 10), checks)))
    # No fault window: availability is the whole run's.
    assert text == "avail 100% · lost 4 ✗ · lin ? · conv ✗ · bank ✗ (not promised)"


# --- the matrix ---------------------------------------------------------------------------------


def run_of(level: str, nemesis: str, lin_promised: bool, started: int = 0) -> Run:
    run_id = f"{level}-{nemesis}-{started}"
    events = [*fault(0, 50), *op(1, 1, 10, 20), *op(1, 2, 60, 70)]
    return Run(params(level, nemesis, run_id, started), events, checks_all_kinds(lin_promised))


def test_matrix_has_levels_in_order_and_the_latest_rerun_of_each_pair() -> None:
    runs = [
        run_of("causal", "kill", False),
        run_of("quorum", "partition", False, started=1),
        run_of("one", "none", False),
        run_of("quorum", "partition", False, started=9),
        run_of("quorum", "partition", False, started=5),
    ]
    rows = matrix(runs)
    assert [row.level for row in rows] == ["one", "quorum", "causal"]
    assert rows[1].cells["partition"].run_id == "quorum-partition-9"
    assert matrix_nemeses(rows) == ["none", "kill", "partition"]


def test_matrix_markdown_has_a_row_per_level_a_column_per_nemesis_and_marks_what_is_not_promised() -> None:
    runs = [
        run_of("one", "partition", lin_promised=False),
        run_of("one", "kill", lin_promised=False),
        run_of("all", "partition", lin_promised=True),
        run_of("quorum", "none", lin_promised=False),
    ]
    lines = render_matrix_markdown(matrix(runs)).splitlines()
    assert lines[0] == "| level | none | kill | partition |"
    assert lines[1] == "|---|---|---|---|"
    body = [line.split(" | ") for line in lines[2:]]
    assert [cells[0] for cells in body] == ["| one", "| quorum", "| all"]
    assert all(len(cells) == 4 for cells in body)
    one, quorum, all_ = body
    assert one[1] == "—" and all_[1] == "—" and quorum[2] == "—"
    assert "lin ✗ (not promised)" in one[2] and "lin ✗ (not promised)" in one[3]
    assert "lin ✗" in all_[3] and "(not promised)" not in all_[3]  # promised, and violated
    assert "lost 2 ✗" in all_[3] and "conv 1.5 s" in all_[3]


def test_matrix_markdown_escapes_pipes_in_names() -> None:
    text = render_matrix_markdown(matrix([run_of("quorum", "a|b", False)]))
    assert "| a\\|b |" in text.splitlines()[0]


def test_availability_in_a_cell_rounds_down_so_100_percent_means_no_failure() -> None:
    events = [*fault(0, 10_000)]
    for n in range(250):
        events += op(1, n, n, n + 0.5, "fail" if n == 0 else "ok")  # 249 of 250 ok: 99.6%
    assert cell_text(level_verdict(Run(params(), events, []))) == "avail 99%"
