"""Hinted handoff: the bounded backlog, its replay and expiry, who keeps hints for which level,
and hinted writes on three node runtimes in one process.
"""

import sys
from dataclasses import replace
from pathlib import Path

import pytest

from cluster.hints import Drop, HintBacklog, HintedWriteRound, HintKey, HintPlan, Replay, plan_hints
from cluster.limits import HINT_DEFAULTS
from cluster.messages import HintStore, ReplicaMerge
from cluster.requests import KeyspaceDef, Level, ReadRequest
from cluster.rounds import Finish, Send
from cluster.siblings import decode_clock

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_anti_entropy import TEST_REPAIR, RuntimeNet, request, wait_for

LIMITS = replace(HINT_DEFAULTS, backlog_count_max=3, backlog_bytes_max=1_000, replay_in_flight_max=2)


def hint(i: int, target: str = "n3") -> HintKey:
    return HintKey(target, "default", b"k%d" % i)


def test_the_backlog_is_bounded_in_count_and_bytes_and_counts_refusals() -> None:
    backlog = HintBacklog(LIMITS)
    assert all(backlog.admit(hint(i), 100, 0) for i in range(3))
    assert not backlog.admit(hint(3), 100, 0), "count bound"
    assert backlog.admit(hint(0), 150, 5), "merging into a hint already held is not a new hint"
    assert (backlog.count, backlog.bytes, backlog.refused) == (3, 350, 1)
    backlog.remove(hint(1))
    assert not backlog.admit(hint(4), 800, 0), "bytes bound"
    assert backlog.admit(hint(4), 600, 0)
    assert backlog.refused == 2 and backlog.get(hint(0)) is not None and backlog.get(hint(0)).version == 1  # type: ignore[union-attr]


def test_replay_goes_to_reachable_targets_oldest_first_within_the_in_flight_bound() -> None:
    backlog = HintBacklog(LIMITS)
    backlog.admit(hint(2), 10, 200)
    backlog.admit(hint(1), 10, 100)
    backlog.admit(hint(9, "n2"), 10, 100)
    assert backlog.on_tick(0, 1_000, lambda node: False) == []
    effects = backlog.on_tick(10, 1_000, lambda node: node == "n3")
    assert [e.hint for e in effects if isinstance(e, Replay)] == [hint(2), hint(1)]
    assert backlog.on_tick(20, 1_000, lambda node: True) == [], "two in flight already"
    first = effects[0]
    assert isinstance(first, Replay)
    assert backlog.on_ack(first.delivery_id, True) == [Drop(hint(2), 0, "delivered")]
    assert backlog.on_ack(first.delivery_id, True) == [], "a duplicate acknowledgement"


def test_a_write_merged_during_delivery_keeps_the_hint() -> None:
    backlog = HintBacklog(LIMITS)
    backlog.admit(hint(1), 10, 0)
    (replay,) = backlog.on_tick(0, 10, lambda node: True)
    assert isinstance(replay, Replay)
    backlog.admit(hint(1), 12, 5)  # a later write for n3 merged into the hint
    assert backlog.on_ack(replay.delivery_id, True) == []
    (again,) = backlog.on_tick(10, 20, lambda node: True)
    assert isinstance(again, Replay) and again.hint == hint(1)


def test_unacknowledged_deliveries_are_sent_again_and_old_hints_expire() -> None:
    settings = replace(LIMITS, replay_ack_timeout_ms=100, ttl_ms=1_000)
    backlog = HintBacklog(settings)
    backlog.admit(hint(1), 10, 0)
    assert len(backlog.on_tick(0, 0, lambda node: True)) == 1
    assert backlog.on_tick(50, 50, lambda node: True) == []
    assert len(backlog.on_tick(150, 150, lambda node: True)) == 1, "resent after the ack timeout"
    assert backlog.on_tick(200, 1_000, lambda node: False) == [Drop(hint(1), 0, "expired")]
    assert backlog.expired == 1 and backlog.on_tick(300, 2_000, lambda node: True) == []


