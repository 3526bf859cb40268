"""Hinted handoff (Dynamo §4.6): writes for a replica that is down are kept as hints elsewhere
and replayed to it when it is back.

Pure. Three pieces:
- `plan_hints`: before a write, who keeps a hint for each replica that is not reachable, and
  whether hints count toward W. `one` may succeed on a hint kept by a coordinator that is no
  replica (it stands in for them); `quorum`/`all` count only real replicas unless the request
  says `sloppy=true`, in which case the next reachable nodes on the ring after the preference
  list (fallbacks) keep the hints and count (Dynamo's sloppy quorum). Otherwise the coordinator
  keeps the hints and they do not count.
- `HintedWriteRound`: a `WriteRound` that also counts hint acknowledgements.
- `HintBacklog`: the hints this node holds (bounded in count and bytes; past the bounds new hints
  are refused and counted), their replay (rate-limited, oldest first, per reachable target) and
  expiry (older than the hint TTL: dropped, anti-entropy repairs what they carried; the TTL is
  below the tombstone grace period so an expired hint can never resurrect a purged key).

A hint is stored in the holder's own store, keyspace `_hints`, one per (target, keyspace, key):
later writes of the key merge into it (DVV sync), so a long outage costs one hint per key.
"""

from collections.abc import Callable
from dataclasses import dataclass, field

import msgpack

from cluster.context import scoped_key
from cluster.dvv import DVVSet
from cluster.frozen import frozen
from cluster.limits import HINT_DEFAULTS, HintDefaults
from cluster.messages import HintStore, ReplicaMerge
from cluster.requests import Level
from cluster.rounds import Effect, Send, WriteRound
from cluster.siblings import Sibling, encode_clock

HINTS_KEYSPACE = "_hints"
HINT_CONTENT_TYPE = "application/vnd.titra.hint+msgpack"


@frozen(order=True)
class HintKey:
    target: str
    keyspace: str
    key: bytes

    def label(self, holder: str) -> str:
        return f"{self.target}@{holder}"


def hint_store_key(hint: HintKey) -> bytes:
    # Node ids and keyspace names hold no NUL; the key, which may, comes last.
    return scoped_key(HINTS_KEYSPACE, hint.target.encode() + b"\x00" + hint.keyspace.encode() + b"\x00" + hint.key)


def parse_hint_store_key(skey: bytes) -> HintKey:
    base = scoped_key(HINTS_KEYSPACE, b"")
    assert skey.startswith(base), "not a hint key"
    target, _, rest = skey[len(base) :].partition(b"\x00")
    keyspace, _, key = rest.partition(b"\x00")
    return HintKey(target.decode(), keyspace.decode(), key)


def encode_hint(created_ms: int, clock: bytes) -> bytes:
    return bytes(msgpack.packb([created_ms, clock], use_bin_type=True))


def decode_hint(value: bytes) -> tuple[int, bytes]:
    created_ms, clock = msgpack.unpackb(value, raw=False)
    assert isinstance(created_ms, int) and isinstance(clock, bytes), "a stored hint is [created_ms, clock]"
    return created_ms, clock


# --- Planning a write --------------------------------------------------------------------------


@frozen
class HintPlan:
    local: tuple[str, ...] = ()  # targets whose hint the coordinator keeps
    fallbacks: tuple[tuple[str, str], ...] = ()  # (target, holder): hints sent to fallback nodes
    counted: bool = False  # hints count toward W
    stand_in: bool = False  # no replica was reachable: the coordinator holds the write for them

    def copies(self, reachable: int) -> int:
        """Replicas reachable, plus the distinct hint holders that count."""
        if not self.counted:
            return reachable
        return reachable + len({holder for _, holder in self.fallbacks}) + (1 if self.stand_in and self.local else 0)


def plan_hints(
    level: Level, w: int, sloppy: bool, preference: list[str], reachable: list[str], beyond: list[str], room: bool
) -> HintPlan:
    """`beyond`: the reachable nodes after the preference list on the ring, in ring order,
    without the coordinator; `room`: the coordinator's backlog can take hints."""
    missing = [node for node in preference if node not in reachable]
    stand_in = not reachable and room
    if sloppy and level in (Level.QUORUM, Level.ALL):
        holders = iter(beyond)
        local: list[str] = []
        fallbacks: list[tuple[str, str]] = []
        for target in missing:
            holder = None if stand_in and not local else next(holders, None)
            if holder is None:
                local.append(target)
            else:
                fallbacks.append((target, holder))
        return HintPlan(tuple(local), tuple(fallbacks), True, stand_in)
    if level is Level.ONE and w == 1 and stand_in:
        return HintPlan(tuple(missing), (), True, True)
    return HintPlan(tuple(missing))


