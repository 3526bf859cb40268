"""What a simulated run does besides its seed: one frozen dataclass of options, and the fault plan.

Pure (no clock, no `random`: randomness comes in as an `Rng`). FoundationDB's simulator and
TigerBeetle's VOPR make a run a function of (seed, options); so does this: `FaultOptions` is
everything a run depends on, it round-trips through JSON (the replay command carries it), and
`plan_faults` turns options and a seeded generator into the timed list of partitions and crashes.

Rules of the plan:
- Steps are in time order and within [0, duration_ms). Partitions and crashes are independent
  schedules, merged; at most one partition and one crash are in force at a time.
- A partition starts about every `partition_every_ms` (jittered +/-50%) and lasts
  `partition_duration_ms`; its shape is drawn from `partition_shapes` (groups of nodes; messages
  between groups are dropped). A crash starts about every `crash_every_ms` and the node restarts
  after `crash_downtime_ms` with the same store.
- Everything still in force at `duration_ms` is healed by the caller (the final heal).
"""

import json
from dataclasses import asdict, fields, replace
from typing import Any, Literal, Protocol

from cluster.frozen import frozen

PARTITION_SHAPES = ("isolate_one", "halves", "singletons")
LEVELS = ("one", "quorum", "all", "causal")


class Rng(Protocol):
    """The part of `random.Random` the plan uses."""

    def random(self) -> float: ...

    def uniform(self, a: float, b: float) -> float: ...

    def randrange(self, start: int, stop: int | None = None, step: int = 1) -> int: ...


@frozen
class FaultOptions:
    """Every knob of a simulated run. Defaults are the CI run: 3 nodes, 10 virtual seconds of load and faults."""

    # The cluster and the workload.
    nodes: int = 3
    duration_ms: int = 10_000  # load and faults; then the final heal and the quiet period
    clients: int = 3
    keys: int = 6
    think_ms_min: int = 20  # a client's pause between operations
    think_ms_max: int = 300
    write_ratio: float = 0.55
    delete_ratio: float = 0.15  # the rest are reads
    levels: tuple[str, ...] = LEVELS
    # Writes sent with `sloppy=true` (Dynamo's sloppy quorum: hints on fallback nodes count toward W);
    # only a cluster with more nodes than replicas per key has fallbacks.
    sloppy_rate: float = 0.2
    request_timeout_ms: int = 500
    # The network (every message between two nodes; a node's messages to itself are never faulted).
    drop_rate: float = 0.05
    duplicate_rate: float = 0.03
    delay_ms_min: int = 0
    delay_ms_max: int = 30  # delays are drawn per message, so messages overtake each other
    reorder: bool = True  # False: per-link FIFO, like one TCP connection
    partition_every_ms: int = 3_000  # 0: no partitions
    partition_duration_ms: int = 1_000
    partition_shapes: tuple[str, ...] = PARTITION_SHAPES
    # Processes and disks.
    crash_restart: bool = True  # a node's process dies and restarts over the same (surviving) store
    crash_every_ms: int = 4_000
    crash_downtime_ms: int = 400
    # A restarted node also gets messages sent to its previous incarnation (the real transport queues
    # messages while a peer is disconnected and flushes them on reconnect); False: the connection died.
    deliver_across_restart: bool = True
    store_fail_rate: float = 0.01  # a write to a node's store raises before it changes anything ...
    # ... or, when fatal, as the WAL store's StoreFailed: the write may have landed, and the process
    # dies and restarts `crash_downtime_ms` later (a WAL store refuses writes after an fsync error).
    store_fail_fatal: bool = False
    store_stall_rate: float = 0.02  # a write to a node's store waits first ...
    store_stall_ms_max: int = 50  # ... up to this long
    clock_skew_ms_max: int = 100  # each node's wall clock is off by up to this much, either way
    # Background repair, at simulation speed (production: cluster/limits.py). The grace period is short
    # so that tombstones are purged within a run, where a resurrection would show.
    anti_entropy_interval_ms: int = 1_000
    tombstone_grace_ms: int = 5_000
    hint_ttl_ms: int = 4_000  # below the grace period: an expired hint may not outlive a tombstone
    # After the final heal: how long background repair may take to converge (polled, not slept).
    quiet_ms_max: int = 20_000
    # A deliberately broken cluster, to prove the checks can fail: anti-entropy and hinted handoff
    # off, and every replication and repair message (ReplicaMerge, hint and anti-entropy messages,
    # whatever the runtime adds later) dropped, read repair's included.
    sabotage_no_repair: bool = False

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ValueError("; ".join(problems))

    def problems(self) -> list[str]:
        out: list[str] = []
        if not 1 <= self.nodes <= 9:
            out.append("nodes must be 1..9")
        for name in ("drop_rate", "duplicate_rate", "store_fail_rate", "store_stall_rate", "sloppy_rate"):
            if not 0.0 <= getattr(self, name) < 1.0:
                out.append(f"{name} must be in [0, 1)")
        if not 0.0 <= self.write_ratio + self.delete_ratio <= 1.0 or min(self.write_ratio, self.delete_ratio) < 0:
            out.append("write_ratio + delete_ratio must be in [0, 1]")
        pairs = (("delay_ms_min", "delay_ms_max"), ("think_ms_min", "think_ms_max"))
        for low, high in pairs:
            if not 0 <= getattr(self, low) <= getattr(self, high):
                out.append(f"need 0 <= {low} <= {high}")
        if self.think_ms_max <= 0:
            out.append("think_ms_max must be positive (clients would spin in zero virtual time)")
        if not 0 < self.hint_ttl_ms < self.tombstone_grace_ms:
            out.append("hint_ttl_ms must be in (0, tombstone_grace_ms): an old hint would resurrect a purged key")
        names = ("duration_ms", "clients", "keys", "request_timeout_ms", "quiet_ms_max", "anti_entropy_interval_ms")
        for name in names:
            if getattr(self, name) <= 0:
                out.append(f"{name} must be positive")
        if self.partition_every_ms and not 0 < self.partition_duration_ms < self.partition_every_ms:
            out.append("partition_duration_ms must be in (0, partition_every_ms)")
        if self.crash_restart and not 0 < self.crash_downtime_ms < self.crash_every_ms:
            out.append("crash_downtime_ms must be in (0, crash_every_ms)")
        if bad := sorted(set(self.partition_shapes) - set(PARTITION_SHAPES)):
            out.append(f"unknown partition shapes {bad}; known: {list(PARTITION_SHAPES)}")
        if self.partition_every_ms and not self.partition_shapes:
            out.append("partitions need at least one shape")
        if not self.levels or (bad := sorted(set(self.levels) - set(LEVELS))):
            out.append(f"levels must be a non-empty subset of {list(LEVELS)}")
        return out

    def to_json(self) -> str:
        """Compact, keys sorted: the `--options` of a replay command."""
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @staticmethod
    def from_json(text: str, base: "FaultOptions | None" = None) -> "FaultOptions":
        """Options from JSON; fields left out keep `base`'s (default: the defaults). Raises ValueError."""
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("options must be a JSON object")
        defaults = FaultOptions()
        if unknown := sorted(set(data) - {f.name for f in fields(FaultOptions)}):
            raise ValueError(f"unknown options {unknown}")
        values: dict[str, Any] = asdict(base or defaults)
        for name, given in data.items():
            expected = type(getattr(defaults, name))
            value = given
            if isinstance(value, list):
                value = tuple(value)
                if not all(isinstance(item, str) for item in value):
                    raise ValueError(f"option {name} must be a list of strings")
            if expected is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
                raise ValueError(f"option {name} must be {expected.__name__}, not {type(value).__name__}")
            values[name] = value
        return FaultOptions(**values)

    def healed(self) -> "FaultOptions":
        """The same run without faults: the quiet period after the final heal."""
        return replace(self, drop_rate=0.0, duplicate_rate=0.0, store_fail_rate=0.0, store_stall_rate=0.0)


