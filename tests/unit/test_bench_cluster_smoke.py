"""`titra bench cluster` runs end to end with tiny parameters and reports the documented schema;
the wrk report parsing and the load split it rests on are checked on fixed inputs.

Only shapes and signs are checked: a speed depends on the machine, so no test asserts one.
"""

import json
import os
import platform
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from cluster import bench_report, bench_wrk
from cluster.bench_cluster import missing_tools_note
from cluster.cli import main

MEASURED_FIELDS = {
    "rps",
    "p50_ms",
    "p99_ms",
    "errors",
    "requests",
    "non_2xx_3xx",
    "socket_errors",
    "cpu_ms_per_req",
    "cpu_cores",
}
MISSING = [tool for tool in ("etcd", "wrk") if shutil.which(tool) is None]

WRK_REPORT = """Running 1s test @ http://127.0.0.1:20001
  1 threads and 11 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     4.86ms    1.34ms  13.68ms   76.57%
    Req/Sec   206.33     31.85   260.00     53.33%
  Latency Distribution
     50%  635.91us
     75%    5.56ms
     90%    6.51ms
     99%    1.20s
  617 requests in 1.01s, 212.09KB read
  Socket errors: connect 0, read 1, write 0, timeout 2
  Non-2xx or 3xx responses: 4
Requests/sec:    205.29
Transfer/sec:     70.57KB
"""


def assert_measured(name: str, measured: dict[str, Any]) -> None:
    assert set(measured) == MEASURED_FIELDS, name
    assert measured["rps"] > 0, f"{name} served nothing"
    assert measured["requests"] > 0
    assert measured["errors"] == 0, f"{name} had errors: {measured}"
    assert 0 < measured["p50_ms"] <= measured["p99_ms"]