@dataclass
class HintedWriteRound(WriteRound):
    """A write round for a key some of whose replicas were not reachable when it started."""

    plan: HintPlan = HintPlan()
    hinted: list[str] = field(default_factory=list)  # "target@holder" of hints known stored
    hint_failures: dict[str, str] = field(default_factory=dict)

    def start(self, clock: DVVSet[Sibling], encoded: bytes = b"", stored_local: tuple[str, ...] = ()) -> list[Effect]:
        """The coordinator stored the write (and the local hints in `stored_local`); `encoded` is
        the clock's encoding when the caller has it."""
        assert not self.acks and not self.hinted, "a write round starts once"
        clock_encoded = encoded or encode_clock(clock)
        if self.coordinator in self.replicas:
            self.acks.append(self.coordinator)
        self.hinted += [f"{target}@{self.coordinator}" for target in stored_local]
        done = self._finish_if_met()
        round_id = self.round_id  # acknowledgements asked for even once answered (WriteRound.start)
        self.clock_encoded = clock_encoded
        effects: list[Effect] = [
            Send(node, ReplicaMerge(round_id, self.keyspace, self.key, clock_encoded, self.durability))
            for node in self.replicas
            if node != self.coordinator
        ]
        for target, holder in self.plan.fallbacks:
            message = HintStore(round_id, target, self.keyspace, self.key, clock_encoded, self.durability)
            effects.append(Send(holder, message))
        return effects + done

    def counted(self) -> int:
        if not self.plan.counted:
            return len(self.acks)
        holders = {label.split("@", 1)[1] for label in self.hinted}
        return len(self.acks) + len(holders - set(self.acks))

    def on_ack(self, replica: str, ok: bool, error: str = "") -> list[Effect]:
        if self.finished:
            return self._late_ack(replica, ok)
        if replica in self.acks or replica in self.failures or replica not in self.replicas:
            return []
        if ok:
            self.acks.append(replica)
            return self._finish_if_met()
        self.failures[replica] = error
        return self._finish_if_impossible()

    def on_hint_ack(self, holder: str, ok: bool, error: str = "") -> list[Effect]:
        targets = [target for target, fallback in self.plan.fallbacks if fallback == holder]
        if self.finished or not targets or holder in self.hint_failures:
            return []
        label = f"{targets[0]}@{holder}"
        if label in self.hinted:
            return []
        if ok:
            self.hinted.append(label)
            return self._finish_if_met()
        self.hint_failures[holder] = error
        return self._finish_if_impossible()

    def _finish_if_met(self) -> list[Effect]:
        return self._finish("ok", "") if self.counted() >= self.required else []

    def _finish_if_impossible(self) -> list[Effect]:
        possible = len(self.replicas) - len(self.failures)
        if self.plan.counted:
            possible += len(self.plan.fallbacks) - len(self.hint_failures) + (1 if self.plan.stand_in else 0)
        if possible >= self.required:
            return []
        errors = sorted(set(self.failures.values()) | set(self.hint_failures.values()))
        return self._finish(
            "timeout",
            f"only {self.counted()} of the {self.required} copies required acknowledged; "
            f"{len(self.failures) + len(self.hint_failures)} refused ({'; '.join(errors)}); "
            "the write is stored on the coordinator and may still become visible",
        )


# --- The backlog of hints this node holds -------------------------------------------------------


@dataclass
class HintMeta:
    size_bytes: int
    created_ms: int  # wall ms of the oldest write merged into the hint
    version: int = 0  # bumped when a later write is merged in
    delivery_id: int = 0  # the delivery in flight, 0 when none
    sent_ms: int = 0


@frozen
class Replay:
    """Read the stored hint and send it to its target as HintDeliver(delivery_id, ...)."""

    delivery_id: int
    hint: HintKey


@frozen
class Drop:
    """Delete the stored hint if it is still at `version` (delivered, or expired)."""

    hint: HintKey
    version: int
    reason: str


HintEffect = Replay | Drop


