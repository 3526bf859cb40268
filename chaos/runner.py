"""One chaos run, end to end: cluster, keyspace, workload container, fault schedule, heal,
convergence snapshots, final reads, checkers, report.

Edge module. The shape is Jepsen's test lifecycle (setup, generator with client and nemesis,
final heal, final reads, checker). Rules:
- Every run writes a fresh keyspace, so runs on one cluster never see each other's keys.
- The workload runs in a container on the compose network; the nemesis acts from the host.
- After the workload stops and every fault is healed, replicas are compared through
  `GET /v1/replica/{keyspace}` (each node's own data, no read repair) until equal or a deadline:
  client reads would repair replicas and hide a missing convergence.
- A check's `promised` says whether the level promises that property (`promised` below); the run
  fails (exit code 1) only when a promised check is violated.
"""

import asyncio
import json
import secrets
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from chaos.checkers import check_convergence, check_linearizable, check_sessions, check_set
from chaos.compose import Cluster, DockerError, Snapshot, collect_snapshots, get_json, run, send_json, wait_until
from chaos.history import Event, Operation, from_jsonl, operations, to_jsonl
from chaos.nemesis import Nemesis, run_schedule
from chaos.report import write_report
from chaos.schedule import build_schedule
from chaos.summary import Run, RunParams
from chaos.verdict import CheckResult
from chaos.workload import Recorder, Target, final_read_sets
from cluster.context import scoped_key
from cluster.frozen import frozen
from cluster.ring import Ring

FINAL_READ_PROCESS = 1_000  # processes of the final reads: past any workload session
CLIENT_START_TIMEOUT_S = 90.0


def repair_note(status: object) -> str:
    """What the nodes say they do to converge replicas without client reads (/v1/status `repair`)."""
    repair = status.get("repair") if isinstance(status, dict) else None
    if not isinstance(repair, dict):
        return (
            "the nodes report no repair (no hints, no anti-entropy): replicas converge only by writes and read repair"
        )
    enabled = [
        name for name in ("hints", "anti_entropy") if isinstance(repair.get(name), dict) and repair[name].get("enabled")
    ]
    return f"the nodes report repair enabled: {', '.join(enabled) or 'none'} (/v1/status `repair`)"


def promised(checker: str, level: str, nemesis: str) -> bool:
    """Which properties each level promises (docs/api.md, Levels; docs/replication.md)."""
    if checker == "set":
        # At one/causal a single replica acknowledges: no-loss under crashes is promised only where a
        # majority (quorum) or every replica (all) holds the write. A loss at one under kill -9
        # (the disk survives it here) is still shown, as "not promised".
        return level in ("quorum", "all") or nemesis != "kill"
    if checker == "session":
        return level == "causal"
    # Convergence: every level promises it eventually (what the nodes do for it: `repair_note`).
    # Linearizable: promised by none of these levels.
    return checker == "convergence"


@frozen
class RunConfig:
    level: str = "quorum"
    workload: str = "set"
    nemesis: str = "none"
    duration_s: float = 60.0
    nodes: int = 3
    seed: int = 1
    out_dir: Path = Path("runs")
    interval_s: float = 10.0
    fault_s: float = 5.0
    concurrency: int = 5
    op_interval_ms: int = 50
    ops_max: int = 100_000
    keys: int = 3
    op_timeout_s: float = 5.0
    server_timeout_ms: int = 2_000
    converge_timeout_s: float = 30.0
    replication_n: int = 3
    resolution: str = "siblings"  # or "lww": concurrent writes then leave one value, not siblings
    project: str = "titra"
    port_base: int = 7070
    build: bool = True


@frozen
class RunResult:
    run: Run
    run_dir: Path
    html: Path
    json: Path


def make_run_id(config: RunConfig, wall_ns: int) -> str:
    stamp = datetime.fromtimestamp(wall_ns / 1e9, UTC).strftime("%Y%m%dt%H%M%S")
    return f"{stamp}-{config.level}-{config.workload}-{config.nemesis}-s{config.seed}"


