"""Replication at each level, with three node runtimes in one process over a fake network.

The peterbourgon/caspaxos idea: local and remote peers share one interface, so a whole cluster
fits in one test function. The fake network delivers on the next loop iteration and can cut
links, so scenarios read as scripts: `net.isolate("n3"); ...; net.heal()`.
"""

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest

from cluster.context import remember, scoped_key
from cluster.hlc import HybridClock
from cluster.memory_store import MemoryStore
from cluster.messages import Message, decode, encode
from cluster.replica import Replica
from cluster.requests import (
    ContextEntry,
    KeyspaceDef,
    Level,
    ReadOutcome,
    ReadRequest,
    WriteOutcome,
    WriteRequest,
)
from cluster.rounds import ReadRound
from node.runtime import NodeRuntime

NODES = ["n1", "n2", "n3"]
SECRET = b"s" * 32


@dataclass
class FakeNetwork:
    runtimes: dict[str, NodeRuntime] = field(default_factory=dict)
    cut: set[frozenset[str]] = field(default_factory=set)
    delivered: int = 0

    def link(self, a: str, b: str) -> bool:
        return a == b or frozenset((a, b)) not in self.cut

    def isolate(self, node: str) -> None:
        for other in NODES:
            if other != node:
                self.cut.add(frozenset((node, other)))

    def heal(self) -> None:
        self.cut.clear()

    def transport(self, node: str) -> "FakeTransport":
        return FakeTransport(self, node)


@dataclass
class FakeTransport:
    net: FakeNetwork
    node: str

    def send(self, to: str, message: Message) -> None:
        if not self.net.link(self.node, to):
            return
        wire = encode(message)  # every message crosses the real codec

        def deliver() -> None:
            if self.net.link(self.node, to):
                self.net.delivered += 1
                self.net.runtimes[to].on_message(self.node, decode(wire))

        asyncio.get_running_loop().call_soon(deliver)

    def is_reachable(self, to: str) -> bool:
        return self.net.link(self.node, to)

    def status(self) -> dict[str, dict[str, object]]:
        return {}


@pytest.fixture
async def cluster() -> AsyncIterator[FakeNetwork]:
    net = FakeNetwork()
    for node in NODES:
        replica = Replica(node, MemoryStore(), HybridClock(node))
        runtime = NodeRuntime(node, NODES, replica, net.transport(node), SECRET)  # type: ignore[arg-type]
        net.runtimes[node] = runtime
        await runtime.start()
    yield net
    for runtime in net.runtimes.values():
        await runtime.close()


def write(
    key: bytes,
    value: bytes,
    level: str = "quorum",
    context: tuple[ContextEntry, ...] = (),
    keyspace: str = "default",
    deleted: bool = False,
    timeout_ms: int = 1_000,
    idempotency_key: str = "",
) -> WriteRequest:
    return WriteRequest(
        keyspace,
        key,
        value,
        "text/plain",
        deleted,
        level,
        None,
        timeout_ms,
        "fsync",
        context,
        None,
        False,
        idempotency_key,
        b"digest-" + value,
    )


def read(
    key: bytes, level: str = "quorum", context: tuple[ContextEntry, ...] = (), timeout_ms: int = 1_000
) -> ReadRequest:
    return ReadRequest("default", key, level, None, timeout_ms, context)


def context_after(
    outcome: WriteOutcome | ReadOutcome, key: bytes, before: tuple[ContextEntry, ...] = ()
) -> tuple[ContextEntry, ...]:
    assert outcome.version is not None
    return remember(before, scoped_key("default", key), outcome.version)


async def test_quorum_write_is_read_at_quorum_through_every_node(cluster: FakeNetwork) -> None:
    out = await cluster.runtimes["n1"].put(write(b"k", b"v1"))
    assert out.status == "ok" and len(out.acks) >= 2 and out.achieved in ("quorum", "all")
    for node in NODES:
        got = await cluster.runtimes[node].get(read(b"k"))
        assert got.status == "ok" and [s.value for s in got.siblings] == [b"v1"]