class HintBacklog:
    def __init__(self, settings: HintDefaults = HINT_DEFAULTS) -> None:
        self.settings = settings
        # Per target, oldest first: expiry and replay look only at the front.
        self._by_target: dict[str, dict[HintKey, HintMeta]] = {}
        self._deliveries: dict[int, tuple[HintKey, int]] = {}
        self._next_delivery = 1
        self._tokens = float(settings.replay_rate_bytes_per_s)
        self._last_tick_ms: int | None = None
        self.count = 0
        self.bytes = 0
        self.stored = 0
        self.refused = 0
        self.delivered = 0
        self.expired = 0
        self.replayed = 0

    def get(self, hint: HintKey) -> HintMeta | None:
        return self._by_target.get(hint.target, {}).get(hint)

    def has_room(self, size_bytes: int = 0) -> bool:
        limits = self.settings
        return self.count < limits.backlog_count_max and self.bytes + size_bytes <= limits.backlog_bytes_max

    def admit(self, hint: HintKey, size_bytes: int, created_ms: int) -> bool:
        """Account a hint about to be stored (or merged into the one stored); False: refused."""
        meta = self.get(hint)
        if meta is None:
            if not self.has_room(size_bytes):
                self.refused += 1
                return False
            self._by_target.setdefault(hint.target, {})[hint] = HintMeta(size_bytes, created_ms)
            self.count += 1
            self.bytes += size_bytes
        else:
            if self.bytes - meta.size_bytes + size_bytes > self.settings.backlog_bytes_max:
                self.refused += 1
                return False
            self.bytes += size_bytes - meta.size_bytes
            meta.size_bytes = size_bytes
            meta.version += 1
            meta.created_ms = min(meta.created_ms, created_ms)
        self.stored += 1
        return True

    def remove(self, hint: HintKey) -> None:
        hints = self._by_target.get(hint.target, {})
        meta = hints.pop(hint, None)
        if meta is None:
            return
        self.count -= 1
        self.bytes -= meta.size_bytes
        self._deliveries.pop(meta.delivery_id, None)
        if not hints:
            del self._by_target[hint.target]

    def release(self, hint: HintKey) -> None:
        """A Drop found a later write merged into the hint: keep it, to be replayed."""
        meta = self.get(hint)
        if meta is not None and meta.delivery_id == -1:
            meta.delivery_id = 0

    def on_tick(self, now_ms: int, wall_ms: int, reachable: Callable[[str], bool]) -> list[HintEffect]:
        limits = self.settings
        if self._last_tick_ms is not None:
            refill = (now_ms - self._last_tick_ms) * limits.replay_rate_bytes_per_s / 1000
            self._tokens = min(float(limits.replay_rate_bytes_per_s), self._tokens + refill)
        self._last_tick_ms = now_ms
        effects: list[HintEffect] = []
        for target, hints in self._by_target.items():
            live = reachable(target)
            for hint, meta in hints.items():
                if wall_ms - meta.created_ms >= limits.ttl_ms:
                    if meta.delivery_id != -1:
                        effects.append(Drop(hint, meta.version, "expired"))
                        self._deliveries.pop(meta.delivery_id, None)
                        meta.delivery_id = -1  # being dropped: never replayed again
                        self.expired += 1
                    continue
                if meta.delivery_id > 0 and now_ms - meta.sent_ms >= limits.replay_ack_timeout_ms:
                    self._deliveries.pop(meta.delivery_id, None)
                    meta.delivery_id = 0
                if not live:
                    break  # the oldest are expired first; a target that is down replays nothing
                if meta.delivery_id != 0:
                    continue
                if len(self._deliveries) >= limits.replay_in_flight_max or self._tokens < 0:
                    break
                meta.delivery_id, meta.sent_ms = self._next_delivery, now_ms
                self._deliveries[self._next_delivery] = (hint, meta.version)
                effects.append(Replay(self._next_delivery, hint))
                self._next_delivery += 1
                self._tokens -= meta.size_bytes
                self.replayed += 1
        return effects

    def on_ack(self, delivery_id: int, ok: bool) -> list[HintEffect]:
        """The target answered a delivery: drop the hint unless a later write was merged into it."""
        sent = self._deliveries.pop(delivery_id, None)
        if sent is None:
            return []
        hint, version = sent
        meta = self.get(hint)
        if meta is None or meta.delivery_id != delivery_id:
            return []
        meta.delivery_id = 0
        if not ok or meta.version != version:
            return []
        meta.delivery_id = -1
        self.delivered += 1
        return [Drop(hint, version, "delivered")]

    def stats(self) -> dict[str, int]:
        return {
            "backlog": self.count,
            "backlog_bytes": self.bytes,
            "stored": self.stored,
            "refused": self.refused,
            "replayed": self.replayed,
            "delivered": self.delivered,
            "expired": self.expired,
            "in_flight": len(self._deliveries),
        }
