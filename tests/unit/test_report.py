"""chaos.report and chaos.svg: what a reader of the report sees, checked on a small hand-built run."""

import json
import re
import xml.etree.ElementTree as ET
from html import escape
from html.parser import HTMLParser
from pathlib import Path

import pytest

from chaos import svg
from chaos.history import Event
from chaos.report import (
    LEVEL_PROMISES,
    describe_fault,
    render_html,
    render_json,
    render_matrix_html,
    write_report,
)
from chaos.summary import LEVEL_ORDER, Run, RunParams, matrix
from chaos.verdict import CheckResult

MS = 1_000_000
PARTITION = {"kind": "partition", "groups": [["n1"], ["n2", "n3"]]}


def op(process: int, op_id: int, invoke_ms: int, complete_ms: int, outcome: str = "ok") -> list[Event]:
    return [
        Event("invoke", process, op_id, "write", "k1", op_id, invoke_ms * MS, "n1", "quorum"),
        Event(outcome, process, op_id, "write", "k1", None, complete_ms * MS, "n1", "quorum"),  # type: ignore[arg-type]
    ]


def sample_run(level: str = "quorum", nemesis: str = "partition", run_id: str = "run-7", faults: bool = True) -> Run:
    """Two fault windows (a partition, then a kill) in a 2 s run, a few ops, one check per verdict word."""
    events: list[Event] = []
    if faults:
        events += [
            Event("nemesis", -1, 0, "start", value=PARTITION, time_ns=500 * MS),
            Event("nemesis", -1, 0, "stop", value=PARTITION, time_ns=900 * MS),
            Event("nemesis", -1, 0, "start", value="kill n2", time_ns=1_300 * MS),
            Event("nemesis", -1, 0, "stop", value="kill n2", time_ns=1_500 * MS),
        ]
    events += [*op(1, 1, 100, 102), *op(2, 2, 600, 601, "fail"), *op(1, 3, 700, 1_700, "info"), *op(2, 4, 1_800, 1_805)]
    checks = [
        CheckResult("set", True, {"attempted": 4, "lost": 0}),
        CheckResult(
            "session", False, {"ryw_violations": 1, "monotonic_read_violations": 0}, ["p2 read k1 -> [] after <2>"]
        ),
        CheckResult("linearizable", False, {"keys_violating": 1}, ["k1: stale read"], promised=False),
        CheckResult("convergence", None, {"snapshots": 0}, ["no snapshot taken at or after the heal"]),
    ]
    params = RunParams(run_id, level, "register", nemesis, 2.0, 3, 1234, 1_700_000_000_000_000_000, {"clients": 2})
    return Run(params, events, checks, {"snapshots": 0})


def chart(html: str, chart_id: str) -> str:
    found = re.search(rf'<svg [^>]*id="{chart_id}".*?</svg>', html, re.S)
    assert found, f"no chart {chart_id}"
    return found.group(0)


