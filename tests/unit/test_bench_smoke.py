"""`titra-node bench` runs end to end with tiny parameters and reports the documented schema.

Only the shape and the signs of the numbers are checked: a speed depends on the machine, so no
test here asserts one.
"""

import json
from pathlib import Path
from typing import Any

import pytest

from node.cli import main

THROUGHPUT_FIELDS = ("commits", "commits_per_s", "p50_ms", "p99_ms")


def assert_throughput(point: dict[str, Any]) -> None:
    for name in THROUGHPUT_FIELDS:
        value = point[name]
        assert isinstance(value, int | float) and value > 0, f"{name} = {value!r}"


def assert_comparison(point: dict[str, Any], writers: int) -> None:
    assert point["writers"] == writers
    assert_throughput(point["titra"])
    assert_throughput(point["sqlite"])
    ratio = point["ratio"]
    assert isinstance(ratio, float) and ratio > 0


def test_bench_json_reports_every_number(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "bench",
            "--json",
            "--duration-s",
            "0.1",
            "--writers",
            "1,4",
            "--restart-keys",
            "2000",
            "--data-dir",
            str(tmp_path),
        ]
    )

    assert code == 0
    report = json.loads(capsys.readouterr().out)  # exactly one JSON object on stdout
    assert [point["writers"] for point in report["results"]] == [1, 4]
    for point in report["results"]:
        assert_comparison(point, point["writers"])
    assert_comparison(report["async"], 4)
    assert report["restart_keys"] == 2000
    assert report["restart_1m_s"] > 0
    assert report["bytes_per_key"] > 0
    assert report["restart"]["records_replayed"] > 0, "the restart must replay a WAL tail"
    assert report["environment"]["data_dir"].startswith(str(tmp_path))
    assert list(tmp_path.iterdir()) == [], "the bench must remove its data"


def test_bench_table_shows_the_ratio_column(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["bench", "--duration-s", "0.1", "--writers", "2", "--skip-restart", "--data-dir", str(tmp_path)])

    assert code == 0
    table = capsys.readouterr().out
    assert "ratio" in table
    assert "2 async" in table
    assert "restart" not in table
    assert list(tmp_path.iterdir()) == []
