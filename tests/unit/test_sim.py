"""The deterministic simulation (chaos/sim): the virtual-time loop, the simulated network, the
invariants on their own, exact replay of a seed, a deliberately broken cluster that must be caught,
and the CI run of many seeds (FoundationDB's simulator and TigerBeetle's VOPR run thousands).
"""

import asyncio
import contextlib
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from chaos.cli import main as chaos_main
from chaos.history import Event
from chaos.sim.faults import FaultOptions, plan_faults
from chaos.sim.invariants import FinalState, check_run
from chaos.sim.loop import SimDeadlock, VirtualTimeLoop, context_of
from chaos.sim.network import SimNetwork, Trace
from chaos.sim.run import replay_command, run_seed, run_seeds
from cluster import dvv
from cluster.dvv import VersionVector
from cluster.hlc import Timestamp
from cluster.messages import Message, ReplicaRead
from cluster.siblings import Sibling, encode_clock

ROOT = Path(__file__).resolve().parents[2]
CI_SEEDS = 200
CI_BUDGET_S = 600.0  # the CI job's budget for them; a seed takes ~0.1-0.4 s of CPU
NODES = ("n1", "n2", "n3")


# --- the virtual-time loop -------------------------------------------------------------------------


def test_an_idle_hour_of_virtual_time_takes_no_real_time() -> None:
    loop = VirtualTimeLoop()

    async def scenario() -> tuple[float, float]:
        await asyncio.sleep(3600)
        slept = loop.time()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.sleep(10), 1.5)
        return slept, loop.time()

    started = time.perf_counter()
    try:
        slept, timed_out = loop.run_until_complete(scenario())
    finally:
        loop.close()
    assert (slept, timed_out) == (3600.0, 3601.5)
    assert time.perf_counter() - started < 1.0


def test_waiting_for_what_can_never_happen_is_a_deadlock_not_a_hang() -> None:
    loop = VirtualTimeLoop()
    try:
        with pytest.raises(SimDeadlock):
            loop.run_until_complete(loop.create_future())
        with pytest.raises(RuntimeError, match="no threads"):
            loop.run_in_executor(None, print)
    finally:
        loop.close()


def test_a_crash_cancels_exactly_the_owners_tasks_and_whatever_it_starts_later() -> None:
    loop = VirtualTimeLoop()
    crashed = context_of(("n1", 1))

    async def forever() -> None:
        await asyncio.sleep(3600)

    async def scenario() -> tuple[bool, bool, bool]:
        mine = loop.create_task(forever(), context=crashed)
        other = loop.create_task(forever(), context=context_of(("n2", 1)))
        await asyncio.sleep(1)
        assert loop.cancel_owned(("n1", 1)) == 1
        late = loop.create_task(forever(), context=crashed)
        await asyncio.sleep(0)
        result = (mine.cancelled(), late.cancelled(), other.done())
        other.cancel()
        return result

    try:
        assert loop.run_until_complete(scenario()) == (True, True, False)
    finally:
        loop.close()


# --- options, plans and the network ----------------------------------------------------------------


def test_fault_options_replay_through_json_and_refuse_nonsense() -> None:
    options = FaultOptions(drop_rate=0.2, partition_shapes=("halves",), levels=("quorum",))
    assert FaultOptions.from_json(options.to_json()) == options
    assert FaultOptions.from_json('{"drop_rate": 0}').drop_rate == 0.0
    for bad in ('{"drop_rate": 1.5}', '{"no_such_option": 1}', '{"nodes": true}', '{"partition_shapes": ["ring"]}'):
        with pytest.raises(ValueError):
            FaultOptions.from_json(bad)


def test_the_fault_plan_is_a_function_of_the_seed() -> None:
    import random

    def plan(seed: int) -> list[str]:
        return [f"{s.at_ms} {s.describe()}" for s in plan_faults(FaultOptions(), NODES, random.Random(seed))]

    assert plan(1) == plan(1) != plan(2)
    steps = plan_faults(FaultOptions(), NODES, random.Random(1))
    assert [s.at_ms for s in steps] == sorted(s.at_ms for s in steps)
    assert all(s.at_ms < FaultOptions().duration_ms for s in steps)
    assert {s.kind for s in steps} == {"partition", "heal", "crash", "restart"}


