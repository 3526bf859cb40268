"""Gossip membership, pure and synchronous: merge rules, then whole clusters on a virtual clock.

`GossipSim` is a deterministic mini-simulation (FoundationDB/VOPR style, scoped to gossip): one
seeded RNG, virtual time in rounds of one gossip interval, every message through the real codec,
and links that can be cut. Scenarios read as scripts: `sim.partition(a, b); sim.run_for_ms(...); sim.heal()`.
The last tests drive the asyncio edge: the driver (incarnation in the store, gossip dropped to
unconnected peers, seeds) and the runtime's reachability.
"""

import asyncio
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from cluster.failure_detector import silence_for_phi_ms
from cluster.hlc import HybridClock
from cluster.limits import MEMBERSHIP_DEFAULTS
from cluster.membership import (
    Effect,
    Membership,
    MemberStatus,
    PeerLearned,
    PersistIncarnation,
    Rng,
    SendToAddress,
)
from cluster.memory_store import MemoryStore
from cluster.messages import GossipAck, GossipEntry, GossipSyn, Message, decode, encode
from cluster.replica import Replica
from cluster.requests import WriteRequest
from cluster.rounds import Send
from node.membership import MembershipDriver
from node.runtime import NodeRuntime

INTERVAL = MEMBERSHIP_DEFAULTS.gossip_interval_ms


def entry(node: str, incarnation: int, heartbeat: int) -> GossipEntry:
    return GossipEntry(node, f"{node}:7170", incarnation, heartbeat, False)


def lone(node: str = "n1", peers: dict[str, str] | None = None, incarnation: int = 1) -> Membership:
    rng: Rng = random.Random(1)  # random.Random is the production Rng
    return Membership(node, f"{node}:7170", incarnation, rng, 0, peers)


# --- merge rules ---------------------------------------------------------------------------------


def test_higher_incarnation_wins_even_with_a_lower_heartbeat() -> None:
    m = lone()
    m.on_message("n2", GossipSyn((entry("n2", 1, 500),)), 10)
    m.on_message("n3", GossipSyn((entry("n2", 2, 3),)), 20)
    assert m.members["n2"].version() == (2, 3)
    m.on_message("n3", GossipSyn((entry("n2", 1, 900),)), 30)  # an older life, however long it ran
    assert m.members["n2"].version() == (2, 3)


def test_same_incarnation_higher_heartbeat_wins_and_older_is_ignored() -> None:
    m = lone()
    m.on_message("n2", GossipSyn((entry("n2", 4, 10),)), 10)
    m.on_message("n2", GossipSyn((entry("n2", 4, 12),)), 20)
    m.on_message("n3", GossipSyn((entry("n2", 4, 11),)), 30)
    assert m.members["n2"].version() == (4, 12)
    assert m.detector.last_arrival_ms("n2") == 20, "only a newer heartbeat is an arrival"


def test_a_syn_is_answered_with_exactly_what_the_sender_lacks() -> None:
    m = lone()
    m.on_message("n2", GossipSyn((entry("n2", 1, 5), entry("n3", 1, 9), entry("n4", 2, 1))), 0)
    m.on_tick(0)  # n1's own heartbeat: 1
    effects = m.on_message("n3", GossipSyn((entry("n2", 1, 7), entry("n3", 1, 10))), 10)
    acks = [e for e in effects if isinstance(e, Send)]
    assert len(acks) == 1 and acks[0].to == "n3"
    assert isinstance(acks[0].message, GossipAck)
    # n1 (unknown to n3) and n4 (unknown to n3); not n2 or n3, where n3 is ahead.
    assert [(e.node_id, e.incarnation, e.heartbeat) for e in acks[0].message.entries] == [("n1", 1, 1), ("n4", 2, 1)]
    assert m.on_message("n3", GossipSyn(m._entries()), 20) == [], "nothing to answer to an equal state"


def test_a_node_learned_by_gossip_is_reported_and_members_are_bounded() -> None:
    m = lone()
    effects = m.on_message("n2", GossipSyn((entry("n2", 1, 1), entry("n9", 1, 1))), 0)
    assert PeerLearned("n9", "n9:7170") in effects and PeerLearned("n2", "n2:7170") in effects
    crowd = tuple(entry(f"x{i}", 1, 1) for i in range(2 * MEMBERSHIP_DEFAULTS.members_max))
    m.on_message("n2", GossipSyn(crowd), 0)
    assert len(m.members) == MEMBERSHIP_DEFAULTS.members_max


