"""The fault schedule of a chaos run: which fault, against which nodes, when; derived from a seed.

Pure (no clock, no `random`): the same (nemesis, nodes, seed, timing) always gives the same
schedule, so a failing run's faults replay exactly (FoundationDB / TigerBeetle VOPR: one seed).
Rules:
- A schedule is a list of `Step`s in time order, alternating start / stop of one fault at a time;
  it is empty or ends with a stop (a heal), and every stop comes at least `fault_s` after its start.
- Between a heal and the next fault there is a quiet gap of (interval_s - fault_s), jittered by
  +/-25%, so faults come about every `interval_s` (Jepsen's nemesis generators: start, sleep, stop).
- Every step lies within [0, duration_s].
The partition shapes are Jepsen's (jepsen.nemesis): isolate one node, split into halves, a bridge
node that sees both halves, and `majorities-ring`, where every node sees a majority but no two
nodes see the same one. A partition is kept as the set of cut links (unordered node pairs).
"""

from dataclasses import field
from typing import Any, Literal

from cluster.frozen import frozen

PARTITION_SHAPES = ("isolate-one", "halves", "bridge", "majorities-ring")
NEMESES = ("none", *(f"partition-{shape}" for shape in PARTITION_SHAPES), "kill", "pause", "netem")
NETEM_DELAY_MS = 200
NETEM_LOSS_PERCENT = 20
JITTER = 0.25  # the quiet gap varies by this fraction either way

_MASK64 = (1 << 64) - 1


class Rng:
    """splitmix64 (Steele, Lea, Flood: "Fast splittable pseudorandom number generators", 2014):
    a tiny seeded generator, so this module needs no global `random`."""

    def __init__(self, seed: int) -> None:
        self._state = seed & _MASK64

    def next_u64(self) -> int:
        self._state = (self._state + 0x9E3779B97F4A7C15) & _MASK64
        z = self._state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        return z ^ (z >> 31)

    def uniform(self, low: float, high: float) -> float:
        return low + (high - low) * (self.next_u64() >> 11) / float(1 << 53)

    def below(self, n: int) -> int:
        assert n > 0
        return self.next_u64() % n  # the modulo bias is below 2^-50 for our small n

    def shuffled(self, items: tuple[str, ...]) -> tuple[str, ...]:
        out = list(items)
        for i in range(len(out) - 1, 0, -1):  # Fisher-Yates
            j = self.below(i + 1)
            out[i], out[j] = out[j], out[i]
        return tuple(out)


@frozen
class Fault:
    kind: Literal["partition", "kill", "pause", "netem"]
    name: str  # the nemesis name, e.g. "partition-halves"
    targets: tuple[str, ...] = ()  # the nodes a kill / pause / netem acts on
    groups: tuple[tuple[str, ...], ...] = ()  # partition: the components, for people
    cuts: tuple[tuple[str, str], ...] = ()  # partition: every cut link (a, b) with a < b
    note: str = ""

    def cut_peers(self, node: str) -> tuple[str, ...]:
        """The nodes `node` must not reach while this partition holds."""
        return tuple(sorted({b for a, b in self.cuts if a == node} | {a for a, b in self.cuts if b == node}))

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "nemesis": self.name}
        if self.targets:
            out["targets"] = list(self.targets)
        if self.kind == "partition":
            out["groups"] = [list(g) for g in self.groups]
            out["cuts"] = [list(c) for c in self.cuts]
        if self.kind == "netem":
            out["delay_ms"] = NETEM_DELAY_MS
            out["loss_percent"] = NETEM_LOSS_PERCENT
        if self.note:
            out["note"] = self.note
        return out


@frozen
class Step:
    at_s: float  # seconds from the start of the run
    action: Literal["start", "stop"]
    fault: Fault = field(compare=True)


def _link(a: str, b: str) -> tuple[str, str]:
    return (a, b) if a < b else (b, a)


def _cuts_between(side_a: tuple[str, ...], side_b: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted({_link(a, b) for a in side_a for b in side_b}))


