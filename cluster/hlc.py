"""Hybrid logical clocks: timestamps that stay close to physical time and respect causality.

Kulkarni, Demirbas et al., 'Logical Physical Clocks' (OPODIS 2014). A timestamp is the largest
physical time the node has seen (`physical_ms`, the paper's l) and a count of events within it
(`logical`, the paper's c). The node id breaks the remaining ties, so the order is total and no two
nodes ever mint equal timestamps.

Rules:
- Time comes in as an argument (`wall_ms`); this module reads no clock.
- Every timestamp a `HybridClock` returns is greater than every timestamp it returned or observed
  before, whatever the wall clock does (it may stall or step backwards).
- A remote timestamp more than `max_offset_ms` ahead of the local wall clock is refused with
  `ClockDriftError` and leaves the clock unchanged: one bad clock must not drag every node ahead.
- When the logical counter would pass `logical_max`, the clock carries into the next millisecond.
- The string form has fixed-width hex fields, so strings sort exactly as their timestamps do.
"""


from cluster.frozen import frozen
from cluster.limits import CLOCK_DEFAULTS, ClockDefaults

# 12 hex digits of milliseconds last until the year 10889; 8 hex digits hold the logical counter.
PHYSICAL_MS_MAX = 2**48 - 1
LOGICAL_WIRE_MAX = 2**32 - 1
_HEX_DIGITS = frozenset("0123456789abcdef")

assert CLOCK_DEFAULTS.hlc_logical_max <= LOGICAL_WIRE_MAX


class TimestampDecodeError(ValueError):
    """A timestamp from the wire is malformed; the message names the problem."""

    code = "bad_timestamp"


class ClockDriftError(Exception):
    """A remote timestamp is further ahead of the local wall clock than the allowed offset: the
    remote clock (or ours) is wrong. The message is refused; the local clock is unchanged."""

    code = "clock_drift"

    def __init__(self, remote: "Timestamp", wall_ms: int, max_offset_ms: int) -> None:
        ahead_ms = remote.physical_ms - wall_ms
        super().__init__(
            f"timestamp from {remote.node_id!r} is {ahead_ms} ms ahead of the local clock;"
            f" the limit is {max_offset_ms} ms"
        )
        self.remote = remote
        self.wall_ms = wall_ms
        self.ahead_ms = ahead_ms
        self.max_offset_ms = max_offset_ms


@frozen(order=True)
class Timestamp:
    """Ordered by (physical_ms, logical, node_id): the field order is the comparison order."""

    physical_ms: int
    logical: int
    node_id: str
    # No __post_init__ check: every sibling decoded builds one. `from_wire`/`decode` check what
    # comes from outside and `HybridClock` what it mints.

    def encode(self) -> str:
        """E.g. '018c2b3f4a10.00000003.n1'; sorts like the timestamp."""
        return f"{self.physical_ms:012x}.{self.logical:08x}.{self.node_id}"

    @staticmethod
    def decode(text: object, limits: ClockDefaults = CLOCK_DEFAULTS) -> "Timestamp":
        if not isinstance(text, str):
            raise TimestampDecodeError(f"timestamp must be a string, not {type(text).__name__}")
        parts = text.split(".", 2)
        if len(parts) != 3:
            raise TimestampDecodeError("timestamp must be 'physical.logical.node'")
        physical, logical, node_id = parts
        return Timestamp(_hex(physical, 12, "physical_ms"), _hex(logical, 8, "logical"), _node_id(node_id, limits))

    def to_wire(self) -> tuple[int, int, str]:
        return (self.physical_ms, self.logical, self.node_id)

    @staticmethod
    def from_wire(data: object, limits: ClockDefaults = CLOCK_DEFAULTS) -> "Timestamp":
        if not isinstance(data, list | tuple) or len(data) != 3:
            raise TimestampDecodeError("timestamp must be a list [physical_ms, logical, node_id]")
        physical, logical, node_id = data
        return Timestamp(
            _int(physical, PHYSICAL_MS_MAX, "physical_ms"),
            _int(logical, LOGICAL_WIRE_MAX, "logical"),
            _node_id(node_id, limits),
        )