def test_configured_peers_never_heard_from_are_not_gossiped_and_get_convicted() -> None:
    m = lone(peers={"n2": "n2:7170", "ghost": "ghost:7170"})
    effects = m.on_tick(0)
    syns = [e.message for e in effects if isinstance(e, Send)]
    assert syns and all(isinstance(s, GossipSyn) and [x.node_id for x in s.entries] == ["n1"] for s in syns)
    assert m.status_of("ghost", 1_000) is MemberStatus.ALIVE
    # Judged from the node's start with the bootstrap interval: 8 * ln 10 * 500 ms.
    convicted_at = silence_for_phi_ms(8, MEMBERSHIP_DEFAULTS.bootstrap_interval_ms)
    assert m.status_of("ghost", math.ceil(convicted_at)) is MemberStatus.DOWN
    assert m.is_down("ghost", math.ceil(convicted_at)) and not m.is_down("stranger", 0)


def test_gossip_about_a_later_life_of_this_node_makes_it_take_a_higher_incarnation() -> None:
    m = lone(incarnation=3)
    assert m.on_message("n2", GossipSyn((entry("n1", 3, 0),)), 0) == []
    effects = m.on_message("n2", GossipSyn((entry("n1", 5, 40),)), 0)
    assert effects[0] == PersistIncarnation(6), "persisted before anything that gossips it"
    assert m.me.version() == (6, 0)


def test_every_round_bumps_the_heartbeat_once_per_interval() -> None:
    m = lone(peers={"n2": "n2:7170"})
    m.on_tick(0)
    m.on_tick(INTERVAL - 1)
    m.on_tick(INTERVAL)
    assert m.me.heartbeat == 2


# --- whole clusters --------------------------------------------------------------------------------


@dataclass
class GossipSim:
    seed: int
    size: int
    now_ms: int = 0
    nodes: dict[str, Membership] = field(default_factory=dict)
    stopped: set[str] = field(default_factory=set)
    cut: set[frozenset[str]] = field(default_factory=set)
    persisted: dict[str, int] = field(default_factory=dict)
    rounds: int = 0

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.peers = {f"n{i}": f"n{i}:7170" for i in range(self.size)}
        for node in self.peers:
            self.start(node)

    def start(self, node: str, seeds: tuple[str, ...] = (), configured: bool = True) -> None:
        """Start (or restart) `node`: its incarnation is one more than the last it persisted."""
        self.persisted[node] = self.persisted.get(node, 0) + 1
        address = f"{node}:7170"
        peers = self.peers if configured else {}
        self.nodes[node] = Membership(node, address, self.persisted[node], self.rng, self.now_ms, peers, seeds)
        self.stopped.discard(node)

    def stop(self, node: str) -> None:
        self.stopped.add(node)

    def partition(self, side_a: set[str], side_b: set[str]) -> None:
        self.cut |= {frozenset((a, b)) for a in side_a for b in side_b}

    def heal(self) -> None:
        self.cut.clear()

    def link(self, a: str, b: str) -> bool:
        return a not in self.stopped and b not in self.stopped and frozenset((a, b)) not in self.cut

    def round(self) -> None:
        """One gossip interval: every running node ticks, then every message (and reply) is delivered."""
        self.rounds += 1
        queue: list[tuple[str, str, Message]] = []
        for node in sorted(self.nodes):
            if node not in self.stopped:
                self._carry_out(node, self.nodes[node].on_tick(self.now_ms), queue)
        while queue:
            sender, to, message = queue.pop(0)
            if to in self.nodes and self.link(sender, to):
                wire = decode(encode(message))  # every message crosses the real codec
                self._carry_out(to, self.nodes[to].on_message(sender, wire, self.now_ms), queue)
        self.now_ms += INTERVAL

    def _carry_out(self, node: str, effects: list[Effect], queue: list[tuple[str, str, Message]]) -> None:
        for effect in effects:
            match effect:
                case PersistIncarnation(incarnation=incarnation):
                    self.persisted[node] = incarnation
                case Send(to=to, message=message):
                    queue.append((node, to, message))
                case SendToAddress(address=address, message=message):
                    queue.append((node, address.split(":")[0], message))
                case PeerLearned():
                    pass

    def run_until(self, condition: Callable[[], bool], what: str, rounds_max: int) -> int:
        """Rounds until `condition` holds, failing with the seed (which replays it) after `rounds_max`."""
        start = self.rounds
        while not condition():
            assert self.rounds - start < rounds_max, f"seed {self.seed}: not {what} after {rounds_max} rounds"
            self.round()
        return self.rounds - start

    def run_for_ms(self, ms: int) -> None:
        for _ in range(math.ceil(ms / INTERVAL)):
            self.round()

    def view(self, observer: str, node: str) -> tuple[int, MemberStatus | None]:
        member = self.nodes[observer].members.get(node)
        return (member.incarnation if member else 0, self.nodes[observer].status_of(node, self.now_ms))

    def everyone_knows_everyone(self) -> bool:
        live = [n for n in self.nodes if n not in self.stopped]
        return all(self.nodes[a].members.get(b, None) is not None and self.nodes[a].members[b].incarnation > 0
                   for a in live for b in live)  # fmt: skip

    def everyone_sees_everyone_alive(self) -> bool:
        live = [n for n in self.nodes if n not in self.stopped]
        return all(self.view(a, b)[1] is MemberStatus.ALIVE for a in live for b in live)


