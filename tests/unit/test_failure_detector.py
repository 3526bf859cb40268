"""The phi-accrual failure detector, on virtual time only (no clock is read here)."""

import dataclasses
import itertools
import math
import random

import pytest

from cluster.failure_detector import Liveness, PhiAccrualDetector, silence_for_phi_ms
from cluster.limits import MEMBERSHIP_DEFAULTS

# Heartbeats every 1 s, as Cassandra gossips; the guards scaled the way the defaults scale them.
ONE_SECOND = dataclasses.replace(
    MEMBERSHIP_DEFAULTS,
    gossip_interval_ms=1_000,
    bootstrap_interval_ms=2_000,
    arrival_interval_ms_max=8_000,
    arrival_mean_ms_min=1_000,
)


def beating(detector: PhiAccrualDetector, node: str, interval_ms: int, count: int, start_ms: int = 0) -> int:
    """`count` heartbeats of `node` every `interval_ms`; returns the time of the last one."""
    now = start_ms
    detector.watch(node, now)
    for _ in range(count):
        now += interval_ms
        detector.heartbeat(node, now)
    return now


def first_time(detector: PhiAccrualDetector, node: str, status: Liveness, after_ms: int, step_ms: int = 10) -> int:
    now = after_ms
    while detector.liveness(node, now) is not status:
        now += step_ms
        assert now < after_ms + 3_600_000, f"{node} never became {status}"
    return now


def test_phi_grows_with_silence_in_proportion() -> None:
    detector = PhiAccrualDetector(ONE_SECOND)
    last = beating(detector, "n2", 1_000, 1_000)
    phis = [detector.phi("n2", last + silence) for silence in range(0, 30_000, 1_000)]
    assert phis[0] == 0.0
    assert all(a < b for a, b in itertools.pairwise(phis)), "phi only grows while nothing arrives"
    # Exponential inter-arrivals: phi = t / (mean * ln 10), so 10 s of silence at a 1 s mean is 4.34.
    assert detector.phi("n2", last + 10_000) == pytest.approx(10 / math.log(10), rel=1e-3)


def test_regular_heartbeats_keep_phi_low() -> None:
    detector = PhiAccrualDetector()
    rng = random.Random(7)
    now, worst = 0, 0.0
    detector.watch("n2", now)
    for _ in range(2_000):
        # The default cadence, 250 ms, with +-40% jitter (gossip relayed through other nodes).
        now += rng.randint(150, 350)
        worst = max(worst, detector.phi("n2", now))  # just before the heartbeat lands
        detector.heartbeat("n2", now)
        assert detector.liveness("n2", now) is Liveness.ALIVE
    assert worst < 1.0, f"a live peer reached phi {worst:.2f}"


def test_thresholds_map_to_statuses() -> None:
    detector = PhiAccrualDetector(ONE_SECOND)
    last = beating(detector, "n2", 1_000, 1_000)
    mean = detector.mean_interval_ms("n2")
    assert mean == pytest.approx(1_000)
    suspect_at = last + silence_for_phi_ms(ONE_SECOND.phi_suspect, 1_000)
    convict_at = last + silence_for_phi_ms(ONE_SECOND.phi_convict, 1_000)
    assert detector.liveness("n2", int(suspect_at) - 1) is Liveness.ALIVE
    assert detector.liveness("n2", math.ceil(suspect_at)) is Liveness.SUSPECT
    assert detector.liveness("n2", int(convict_at) - 1) is Liveness.SUSPECT
    assert detector.liveness("n2", math.ceil(convict_at)) is Liveness.DOWN
    assert detector.liveness("never-watched", last) is None and detector.phi("never-watched", last) == 0.0


