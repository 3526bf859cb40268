"""`titra bench cluster`: a 3-node Titra cluster against a 3-member etcd cluster, on this machine.

Both clusters run in the same benchmark, on 127.0.0.1, with their data on disk (a fresh directory
under the current one or --data-dir, not /tmp, which may be tmpfs, where fsync costs nothing),
each with its default durability (both fsync before acknowledging a write). Both are driven by
the same load generator, wrk, with the same spread over their nodes (cluster/bench_wrk.py), the
same fixed key space written once before the load, and the same 256-byte values:

- writes: Titra `PUT /v1/kv/bench/<key>?consistency=LEVEL`, etcd `POST /v3/kv/put`;
- reads: Titra `GET` at each level; etcd `POST /v3/kv/range`, serializable (any member answers
  from its own state) as the analogue of `one`, linearizable (etcd's default) for the others.

Data points run one at a time, alternating systems, so the two never compete for the CPU.
With --rounds N the whole set runs N times; each point then shows each system's middle round by
rate and the range of the rounds' ratios, since a shared machine moves both systems' rates
between runs.
`causal` requests carry no Titra-Context (wrk keeps no per-connection session): they measure the
level's cost with an empty context. Both clusters are always stopped at the end, even on ^C or
SIGTERM, unless --keep.
"""

import argparse
import asyncio
import json
import os
import platform
import random
import shlex
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from importlib.metadata import version as package_version
from pathlib import Path
from types import FrameType

import aiohttp

from cluster import bench_etcd, bench_report, bench_wrk, local
from cluster.bench_report import Measured, Point
from cluster.client import AsyncClient, TitraError
from cluster.frozen import frozen
from cluster.limits import BENCH_DEFAULTS, CLIENT_DEFAULTS, BenchDefaults

KEYSPACE = "bench"
LEVELS = ("one", "quorum", "all", "causal")
NODES = 3
OCTET_STREAM = "application/octet-stream"
JSON = "application/json"
# Values are printable, so the same 256 bytes travel raw to Titra and base64-encoded to etcd.
VALUE_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


class BenchError(Exception):
    """The benchmark could not run; the message says why."""


@frozen
class System:
    """One cluster under load: where its nodes listen, and which processes serve them."""

    name: str
    endpoints: tuple[str, ...]
    pids: tuple[int, ...]


@dataclass(slots=True)
class Run:
    """What one benchmark run has so far; `points` grows as data points finish."""

    args: argparse.Namespace
    directory: Path
    titra: System
    etcd: System
    keys: tuple[str, ...]
    value: str
    environment: dict[str, object] = field(default_factory=dict)
    points: list[Point] = field(default_factory=list)


# --- the command line --------------------------------------------------------------------------


