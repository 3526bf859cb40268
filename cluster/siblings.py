"""What a replica stores for one key: a dotted-version-vector set of `Sibling` values, and the
ConflictResolver that decides what concurrent writes leave behind.

Pure. Two resolution modes per keyspace, as Riak offers them:
- `siblings` (default): concurrent writes are all kept, up to `siblings_max`; a reader sees them
  all (HTTP 300) and resolves them by writing with the context that covers them.
- `lww` (opt-in): last writer wins by hybrid-logical-clock timestamp, then node id, so two writes
  in the same millisecond never tie (Cassandra's timestamps can, and then compare values).

A delete is a write of a tombstone sibling, so it carries its causal context like any write and
is merged by the same rules (Dynamo §6.2; purging tombstones safely is anti-entropy's job).
"""

import enum

import msgpack

from cluster import dvv
from cluster.dvv import ClockDecodeError, DVVSet, VersionVector
from cluster.frozen import frozen
from cluster.hlc import LOGICAL_WIRE_MAX, PHYSICAL_MS_MAX, Timestamp, TimestampDecodeError
from cluster.limits import CLOCK_DEFAULTS

# A node id of at most this many characters is within node_id_bytes_max whatever its encoding.
_NODE_ID_CHARS_SURELY_OK = CLOCK_DEFAULTS.node_id_bytes_max // 4

# The content type of the stored sibling set inside the local store.
STORED_CONTENT_TYPE = "application/vnd.titra.dvvset+msgpack"


class Resolution(enum.Enum):
    SIBLINGS = "siblings"
    LWW = "lww"


@frozen
class Sibling:
    """One written value (or tombstone) with its coordinator timestamp and the causal
    dependencies the writer's session had (`deps`: scoped key -> version vector)."""

    value: bytes
    content_type: str
    timestamp: Timestamp
    deleted: bool = False
    deps: tuple[tuple[bytes, VersionVector], ...] = ()

    @property
    def size_bytes(self) -> int:
        return len(self.value) + len(self.content_type) + 64


def _sibling_to_wire(sibling: Sibling) -> object:
    deps = [(key, vv.to_wire()) for key, vv in sibling.deps]
    return (sibling.value, sibling.content_type, sibling.timestamp.to_wire(), sibling.deleted, deps)


def _sibling_from_wire(data: object) -> Sibling:
    # Every replicated write decodes its siblings: the usual shape (no dependencies) is checked
    # inline; anything else takes the path that names what is wrong.
    if type(data) is list and len(data) == 5:
        value, content_type, timestamp, deleted, deps = data
        if (
            type(value) is bytes
            and type(content_type) is str
            and type(deleted) is bool
            and not deps
            and type(deps) is list
            and type(timestamp) is list
            and len(timestamp) == 3
        ):
            physical, logical, node = timestamp
            if (
                type(physical) is int
                and 0 <= physical <= PHYSICAL_MS_MAX
                and type(logical) is int
                and 0 <= logical <= LOGICAL_WIRE_MAX
                and type(node) is str
                and 0 < len(node) <= _NODE_ID_CHARS_SURELY_OK
            ):
                return Sibling(value, content_type, Timestamp(physical, logical, node), deleted)
    return _sibling_from_wire_checked(data)


def _sibling_from_wire_checked(data: object) -> Sibling:
    if not isinstance(data, list | tuple) or len(data) != 5:
        raise ClockDecodeError("a sibling must be a list of 5 items")
    value, content_type, timestamp, deleted, deps = data
    if not isinstance(value, bytes) or not isinstance(content_type, str) or not isinstance(deleted, bool):
        raise ClockDecodeError("a sibling has a value of the wrong type")
    if not isinstance(deps, list | tuple):
        raise ClockDecodeError("sibling dependencies must be a list")
    try:
        ts = Timestamp.from_wire(timestamp)
    except TimestampDecodeError as exc:
        raise ClockDecodeError(f"sibling timestamp: {exc}") from exc
    parsed: list[tuple[bytes, VersionVector]] = []
    for dep in deps:
        if not isinstance(dep, list | tuple) or len(dep) != 2 or not isinstance(dep[0], bytes):
            raise ClockDecodeError("a dependency must be [key, version vector]")
        parsed.append((dep[0], VersionVector.from_wire(dep[1])))
    return Sibling(value, content_type, ts, deleted, tuple(parsed))


# One Packer for the clocks and metas every replicated write encodes: msgpack.packb builds a new
# Packer, with its 1 MiB buffer, per call. Packing lists, tuples, str, bytes, int and bool runs no
# Python code, so a pack holds the GIL from start to end and two threads never interleave in it.
_PACKER = msgpack.Packer(use_bin_type=True)


def encode_clock(clock: DVVSet[Sibling]) -> bytes:
    return bytes(_PACKER.pack(clock.to_wire(_sibling_to_wire)))


def decode_clock(data: bytes) -> DVVSet[Sibling]:
    """Decode a stored or received sibling set; raises ClockDecodeError naming the problem."""
    try:
        wire = msgpack.unpackb(data, raw=False, use_list=True)
    except (ValueError, msgpack.UnpackException) as exc:
        raise ClockDecodeError(f"clock is not msgpack: {exc}") from exc
    return DVVSet.from_wire(wire, _sibling_from_wire)


def resolve(clock: DVVSet[Sibling], resolution: Resolution) -> DVVSet[Sibling]:
    """Apply the keyspace's resolution to a merged clock. Under `lww` only the sibling with the
    greatest timestamp keeps its value; the history (every entry's counter) is kept, so the
    dropped values stay superseded when clocks are merged again."""
    if resolution is Resolution.SIBLINGS or dvv.size(clock) <= 1:
        return clock
    winner = max(dvv.values(clock), key=lambda s: s.timestamp)
    entries = []
    for entry in clock.entries:
        # A node's values are newest first and its hybrid timestamps only grow, so the winner is
        # the first value of its entry; values are tied to dots by position, so keep a prefix.
        kept = entry.values[: entry.values.index(winner) + 1] if winner in entry.values else ()
        entries.append(dvv.Entry(entry.node, entry.counter, kept))
    return DVVSet(tuple(entries))


def live(clock: DVVSet[Sibling]) -> list[Sibling]:
    """The siblings a reader sees: not tombstones, oldest first."""
    return sorted((s for s in dvv.values(clock) if not s.deleted), key=lambda s: s.timestamp)


def total_bytes(clock: DVVSet[Sibling]) -> int:
    return sum(s.size_bytes for s in dvv.values(clock))


def record_meta(clock: DVVSet[Sibling]) -> bytes:
    """The store record's metadata: the key's version vector and whether it is only tombstones,
    so listings and repair can skip or compare keys without decoding values."""
    # One pass (every replicated write stores a meta): the counters, and whether a live value
    # was met; a clock with no values at all counts as only tombstones, as all() of none would.
    counters = []
    only_tombstones = True
    for entry in clock.entries:
        counters.append((entry.node, entry.counter))
        if only_tombstones:
            for sibling in entry.values:
                if not sibling.deleted:
                    only_tombstones = False
                    break
    return bytes(_PACKER.pack([counters, only_tombstones]))


def meta_is_deleted(meta: bytes) -> bool:
    if not meta:
        return False
    decoded = msgpack.unpackb(meta, raw=False)
    return bool(decoded[1])
