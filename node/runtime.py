"""The node runtime: drives the pure replication rounds with the transport, the replica and time.

It implements `cluster.requests.Coordinator` for the HTTP edge. Rules:
- Effects are carried out in the order a round returns them; `Finish` resolves the waiting
  client request, and a finished read round stays registered until it has read-repaired.
- A write is coordinated by the receiving node when it is a replica of the key, else by the
  first reachable replica (forwarded); a write with an Idempotency-Key always by the first
  reachable replica, which keeps its outcome.
- 503 (`unavailable`) is decided before anything is written: fewer reachable replicas than the
  level needs. Anything that goes wrong after the coordinator stored the write is a timeout:
  the outcome is unknown.
"""

import asyncio
import logging
from dataclasses import dataclass
from typing import Protocol

from cluster import dvv
from cluster.context import scoped_key, version_of
from cluster.dvv import DVVSet, VersionVector
from cluster.enums import by_value
from cluster.hints import HintedWriteRound, HintPlan
from cluster.limits import REQUEST_DEFAULTS
from cluster.messages import (
    AeHashes,
    AeHashesReply,
    AeKeys,
    AeKeysReply,
    AeRoots,
    AeRootsReply,
    ForwardWrite,
    ForwardWriteReply,
    HintDeliver,
    HintDeliverAck,
    HintStore,
    HintStoreAck,
    ListKeys,
    ListKeysReply,
    Message,
    ReplicaMerge,
    ReplicaMergeAck,
    ReplicaRead,
    ReplicaReadReply,
)
from cluster.replica import Replica
from cluster.requests import (
    ContextEntry,
    KeyspaceDef,
    KeyspaceOutcome,
    Level,
    ListOutcome,
    Outcome,
    ReadOutcome,
    ReadRequest,
    ReadStatus,
    WriteOutcome,
    WriteRequest,
    WriteStatus,
    achieved_level,
    required_acks,
)
from cluster.ring import Ring
from cluster.rounds import Effect, Finish, ListRound, ReadRound, Send, Unacked, WriteRound
from cluster.siblings import Resolution, Sibling, decode_clock, encode_clock, live
from cluster.tombstones import RepairSettings
from node.anti_entropy import AntiEntropyDriver
from node.background import Spawner
from node.hints import HintedHandoff
from node.idempotency import IdempotencyTable
from node.keyspaces import KeyspaceRegistry

log = logging.getLogger("titra.runtime")

TICK_MS = 10  # how often rounds see the time (deadlines, causal re-reads)


class Transport(Protocol):
    def send(self, node_id: str, message: Message) -> None: ...

    def is_reachable(self, node_id: str) -> bool: ...

    def status(self) -> dict[str, dict[str, object]]: ...


class Members(Protocol):
    """Gossip membership and failure detection (node/membership.py)."""

    def is_down(self, node_id: str) -> bool: ...

    def status(self) -> dict[str, object]: ...


@dataclass
class _Pending:
    round: WriteRound | ReadRound | ListRound | None
    future: "asyncio.Future[Finish | WriteOutcome]"