@pytest.mark.skipif(bool(MISSING), reason=missing_tools_note(MISSING))
def test_bench_cluster_json_compares_both_systems(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["bench", "cluster", "--json", "--duration-s", "1", "--clients", "1", "--levels", "quorum", "--rounds", "2"]

    code = main([*argv, "--data-dir", str(tmp_path)])

    out = capsys.readouterr().out
    assert code == 0, out
    report = json.loads(out)  # exactly one JSON object on stdout
    assert [(p["op"], p["level"], p["clients"]) for p in report["results"]] == [
        ("write", "quorum", 1),
        ("read", "quorum", 1),
    ]
    assert [p["etcd_op"] for p in report["results"]] == ["put", "range linearizable"]
    for point in report["results"]:
        assert_measured("titra", point["titra"])
        assert_measured("etcd", point["etcd"])
        assert point["ratio"] > 0
        assert len(point["round_ratios"]) == 2 and all(r > 0 for r in point["round_ratios"])
        assert point["flags"] == []
    environment = report["environment"]
    assert environment["etcd"].startswith("3.")
    assert environment["rounds"] == 2
    assert environment["data_dir"].startswith(str(tmp_path))
    # The nodes' interpreter is named, as it changes the numbers (docs/performance.md).
    assert "(CPython 3." in environment["titra_node_python"]
    assert environment["titra_node_command"].endswith("titra-node")
    assert list(tmp_path.iterdir()) == [], "the bench must stop both clusters and remove their data"


def test_the_interpreter_of_a_process_is_named_with_its_build() -> None:
    described = bench_report.interpreter_of(os.getpid())

    assert described.startswith(os.path.realpath(sys.executable) + " ")
    assert f"(CPython {platform.python_version()}, libpython " in described
    shared = "libpython" in Path(f"/proc/{os.getpid()}/maps").read_text()
    assert described.endswith("libpython shared)" if shared else "libpython linked in)")


def test_the_interpreter_of_a_process_that_is_gone_is_unknown() -> None:
    assert bench_report.interpreter_of(2**22 + 1) == "unknown"  # above the largest pid_max Linux allows


def test_wrk_report_is_read_with_units_and_errors() -> None:
    report = bench_wrk.parse_report(WRK_REPORT, connections=11)

    assert report == bench_wrk.WrkReport(11, 617, 205.29, 0.636, 1200.0, 4, 3)
    assert report.errors == 7


def test_wrk_report_without_error_lines_has_no_errors() -> None:
    clean = "\n".join(line for line in WRK_REPORT.splitlines() if "errors" not in line and "Non-2xx" not in line)

    assert bench_wrk.parse_report(clean, connections=1).errors == 0


def test_a_truncated_wrk_report_is_refused() -> None:
    with pytest.raises(bench_wrk.WrkError):
        bench_wrk.parse_report(WRK_REPORT.partition("Latency Distribution")[0], connections=1)


def test_connections_split_evenly_and_reports_combine() -> None:
    nodes = ["http://a", "http://b", "http://c"]

    assert [t.connections for t in bench_wrk.split_connections(nodes, 32, seed=1)] == [11, 11, 10]
    assert [t.endpoint for t in bench_wrk.split_connections(nodes, 1, seed=1)] == ["http://a"]
    fast = bench_wrk.WrkReport(30, 3_000, 300.0, 1.0, 5.0, 0, 0)
    slow = bench_wrk.WrkReport(10, 500, 50.0, 3.0, 9.0, 2, 1)
    combined = bench_wrk.combine([fast, slow])
    assert (combined.connections, combined.requests, combined.rps) == (40, 3_500, 350.0)
    assert combined.p50_ms == 1.5, "p50 is weighted by connections"
    assert combined.p99_ms == 9.0, "p99 is the worst of the processes'"
    assert combined.errors == 3


def test_lua_strings_are_escaped() -> None:
    script = bench_wrk.lua_script([bench_wrk.Request("POST", "/p", '{"k":"\\x"}\n')], {"Content-Type": "a/b"})

    assert '"{\\"k\\":\\"\\\\x\\"}\\10"' in script
    assert '["Content-Type"] = "a/b"' in script


def _measured(rps: float) -> bench_report.Measured:
    return bench_report.Measured(rps, 1.0, 2.0, 0, int(rps * 10), 0, 0, 0.5, 1.0)


def _point(titra_rps: float, etcd_rps: float) -> bench_report.Point:
    return bench_report.Point("write", "quorum", 32, _measured(titra_rps), _measured(etcd_rps), "put")


def test_rounds_combine_into_each_systems_middle_round_and_every_ratio() -> None:
    rounds = [[_point(300.0, 400.0)], [_point(100.0, 500.0)], [_point(200.0, 450.0)]]

    [point] = bench_report.combine_rounds(rounds)

    assert (point.titra.rps, point.etcd.rps) == (200.0, 450.0), "the middle round of each system, by rate"
    assert point.ratio == 0.44
    assert point.round_ratios == (0.75, 0.2, 0.44)
    assert point.to_json()["round_ratios"] == [0.75, 0.2, 0.44]


def test_an_even_number_of_rounds_takes_the_lower_middle() -> None:
    [point] = bench_report.combine_rounds([[_point(100.0, 100.0)], [_point(300.0, 300.0)]])

    assert (point.titra.rps, point.etcd.rps) == (100.0, 100.0)


def test_one_round_is_reported_as_measured() -> None:
    only = [_point(300.0, 400.0)]

    assert bench_report.combine_rounds([only]) == only
    assert only[0].to_json()["round_ratios"] == []


def test_the_table_shows_the_range_of_the_rounds_ratios() -> None:
    environment: dict[str, object] = {
        key: "-"
        for key in (
            "titra", "etcd", "value_bytes", "key_space", "duration_s_per_point", "wrk", "data_dir",
            "filesystem", "cpus", "loadavg_start", "loadavg_end", "etcd_leader", "load_spread",
        )
    }  # fmt: skip
    combined = bench_report.combine_rounds([[_point(300.0, 400.0)], [_point(100.0, 500.0)], [_point(200.0, 450.0)]])

    table = bench_report.render(combined, environment)

    assert "| 0.44 [0.2-0.75]" in table
    assert "lowest and highest ratio of the rounds" in table
    assert "[" not in bench_report.render([_point(300.0, 400.0)], environment).split("\n")[5]


@pytest.mark.parametrize("rounds", ["0", "11", "two"])
def test_rounds_out_of_range_are_a_usage_error(rounds: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "cluster", "--rounds", rounds])
    assert exit_info.value.code == 2
    assert "--rounds" in capsys.readouterr().err


def test_a_round_with_errors_flags_the_point_even_when_another_round_is_shown() -> None:
    failing = bench_report.Measured(900.0, 1.0, 2.0, 5_000, 9_000, 5_000, 0, 0.1, 1.0)
    rounds = [
        [_point(100.0, 400.0)],
        [bench_report.Point("write", "quorum", 32, failing, _measured(400.0), "put")],
        [_point(200.0, 400.0)],
    ]

    [point] = bench_report.combine_rounds(rounds)

    assert point.titra.errors == 0, "the middle round by rate is a clean one"
    assert point.flags == ["round 2: titra: 5000 errors (5000 non-2xx/3xx, 0 socket)"]
    assert point.to_json()["flags"] == point.flags
