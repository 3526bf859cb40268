"""`titra-chaos`: fault injection against the docker-compose cluster, workloads, checkers, reports.

    titra-chaos run --level quorum --workload set --nemesis partition-isolate-one --duration 60 --seed 1
    titra-chaos matrix --levels one,quorum,all,causal --nemeses none,partition-halves,kill --duration 30
    titra-chaos check runs/RUN/history.jsonl --workload set --level quorum
    titra-chaos workload ...      (inside the client container; `run` starts it)
    titra-chaos sim --seeds 200 --start-seed 1   (deterministic simulation; `--seed N --options JSON` replays)

Exit codes: 0 every promised property held; 1 a promised check was violated; 2 bad usage;
3 the cluster or Docker failed (no verdict).
"""

import argparse
import json
import sys
from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path

from chaos.compose import DockerError
from chaos.report import render_matrix_html
from chaos.runner import RunConfig, load_run, recheck, run_once
from chaos.schedule import NEMESES
from chaos.sim.run import add_sim_arguments, cmd_sim
from chaos.summary import Run, matrix, render_matrix_markdown
from chaos.verdict import CheckResult
from chaos.workload import WORKLOADS, main_workload

LEVELS = ("one", "quorum", "all", "causal")
EXIT_VIOLATED, EXIT_USAGE, EXIT_INFRA = 1, 2, 3


def _run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workload", choices=WORKLOADS, default="set")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load and faults")
    parser.add_argument("--nodes", type=int, choices=(3, 5), default=3)
    parser.add_argument("--seed", type=int, default=1, help="the fault schedule and the workload's choices")
    parser.add_argument("--out", type=Path, default=Path("runs"), help="one folder per run is made in here")
    parser.add_argument("--interval", type=float, default=10.0, help="about this many seconds between faults")
    parser.add_argument("--fault", type=float, default=5.0, help="seconds each fault lasts")
    parser.add_argument("--concurrency", type=int, default=5, help="client sessions")
    parser.add_argument("--op-interval-ms", type=int, default=50, help="each session's pause between ops")
    parser.add_argument("--keys", type=int, default=3, help="register / session keys")
    parser.add_argument("--resolution", choices=("siblings", "lww"), default="siblings", help="the run's keyspace")
    parser.add_argument("--converge-timeout", type=float, default=30.0, help="seconds to wait for equal replicas")
    parser.add_argument("--project", default="titra", help="compose project (docker/up.sh's default: titra)")
    parser.add_argument("--port-base", type=int, default=7070, help="n1's published client port; n2 the next ...")
    parser.add_argument("--no-build", action="store_true", help="skip docker/build.sh (the image must be current)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="titra-chaos", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"titra-chaos {version('titra')}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="one run: a level, a workload, a nemesis")
    run.add_argument("--level", choices=LEVELS, default="quorum")
    run.add_argument("--nemesis", choices=NEMESES, default="none")
    _run_options(run)

    matrix = sub.add_parser("matrix", help="every level x nemesis, one matrix page")
    matrix.add_argument("--levels", default=",".join(LEVELS))
    matrix.add_argument("--nemeses", default="none,partition-isolate-one,partition-halves,kill,pause")
    matrix.add_argument("--from-runs", action="store_true", help="no new runs: the matrix of the runs in --out")
    _run_options(matrix)

    check = sub.add_parser("check", help="re-check a saved history (with convergence.json beside it, if any)")
    check.add_argument("history", type=Path)
    check.add_argument("--workload", choices=WORKLOADS, required=True)
    promises = "which promises apply (default: from run.json beside the history, else %s)"
    check.add_argument("--level", choices=LEVELS, help=promises % "quorum")
    check.add_argument("--nemesis", choices=NEMESES, help=promises % "none")

    workload = sub.add_parser("workload", help="(client container) run a workload, history as JSON lines")
    workload.add_argument("--workload", choices=WORKLOADS, required=True)
    workload.add_argument("--level", choices=LEVELS, required=True)
    workload.add_argument("--nodes", required=True, help="n1=http://n1:7070,n2=...")
    workload.add_argument("--keyspace", required=True)
    workload.add_argument("--out", required=True, help="the history file (JSON lines)")
    workload.add_argument("--t0-wall-ns", type=int, default=0, help="the run's start, wall clock ns")
    workload.add_argument("--duration", type=float, required=True)
    workload.add_argument("--concurrency", type=int, default=5)
    workload.add_argument("--op-interval-ms", type=int, default=50)
    workload.add_argument("--ops-max", type=int, default=100_000, help="per session")
    workload.add_argument("--seed", type=int, default=1)
    workload.add_argument("--keys", type=int, default=3)
    workload.add_argument("--op-timeout-s", type=float, default=5.0)
    workload.add_argument("--server-timeout-ms", type=int, default=2_000)
    sim = sub.add_parser("sim", help="deterministic simulation: many seeds of an in-process cluster in virtual time")
    add_sim_arguments(sim)
    return parser


