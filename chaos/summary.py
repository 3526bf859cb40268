"""What a chaos run amounts to: per-run series and headline numbers, and the level x nemesis matrix.

Pure (no clock, no files): the runner fills a `Run`, the report (chaos/report.py) renders it.
Times are nanoseconds relative to the start of the run, as in chaos/history.py.

Numbers that only a checker can know are read from its `CheckResult.counts`, under these keys
(the checkers' side of the contract with the report; a missing key leaves the number out, never 0):

    checker "set"           counts["lost"]                  acknowledged adds missing at the end
    checker "session"       counts["ryw_violations"],       reads that broke read-your-writes or
                            counts["monotonic_read_violations"]   monotonic reads (a read may be in both)
    checker "convergence"   counts["time_to_converge_ms"]   from the heal to identical replicas
"""

import math
from collections.abc import Iterable, Sequence
from dataclasses import field
from typing import Any, TypedDict

from chaos.history import Event, Operation, nemesis_windows, operations
from chaos.verdict import CheckResult
from cluster.frozen import frozen

Window = tuple[int, int | None, Any]  # (start_ns, stop_ns or None if never healed, description)

SET_CHECKER = "set"
SESSION_CHECKER = "session"
LINEARIZABLE_CHECKER = "linearizable"
CONVERGENCE_CHECKER = "convergence"
HEADLINE_CHECKERS = (SET_CHECKER, SESSION_CHECKER, LINEARIZABLE_CHECKER, CONVERGENCE_CHECKER)

LEVEL_ORDER = ("one", "quorum", "all", "causal")  # weakest write acknowledgement first, as in docs/api.md
NO_FAULT = "none"  # the nemesis name of a fault-free baseline run; its matrix column comes first

# Plots stay readable (and reports small) with about a hundred buckets, whatever the run length.
BUCKETS_MAX = 120
BUCKET_MS_CHOICES = (10, 20, 50, 100, 200, 250, 500, 1_000, 2_000, 5_000, 10_000, 15_000, 30_000, 60_000)

NS_PER_MS = 1_000_000
NS_PER_S = 1_000_000_000


@frozen
class RunParams:
    run_id: str
    level: str  # consistency level every client operation asked for
    workload: str
    nemesis: str  # NO_FAULT for a baseline run
    duration_s: float
    nodes: int  # cluster size
    seed: int
    started_wall_ns: int  # wall clock at the start, for people; every other time is relative
    extra: dict[str, Any] = field(default_factory=dict)  # anything else the runner wants shown


@frozen
class Run:
    params: RunParams
    events: list[Event]
    checks: list[CheckResult]
    convergence_snapshots_meta: dict[str, Any] | None = None


@frozen
class ThroughputBucket:
    start_ms: int
    ok: int
    fail: int
    info: int  # unknown outcome (Jepsen's indeterminate): neither counted as done nor as not done


@frozen
class LatencyBucket:
    start_ms: int
    count: int  # ops with a definite outcome that completed in this bucket
    p50_ms: float | None  # None: no such op in the bucket (a gap in the plot, not a zero)
    p99_ms: float | None


@frozen
class Availability:
    during_ok: int
    during_total: int
    outside_ok: int
    outside_total: int

    @property
    def during(self) -> float | None:
        return None if self.during_total == 0 else self.during_ok / self.during_total

    @property
    def outside(self) -> float | None:
        return None if self.outside_total == 0 else self.outside_ok / self.outside_total


class LevelVerdict(TypedDict):
    run_id: str
    level: str
    workload: str
    nemesis: str
    availability_during_faults: float | None
    availability_outside_faults: float | None
    ops_during_faults: int
    ops_outside_faults: int
    lost_writes: int | None
    stale_reads: int | None
    linearizable: str | None  # verdict word of the linearizable check; None when it did not run
    time_to_converge_s: float | None
    checks: dict[str, str]  # checker -> verdict word (CheckResult.verdict)


@frozen
class MatrixCell:
    run_id: str
    verdict: LevelVerdict


@frozen
class MatrixRow:
    level: str
    cells: dict[str, MatrixCell]  # nemesis -> the run of this level under that nemesis


# --- series -------------------------------------------------------------------------------------


def end_ns(run: Run) -> int:
    """The time axis of the run: its planned duration, stretched to cover every recorded event."""
    last_event = max((e.time_ns for e in run.events), default=0)
    return max(round(run.params.duration_s * NS_PER_S), last_event)