def test_replay_is_rate_limited_in_bytes() -> None:
    backlog = HintBacklog(replace(LIMITS, replay_rate_bytes_per_s=100, replay_in_flight_max=100))
    for i in range(3):
        backlog.admit(hint(i), 200, i)
    sent = [e for e in backlog.on_tick(0, 0, lambda node: True) if isinstance(e, Replay)]
    assert len(sent) == 1
    for e in sent:
        backlog.on_ack(e.delivery_id, True)
    assert backlog.on_tick(900, 0, lambda node: True) == [], "still paying for the first 200 bytes"
    assert len(backlog.on_tick(3_100, 0, lambda node: True)) == 1


PREF = ["n1", "n2", "n3"]


@pytest.mark.parametrize(
    ("level", "w", "sloppy", "reachable", "beyond", "expected", "copies"),
    [
        (Level.QUORUM, 2, False, ["n1", "n2", "n3"], [], HintPlan(), 3),
        (Level.QUORUM, 2, False, ["n1", "n2"], ["n4"], HintPlan(("n3",)), 2),  # kept by the coordinator
        (Level.QUORUM, 2, False, ["n1"], ["n4"], HintPlan(("n2", "n3")), 1),  # 503: hints do not count
        (Level.QUORUM, 2, True, ["n1"], ["n4", "n5"], HintPlan((), (("n2", "n4"), ("n3", "n5")), True), 3),
        (Level.ALL, 3, True, ["n1", "n2"], [], HintPlan(("n3",), (), True), 2),  # no fallback left
        (Level.ONE, 1, False, [], [], HintPlan(("n1", "n2", "n3"), (), True, True), 1),  # stand-in
        (Level.CAUSAL, 1, False, [], [], HintPlan(("n1", "n2", "n3")), 0),  # only `one` may
        (Level.QUORUM, 2, True, [], ["n5"], HintPlan(("n1", "n3"), (("n2", "n5"),), True, True), 2),
    ],
)
def test_who_keeps_hints(
    level: Level, w: int, sloppy: bool, reachable: list[str], beyond: list[str], expected: HintPlan, copies: int
) -> None:
    plan = plan_hints(level, w, sloppy, PREF, reachable, beyond, room=True)
    assert plan == expected and plan.copies(len(reachable)) == copies


def test_a_full_backlog_cannot_stand_in() -> None:
    plan = plan_hints(Level.ONE, 1, False, PREF, [], [], room=False)
    assert plan.copies(0) == 0


def test_a_sloppy_round_counts_hint_acknowledgements_toward_w() -> None:
    plan = HintPlan((), (("n2", "n4"),), True)
    round_ = HintedWriteRound(7, "default", b"k", "n1", ("n1", "n2", "n3"), 2, 1_000, "fsync", plan=plan)
    from cluster.dvv import DVVSet

    effects = round_.start(DVVSet())
    sends = [e for e in effects if isinstance(e, Send)]
    assert {(s.to, type(s.message)) for s in sends} == {("n2", ReplicaMerge), ("n3", ReplicaMerge), ("n4", HintStore)}
    assert round_.on_hint_ack("n5", True) == [], "not a fallback of this round"
    (finish,) = round_.on_hint_ack("n4", True)
    assert isinstance(finish, Finish) and finish.status == "ok" and finish.replicas == ("n1",)
    assert round_.hinted == ["n2@n4"] and round_.counted() == 2


def test_a_sloppy_round_fails_once_too_many_refused() -> None:
    plan = HintPlan((), (("n2", "n4"), ("n3", "n5")), True)
    round_ = HintedWriteRound(7, "default", b"k", "n1", ("n1", "n2", "n3"), 3, 1_000, "fsync", plan=plan)
    from cluster.dvv import DVVSet

    round_.start(DVVSet())
    assert round_.on_hint_ack("n4", False, "the hint backlog is full") == []
    assert round_.on_ack("n2", False, "down") == []
    (finish,) = round_.on_ack("n3", False, "down")
    assert isinstance(finish, Finish) and finish.status == "timeout" and "backlog is full" in finish.message


