"""`titra-node bench`: the local store's durable commit rate, latency, restart time and memory.

What is measured, and why it is a fair fight:
- Durable commits: N writers each commit one 256-byte value per commit and wait until it is
  durable, for a fixed time. Titra's writers are asyncio tasks in one process (how a node runs);
  SQLite's are threads, each with its own connection (SQLite's concurrency model; the sqlite3
  module releases the GIL inside each statement). SQLite runs in WAL mode with synchronous=FULL,
  its durable setting; its WAL has no group commit, so each COMMIT pays its own fsync, while
  Titra's log writer shares one fdatasync among the commits that queue behind it.
- `async` durability at the largest writer count, against SQLite's synchronous=NORMAL in WAL
  mode (commits do not fsync; the WAL is synced at checkpoints), the analogous trade.
- Restart: load N keys, checkpoint, write a WAL tail, close, then time `WalStore.open` in a fresh
  interpreter with the files evicted from the page cache; resident memory per key is measured
  in that interpreter too (see `_probe_restart` for why not in this one).

Every data point is bounded by `--duration-s`; all data lives in one fresh directory that is
removed at the end.
"""

import argparse
import asyncio
import gc
import json
import math
import multiprocessing
import os
import platform
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import asdict, dataclass

from cluster.frozen import frozen
from cluster.store import Durability, Isolation
from node.storage import StoreConfig, WalStore

VALUE_BYTES = 256
WRITERS_MAX = 1_024
DURATION_S_MAX = 600.0
RESTART_KEYS_MAX = 10_000_000
LOAD_TXN_PUTS = 1_000  # well under StoreLimits.transaction_ops_max
WAL_TAIL_PUTS_MAX = 10_000
# Generous: with 64 writers a SQLite writer can queue behind 63 fsyncs before it gets the lock.
SQLITE_BUSY_TIMEOUT_S = 120.0
BARRIER_TIMEOUT_S = 60.0
# The loader takes its own checkpoint at a known point; a background one mid-load only adds noise.
_NO_BACKGROUND_CHECKPOINT = StoreConfig(checkpoint_wal_bytes=1 << 62, checkpoint_interval_s=86_400.0)


@frozen
class Throughput:
    commits: int
    commits_per_s: float
    p50_ms: float
    p99_ms: float
    # Titra only: how many commits shared each fdatasync (group commit); None for SQLite.
    commits_per_fsync: float | None = None


@frozen
class Comparison:
    writers: int
    titra: Throughput
    sqlite: Throughput
    ratio: float  # titra / sqlite commits per second
    sqlite_synchronous: str


@frozen
class RestartProbe:
    """What one fresh interpreter saw while opening the store."""

    open_s: float
    keys: int
    checkpoint_records: int
    records_replayed: int
    rss_before_bytes: int | None
    rss_after_bytes: int | None
    peak_rss_bytes: int | None


@frozen
class Restart:
    keys: int
    load_s: float
    checkpoint_s: float
    wal_tail_puts: int
    data_bytes: int
    page_cache_evicted: bool
    open_s: float  # cold: a fresh process, the store's files evicted from the page cache
    open_warm_s: float  # the same again with the files in the page cache
    checkpoint_records: int
    records_replayed: int
    bytes_per_key: float | None  # resident memory after open, values included
    peak_bytes_per_key: float | None  # the peak during open (checkpoint buffer, decode lists)


@frozen
class BenchReport:
    results: list[Comparison]
    async_point: Comparison  # `async` in the JSON
    restart: Restart | None
    environment: dict[str, object]

    def to_json(self) -> dict[str, object]:
        restart = self.restart
        return {
            "results": [asdict(r) for r in self.results],
            "async": asdict(self.async_point),
            "restart_1m_s": None if restart is None else restart.open_s,
            "restart_keys": None if restart is None else restart.keys,
            "bytes_per_key": None if restart is None else restart.bytes_per_key,
            "restart": None if restart is None else asdict(restart),
            "environment": self.environment,
        }


@dataclass(slots=True)
class _WriterRun:
    started: float
    finished: float
    latencies_s: list[float]


# --- the command line --------------------------------------------------------------------------


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--duration-s", type=_duration_s, default=5.0, help="seconds per data point (default 5)")
    parser.add_argument(
        "--writers", type=_writer_counts, default=[1, 16, 64], help="concurrent writers (default 1,16,64)"
    )
    parser.add_argument(
        "--restart-keys", type=_restart_keys, default=1_000_000, help="keys for the restart test (default 1M)"
    )
    parser.add_argument("--skip-restart", action="store_true", help="skip the restart and memory test")
    parser.add_argument(
        "--data-dir",
        default=None,
        help="where to create the temporary data directory (default: the current directory, "
        "because /tmp may be tmpfs, where fsync costs nothing); it is removed afterwards",
    )