def test_a_partition_drops_messages_between_groups_and_shows_in_reachability() -> None:
    import random

    loop = VirtualTimeLoop()
    options = FaultOptions(drop_rate=0.0, duplicate_rate=0.0, delay_ms_min=5, delay_ms_max=5)
    network = SimNetwork(loop, NODES, options, random.Random(1), Trace())
    got: list[tuple[str, str, Message]] = []
    for node in NODES:
        network.attach(node, 1, lambda sender, message, to=node: got.append((sender, to, message)), context_of(node))
    n1, n2 = network.transport("n1", 1), network.transport("n2", 1)

    async def scenario() -> None:
        network.partition((("n1",), ("n2", "n3")))
        assert not n1.is_reachable("n2") and n2.is_reachable("n3") and n1.is_reachable("n1")
        n1.send("n2", ReplicaRead(1, "default", b"k"))
        n2.send("n3", ReplicaRead(2, "default", b"k"))
        await asyncio.sleep(0.01)
        network.heal()
        n1.send("n2", ReplicaRead(3, "default", b"k"))
        await asyncio.sleep(0.01)

    try:
        loop.run_until_complete(scenario())
    finally:
        loop.close()
    # Decoded from the real codec: equal to what was sent.
    assert got == [("n2", "n3", ReplicaRead(2, "default", b"k")), ("n1", "n2", ReplicaRead(3, "default", b"k"))]
    assert network.stats.dropped_partition == 1


# --- the invariants on their own (pure) ------------------------------------------------------------


def _sibling(value: str, deleted: bool = False) -> Sibling:
    return Sibling(value.encode(), "text/plain", Timestamp(1, 0, "n1"), deleted)


def _history(*ops: tuple[str, str, str, dict[str, str]]) -> list[Event]:
    """(f, value, level, receipt) per op, each invoked and completed ok in turn on key "k"."""
    events = []
    for op_id, (f, value, level, receipt) in enumerate(ops, start=1):
        events.append(Event("invoke", 0, op_id, f, "k", value or None, op_id * 10, "n1", level))
        events.append(Event("ok", 0, op_id, f, "k", None, op_id * 10 + 5, "n1", level, receipt))
    return events


def _final(clock: dvv.DVVSet[Sibling] | None, other: dvv.DVVSet[Sibling] | None = None) -> FinalState:
    stored = {node: ({} if clock is None else {b"k": encode_clock(clock)}) for node in NODES}
    if other is not None:
        stored["n3"] = {b"k": encode_clock(other)}
    return FinalState(stored, {b"k": NODES}, 3)


def _verdicts(events: list[Event], final: FinalState) -> dict[str, bool | None]:
    return {check.checker: check.valid for check in check_run(events, final)}


def test_invariants_pass_a_superseded_write_and_catch_a_lost_one() -> None:
    first = dvv.update(dvv.Write(_sibling("v1")), dvv.DVVSet(), "n1")
    second = dvv.update(dvv.Write(_sibling("v2"), dvv.join(first)), first, "n1")
    write = {"dot": "n1:1", "version": "n1=1", "required": "2"}
    overwrite = {"dot": "n1:2", "version": "n1=2", "required": "2"}
    events = _history(("write", "v1", "quorum", write), ("write", "v2", "quorum", overwrite))
    assert set(_verdicts(events, _final(second)).values()) <= {True, None}
    # The replicas forgot the first write: lost (and the second one's read-your-writes proof too).
    verdicts = _verdicts(_history(("write", "v1", "quorum", write)), _final(None))
    assert verdicts["acknowledged_writes"] is False


