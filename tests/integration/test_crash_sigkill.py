"""SIGKILL the store's process at random moments; every acknowledged `fsync` commit survives.

A child (crash_writer.py) commits with 8 concurrent writers and prints each commit before it is
attempted ("begin") and after it is acknowledged ("ack"). The parent kills it after a random
number of acks or a random delay from readiness, reopens the data directory and checks:

- every acknowledged write is there with its value and its LSN as the record's version, unless a
  later acknowledged write of the same key replaced it;
- a commit that was in flight at the kill is in doubt: all of its writes are there, or none;
- no key appears that no commit wrote.

The directory carries over from round to round, so later rounds overwrite and delete keys of
earlier ones, and a small segment size and frequent checkpoints make kills land across segment
rotations and checkpoints. The seed is printed; a failure names the round.
"""

import asyncio
import json
import os
import random
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from cluster.store import Record
from node.storage import WalStore
from node.storage.disk import join
from node.storage.recovery import WAL_DIR

ROUNDS = 24
CHILD = Path(__file__).with_name("crash_writer.py")
READY_DEADLINE_S = 30.0
ACKS_DEADLINE_S = 30.0

Writes = list[tuple[str, str | None]]


@dataclass
class RoundLog:
    """What the parent read from one child before it died."""

    ready: bool = False
    begun: dict[int, Writes] = field(default_factory=dict)
    acked: list[tuple[int, int]] = field(default_factory=list)  # (op, lsn) in ack order
    checkpoints: int = 0
    done: bool = False
    acks_reached: asyncio.Event = field(default_factory=asyncio.Event)
    acks_wanted: int = 0

    def take(self, line: bytes) -> None:
        event = json.loads(line)
        match event["ev"]:
            case "ready":
                self.ready = True
            case "begin":
                self.begun[event["op"]] = [(k, v) for k, v in event["writes"]]
            case "ack":
                self.acked.append((event["op"], event["lsn"]))
                if len(self.acked) >= self.acks_wanted:
                    self.acks_reached.set()
            case "checkpoint":
                self.checkpoints += 1
            case "done":
                self.done = True
            case other:
                raise AssertionError(f"unknown child event {other!r}")


async def read_events(stream: asyncio.StreamReader, log: RoundLog, ready: asyncio.Event) -> None:
    while line := await stream.readline():
        assert line.endswith(b"\n"), f"the child printed a partial line {line!r}"
        log.take(line)
        if log.ready:
            ready.set()


async def snapshot(store: WalStore) -> dict[str, Record]:
    state: dict[str, Record] = {}
    after: bytes | None = None
    while True:
        page = await store.scan(after=after, limit=1_000)
        state.update((k.decode(), r) for k, r in page.items)
        if page.cursor is None:
            return state
        after = page.cursor


def check_round(
    round_no: int, model: dict[str, tuple[str, int]], log: RoundLog, state: dict[str, Record]
) -> dict[str, tuple[str, int]]:
    """Check the reopened `state` against the acknowledged history; return the new model."""
    expected = dict(model)
    last_lsn_of: dict[str, int] = {}
    acked_ops = set()
    for op, lsn in log.acked:
        acked_ops.add(op)
        for key, value in log.begun[op]:
            assert lsn > last_lsn_of.get(key, 0), f"round {round_no}: {key} acknowledged out of LSN order"
            last_lsn_of[key] = lsn
            if value is None:
                expected.pop(key, None)
            else:
                expected[key] = (value, lsn)
    in_doubt = {op: writes for op, writes in log.begun.items() if op not in acked_ops}
    doubtful_keys = {key for writes in in_doubt.values() for key, _ in writes}
    assert len(doubtful_keys) == sum(len(w) for w in in_doubt.values()), (
        f"round {round_no}: two in-doubt commits share a key; the writers' key ownership broke"
    )
    for key, (value, lsn) in expected.items():
        if key in doubtful_keys:
            continue
        got = state.get(key)
        assert got is not None, f"round {round_no}: acknowledged {key}={value} (LSN {lsn}) is missing"
        assert (got.value.decode(), got.version) == (value, lsn), (
            f"round {round_no}: {key} is {got.value!r} v{got.version}, acknowledged {value} at LSN {lsn}"
        )
    for op, writes in in_doubt.items():
        applied = [key for key, value in writes if _matches(state.get(key), value)]
        unapplied = [key for key, _ in writes if _matches_model(state.get(key), expected.get(key))]
        assert len(applied) == len(writes) or len(unapplied) == len(writes), (
            f"round {round_no}: in-doubt commit {op} is half applied: {writes}, applied {applied}"
        )
        versions = {rec.version for key in applied if (rec := state.get(key)) is not None}
        assert len(applied) < len(writes) or len(versions) <= 1, (
            f"round {round_no}: in-doubt commit {op} is spread over versions {versions}"
        )
    phantoms = set(state) - set(expected) - doubtful_keys
    assert not phantoms, f"round {round_no}: keys no commit wrote: {sorted(phantoms)[:5]}"
    return {key: (rec.value.decode(), rec.version) for key, rec in state.items()}


