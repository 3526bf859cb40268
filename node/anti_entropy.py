"""Anti-entropy's driver: feeds the pure core (cluster/anti_entropy.py) and carries out its effects.

- The Merkle index is built once at start-up by scanning the store (the only full scan), then
  kept current by `Replica`'s save hook on every write, merge and purge. The hook only records
  the stored bytes and the tombstone time; the core hashes them when its trees are next read.
- A ticker takes `now` from the event loop and wall time from `replica.wall()`, so the
  deterministic simulator can run it on virtual time.
- `Push` reads the stored clocks and sends each as a ReplicaMerge without acknowledgement; the
  bytes are charged to the core's rate limit. `Purge` calls `Replica.purge` (digest-guarded).

Settings come from cluster/limits.py; a node overrides any of them with environment variables
(`repair_settings_from_env`): TITRA_AE_<FIELD> and TITRA_HINT_<FIELD> (e.g. TITRA_AE_INTERVAL_MS,
TITRA_AE_TOMBSTONE_GRACE_MS, TITRA_HINT_TTL_MS), TITRA_AE_ENABLED and TITRA_HINTS_ENABLED (0 or 1).
"""

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Mapping
from typing import TypeVar

from cluster import dvv
from cluster.anti_entropy import AeEffect, AntiEntropy, Purge, Push
from cluster.limits import ANTI_ENTROPY_DEFAULTS, HINT_DEFAULTS, AntiEntropyDefaults, HintDefaults
from cluster.merkle import MerkleIndex
from cluster.messages import Message, ReplicaMerge
from cluster.replica import Replica
from cluster.ring import Ring
from cluster.rounds import Send
from cluster.siblings import STORED_CONTENT_TYPE, Sibling, decode_clock, meta_is_deleted
from cluster.store import ScanPage
from cluster.tombstones import RepairSettings
from node.background import Spawner
from node.keyspaces import KeyspaceRegistry

log = logging.getLogger("titra.anti_entropy")

# Bytes a pushed ReplicaMerge costs besides its key and clock (tag, round id, keyspace, durability).
_PUSH_OVERHEAD_BYTES = 32
_SCAN_PAGE = 1_000


D = TypeVar("D", AntiEntropyDefaults, HintDefaults)


def _override(defaults: D, prefix: str, environ: Mapping[str, str]) -> D:
    values = {}
    for field in dataclasses.fields(defaults):
        name = prefix + field.name.upper()
        text = environ.get(name)
        if text is not None:
            if not text.strip().isdigit():
                raise ValueError(f"{name} must be a non-negative integer, not {text!r}")
            values[field.name] = int(text)
    return dataclasses.replace(defaults, **values)


def repair_settings_from_env(environ: Mapping[str, str]) -> RepairSettings:
    """Production defaults, overridden by TITRA_AE_* / TITRA_HINT_* variables; ValueError names
    a bad one."""
    flags = {}
    for name, variable in [("anti_entropy_enabled", "TITRA_AE_ENABLED"), ("hints_enabled", "TITRA_HINTS_ENABLED")]:
        text = environ.get(variable)
        if text is not None:
            if text not in ("0", "1"):
                raise ValueError(f"{variable} must be 0 or 1, not {text!r}")
            flags[name] = text == "1"
    anti_entropy = _override(ANTI_ENTROPY_DEFAULTS, "TITRA_AE_", environ)
    settings = RepairSettings(anti_entropy, _override(HINT_DEFAULTS, "TITRA_HINT_", environ), **flags)
    problems = settings.problems()
    if problems:
        raise ValueError("; ".join(problems))
    return settings


def deleted_ms(clock: dvv.DVVSet[Sibling] | None) -> int | None:
    """The newest tombstone's physical ms when every sibling is a tombstone, else None."""
    # Runs on every save: one pass that stops at the first live sibling (the usual case), rather
    # than sorting the live siblings only to test that there are some.
    newest = None
    for entry in () if clock is None else clock.entries:
        for sibling in entry.values:
            if not sibling.deleted:
                return None
            if newest is None or sibling.timestamp.physical_ms > newest:
                newest = sibling.timestamp.physical_ms
    return newest


