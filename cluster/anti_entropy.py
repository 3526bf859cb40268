"""Anti-entropy: replicas compare Merkle trees in the background and exchange what differs.

Dynamo §4.7 and Cassandra's repair. Pure, in the etcd/raft style: `on_tick(now_ms, wall_ms,
reachable)` and `on_message(sender, message, now_ms, wall_ms)` return effects for the driver
(node/anti_entropy.py): `Send` a message, `Push` stored clocks to a peer (as ReplicaMerge with no
acknowledgement: the peer merges them with DVV sync, so a push is idempotent), `Purge` a
tombstone. Rules:
- One exchange at a time per node, initiated every `interval_ms`: one peer, one keyspace, the
  ranges both replicate (`Ring.ranges_of`, with the keyspace's N). A pass visits every
  (keyspace, peer) pair once; an unreachable peer is skipped, and an exchange whose peer stays
  silent for `session_timeout_ms` is abandoned.
- An exchange sends the roots; for each range whose roots differ it descends
  `levels_per_exchange` levels per round trip, only below differing nodes; at the leaves it
  sends the (key, clock digest) pairs of the differing leaves and both sides push the keys the
  other lacks or holds differently, so one exchange repairs both directions.
- The receiving side keeps no state: every request is answered from its own index.
- Sent and received bytes (pushed clocks included, which the driver charges) pass through a
  token bucket of `rate_bytes_per_s`: when it is empty the exchange waits.
- Tombstones (cluster/tombstones.py): equal roots confirm every tombstone of the range, equal
  digests confirm single keys; an expired tombstone is not pushed to a peer without the key.
- Saves are applied lazily: a save only records the key's latest stored bytes (or digest) and
  tombstone time in `_pending`; the trees and the tombstone state learn them when something reads
  either (`index` and `tombstones` apply the backlog first) or when `pending_saves_max` keys wait.
  Every reader sees what applying each save at once would have left.
"""

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from cluster.context import scoped_key
from cluster.frozen import frozen
from cluster.limits import ANTI_ENTROPY_DEFAULTS, AntiEntropyDefaults
from cluster.merkle import MerkleIndex, clock_digest, descendants, diff_entries, keyspace_of
from cluster.messages import AeHashes, AeHashesReply, AeKeys, AeKeysReply, AeRoots, AeRootsReply, Message
from cluster.ring import Ring
from cluster.rounds import Send
from cluster.tombstones import TombstoneTracker


@frozen
class Push:
    """Read these keys' stored clocks and send each to `to` as ReplicaMerge(0, ...)."""

    to: str
    keyspace: str
    keys: tuple[bytes, ...]


@frozen
class Purge:
    """Delete the key if its stored clock still has this digest (Replica.purge)."""

    keyspace: str
    key: bytes
    digest: bytes


AeEffect = Send | Push | Purge


@dataclass
class _Session:
    session_id: int
    peer: str
    keyspace: str
    ranges: tuple[int, ...]
    deadline_ms: int
    waiting: bool = False
    queue: list[tuple[int, bool]] = field(default_factory=list)  # differing ranges to do; True: keys at once
    current: int | None = None
    level: int = 0  # the level of `positions`
    positions: list[int] = field(default_factory=list)  # differing nodes at `level`
    batches: list[list[int]] | None = None  # key phase: leaves still to send, per message
    sent: dict[bytes, bytes] = field(default_factory=dict)  # key phase: our entries in flight
    asked: frozenset[int] = frozenset()  # hash phase: the positions the request in flight named


@dataclass
class AeStats:
    sessions: int = 0
    sessions_failed: int = 0
    ranges_compared: int = 0
    ranges_differing: int = 0
    keys_compared: int = 0
    keys_repaired: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    full_passes: int = 0
    last_full_pass_wall_ms: int = 0
    last_pass_duration_ms: int = 0
    purges_issued: int = 0


def _size(message: Message) -> int:
    """Roughly the message's bytes on the wire (msgpack), for the rate limit and the stats."""
    match message:
        case AeRoots(roots=roots):
            return 24 + 18 * len(roots)
        case AeRootsReply(differing=items) | AeHashesReply(differing=items):
            return 16 + 9 * len(items)
        case AeHashes(hashes=hashes):
            return 40 + 14 * len(hashes)
        case AeKeys(entries=entries, leaves=leaves):
            return 40 + 5 * len(leaves) + sum(len(k) + 22 for k, _ in entries)
        case AeKeysReply(entries=entries, missing=missing):
            return 16 + sum(len(k) + 22 for k, _ in entries) + sum(len(k) + 2 for k in missing)
    return 32


