"""Replication rounds: the EventualConsistencyManager's per-request state machines.

Pure and synchronous, in the etcd/raft style: a round takes replies and `now_ms` and returns
effects (`Send`, `Finish`) for the node runtime to carry out. One round per client request:

- `WriteRound` (Dynamo §4.5): the coordinator has already stored the write on its own replica
  (minting the dot); the round sends the resulting clock to the other replicas and finishes once
  W replicas hold it. Replies after that are ignored; replicas that never answer are left to read
  repair and anti-entropy. A timeout or too many failures finish it as TIMEOUT: the write is on at
  least the coordinator, so its outcome is unknown, never "failed".
- `ReadRound`: asks every replica, merges what they return with DVV `sync`, finishes once R have
  answered (for `causal`: once the merged state also covers the session's context, re-asking
  while replication catches up), then read-repairs every replica whose state is behind the
  merge (Dynamo §4.6, "read repair").
"""

from dataclasses import dataclass, field

from cluster import dvv
from cluster.dvv import DVVSet, VersionVector
from cluster.frozen import frozen
from cluster.messages import Message, ReplicaMerge, ReplicaRead
from cluster.siblings import Resolution, Sibling, encode_clock, resolve


@frozen
class Send:
    to: str
    message: Message


@frozen
class Finish:
    """The round's answer to the client. `status` is a WriteStatus / ReadStatus value."""

    status: str
    replicas: tuple[str, ...]
    message: str = ""


@frozen
class Unacked:
    """The write round settled (all replicas answered, or its deadline passed) and these replicas
    never acknowledged: the coordinator keeps hints for them (Cassandra hints writes that time
    out, not only those to replicas known down), so a partition that cut links before the
    failure detector noticed does not leave them to anti-entropy alone."""

    replicas: tuple[str, ...]
    keyspace: str
    key: bytes
    clock: bytes


Effect = Send | Finish | Unacked


@dataclass
class WriteRound:
    round_id: int
    keyspace: str
    key: bytes
    coordinator: str
    replicas: tuple[str, ...]  # the key's preference list, coordinator included
    required: int  # W
    deadline_ms: int
    durability: str
    acks: list[str] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)
    finished: bool = False
    # Settled: every replica answered or the deadline passed; the round is then forgotten.
    settled: bool = False
    clock_encoded: bytes = b""

    def start(self, clock: DVVSet[Sibling], encoded: bytes = b"") -> list[Effect]:
        """The coordinator stored `clock` (`encoded`: its encoding, if the caller has it); replicate it."""
        assert not self.acks, "a write round starts once"
        self.acks.append(self.coordinator)
        effects: list[Effect] = []
        done = self._finish_if_met()
        # Acknowledgements are asked for even once answered: replicas that never give one get hints.
        self.clock_encoded = encoded = encoded or encode_clock(clock)
        for replica in self.replicas:
            if replica != self.coordinator:
                message = ReplicaMerge(self.round_id, self.keyspace, self.key, encoded, self.durability)
                effects.append(Send(replica, message))
        effects += done
        return effects

    def _late_ack(self, replica: str, ok: bool) -> list[Effect]:
        """An acknowledgement after the client was answered: only settling is left to do."""
        if ok and replica in self.replicas and replica not in self.acks:
            self.acks.append(replica)
        if not self.settled and all(r in self.acks for r in self.replicas):
            self.settled = True
        return []

    def _settle(self) -> list[Effect]:
        self.settled = True
        missing = tuple(r for r in self.replicas if r not in self.acks)
        return [Unacked(missing, self.keyspace, self.key, self.clock_encoded)] if missing else []

    def on_ack(self, replica: str, ok: bool, error: str = "") -> list[Effect]:
        if self.finished:
            return self._late_ack(replica, ok)
        if replica in self.acks or replica in self.failures or replica not in self.replicas:
            return []
        if ok:
            self.acks.append(replica)
            return self._finish_if_met()
        self.failures[replica] = error
        if len(self.replicas) - len(self.failures) < self.required:
            return self._finish(
                "timeout",
                f"only {len(self.acks)} of the {self.required} replicas required acknowledged; "
                f"{len(self.failures)} refused ({'; '.join(sorted(set(self.failures.values())))}); "
                "the write is stored on the coordinator and may still become visible",
            )
        return []

    def on_tick(self, now_ms: int) -> list[Effect]:
        if self.settled or now_ms < self.deadline_ms:
            return []
        if self.finished:
            return self._settle()
        return [
            *self._finish(
                "timeout",
                f"timed out with {len(self.acks)} of the {self.required} replicas required acknowledged; "
                "the outcome is unknown",
            ),
            *self._settle(),
        ]

    def _finish_if_met(self) -> list[Effect]:
        if len(self.acks) >= self.required:
            return self._finish("ok", "")
        return []

    def _finish(self, status: str, message: str) -> list[Effect]:
        self.finished = True
        return [Finish(status, tuple(self.acks), message)]