@frozen
class FaultStep:
    at_ms: int
    kind: Literal["partition", "heal", "crash", "restart"]
    groups: tuple[tuple[str, ...], ...] = ()  # partition: nodes in the same group reach each other
    node: str = ""  # crash / restart

    def describe(self) -> str:
        if self.kind == "partition":
            return "partition " + " | ".join(",".join(group) for group in self.groups)
        return f"{self.kind} {self.node}".strip()


def partition_groups(shape: str, nodes: tuple[str, ...], rng: Rng) -> tuple[tuple[str, ...], ...]:
    """Jepsen's partition shapes as groups of nodes; groups and their members sorted."""
    order = _shuffled(nodes, rng)
    if shape == "isolate_one":
        groups = [order[:1], order[1:]]
    elif shape == "halves":
        cut = len(order) // 2 if len(order) > 2 else 1
        groups = [order[:cut], order[cut:]]
    elif shape == "singletons":
        groups = [(node,) for node in order]
    else:
        raise ValueError(f"unknown partition shape {shape!r}")
    return tuple(sorted(tuple(sorted(group)) for group in groups if group))


def plan_faults(options: FaultOptions, nodes: tuple[str, ...], rng: Rng) -> list[FaultStep]:
    steps: list[FaultStep] = []
    if options.partition_every_ms and len(nodes) > 1:
        for start in _windows(options.partition_every_ms, options.partition_duration_ms, options.duration_ms, rng):
            shape = options.partition_shapes[rng.randrange(len(options.partition_shapes))]
            steps.append(FaultStep(start, "partition", partition_groups(shape, nodes, rng)))
            steps.append(FaultStep(start + options.partition_duration_ms, "heal"))
    if options.crash_restart:
        for start in _windows(options.crash_every_ms, options.crash_downtime_ms, options.duration_ms, rng):
            node = nodes[rng.randrange(len(nodes))]
            steps.append(FaultStep(start, "crash", node=node))
            steps.append(FaultStep(start + options.crash_downtime_ms, "restart", node=node))
    # Stable sort: at equal times, partitions before crashes, each schedule in its own order.
    return sorted((s for s in steps if s.at_ms < options.duration_ms), key=lambda s: s.at_ms)


def _windows(every_ms: int, length_ms: int, duration_ms: int, rng: Rng) -> list[int]:
    """Start times of non-overlapping windows of `length_ms`, about every `every_ms`."""
    starts: list[int] = []
    end = 0
    while True:
        gap = int(rng.uniform(0.5, 1.5) * (every_ms - length_ms))
        start = end + max(gap, 1)
        if start >= duration_ms:
            return starts
        starts.append(start)
        end = start + length_ms


def _shuffled(items: tuple[str, ...], rng: Rng) -> tuple[str, ...]:
    out = list(items)
    for i in range(len(out) - 1, 0, -1):  # Fisher-Yates
        j = rng.randrange(i + 1)
        out[i], out[j] = out[j], out[i]
    return tuple(out)