# A save not yet applied: (stored bytes, digest, newest tombstone ms), one of the first two given
# (the bytes are hashed when applied); (None, None, None) is a removal.
_PendingSave = tuple[bytes | None, bytes | None, int | None]


class AntiEntropy:
    def __init__(self, node_id: str, index: MerkleIndex, settings: AntiEntropyDefaults = ANTI_ENTROPY_DEFAULTS) -> None:
        self.node_id = node_id
        self.settings = settings
        self._index = index
        self._tombstones = TombstoneTracker(settings.tombstone_grace_ms)
        # skey -> its latest save, oldest first. A hot key is saved many times between two reads
        # of the trees (a pass every interval_ms); hashing every version only to XOR it out again
        # was most of what a replicated write paid for anti-entropy.
        self._pending: dict[bytes, _PendingSave] = {}
        self._pending_max = settings.pending_saves_max
        self.stats = AeStats()
        self._replication: dict[str, int] = {}  # keyspace -> N
        self._owners: dict[int, list[list[str]]] = {}  # N -> owners of each range
        self._pass: list[tuple[str, str, tuple[int, ...]]] = []
        self._pass_started_ms = 0
        self._session: _Session | None = None
        self._next_session = 1
        self._next_start_ms = 0
        self._tokens = float(settings.rate_bytes_per_s)
        self._last_tick_ms: int | None = None

    # --- what the replica holds ----------------------------------------------------------------

    def on_save(self, skey: bytes, digest: bytes | None, deleted_ms: int | None) -> None:
        """The replica stored `skey` (digest None: deleted it); `deleted_ms` if only tombstones."""
        if digest is None:
            self._remove(skey)
        else:
            self._record(skey, (None, digest, deleted_ms))

    def on_save_encoded(self, skey: bytes, encoded: bytes | None, deleted_ms: int | None) -> None:
        """As `on_save`, given the stored bytes (None: deleted); hashed only if still the latest
        when applied. The bytes are the store's own object, so keeping them costs no copy."""
        if encoded is None:
            self._remove(skey)
        else:
            self._record(skey, (encoded, None, deleted_ms))

    def knows(self, skey: bytes) -> bool:
        """Whether the replica holds `skey` as far as the saves so far say, applied or not. The
        start-up scan (node/anti_entropy.py) skips such a key: the save is newer than what it read."""
        return skey in self._pending or self._index.digest_of(skey) is not None

    def _record(self, skey: bytes, save: _PendingSave) -> None:
        pending = self._pending
        # Re-inserted at the end, so the backlog is applied in the order of each key's last save:
        # the tombstone candidates then end up in the very order eager updates leave (`due` hands
        # them out in that order, `purge_batch_max` at a time).
        pending.pop(skey, None)
        pending[skey] = save
        if len(pending) >= self._pending_max:
            self._apply_pending()

    def _remove(self, skey: bytes) -> None:
        """A removal (a purge) is applied at once, after the key's own recorded save: that save
        may be the one that made its range's tree (the status counts trees made), and purges are
        rare next to writes. Other keys' saves stay recorded: applied after this one, they leave
        the same hashes, keys and tombstones, since neither the key nor its tombstone remains."""
        earlier = self._pending.pop(skey, None)
        if earlier is not None:
            self._apply(skey, earlier)
        self._apply(skey, (None, None, None))

    def _apply_pending(self) -> None:
        """Apply every recorded save, oldest first. Only the last save of a key matters: a tree
        entry and a tombstone candidate are each replaced whole by the key's next save, and XOR
        trees (Dynamo §4.7 with Cassandra's XOR of row hashes) do not depend on the order."""
        pending, self._pending = self._pending, {}
        for skey, save in pending.items():
            self._apply(skey, save)

    def _apply(self, skey: bytes, save: _PendingSave) -> None:
        encoded, digest, deleted_ms = save
        if encoded is not None:
            digest = clock_digest(encoded)
        range_index = self._index.update(skey, digest)
        # Most saves are of live values to keys that are not tombstone candidates: nothing to tell.
        if deleted_ms is not None or skey in self._tombstones.candidates:
            self._tombstones.observe(skey, digest, deleted_ms, (keyspace_of(skey), range_index))

    @property
    def pending_saves(self) -> int:
        """Saves recorded and not yet applied (at most `pending_saves_max`)."""
        return len(self._pending)

    @property
    def index(self) -> MerkleIndex:
        """The Merkle trees, with every save so far applied: no root, hash or key listing is ever
        compared while a recorded save is missing from it."""
        if self._pending:
            self._apply_pending()
        return self._index

    @property
    def ring(self) -> Ring:
        """The ring the trees are bucketed by: no recorded save needs applying to know it."""
        return self._index.ring

    @property
    def tombstones(self) -> TombstoneTracker:
        """The purge bookkeeping, with every save so far applied: a purge is never decided, and
        no confirmation is taken, against a digest a newer save has already replaced."""
        if self._pending:
            self._apply_pending()
        return self._tombstones

    def set_replication(self, replication: Mapping[str, int]) -> None:
        """Keyspace -> N (at most the cluster size): which ranges, and so which peers, to compare."""
        self._replication = dict(replication)

    def owners(self, n: int) -> list[list[str]]:
        if n not in self._owners:
            ring = self._index.ring  # ranges follow the ring alone: no save needs applying
            self._owners[n] = [ring.owners_of_range(r, n) for r in self._index.ranges]
        return self._owners[n]

    def others_of(self, where: tuple[str, int]) -> list[str] | None:
        """The other replicas of a (keyspace, range index); None for a keyspace not known yet."""
        n = self._replication.get(where[0])
        if n is None:
            return None
        return [node for node in self.owners(n)[where[1]] if node != self.node_id]

    def charge(self, nbytes: int) -> None:
        """Bytes the driver sent or received on our behalf (pushed clocks)."""
        self._tokens -= nbytes
        self.stats.bytes_sent += nbytes

    # --- time ----------------------------------------------------------------------------------

    def on_tick(self, now_ms: int, wall_ms: int, reachable: Callable[[str], bool]) -> list[AeEffect]:
        limits = self.settings
        if self._last_tick_ms is not None:
            refill = (now_ms - self._last_tick_ms) * limits.rate_bytes_per_s / 1000
            self._tokens = min(float(limits.rate_bytes_per_s), self._tokens + refill)
        self._last_tick_ms = now_ms
        session = self._session
        if session is not None and now_ms >= session.deadline_ms:
            self.stats.sessions_failed += 1
            return self._end_session(now_ms, wall_ms)
        if session is not None:
            return self._advance(session, now_ms, wall_ms)
        if now_ms < self._next_start_ms or self._tokens < 0 or not self._replication:
            return []
        return self._start_next(now_ms, wall_ms, reachable)

    def _plan_pass(self, now_ms: int) -> None:
        self._pass_started_ms = now_ms
        chunk = self.settings.ranges_per_exchange_max
        for keyspace in sorted(self._replication):
            owners = self.owners(self._replication[keyspace])
            mine = [i for i, nodes in enumerate(owners) if self.node_id in nodes]
            for peer in sorted({node for i in mine for node in owners[i]} - {self.node_id}):
                shared = [i for i in mine if peer in owners[i]]
                for start in range(0, len(shared), chunk):
                    self._pass.append((keyspace, peer, tuple(shared[start : start + chunk])))

    def _start_next(self, now_ms: int, wall_ms: int, reachable: Callable[[str], bool]) -> list[AeEffect]:
        if not self._pass:
            self._plan_pass(now_ms)
        while self._pass:
            keyspace, peer, ranges = self._pass.pop(0)
            if reachable(peer):
                break
        else:
            return self._pass_done(now_ms, wall_ms)
        session = _Session(self._next_session, peer, keyspace, ranges, now_ms + self.settings.session_timeout_ms)
        self._next_session += 1
        self._session = session
        self.stats.sessions += 1
        self.stats.ranges_compared += len(ranges)
        roots = tuple((self.index.ranges[i].end, self.index.root(keyspace, i)) for i in ranges)
        return self._send(session, AeRoots(session.session_id, keyspace, roots), now_ms)

    def _pass_done(self, now_ms: int, wall_ms: int) -> list[AeEffect]:
        self._next_start_ms = now_ms + self.settings.interval_ms
        self.stats.full_passes += 1
        self.stats.last_full_pass_wall_ms = wall_ms
        self.stats.last_pass_duration_ms = now_ms - self._pass_started_ms
        return self._purges(wall_ms)

    def _end_session(self, now_ms: int, wall_ms: int) -> list[AeEffect]:
        self._session = None
        # The sessions of a pass follow one another (the byte budget paces them); the interval
        # separates passes. Waiting an interval per (keyspace, peer) made a pass over many
        # keyspaces take minutes.
        self._next_start_ms = now_ms
        effects = self._purges(wall_ms)
        return effects + (self._pass_done(now_ms, wall_ms) if not self._pass else [])

    def _purges(self, wall_ms: int) -> list[AeEffect]:
        due = self.tombstones.due(wall_ms, self.others_of, self.settings.purge_batch_max)
        self.stats.purges_issued += len(due)
        return [Purge(keyspace_of(skey), skey.partition(b"\x00")[2], digest) for skey, digest in due]

    # --- the initiator's side -------------------------------------------------------------------

    def _send(self, session: _Session, message: Message, now_ms: int) -> list[AeEffect]:
        session.waiting = True
        session.deadline_ms = now_ms + self.settings.session_timeout_ms
        size = _size(message)
        self._tokens -= size
        self.stats.bytes_sent += size
        return [Send(session.peer, message)]

    def _advance(self, session: _Session, now_ms: int, wall_ms: int) -> list[AeEffect]:
        """Send the session's next request, unless one is out or the byte budget is spent."""
        if session.waiting or self._tokens < 0:
            return []
        index, depth = self.index, self.index.depth
        while session.current is None or session.batches == []:
            if not session.queue:
                return self._end_session(now_ms, wall_ms)
            session.current, whole = session.queue.pop(0)
            # Small on both sides: one message with every key beats a descent of several round trips.
            session.level, session.positions, session.batches = 0, [0], [[]] if whole else None
        end = index.ranges[session.current].end
        if session.batches is not None:
            leaves = session.batches.pop(0)
            session.sent = index.entries(session.keyspace, session.current, leaves)
            entries = tuple((skey.partition(b"\x00")[2], digest) for skey, digest in session.sent.items())
            self.stats.keys_compared += len(entries)
            request = AeKeys(session.session_id, session.keyspace, end, tuple(leaves), entries)
            return self._send(session, request, now_ms)
        below = min(session.level + self.settings.levels_per_exchange, depth)
        span = below - session.level
        hashes = tuple(
            (p, index.hash_at(session.keyspace, session.current, below, p))
            for position in session.positions
            for p in descendants(position, span)
        )
        session.level = below
        session.asked = frozenset(p for p, _ in hashes)
        return self._send(session, AeHashes(session.session_id, session.keyspace, end, below, hashes), now_ms)

    def _on_reply(self, session: _Session, message: Message, now_ms: int, wall_ms: int) -> list[AeEffect]:
        session.waiting = False
        effects: list[AeEffect] = []
        match message:
            case AeRootsReply(differing=ends, sizes=sizes):
                theirs = {self.index.range_index(end): size for end, size in zip(ends, sizes, strict=False)}
                small = self.settings.whole_range_keys_max
                for i in session.ranges:
                    if i in theirs:
                        session.queue.append((i, theirs[i] + self.index.size(session.keyspace, i) <= small))
                    else:
                        self.tombstones.confirm_range(session.peer, (session.keyspace, i))
                self.stats.ranges_differing += len(session.queue)
            case AeHashesReply(differing=answered):
                # Remote input: keep only positions we asked about (a duplicated or reordered
                # reply from an earlier level must not steer the descent out of the tree).
                positions = [p for p in answered if p in session.asked]
                if not positions:
                    session.current = None
                elif session.level == self.index.depth:
                    assert session.current is not None
                    session.batches = self._batches(session.keyspace, session.current, sorted(positions))
                else:
                    session.positions = sorted(positions)
            case AeKeysReply(entries=entries, missing=missing):
                effects += self._reconcile(session, dict(entries), missing, wall_ms)
        return effects + self._advance(session, now_ms, wall_ms)

    def _batches(self, keyspace: str, range_index: int, leaves: list[int]) -> list[list[int]]:
        """Leaves grouped so one message holds at most keys_per_message_max keys (whole leaves)."""
        tree = self.index.tree(keyspace, range_index)
        batches: list[list[int]] = [[]]
        count = 0
        for leaf in leaves:
            size = 0 if tree is None else len(tree.leaves.get(leaf, {}))
            if batches[-1] and count + size > self.settings.keys_per_message_max:
                batches.append([])
                count = 0
            batches[-1].append(leaf)
            count += size
        return batches

    def _reconcile(
        self, session: _Session, theirs: dict[bytes, bytes], missing: tuple[bytes, ...], wall_ms: int
    ) -> list[AeEffect]:
        base = scoped_key(session.keyspace, b"")
        absent = {base + key for key in missing}
        push: list[bytes] = []
        for skey, digest in session.sent.items():
            key = skey[len(base) :]
            if skey in absent:
                if self.tombstones.expired(skey, wall_ms):
                    self.tombstones.confirm(session.peer, skey, digest)
                else:
                    push.append(key)
            elif key in theirs and theirs[key] != digest:
                push.append(key)
            elif key not in theirs:
                self.tombstones.confirm(session.peer, skey, digest)
        session.sent = {}
        self.stats.keys_repaired += len(push)
        return [Push(session.peer, session.keyspace, tuple(push))] if push else []

    # --- messages --------------------------------------------------------------------------------

    def on_message(self, sender: str, message: Message, now_ms: int, wall_ms: int) -> list[AeEffect]:
        self._tokens -= _size(message)
        self.stats.bytes_received += _size(message)
        session = self._session
        match message:
            case AeRootsReply(session_id=sid) | AeHashesReply(session_id=sid) | AeKeysReply(session_id=sid):
                if session is None or session.session_id != sid or session.peer != sender or not session.waiting:
                    return []  # late: the exchange was abandoned
                return self._on_reply(session, message, now_ms, wall_ms)
            case AeRoots() | AeHashes() | AeKeys():
                reply, effects = self._answer(sender, message, wall_ms)
                size = _size(reply)
                self._tokens -= size
                self.stats.bytes_sent += size
                return [Send(sender, reply), *effects]
        return []

    def _answer(self, sender: str, message: Message, wall_ms: int) -> tuple[Message, list[AeEffect]]:
        """The receiving side of an exchange, from the index alone."""
        match message:
            case AeRoots(session_id=sid, keyspace=keyspace, roots=roots):
                equal, differing = self.index.differing_roots(keyspace, roots)
                for i in equal:
                    self.tombstones.confirm_range(sender, (keyspace, i))
                sizes = tuple(self.index.size(keyspace, self.index.range_index(end)) for end in differing)
                return AeRootsReply(sid, tuple(differing), sizes), []
            case AeHashes(session_id=sid, keyspace=keyspace, range_end=end, level=level, hashes=hashes):
                return AeHashesReply(sid, self.index.differing_hashes(keyspace, end, level, hashes)), []
            case AeKeys(session_id=sid, keyspace=keyspace, range_end=end, leaves=leaves, entries=entries):
                found = self.index.range_index(end)
                mine = {} if found is None else self.index.entries(keyspace, found, list(leaves))
                base = scoped_key(keyspace, b"")
                diff = diff_entries(mine, {base + key: digest for key, digest in entries})
                for skey, digest in diff.equal.items():
                    self.tombstones.confirm(sender, skey, digest)
                listed = dict(diff.differ)
                for skey, digest in diff.only_ours.items():
                    if self.tombstones.expired(skey, wall_ms):
                        self.tombstones.confirm(sender, skey, digest)  # absent there, expired here: not pushed
                    else:
                        listed[skey] = digest
                push = tuple(skey[len(base) :] for skey in listed)
                self.stats.keys_repaired += len(push)
                reply = AeKeysReply(
                    sid,
                    tuple((skey[len(base) :], digest) for skey, digest in listed.items()),
                    tuple(skey[len(base) :] for skey in diff.only_theirs),
                )
                return reply, [Push(sender, keyspace, push)] if push else []
        raise AssertionError(f"not an anti-entropy request: {type(message).__name__}")

    def status(self) -> dict[str, object]:
        return {
            **vars(self.stats),
            "index_keys": self.index.keys(),
            "trees": self.index.trees(),
            "tombstones_pending": len(self.tombstones),
            "tombstones_purged": self.tombstones.purged,
            "in_session": self._session is not None,
        }
