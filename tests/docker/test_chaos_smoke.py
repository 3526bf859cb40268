"""Smoke test of the chaos suite against a real three-node compose cluster.

Two short runs through `chaos.runner.run_once`, the code behind `titra-chaos run`:
1. quorum, set workload, `partition-isolate-one`: no acknowledged add may be lost and nothing
   may appear that was never added; the nemesis must have seen its cut (TCP probes from inside
   the containers and /v1/status) and its heal.
2. one, set workload, `kill` (SIGKILL, then start again): the node died with exit code 137 and
   came back healthy; the report (HTML and JSON) is written.

It runs as its own compose project on its own client ports, so a developer's cluster (project
`titra`, ports 7070..) is neither used nor torn down, and it removes its cluster and volumes
with `docker/down.sh -v` whatever happens. Budget: about two minutes with the images cached.
"""

import json
from dataclasses import replace
from pathlib import Path

import pytest

from chaos.compose import Cluster, docker_unusable_reason
from chaos.history import Event
from chaos.runner import RunConfig, RunResult, run_once

PROJECT = "titra-chaos-smoke"
PORT_BASE = 17170  # n1..n3 on 17170..17172: clear of the compose smoke test's 17070..


def nemesis_events(result: RunResult, f: str) -> list[Event]:
    return [e for e in result.run.events if e.type == "nemesis" and e.f == f]


def check_counts(result: RunResult, checker: str) -> dict[str, int | float]:
    (check,) = [c for c in result.run.checks if c.checker == checker]
    return check.counts


def assert_report_written(result: RunResult) -> None:
    assert result.html.exists() and result.html.stat().st_size > 0
    report = json.loads(result.json.read_text(encoding="utf-8"))
    assert report["params"]["run_id"] == result.run.params.run_id
    assert (result.run_dir / "history.jsonl").stat().st_size > 0


@pytest.mark.docker
def test_a_partition_run_and_a_kill_run_on_a_real_cluster(tmp_path: Path) -> None:
    reason = docker_unusable_reason()
    if reason is not None:
        pytest.skip(f"Docker is not usable on this machine: {reason}")
    cluster = Cluster(PROJECT, nodes=3, port_base=PORT_BASE)
    common = RunConfig(workload="set", out_dir=tmp_path, project=PROJECT, port_base=PORT_BASE, build=False)
    try:
        cluster.build()  # docker/build.sh: offline, host-built wheels
        cluster.up()

        partition_run = replace(
            common,
            level="quorum",
            nemesis="partition-isolate-one",
            duration_s=20,
            seed=3,
            interval_s=9,
            fault_s=5,
            converge_timeout_s=5,
        )
        partition = run_once(partition_run, cluster)
        counts = check_counts(partition, "set")
        assert counts["lost"] == 0 and counts["unexpected"] == 0, partition.run.checks
        assert counts["acknowledged"] > 0
        starts, stops = nemesis_events(partition, "start"), nemesis_events(partition, "stop")
        assert starts, "the schedule injected no partition"
        for start in starts:
            evidence = start.value["evidence"]
            assert start.value["verified"], evidence
            assert evidence["tcp_probe_as_planned"] and evidence["status_saw_cut_after_s"] is not None
            (alone,) = start.value["targets"]
            assert all(v == "TimeoutError" for v in evidence["tcp_probe"][alone].values())
            assert all(evidence["peers_connected_before"][alone].values())  # open links existed, then died
            assert not any(evidence["peers_connected_after"][alone].values())
        assert all(stop.value["verified"] for stop in stops), [s.value for s in stops]
        assert_report_written(partition)

        kill_run = replace(
            common, level="one", nemesis="kill", duration_s=15, seed=5, interval_s=8, fault_s=4, converge_timeout_s=5
        )
        kill = run_once(kill_run, cluster)
        kills = nemesis_events(kill, "start")
        assert kills and all(k.value["evidence"]["exit_code"] == 137 for k in kills), [k.value for k in kills]
        assert all(stop.value["verified"] for stop in nemesis_events(kill, "stop"))
        assert check_counts(kill, "set")["unexpected"] == 0
        assert_report_written(kill)
    except BaseException:
        print(f"--- node logs\n{cluster.logs()[-12000:]}")
        raise
    finally:
        cluster.down(volumes=True)