# --- On three runtimes ---------------------------------------------------------------------------


async def single_replica_net() -> tuple[RuntimeNet, str, str]:
    """A keyspace with N=1: returns the net, the replica of key b"k" and another node."""
    net = await RuntimeNet().start()
    created = await net.runtimes["n1"].create_keyspace(KeyspaceDef("solo", 1, "siblings"), 1_000)
    assert created.status == "created"
    replica = net.runtimes["n1"].ring.preference_list(b"solo\x00k", 1)[0]
    other = next(node for node in net.runtimes if node != replica)
    return net, replica, other


async def test_one_succeeds_on_a_hint_when_no_replica_is_reachable_and_the_hint_is_delivered() -> None:
    net, replica, other = await single_replica_net()
    try:
        net.isolate(replica)
        quorum = await net.runtimes[other].put(request(b"k", b"v", "quorum", keyspace="solo"))
        assert quorum.status == "unavailable"
        out = await net.runtimes[other].put(request(b"k", b"v", "one", keyspace="solo"))
        assert out.status == "ok" and out.acks == () and out.fallbacks == (f"{replica}@{other}",)
        assert out.achieved == "all", "N=1: the one copy (a hint) meets every level"
        assert net.runtimes[other].hints.backlog.count == 1
        net.heal()

        async def delivered() -> bool:
            stored = await net.runtimes[replica].replica.read("solo", b"k")
            return stored is not None and net.runtimes[other].hints.backlog.count == 0

        await wait_for(delivered, "the hint reached the replica and was dropped")
        stored = await net.runtimes[replica].replica.read("solo", b"k")
        assert stored is not None and [s.value for s in decode_clock(stored).entries[0].values] == [b"v"]
        assert net.runtimes[other].hints.backlog.delivered == 1
    finally:
        await net.close()


async def test_sloppy_quorum_counts_a_fallback_hint() -> None:
    net = await RuntimeNet().start()
    try:
        await net.runtimes["n1"].create_keyspace(KeyspaceDef("pair", 2, "siblings"), 1_000)
        first, second = net.runtimes["n1"].ring.preference_list(b"pair\x00k", 2)
        third = next(node for node in net.runtimes if node not in (first, second))
        net.cut.add(frozenset((second, first)))
        net.cut.add(frozenset((second, third)))
        strict = await net.runtimes[first].put(request(b"k", b"v", "quorum", keyspace="pair"))
        assert strict.status == "unavailable"
        out = await net.runtimes[first].put(request(b"k", b"v", "quorum", keyspace="pair", sloppy=True))
        assert out.status == "ok" and out.acks == (first,) and out.fallbacks == (f"{second}@{third}",)
        assert net.runtimes[third].hints.backlog.count == 1
        net.heal()

        async def delivered() -> bool:
            return net.runtimes[third].hints.backlog.count == 0

        await wait_for(delivered, "the fallback delivered its hint")
        got = await net.runtimes[second].get(ReadRequest("pair", b"k", "one", None, 1_000, ()))
        assert [s.value for s in got.siblings] == [b"v"]
    finally:
        await net.close()


async def test_a_full_backlog_refuses_hints_and_one_is_unavailable() -> None:
    net = RuntimeNet()
    await net.start(replace(TEST_REPAIR, hints=replace(TEST_REPAIR.hints, backlog_count_max=0)))
    try:
        created = await net.runtimes["n1"].create_keyspace(KeyspaceDef("solo", 1, "siblings"), 1_000)
        assert created.status == "created"
        replica = net.runtimes["n1"].ring.preference_list(b"solo\x00k", 1)[0]
        other = next(node for node in net.runtimes if node != replica)
        net.isolate(replica)
        out = await net.runtimes[other].put(request(b"k", b"v", "one", keyspace="solo"))
        assert out.status == "unavailable"
    finally:
        await net.close()