def test_conviction_for_a_1_s_heartbeat_at_phi_8_takes_18_to_19_s_of_silence() -> None:
    """The documented range (docs/replication.md): 8 * ln 10 = 18.4 mean intervals after the last heartbeat."""
    rng = random.Random(2004)
    measured = []
    for _ in range(20):
        detector = PhiAccrualDetector(ONE_SECOND)
        now = 0
        detector.watch("n2", now)
        for _ in range(1_000):
            now += rng.randint(900, 1_100)
            detector.heartbeat("n2", now)
        measured.append(first_time(detector, "n2", Liveness.DOWN, now) - now)
    assert all(18_000 <= silence <= 19_000 for silence in measured), measured
    print(f"conviction after {min(measured)}..{max(measured)} ms of silence (1 s heartbeats, phi 8)")


def test_default_settings_convict_in_about_4_6_s() -> None:
    detector = PhiAccrualDetector()
    last = beating(detector, "n2", MEMBERSHIP_DEFAULTS.gossip_interval_ms, 200)
    silence = first_time(detector, "n2", Liveness.DOWN, last) - last
    assert 4_500 <= silence <= 4_700


def test_a_fresh_peer_is_not_convicted_at_once() -> None:
    detector = PhiAccrualDetector()
    detector.watch("n2", 0)
    # Never heard from: judged by the bootstrap interval (500 ms), so 8 * ln 10 * 500 = 9.2 s.
    assert detector.liveness("n2", 9_000) is not Liveness.DOWN
    assert detector.liveness("n2", 9_300) is Liveness.DOWN
    # Two heartbeats 5 ms apart do not make the mean 5 ms: it is floored at arrival_mean_ms_min.
    detector.watch("n3", 0)
    detector.heartbeat("n3", 5)
    detector.heartbeat("n3", 10)
    assert detector.liveness("n3", 10 + 4_000) is not Liveness.DOWN


def test_a_long_pause_is_not_learned_as_normal() -> None:
    detector = PhiAccrualDetector()
    detector.watch("n2", 0)
    for t in (250, 30_250, 30_500):
        detector.heartbeat("n2", t)
    # The 30 s gap (a partition) is above arrival_interval_ms_max and is not recorded: the mean stays
    # near the cadence (bootstrap 500, then 250, 250) instead of ~10 s, which would delay the next
    # conviction to minutes.
    assert detector.mean_interval_ms("n2") == pytest.approx((500 + 250 + 250) / 3)
    silence = first_time(detector, "n2", Liveness.DOWN, 30_500) - 30_500
    assert silence == pytest.approx(silence_for_phi_ms(8, 1_000 / 3), abs=10)


def test_watch_starts_a_new_window_and_forget_drops_it() -> None:
    detector = PhiAccrualDetector()
    last = beating(detector, "n2", 1_000, 50)
    assert detector.liveness("n2", last + 60_000) is Liveness.DOWN
    detector.watch("n2", last + 60_000)  # a restart: a new incarnation was gossiped
    assert detector.liveness("n2", last + 60_000) is Liveness.ALIVE
    assert detector.mean_interval_ms("n2") == MEMBERSHIP_DEFAULTS.bootstrap_interval_ms
    detector.forget("n2")
    assert not detector.watched("n2") and detector.liveness("n2", last) is None


def test_convicted_agrees_with_liveness_everywhere() -> None:
    """`convicted` is the write path's shortcut for `liveness(...) is Liveness.DOWN`."""
    rng = random.Random(7)
    for _ in range(200):
        detector = PhiAccrualDetector()
        now = rng.randrange(0, 10_000)
        detector.watch("p", now)
        for _ in range(rng.randrange(0, 30)):
            now += rng.choice([1, 50, 250, 260, 900, 2_500])
            detector.heartbeat("p", now)
        for silence in (0, 1, 100, 1_000, 2_000, 4_000, 4_600, 5_000, 20_000):
            at = now + silence
            assert detector.convicted("p", at) == (detector.liveness("p", at) is Liveness.DOWN)
    assert not PhiAccrualDetector().convicted("never-watched", 1_000_000)