@pytest.mark.parametrize("seed", range(30))
def test_a_restart_reaches_all_20_nodes_in_o_log_n_rounds(seed: int) -> None:
    sim = GossipSim(seed, 20)
    sim.run_until(sim.everyone_knows_everyone, "everyone knows everyone", 20)
    sim.stop("n7")
    sim.round()
    sim.start("n7")  # incarnation 2, heartbeat back to 0
    bound = 2 * math.ceil(math.log2(20))  # push-pull with fan-out 3 needs ~log_4(20) + ln ln 20 rounds

    def restart_known() -> bool:
        return all(sim.view(n, "n7") == (2, MemberStatus.ALIVE) for n in sim.nodes)

    rounds = sim.run_until(restart_known, "every node knows n7's new life", bound)
    assert rounds <= bound
    # The new life wins although its heartbeat is far below the old one's everywhere.
    assert all(sim.nodes[n].members["n7"].heartbeat < 10 for n in sim.nodes)


@pytest.mark.parametrize("seed", range(10))
def test_a_node_joining_through_one_seed_address_is_known_everywhere_in_o_log_n_rounds(seed: int) -> None:
    sim = GossipSim(seed, 20)
    sim.run_until(sim.everyone_knows_everyone, "everyone knows everyone", 20)
    sim.start("new", seeds=("n3:7170",), configured=False)
    rounds = sim.run_until(sim.everyone_knows_everyone, "everyone knows everyone", 2 * math.ceil(math.log2(21)) + 2)
    assert sim.nodes["new"].unknown_seeds == set(), "the seed's node id was learned"
    print(f"seed {seed}: joined in {rounds} rounds")


def test_a_stopped_node_is_convicted_within_the_documented_time_and_rejoins() -> None:
    sim = GossipSim(3, 5)
    sim.run_until(sim.everyone_knows_everyone, "everyone knows everyone", 10)
    sim.run_for_ms(10_000)  # windows fill with real intervals
    sim.stop("n4")
    stopped_at = sim.now_ms
    while not all(sim.view(n, "n4")[1] is MemberStatus.DOWN for n in sim.nodes if n != "n4"):
        sim.round()
        assert sim.now_ms - stopped_at < 10_000
    detection = sim.now_ms - stopped_at
    # 8 * ln 10 * 250 ms after the last heartbeat, plus up to a round for the last one to spread.
    assert silence_for_phi_ms(8, INTERVAL) - INTERVAL <= detection <= silence_for_phi_ms(8, INTERVAL) + 2 * INTERVAL
    sim.start("n4")
    sim.run_until(sim.everyone_sees_everyone_alive, "everyone sees everyone alive", 5)
    assert all(sim.view(n, "n4")[0] == 2 for n in sim.nodes)