def prepare_cluster(cluster: Cluster, build: bool) -> None:
    """Build the image (the client container needs the current chaos code), start what is not up."""
    if build:
        cluster.build()
    if cluster.containers_exist():
        Nemesis(cluster, lambda: 0).heal_all()  # a crashed earlier run may have left a fault behind
    # Always: `docker-compose up -d` is a no-op for current containers and recreates those whose
    # image was rebuilt, so a run never measures the previous build's nodes.
    cluster.up()
    cluster.wait_healthy()


def create_keyspace(cluster: Cluster, name: str, n: int, resolution: str) -> None:
    """Create it (retrying 503: surely not done), then wait until every node knows it."""
    first = cluster.node_ids[0]
    answers: list[tuple[int, Any]] = []

    def created() -> bool:
        answers.append(
            send_json("PUT", f"{cluster.url(first)}/v1/keyspaces/{name}", {"n": n, "resolution": resolution})
        )
        return answers[-1][0] in (200, 201)

    try:
        wait_until(f"keyspace {name} is created", created, 30.0)
        wait_until(
            f"every node knows keyspace {name}",
            lambda: all(get_json(f"{cluster.url(node)}/v1/keyspaces/{name}")[0] == 200 for node in cluster.node_ids),
            30.0,
        )
    except TimeoutError as error:
        raise DockerError(f"{error}; last answer: {answers[-1:]}") from error


@frozen
class Placement:
    """Where a keyspace's keys live: enough to compute every key's preference list (cluster.ring)."""

    keyspace: str
    n: int
    nodes: tuple[str, ...]
    vnodes_per_node: int


def comparable(snapshots: list[Snapshot], placement: Placement) -> list[Snapshot]:
    """Snapshots as the convergence checker compares them: node against node when every node holds
    every key (N = cluster size); otherwise each key only across its own N replicas, the i-th node
    of its preference list showing as `replica-i` (a key held off its preference list is ignored)."""
    if placement.n >= len(placement.nodes):
        return snapshots
    ring = Ring(frozenset(placement.nodes), placement.vnodes_per_node)
    out: list[Snapshot] = []
    for time_ns, replicas in snapshots:
        slots: dict[str, dict[str, str]] = {f"replica-{i + 1}": {} for i in range(placement.n)}
        for key in sorted({key for replica in replicas.values() for key in replica}):
            owners = ring.preference_list(scoped_key(placement.keyspace, key.encode()), placement.n)
            for rank, node in enumerate(owners, start=1):
                if key in replicas.get(node, {}):
                    slots[f"replica-{rank}"][key] = replicas[node][key]
        out.append((time_ns, slots))
    return out


def run_checks(
    workload: str,
    level: str,
    nemesis: str,
    ops: list[Operation],
    snapshots: list[Snapshot] | None,
    heal_ns: int,
    repair: str = "",
) -> list[CheckResult]:
    checks: list[CheckResult] = []
    if workload == "set":
        checks.append(check_set(ops))
    if workload == "register":
        checks.append(check_linearizable(ops))
    if workload in ("register", "session"):
        checks.append(check_sessions(ops))
    if snapshots is not None:
        result = check_convergence(snapshots, heal_ns)
        checks.append(replace(result, examples=[*result.examples, repair] if repair else result.examples))
    return [replace(c, promised=promised(c.checker, level, nemesis)) for c in checks]


def read_history(path: Path) -> list[Event]:
    """A workload history; a torn last line (the client was killed mid-write) is dropped."""
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    if lines:
        try:
            json.loads(lines[-1])
        except ValueError:
            lines = lines[:-1]
    return from_jsonl("\n".join(lines))


def stop_client(name: str, process: "subprocess.Popen[bytes]", grace_s: float) -> None:
    """SIGTERM: the workload stops issuing ops and lets running ones finish; then force it."""
    run(["docker", "kill", "-s", "TERM", name], check=False)
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        run(["docker", "rm", "-f", name], check=False)
        process.wait(timeout=30)


