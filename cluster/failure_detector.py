"""The phi-accrual failure detector (Hayashibara, Défago, Yared and Katayama, SRDS 2004), as Cassandra uses it.

Pure: time comes in as `now_ms`, nothing here reads a clock. Rules:
- A peer's *heartbeat arrives* when gossip shows a newer heartbeat counter of that peer
  (cluster/membership.py reports it). Per peer we keep the last `arrival_window_count`
  intervals between arrivals.
- Inter-arrival times are modelled as exponential with the window's mean, as Cassandra's
  FailureDetector/ArrivalWindow do (the paper's normal distribution is too sure of itself when
  gossip delivers heartbeats in bursts). So after `t` ms of silence
      P(a heartbeat is still to come) = exp(-t / mean)
      phi = -log10(exp(-t / mean)) = t / (mean * ln 10)
  phi 1 means a 10% chance the peer is alive, phi 8 a 1e-8 chance.
- Silence needed to reach `phi`: `phi * ln 10 * mean` (`silence_for_phi_ms`). With heartbeats
  every 1 s and phi_convict 8 that is 18.4 s after the last heartbeat (Cassandra's well-known
  ~18 s); with Titra's default 250 ms gossip interval, 4.6 s.
- Guards against convicting on too little evidence: a window starts with one interval of
  `bootstrap_interval_ms` (Cassandra's fd_initial_value_ms, two gossip intervals); an interval
  above `arrival_interval_ms_max` is not recorded (Cassandra's fd_max_interval_ms), so a peer back
  from a pause is not slower to convict afterwards; and the mean never drops below
  `arrival_mean_ms_min`, so a burst of arrivals cannot make phi jump.
- Status: phi >= phi_convict is `down`, phi >= phi_suspect is `suspect`, else `alive`. A peer
  never watched has no status (None): the caller decides what an unknown peer means.
"""

import enum
import math
from collections import deque
from dataclasses import dataclass, field

from cluster.limits import MEMBERSHIP_DEFAULTS, MembershipDefaults

_LN10 = math.log(10)


class Liveness(enum.StrEnum):
    ALIVE = "alive"
    SUSPECT = "suspect"
    DOWN = "down"


def silence_for_phi_ms(phi: float, mean_interval_ms: float) -> float:
    """How long after the last heartbeat phi reaches `phi`, for a window whose mean is `mean_interval_ms`."""
    return phi * _LN10 * mean_interval_ms


@dataclass(slots=True)
class ArrivalWindow:
    """The recent heartbeat inter-arrival times of one peer (a bounded window and its running sum)."""

    last_arrival_ms: int
    window_count: int
    intervals: deque[int] = field(default_factory=deque)
    total_ms: int = 0

    def add_interval(self, interval_ms: int) -> None:
        assert interval_ms >= 0
        if len(self.intervals) == self.window_count:
            self.total_ms -= self.intervals.popleft()
        self.intervals.append(interval_ms)
        self.total_ms += interval_ms

    def mean_ms(self) -> float:
        assert self.intervals, "a window starts with its bootstrap interval"
        return self.total_ms / len(self.intervals)


class PhiAccrualDetector:
    def __init__(self, defaults: MembershipDefaults = MEMBERSHIP_DEFAULTS) -> None:
        self.defaults = defaults
        self._windows: dict[str, ArrivalWindow] = {}

    def watch(self, node: str, now_ms: int) -> None:
        """Start (or restart, after a new incarnation) watching `node`, as if it was heard from now."""
        window = ArrivalWindow(now_ms, self.defaults.arrival_window_count)
        window.add_interval(self.defaults.bootstrap_interval_ms)
        self._windows[node] = window

    def forget(self, node: str) -> None:
        self._windows.pop(node, None)

    def watched(self, node: str) -> bool:
        return node in self._windows

    def heartbeat(self, node: str, now_ms: int) -> None:
        """A heartbeat of `node` arrived at `now_ms`."""
        window = self._windows.get(node)
        if window is None:
            self.watch(node, now_ms)
            return
        interval = now_ms - window.last_arrival_ms
        if interval < 0:  # arrivals are reported in time order; a stale `now` is ignored
            return
        window.last_arrival_ms = now_ms
        if interval <= self.defaults.arrival_interval_ms_max:
            window.add_interval(interval)

    def mean_interval_ms(self, node: str) -> float | None:
        window = self._windows.get(node)
        if window is None:
            return None
        return max(window.mean_ms(), float(self.defaults.arrival_mean_ms_min))

    def last_arrival_ms(self, node: str) -> int | None:
        window = self._windows.get(node)
        return None if window is None else window.last_arrival_ms

    def phi(self, node: str, now_ms: int) -> float:
        """Suspicion of `node` at `now_ms`; 0.0 for a node not watched."""
        window = self._windows.get(node)  # one lookup: every replicated write asks, per replica
        if window is None:
            return 0.0
        mean = max(window.mean_ms(), float(self.defaults.arrival_mean_ms_min))  # mean_interval_ms
        silence = max(0, now_ms - window.last_arrival_ms)
        return silence / (mean * _LN10)

    def convicted(self, node: str, now_ms: int) -> bool:
        """`liveness(node, now_ms) is Liveness.DOWN`, without building the Liveness."""
        return self.phi(node, now_ms) >= self.defaults.phi_convict

    def liveness(self, node: str, now_ms: int) -> Liveness | None:
        if node not in self._windows:
            return None
        phi = self.phi(node, now_ms)
        if phi >= self.defaults.phi_convict:
            return Liveness.DOWN
        if phi >= self.defaults.phi_suspect:
            return Liveness.SUSPECT
        return Liveness.ALIVE
