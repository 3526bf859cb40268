"""Hinted handoff's driver: keeps hints in this node's store and replays them (cluster/hints.py).

- `keep` stores hints (one per target, keyspace and key; a later write merges into the stored
  one with DVV sync) durably in the internal `_hints` keyspace, through the `Store` protocol.
- A fallback node answers `HintStore` (sloppy quorum) the same way, then acknowledges.
- A ticker (time from the event loop, wall time from `replica.wall()`, so a simulator can run
  it) hands the backlog's effects out: `Replay` reads the stored hint and sends `HintDeliver`;
  the target merges it (as a ReplicaMerge) and acknowledges; `Drop` deletes a delivered or
  expired hint if no later write was merged into it meanwhile.
"""

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from cluster import dvv
from cluster.context import scoped_key
from cluster.hints import (
    HINT_CONTENT_TYPE,
    HINTS_KEYSPACE,
    Drop,
    HintBacklog,
    HintEffect,
    HintKey,
    HintPlan,
    Replay,
    decode_hint,
    encode_hint,
    hint_store_key,
    parse_hint_store_key,
    plan_hints,
)
from cluster.limits import REQUEST_DEFAULTS, STORE_LIMITS
from cluster.messages import HintDeliver, HintDeliverAck, HintStore, HintStoreAck, Message
from cluster.replica import Replica
from cluster.requests import Level
from cluster.ring import Ring
from cluster.siblings import Resolution, decode_clock, encode_clock
from cluster.store import Durability, StoreError
from cluster.tombstones import RepairSettings
from node.background import Spawner
from node.keyspaces import KeyspaceRegistry

log = logging.getLogger("titra.hints")


