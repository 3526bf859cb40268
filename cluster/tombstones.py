"""When a tombstone may be purged: the rule, and the bookkeeping that feeds it.

A delete is a tombstone sibling (cluster/siblings.py); it must outlive every copy of what it
deleted, or anti-entropy or a returning replica brings the value back (Cassandra's zombie rows,
the reason for its gc_grace_seconds). The rule here is stricter than a timer alone:

- every other replica of the key is known to hold the same stored clock (same digest), learnt by
  anti-entropy: a whole range whose Merkle roots match, or the key compared in a differing leaf;
  a replica that does not have the key at all once the grace period has passed counts as holding
  it (it purged it already, or never had anything to resurrect), so replicas that purge at
  different times do not push the tombstone back and forth;
- and the grace period has passed since the tombstone was written (its hybrid-clock physical ms
  against this replica's wall clock);
- the purge itself is guarded by the digest (`Replica.purge`): a write that lands meanwhile
  changes the digest and the purge does nothing, so no concurrent write is lost.

Hints expire before the grace period ends (asserted in cluster/limits.py), so no hint can deliver
an old value after its tombstone is gone. Pure; the anti-entropy core drives it.
"""

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field

from cluster.frozen import frozen
from cluster.limits import ANTI_ENTROPY_DEFAULTS, HINT_DEFAULTS, AntiEntropyDefaults, HintDefaults


@frozen
class RepairSettings:
    """One node's anti-entropy and hinted-handoff settings (production defaults: cluster/limits.py)."""

    anti_entropy: AntiEntropyDefaults = ANTI_ENTROPY_DEFAULTS
    hints: HintDefaults = HINT_DEFAULTS
    anti_entropy_enabled: bool = True
    hints_enabled: bool = True

    def problems(self) -> list[str]:
        ae, hints = self.anti_entropy, self.hints
        found = []
        if hints.ttl_ms >= ae.tombstone_grace_ms:
            found.append("the hint TTL must be below the tombstone grace period (an old hint would resurrect data)")
        if not 1 <= ae.merkle_depth <= ae.merkle_depth_max:
            found.append(f"merkle_depth must be in 1..{ae.merkle_depth_max}")
        if not 1 <= ae.levels_per_exchange <= ae.merkle_depth:
            found.append("levels_per_exchange must be in 1..merkle_depth")
        for name, value in [("rate_bytes_per_s", ae.rate_bytes_per_s), ("tick_ms", ae.tick_ms),
                            ("replay_rate_bytes_per_s", hints.replay_rate_bytes_per_s), ("hint tick_ms", hints.tick_ms),
                            ("interval_ms", ae.interval_ms + 1), ("keys_per_message_max", ae.keys_per_message_max)]:
            if value <= 0:
                found.append(f"{name} must be positive")  # fmt: skip
        return found


def may_purge(
    digest: bytes,
    deleted_ms: int,
    wall_ms: int,
    grace_ms: int,
    others: Collection[str],
    confirmed: Mapping[str, bytes],
) -> bool:
    """The purge rule: grace passed, and every other replica reported this very digest."""
    return wall_ms - deleted_ms >= grace_ms and all(confirmed.get(peer) == digest for peer in others)


@dataclass
class Candidate:
    """A key whose stored siblings are all tombstones."""

    digest: bytes
    deleted_ms: int  # the newest tombstone's physical ms
    where: tuple[str, int]  # (keyspace, range index)
    confirmed: dict[str, bytes] = field(default_factory=dict)  # peer -> digest it holds
    purging: bool = False


class TombstoneTracker:
    def __init__(self, grace_ms: int) -> None:
        self.grace_ms = grace_ms
        self.candidates: dict[bytes, Candidate] = {}
        self._by_range: dict[tuple[str, int], set[bytes]] = {}
        self.purged = 0

    def observe(self, skey: bytes, digest: bytes | None, deleted_ms: int | None, where: tuple[str, int]) -> None:
        """The replica stored `skey` (digest None: removed it). `deleted_ms` is None unless every
        sibling is a tombstone. A new digest forgets what peers were known to hold."""
        old = self.candidates.pop(skey, None)
        if old is not None:
            keys = self._by_range[old.where]
            keys.discard(skey)
            if not keys:
                del self._by_range[old.where]
        if digest is None or deleted_ms is None:
            return
        self.candidates[skey] = Candidate(digest, deleted_ms, where)
        self._by_range.setdefault(where, set()).add(skey)

    def expired(self, skey: bytes, wall_ms: int) -> bool:
        """A tombstone past its grace period (pushed to nobody who lacks the key)."""
        candidate = self.candidates.get(skey)
        return candidate is not None and wall_ms - candidate.deleted_ms >= self.grace_ms

    def confirm(self, peer: str, skey: bytes, digest: bytes) -> None:
        candidate = self.candidates.get(skey)
        if candidate is not None and candidate.digest == digest:
            candidate.confirmed[peer] = digest

    def confirm_range(self, peer: str, where: tuple[str, int]) -> None:
        """The peer's tree for this range equals ours: it holds every key as we do."""
        for skey in self._by_range.get(where, ()):
            candidate = self.candidates[skey]
            candidate.confirmed[peer] = candidate.digest

    def due(
        self, wall_ms: int, others_of: Callable[[tuple[str, int]], list[str] | None], limit: int
    ) -> list[tuple[bytes, bytes]]:
        """Up to `limit` (skey, digest) pairs the rule allows purging now; each is handed out
        once (until the key is stored again). `others_of((keyspace, range))`: the other replicas."""
        found: list[tuple[bytes, bytes]] = []
        for skey, candidate in self.candidates.items():
            if len(found) >= limit:
                break
            if candidate.purging:
                continue
            others = others_of(candidate.where)
            if others is None:
                continue
            if may_purge(candidate.digest, candidate.deleted_ms, wall_ms, self.grace_ms, others, candidate.confirmed):
                candidate.purging = True
                found.append((skey, candidate.digest))
        return found

    def release(self, skey: bytes) -> None:
        """A purge handed out by `due` did not happen (the store failed): it may be retried."""
        candidate = self.candidates.get(skey)
        if candidate is not None:
            candidate.purging = False

    def __len__(self) -> int:
        return len(self.candidates)
