"""The results of `titra bench cluster`: one data point per (op, level, clients), as JSON and as
a table. Pure but for `cpu_seconds`, `filesystem_of`, `loadavg` and `interpreter_of`, which read
/proc (and the last runs the interpreter it found to ask its version).
"""

import os
import subprocess
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from cluster.bench_wrk import WrkReport
from cluster.frozen import frozen
from cluster.limits import BENCH_DEFAULTS


@frozen
class Measured:
    """One system at one data point."""

    rps: float
    p50_ms: float
    p99_ms: float
    errors: int  # non-2xx/3xx responses + socket errors (connect, read, write, timeout)
    requests: int
    non_2xx_3xx: int
    socket_errors: int
    # The servers' CPU (user + system, all nodes) per request, and in cores over the point: on a
    # small machine a system that needs less CPU per request can serve more of them.
    cpu_ms_per_req: float | None
    cpu_cores: float | None


@frozen
class Point:
    """Titra at one (op, level, clients) beside the etcd request it is compared with."""

    op: str  # write | read
    level: str
    clients: int
    titra: Measured
    etcd: Measured
    etcd_op: str  # the etcd request it is compared with
    # With --rounds above 1: each round's ratio, in order (`titra` and `etcd` are the middle rounds),
    # and the warnings of every round, since a round with errors may not be the one shown.
    round_ratios: tuple[float | None, ...] = ()
    round_flags: tuple[str, ...] = ()

    @property
    def ratio(self) -> float | None:
        """Titra's throughput over etcd's."""
        return _ratio(self.titra, self.etcd)

    @property
    def flags(self) -> list[str]:
        found = []
        for name, measured in (("titra", self.titra), ("etcd", self.etcd)):
            if measured.errors:
                found.append(
                    f"{name}: {measured.errors} errors ({measured.non_2xx_3xx} non-2xx/3xx, "
                    f"{measured.socket_errors} socket)"
                )
            if measured.requests == 0:
                found.append(f"{name}: no request completed")
        # Combined rounds carry every round's warnings, the shown ones among them.
        return list(self.round_flags) if self.round_flags else found

    def to_json(self) -> dict[str, object]:
        return {
            "op": self.op,
            "level": self.level,
            "clients": self.clients,
            "titra": asdict(self.titra),
            "etcd": asdict(self.etcd),
            "etcd_op": self.etcd_op,
            "ratio": self.ratio,
            "round_ratios": list(self.round_ratios),
            "flags": self.flags,
        }


def _ratio(titra: Measured, etcd: Measured) -> float | None:
    return round(titra.rps / etcd.rps, 2) if etcd.rps > 0 else None


def combine_rounds(rounds: Sequence[Sequence[Point]]) -> list[Point]:
    """One point per (op, level, clients) out of several rounds of the same points: each system's
    middle measurement by rate (the lower middle for an even count), and every round's ratio.
    A single round is returned as it is."""
    if len(rounds) == 1:
        return list(rounds[0])
    combined = []
    for same in zip(*rounds, strict=True):
        first = same[0]
        assert all((p.op, p.level, p.clients) == (first.op, first.level, first.clients) for p in same)
        combined.append(
            Point(
                first.op,
                first.level,
                first.clients,
                _middle([p.titra for p in same]),
                _middle([p.etcd for p in same]),
                first.etcd_op,
                tuple(p.ratio for p in same),
                tuple(f"round {n}: {flag}" for n, p in enumerate(same, start=1) for flag in p.flags),
            )
        )
    return combined