class HybridClock:
    """One node's hybrid logical clock. Plain mutable state; the driver passes the wall time in.

    `start` restores the clock after a restart (the highest timestamp persisted), so timestamps
    keep increasing even if the wall clock is now behind what the node issued before the crash.
    """

    def __init__(
        self,
        node_id: str,
        max_offset_ms: int = CLOCK_DEFAULTS.max_offset_ms,
        logical_max: int = CLOCK_DEFAULTS.hlc_logical_max,
        start: Timestamp | None = None,
    ) -> None:
        assert max_offset_ms > 0
        assert 0 < logical_max <= LOGICAL_WIRE_MAX
        self.node_id = node_id
        self.max_offset_ms = max_offset_ms
        self.logical_max = logical_max
        begin = start if start is not None else Timestamp(0, 0, node_id)
        self._last = Timestamp(begin.physical_ms, begin.logical, node_id)

    @property
    def last(self) -> Timestamp:
        """The latest timestamp issued (or `start`)."""
        return self._last

    def now(self, wall_ms: int) -> Timestamp:
        """A local or send event: the next timestamp, never below the wall clock."""
        last = self._last
        physical = max(last.physical_ms, wall_ms)
        logical = last.logical + 1 if physical == last.physical_ms else 0
        return self._issue(physical, logical)

    def observe(self, remote: Timestamp, wall_ms: int) -> Timestamp:
        """A receive event: the next timestamp, greater than both our last one and `remote`.

        Raises ClockDriftError (and changes nothing) if `remote` is too far ahead of `wall_ms`.
        """
        if remote.physical_ms - wall_ms > self.max_offset_ms:
            raise ClockDriftError(remote, wall_ms, self.max_offset_ms)
        last = self._last
        physical = max(last.physical_ms, remote.physical_ms, wall_ms)
        # The paper's receive rule: count on from whichever clocks already reached `physical`.
        if physical == last.physical_ms == remote.physical_ms:
            logical = max(last.logical, remote.logical) + 1
        elif physical == last.physical_ms:
            logical = last.logical + 1
        elif physical == remote.physical_ms:
            logical = remote.logical + 1
        else:
            logical = 0
        return self._issue(physical, logical)

    def _issue(self, physical_ms: int, logical: int) -> Timestamp:
        if logical > self.logical_max:
            # Carrying keeps the order (a later millisecond beats any counter) at a 1 ms skew.
            physical_ms, logical = physical_ms + 1, 0
        assert 0 <= physical_ms <= PHYSICAL_MS_MAX, f"wall clock out of range: {physical_ms}"
        self._last = Timestamp(physical_ms, logical, self.node_id)
        return self._last


# --- Decoding untrusted input. ---


def _hex(text: str, width: int, what: str) -> int:
    if len(text) != width or not set(text) <= _HEX_DIGITS:
        raise TimestampDecodeError(f"{what} must be {width} lowercase hex digits, not {text!r:.40}")
    return int(text, 16)


def _int(value: object, maximum: int, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TimestampDecodeError(f"{what} must be an integer, not {type(value).__name__}")
    if not 0 <= value <= maximum:
        raise TimestampDecodeError(f"{what} {value} is outside 0..{maximum}")
    return value


def _node_id(node_id: object, limits: ClockDefaults) -> str:
    if not isinstance(node_id, str) or not node_id:
        raise TimestampDecodeError("node id must be a non-empty string")
    if len(node_id.encode("utf-8", "surrogatepass")) > limits.node_id_bytes_max:
        raise TimestampDecodeError(f"node id is longer than {limits.node_id_bytes_max} bytes")
    return node_id
