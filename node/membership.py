"""The membership driver: runs cluster/membership.py's gossip over the peer transport.

Edge module (asyncio). Rules:
- The incarnation lives in the node's own store (key `incarnation` of the internal keyspace
  `_node`: the store is the node's only disk access). At start it is read, bumped and written
  with fsync BEFORE the first gossip leaves, so a restarted node never reuses an incarnation.
- A refutation (the pure core took a higher incarnation) is persisted the same way; gossip is
  not sent while that write is in flight.
- Gossip is fire-and-forget, like Cassandra's and SWIM's gossip over UDP: a message to a peer
  the transport holds no connection to is dropped, never queued (the next round carries fresher
  state; a queue would replay stale rounds to a node coming back).
- A connection that comes up is greeted with the membership at once (so a restarted node's new
  incarnation is known to a peer within a round trip of the connection, before requests use it).
- A seed known only by its address is reached through a transport peer named `seed@HOST:PORT`
  until gossip tells its node id; nodes learned by gossip are added to the transport.
"""

import asyncio
import logging
import random
from typing import Protocol

from cluster.context import scoped_key
from cluster.limits import MEMBERSHIP_DEFAULTS, MembershipDefaults
from cluster.membership import Effect, Membership, PeerLearned, PersistIncarnation, Rng, SendToAddress
from cluster.messages import Message
from cluster.rounds import Send
from cluster.store import Durability, Store

log = logging.getLogger("titra.membership")

KEYSPACE = "_node"
INCARNATION_KEY = scoped_key(KEYSPACE, b"incarnation")
SEED_PREFIX = "seed@"


class GossipTransport(Protocol):
    def send(self, node_id: str, message: Message) -> None: ...

    def is_reachable(self, node_id: str) -> bool: ...

    def add_peer(self, node_id: str, address: str) -> None: ...

    def remove_peer(self, node_id: str) -> None: ...


async def bump_incarnation(store: Store) -> int:
    """The incarnation of this life of the node: one more than the last one stored (1 at first start)."""
    record = await store.get(INCARNATION_KEY)
    previous = int(record.value.decode()) if record is not None else 0
    incarnation = previous + 1
    await store.put(INCARNATION_KEY, str(incarnation).encode(), durability=Durability.FSYNC)
    return incarnation


class MembershipDriver:
    def __init__(
        self,
        node_id: str,
        address: str,
        peers: dict[str, str],
        seeds: list[str],
        store: Store,
        transport: GossipTransport,
        defaults: MembershipDefaults = MEMBERSHIP_DEFAULTS,
        rng: Rng | None = None,
    ) -> None:
        self.node_id = node_id
        self.address = address
        self.defaults = defaults
        self._peers = {n: a for n, a in peers.items() if n != node_id}
        self._seeds = [s for s in seeds if s != address]
        self._store = store
        self._transport = transport
        self._rng: Rng = rng if rng is not None else random.Random()
        self.membership: Membership | None = None
        self._seed_peers: set[str] = set()  # seed addresses with a placeholder transport peer
        self._persisting = 0
        self._task: asyncio.Task[None] | None = None
        self._writes: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        incarnation = await bump_incarnation(self._store)
        log.info("node %s starts with incarnation %d", self.node_id, incarnation)
        self.membership = Membership(
            self.node_id, self.address, incarnation, self._rng, self._now_ms(), self._peers, self._seeds, self.defaults
        )
        for address in sorted(self.membership.unknown_seeds):
            self._transport.add_peer(SEED_PREFIX + address, address)
            self._seed_peers.add(address)
        self._task = asyncio.create_task(self._gossip_loop(), name="titra-gossip")

    async def close(self) -> None:
        tasks = [t for t in [self._task, *self._writes] if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def on_message(self, sender: str, message: Message) -> None:
        if self.membership is not None:
            self._apply(self.membership.on_message(sender, message, self._now_ms()))

    def on_connected(self, node_id: str) -> None:
        """The transport's outbound connection to `node_id` (a seed placeholder included) came up."""
        if self.membership is not None:
            self._apply(self.membership.greet(node_id))

    def is_down(self, node_id: str) -> bool:
        return self.membership is not None and self.membership.is_down(node_id, self._now_ms())

    def status(self) -> dict[str, object]:
        if self.membership is None:
            return {"started": False}
        me = self.membership.me
        return {
            "incarnation": me.incarnation,
            "heartbeat": me.heartbeat,
            "gossip_interval_ms": self.defaults.gossip_interval_ms,
            "phi_suspect": self.defaults.phi_suspect,
            "phi_convict": self.defaults.phi_convict,
            "members": [
                {
                    "node_id": view.node_id,
                    "status": view.status.value,
                    "phi": round(view.phi, 2),
                    "incarnation": view.incarnation,
                    "heartbeat": view.heartbeat,
                    "last_seen_ms_ago": view.last_seen_ms_ago,
                    "address": view.address,
                }
                for view in self.membership.views(self._now_ms())
            ],
        }

    # --- carrying out effects --------------------------------------------------------------------

    async def _gossip_loop(self) -> None:
        assert self.membership is not None
        while True:
            self._apply(self.membership.on_tick(self._now_ms()))
            await asyncio.sleep(self.defaults.gossip_interval_ms / 1000)

    def _apply(self, effects: list[Effect]) -> None:
        for effect in effects:
            match effect:
                case PersistIncarnation(incarnation=incarnation):
                    self._persist(incarnation)
                case PeerLearned(node_id=node_id, address=address):
                    log.info("learned of node %s at %s through gossip", node_id, address)
                    self._transport.add_peer(node_id, address)
                case Send(to=to, message=message):
                    self._send(to, message)
                case SendToAddress(address=address, message=message):
                    self._send(SEED_PREFIX + address, message)
        self._retire_resolved_seeds()

    def _send(self, to: str, message: Message) -> None:
        if self._persisting == 0 and self._transport.is_reachable(to):
            self._transport.send(to, message)

    def _persist(self, incarnation: int) -> None:
        log.warning("gossip holds a later life of node %s: taking incarnation %d", self.node_id, incarnation)
        self._persisting += 1

        async def write() -> None:
            try:
                await self._store.put(INCARNATION_KEY, str(incarnation).encode(), durability=Durability.FSYNC)
            finally:
                self._persisting -= 1

        task = asyncio.create_task(write())
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    def _retire_resolved_seeds(self) -> None:
        assert self.membership is not None
        for address in self._seed_peers - self.membership.unknown_seeds:
            self._transport.remove_peer(SEED_PREFIX + address)
            self._seed_peers.discard(address)

    def _now_ms(self) -> int:
        # The loop is cached: on CPython 3.11 each get_running_loop() is a getpid(2) system call,
        # and the runtime asks `is_down` for every replica of every request.
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        return int(loop.time() * 1000)