def run_bench(args: argparse.Namespace) -> int:
    parent = os.path.abspath(args.data_dir or os.getcwd())
    try:
        run_dir = tempfile.mkdtemp(prefix="titra-bench-", dir=parent)
    except OSError as exc:
        print(f"titra-node bench: cannot create a data directory in {parent}: {exc}", file=sys.stderr)
        return 1
    try:
        report = _run_all(args, run_dir)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    if args.json:
        print(json.dumps(report.to_json()))
    else:
        print(_render(report))
    return 0


def _duration_s(text: str) -> float:
    value = float(text)
    if not 0 < value <= DURATION_S_MAX:
        raise argparse.ArgumentTypeError(f"must be in (0, {DURATION_S_MAX:g}]")
    return value


def _writer_counts(text: str) -> list[int]:
    try:
        counts = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError("expected comma-separated integers, e.g. 1,16,64") from None
    if not counts or not all(1 <= n <= WRITERS_MAX for n in counts):
        raise argparse.ArgumentTypeError(f"each writer count must be in [1, {WRITERS_MAX}]")
    return counts


def _restart_keys(text: str) -> int:
    value = int(text)
    if not 1 <= value <= RESTART_KEYS_MAX:
        raise argparse.ArgumentTypeError(f"must be in [1, {RESTART_KEYS_MAX}]")
    return value


def _run_all(args: argparse.Namespace, run_dir: str) -> BenchReport:
    environment = _environment(args, run_dir)
    value = os.urandom(VALUE_BYTES)
    results = [_compare(run_dir, n, Durability.FSYNC, "FULL", value, args.duration_s) for n in args.writers]
    async_point = _compare(run_dir, max(args.writers), Durability.ASYNC, "NORMAL", value, args.duration_s)
    restart = None if args.skip_restart else _bench_restart(run_dir, args.restart_keys, value)
    environment["loadavg_end"] = _loadavg()
    return BenchReport(results, async_point, restart, environment)


def _compare(
    run_dir: str, writers: int, durability: Durability, synchronous: str, value: bytes, duration_s: float
) -> Comparison:
    point_dir = tempfile.mkdtemp(prefix=f"{durability.value}-{writers}-", dir=run_dir)
    try:
        _progress(f"titra  {durability.value:>5} durability, {writers} writer(s)")
        titra = asyncio.run(_titra_point(os.path.join(point_dir, "titra"), writers, durability, value, duration_s))
        _progress(f"sqlite synchronous={synchronous}, {writers} writer(s)")
        sqlite = _sqlite_point(os.path.join(point_dir, "sqlite.db"), writers, synchronous, value, duration_s)
    finally:
        shutil.rmtree(point_dir, ignore_errors=True)
    ratio = round(titra.commits_per_s / sqlite.commits_per_s, 2)
    return Comparison(writers, titra, sqlite, ratio, synchronous)


# --- Titra ---------------------------------------------------------------------------------------


async def _titra_point(path: str, writers: int, durability: Durability, value: bytes, duration_s: float) -> Throughput:
    store = await WalStore.open(path)
    try:

        async def writer(index: int) -> _WriterRun:
            run = _WriterRun(time.perf_counter(), 0.0, [])
            deadline = run.started + duration_s
            n = 0
            while (start := time.perf_counter()) < deadline:
                await store.put(b"w%04d-%010d" % (index, n), value, durability=durability)
                run.latencies_s.append(time.perf_counter() - start)
                n += 1
            run.finished = time.perf_counter()
            return run

        runs = await asyncio.gather(*(writer(i) for i in range(writers)))
        wal = store.wal.stats
        per_fsync = wal.commits / wal.fsyncs if wal.fsyncs else None
    finally:
        await store.close()
    return _summarise(list(runs), None if per_fsync is None else round(per_fsync, 2))


# --- SQLite --------------------------------------------------------------------------------------


def _sqlite_point(db_path: str, writers: int, synchronous: str, value: bytes, duration_s: float) -> Throughput:
    with sqlite3.connect(db_path) as setup:
        setup.execute("PRAGMA journal_mode=WAL")  # persistent: every later connection uses WAL
        setup.execute("CREATE TABLE kv (key BLOB PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID")
    setup.close()
    # Connections open before the barrier, so connecting is not timed; all start together.
    barrier = threading.Barrier(writers, timeout=BARRIER_TIMEOUT_S)

    def writer(index: int) -> _WriterRun:
        conn = sqlite3.connect(db_path, timeout=SQLITE_BUSY_TIMEOUT_S, isolation_level=None)
        try:
            conn.execute(f"PRAGMA synchronous={synchronous}")  # a per-connection setting
            barrier.wait()
            return _sqlite_commits(conn, index, value, duration_s)
        finally:
            conn.close()

    with ThreadPoolExecutor(max_workers=writers, thread_name_prefix="bench-sqlite") as pool:
        runs = list(pool.map(writer, range(writers)))
    return _summarise(runs, None)