@pytest.mark.parametrize("seed", range(3))
def test_partition_then_heal_converges(seed: int) -> None:
    sim = GossipSim(seed, 20)
    sim.run_until(sim.everyone_knows_everyone, "everyone knows everyone", 20)
    left = {f"n{i}" for i in range(8)}
    right = set(sim.nodes) - left
    sim.run_for_ms(5_000)  # windows fill with real intervals (a fresh one is judged by the bootstrap interval)
    sim.partition(left, right)
    sim.run_for_ms(int(silence_for_phi_ms(8, INTERVAL)) + 2_000)
    for a in left:
        assert all(sim.view(a, b)[1] is MemberStatus.DOWN for b in right)
        assert all(sim.view(a, b)[1] is MemberStatus.ALIVE for b in left)
    sim.heal()
    rounds = sim.run_until(
        sim.everyone_sees_everyone_alive, "everyone sees everyone alive", 2 * math.ceil(math.log2(20))
    )
    print(f"seed {seed}: healed in {rounds} rounds")


# --- the driver and the runtime (node/membership.py, node/runtime.py) --------------------------


@dataclass
class FakeGossipTransport:
    connected: set[str]
    sent: list[tuple[str, Message]] = field(default_factory=list)
    added: dict[str, str] = field(default_factory=dict)
    removed: list[str] = field(default_factory=list)

    def send(self, node_id: str, message: Message) -> None:
        self.sent.append((node_id, message))

    def is_reachable(self, node_id: str) -> bool:
        return node_id in self.connected

    def add_peer(self, node_id: str, address: str) -> None:
        self.added[node_id] = address

    def remove_peer(self, node_id: str) -> None:
        self.removed.append(node_id)

    def status(self) -> dict[str, dict[str, object]]:
        return {}


PEERS = {"n1": "n1:7170", "n2": "n2:7170", "n3": "n3:7170"}


async def test_the_driver_takes_a_higher_stored_incarnation_on_every_start() -> None:
    store = MemoryStore()
    for expected in (1, 2, 3):
        driver = MembershipDriver("n1", "n1:7170", PEERS, [], store, FakeGossipTransport(set()), rng=random.Random(1))
        await driver.start()
        assert driver.status()["incarnation"] == expected
        await driver.close()


async def test_the_driver_drops_gossip_to_unconnected_peers_and_resolves_seeds() -> None:
    transport = FakeGossipTransport({"n2", "seed@n9:7170"})
    driver = MembershipDriver("n1", "n1:7170", PEERS, ["n9:7170", "n1:7170"], MemoryStore(), transport)
    await driver.start()
    await asyncio.sleep(0)  # the first round
    assert transport.added == {"seed@n9:7170": "n9:7170"}, "a seed known only by address gets a placeholder"
    assert {to for to, _ in transport.sent} <= {"n2", "seed@n9:7170"} and ("seed@n9:7170" in dict(transport.sent))
    driver.on_message("n9", GossipAck((entry("n9", 1, 4),)))
    assert transport.added["n9"] == "n9:7170" and transport.removed == ["seed@n9:7170"]
    members = driver.status()["members"]
    assert isinstance(members, list) and [m["node_id"] for m in members] == ["n1", "n2", "n3", "n9"]
    # A connection coming up is greeted at once, not at the next round.
    transport.sent.clear()
    transport.connected.add("n3")
    driver.on_connected("n3")
    assert [(to, type(message)) for to, message in transport.sent] == [("n3", GossipSyn)]
    await driver.close()


@dataclass
class FakeMembers:
    down: set[str]

    def is_down(self, node_id: str) -> bool:
        return node_id in self.down

    def status(self) -> dict[str, object]:
        return {"members": sorted(self.down)}


async def test_the_runtime_treats_a_convicted_replica_as_unreachable_at_once() -> None:
    nodes = ["n1", "n2", "n3"]
    replica = Replica("n1", MemoryStore(), HybridClock("n1"))
    runtime = NodeRuntime("n1", nodes, replica, FakeGossipTransport(set(nodes)), b"s" * 32, FakeMembers({"n3"}))
    await runtime.start()
    try:
        request = WriteRequest(
            "default", b"k", b"v", "text/plain", False, "all", None, 5_000, "fsync", (), None, False, "", b"d"
        )
        outcome = await asyncio.wait_for(runtime.put(request), 1.0)  # not after the 5 s timeout
        assert outcome.status == "unavailable" and "only 2 of the key's 3 replicas are reachable" in outcome.message
        assert runtime.status()["membership"] == {"members": ["n3"]}
    finally:
        await runtime.close()