@dataclass
class ReadRound:
    round_id: int
    keyspace: str
    key: bytes
    replicas: tuple[str, ...]
    required: int  # R
    deadline_ms: int
    resolution: Resolution
    # For `causal`: the version the session has seen of this key; the answer must cover it.
    must_cover: VersionVector | None = None
    causal_retry_ms: int = 20
    replies: dict[str, DVVSet[Sibling] | None] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    merged: DVVSet[Sibling] | None = None
    finished: bool = False
    repaired: bool = False
    _retry_at_ms: int | None = None

    def start(self) -> list[Effect]:
        return [Send(replica, ReplicaRead(self.round_id, self.keyspace, self.key)) for replica in self.replicas]

    def on_reply(self, replica: str, clock: DVVSet[Sibling] | None, error: str = "", now_ms: int = 0) -> list[Effect]:
        if replica not in self.replicas or self.repaired:
            return []
        if error:
            self.failures[replica] = error
            self.replies.pop(replica, None)
        else:
            self.failures.pop(replica, None)
            self.replies[replica] = clock
            if clock is not None:
                merged = clock if self.merged is None else dvv.sync(self.merged, clock)
                self.merged = resolve(merged, self.resolution)
        effects: list[Effect] = []
        if not self.finished:
            effects += self._finish_if_enough(now_ms)
        if self.finished and len(self.replies) + len(self.failures) == len(self.replicas):
            effects += self._repair()
        return effects

    def on_tick(self, now_ms: int) -> list[Effect]:
        if self.repaired:
            return []
        if not self.finished and now_ms >= self.deadline_ms:
            got = len(self.replies)
            if got >= self.required and self.must_cover is not None:
                why = "no replica reached yet holds everything the session's context has seen"
            else:
                why = f"{got} of the {self.required} replicas required answered"
            effects: list[Effect] = [self._finish("timeout", f"timed out: {why}")]
            return effects + self._repair()
        if self.finished and now_ms >= self.deadline_ms:
            return self._repair()
        if not self.finished and self._retry_at_ms is not None and now_ms >= self._retry_at_ms:
            # Causal: replication to the replicas is still in flight; ask again.
            self._retry_at_ms = None
            return self.start()
        return []

    def covers(self) -> bool:
        if self.must_cover is None:
            return True
        have = dvv.join(self.merged) if self.merged is not None else VersionVector()
        return have.descends(self.must_cover)

    def _finish_if_enough(self, now_ms: int) -> list[Effect]:
        answered = len(self.replies)
        if answered >= self.required and self.covers():
            return [self._finish("ok", "")]
        if len(self.replicas) - len(self.failures) < self.required:
            return [self._finish("unavailable", f"{len(self.failures)} replicas failed to answer")]
        if answered + len(self.failures) == len(self.replicas) and not self.covers():
            self._retry_at_ms = now_ms + self.causal_retry_ms
        return []

    def _finish(self, status: str, message: str) -> Finish:
        self.finished = True
        return Finish(status, tuple(r for r in self.replicas if r in self.replies), message)

    def _repair(self) -> list[Effect]:
        """Send the merged state to every replica that answered with less (read repair)."""
        self.repaired = True
        if self.merged is None:
            return []
        merged = self.merged
        stale = [r for r, clock in self.replies.items() if clock is None or not dvv.descends(clock, merged)]
        if not stale:
            return []
        encoded = encode_clock(merged)
        return [Send(r, ReplicaMerge(0, self.keyspace, self.key, encoded, "async")) for r in stale]


@dataclass
class ListRound:
    """Ask every node for its keys of a keyspace page; answer once enough nodes replied that
    every key has at least one replica among them (with N replicas on M nodes: M - N + 1)."""

    round_id: int
    nodes: tuple[str, ...]
    required: int
    deadline_ms: int
    limit: int
    replies: dict[str, tuple[tuple[bytes, ...], bool]] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    finished: bool = False

    def on_reply(self, node: str, keys: tuple[bytes, ...], complete: bool, error: str = "") -> list[Effect]:
        if self.finished or node not in self.nodes:
            return []
        if error:
            self.failures[node] = error
        else:
            self.replies[node] = (keys, complete)
        if len(self.replies) == len(self.nodes) - len(self.failures) and len(self.replies) >= self.required:
            return [self._finish("ok")]
        if len(self.nodes) - len(self.failures) < self.required:
            return [self._finish("unavailable")]
        return []

    def on_tick(self, now_ms: int) -> list[Effect]:
        if self.finished or now_ms < self.deadline_ms:
            return []
        return [self._finish("ok" if len(self.replies) >= self.required else "timeout")]

    def page(self) -> tuple[tuple[bytes, ...], bytes | None]:
        """The merged page and its cursor (None when no replica has more)."""
        merged = sorted({key for keys, _ in self.replies.values() for key in keys})
        more = len(merged) > self.limit or any(not complete for _, complete in self.replies.values())
        page = tuple(merged[: self.limit])
        # A replica that stopped early at its own limit may hold keys before the others' last:
        # cut the page at the smallest "last key" among incomplete replicas.
        bounds = [keys[-1] for keys, complete in self.replies.values() if not complete and keys]
        if bounds:
            page = tuple(k for k in page if k <= min(bounds))
        return page, (page[-1] if more and page else None)

    def _finish(self, status: str) -> Finish:
        self.finished = True
        return Finish(status, tuple(n for n in self.nodes if n in self.replies))
