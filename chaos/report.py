"""The report of one chaos run (HTML for people, JSON for machines) and the matrix page.

Rendering is pure and deterministic: the same `Run` gives the same bytes (no generation time,
nothing unordered), so two reports diff cleanly. The HTML is one self-contained file, with the
charts as inline SVG (chaos/svg.py) and no external CSS, script or font: it opens offline, from
a CI artifact or an e-mail. Only `write_report` touches the disk.
"""

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from html import escape
from pathlib import Path
from typing import Any

from chaos import svg
from chaos.history import nemesis_windows, operations
from chaos.summary import (
    MATRIX_LEGEND,
    NS_PER_MS,
    NS_PER_S,
    MatrixRow,
    Run,
    Window,
    availability,
    cell_text,
    choose_bucket_ms,
    end_ns,
    latency_series,
    level_verdict,
    matrix_nemeses,
    throughput_series,
)

REPORT_SCHEMA = "titra-chaos-report/1"
REPORT_HTML = "report.html"
REPORT_JSON = "report.json"

OUTCOME_COLORS = (("ok", "#2e7d32"), ("fail", "#c62828"), ("unknown", "#f9a825"))
P50_COLOR, P99_COLOR = "#1565c0", "#6a1b9a"

# What each level promises, in the words of docs/api.md ("Levels"); the verdict table says which
# checks the runner held the level to.
LEVEL_PROMISES = {
    "one": "Eventual consistency. A write is acknowledged once one replica has stored it durably; the other "
    "replicas get it asynchronously, and a read answers from the first replica that replies. Promised: an "
    "acknowledged write is not lost, and replicas converge once faults heal. Not promised: that a read sees "
    "the latest write, even the session's own (stale reads are expected), nor linearizability.",
    "quorum": "W = N/2+1 replicas must store a write and R = N/2+1 must answer a read, so every read quorum "
    "overlaps every write quorum: a read that starts after a write was acknowledged sees it (or something "
    "newer, or siblings). Promised: no acknowledged write is lost, and reads see acknowledged writes. Not "
    "promised: linearizability under faults: a write that timed out after reaching only some replicas can be "
    "seen by one read and missed by the next, and concurrent writes become siblings, not one order. With a "
    "majority of a key's replicas unreachable, its requests fail (503) or time out (504).",
    "all": "Every one of the N replicas must store a write and answer a read: the freshest reads and the least "
    "availability, since one unreachable replica makes its keys' requests fail (503) or time out (504). "
    "Promised: no acknowledged write is lost, and reads see acknowledged writes. Not promised: "
    "linearizability: a write that timed out may sit on some replicas only, and concurrent writes become "
    "siblings.",
    "causal": "A write is acknowledged by one replica, as with one, but a client that passes back the "
    "Titra-Context it was given gets session guarantees, even through another node: read-your-writes, "
    "monotonic reads and writes-follow-reads. A read waits (up to its timeout) for a replica state that covers "
    "its context, so under a partition it times out rather than go back in time. Not promised: that a session "
    "sees other sessions' recent writes, nor linearizability.",
}

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1000px;
       color: #222; padding: 0 1em; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.5em 0; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }
th { background: #f4f4f4; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.chart { max-width: 100%; height: auto; border: 1px solid #eee; }
.verdict-ok { background: #e8f5e9; } .verdict-violated { background: #ffebee; }
.verdict-not-promised { background: #fff8e1; } .verdict-unknown { background: #eceff1; }
.promise { background: #f7f9fc; border-left: 4px solid #1565c0; padding: 0.6em 1em; }
ul.examples { margin: 0; padding-left: 1.2em; font-family: ui-monospace, monospace; font-size: 0.85em; }
.note { color: #666; font-size: 0.9em; }
"""


def describe_fault(value: Any) -> str:
    """A fault window's label, short enough for a chart: `{"kind": "partition", "groups": [["n1"],
    ["n2", "n3"]]}` reads "partition groups=[[n1],[n2,n3]]" (the kind first, the rest by name)."""
    if isinstance(value, dict):
        kind = [_compact(value["kind"])] if "kind" in value else []
        return " ".join(kind + [f"{k}={_compact(v)}" for k, v in sorted(value.items(), key=str) if k != "kind"])
    return _compact(value)


def _compact(value: Any) -> str:
    if isinstance(value, list | tuple):
        return "[" + ",".join(_compact(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + describe_fault(value) + "}"
    return str(value)


def _plain(value: Any) -> Any:
    # Runner-supplied extras may hold anything; JSON keeps what it can and strings the rest.
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def _spans(windows: Sequence[Window]) -> tuple[list[svg.Span], list[str]]:
    spans = [(start / NS_PER_S, None if stop is None else stop / NS_PER_S) for start, stop, _ in windows]
    return spans, [describe_fault(description) for _, _, description in windows]


def _fraction(ok: int, total: int) -> dict[str, Any]:
    return {"ok": ok, "total": total, "fraction": None if total == 0 else ok / total}


def render_json(run: Run) -> dict[str, Any]:
    """Everything the HTML shows, machine-readable. Keys: schema, params, end_ms, windows, ops,
    series (bucket_ms, throughput, latency), availability, checks, verdict, convergence_snapshots_meta."""
    ops = operations(run.events)
    windows = nemesis_windows(run.events)
    until = end_ns(run)
    bucket_ms = choose_bucket_ms(until)
    avail = availability(ops, windows)
    return {
        "schema": REPORT_SCHEMA,
        "params": _plain(asdict(run.params)),
        "end_ms": until / NS_PER_MS,
        "windows": [
            {
                "start_ms": start / NS_PER_MS,
                "stop_ms": None if stop is None else stop / NS_PER_MS,
                "description": _plain(description),
            }
            for start, stop, description in windows
        ],
        "ops": {
            "total": len(ops),
            **{outcome: sum(op.outcome == outcome for op in ops) for outcome in ("ok", "fail", "info")},
        },
        "series": {
            "bucket_ms": bucket_ms,
            "throughput": [asdict(b) for b in throughput_series(ops, bucket_ms, until)],
            "latency": [asdict(b) for b in latency_series(ops, bucket_ms, until)],
        },
        "availability": {
            "during_faults": _fraction(avail.during_ok, avail.during_total),
            "outside_faults": _fraction(avail.outside_ok, avail.outside_total),
        },
        "checks": [_plain(check.to_json()) for check in run.checks],
        "verdict": _plain(level_verdict(run)),
        "convergence_snapshots_meta": _plain(run.convergence_snapshots_meta),
    }


# --- HTML ---------------------------------------------------------------------------------------


def _page(title: str, body: list[str]) -> str:
    head = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        '<head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(title)}</title><style>{CSS}</style></head>",
        "<body>",
    ]
    return "\n".join([*head, *body, "</body>", "</html>"]) + "\n"


def _rows(pairs: Sequence[tuple[str, str]]) -> list[str]:
    return [f"<tr><th>{escape(name)}</th><td>{escape(value)}</td></tr>" for name, value in pairs]


def _wall(ns: int) -> str:
    return datetime.fromtimestamp(ns / NS_PER_S, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _parameters(run: Run) -> list[str]:
    p = run.params
    pairs = [
        ("run id", p.run_id),
        ("level", p.level),
        ("workload", p.workload),
        ("nemesis", p.nemesis),
        ("duration", f"{p.duration_s:g} s"),
        ("nodes", str(p.nodes)),
        ("seed", str(p.seed)),
        ("started", f"{_wall(p.started_wall_ns)} ({p.started_wall_ns} ns)"),
    ]
    pairs += [(name, describe_fault(_plain(value))) for name, value in sorted(p.extra.items())]
    if run.convergence_snapshots_meta is not None:
        pairs.append(("convergence snapshots", describe_fault(_plain(run.convergence_snapshots_meta))))
    return ["<h2>Parameters</h2>", '<table class="params">', *_rows(pairs), "</table>"]


def _percent(fraction: float | None) -> str:
    return "n/a" if fraction is None else f"{fraction * 100:.1f}%"


def _headline(data: dict[str, Any]) -> list[str]:
    verdict, avail = data["verdict"], data["availability"]
    during, outside = avail["during_faults"], avail["outside_faults"]
    converge = verdict["time_to_converge_s"]
    pairs = [
        ("availability during faults", f"{_percent(during['fraction'])} ({during['ok']} of {during['total']} ops ok)"),
        (
            "availability outside faults",
            f"{_percent(outside['fraction'])} ({outside['ok']} of {outside['total']} ops ok)",
        ),
        ("lost writes", "n/a" if verdict["lost_writes"] is None else str(verdict["lost_writes"])),
        ("stale reads", "n/a" if verdict["stale_reads"] is None else str(verdict["stale_reads"])),
        ("linearizable", verdict["linearizable"] or "not checked"),
        ("time to converge", "n/a" if converge is None else f"{converge:.2f} s"),
    ]
    return ["<h2>Verdict</h2>", '<table class="headline">', *_rows(pairs), "</table>"]


def _promise(level: str) -> list[str]:
    text = LEVEL_PROMISES.get(level, f"No description of level {level!r}: the verdict table shows what was checked.")
    return [f"<h2>What <code>{escape(level)}</code> promises</h2>", f'<p class="promise">{escape(text)}</p>']


_VERDICT_CLASS = {
    "ok": "verdict-ok",
    "violated": "verdict-violated",
    "violated (not promised)": "verdict-not-promised",
    "unknown": "verdict-unknown",
}


def _checks(checks: list[dict[str, Any]]) -> list[str]:
    parts = [
        "<h2>Checks</h2>",
        '<table class="checks"><tr><th>checker</th><th>verdict</th><th>promised</th><th>counts</th>'
        "<th>examples</th></tr>",
    ]
    for check in checks:
        counts = "<br>".join(f"{escape(str(k))}: {escape(str(v))}" for k, v in check["counts"].items())
        examples = "".join(f"<li>{escape(str(e))}</li>" for e in check["examples"])
        parts.append(
            f'<tr class="check {_VERDICT_CLASS.get(check["verdict"], "verdict-unknown")}">'
            f'<td>{escape(check["checker"])}</td><td class="verdict">{escape(check["verdict"])}</td>'
            f"<td>{'yes' if check['promised'] else 'no'}</td><td>{counts}</td>"
            f'<td><ul class="examples">{examples}</ul></td></tr>'
        )
    if not checks:
        parts.append('<tr><td colspan="5">no checker ran</td></tr>')
    parts.append("</table>")
    return parts


def _charts(data: dict[str, Any], spans: list[svg.Span], labels: list[str]) -> list[str]:
    end_s = max(data["end_ms"] / 1000, 0.001)
    bucket_s = data["series"]["bucket_ms"] / 1000
    per_second = 1 / bucket_s
    stacks = [
        (b["start_ms"] / 1000, [b["ok"] * per_second, b["fail"] * per_second, b["info"] * per_second])
        for b in data["series"]["throughput"]
    ]
    middle = [b["start_ms"] / 1000 + bucket_s / 2 for b in data["series"]["latency"]]
    p50 = [(t, b["p50_ms"]) for t, b in zip(middle, data["series"]["latency"], strict=True)]
    p99 = [(t, b["p99_ms"]) for t, b in zip(middle, data["series"]["latency"], strict=True)]
    return [
        "<h2>Faults</h2>",
        svg.timeline("fault-timeline", "Fault windows", end_s, spans, labels),
        "<h2>Throughput</h2>",
        svg.stacked_bars(
            "throughput", "Operations per second by outcome", end_s, bucket_s, stacks, OUTCOME_COLORS,
            spans, labels, "ops/s",
        ),
        f'<p class="note">Buckets of {bucket_s:g} s by completion time; shaded: fault windows. '
        "unknown = timed out or connection lost: it may or may not have happened.</p>",
        "<h2>Latency</h2>",
        svg.log_lines(
            "latency", "Latency of ok and failed operations (log scale)", end_s,
            [svg.LineSeries("p50", P50_COLOR, p50), svg.LineSeries("p99", P99_COLOR, p99)],
            spans, labels, "latency",
        ),
        '<p class="note">Nearest-rank percentiles per bucket of operations with a definite outcome; '
        "unknown operations are left out (their latency is the client's timeout).</p>",
    ]  # fmt: skip


def render_html(run: Run) -> str:
    data = render_json(run)
    spans, labels = _spans(nemesis_windows(run.events))
    p = run.params
    title = f"Titra chaos: {p.level} under {p.nemesis} ({p.run_id})"
    body = [
        f"<h1>Titra chaos run: <code>{escape(p.level)}</code> under <code>{escape(p.nemesis)}</code></h1>",
        f'<p class="note">run {escape(p.run_id)}, workload {escape(p.workload)}, {data["ops"]["total"]} operations, '
        f"{len(spans)} fault windows</p>",
        *_headline(data),
        *_promise(p.level),
        *_checks(data["checks"]),
        *_charts(data, spans, labels),
        *_parameters(run),
    ]
    return _page(title, body)


def _cell_class(verdicts: dict[str, str]) -> str:
    words = set(verdicts.values())
    for word in ("violated", "violated (not promised)", "unknown"):
        if word in words:
            return _VERDICT_CLASS[word]
    return _VERDICT_CLASS["ok"]


def default_report_href(run_id: str) -> str:
    """Where a run's report sits relative to the matrix page: one directory per run beside it."""
    return f"{run_id}/{REPORT_HTML}"


def render_matrix_html(rows: Sequence[MatrixRow], report_href: Callable[[str], str] = default_report_href) -> str:
    """One page: levels down, nemeses across, each cell the headline numbers linking to its run."""
    nemeses = matrix_nemeses(rows)
    table = ['<table class="matrix"><tr><th>level</th>', *(f"<th>{escape(n)}</th>" for n in nemeses), "</tr>"]
    for row in rows:
        table.append(f"<tr><th>{escape(row.level)}</th>")
        for nemesis in nemeses:
            cell = row.cells.get(nemesis)
            if cell is None:
                table.append("<td>—</td>")
                continue
            link = f'<a href="{escape(report_href(cell.run_id))}">{escape(cell.run_id)}</a>'
            table.append(
                f'<td class="{_cell_class(cell.verdict["checks"])}">{escape(cell_text(cell.verdict))}'
                f'<br><span class="note">{link}</span></td>'
            )
        table.append("</tr>")
    table.append("</table>")
    body = ["<h1>Titra chaos matrix</h1>", *table, f'<p class="note">{escape(MATRIX_LEGEND)}</p>']
    return _page("Titra chaos matrix", body)


def write_report(run: Run, out_dir: Path) -> tuple[Path, Path]:
    """Write report.html and report.json into `out_dir` (created if missing)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    html_path, json_path = out_dir / REPORT_HTML, out_dir / REPORT_JSON
    html_path.write_text(render_html(run), encoding="utf-8")
    json_path.write_text(json.dumps(render_json(run), indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return html_path, json_path
