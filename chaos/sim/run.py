"""`titra-chaos sim`: run seeds of the deterministic simulation; print failures with their replay.

A run is a function of (seed, FaultOptions), as in FoundationDB's simulator and TigerBeetle's VOPR:
1. Start the nodes; run the seeded fault plan and the clients for `duration_ms` of virtual time.
2. Final heal: no partition, every node up, no more drops, duplicates or store faults.
3. Converge. When the runtime has anti-entropy, no client reads: background repair alone must make
   the replicas equal. Until it has, the fallback is read repair: one node reads every key at
   `all` (Dynamo §4.6), and the replicas must then converge.
4. Check the invariants (chaos.sim.invariants) on the history and the replicas' disks.

Determinism: one virtual-time loop, one thread, named `random.Random` streams derived from the
seed (never the global one), a trace hash over every message and event, cyclic GC paused during a
run (its timing would decide when abandoned coroutines are finalised), and the global `random`
seeded too, in case some code draws from it.
"""

import argparse
import asyncio
import gc
import itertools
import json
import logging
import multiprocessing
import os
import random
import sys
import time
import traceback
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from chaos.history import Event
from chaos.sim.cluster import INJECTED, Clients, Recorder, SimCluster
from chaos.sim.faults import FaultOptions, plan_faults
from chaos.sim.invariants import FinalState, check_run
from chaos.sim.loop import VirtualTimeLoop
from chaos.sim.network import Trace
from chaos.verdict import CheckResult
from node.runtime import NodeRuntime

EXIT_FAILED, EXIT_USAGE = 1, 2
POLL_S = 0.1  # how often the quiet period looks at the replicas
SETTLE_S = 1.0  # after the final heal, before the fallback's repair reads: let messages in flight land
RNG_STREAMS = ("faults", "network", "store", "clock", "clients", "repair", "gossip")


@dataclass(slots=True)
class SimResult:
    seed: int
    options: FaultOptions
    checks: list[CheckResult]
    trace_hash: str
    stats: dict[str, Any]
    events: list[Event] = field(repr=False)
    trace_lines: list[str] | None = field(default=None, repr=False)

    @property
    def passed(self) -> bool:
        return all(check.valid is not False for check in self.checks)

    @property
    def failures(self) -> list[CheckResult]:
        return [check for check in self.checks if check.valid is False]

    @property
    def replay(self) -> str:
        return replay_command(self.seed, self.options)

    def to_json(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "passed": self.passed,
            "trace_hash": self.trace_hash,
            "stats": self.stats,
            "checks": [check.to_json() for check in self.checks],
            "replay": self.replay,
        }


def replay_command(seed: int, options: FaultOptions) -> str:
    return f"titra-chaos sim --seed {seed} --options '{options.to_json()}'"


def repair_on(runtime: NodeRuntime, driver: str) -> bool:
    """Whether the runtime runs this background repair driver (`anti_entropy`, `hints`), enabled."""
    found = getattr(runtime, driver, None)
    return found is not None and bool(getattr(found, "enabled", True))


def run_seed(seed: int, options: FaultOptions | None = None, keep_trace: bool = False) -> SimResult:
    """One simulated run; the same (seed, options) gives the same trace hash, in any process."""
    options = options or FaultOptions()
    loop = VirtualTimeLoop()
    started = time.perf_counter()
    with _deterministic(seed):
        try:
            result = loop.run_until_complete(_simulate(loop, seed, options, keep_trace))
        finally:
            loop.close()
    result.stats["real_ms"] = round((time.perf_counter() - started) * 1000, 1)
    return result


@contextmanager
def _deterministic(seed: int) -> Iterator[None]:
    gc_was_enabled = gc.isenabled()
    saved_random = random.getstate()
    logger = logging.getLogger("titra")
    saved_level = logger.level
    gc.collect()
    gc.disable()
    random.seed(seed)
    logger.setLevel(logging.CRITICAL)  # injected store faults would log a traceback each
    try:
        with warnings.catch_warnings():
            # A crash cancels tasks before they start: their coroutines are never awaited, by design.
            warnings.filterwarnings("ignore", "coroutine .* was never awaited", RuntimeWarning)
            yield
    finally:
        logger.setLevel(saved_level)
        random.setstate(saved_random)
        if gc_was_enabled:
            gc.enable()