def workload_argv(config: RunConfig, cluster: Cluster, keyspace: str, wall_ns: int) -> list[str]:
    """The client container's command. Its own duration is only a backstop: the runner stops it."""
    options = {
        "workload": config.workload,
        "level": config.level,
        "nodes": ",".join(f"{node}=http://{node}:7070" for node in cluster.node_ids),
        "keyspace": keyspace,
        "out": "/out/workload.jsonl",
        "t0-wall-ns": wall_ns,
        "duration": config.duration_s + 120,
        "concurrency": config.concurrency,
        "op-interval-ms": config.op_interval_ms,
        "ops-max": config.ops_max,
        "seed": config.seed,
        "keys": config.keys,
        "op-timeout-s": config.op_timeout_s,
        "server-timeout-ms": config.server_timeout_ms,
    }
    return ["titra-chaos", "workload", *(part for k, v in options.items() for part in (f"--{k}", str(v)))]


def run_once(config: RunConfig, cluster: Cluster | None = None, log: Callable[[str], None] = print) -> RunResult:
    cluster = cluster or Cluster(config.project, config.nodes, config.port_base)
    began = time.monotonic()
    prepare_cluster(cluster, config.build)
    wall_ns, mono_ns = time.time_ns(), time.monotonic_ns()
    run_id = make_run_id(config, wall_ns)
    run_dir = config.out_dir / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    keyspace = f"chaos-{secrets.token_hex(6)}"
    create_keyspace(cluster, keyspace, min(config.replication_n, config.nodes), config.resolution)
    steps = build_schedule(
        config.nemesis, cluster.node_ids, config.seed, config.duration_s, config.interval_s, config.fault_s
    )
    (run_dir / "schedule.json").write_text(json.dumps([asdict(s) for s in steps], indent=1), encoding="utf-8")
    log(
        f"run {run_id}: cluster ready after {time.monotonic() - began:.1f} s; keyspace {keyspace}; "
        f"{len(steps) // 2} faults planned; output in {run_dir}"
    )

    def now_ns() -> int:
        return time.monotonic_ns() - mono_ns

    nemesis = Nemesis(cluster, now_ns)
    client_name = f"titra-chaos-client-{secrets.token_hex(4)}"
    argv = workload_argv(config, cluster, keyspace, wall_ns)
    client = cluster.start_client(client_name, run_dir, argv, run_dir / "client.log")
    try:
        wait_until(
            "the workload container has started its load",
            lambda: (run_dir / "workload.started").exists() or client.poll() is not None,
            CLIENT_START_TIMEOUT_S,
        )
        if client.poll() is not None:
            raise DockerError(f"the workload container exited early: {(run_dir / 'client.log').read_text()[-2000:]}")
        started = time.monotonic()
        log(f"load started at {now_ns() / 1e9:.1f} s")
        run_schedule(nemesis, steps, started)
        time.sleep(max(0.0, started + config.duration_s - time.monotonic()))  # the load lasts the whole duration
    finally:
        stop_client(client_name, client, config.op_timeout_s + 15)
        heal = nemesis.heal_all()  # whatever happened above, never leave a fault behind
    log(
        f"load stopped and healed at {heal.time_ns / 1e9:.1f} s (verified: {heal.value.get('verified')}); "
        f"comparing replicas for up to {config.converge_timeout_s} s"
    )
    status = get_json(f"{cluster.url(cluster.node_ids[0])}/v1/status")[1]
    vnodes = int(status["ring"]["vnodes_per_node"]) if isinstance(status, dict) else 0
    placement = Placement(keyspace, min(config.replication_n, config.nodes), cluster.node_ids, vnodes)
    repair = repair_note(status)

    def settled(snapshot: dict[str, dict[str, str]]) -> bool:
        replicas = list(comparable([(0, snapshot)], placement)[0][1].values())
        return all(replica == replicas[0] for replica in replicas)

    snapshots = collect_snapshots(cluster, keyspace, now_ns, config.converge_timeout_s, settled)
    recorder = Recorder(wall_ns)
    if config.workload == "set":
        target = Target({node: cluster.url(node) for node in cluster.node_ids}, keyspace, config.level)
        asyncio.run(final_read_sets(target, recorder, FINAL_READ_PROCESS, config.op_timeout_s * 4))
    events = sorted(
        [*read_history(run_dir / "workload.jsonl"), *nemesis.events, *recorder.events], key=lambda e: e.time_ns
    )
    extra = {
        "keyspace": keyspace,
        "resolution": config.resolution,
        "project": cluster.project,
        "interval_s": config.interval_s,
        "fault_s": config.fault_s,
        "concurrency": config.concurrency,
        "faults": len(steps) // 2,
    }
    params = RunParams(
        run_id,
        config.level,
        config.workload,
        config.nemesis,
        config.duration_s,
        config.nodes,
        config.seed,
        wall_ns,
        extra,
    )
    result = save_run(run_dir, params, events, snapshots, heal.time_ns, config.converge_timeout_s, placement, repair)
    log(f"checked at {now_ns() / 1e9:.1f} s; the whole run took {time.monotonic() - began:.1f} s")
    html, json_path = write_report(result, run_dir)
    return RunResult(result, run_dir, html, json_path)