def _middle(measurements: Sequence[Measured]) -> Measured:
    ordered = sorted(measurements, key=lambda m: m.rps)
    return ordered[(len(ordered) - 1) // 2]


def measured(report: WrkReport, cpu_s: float | None, elapsed_s: float) -> Measured:
    """One system's numbers from wrk's combined report and the servers' CPU seconds over the point."""
    return Measured(
        rps=report.rps,
        p50_ms=report.p50_ms,
        p99_ms=report.p99_ms,
        errors=report.errors,
        requests=report.requests,
        non_2xx_3xx=report.non_2xx_3xx,
        socket_errors=report.socket_errors,
        cpu_ms_per_req=None if cpu_s is None or not report.requests else round(cpu_s * 1_000 / report.requests, 3),
        cpu_cores=None if cpu_s is None else round(cpu_s / elapsed_s, 2),
    )


def cpu_seconds(pids: Sequence[int]) -> float | None:
    """User + system CPU time of the processes, from /proc (Linux); None where it cannot be read."""
    ticks = 0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return None
        # Fields after the command name, which is in parentheses and may hold spaces: utime and
        # stime are fields 14 and 15 of the line, so 12 and 13 after the closing parenthesis.
        after = stat.rsplit(")", 1)[1].split()
        ticks += int(after[11]) + int(after[12])
    return ticks / os.sysconf("SC_CLK_TCK")


# What the nodes' interpreter says of itself (run as the node's own executable, so a virtualenv's
# python reports the build it links to).
_VERSION_PROBE = "import platform; print(platform.python_implementation(), platform.python_version())"


def interpreter_of(pid: int) -> str:
    """The interpreter process `pid` runs (Linux): its executable, version, and whether libpython
    is a shared library. The build matters: a CPython configured without --enable-optimizations
    (and here --enable-shared) spent 11-15% more CPU per quorum write than Debian's python3.11,
    the interpreter of the Docker image built offline (docs/performance.md, "The interpreter")."""
    try:
        executable = os.readlink(f"/proc/{pid}/exe")
        shared = "libpython" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return "unknown"
    try:
        timeout_s = BENCH_DEFAULTS.tool_version_timeout_s
        probe = subprocess.run(
            [executable, "-c", _VERSION_PROBE], capture_output=True, text=True, timeout=timeout_s, check=False
        )
        version = probe.stdout.strip() or "version unknown"
    except (OSError, subprocess.SubprocessError):
        version = "version unknown"
    return f"{executable} ({version}, libpython {'shared' if shared else 'linked in'})"


def filesystem_of(path: Path) -> str:
    """The type and mount point of the file system holding `path` (the deepest mount above it)."""
    target = os.path.realpath(path)
    found = ("unknown", "")
    try:
        lines = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return "unknown"
    for line in lines:
        parts = line.split()
        if len(parts) < 3:
            continue
        mount, kind = parts[1], parts[2]
        if os.path.commonpath([target, mount]) == mount and len(mount) >= len(found[1]):
            found = (kind, mount)
    return f"{found[0]} on {found[1]}" if found[1] else "unknown"


def loadavg() -> list[float] | None:
    try:
        return [round(load, 2) for load in os.getloadavg()]
    except OSError:
        return None


def render(points: Sequence[Point], env: dict[str, object]) -> str:
    lines = [
        f"Titra {env['titra']} (3 nodes) vs etcd {env['etcd']} (3 members), {env['value_bytes']}-byte values, "
        f"{env['key_space']} keys, {env['duration_s_per_point']} s per point, {env['wrk']}",
        f"data: {env['data_dir']} [{env['filesystem']}]; {env['cpus']} CPUs, load average "
        f"{env['loadavg_start']} -> {env['loadavg_end']}; etcd leader {env['etcd_leader']}",
        f"titra nodes: {env.get('titra_node_python', 'unknown')}",
        f"load: {env['load_spread']}",
        "",
        f"{'op':<5} {'level':<6} {'clients':>7} | {'titra rps':>9} {'p50 ms':>7} {'p99 ms':>7} {'errors':>6} "
        f"{'cpu ms':>6} | {'etcd op':<18} {'rps':>8} {'p50 ms':>7} {'p99 ms':>7} {'errors':>6} {'cpu ms':>6} | ratio",
    ]
    for p in points:
        lines.append(
            f"{p.op:<5} {p.level:<6} {p.clients:>7} | {_cells(p.titra, 9)} | {p.etcd_op:<18} {_cells(p.etcd, 8)} | "
            f"{p.ratio if p.ratio is not None else '-'}{_spread(p.round_ratios)}{'  !' if p.flags else ''}"
        )
    flagged = [f"  {p.op} {p.level} {p.clients}: {flag}" for p in points for flag in p.flags]
    if flagged:
        lines += ["", "! points with errors (their numbers are not comparable):", *flagged]
    lines += [
        "",
        "ratio = titra rps / etcd rps; cpu ms = the servers' CPU per request; "
        "reads at one are compared with etcd's serializable range, the other levels with its linearizable range",
    ]
    if any(p.round_ratios for p in points):
        lines.append(
            "with several rounds: each system's middle round by rate, and in brackets the lowest and highest "
            "ratio of the rounds"
        )
    return "\n".join(lines)


def _spread(ratios: Sequence[float | None]) -> str:
    known = [r for r in ratios if r is not None]
    return f" [{min(known)}-{max(known)}]" if len(known) > 1 else ""


def _cells(measured: Measured, width: int) -> str:
    cpu = "-" if measured.cpu_ms_per_req is None else f"{measured.cpu_ms_per_req:.2f}"
    return f"{measured.rps:>{width}.1f} {measured.p50_ms:>7.2f} {measured.p99_ms:>7.2f} {measured.errors:>6} {cpu:>6}"