class NodeRuntime:
    def __init__(
        self,
        node_id: str,
        nodes: list[str],
        replica: Replica,
        transport: Transport,
        secret: bytes,
        members: Members | None = None,
        repair: RepairSettings | None = None,
    ) -> None:
        self.node_id = node_id
        self.secret = secret
        self.ring = Ring(frozenset(nodes))
        self.replica = replica
        self.transport = transport
        self.members = members
        self.keyspaces = KeyspaceRegistry(len(nodes), replica.store, self.put, self.get)
        self.idempotency = IdempotencyTable(replica.store)
        # repair: hinted handoff (Dynamo §4.6) and anti-entropy (§4.7), each a driver of a pure core.
        settings = repair or RepairSettings()
        self.hints = HintedHandoff(replica, self.keyspaces, transport.send, self._reachable, settings)
        self.anti_entropy = AntiEntropyDriver(
            self.ring, replica, self.keyspaces, transport.send, self._reachable, settings
        )
        self._pending: dict[int, _Pending] = {}
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop serving this runtime, once known
        # _reachable's memo: the loop millisecond it holds, and node id -> reachable.
        self._reachable_ms = -1
        self._reachable_now: dict[str, bool] = {}
        # Round ids start from the wall clock (microseconds), so a restarted process never takes
        # a stale reply meant for its previous incarnation's round of the same number.
        self._next_round = replica.wall() * 1000 + 1
        self._tasks: set[asyncio.Task[None]] = set()
        self._spawn = Spawner(self._tasks, log, "runtime task")
        # Runs only while rounds are in flight: an idle node does not wake every TICK_MS.
        self._ticker: asyncio.Task[None] | None = None
        self._closed = False
        self._ready = False

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        await self.hints.start()  # repair
        await self.anti_entropy.start()  # repair
        self._ready = True

    async def close(self) -> None:
        self._ready = False
        await self.anti_entropy.close()  # repair
        await self.hints.close()  # repair
        # Only now: rounds that start while the drivers above close still get their ticks.
        self._closed = True
        for task in [self._ticker, *self._tasks]:
            if task is not None:
                task.cancel()
        await asyncio.gather(*[t for t in [self._ticker, *self._tasks] if t is not None], return_exceptions=True)

    def ready(self) -> bool:
        return self._ready

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        # Cached: on CPython 3.11 every asyncio.get_running_loop() is a getpid(2) system call,
        # and a write asks for the loop (its time) a dozen times.
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        return loop

    def _now_ms(self) -> int:
        return int(self._running_loop().time() * 1000)

    def _reachable(self, node_id: str) -> bool:
        """Connected, and not convicted by the failure detector: a down replica is skipped at once
        instead of costing a request its timeout. Remembered for the rest of the millisecond: a
        write asks for each replica twice, and the detector's phi is not free."""
        now_ms = self._now_ms()
        if now_ms != self._reachable_ms:
            self._reachable_ms, self._reachable_now = now_ms, {}
        known = self._reachable_now.get(node_id)
        if known is None:
            known = self._reachable_now[node_id] = self.transport.is_reachable(node_id) and not (
                self.members is not None and self.members.is_down(node_id)
            )
        return known

    def _round_id(self) -> int:
        rid = self._next_round
        self._next_round += 1
        return rid

    # --- writes --------------------------------------------------------------------------------

    async def put(self, request: WriteRequest) -> WriteOutcome:
        definition = self.keyspaces.cached(request.keyspace) or await self.keyspaces.lookup(
            request.keyspace, request.timeout_ms
        )
        if definition is None:
            return self._write_outcome(WriteStatus.NO_KEYSPACE, (), 0, f"keyspace {request.keyspace!r} does not exist")
        n = min(definition.n, len(self.ring.nodes))
        if request.w is not None and request.w > n:
            return self._write_outcome(
                WriteStatus.INVALID, (), 0, f"w={request.w} is above N={n} of {definition.name!r}"
            )
        level = _level(request.level)
        w = required_acks(level, n, request.w)
        skey = scoped_key(definition.name, request.key)
        preference = self.ring.preference_list(skey, n)
        reachable = [node for node in preference if self._reachable(node)]
        # repair: hints may stand in for replicas that are down (`one`, or `sloppy=true`).
        plan = self.hints.plan(level, w, request.sloppy, self.ring, skey, preference, reachable)
        if plan.copies(len(reachable)) < w:
            return self._write_outcome(
                WriteStatus.UNAVAILABLE,
                (),
                w,
                f"only {len(reachable)} of the key's {n} replicas are reachable and {w} must acknowledge; "
                "nothing was written",
            )
        # An idempotent write goes to the key's first reachable replica, where its outcome is kept.
        forward = bool(request.idempotency_key) or self.node_id not in preference
        target = reachable[0] if forward and reachable else self.node_id  # none reachable: this node stands in
        if target != self.node_id:
            return await self._forward(target, request, w)
        return await self._coordinate(definition, request, tuple(preference), w, n, plan)

    async def _forward(self, target: str, request: WriteRequest, w: int) -> WriteOutcome:
        rid = self._round_id()
        future: asyncio.Future[Finish | WriteOutcome] = self._running_loop().create_future()
        self._pending[rid] = _Pending(None, future)
        self.transport.send(target, ForwardWrite(rid, request))
        try:
            got = await asyncio.wait_for(future, request.timeout_ms / 1000)
        except TimeoutError:
            return self._write_outcome(
                WriteStatus.TIMEOUT,
                (),
                w,
                f"forwarded to replica {target}, which did not answer in time; outcome unknown",
            )
        finally:
            self._pending.pop(rid, None)
        assert isinstance(got, WriteOutcome)
        return got

    async def _coordinate(
        self,
        definition: KeyspaceDef,
        request: WriteRequest,
        preference: tuple[str, ...],
        w: int,
        n: int,
        plan: HintPlan | None = None,
    ) -> WriteOutcome:
        """Mint the write here and replicate it. `plan`: who keeps hints, when the caller just
        made it (put()); a forwarded or retried write makes its own."""
        if request.idempotency_key:
            earlier = await self.idempotency.get(request.idempotency_key)
            if earlier is not None:
                if earlier.digest != request.request_digest:
                    return self._write_outcome(
                        WriteStatus.IDEMPOTENCY_MISMATCH, (), w, "this Idempotency-Key was used for a different request"
                    )
                if earlier.outcome.status != WriteStatus.TIMEOUT.value:
                    return earlier.outcome
                # The first attempt stored the write here but did not reach W: replicate it again.
                encoded = await self.replica.read(definition.name, request.key)
                assert encoded is not None, "an idempotent write recorded as stored is missing"
                clock = decode_clock(encoded)
                outcome = await self._replicate(definition, request, preference, w, n, clock, earlier.outcome.timestamp)
                await self.idempotency.put(
                    request.idempotency_key, request.request_digest, definition.name, request.key, outcome
                )
                return outcome
        skey = scoped_key(definition.name, request.key)
        deps: tuple[tuple[bytes, VersionVector], ...] = ()
        if request.level == Level.CAUSAL.value:
            deps = tuple((e.key, e.version) for e in request.context if e.key != skey)
        minted = await self.replica.mint(
            definition.name,
            _resolution(definition.resolution),
            request.key,
            request.value,
            request.content_type,
            request.deleted,
            deps,
            version_of(request.context, skey),
            request.if_match,
            request.if_none_match,
            request.durability,
        )
        if minted.status is not WriteStatus.OK or minted.clock is None:
            return self._write_outcome(minted.status, (), w, minted.message)
        assert minted.timestamp is not None
        outcome = await self._replicate(
            definition, request, preference, w, n, minted.clock, minted.timestamp.encode(), minted.encoded, plan
        )
        if request.idempotency_key:
            await self.idempotency.put(
                request.idempotency_key, request.request_digest, definition.name, request.key, outcome
            )
        return outcome

    async def _replicate(
        self,
        definition: KeyspaceDef,
        request: WriteRequest,
        preference: tuple[str, ...],
        w: int,
        n: int,
        clock: DVVSet[Sibling],
        timestamp: str,
        encoded: bytes = b"",
        plan: HintPlan | None = None,
    ) -> WriteOutcome:
        """Send the stored `clock` (`encoded`: its encoding, when the caller has it) to the replicas.
        `plan`: the hint plan made when the write started, if the caller has it."""
        encoded = encoded or encode_clock(clock)
        rid = self._round_id()
        deadline_ms = self._now_ms() + request.timeout_ms
        args = (rid, definition.name, request.key, self.node_id, preference, w, deadline_ms, request.durability)
        # repair: replicas down before the write starts get hints (hinted handoff, Dynamo §4.6);
        # one that goes down later is sent the write, and gets a hint if it never acknowledges.
        if plan is None:
            reachable = [node for node in preference if self._reachable(node)]
            skey = scoped_key(definition.name, request.key)
            plan = self.hints.plan(
                _level(request.level), w, request.sloppy, self.ring, skey, list(preference), reachable
            )
        if plan.local or plan.fallbacks:
            hinted = HintedWriteRound(*args, plan=plan)
            stored = await self.hints.keep(plan.local, definition.name, request.key, encoded, request.durability)
            finish = await self._run(hinted, hinted.start(clock, encoded, tuple(stored)))
            copies, fallbacks = hinted.counted(), tuple(hinted.hinted)
        else:
            round_ = WriteRound(*args)
            finish = await self._run(round_, round_.start(clock, encoded))
            copies, fallbacks = len(finish.replicas), ()
        status = WriteStatus.OK if finish.status == "ok" else WriteStatus.TIMEOUT
        return WriteOutcome(
            status.value,
            self.node_id,
            finish.replicas,
            w,
            dvv.join(clock),
            timestamp,
            achieved_level(copies, n),
            finish.message,
            fallbacks,
        )

    def _write_outcome(self, status: WriteStatus, acks: tuple[str, ...], w: int, message: str) -> WriteOutcome:
        return WriteOutcome(status.value, self.node_id, acks, w, None, "", "", message)

    # --- reads ---------------------------------------------------------------------------------

    async def get(self, request: ReadRequest) -> ReadOutcome:
        definition = await self.keyspaces.lookup(request.keyspace, request.timeout_ms)
        if definition is None:
            return self._read_outcome(ReadStatus.NO_KEYSPACE, 0, f"keyspace {request.keyspace!r} does not exist")
        n = min(definition.n, len(self.ring.nodes))
        if request.r is not None and request.r > n:
            return self._read_outcome(ReadStatus.INVALID, 0, f"r={request.r} is above N={n} of {definition.name!r}")
        level = _level(request.level)
        r = required_acks(level, n, request.r)
        skey = scoped_key(definition.name, request.key)
        preference = tuple(self.ring.preference_list(skey, n))
        reachable = [node for node in preference if self._reachable(node)]
        if len(reachable) < r:
            return self._read_outcome(
                ReadStatus.UNAVAILABLE,
                r,
                f"only {len(reachable)} of the key's {n} replicas are reachable; {r} must answer",
            )
        must_cover = version_of(request.context, skey) if level is Level.CAUSAL else None
        round_ = ReadRound(
            self._round_id(),
            definition.name,
            request.key,
            preference,
            r,
            self._now_ms() + request.timeout_ms,
            _resolution(definition.resolution),
            must_cover,
        )
        finish = await self._run(round_, round_.start())
        if finish.status != "ok":
            status = ReadStatus.TIMEOUT if finish.status == "timeout" else ReadStatus.UNAVAILABLE
            return self._read_outcome(status, r, finish.message, finish.replicas)
        merged = round_.merged
        siblings = tuple(live(merged)) if merged is not None else ()
        deps: tuple[ContextEntry, ...] = tuple(ContextEntry(k, v) for s in siblings for k, v in s.deps)
        return ReadOutcome(
            (ReadStatus.OK if siblings else ReadStatus.NOT_FOUND).value,
            self.node_id,
            finish.replicas,
            r,
            siblings,
            dvv.join(merged) if merged is not None else VersionVector(),
            deps,
            self.replica.clock.now(self.replica.wall()).encode(),
            achieved_level(len(finish.replicas), n),
            "",
        )

    def _read_outcome(self, status: ReadStatus, r: int, message: str, replicas: tuple[str, ...] = ()) -> ReadOutcome:
        return ReadOutcome(status.value, self.node_id, replicas, r, (), None, (), "", "", message)

    # --- listing and keyspaces -------------------------------------------------------------------

    async def list_keys(
        self, keyspace: str, prefix: bytes, after: bytes | None, limit: int, timeout_ms: int
    ) -> ListOutcome:
        definition = await self.keyspaces.lookup(keyspace, timeout_ms)
        if definition is None:
            return ListOutcome(Outcome.NO_KEYSPACE.value, (), None, (), f"keyspace {keyspace!r} does not exist")
        nodes = tuple(sorted(self.ring.nodes))
        n = min(definition.n, len(nodes))
        required = len(nodes) - n + 1
        round_ = ListRound(self._round_id(), nodes, required, self._now_ms() + timeout_ms, limit)
        reachable = [node for node in nodes if self._reachable(node)]
        if len(reachable) < required:
            return ListOutcome(
                Outcome.UNAVAILABLE.value,
                (),
                None,
                (),
                f"only {len(reachable)} nodes reachable; {required} needed to cover every key",
            )
        sends: list[Effect] = [Send(node, ListKeys(round_.round_id, keyspace, prefix, after, limit)) for node in nodes]
        finish = await self._run(round_, sends)
        if finish.status != "ok":
            return ListOutcome(finish.status, (), None, finish.replicas, "not enough nodes answered in time")
        keys, cursor = round_.page()
        return ListOutcome(Outcome.OK.value, keys, cursor, finish.replicas, "")

    async def create_keyspace(self, definition: KeyspaceDef, timeout_ms: int) -> KeyspaceOutcome:
        return await self.keyspaces.create(definition, timeout_ms)

    async def get_keyspace(self, name: str, timeout_ms: int) -> KeyspaceDef | None:
        return await self.keyspaces.lookup(name, timeout_ms)

    async def list_keyspaces(self) -> list[KeyspaceDef]:
        return await self.keyspaces.all()

    async def replica_digest(
        self, keyspace: str, after: bytes | None, limit: int
    ) -> tuple[list[tuple[bytes, str]], bytes | None] | None:
        if await self.keyspaces.lookup(keyspace, REQUEST_DEFAULTS.request_timeout_ms_default) is None:
            return None
        return await self.replica.digest(keyspace, after, limit)

    def status(self) -> dict[str, object]:
        ownership = self.ring.ownership()
        return {
            "node": {
                "id": self.node_id,
                "ready": self._ready,
                "rounds_in_flight": len(self._pending),
                # "uvloop" or "asyncio" (node/server.py's --event-loop)
                "event_loop": type(self._running_loop()).__module__.partition(".")[0],
            },
            "ring": {
                "nodes": sorted(self.ring.nodes),
                "vnodes_per_node": self.ring.vnodes_per_node,
                "ownership": ownership,
            },
            "peers": self.transport.status(),
            "membership": self.members.status() if self.members is not None else {},
            "repair": self.repair_status(),
        }

    def repair_status(self) -> dict[str, dict[str, object]]:
        """Hinted handoff and anti-entropy progress, for /v1/status and /metrics."""
        return {"hints": self.hints.status(), "anti_entropy": self.anti_entropy.status()}

    # --- driving rounds ------------------------------------------------------------------------

    async def _run(self, round_: WriteRound | ReadRound | ListRound, effects: list[Effect]) -> Finish:
        future: asyncio.Future[Finish | WriteOutcome] = self._running_loop().create_future()
        self._pending[round_.round_id] = _Pending(round_, future)
        self._keep_ticking()
        self._apply(round_.round_id, effects)
        # Not shielded: a cancelled caller cancels only this future; the round goes on, and
        # _apply never sets a result on a future that is done.
        got = await future
        assert isinstance(got, Finish)
        return got

    def _apply(self, rid: int, effects: list[Effect]) -> None:
        pending = self._pending.get(rid)
        for effect in effects:
            if isinstance(effect, Send):
                self.transport.send(effect.to, effect.message)
            elif isinstance(effect, Unacked):
                # Hints for replicas that never acknowledged; async durability: the write itself is
                # already as durable as asked on the replicas that did.
                self._spawn(self._keep_hints(effect))
            elif pending is not None and not pending.future.done():
                pending.future.set_result(effect)
        if pending is not None and _done(pending.round):
            self._pending.pop(rid, None)

    async def _keep_hints(self, unacked: Unacked) -> None:
        await self.hints.keep(unacked.replicas, unacked.keyspace, unacked.key, unacked.clock, "async")

    def _keep_ticking(self) -> None:
        """Start the ticker if it is not running; it stops by itself once no round is left."""
        if not self._closed and (self._ticker is None or self._ticker.done()):
            self._ticker = self._running_loop().create_task(self._tick_loop(), name="titra-rounds-ticker")

    async def _tick_loop(self) -> None:
        # No await between the emptiness check and the return: a round registered later always
        # finds this task done and starts a new one.
        while any(pending.round is not None for pending in self._pending.values()):
            await asyncio.sleep(TICK_MS / 1000)
            now = self._now_ms()
            for rid, pending in list(self._pending.items()):
                round_ = pending.round
                if round_ is not None:
                    try:
                        effects = round_.on_tick(now)
                        # Most rounds have nothing due on a tick: apply only what changed one
                        # (a round may settle with no effect; _apply then drops it).
                        if effects or _done(round_):
                            self._apply(rid, effects)
                    except Exception:  # a bug in one round must not stop the others' deadlines
                        log.exception("round %d failed on a tick", rid)

    # --- messages from peers -------------------------------------------------------------------

    def on_message(self, sender: str, message: Message) -> None:
        # A replicated write's two messages first: a class pattern is an isinstance test, tried
        # in order, and these are most of what arrives. The cases are disjoint types.
        match message:
            case ReplicaMerge():
                self._spawn(self._serve(sender, message))
            case ReplicaMergeAck(round_id=rid, ok=ok, error=error):
                pending = self._pending.get(rid)
                if pending is not None and isinstance(pending.round, WriteRound):
                    self._apply(rid, pending.round.on_ack(sender, ok, error))
            case ReplicaReadReply(round_id=rid, clock=encoded, error=error):
                pending = self._pending.get(rid)
                if pending is not None and isinstance(pending.round, ReadRound):
                    clock = None
                    if encoded is not None and not error:
                        try:
                            clock = decode_clock(encoded)
                        except ValueError as exc:
                            error = f"undecodable clock: {exc}"
                    self._apply(rid, pending.round.on_reply(sender, clock, error, self._now_ms()))
            case ListKeysReply(round_id=rid, keys=keys, complete=complete, error=error):
                pending = self._pending.get(rid)
                if pending is not None and isinstance(pending.round, ListRound):
                    self._apply(rid, pending.round.on_reply(sender, keys, complete, error))
            case ForwardWriteReply(round_id=rid, outcome=outcome):
                pending = self._pending.get(rid)
                if pending is not None and not pending.future.done():
                    pending.future.set_result(outcome)
            case HintStoreAck(round_id=rid, ok=ok, error=error):  # repair
                pending = self._pending.get(rid)
                if pending is not None and isinstance(pending.round, HintedWriteRound):
                    self._apply(rid, pending.round.on_hint_ack(sender, ok, error))
            case HintStore() | HintDeliver() | HintDeliverAck():  # repair
                self.hints.on_message(sender, message)
            case AeRoots() | AeRootsReply() | AeHashes() | AeHashesReply() | AeKeys() | AeKeysReply():  # repair
                self.anti_entropy.on_message(sender, message)
            case ReplicaRead() | ListKeys() | ForwardWrite():
                self._spawn(self._serve(sender, message))


    async def _serve(self, sender: str, message: Message) -> None:
        """Answer a peer's request. Errors are answered, never raised into the transport."""
        reply: Message
        match message:
            case ReplicaRead(round_id=rid, keyspace=keyspace, key=key):
                try:
                    reply = ReplicaReadReply(rid, await self.replica.read(keyspace, key))
                except Exception as exc:  # the store failed: the coordinator counts a failure
                    log.exception("replica read failed")
                    reply = ReplicaReadReply(rid, None, f"{type(exc).__name__}: {exc}")
            case ReplicaMerge(round_id=rid, keyspace=keyspace, key=key, clock=clock, durability=durability):
                try:
                    definition = self.keyspaces.cached(keyspace) or await self.keyspaces.lookup(
                        keyspace, REQUEST_DEFAULTS.request_timeout_ms_default
                    )
                    if definition is None:
                        raise LookupError(f"keyspace {keyspace!r} is unknown here")
                    await self.replica.merge(keyspace, _resolution(definition.resolution), key, clock, durability)
                    reply = ReplicaMergeAck(rid, True)
                except Exception as exc:
                    log.exception("replica merge failed")
                    reply = ReplicaMergeAck(rid, False, f"{type(exc).__name__}: {exc}")
                if rid == 0:
                    return
            case ListKeys(round_id=rid, keyspace=keyspace, prefix=prefix, after=after, limit=limit):
                try:
                    keys, complete = await self.replica.list_keys(keyspace, prefix, after, limit)
                    reply = ListKeysReply(rid, tuple(keys), complete)
                except Exception as exc:
                    log.exception("list keys failed")
                    reply = ListKeysReply(rid, (), False, f"{type(exc).__name__}: {exc}")
            case ForwardWrite(round_id=rid, request=request):
                reply = ForwardWriteReply(rid, await self._coordinate_forwarded(request))
            case _:
                return
        self.transport.send(sender, reply)

    async def _coordinate_forwarded(self, request: WriteRequest) -> WriteOutcome:
        definition = await self.keyspaces.lookup(request.keyspace, request.timeout_ms)
        if definition is None:
            return self._write_outcome(WriteStatus.NO_KEYSPACE, (), 0, f"keyspace {request.keyspace!r} does not exist")
        n = min(definition.n, len(self.ring.nodes))
        w = required_acks(_level(request.level), n, request.w)
        preference = tuple(self.ring.preference_list(scoped_key(definition.name, request.key), n))
        return await self._coordinate(definition, request, preference, w, n)


_level = by_value(Level)
_resolution = by_value(Resolution)


def _done(round_: WriteRound | ReadRound | ListRound | None) -> bool:
    if round_ is None:
        return False
    if isinstance(round_, ReadRound):
        return round_.repaired
    if isinstance(round_, WriteRound):
        return round_.settled
    return round_.finished