def save_run(
    run_dir: Path,
    params: RunParams,
    events: list[Event],
    snapshots: list[Snapshot],
    heal_ns: int,
    deadline_s: float,
    placement: Placement,
    repair: str,
) -> Run:
    """Check the history and keep everything needed to check it again: history.jsonl,
    convergence.json (the raw snapshots, the placement) and run.json (parameters and verdicts)."""
    (run_dir / "history.jsonl").write_text(to_jsonl(events), encoding="utf-8")
    saved_snapshots = {"heal_ns": heal_ns, "placement": asdict(placement), "repair": repair, "snapshots": snapshots}
    (run_dir / "convergence.json").write_text(json.dumps(saved_snapshots), encoding="utf-8")
    compared = comparable(snapshots, placement)
    checks = run_checks(params.workload, params.level, params.nemesis, operations(events), compared, heal_ns, repair)
    meta = {
        "compared": "node against node" if compared is snapshots else f"each key across its {placement.n} replicas",
        "heal_ns": heal_ns,
        "repair": repair,
        "snapshots_kept": len(snapshots),
        "deadline_s": deadline_s,
        "last_snapshot_ns": snapshots[-1][0] if snapshots else None,
        "keys_per_node_last": {node: len(r) for node, r in snapshots[-1][1].items()} if snapshots else {},
        "source": "GET /v1/replica/{keyspace} on every node, no client reads (no read repair)",
    }
    saved = {"params": asdict(params), "checks": [c.to_json() for c in checks], "convergence": meta}
    (run_dir / "run.json").write_text(json.dumps(saved, indent=1, default=str), encoding="utf-8")
    return Run(params, events, checks, meta)


def load_run(run_dir: Path) -> Run:
    """A finished run from its folder (run.json + history.jsonl), e.g. to rebuild a matrix."""
    saved = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    checks = [CheckResult(c["checker"], c["valid"], c["counts"], c["examples"], c["promised"]) for c in saved["checks"]]
    events = from_jsonl((run_dir / "history.jsonl").read_text(encoding="utf-8"))
    return Run(RunParams(**saved["params"]), events, checks, saved.get("convergence"))


def recheck(history: Path, workload: str, level: str, nemesis: str) -> list[CheckResult]:
    """The checkers again over a saved history (and its convergence.json, when beside it)."""
    events = from_jsonl(history.read_text(encoding="utf-8"))
    convergence = history.parent / "convergence.json"
    snapshots, heal_ns, repair = None, 0, ""
    if convergence.exists():
        saved = json.loads(convergence.read_text(encoding="utf-8"))
        snapshots = [(t, s) for t, s in saved["snapshots"]]
        if "placement" in saved:
            placement = {**saved["placement"], "nodes": tuple(saved["placement"]["nodes"])}
            snapshots = comparable(snapshots, Placement(**placement))
        heal_ns, repair = saved["heal_ns"], saved.get("repair", "")
    return run_checks(workload, level, nemesis, operations(events), snapshots, heal_ns, repair)