class AntiEntropyDriver:
    def __init__(
        self,
        ring: Ring,
        replica: Replica,
        keyspaces: KeyspaceRegistry,
        send: Callable[[str, Message], None],
        reachable: Callable[[str], bool],
        settings: RepairSettings,
    ) -> None:
        self.replica = replica
        self.keyspaces = keyspaces
        self.send = send
        self.reachable = reachable
        self.enabled = settings.anti_entropy_enabled
        self.settings = settings.anti_entropy
        self.core = AntiEntropy(replica.node_id, MerkleIndex(ring, self.settings.merkle_depth), self.settings)
        self.ready = False
        self.build_seconds = 0.0
        self._tasks: set[asyncio.Task[None]] = set()
        self._spawn = Spawner(self._tasks, log, "anti-entropy task")
        self._ticker: asyncio.Task[None] | None = None
        # Registered at once, so no write between construction and the start-up scan is missed;
        # a node with anti-entropy off keeps no index at all.
        if self.enabled:
            replica.save_listeners.append(self._on_save)

    def _on_save(self, skey: bytes, clock: dvv.DVVSet[Sibling] | None, encoded: bytes | None) -> None:
        # Every replicated write runs this: record, do not hash (the core coalesces a key's saves).
        self.core.on_save_encoded(skey, encoded, deleted_ms(clock))

    async def start(self) -> None:
        self._ticker = asyncio.create_task(self._run(), name="titra-anti-entropy")

    async def close(self) -> None:
        tasks = [t for t in [self._ticker, *self._tasks] if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def build(self) -> int:
        """Load every replica key of the store into the index, once; returns how many."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        count = 0
        after: bytes | None = None
        while True:
            page: ScanPage = await self.replica.store.scan(b"", after, _SCAN_PAGE)
            for skey, record in page.items:
                if record.content_type != STORED_CONTENT_TYPE or self.core.knows(skey):
                    continue  # internal records, or a key saved since the scan began (newer)
                clock = decode_clock(record.value) if meta_is_deleted(record.meta) else None
                self.core.on_save_encoded(skey, record.value, deleted_ms(clock))
                count += 1
            if page.cursor is None:
                break
            after = page.cursor
        self.build_seconds = loop.time() - started
        self.ready = True
        return count

    async def _run(self) -> None:
        if not self.enabled:
            return
        await self.build()
        loop = asyncio.get_running_loop()
        refreshed_ms = -1
        while True:
            await asyncio.sleep(self.settings.tick_ms / 1000)
            now_ms = int(loop.time() * 1000)
            if refreshed_ms < 0 or now_ms - refreshed_ms >= self.settings.interval_ms:
                await self._refresh_replication()
                refreshed_ms = now_ms
            self._apply(self.core.on_tick(now_ms, self.replica.wall(), self.reachable))

    async def _refresh_replication(self) -> None:
        nodes = len(self.core.ring.nodes)  # the ring only: no recorded save is applied for it
        definitions = [*await self.keyspaces.all(), self.keyspaces.system]
        self.core.set_replication({d.name: min(d.n, nodes) for d in definitions})

    def on_message(self, sender: str, message: Message) -> None:
        if not self.ready or not self.enabled:
            return  # the peer's exchange times out; it comes back next pass
        loop = asyncio.get_running_loop()
        self._apply(self.core.on_message(sender, message, int(loop.time() * 1000), self.replica.wall()))

    def _apply(self, effects: list[AeEffect]) -> None:
        for effect in effects:
            match effect:
                case Send(to=to, message=message):
                    self.send(to, message)
                case Push():
                    self._spawn(self._push(effect))
                case Purge():
                    self._spawn(self._purge(effect))

    async def _push(self, push: Push) -> None:
        for key in push.keys:
            encoded = await self.replica.read(push.keyspace, key)
            if encoded is None:
                continue  # purged meanwhile
            self.send(push.to, ReplicaMerge(0, push.keyspace, key, encoded, "async"))
            self.core.charge(len(encoded) + len(key) + _PUSH_OVERHEAD_BYTES)

    async def _purge(self, purge: Purge) -> None:
        try:
            if await self.replica.purge(purge.keyspace, purge.key, purge.digest):
                self.core.tombstones.purged += 1
        except Exception:
            self.core.tombstones.release(purge.keyspace.encode() + b"\x00" + purge.key)
            raise


    def status(self) -> dict[str, object]:
        return {"enabled": self.enabled, "ready": self.ready, "build_seconds": round(self.build_seconds, 3),
                **self.core.status()}  # fmt: skip