def partition(shape: str, nodes: tuple[str, ...], rng: Rng) -> Fault:
    """One partition of `shape` over `nodes` (at least 3), its roles chosen by `rng`."""
    assert shape in PARTITION_SHAPES, shape
    assert len(nodes) >= 3, "a partition needs at least three nodes"
    order = rng.shuffled(nodes)
    name = f"partition-{shape}"
    if shape == "isolate-one":
        alone, rest = order[:1], tuple(sorted(order[1:]))
        return Fault("partition", name, alone, (alone, rest), _cuts_between(alone, rest))
    if shape == "halves":
        # The smaller half first: {n1} | {n2, n3} for three nodes, {n1, n2} | {n3, n4, n5} for five.
        small, big = tuple(sorted(order[: len(order) // 2])), tuple(sorted(order[len(order) // 2 :]))
        return Fault("partition", name, (), (small, big), _cuts_between(small, big))
    if shape == "bridge":
        bridge, rest = order[0], order[1:]
        left, right = tuple(sorted(rest[: len(rest) // 2])), tuple(sorted(rest[len(rest) // 2 :]))
        note = f"{bridge} is the bridge: it sees both sides, which do not see each other"
        return Fault("partition", name, (bridge,), (left, (bridge,), right), _cuts_between(left, right), note)
    # majorities-ring: nodes on a ring, each links only to its nearest neighbours, enough of them
    # that it sees a majority (itself included).
    n = len(order)
    reach = (n // 2 + 1) // 2  # neighbours each side, so that 1 + 2 * reach >= n // 2 + 1
    linked = {_link(order[i], order[(i + d) % n]) for i in range(n) for d in range(1, reach + 1)}
    every = {_link(a, b) for a in order for b in order if a != b}
    cuts = tuple(sorted(every - linked))
    views = tuple(tuple(sorted({order[(i + d) % n] for d in range(-reach, reach + 1)})) for i in range(n))
    note = f"ring order {', '.join(order)}: every node sees itself and {reach} neighbour(s) each side"
    if not cuts:
        note = f"degenerate with {n} nodes: each node's ring neighbours are all the others, so nothing is cut"
    return Fault("partition", name, (), views, cuts, note)


def fault_for(nemesis: str, nodes: tuple[str, ...], rng: Rng) -> Fault:
    if nemesis.startswith("partition-"):
        return partition(nemesis.removeprefix("partition-"), nodes, rng)
    target = (nodes[rng.below(len(nodes))],)
    if nemesis == "kill":
        return Fault("kill", nemesis, target, note="SIGKILL the node's container, later start it again")
    if nemesis == "pause":
        return Fault("pause", nemesis, target, note="freeze every process of the container (SIGSTOP-like)")
    if nemesis == "netem":
        return Fault("netem", nemesis, target)
    raise ValueError(f"unknown nemesis {nemesis!r}; one of {', '.join(NEMESES)}")


def build_schedule(
    nemesis: str,
    nodes: tuple[str, ...],
    seed: int,
    duration_s: float,
    interval_s: float = 10.0,
    fault_s: float = 5.0,
) -> list[Step]:
    """Faults about every `interval_s`, each held `fault_s`, all healed by `duration_s`."""
    if nemesis not in NEMESES:
        raise ValueError(f"unknown nemesis {nemesis!r}; one of {', '.join(NEMESES)}")
    if not 0 < fault_s < interval_s:
        raise ValueError(f"need 0 < fault_s ({fault_s}) < interval_s ({interval_s})")
    if nemesis == "none":
        return []
    rng = Rng(seed)
    quiet_s = interval_s - fault_s
    steps: list[Step] = []
    now = 0.0
    while True:
        start = now + quiet_s * rng.uniform(1 - JITTER, 1 + JITTER)
        stop = start + fault_s
        if stop > duration_s:
            return steps
        fault = fault_for(nemesis, nodes, rng)
        steps += [Step(round(start, 3), "start", fault), Step(round(stop, 3), "stop", fault)]
        now = stop