async def _simulate(loop: VirtualTimeLoop, seed: int, options: FaultOptions, keep_trace: bool) -> SimResult:
    rngs = {name: random.Random(f"titra-sim/{seed}/{name}") for name in RNG_STREAMS}
    trace = Trace(keep_trace)
    recorder = Recorder(loop, trace)
    escaped = _catch_loop_errors(loop, recorder)
    cluster = SimCluster(loop, options, rngs, recorder)
    for node in cluster.node_ids:
        await cluster.start(node)
    plan = plan_faults(options, cluster.node_ids, rngs["faults"])
    nemesis = loop.create_task(cluster.run_faults(plan))
    clients = Clients(cluster, rngs["clients"])
    await clients.run(until_s=options.duration_ms / 1000)
    nemesis.cancel()
    await asyncio.gather(nemesis, return_exceptions=True)

    await cluster.final_heal()
    heal_s = loop.time()
    with_anti_entropy = all(repair_on(runtime, "anti_entropy") for runtime in cluster.running())
    with_hints = all(repair_on(runtime, "hints") for runtime in cluster.running())
    if not with_anti_entropy:
        # Fallback until the runtime has anti-entropy: read repair, by one read at `all` of every key.
        await asyncio.sleep(SETTLE_S)
        reader = cluster.node_ids[rngs["repair"].randrange(len(cluster.node_ids))]
        keys = sorted({key for stored in cluster.stored().values() for key in stored})
        await asyncio.gather(*(
            clients.read(options.clients, op_id, reader, key.decode(), "all", ())
            for op_id, key in enumerate(keys, start=1)
        ))  # fmt: skip
    converged_s = await _quiet(cluster, heal_s + options.quiet_ms_max / 1000, with_hints)

    stored = cluster.stored()
    owners = {key: cluster.owners(key) for node in stored.values() for key in node}
    # A tombstone may be purged once the grace period passed on the node's wall clock (skewed).
    purge_ms = options.tombstone_grace_ms - 2 * options.clock_skew_ms_max if with_anti_entropy else None
    final = FinalState(
        stored,
        owners,
        cluster.replicas_per_key,
        cluster.hint_backlog() if with_hints else None,
        recorder.now_ns(),
        None if purge_ms is None else purge_ms * 1_000_000,
    )
    checks = check_run(recorder.events, final, recorder.unexpected)
    await cluster.stop()
    ops = [e for e in recorder.events if e.process >= 0 and e.type != "invoke"]
    stats: dict[str, Any] = {
        "virtual_s": round(loop.time(), 3),
        "converge": "anti_entropy" if with_anti_entropy else "read_repair",
        "converged_after_heal_ms": None if converged_s is None else round((converged_s - heal_s) * 1000),
        "faults": len(plan),
        "ops": len(ops),
        **{f"ops_{kind}": sum(1 for e in ops if e.type == kind) for kind in ("ok", "fail", "info")},
        **{key: value for key, value in vars_of(cluster.network.stats).items()},
        "store_faults": cluster.store_faults.injected,
        "injected_faults_escaped": escaped[0],
        "trace_records": trace.count,
    }
    return SimResult(seed, options, checks, trace.digest(), stats, recorder.events, trace.lines)


async def _quiet(cluster: SimCluster, deadline_s: float, with_hints: bool) -> float | None:
    """Wait until every key's replicas store the same clock (and hints drained); when, or None."""
    loop = cluster.loop
    while True:
        if _converged(cluster) and not (with_hints and any(cluster.hint_backlog().values())):
            return loop.time()
        if loop.time() >= deadline_s:
            return None
        await asyncio.sleep(POLL_S)


def _converged(cluster: SimCluster) -> bool:
    stored = cluster.stored()
    keys = {key for node in stored.values() for key in node}
    return all(len({stored[node].get(key) for node in cluster.owners(key)}) == 1 for key in keys)