def _matches(record: Record | None, value: str | None) -> bool:
    return record is None if value is None else record is not None and record.value.decode() == value


def _matches_model(record: Record | None, expected: tuple[str, int] | None) -> bool:
    if expected is None:
        return record is None
    return record is not None and (record.value.decode(), record.version) == expected


async def run_child_until_killed(data_dir: Path, seed: int, round_no: int, rng: random.Random) -> tuple[RoundLog, str]:
    """Start the child, kill it at a random moment after readiness; return what it printed."""
    log = RoundLog(acks_wanted=rng.randint(1, 250))
    kill_after_delay_s = rng.uniform(0.0, 0.15) if rng.random() < 0.4 else None
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(CHILD),
        str(data_dir),
        str(seed),
        str(round_no),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    ready = asyncio.Event()
    reader = asyncio.create_task(read_events(proc.stdout, log, ready))
    errors = asyncio.create_task(proc.stderr.read())
    try:
        await _wait_for_either(ready, proc, READY_DEADLINE_S, "the child's ready line")
        if kill_after_delay_s is not None:
            await asyncio.sleep(kill_after_delay_s)  # fault-injection timing, not a wait for state
        else:
            await _wait_for_either(log.acks_reached, proc, ACKS_DEADLINE_S, f"{log.acks_wanted} acks")
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGKILL)
        await proc.wait()
        await reader
    stderr = (await errors).decode(errors="replace")
    killed = proc.returncode == -signal.SIGKILL
    assert killed or (proc.returncode == 0 and log.done), (
        f"round {round_no}: the child failed (exit {proc.returncode}):\n{stderr}"
    )
    return log, stderr


async def _wait_for_either(
    event: asyncio.Event, proc: asyncio.subprocess.Process, deadline_s: float, what: str
) -> None:
    """Wait for `event`; fail if the child exits first or `deadline_s` passes."""
    waiter = asyncio.create_task(event.wait())
    exited = asyncio.create_task(proc.wait())
    done, _ = await asyncio.wait({waiter, exited}, timeout=deadline_s, return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    exited.cancel()
    if waiter in done:
        return
    if exited in done:
        return  # it finished its budget or died; the caller inspects the exit code
    raise AssertionError(f"waited {deadline_s} s for {what}; the child is still running")


@pytest.mark.slow
async def test_acknowledged_fsync_commits_survive_sigkill(tmp_path: Path) -> None:
    seed = int(os.environ.get("TITRA_CRASH_SEED", random.SystemRandom().randrange(2**32)))
    print(f"crash test seed: {seed} (replay the kill schedule with TITRA_CRASH_SEED={seed})")
    rng = random.Random(seed)
    data_dir = tmp_path / "node"
    model: dict[str, tuple[str, int]] = {}
    kills = checkpoints = 0
    recoveries_from_checkpoint = 0
    segments_seen: set[str] = set()
    most_segments_at_open = 0
    for round_no in range(ROUNDS):
        log, _ = await run_child_until_killed(data_dir, seed, round_no, rng)
        kills += not log.done
        checkpoints += log.checkpoints
        store = await WalStore.open(str(data_dir))
        try:
            report = store.stats.recovery
            assert report.repair is None, f"round {round_no}: recovery had to repair: {report.repair}"
            state = await snapshot(store)
        finally:
            await store.close()
        model = check_round(round_no, model, log, state)
        if report.checkpoint_lsn > 0 and report.records_replayed > 0:
            recoveries_from_checkpoint += 1
        most_segments_at_open = max(most_segments_at_open, len(report.segments))
        segments_seen.update(os.listdir(join(str(data_dir), WAL_DIR)))
    print(
        f"{kills} kills, {checkpoints} checkpoints, {recoveries_from_checkpoint} reopens from a checkpoint, "
        f"{len(segments_seen)} segments, {len(model)} keys"
    )
    assert kills >= 20, f"only {kills} of {ROUNDS} rounds ended in a kill (seed {seed})"
    # The kills must have landed across the interesting boundaries, or the test proved little.
    assert checkpoints >= 3, f"only {checkpoints} checkpoints were taken (seed {seed})"
    assert recoveries_from_checkpoint >= 3, f"only {recoveries_from_checkpoint} reopens used a checkpoint"
    assert most_segments_at_open >= 2, "no reopen found more than one WAL segment"
    assert len(segments_seen) >= 10, f"only {len(segments_seen)} WAL segments were ever created"
    assert len(model) > 100, f"only {len(model)} keys at the end (seed {seed})"