def add_command(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """`titra bench cluster` (under a `bench` group, for later benchmarks)."""
    bench = sub.add_parser("bench", help="benchmarks").add_subparsers(dest="bench_command", required=True)
    parser = bench.add_parser(
        "cluster",
        help="3-node Titra against 3-member etcd, both driven by wrk",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d = BENCH_DEFAULTS
    parser.add_argument(
        "--duration-s",
        type=_duration_s,
        default=d.duration_s_default,
        help=f"seconds per data point (default {d.duration_s_default})",
    )
    parser.add_argument("--clients", type=_clients, default=[1, 32], help="connections per data point (default 1,32)")
    parser.add_argument(
        "--levels", type=_levels, default=list(LEVELS), help=f"Titra levels (default {','.join(LEVELS)})"
    )
    parser.add_argument(
        "--rounds",
        type=_rounds,
        default=d.rounds_default,
        help=f"repeat every data point this many times, alternating systems each time (default {d.rounds_default})",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--keep", action="store_true", help="leave both clusters running and their data, to debug")
    parser.add_argument(
        "--data-dir", help="where to make the run's directory (default: the current directory; not tmpfs)"
    )
    parser.set_defaults(func=run)


def _duration_s(text: str) -> int:
    value = int(text)  # wrk takes whole seconds
    if not 1 <= value <= BENCH_DEFAULTS.duration_s_max:
        raise argparse.ArgumentTypeError(f"must be 1..{BENCH_DEFAULTS.duration_s_max}")
    return value


def _rounds(text: str) -> int:
    value = int(text)
    if not 1 <= value <= BENCH_DEFAULTS.rounds_max:
        raise argparse.ArgumentTypeError(f"must be 1..{BENCH_DEFAULTS.rounds_max}")
    return value


def _clients(text: str) -> list[int]:
    try:
        counts = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError("expected comma-separated integers, e.g. 1,32") from None
    if not counts or not all(1 <= n <= BENCH_DEFAULTS.clients_max for n in counts):
        raise argparse.ArgumentTypeError(f"each client count must be 1..{BENCH_DEFAULTS.clients_max}")
    return counts


def _levels(text: str) -> list[str]:
    levels = list(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    unknown = [level for level in levels if level not in LEVELS]
    if not levels or unknown:
        raise argparse.ArgumentTypeError(f"levels are among {','.join(LEVELS)}")
    return levels


def run(args: argparse.Namespace) -> int:
    missing = [tool for tool in (bench_etcd.ETCD, bench_wrk.WRK) if shutil.which(tool) is None]
    if missing:
        print(f"titra: bench cluster: {missing_tools_note(missing)}", file=sys.stderr)
        return 1
    parent = Path(args.data_dir or os.getcwd()).resolve()
    try:
        parent.mkdir(parents=True, exist_ok=True)
        directory = Path(tempfile.mkdtemp(prefix="titra-bench-cluster-", dir=parent))
    except OSError as exc:
        print(f"titra: bench cluster: cannot make a directory in {parent}: {exc}", file=sys.stderr)
        return 1
    try:
        with _sigterm_as_interrupt():
            points, environment = _run_in(args, directory)
    except KeyboardInterrupt:
        print(f"titra: bench cluster: interrupted{'' if args.keep else '; both clusters stopped'}", file=sys.stderr)
        return 130
    except (BenchError, bench_etcd.EtcdError, bench_wrk.WrkError, local.LocalClusterError, TitraError) as exc:
        print(f"titra: bench cluster: {exc}", file=sys.stderr)
        return 1
    finally:
        if not args.keep:
            shutil.rmtree(directory, ignore_errors=True)
    if args.json:
        print(json.dumps({"results": [p.to_json() for p in points], "environment": environment}))
    else:
        print(bench_report.render(points, environment))
    return 0


def missing_tools_note(missing: Sequence[str]) -> str:
    """Also the smoke test's skip reason and tests/run's note: keep the three the same."""
    return (
        f"missing {', '.join(missing)}: install with `apt-get install -y etcd-server wrk` as root "
        "(tests/run does this when run as root)"
    )


@contextmanager
def _uninterruptible() -> Iterator[None]:
    """A second ^C (or SIGTERM) must not cut the teardown short: each of its steps has a deadline."""
    previous = {signum: signal.signal(signum, signal.SIG_IGN) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """While running, SIGTERM is handled like ^C, so the `finally` that stops the clusters runs."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# --- the run -------------------------------------------------------------------------------------


def _run_in(args: argparse.Namespace, directory: Path) -> tuple[list[Point], dict[str, object]]:
    base = find_free_base_port(random.Random())
    offset = CLIENT_DEFAULTS.local_peer_port_offset
    titra_root, etcd_root = directory / "titra", directory / "etcd"
    etcd = bench_etcd.EtcdCluster(
        bench_etcd.plan(
            etcd_root, range(base + NODES, base + 2 * NODES), range(base + offset + NODES, base + offset + 2 * NODES)
        )
    )
    started: tuple[tuple[local.NodePlan, int], ...] = ()
    try:
        _progress(f"starting 3 Titra nodes (ports {base}..) and 3 etcd members (ports {base + NODES}..) in {directory}")
        started = local.up(titra_root, NODES, base)
        etcd.start()
        value_rng = random.Random(BENCH_DEFAULTS.value_bytes)
        state = Run(
            args,
            directory,
            System("titra", tuple(node.endpoint for node, _ in started), tuple(pid for _, pid in started)),
            System("etcd", tuple(m.endpoint for m in etcd.members), tuple(etcd.pids.values())),
            tuple(f"k{i:05d}" for i in range(BENCH_DEFAULTS.key_space_count)),
            "".join(value_rng.choice(VALUE_ALPHABET) for _ in range(BENCH_DEFAULTS.value_bytes)),
        )
        state.environment = _environment(state, etcd)
        if (filesystem := str(state.environment["filesystem"])).startswith(("tmpfs", "ramfs")):
            _progress(f"warning: {directory} is in memory ({filesystem}): fsync costs nothing there")
        _progress(f"creating keyspace {KEYSPACE!r} (n=3, lww); writing {len(state.keys)} keys into each system")
        asyncio.run(_preload(state))
        _measure_all(state)
        state.environment["loadavg_end"] = bench_report.loadavg()
        return state.points, state.environment
    finally:
        if args.keep:
            _progress(
                f"--keep: left running; stop with `titra local down --data-dir {titra_root}` and "
                f"`kill {' '.join(str(pid) for pid in etcd.pids.values())}` (etcd); data in {directory}"
            )
        else:
            _progress("stopping both clusters")
            with _uninterruptible():
                etcd.stop()
                local.down(titra_root)
                for _, pid in started:
                    _reap(pid)


def find_free_base_port(rng: random.Random, defaults: BenchDefaults = BENCH_DEFAULTS) -> int:
    """A base port P with P..P+5 and P+offset..P+offset+5 all free on 127.0.0.1: Titra's nodes
    take P..P+2 (peers at +offset, `titra local`'s layout), etcd's members P+3..P+5 likewise.
    Another process may still take one before we bind it; start-up then fails and says which."""
    offset = CLIENT_DEFAULTS.local_peer_port_offset
    for _ in range(defaults.port_search_attempts):
        base = rng.randrange(defaults.port_range_first, defaults.port_range_last)
        ports = [base + i for i in range(2 * NODES)] + [base + offset + i for i in range(2 * NODES)]
        if all(_port_free(port) for port in ports):
            return base
    raise BenchError(f"no free block of ports found in {defaults.port_search_attempts} tries")


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((local.HOST, port))
        except OSError:
            return False
    return True


def _reap(pid: int) -> None:
    """Collect a stopped node's exit status: `local.up` started it as our child."""
    with suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


async def _preload(state: Run) -> None:
    """The keyspace, then every key of the key space into both systems (Titra at `all`, so that a
    read at any level finds it), spread over the nodes like the load."""
    limit = asyncio.Semaphore(BENCH_DEFAULTS.preload_concurrency)
    clients = [AsyncClient(endpoint) for endpoint in state.titra.endpoints]
    try:
        await clients[0].create_keyspace(KEYSPACE, n=NODES, resolution="lww")

        async def titra_put(index: int, key: str) -> None:
            async with limit:
                await clients[index % len(clients)].put(
                    KEYSPACE, key, state.value.encode(), OCTET_STREAM, consistency="all", context=""
                )

        await asyncio.gather(*(titra_put(i, key) for i, key in enumerate(state.keys)))
    finally:
        for client in clients:
            await client.close()
    async with aiohttp.ClientSession() as session:

        async def etcd_put(index: int, key: str) -> None:
            endpoint = state.etcd.endpoints[index % len(state.etcd.endpoints)]
            body = bench_etcd.put_body(f"{KEYSPACE}/{key}", state.value)
            async with (
                limit,
                session.post(endpoint + bench_etcd.PUT_PATH, data=body, headers={"Content-Type": JSON}) as reply,
            ):
                if reply.status != 200:
                    raise BenchError(f"etcd preload put of {key}: HTTP {reply.status}: {await reply.text()}")

        await asyncio.gather(*(etcd_put(i, key) for i, key in enumerate(state.keys)))


def _measure_all(state: Run) -> None:
    rounds: list[list[Point]] = []
    for number in range(1, state.args.rounds + 1):
        if state.args.rounds > 1:
            _progress(f"round {number} of {state.args.rounds}")
        state.points = []
        _measure_round(state)
        rounds.append(state.points)
    state.points = bench_report.combine_rounds(rounds)


def _measure_round(state: Run) -> None:
    levels = state.args.levels
    etcd_keys = [f"{KEYSPACE}/{key}" for key in state.keys]
    for clients in state.args.clients:
        etcd_put = _measure(
            state, state.etcd, "etcd-put", bench_etcd.put_requests(etcd_keys, state.value), JSON, clients
        )
        for level in levels:
            requests = [bench_wrk.Request("PUT", _titra_path(key, level), state.value) for key in state.keys]
            titra = _measure(state, state.titra, f"titra-write-{level}", requests, OCTET_STREAM, clients)
            state.points.append(Point("write", level, clients, titra, etcd_put, "put"))
        etcd_reads: dict[bool, Measured] = {}
        for level in levels:
            serializable = level == "one"
            if serializable not in etcd_reads:
                name = "etcd-range-" + ("serializable" if serializable else "linearizable")
                requests = bench_etcd.range_requests(etcd_keys, serializable)
                etcd_reads[serializable] = _measure(state, state.etcd, name, requests, JSON, clients)
            requests = [bench_wrk.Request("GET", _titra_path(key, level)) for key in state.keys]
            titra = _measure(state, state.titra, f"titra-read-{level}", requests, None, clients)
            etcd_op = "range serializable" if serializable else "range linearizable"
            state.points.append(Point("read", level, clients, titra, etcd_reads[serializable], etcd_op))


def _titra_path(key: str, level: str) -> str:
    return f"/v1/kv/{KEYSPACE}/{key}?consistency={level}"


def _measure(
    state: Run,
    system: System,
    name: str,
    requests: Sequence[bench_wrk.Request],
    content_type: str | None,
    clients: int,
) -> Measured:
    script = state.directory / "scripts" / f"{name}.lua"
    if not script.exists():
        script.parent.mkdir(exist_ok=True)
        script.write_text(bench_wrk.lua_script(requests, {"Content-Type": content_type} if content_type else {}))
    _progress(f"{name}, {clients} client(s), {state.args.duration_s} s")
    targets = bench_wrk.split_connections(system.endpoints, clients, seed=len(state.points) + 1)
    cpu_before, started = bench_report.cpu_seconds(system.pids), time.monotonic()
    report = bench_wrk.run_concurrently(targets, script, state.args.duration_s, BENCH_DEFAULTS.wrk_timeout_ms)
    cpu_after, elapsed_s = bench_report.cpu_seconds(system.pids), time.monotonic() - started
    cpu_s = None if cpu_before is None or cpu_after is None else cpu_after - cpu_before
    return bench_report.measured(report, cpu_s, elapsed_s)


# --- environment and output ----------------------------------------------------------------------


def _environment(state: Run, etcd: bench_etcd.EtcdCluster) -> dict[str, object]:
    leader = etcd.leader()
    return {
        "titra": package_version("titra"),
        "etcd": bench_etcd.version(),
        "wrk": bench_wrk.version(),
        "python": platform.python_version(),
        # The interpreter the nodes run (local.node_executable: titra-node of this virtualenv,
        # or $TITRA_NODE_COMMAND), which need not be the one running this command.
        "titra_node_command": shlex.join(local.node_executable()),
        "titra_node_python": bench_report.interpreter_of(state.titra.pids[0]),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "loadavg_start": bench_report.loadavg(),
        "data_dir": str(state.directory),
        "filesystem": bench_report.filesystem_of(state.directory),
        "nodes": NODES,
        "value_bytes": BENCH_DEFAULTS.value_bytes,
        "key_space": len(state.keys),
        "duration_s_per_point": state.args.duration_s,
        "rounds": state.args.rounds,
        "load_spread": bench_wrk.LOAD_SPREAD,
        "etcd_leader": leader,
        "etcd_note": "HTTP/JSON through etcd's gRPC gateway (/v3/kv/put, /v3/kv/range); with 1 client all requests go "
        f"to member e1 ({'the leader' if leader == 'e1' else 'a follower'})",
        "titra_note": f"keyspace {KEYSPACE!r} n=3 resolution=lww; durability fsync (default); causal requests carry "
        "no Titra-Context",
        "ratio": "titra rps / etcd rps",
        "cpu": "cpu_ms_per_req and cpu_cores count the servers' processes only; wrk runs on the same CPUs",
    }


def _progress(message: str) -> None:
    print(f"bench cluster: {message}", file=sys.stderr, flush=True)