class Rows(HTMLParser):
    """The rows of every table as (row class, [cell texts])."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[str, list[str]]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "tr":
            self.rows.append((dict(attrs).get("class") or "", []))
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1][1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def rows_of(html: str) -> list[tuple[str, list[str]]]:
    parser = Rows()
    parser.feed(html)
    return parser.rows


# --- HTML ---------------------------------------------------------------------------------------


def test_rendering_is_deterministic() -> None:
    assert render_html(sample_run()) == render_html(sample_run())
    assert json.dumps(render_json(sample_run())) == json.dumps(render_json(sample_run()))


def test_html_shows_the_parameters() -> None:
    table = {cells[0]: cells[1] for _, cells in rows_of(render_html(sample_run())) if len(cells) == 2}
    assert table["run id"] == "run-7"
    assert table["level"] == "quorum"
    assert table["workload"] == "register"
    assert table["nemesis"] == "partition"
    assert table["duration"] == "2 s"
    assert table["nodes"] == "3"
    assert table["seed"] == "1234"
    assert table["started"] == "2023-11-14 22:13:20 UTC (1700000000000000000 ns)"
    assert table["clients"] == "2"


def test_each_time_plot_shades_exactly_one_rect_per_fault_window() -> None:
    html = render_html(sample_run())
    for chart_id in ("throughput", "latency"):
        assert chart(html, chart_id).count('class="fault-window"') == 2, chart_id
    assert chart(html, "fault-timeline").count('class="fault-bar"') == 2
    quiet = render_html(sample_run(faults=False))
    for chart_id in ("throughput", "latency"):
        assert 'class="fault-window"' not in chart(quiet, chart_id)
    assert "no faults injected" in chart(quiet, "fault-timeline")


def test_fault_windows_sit_where_they_happened_on_the_time_axis() -> None:
    # 2 s over the default 868 px plot from x = 72: the partition spans 0.5 s to 0.9 s.
    rect = re.search(
        r'<rect class="fault-window" x="([\d.]+)" y="\d+" width="([\d.]+)"',
        chart(render_html(sample_run()), "throughput"),
    )
    assert rect is not None
    assert (float(rect.group(1)), float(rect.group(2))) == pytest.approx((72 + 868 * 0.25, 868 * 0.2))


def test_every_chart_is_well_formed_svg() -> None:
    html = render_html(sample_run())
    for chart_id in ("fault-timeline", "throughput", "latency"):
        root = ET.fromstring(chart(html, chart_id))
        assert root.tag == "{http://www.w3.org/2000/svg}svg"


def test_verdict_table_has_one_row_per_check_with_its_word() -> None:
    checks = [cells for css, cells in rows_of(render_html(sample_run())) if css.startswith("check ")]
    assert [(cells[0], cells[1], cells[2]) for cells in checks] == [
        ("set", "ok", "yes"),
        ("session", "violated", "yes"),
        ("linearizable", "violated (not promised)", "no"),
        ("convergence", "unknown", "yes"),
    ]
    assert "ryw_violations: 1" in checks[1][3]
    assert checks[1][4] == "p2 read k1 -> [] after <2>"  # escaped in the page, read back as text


def test_headline_numbers_come_from_the_checks_and_the_history() -> None:
    table = {cells[0]: cells[1] for _, cells in rows_of(render_html(sample_run())) if len(cells) == 2}
    # During faults: the fail at 600 ms and the unknown at 700 ms; outside: the ok ops at 100 and 1800 ms.
    assert table["availability during faults"] == "0.0% (0 of 2 ops ok)"
    assert table["availability outside faults"] == "100.0% (2 of 2 ops ok)"
    assert table["lost writes"] == "0"
    assert table["stale reads"] == "1"
    assert table["linearizable"] == "violated (not promised)"
    assert table["time to converge"] == "n/a"


@pytest.mark.parametrize("level", LEVEL_ORDER)
def test_the_page_says_what_its_level_promises(level: str) -> None:
    html = render_html(sample_run(level=level))
    assert f"What <code>{level}</code> promises" in html
    assert f'<p class="promise">{escape(LEVEL_PROMISES[level])}</p>' in html


def test_promises_name_each_levels_defining_rule() -> None:
    assert "one replica" in LEVEL_PROMISES["one"]
    assert "N/2+1" in LEVEL_PROMISES["quorum"] and "Not promised: linearizability" in LEVEL_PROMISES["quorum"]
    assert "Every one of the N replicas" in LEVEL_PROMISES["all"]
    assert "read-your-writes" in LEVEL_PROMISES["causal"]


def test_html_is_self_contained_and_escapes_what_it_shows() -> None:
    html = render_html(sample_run(run_id="<b>x</b>"))
    assert "<b>x</b>" not in html and "&lt;b&gt;x&lt;/b&gt;" in html
    outside = re.findall(r"https?://[^\s\"']+", html)
    assert set(outside) == {"http://www.w3.org/2000/svg"}  # the SVG namespace only: nothing is fetched
    for fetches in ("<script", "<link", "@import", "url(", "src="):
        assert fetches not in html


def test_fault_labels_put_the_kind_first() -> None:
    assert describe_fault(PARTITION) == "partition groups=[[n1],[n2,n3]]"
    assert describe_fault("kill n2") == "kill n2"
    assert describe_fault({"node": "n2", "signal": 9}) == "node=n2 signal=9"


# --- JSON ---------------------------------------------------------------------------------------


def test_json_round_trips_and_has_the_documented_keys() -> None:
    data = render_json(sample_run())
    assert json.loads(json.dumps(data)) == data
    assert set(data) == {
        "schema",
        "params",
        "end_ms",
        "windows",
        "ops",
        "series",
        "availability",
        "checks",
        "verdict",
        "convergence_snapshots_meta",
    }
    assert data["windows"] == [
        {"start_ms": 500.0, "stop_ms": 900.0, "description": PARTITION},
        {"start_ms": 1_300.0, "stop_ms": 1_500.0, "description": "kill n2"},
    ]
    assert data["ops"] == {"total": 4, "ok": 2, "fail": 1, "info": 1}
    assert data["series"]["bucket_ms"] == 20  # 2 s in at most 120 buckets
    assert len(data["series"]["throughput"]) == len(data["series"]["latency"]) == 100
    assert [c["verdict"] for c in data["checks"]] == ["ok", "violated", "violated (not promised)", "unknown"]
    assert data["verdict"]["stale_reads"] == 1
    assert data["availability"]["during_faults"] == {"ok": 0, "total": 2, "fraction": 0.0}


def test_json_turns_values_it_cannot_encode_into_text() -> None:
    run = sample_run()
    run.params.extra["path"] = Path("/tmp/x")
    assert render_json(run)["params"]["extra"]["path"] == "/tmp/x"


def test_write_report_writes_both_renderings(tmp_path: Path) -> None:
    html_path, json_path = write_report(sample_run(), tmp_path / "run-7")
    assert html_path.read_text(encoding="utf-8") == render_html(sample_run())
    assert json.loads(json_path.read_text(encoding="utf-8")) == render_json(sample_run())


# --- the matrix page ----------------------------------------------------------------------------


def test_matrix_page_links_every_run_and_has_a_row_per_level() -> None:
    runs = [
        sample_run("one", "partition", "a"),
        sample_run("quorum", "partition", "b"),
        sample_run("quorum", "none", "c"),
    ]
    html = render_matrix_html(matrix(runs))
    # Row by row (one, then quorum), column by column (none, then partition); "one" has no "none" run.
    assert re.findall(r'href="([^"]+)"', html) == ["a/report.html", "c/report.html", "b/report.html"]
    rows = [cells for _, cells in rows_of(html)]
    assert rows[0] == ["level", "none", "partition"]
    assert [cells[0] for cells in rows[1:]] == ["one", "quorum"]
    assert rows[1][1] == "—"
    assert "lin ✗ (not promised)" in rows[1][2]
    custom = render_matrix_html(matrix(runs), lambda run_id: f"runs/{run_id}.html")
    assert 'href="runs/a.html"' in custom


# --- chart helpers ------------------------------------------------------------------------------


def test_axis_steps_are_one_two_or_five_times_a_power_of_ten() -> None:
    assert svg.nice_step(60, 10) == 10
    assert svg.nice_step(2, 10) == 0.2
    assert svg.nice_step(7, 5) == 2
    assert svg.linear_ticks(230, 5) == [0, 50, 100, 150, 200]
    assert svg.log_range([0.4, 12.0]) == (-1, 2)
    assert svg.log_range([]) == (0, 1)


def test_timeline_caps_its_rows_and_says_how_many_more() -> None:
    spans: list[svg.Span] = [(float(i), i + 0.5) for i in range(svg.TIMELINE_ROWS_MAX + 5)]
    text = svg.timeline("t", "faults", 60.0, spans, [f"fault {i}" for i in range(len(spans))])
    assert text.count('class="fault-bar"') == len(spans)  # every window drawn, the extra ones on one row
    assert "… and 5 more" in text
    rows = {re.search(r'y="(\d+)"', bar).group(1) for bar in re.findall(r'<rect class="fault-bar"[^>]*>', text)}  # type: ignore[union-attr]
    assert len(rows) == svg.TIMELINE_ROWS_MAX + 1


def test_an_unhealed_window_runs_to_the_end_with_a_dashed_edge() -> None:
    text = svg.timeline("t", "faults", 10.0, [(5.0, None)], ["partition"])
    assert 'stroke-dasharray="3 2"' in text
    assert "never healed" in text
