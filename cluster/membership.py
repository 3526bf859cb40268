"""Gossip membership: who is in the cluster and who is alive (Cassandra's Gossiper, SWIM-lite).

Pure, in the etcd/raft style: `on_tick(now_ms)` and `on_message(sender, message, now_ms)` return
effects that node/membership.py (or the simulator) carries out in order. Randomness comes in as
`rng` (a `random.Random` in a node, a seeded one in tests). Rules:

- Per member: peer address, incarnation and heartbeat (gossiped; only the member itself bumps
  them: the incarnation on every restart, the heartbeat every gossip interval), and a status
  judged locally: `alive` / `suspect` / `down` by the phi-accrual detector
  (cluster/failure_detector.py), `left` when the member announced its departure (reserved).
- Newer state is a higher incarnation, or the same incarnation and a higher heartbeat.
- Every `gossip_interval_ms` a node bumps its heartbeat and pushes its whole membership
  (GossipSyn) to `gossip_fanout` random members that are not down; with probability
  down / (live + 1) also to one member that is down, so partitions heal (Cassandra's
  Gossiper does the same with unreachable members); and to every seed address whose node id is
  still unknown.
- The receiver merges entry by entry and answers (GossipAck) with what it holds newer or the
  sender lacks: push-pull, so news reaches every node in O(log N) rounds (Demers et al. 1987,
  "Epidemic Algorithms for Replicated Database Maintenance").
- A newer heartbeat of X is a heartbeat arrival for X's detector; a newer incarnation of X is a
  restart, and X's detector window starts over.
- Nobody speaks for a node but itself. Gossip about this node newer than its own state means its
  stored incarnation was lost: it takes a higher incarnation (SWIM's refutation, Das et al. 2002),
  and `PersistIncarnation` comes before any effect that gossips it.
- Configured peers never heard from are members with incarnation 0 (not gossiped) whose detector
  runs from the node's start, so a peer that never came up is convicted like one that died.
"""

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from cluster.failure_detector import Liveness, PhiAccrualDetector
from cluster.frozen import frozen
from cluster.limits import MEMBERSHIP_DEFAULTS, MembershipDefaults
from cluster.messages import GossipAck, GossipEntry, GossipSyn, Message
from cluster.rounds import Send


class Rng(Protocol):
    """The part of `random.Random` gossip uses; injected so that simulations replay exactly."""

    def random(self) -> float: ...

    def sample(self, population: Sequence[str], k: int) -> list[str]: ...

    def choice(self, seq: Sequence[str]) -> str: ...


class MemberStatus(enum.StrEnum):
    ALIVE = "alive"
    SUSPECT = "suspect"
    DOWN = "down"
    LEFT = "left"  # reserved for the grow/shrink work: nothing announces a departure yet


@frozen
class PersistIncarnation:
    """Store this node's new incarnation durably BEFORE carrying out the effects that follow."""

    incarnation: int


@frozen
class PeerLearned:
    """Gossip named a node this one did not know: make it reachable (transport `add_peer`)."""

    node_id: str
    address: str


@frozen
class SendToAddress:
    """Gossip to a seed known only by its address (its node id is not known yet)."""

    address: str
    message: Message


Effect = PersistIncarnation | PeerLearned | Send | SendToAddress


@dataclass(slots=True)
class Member:
    node_id: str
    address: str
    incarnation: int  # 0: configured but never heard from
    heartbeat: int
    left: bool = False

    def version(self) -> tuple[int, int]:
        return (self.incarnation, self.heartbeat)

    def entry(self) -> GossipEntry:
        return GossipEntry(self.node_id, self.address, self.incarnation, self.heartbeat, self.left)


@frozen
class MemberView:
    """One member as this node sees it (for /v1/status and `titra status`)."""

    node_id: str
    address: str
    incarnation: int
    heartbeat: int
    status: MemberStatus
    phi: float
    last_seen_ms_ago: int | None  # None: this node itself