def _catch_loop_errors(loop: VirtualTimeLoop, recorder: Recorder) -> list[int]:
    """Exceptions that escape a task are bugs, except injected faults (counted, not failed)."""
    escaped = [0]

    def handler(_: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if isinstance(exc, INJECTED):
            escaped[0] += 1
        else:
            where = ""
            if exc is not None and exc.__traceback__ is not None:
                frame = traceback.extract_tb(exc.__traceback__)[-1]
                where = f" at {os.path.relpath(frame.filename)}:{frame.lineno} ({frame.line})"
            recorder.unexpected.append(f"{context.get('message', '')}: {type(exc).__name__}: {exc}{where}")

    loop.set_exception_handler(handler)
    return escaped


def vars_of(stats: object) -> dict[str, int]:
    return {name: getattr(stats, name) for name in getattr(stats, "__slots__", ())}


# --- the command line ----------------------------------------------------------------------------


def add_sim_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seeds", type=int, default=200, help="how many seeds to run")
    parser.add_argument("--start-seed", type=int, default=1, help="the first seed")
    parser.add_argument("--seed", type=int, default=None, help="run exactly this seed (a replay)")
    parser.add_argument("--options", default="{}", help="FaultOptions as JSON; fields left out keep their defaults")
    parser.add_argument("--json", action="store_true", help="one JSON object per seed, then a summary object")
    parser.add_argument("--trace", action="store_true", help="with --seed: print the run's trace")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes (0: one per CPU)")


def cmd_sim(args: argparse.Namespace) -> int:
    try:
        options = FaultOptions.from_json(args.options)
    except (ValueError, TypeError) as exc:
        print(f"titra-chaos sim: bad --options: {exc}", file=sys.stderr)
        return EXIT_USAGE
    seeds = [args.seed] if args.seed is not None else list(range(args.start_seed, args.start_seed + args.seeds))
    started = time.perf_counter()
    failed: list[SimResult] = []
    keep_trace = args.trace and args.seed is not None
    for result in run_seeds(seeds, options, jobs=args.jobs or os.cpu_count() or 1, keep_trace=keep_trace):
        if args.json:
            print(json.dumps(result.to_json(), sort_keys=True))
        elif args.seed is not None:
            print(format_result(result, verbose=True))
        elif not result.passed:
            print(format_result(result))
        if result.trace_lines is not None:
            print("\n".join(result.trace_lines))
        if not result.passed:
            failed.append(result)
    elapsed = time.perf_counter() - started
    summary = {
        "seeds": len(seeds),
        "failed": [r.seed for r in failed],
        "real_s": round(elapsed, 2),
        "seeds_per_s": round(len(seeds) / elapsed, 1) if elapsed else None,
    }
    if args.json:
        print(json.dumps({"summary": summary}, sort_keys=True))
    else:
        print(
            f"sim: {len(seeds)} seeds from {seeds[0]}, {len(failed)} failed, {elapsed:.1f} s real "
            f"({summary['seeds_per_s']} seeds/s)"
        )
    return EXIT_FAILED if failed else 0


def run_seeds(
    seeds: Sequence[int], options: FaultOptions, jobs: int = 1, keep_trace: bool = False
) -> Iterator[SimResult]:
    """Results in seed order. With jobs > 1, seeds run in worker processes (each run is still one
    thread and one loop; a seed's result does not depend on which process ran it)."""
    if jobs <= 1 or len(seeds) <= 1:
        for seed in seeds:
            yield run_seed(seed, options, keep_trace)
        return
    # spawn: a fork of a process with threads (pytest's, an IDE's) may inherit a held lock.
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield from pool.map(_run_in_worker, seeds, itertools.repeat(options), itertools.repeat(keep_trace))


def _run_in_worker(seed: int, options: FaultOptions, keep_trace: bool) -> SimResult:
    result = run_seed(seed, options, keep_trace)
    if result.passed:
        result.events = []  # only a failure's history is worth sending back
    return result


def format_result(result: SimResult, verbose: bool = False) -> str:
    lines = [f"seed {result.seed}: {'ok' if result.passed else 'FAILED'} (trace {result.trace_hash[:16]})"]
    for check in result.checks if verbose else result.failures:
        counts = ", ".join(f"{k}={v}" for k, v in sorted(check.counts.items()))
        lines.append(f"  {check.checker:<20} {check.verdict:<8} {counts}")
        lines.extend(f"      {example}" for example in check.examples[:6])
    if verbose:
        lines.append("  stats: " + ", ".join(f"{k}={v}" for k, v in result.stats.items()))
    lines.append(f"  replay: {result.replay}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="titra-chaos sim", description=__doc__.split("\n\n")[0])
    add_sim_arguments(parser)
    return cmd_sim(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