class HintedHandoff:
    def __init__(
        self,
        replica: Replica,
        keyspaces: KeyspaceRegistry,
        send: Callable[[str, Message], None],
        reachable: Callable[[str], bool],
        settings: RepairSettings,
    ) -> None:
        self.node_id = replica.node_id
        self.replica = replica
        self.store = replica.store
        self.keyspaces = keyspaces
        self.send = send
        self.reachable = reachable
        self.enabled = settings.hints_enabled
        self.settings = settings.hints
        self.backlog = HintBacklog(settings.hints)
        self._locks: dict[HintKey, tuple[asyncio.Lock, int]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._spawn = Spawner(self._tasks, log, "hinted handoff task")
        self._ticker: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Load the backlog from the store (oldest first), then replay in the background."""
        base = scoped_key(HINTS_KEYSPACE, b"")
        found: list[tuple[int, HintKey, int]] = []
        after: bytes | None = None
        while True:
            page = await self.store.scan(base, after, STORE_LIMITS.scan_page_max)
            for skey, record in page.items:
                created_ms, _ = decode_hint(record.value)
                found.append((created_ms, parse_hint_store_key(skey), len(skey) + len(record.value)))
            if page.cursor is None:
                break
            after = page.cursor
        for created_ms, hint, size in sorted(found, key=lambda item: item[0]):
            self.backlog.admit(hint, size, created_ms)
        self.backlog.stored = 0
        self._ticker = asyncio.create_task(self._tick_loop(), name="titra-hints")

    async def close(self) -> None:
        tasks = [t for t in [self._ticker, *self._tasks] if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def has_room(self) -> bool:
        return self.enabled and self.backlog.has_room()

    def plan(
        self, level: Level, w: int, sloppy: bool, ring: Ring, skey: bytes, preference: list[str], reachable: list[str]
    ) -> HintPlan:
        """Who keeps hints for the replicas of `skey` that are not reachable (cluster/hints.py)."""
        beyond: list[str] = []
        if sloppy:
            walk = ring.preference_list(skey, len(ring.nodes))[len(preference) :]
            beyond = [node for node in walk if node != self.node_id and self.reachable(node)]
        return plan_hints(level, w, sloppy, preference, reachable, beyond, self.has_room())

    @asynccontextmanager
    async def _locked(self, hint: HintKey) -> AsyncIterator[None]:
        """One writer per hint: a merge and a drop of the same hint never interleave."""
        lock, users = self._locks.get(hint, (asyncio.Lock(), 0))
        self._locks[hint] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[hint]
            if users == 1:
                del self._locks[hint]
            else:
                self._locks[hint] = (lock, users - 1)

    async def keep(
        self, targets: tuple[str, ...], keyspace: str, key: bytes, clock: bytes, durability: str
    ) -> list[str]:
        """Store hints of `clock` for `targets`; returns the targets whose hint is stored
        (the others were refused: the backlog is full)."""
        if not self.enabled:
            return []
        kept = []
        for target in targets:
            hint = HintKey(target, keyspace, key)
            skey = hint_store_key(hint)
            async with self._locked(hint):
                wall = self.replica.wall()
                try:
                    record = await self.store.get(skey)
                    created_ms, merged = wall, clock
                    if record is not None:
                        created_ms, stored = decode_hint(record.value)
                        merged = encode_clock(dvv.sync(decode_clock(stored), decode_clock(clock)))
                    value = encode_hint(created_ms, merged)
                    if not self.backlog.admit(hint, len(skey) + len(value), created_ms):
                        continue
                    await self.store.put(skey, value, HINT_CONTENT_TYPE, b"", Durability(durability))
                except StoreError:
                    # Not kept (a replay finding no record forgets it): anti-entropy repairs the target.
                    log.exception("storing a hint for %s failed", target)
                    continue
                kept.append(target)
        return kept

    # --- messages ------------------------------------------------------------------------------

    def on_message(self, sender: str, message: Message) -> None:
        match message:
            case HintStore() | HintDeliver():
                self._spawn(self._serve(sender, message))
            case HintDeliverAck(delivery_id=delivery_id, ok=ok, error=error):
                if not ok:
                    log.info("hint delivery %d to %s refused: %s", delivery_id, sender, error)
                self._apply(self.backlog.on_ack(delivery_id, ok))

    async def _serve(self, sender: str, message: Message) -> None:
        reply: Message
        match message:
            case HintStore(round_id=rid, target=target, keyspace=keyspace, key=key, clock=clock, durability=durability):
                try:
                    kept = await self.keep((target,), keyspace, key, clock, durability)
                    reply = HintStoreAck(rid, bool(kept), "" if kept else "the hint backlog is full")
                except Exception as exc:  # the store failed: the coordinator counts a refusal
                    log.exception("storing a hint failed")
                    reply = HintStoreAck(rid, False, f"{type(exc).__name__}: {exc}")
                if rid == 0:
                    return
            case HintDeliver(delivery_id=did, keyspace=keyspace, key=key, clock=clock):
                try:
                    definition = await self.keyspaces.lookup(keyspace, REQUEST_DEFAULTS.request_timeout_ms_default)
                    if definition is None:
                        raise LookupError(f"keyspace {keyspace!r} is unknown here")
                    await self.replica.merge(keyspace, Resolution(definition.resolution), key, clock, "async")
                    reply = HintDeliverAck(did, True)
                except Exception as exc:
                    log.exception("merging a delivered hint failed")
                    reply = HintDeliverAck(did, False, f"{type(exc).__name__}: {exc}")
            case _:
                return
        self.send(sender, reply)

    # --- replay --------------------------------------------------------------------------------

    async def _tick_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.settings.tick_ms / 1000)
            now_ms = int(loop.time() * 1000)
            self._apply(self.backlog.on_tick(now_ms, self.replica.wall(), self.reachable))

    def _apply(self, effects: list[HintEffect]) -> None:
        for effect in effects:
            self._spawn(self._carry_out(effect))

    async def _carry_out(self, effect: HintEffect) -> None:
        match effect:
            case Replay(delivery_id=did, hint=hint):
                # Under the hint's lock: `keep` admits a hint to the backlog before its record is
                # on disk, and a replay that read "no record" in between must not forget it.
                async with self._locked(hint):
                    record = await self.store.get(hint_store_key(hint))
                    if record is None:
                        self.backlog.remove(hint)
                        return
                _, clock = decode_hint(record.value)
                self.send(hint.target, HintDeliver(did, hint.keyspace, hint.key, clock))
            case Drop(hint=hint, version=version):
                async with self._locked(hint):
                    meta = self.backlog.get(hint)
                    if meta is None or meta.version != version:
                        self.backlog.release(hint)
                        return
                    try:
                        await self.store.delete(hint_store_key(hint), Durability.ASYNC)
                    except Exception:
                        self.backlog.release(hint)  # kept: replayed (or expired) again later
                        raise
                    self.backlog.remove(hint)


    def status(self) -> dict[str, object]:
        return {"enabled": self.enabled, **self.backlog.stats()}
