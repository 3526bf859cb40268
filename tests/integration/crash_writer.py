"""Child process of test_crash_sigkill: write to a WalStore with `fsync` durability until killed.

Run by path: `python crash_writer.py DATA_DIR SEED ROUND`. Prints one JSON object per line on
stdout, flushed at once, so that whatever the parent reads was printed before the SIGKILL:

    {"ev": "ready", "last_lsn": N, "keys": K}          the store is open
    {"ev": "begin", "op": I, "writes": [[key, value|null], ...]}   before a commit is attempted
    {"ev": "ack", "op": I, "lsn": L}                   after that commit was acknowledged
    {"ev": "checkpoint", "lsn": L}                     after an explicit checkpoint
    {"ev": "done"}                                     the write budget ran out (no kill came)

Each writer task owns the keys whose third field is its index, so a key is only ever written by
one task, one commit at a time: at a kill, at most one commit per key is in doubt.
"""

import asyncio
import json
import random
import sys

from cluster.store import Durability
from node.storage import StoreConfig, WalStore

WRITERS = 8
# Small enough that a round of a few hundred commits rotates segments and takes checkpoints.
CONFIG = StoreConfig(
    wal_segment_bytes=2_048,
    checkpoint_wal_bytes=8_192,
    checkpoint_interval_s=3_600,
)
CHECKPOINT_EVERY_ACKS = 60
ACKS_MAX = 20_000  # a budget, so a child the parent forgot never runs for ever


def emit(event: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(event, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def owner(key: str) -> int:
    return int(key.split("-")[2])


async def all_keys(store: WalStore) -> list[str]:
    keys: list[str] = []
    after: bytes | None = None
    while True:
        page = await store.scan(after=after, limit=1_000)
        keys.extend(k.decode() for k, _ in page.items)
        if page.cursor is None:
            return keys
        after = page.cursor


class Writer:
    def __init__(self, store: WalStore, index: int, round_no: int, rng: random.Random, owned: set[str]) -> None:
        self.store = store
        self.index = index
        self.round_no = round_no
        self.rng = rng
        self.owned = owned
        self.created = 0
        self.writes = 0

    def new_key(self) -> str:
        self.created += 1
        return f"k-{self.round_no:03d}-{self.index}-{self.created:05d}"

    def value(self) -> str:
        self.writes += 1
        # Padding makes segments fill (and rotate) within a few dozen commits.
        return f"v-{self.round_no}-{self.index}-{self.writes}-" + "x" * self.rng.randint(8, 64)

    def choose_writes(self) -> list[tuple[str, str | None]]:
        roll = self.rng.random()
        old = sorted(self.owned)
        if roll < 0.15 and old:
            return [(self.rng.choice(old), None)]
        if roll < 0.40 and old:
            return [(self.rng.choice(old), self.value())]
        if roll < 0.55:
            # One commit, several keys: after a kill, all of them or none.
            picks = {self.new_key() for _ in range(self.rng.randint(2, 3))}
            if old:
                picks.add(self.rng.choice(old))
            return [(k, self.value()) for k in sorted(picks)]
        return [(self.new_key(), self.value())]

    async def commit(self, op_id: int, writes: list[tuple[str, str | None]]) -> int:
        tx = self.store.begin(durability=Durability.FSYNC)
        for key, value in writes:
            if value is None:
                existed = await tx.delete(key.encode())
                assert existed, f"writer {self.index} deleted {key}, which it believed existed"
            else:
                await tx.put(key.encode(), value.encode())
        lsn = await tx.commit()
        assert lsn is not None
        for key, value in writes:
            if value is None:
                self.owned.discard(key)
            else:
                self.owned.add(key)
        return lsn


async def run(data_dir: str, seed: int, round_no: int) -> None:
    store = await WalStore.open(data_dir, CONFIG)
    keys = await all_keys(store)
    emit({"ev": "ready", "last_lsn": store.memtable.last_lsn, "keys": len(keys)})
    acks = 0
    next_op = 0
    checkpoint_due = asyncio.Event()

    async def write_loop(writer: Writer) -> None:
        nonlocal acks, next_op
        while acks < ACKS_MAX:
            writes = writer.choose_writes()
            op_id, next_op = next_op, next_op + 1
            emit({"ev": "begin", "op": op_id, "writes": writes})
            lsn = await writer.commit(op_id, writes)
            emit({"ev": "ack", "op": op_id, "lsn": lsn})
            acks += 1
            if acks % CHECKPOINT_EVERY_ACKS == 0:
                checkpoint_due.set()

    async def checkpoint_loop() -> None:
        while True:
            await checkpoint_due.wait()
            checkpoint_due.clear()
            emit({"ev": "checkpoint", "lsn": await store.checkpoint()})

    writers = [
        Writer(store, i, round_no, random.Random(f"{seed}-{round_no}-{i}"), {k for k in keys if owner(k) == i})
        for i in range(WRITERS)
    ]
    checkpointer = asyncio.create_task(checkpoint_loop())
    await asyncio.gather(*(write_loop(w) for w in writers))
    checkpointer.cancel()
    await store.close()
    emit({"ev": "done"})


if __name__ == "__main__":
    asyncio.run(run(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