class Membership:
    def __init__(
        self,
        node_id: str,
        address: str,
        incarnation: int,
        rng: Rng,
        now_ms: int,
        peers: Mapping[str, str] | None = None,
        seed_addresses: Iterable[str] = (),
        defaults: MembershipDefaults = MEMBERSHIP_DEFAULTS,
    ) -> None:
        assert incarnation >= 1, "incarnation 0 means 'never heard from'"
        self.node_id = node_id
        self.defaults = defaults
        self.rng = rng
        self.detector = PhiAccrualDetector(defaults)
        self.me = Member(node_id, address, incarnation, 0)
        self.members: dict[str, Member] = {node_id: self.me}
        for peer, peer_address in sorted((peers or {}).items()):
            if peer != node_id and len(self.members) < defaults.members_max:
                self.members[peer] = Member(peer, peer_address, 0, 0)
                self.detector.watch(peer, now_ms)
        known = {m.address for m in self.members.values()}
        self.unknown_seeds: set[str] = {a for a in seed_addresses if a not in known}
        self._next_round_ms = now_ms

    # --- inputs ----------------------------------------------------------------------------------

    def on_tick(self, now_ms: int) -> list[Effect]:
        """A gossip round once per `gossip_interval_ms`: heartbeat, then push to a few members."""
        if now_ms < self._next_round_ms:
            return []
        self._next_round_ms = now_ms + self.defaults.gossip_interval_ms
        self.me.heartbeat += 1
        syn = GossipSyn(self._entries())
        effects: list[Effect] = [Send(target, syn) for target in self._targets(now_ms)]
        effects += [SendToAddress(address, syn) for address in sorted(self.unknown_seeds)]
        return effects

    def greet(self, node_id: str) -> list[Effect]:
        """A connection to `node_id` just came up: push the membership now, not at the next round, so a
        restarted node's new incarnation is known before anyone routes requests to it."""
        return [Send(node_id, GossipSyn(self._entries()))]

    def on_message(self, sender: str, message: Message, now_ms: int) -> list[Effect]:
        match message:
            case GossipSyn(entries=entries):
                effects = self._merge(entries, now_ms)
                lacking = self._newer_than(entries)
                if lacking:
                    effects.append(Send(sender, GossipAck(lacking)))
                return effects
            case GossipAck(entries=entries):
                return self._merge(entries, now_ms)
            case _:
                return []

    # --- queries ---------------------------------------------------------------------------------

    def status_of(self, node_id: str, now_ms: int) -> MemberStatus | None:
        """None for a node that is not a member."""
        member = self.members.get(node_id)
        if member is None:
            return None
        if member.left:
            return MemberStatus.LEFT
        if node_id == self.node_id:
            return MemberStatus.ALIVE
        liveness = self.detector.liveness(node_id, now_ms)
        assert liveness is not None, "every member but this node is watched"
        return _STATUS_OF_LIVENESS[liveness]

    def is_down(self, node_id: str, now_ms: int) -> bool:
        """`status_of` is DOWN or LEFT, without building the status: asked per replica per write."""
        member = self.members.get(node_id)
        if member is None or node_id == self.node_id:
            return member is not None and member.left
        return member.left or self.detector.convicted(node_id, now_ms)

    def views(self, now_ms: int) -> list[MemberView]:
        out = []
        for node_id in sorted(self.members):
            member = self.members[node_id]
            status = self.status_of(node_id, now_ms)
            assert status is not None
            last = self.detector.last_arrival_ms(node_id)
            out.append(
                MemberView(
                    node_id,
                    member.address,
                    member.incarnation,
                    member.heartbeat,
                    status,
                    self.detector.phi(node_id, now_ms),
                    None if last is None else max(0, now_ms - last),
                )
            )
        return out

    # --- gossip ----------------------------------------------------------------------------------

    def _entries(self) -> tuple[GossipEntry, ...]:
        # Members never heard from are not gossiped: only a node itself puts itself into gossip.
        return tuple(m.entry() for _, m in sorted(self.members.items()) if m.incarnation > 0)

    def _targets(self, now_ms: int) -> list[str]:
        others = [n for n in sorted(self.members) if n != self.node_id and not self.members[n].left]
        down = [n for n in others if self.is_down(n, now_ms)]
        live = [n for n in others if n not in down]
        targets = self.rng.sample(live, min(self.defaults.gossip_fanout, len(live))) if live else []
        if down and self.rng.random() < len(down) / (len(live) + 1):
            targets.append(self.rng.choice(down))
        return targets

    def _newer_than(self, entries: Sequence[GossipEntry]) -> tuple[GossipEntry, ...]:
        theirs = {e.node_id: (e.incarnation, e.heartbeat) for e in entries}
        return tuple(
            m.entry()
            for _, m in sorted(self.members.items())
            if m.incarnation > 0 and m.version() > theirs.get(m.node_id, (0, -1))
        )

    def _merge(self, entries: Sequence[GossipEntry], now_ms: int) -> list[Effect]:
        effects: list[Effect] = []
        for entry in entries:
            if not entry.node_id or entry.incarnation < 1 or entry.heartbeat < 0:
                continue  # only a node itself gossips about itself, always with incarnation >= 1
            if entry.node_id == self.node_id:
                effects += self._refute(entry)
                continue
            member = self.members.get(entry.node_id)
            if member is None:
                if len(self.members) >= self.defaults.members_max:
                    continue
                member = self.members[entry.node_id] = Member(entry.node_id, entry.address, 0, 0)
                effects.append(PeerLearned(entry.node_id, entry.address))
            if (entry.incarnation, entry.heartbeat) <= member.version():
                continue
            restarted = entry.incarnation > member.incarnation
            member.address = entry.address
            member.incarnation = entry.incarnation
            member.heartbeat = entry.heartbeat
            member.left = entry.left
            self.unknown_seeds.discard(entry.address)
            if restarted:
                self.detector.watch(entry.node_id, now_ms)  # a new life: judge it afresh
            else:
                self.detector.heartbeat(entry.node_id, now_ms)
        return effects

    def _refute(self, entry: GossipEntry) -> list[Effect]:
        if (entry.incarnation, entry.heartbeat) <= self.me.version():
            return []
        # Someone saw a later life of this node than this one: the stored incarnation was lost.
        self.me.incarnation = entry.incarnation + 1
        self.me.heartbeat = 0
        return [PersistIncarnation(self.me.incarnation)]


# A member's status from the detector's judgement (same values), without an Enum call per query.
_STATUS_OF_LIVENESS = {liveness: MemberStatus(liveness.value) for liveness in Liveness}