def test_invariants_catch_a_resurrection_and_replicas_that_differ() -> None:
    written = dvv.update(dvv.Write(_sibling("v1")), dvv.DVVSet(), "n1")
    events = _history(
        ("write", "v1", "quorum", {"dot": "n1:1", "version": "n1=1", "required": "2"}),
        ("delete", "", "quorum", {"dot": "n1:2", "version": "n1=2", "required": "2", "cover": "n1=1"}),
    )
    # The delete covered v1, yet the final state has v1 live (its tombstone vanished).
    assert _verdicts(events, _final(written))["no_resurrection"] is False
    deleted = dvv.update(dvv.Write(_sibling("", deleted=True), VersionVector.of({"n1": 1})), written, "n1")
    # One replica missed the delete: not converged (though a sync would still drop v1).
    verdicts = _verdicts(events, _final(deleted, other=written))
    assert verdicts["convergence"] is False and verdicts["no_resurrection"] is True
    assert set(_verdicts(events, _final(deleted)).values()) <= {True, None}


# --- whole runs ------------------------------------------------------------------------------------


def test_the_same_seed_gives_the_same_trace_and_another_seed_another() -> None:
    first, again, other = run_seed(7), run_seed(7), run_seed(8)
    assert first.trace_hash == again.trace_hash != other.trace_hash
    assert first.events == again.events
    assert first.stats["ops"] > 50 and first.stats["sent"] > 100 and first.stats["faults"] > 0


def test_a_seed_replays_exactly_in_another_process_with_another_hash_seed() -> None:
    """Nothing may depend on str hashing (PYTHONHASHSEED), memory addresses or real time."""
    options = replace(FaultOptions(), duration_ms=4_000)
    here = run_seed(11, options)
    env = {**os.environ, "PYTHONHASHSEED": "4242"}
    command = [sys.executable, "-m", "chaos.sim.run", "--seed", "11", "--options", options.to_json(), "--json"]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    there = json.loads(done.stdout.splitlines()[0])
    assert there["trace_hash"] == here.trace_hash, done.stderr[-2000:]


def test_a_cluster_without_repair_fails_convergence_and_prints_its_replay(capsys: pytest.CaptureFixture[str]) -> None:
    broken = replace(FaultOptions(), sabotage_no_repair=True)
    result = run_seed(3, broken)
    assert not result.passed
    assert "convergence" in {check.checker for check in result.failures}
    assert result.replay == replay_command(3, broken)
    # The printed command replays the very same run.
    code = chaos_main(["sim", "--seed", "3", "--options", broken.to_json()])
    printed = capsys.readouterr().out
    assert code == 1 and "convergence" in printed
    replay = next(line for line in printed.splitlines() if "replay:" in line).split("replay:", 1)[1]
    argv = shlex.split(replay)
    assert argv[:4] == ["titra-chaos", "sim", "--seed", "3"]
    again = run_seed(int(argv[3]), FaultOptions.from_json(argv[argv.index("--options") + 1]))
    assert again.trace_hash == result.trace_hash


def test_the_cli_refuses_bad_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert chaos_main(["sim", "--seed", "1", "--options", '{"drop_rate": 2}']) == 2
    assert "drop_rate" in capsys.readouterr().err


@pytest.mark.slow
def test_ci_seeds_all_pass(capsys: pytest.CaptureFixture[str]) -> None:
    started = time.perf_counter()
    results = list(run_seeds(range(1, CI_SEEDS + 1), FaultOptions(), jobs=os.cpu_count() or 1))
    elapsed = time.perf_counter() - started
    failed = [r for r in results if not r.passed]
    rate = len(results) / elapsed
    with capsys.disabled():
        print(f"\nsim: {len(results)} seeds in {elapsed:.1f} s ({rate:.1f} seeds/s), {len(failed)} failed")
    report = "\n".join(f"seed {r.seed}: {[c.checker for c in r.failures]} {r.failures[0].examples[:2]}\n  {r.replay}"
                       for r in failed)  # fmt: skip
    assert not failed, f"{len(failed)} of {len(results)} seeds failed:\n{report}"
    assert elapsed < CI_BUDGET_S