async def test_concurrent_blind_writes_become_siblings_and_a_context_write_resolves_them(cluster: FakeNetwork) -> None:
    a, b = await asyncio.gather(
        cluster.runtimes["n1"].put(write(b"k", b"a")), cluster.runtimes["n2"].put(write(b"k", b"b"))
    )
    assert a.status == b.status == "ok"
    got = await cluster.runtimes["n3"].get(read(b"k", "all"))
    assert sorted(s.value for s in got.siblings) == [b"a", b"b"]
    resolved = await cluster.runtimes["n3"].put(write(b"k", b"ab", context=context_after(got, b"k")))
    assert resolved.status == "ok"
    final = await cluster.runtimes["n1"].get(read(b"k", "all"))
    assert [s.value for s in final.siblings] == [b"ab"]


async def test_lww_keyspace_keeps_the_later_write(cluster: FakeNetwork) -> None:
    created = await cluster.runtimes["n1"].create_keyspace(KeyspaceDef("last", 3, "lww"), 1_000)
    assert created.status == "created"
    await cluster.runtimes["n1"].put(write(b"k", b"first", keyspace="last"))
    await cluster.runtimes["n2"].put(write(b"k", b"second", keyspace="last"))
    got = await cluster.runtimes["n3"].get(ReadRequest("last", b"k", "all", None, 1_000, ()))
    assert [s.value for s in got.siblings] == [b"second"]


async def test_quorum_write_survives_an_isolated_replica_and_read_repair_fixes_it(cluster: FakeNetwork) -> None:
    cluster.isolate("n3")
    out = await cluster.runtimes["n1"].put(write(b"k", b"v"))
    assert out.status == "ok" and "n3" not in out.acks
    assert await cluster.runtimes["n3"].replica.read("default", b"k") is None
    cluster.heal()
    got = await cluster.runtimes["n2"].get(read(b"k", "all"))
    assert [s.value for s in got.siblings] == [b"v"]
    n3 = cluster.runtimes["n3"].replica
    await until(lambda: n3.read("default", b"k"), "read repair brings the value to n3")