def choose_bucket_ms(span_ns: int) -> int:
    for bucket_ms in BUCKET_MS_CHOICES:
        if span_ns <= bucket_ms * NS_PER_MS * BUCKETS_MAX:
            return bucket_ms
    minutes = -(-span_ns // (60_000 * NS_PER_MS * BUCKETS_MAX))
    return minutes * 60_000


def _bucket_count(times_ns: Iterable[int], bucket_ns: int, until_ns: int | None) -> int:
    last = max(times_ns, default=-1)
    if until_ns is not None:
        last = max(last, until_ns - 1)
    return 0 if last < 0 else last // bucket_ns + 1


def _seen_ns(op: Operation) -> int:
    # An op the run ended on has no completion; it is counted (as unknown) where it was invoked.
    return op.invoke_ns if op.complete_ns is None else op.complete_ns


def throughput_series(ops: Sequence[Operation], bucket_ms: int, until_ns: int | None = None) -> list[ThroughputBucket]:
    """Completions per bucket by outcome, every bucket from 0 present (empty ones as zeros).
    `until_ns` extends the series to the end of the run so plots share one time axis."""
    assert bucket_ms > 0
    bucket_ns = bucket_ms * NS_PER_MS
    count = _bucket_count((_seen_ns(op) for op in ops), bucket_ns, until_ns)
    tallies = [{"ok": 0, "fail": 0, "info": 0} for _ in range(count)]
    for op in ops:
        tallies[_seen_ns(op) // bucket_ns][op.outcome] += 1
    return [
        ThroughputBucket(index * bucket_ms, tally["ok"], tally["fail"], tally["info"])
        for index, tally in enumerate(tallies)
    ]


def percentile(sorted_values: Sequence[float], pct: int) -> float:
    """Nearest-rank percentile: always a value that was observed, so small buckets stay honest."""
    assert sorted_values and 0 < pct <= 100
    rank = -(-pct * len(sorted_values) // 100)  # ceil without floats
    return sorted_values[rank - 1]


def latency_series(ops: Sequence[Operation], bucket_ms: int, until_ns: int | None = None) -> list[LatencyBucket]:
    """p50/p99 latency of the ops that completed with a definite outcome (ok or fail), bucketed by
    completion time. Unknown ops are left out: their "latency" is the client's timeout, not the
    cluster's answer time, and the throughput plot already shows them."""
    assert bucket_ms > 0
    bucket_ns = bucket_ms * NS_PER_MS
    done = [op for op in ops if op.outcome != "info" and op.complete_ns is not None]
    count = _bucket_count((_seen_ns(op) for op in ops), bucket_ns, until_ns)
    latencies: list[list[float]] = [[] for _ in range(count)]
    for op in done:
        assert op.complete_ns is not None
        latencies[op.complete_ns // bucket_ns].append((op.complete_ns - op.invoke_ns) / NS_PER_MS)
    series = []
    for index, values in enumerate(latencies):
        values.sort()
        if values:
            series.append(LatencyBucket(index * bucket_ms, len(values), percentile(values, 50), percentile(values, 99)))
        else:
            series.append(LatencyBucket(index * bucket_ms, 0, None, None))
    return series


def in_window(time_ns: int, windows: Sequence[Window]) -> bool:
    """Half-open [start, stop): the instant of healing belongs to the healthy cluster."""
    return any(start <= time_ns and (stop is None or time_ns < stop) for start, stop, _ in windows)


def availability(ops: Sequence[Operation], windows: Sequence[Window]) -> Availability:
    """Fraction of ops that completed ok, for ops invoked during a fault window vs outside one.
    An op is placed by its invocation: that is when the client asked the cluster to be available."""
    during_ok = during_total = outside_ok = outside_total = 0
    for op in ops:
        ok = op.outcome == "ok"
        if in_window(op.invoke_ns, windows):
            during_total += 1
            during_ok += ok
        else:
            outside_total += 1
            outside_ok += ok
    return Availability(during_ok, during_total, outside_ok, outside_total)


# --- verdicts -----------------------------------------------------------------------------------


def check_verdicts(checks: Sequence[CheckResult]) -> dict[str, str]:
    """checker -> verdict word; a checker that ran twice keeps both, the second as "name#2"."""
    verdicts: dict[str, str] = {}
    for check in checks:
        name, number = check.checker, 1
        while name in verdicts:
            number += 1
            name = f"{check.checker}#{number}"
        verdicts[name] = check.verdict
    return verdicts


def _count(checks: Sequence[CheckResult], checker: str, key: str) -> list[int | float]:
    return [c.counts[key] for c in checks if c.checker == checker and key in c.counts]


SESSION_STALE_KEYS = ("ryw_violations", "monotonic_read_violations")


def stale_reads(checks: Sequence[CheckResult]) -> int | None:
    """Reads that returned older data than the session had seen or written. The session checker may
    count one read under both guarantees: the larger count is a lower bound on distinct stale reads,
    where the sum could count a read twice. (The linearizable checker counts keys, not reads.)"""
    found = [n for key in SESSION_STALE_KEYS for n in _count(checks, SESSION_CHECKER, key)]
    return int(max(found)) if found else None


def level_verdict(run: Run) -> LevelVerdict:
    ops = operations(run.events)
    avail = availability(ops, nemesis_windows(run.events))
    lost = _count(run.checks, SET_CHECKER, "lost")
    converge_ms = _count(run.checks, CONVERGENCE_CHECKER, "time_to_converge_ms")
    linearizable = [c.verdict for c in run.checks if c.checker == LINEARIZABLE_CHECKER]
    return LevelVerdict(
        run_id=run.params.run_id,
        level=run.params.level,
        workload=run.params.workload,
        nemesis=run.params.nemesis,
        availability_during_faults=avail.during,
        availability_outside_faults=avail.outside,
        ops_during_faults=avail.during_total,
        ops_outside_faults=avail.outside_total,
        lost_writes=int(sum(lost)) if lost else None,
        stale_reads=stale_reads(run.checks),
        linearizable=_worst(linearizable),
        time_to_converge_s=max(converge_ms) / 1000 if converge_ms else None,
        checks=check_verdicts(run.checks),
    )


_SEVERITY = {"ok": 0, "unknown": 1, "violated (not promised)": 2, "violated": 3}


def _worst(verdicts: Sequence[str]) -> str | None:
    return max(verdicts, key=lambda v: _SEVERITY.get(v, 1), default=None)


# --- the matrix ---------------------------------------------------------------------------------


def _level_key(level: str) -> tuple[int, str]:
    return (LEVEL_ORDER.index(level), "") if level in LEVEL_ORDER else (len(LEVEL_ORDER), level)


def matrix(runs: Iterable[Run]) -> list[MatrixRow]:
    """One row per level (in LEVEL_ORDER), one cell per nemesis that level ran under. When a
    (level, nemesis) pair ran more than once, the latest start wins: a rerun supersedes."""
    latest: dict[tuple[str, str], Run] = {}
    for run in runs:
        pair = (run.params.level, run.params.nemesis)
        if pair not in latest or run.params.started_wall_ns >= latest[pair].params.started_wall_ns:
            latest[pair] = run
    levels = sorted({level for level, _ in latest}, key=_level_key)
    return [
        MatrixRow(
            level,
            {
                nemesis: MatrixCell(run.params.run_id, level_verdict(run))
                for (run_level, nemesis), run in sorted(latest.items(), key=lambda item: item[0])
                if run_level == level
            },
        )
        for level in levels
    ]


def matrix_nemeses(rows: Sequence[MatrixRow]) -> list[str]:
    """The matrix columns: the fault-free baseline first, then the nemeses by name."""
    names = {nemesis for row in rows for nemesis in row.cells}
    return sorted(names, key=lambda name: (name != NO_FAULT, name))


MATRIX_LEGEND = (
    "avail: share of ops that succeeded while a fault was active (outside faults in the 'none' column); "
    "lost: acknowledged writes missing at the end; "
    "stale: reads that broke read-your-writes or monotonic reads (session checker); "
    "lin: linearizability; conv: time from the last heal until every replica held the same data; "
    "✗ violated, ✓ held, ? undecided, (not promised): violated but this level does not promise it."
)

_MARKS = {"ok": "", "violated": " ✗", "violated (not promised)": " ✗ (not promised)", "unknown": " ?"}


def _mark(verdicts: dict[str, str], checker: str) -> str:
    return _MARKS.get(verdicts.get(checker, "ok"), " ?")


def _percent(fraction: float) -> str:
    # Rounded down, so "100%" means no op failed; the epsilon absorbs float error (0.29 * 100 = 28.99...).
    return f"{math.floor(fraction * 100 + 1e-9)}%"


def cell_text(verdict: LevelVerdict) -> str:
    """The headline numbers of one run, e.g. "avail 62% · lost 0 · stale 3 · lin ✗ (not promised) · conv 1.2 s"."""
    checks = verdict["checks"]
    fraction = (
        verdict["availability_during_faults"]
        if verdict["ops_during_faults"]
        else verdict["availability_outside_faults"]
    )
    parts = ["avail n/a" if fraction is None else f"avail {_percent(fraction)}"]
    if verdict["lost_writes"] is not None:
        parts.append(f"lost {verdict['lost_writes']}{_mark(checks, SET_CHECKER)}")
    if verdict["stale_reads"] is not None:
        parts.append(f"stale {verdict['stale_reads']}{_mark(checks, SESSION_CHECKER)}")
    if verdict["linearizable"] is not None:
        parts.append("lin ✓" if verdict["linearizable"] == "ok" else "lin" + _MARKS.get(verdict["linearizable"], " ?"))
    if verdict["time_to_converge_s"] is not None:
        parts.append(f"conv {verdict['time_to_converge_s']:.1f} s{_mark(checks, CONVERGENCE_CHECKER)}")
    elif CONVERGENCE_CHECKER in checks:
        parts.append("conv" + (_mark(checks, CONVERGENCE_CHECKER) or " ✓"))
    # Checkers without a headline number still show up when they did not pass.
    for name, word in checks.items():
        if name.split("#")[0] not in HEADLINE_CHECKERS and word != "ok":
            parts.append(name + _MARKS.get(word, " ?"))
    return " · ".join(parts)


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|")


def render_matrix_markdown(rows: Sequence[MatrixRow]) -> str:
    """A Markdown table for the README: rows = levels, columns = nemeses, "—" where nothing ran."""
    nemeses = matrix_nemeses(rows)
    lines = [
        "| level | " + " | ".join(_md_cell(n) for n in nemeses) + " |",
        "|---|" + "---|" * len(nemeses),
    ]
    for row in rows:
        cells = [_md_cell(cell_text(row.cells[n].verdict)) if n in row.cells else "—" for n in nemeses]
        lines.append(f"| {_md_cell(row.level)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