def _config(args: argparse.Namespace, level: str, nemesis: str) -> RunConfig:
    return RunConfig(
        level=level,
        workload=args.workload,
        nemesis=nemesis,
        duration_s=args.duration,
        nodes=args.nodes,
        seed=args.seed,
        out_dir=args.out,
        interval_s=args.interval,
        fault_s=args.fault,
        concurrency=args.concurrency,
        op_interval_ms=args.op_interval_ms,
        keys=args.keys,
        resolution=args.resolution,
        converge_timeout_s=args.converge_timeout,
        project=args.project,
        port_base=args.port_base,
        build=not args.no_build,
    )


def print_checks(checks: Sequence[CheckResult]) -> None:
    for check in checks:
        counts = ", ".join(f"{k}={v}" for k, v in sorted(check.counts.items()))
        print(f"  {check.checker:<13} {check.verdict:<24} promised={check.promised}  {counts}")
        for example in check.examples[:4]:
            print(f"      {example}")


def _exit_code(checks: Sequence[CheckResult]) -> int:
    return EXIT_VIOLATED if any(c.promised and c.valid is False for c in checks) else 0


def cmd_run(args: argparse.Namespace) -> int:
    try:
        result = run_once(_config(args, args.level, args.nemesis))
    except (DockerError, TimeoutError) as error:
        print(f"titra-chaos: the run could not complete: {error}", file=sys.stderr)
        return EXIT_INFRA
    print(f"run {result.run.params.run_id}: report {result.html}")
    print_checks(result.run.checks)
    return _exit_code(result.run.checks)


def cmd_matrix(args: argparse.Namespace) -> int:
    runs: list[Run] = []
    failed: list[str] = []
    if args.from_runs:
        runs = [load_run(p.parent) for p in sorted(args.out.glob("*/run.json"))]
    else:
        levels, nemeses = args.levels.split(","), args.nemeses.split(",")
        bad = sorted({x for x in levels if x not in LEVELS} | {x for x in nemeses if x not in NEMESES})
        if bad:
            print(f"titra-chaos: unknown level or nemesis: {', '.join(bad)}", file=sys.stderr)
            return EXIT_USAGE
        build = not args.no_build
        for level in levels:
            for nemesis in nemeses:
                args.no_build = not build  # build the image once, for the first run
                build = False
                try:
                    result = run_once(_config(args, level, nemesis))
                except (DockerError, TimeoutError) as error:
                    failed.append(f"{level} x {nemesis}: {error}")
                    print(f"titra-chaos: {level} x {nemesis} could not complete: {error}", file=sys.stderr)
                    continue
                print(f"{level} x {nemesis}: {result.html}")
                print_checks(result.run.checks)
                runs.append(result.run)
    rows = matrix(runs)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "matrix.html").write_text(render_matrix_html(rows), encoding="utf-8")
    (args.out / "matrix.md").write_text(render_matrix_markdown(rows), encoding="utf-8")
    print(f"matrix: {args.out / 'matrix.html'} and {args.out / 'matrix.md'}")
    code = _exit_code([c for run in runs for c in run.checks])
    return code or (EXIT_INFRA if failed else 0)


def cmd_check(args: argparse.Namespace) -> int:
    saved = args.history.parent / "run.json"
    params = json.loads(saved.read_text(encoding="utf-8"))["params"] if saved.exists() else {}
    level = args.level or params.get("level", "quorum")
    nemesis = args.nemesis or params.get("nemesis", "none")
    checks = recheck(args.history, args.workload, level, nemesis)
    print(f"{args.history}: {args.workload} at {level} under {nemesis}")
    print_checks(checks)
    return _exit_code(checks)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "workload":
        return main_workload(args)
    handlers = {"run": cmd_run, "matrix": cmd_matrix, "check": cmd_check, "sim": cmd_sim}
    return handlers[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