async def until(probe: Callable[[], Awaitable[object]], what: str, timeout_s: float = 2.0) -> None:
    """Poll `probe` until it returns something other than None (what was awaited is named)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        if await probe() is not None:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting until {what}")


async def test_all_is_unavailable_before_it_starts_when_a_replica_is_cut(cluster: FakeNetwork) -> None:
    cluster.isolate("n3")
    out = await cluster.runtimes["n1"].put(write(b"k", b"v", level="all"))
    assert out.status == "unavailable"
    assert await cluster.runtimes["n1"].replica.read("default", b"k") is None  # surely not written


async def test_write_at_quorum_times_out_with_unknown_outcome_when_replies_never_come(cluster: FakeNetwork) -> None:
    # Reachable when checked, then the replies are lost: the coordinator stored it, W not met.
    net = cluster
    original = net.runtimes["n2"].on_message
    net.runtimes["n2"].on_message = lambda sender, msg: None  # type: ignore[method-assign]
    net.runtimes["n3"].on_message = lambda sender, msg: None  # type: ignore[method-assign]
    out = await net.runtimes["n1"].put(write(b"k", b"v", timeout_ms=100))
    assert out.status == "timeout" and out.acks == ("n1",) and out.required == 2
    net.runtimes["n2"].on_message = original  # type: ignore[method-assign]


async def test_causal_read_through_another_node_sees_the_sessions_write(cluster: FakeNetwork) -> None:
    cluster.isolate("n3")
    out = await cluster.runtimes["n1"].put(write(b"k", b"mine", level="causal"))
    assert out.status == "ok" and out.acks[0] == "n1"
    session = context_after(out, b"k")
    cluster.heal()
    got = await cluster.runtimes["n3"].get(read(b"k", "causal", session))
    assert got.status == "ok" and [s.value for s in got.siblings] == [b"mine"]


async def test_causal_read_waits_rather_than_return_stale_data(cluster: FakeNetwork) -> None:
    out = await cluster.runtimes["n1"].put(write(b"k", b"mine", level="causal"))
    session = context_after(out, b"k")
    cluster.isolate("n1")
    # Replication of the write to n2/n3 may or may not have happened; if not, the read must
    # not return a state without the session's write.
    got = await cluster.runtimes["n3"].get(read(b"k", "causal", session, timeout_ms=200))
    assert got.status == "timeout" or [s.value for s in got.siblings] == [b"mine"]


async def test_idempotent_retry_returns_the_first_outcome_and_mints_once(cluster: FakeNetwork) -> None:
    first = await cluster.runtimes["n2"].put(write(b"k", b"v", idempotency_key="op-1"))
    again = await cluster.runtimes["n3"].put(write(b"k", b"v", idempotency_key="op-1"))
    assert first.status == again.status == "ok" and first.version == again.version
    mismatch = await cluster.runtimes["n1"].put(write(b"k", b"other", idempotency_key="op-1"))
    assert mismatch.status == "idempotency_mismatch"
    got = await cluster.runtimes["n1"].get(read(b"k", "all"))
    assert [s.value for s in got.siblings] == [b"v"]


async def test_delete_writes_a_tombstone_that_reads_as_not_found(cluster: FakeNetwork) -> None:
    out = await cluster.runtimes["n1"].put(write(b"k", b"v"))
    deleted = await cluster.runtimes["n2"].put(write(b"k", b"", deleted=True, context=context_after(out, b"k")))
    assert deleted.status == "ok"
    got = await cluster.runtimes["n3"].get(read(b"k"))
    assert got.status == "not_found" and got.version is not None and got.version.counters


async def test_listing_merges_every_replica(cluster: FakeNetwork) -> None:
    for i in range(7):
        await cluster.runtimes[NODES[i % 3]].put(write(b"item/%d" % i, b"x"))
    await cluster.runtimes["n1"].put(write(b"other", b"x"))
    page = await cluster.runtimes["n2"].list_keys("default", b"item/", None, 5, 1_000)
    assert page.status == "ok" and list(page.keys) == [b"item/%d" % i for i in range(5)] and page.cursor == b"item/4"
    rest = await cluster.runtimes["n2"].list_keys("default", b"item/", page.cursor, 5, 1_000)
    assert list(rest.keys) == [b"item/5", b"item/6"] and rest.cursor is None


async def test_unknown_keyspace_and_r_above_n(cluster: FakeNetwork) -> None:
    out = await cluster.runtimes["n1"].put(write(b"k", b"v", keyspace="nope"))
    assert out.status == "no_keyspace"
    got = await cluster.runtimes["n1"].get(ReadRequest("default", b"k", Level.ONE.value, 4, 1_000, ()))
    assert got.status == "invalid"


def rounds_tickers() -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks() if t.get_name() == "titra-rounds-ticker" and not t.done()]


async def test_the_rounds_ticker_runs_only_while_rounds_are_in_flight(cluster: FakeNetwork) -> None:
    assert rounds_tickers() == [], "an idle node must not wake every tick"
    out = await cluster.runtimes["n1"].put(write(b"k", b"v", level="all"))
    assert out.status == "ok"
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while rounds_tickers():  # the round settles, then its ticker ends with it
        assert loop.time() < deadline, "the ticker outlived every round"
        await asyncio.sleep(0.005)  # the poll interval, not a wait for state
    # A round that needs its deadline still gets ticks: the write times out, it does not hang.
    for node in ("n2", "n3"):
        cluster.runtimes[node].on_message = lambda sender, msg: None  # type: ignore[method-assign]
    late = await cluster.runtimes["n1"].put(write(b"k2", b"v", timeout_ms=50))
    assert late.status == "timeout"


async def test_a_round_that_fails_on_a_tick_does_not_stop_the_others_deadlines(
    cluster: FakeNetwork, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(self: ReadRound, now_ms: int) -> list[object]:
        raise RuntimeError("a bug in one round")

    for node in ("n2", "n3"):
        cluster.runtimes[node].on_message = lambda sender, msg: None  # type: ignore[method-assign]
    monkeypatch.setattr(ReadRound, "on_tick", broken)
    reading = asyncio.ensure_future(cluster.runtimes["n1"].get(read(b"k", timeout_ms=50)))
    try:
        # Bounded: without the fix the write's deadline never comes and the put never returns.
        late = await asyncio.wait_for(cluster.runtimes["n1"].put(write(b"k2", b"v", timeout_ms=50)), 5)
        assert late.status == "timeout", "the write's deadline still came, though the read's round raises"
        assert "failed on a tick" in caplog.text
    finally:
        reading.cancel()
        await asyncio.gather(reading, return_exceptions=True)