def _sqlite_commits(conn: sqlite3.Connection, index: int, value: bytes, duration_s: float) -> _WriterRun:
    run = _WriterRun(time.perf_counter(), 0.0, [])
    deadline = run.started + duration_s
    n = 0
    while (start := time.perf_counter()) < deadline:
        # IMMEDIATE takes the write lock up front, as a one-row write transaction should.
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT OR REPLACE INTO kv (key, value) VALUES (?, ?)", (b"w%04d-%010d" % (index, n), value))
        conn.execute("COMMIT")
        run.latencies_s.append(time.perf_counter() - start)
        n += 1
    run.finished = time.perf_counter()
    return run


def _summarise(runs: list[_WriterRun], commits_per_fsync: float | None) -> Throughput:
    latencies = sorted(lat for run in runs for lat in run.latencies_s)
    elapsed_s = max(run.finished for run in runs) - min(run.started for run in runs)
    return Throughput(
        commits=len(latencies),
        commits_per_s=round(len(latencies) / elapsed_s, 1),
        p50_ms=round(_percentile(latencies, 0.50) * 1000, 3),
        p99_ms=round(_percentile(latencies, 0.99) * 1000, 3),
        commits_per_fsync=commits_per_fsync,
    )


def _percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile: a latency some commit actually had, never an interpolation."""
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[rank - 1]


# --- restart and memory --------------------------------------------------------------------------


def _bench_restart(run_dir: str, keys: int, value: bytes) -> Restart:
    path = os.path.join(run_dir, "restart")
    tail = min(WAL_TAIL_PUTS_MAX, max(1, keys // 100))
    _progress(f"restart: loading {keys} keys, checkpoint, {tail} WAL tail puts")
    load_s, checkpoint_s = asyncio.run(_load_for_restart(path, keys, tail, value))
    data_bytes = _tree_bytes(path)
    evicted = _evict_page_cache(path)
    _progress("restart: opening in a fresh process (cold), then again (warm)")
    cold = _in_fresh_process(_probe_restart, path)
    warm = _in_fresh_process(_probe_restart, path)
    return Restart(
        keys=cold.keys,
        load_s=round(load_s, 3),
        checkpoint_s=round(checkpoint_s, 3),
        wal_tail_puts=tail,
        data_bytes=data_bytes,
        page_cache_evicted=evicted,
        open_s=round(cold.open_s, 3),
        open_warm_s=round(warm.open_s, 3),
        checkpoint_records=cold.checkpoint_records,
        records_replayed=cold.records_replayed,
        bytes_per_key=_per_key(cold.rss_before_bytes, cold.rss_after_bytes, cold.keys),
        peak_bytes_per_key=_per_key(cold.rss_before_bytes, cold.peak_rss_bytes, cold.keys),
    )


async def _load_for_restart(path: str, keys: int, tail: int, value: bytes) -> tuple[float, float]:
    """Returns (load seconds, checkpoint seconds). The tail overwrites keys spread over the range,
    so the restart replays a WAL after the checkpoint and the key count stays `keys`."""
    store = await WalStore.open(path, _NO_BACKGROUND_CHECKPOINT)
    try:
        started = time.perf_counter()
        for first in range(0, keys, LOAD_TXN_PUTS):
            async with store.transaction(Isolation.READ_COMMITTED, Durability.ASYNC) as tx:
                for i in range(first, min(first + LOAD_TXN_PUTS, keys)):
                    await tx.put(b"key-%08d" % i, value)
        load_s = time.perf_counter() - started
        started = time.perf_counter()
        await store.checkpoint()
        checkpoint_s = time.perf_counter() - started
        stride = keys // tail
        for j in range(tail):
            await store.put(b"key-%08d" % (j * stride), value, durability=Durability.ASYNC)
    finally:
        await store.close()  # syncs the log: every page is clean, so it can be evicted
    return load_s, checkpoint_s


def _in_fresh_process(fn: Callable[[str], RestartProbe], path: str) -> RestartProbe:
    # spawn, not fork: a forked child would inherit this process's heap and page tables.
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, path).result()


def _probe_restart(path: str) -> RestartProbe:
    """Open the store and measure it, in a fresh interpreter. Not in the loader's process: its
    allocator keeps freed arenas (a baseline taken there would hide the memtable's growth), and
    there every key shares one value object, while after a restart each value is its own bytes."""
    gc.collect()
    rss_before = _rss_bytes()

    async def open_and_close() -> RestartProbe:
        started = time.perf_counter()
        store = await WalStore.open(path)
        open_s = time.perf_counter() - started
        try:
            gc.collect()
            report = store.stats.recovery
            return RestartProbe(
                open_s=open_s,
                keys=len(store.memtable),
                checkpoint_records=report.checkpoint_records,
                records_replayed=report.records_replayed,
                rss_before_bytes=rss_before,
                rss_after_bytes=_rss_bytes(),
                peak_rss_bytes=_peak_rss_bytes(),
            )
        finally:
            await store.close()

    return asyncio.run(open_and_close())


def _rss_bytes() -> int | None:
    """Current resident set size (Linux /proc); None where it cannot be read."""
    try:
        with open("/proc/self/statm") as statm:
            resident_pages = int(statm.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


def _peak_rss_bytes() -> int | None:
    try:
        import resource
    except ImportError:
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _per_key(before: int | None, after: int | None, keys: int) -> float | None:
    if before is None or after is None or keys == 0:
        return None
    return round((after - before) / keys, 1)


def _evict_page_cache(path: str) -> bool:
    """Drop the store's (clean) file pages from the page cache, so the open reads the disk."""
    if not hasattr(os, "posix_fadvise"):
        return False
    for directory, _, names in os.walk(path):
        for name in names:
            fd = os.open(os.path.join(directory, name), os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
    return True


def _tree_bytes(path: str) -> int:
    return sum(
        os.path.getsize(os.path.join(directory, name)) for directory, _, names in os.walk(path) for name in names
    )


# --- environment and output ----------------------------------------------------------------------


def _environment(args: argparse.Namespace, run_dir: str) -> dict[str, object]:
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "sqlite_version": sqlite3.sqlite_version,
        "data_dir": run_dir,
        "filesystem": _filesystem_of(run_dir),
        "value_bytes": VALUE_BYTES,
        "duration_s_per_point": args.duration_s,
        "loadavg_start": _loadavg(),
        "memory_note": "bytes_per_key is resident memory after a restart divided by keys; "
        f"it includes the {VALUE_BYTES}-byte values",
    }


def _filesystem_of(path: str) -> str:
    """The file system type and mount holding `path`, from /proc/mounts (longest mount prefix)."""
    real = os.path.realpath(path)
    best: tuple[str, str, str] | None = None
    try:
        with open("/proc/mounts") as mounts:
            for line in mounts:
                device, mount_point, fs_type, *_ = line.split()
                inside = real == mount_point or real.startswith(mount_point.rstrip("/") + "/")
                if inside and (best is None or len(mount_point) > len(best[1])):
                    best = (device, mount_point, fs_type)
    except (OSError, ValueError):
        return "unknown"
    return "unknown" if best is None else f"{best[2]} ({best[0]} on {best[1]})"


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _progress(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def _render(report: BenchReport) -> str:
    env = report.environment
    lines = [
        f"Durable commits, one {VALUE_BYTES}-byte value each, {env['duration_s_per_point']} s per point: "
        "Titra (fsync) vs SQLite (WAL, synchronous=FULL)",
        f"data dir: {env['data_dir']} [{env['filesystem']}], {env['cpus']} CPUs, "
        f"load average {env['loadavg_start']} -> {env['loadavg_end']}",
        "",
        f"{'writers':>9} | {'titra c/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'c/fsync':>8} | "
        f"{'sqlite c/s':>10} {'p50 ms':>8} {'p99 ms':>8} | {'ratio':>6}",
    ]
    lines += [_row(str(c.writers), c) for c in report.results]
    lines.append(_row(f"{report.async_point.writers} async", report.async_point))
    lines.append("(async row: Titra async durability vs SQLite WAL synchronous=NORMAL)")
    if report.restart is not None:
        lines += ["", *_restart_lines(report.restart)]
    return "\n".join(lines)


def _row(label: str, point: Comparison) -> str:
    titra, sqlite = point.titra, point.sqlite
    return (
        f"{label:>9} | {titra.commits_per_s:>10} {titra.p50_ms:>8} {titra.p99_ms:>8} "
        f"{titra.commits_per_fsync!s:>8} | "
        f"{sqlite.commits_per_s:>10} {sqlite.p50_ms:>8} {sqlite.p99_ms:>8} | {point.ratio:>6}"
    )


def _restart_lines(restart: Restart) -> list[str]:
    return [
        f"restart with {restart.keys:,} keys: open {restart.open_s} s cold "
        f"(page cache evicted: {restart.page_cache_evicted}), {restart.open_warm_s} s warm",
        f"  checkpoint of {restart.checkpoint_records:,} records + {restart.records_replayed:,} "
        f"WAL records replayed; {restart.data_bytes / 2**20:.1f} MiB on disk",
        f"  load {restart.load_s} s, checkpoint {restart.checkpoint_s} s",
        f"memory: {restart.bytes_per_key} bytes/key resident after open, peak during open "
        f"{restart.peak_bytes_per_key} bytes/key (values included)",
    ]
