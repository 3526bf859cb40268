"""Dotted version vectors in the compact set form (DVVSet): one key's sibling values and history.

Preguiça, Baquero, Almeida et al., 'Dotted Version Vectors: Logical Clocks for Optimistic
Replication' (2010/2012); the set form is the one Riak keeps per key. Ids are server ids: only the
coordinator of a write mints a dot, so a clock grows with the replicas, not with the clients, and
two writes at one node that did not see each other still become two siblings.

A `DVVSet` holds per node `i` one `Entry(i, counter, values)`: the replica knows the events
`(i, 1)` .. `(i, counter)`; `values` are the ones not yet superseded, newest first, with the dots
`(i, counter)`, `(i, counter - 1)`, ...; every older event of `i` is known to be superseded. So the
causal history is the version vector of the counters (`join`), and a value is kept exactly until
a write whose context covers its dot has been seen.

Rules:
- A client write is a `Write`: a value and the causal context the client read (empty if none). It
  has no dot until a coordinator `update`s its own clock with it.
- `sync` merges two replica clocks; it is commutative, associative and idempotent.
- Clocks and version vectors are canonical (entries sorted by node, no zero counters), so equal
  histories compare equal with `==`.
- `to_wire`/`from_wire` are the msgpack edge. `from_wire` parses untrusted input and raises
  `ClockDecodeError`; everything else builds canonical values by construction. The constructors do
  not re-check it (they run several times per replicated write); `invariant_violations` states the
  invariants, and the property tests hold every result to them.
"""

from collections.abc import Callable, Mapping, Sequence
from itertools import pairwise
from typing import Generic, TypeVar

from cluster.frozen import frozen
from cluster.limits import CLOCK_DEFAULTS, ClockDefaults

V = TypeVar("V")
# Clocks are immutable, so a DVVSet[bytes] may be used where a DVVSet[object] is expected.
V_co = TypeVar("V_co", covariant=True)

# Counters are signed 64-bit on the wire, so every msgpack implementation can read them.
COUNTER_MAX = 2**63 - 1


class ClockDecodeError(ValueError):
    """A version vector or clock from the wire is malformed; the message names the problem."""

    code = "bad_causal_context"


class ClockOverflowError(ValueError):
    """The next dot would pass COUNTER_MAX (only reachable with a forged causal context)."""

    code = "clock_overflow"


@frozen
class VersionVector:
    """A causal context: per node, how many of its events are known. Build with `of`."""

    counters: tuple[tuple[str, int], ...] = ()

    @staticmethod
    def of(counters: Mapping[str, int]) -> "VersionVector":
        assert all(counter >= 0 for counter in counters.values())
        return VersionVector(tuple(sorted((n, c) for n, c in counters.items() if c > 0)))

    def get(self, node: str) -> int:
        return dict(self.counters).get(node, 0)

    def as_dict(self) -> dict[str, int]:
        return dict(self.counters)

    def merge(self, other: "VersionVector") -> "VersionVector":
        merged = dict(self.counters)
        for node, counter in other.counters:
            merged[node] = max(merged.get(node, 0), counter)
        return VersionVector.of(merged)

    def descends(self, other: "VersionVector") -> bool:
        """Every event `other` knows, `self` knows too (self >= other)."""
        mine = dict(self.counters)
        return all(mine.get(node, 0) >= counter for node, counter in other.counters)

    def dominates(self, other: "VersionVector") -> bool:
        """Strictly newer: self >= other and self != other."""
        return self != other and self.descends(other)

    def concurrent(self, other: "VersionVector") -> bool:
        return not self.descends(other) and not other.descends(self)

    def to_wire(self) -> list[tuple[str, int]]:
        return list(self.counters)

    @staticmethod
    def from_wire(data: object, limits: ClockDefaults = CLOCK_DEFAULTS) -> "VersionVector":
        pairs = _sequence(data, "version vector", limits.clock_entries_max)
        counters: list[tuple[str, int]] = []
        for index, pair in enumerate(pairs):
            where = f"version vector entry {index}"
            node, counter = _sequence(pair, where, 2, exact=True)
            counters.append((_node_id(node, where, limits), _counter(counter, where)))
        _check_sorted([node for node, _ in counters])
        return VersionVector(tuple(counters))


@frozen(order=True)
class Dot:
    """One event: the `counter`-th write coordinated by `node`."""

    node: str
    counter: int


@frozen
class Entry(Generic[V_co]):
    """Events `(node, 1..counter)` are known; `values` are the live ones, newest first."""

    node: str
    counter: int
    values: tuple[V_co, ...] = ()


@frozen
class DVVSet(Generic[V_co]):
    """One key's sibling values with their causal history, on one replica."""

    entries: tuple[Entry[V_co], ...] = ()

    def to_wire(self, encode_value: Callable[[V_co], object]) -> list[tuple[str, int, list[object]]]:
        return [(e.node, e.counter, [encode_value(v) for v in e.values]) for e in self.entries]

    @staticmethod
    def from_wire(
        data: object, decode_value: Callable[[object], V], limits: ClockDefaults = CLOCK_DEFAULTS
    ) -> "DVVSet[V]":
        """Parse a clock; `decode_value` must raise ClockDecodeError on a malformed value.

        Every replicated write decodes one, so the well-formed case runs inline checks only;
        `_explain_clock` re-walks a clock that fails them to name the problem."""
        if type(data) is not list or len(data) > limits.clock_entries_max:
            raise _explain_clock(data, limits)
        entries: list[Entry[V]] = []
        siblings = 0
        previous = ""
        for item in data:
            if type(item) is not list or len(item) != 3:
                raise _explain_clock(data, limits)
            node, count, live = item
            if (
                type(node) is not str
                or not previous < node
                or (
                    len(node) > limits.node_id_bytes_max // 4
                    and len(node.encode("utf-8", "surrogatepass")) > limits.node_id_bytes_max
                )
                or type(count) is not int
                or not 0 < count <= COUNTER_MAX
                or type(live) is not list
                or len(live) > count
            ):
                raise _explain_clock(data, limits)
            siblings += len(live)
            if siblings > limits.siblings_max:
                raise ClockDecodeError(f"clock has more than {limits.siblings_max} sibling values")
            entries.append(Entry(node, count, tuple([decode_value(value) for value in live])))
            previous = node
        return DVVSet(tuple(entries))


def _explain_clock(data: object, limits: ClockDefaults) -> ClockDecodeError:
    """The error naming what is wrong with a clock that failed from_wire's fast checks."""
    try:
        nodes = []
        for index, item in enumerate(_sequence(data, "clock", limits.clock_entries_max)):
            where = f"clock entry {index}"
            node, counter, items = _sequence(item, where, 3, exact=True)
            _sequence(items, f"{where} values", _counter(counter, where))
            nodes.append(_node_id(node, where, limits))
        _check_sorted(nodes)
    except ClockDecodeError as exc:
        return exc
    return ClockDecodeError("clock is malformed")


def invariant_violations(clock: "DVVSet[object]") -> list[str]:
    """What is wrong with a clock built in this process (empty when canonical): the invariants
    every function here keeps and the constructors no longer check on each call."""
    problems = []
    nodes = [entry.node for entry in clock.entries]
    if nodes != sorted(set(nodes)):
        problems.append("clock entries must be sorted by node and distinct")
    for entry in clock.entries:
        if not 0 < entry.counter <= COUNTER_MAX:
            problems.append(f"counter {entry.counter} of {entry.node!r} is out of range")
        if len(entry.values) > entry.counter:
            problems.append(f"{entry.node!r} has more live values than events")
    return problems


def vector_violations(vector: VersionVector) -> list[str]:
    """What is wrong with a version vector built in this process (empty when canonical)."""
    nodes = [node for node, _ in vector.counters]
    problems = []
    if nodes != sorted(set(nodes)):
        problems.append("version vector nodes must be sorted and distinct")
    if not all(counter > 0 for _, counter in vector.counters):
        problems.append("zero counters are left out")
    return problems


@frozen
class Write(Generic[V_co]):
    """A client's write before a coordinator gives it a dot: the value and what the client read."""

    value: V_co
    context: VersionVector = VersionVector()


def new(value: V) -> Write[V]:
    """A blind write: it supersedes nothing, so it becomes a sibling of whatever is stored."""
    return Write(value)


def new_with_context(context: VersionVector, value: V) -> Write[V]:
    """A write that supersedes every value the client read with `context` (read-modify-write)."""
    return Write(value, context)


def update(write: Write[V], clock: DVVSet[V], node_id: str, first_counter: int = 1) -> DVVSet[V]:
    """The coordinator `node_id` applies `write` to its local `clock` and mints the next dot.

    The context joins the history as entries without values, so the merge drops exactly the
    values the client had seen (DVVSet's update in Almeida et al.); values it had not seen stay.
    `first_counter` is the dot when the clock holds no entry of `node_id` yet (see Replica.mint).
    """
    context: DVVSet[V] = DVVSet(tuple(Entry(node, counter) for node, counter in write.context.counters))
    merged = {entry.node: entry for entry in sync(clock, context).entries}
    own = merged.get(node_id)
    if own is None:
        merged[node_id] = Entry(node_id, first_counter, (write.value,))
    elif own.counter >= COUNTER_MAX:
        raise ClockOverflowError(f"node {node_id!r} has no dot left after {own.counter}")
    else:
        merged[node_id] = Entry(node_id, own.counter + 1, (write.value, *own.values))
    return DVVSet(tuple(merged[node] for node in sorted(merged)))


def sync(a: DVVSet[V], b: DVVSet[V]) -> DVVSet[V]:
    """Merge two replicas' clocks: the union of their histories, and the values neither has seen
    superseded. Commutative, associative and idempotent (a join-semilattice)."""
    merged = {entry.node: entry for entry in a.entries}
    for theirs in b.entries:
        mine = merged.get(theirs.node)
        merged[theirs.node] = theirs if mine is None else _merge_entry(mine, theirs)
    entries = tuple(merged[node] for node in sorted(merged))
    # A replica usually merges a clock that supersedes its own: return that very object, so
    # the caller's `merged == incoming` is an identity check rather than a walk of the values.
    if len(entries) == len(b.entries) and all(mine is theirs for mine, theirs in zip(entries, b.entries, strict=True)):
        return b
    return DVVSet(entries)


def _merge_entry(a: Entry[V], b: Entry[V]) -> Entry[V]:
    # Each side keeps dots above its floor (counter - live values); a dot survives the merge only if
    # it is above both floors, i.e. neither side has seen a write that superseded it.
    floor = max(a.counter - len(a.values), b.counter - len(b.values))
    # A dot names one write, so both sides hold the same value for it; take the longer history.
    newer = a if a.counter >= b.counter else b
    keep = newer.counter - floor
    if keep >= len(newer.values):
        return newer  # none of its values superseded: the entry itself, not a copy
    return Entry(newer.node, newer.counter, newer.values[:keep])


def join(clock: DVVSet[V]) -> VersionVector:
    """The causal context covering every value in `clock`: what a reader sends back on write."""
    return VersionVector(tuple((entry.node, entry.counter) for entry in clock.entries))


def values(clock: DVVSet[V]) -> list[V]:
    """The sibling values, by node, newest first within a node."""
    return [value for entry in clock.entries for value in entry.values]


def dotted_values(clock: DVVSet[V]) -> list[tuple[Dot, V]]:
    """The sibling values with the dot each was written with."""
    return [
        (Dot(entry.node, entry.counter - offset), value)
        for entry in clock.entries
        for offset, value in enumerate(entry.values)
    ]


def size(clock: DVVSet[V]) -> int:
    """The number of sibling values."""
    return sum(len(entry.values) for entry in clock.entries)


def less(a: DVVSet[V], b: DVVSet[V]) -> bool:
    """`b` has seen strictly more than `a`: a's values are all superseded or also in b."""
    return join(b).dominates(join(a))


def descends(a: DVVSet[V], b: DVVSet[V]) -> bool:
    """`a` has seen everything `b` has (a >= b)."""
    return join(a).descends(join(b))


def wire_bytes(value: object) -> bytes:
    """`decode_value` for clocks whose values are bytes."""
    if not isinstance(value, bytes):
        raise ClockDecodeError(f"a clock value must be bytes, not {type(value).__name__}")
    return value


# --- Decoding untrusted input: every check names what is wrong. ---


def _sequence(data: object, where: str, limit: int, exact: bool = False) -> Sequence[object]:
    if not isinstance(data, list | tuple):
        raise ClockDecodeError(f"{where} must be a list, not {type(data).__name__}")
    if exact and len(data) != limit:
        raise ClockDecodeError(f"{where} must have {limit} items, not {len(data)}")
    if len(data) > limit:
        raise ClockDecodeError(f"{where} has {len(data)} items; the limit is {limit}")
    return data


def _node_id(node: object, where: str, limits: ClockDefaults) -> str:
    if not isinstance(node, str) or not node:
        raise ClockDecodeError(f"{where}: node id must be a non-empty string, not {node!r:.40}")
    if len(node.encode("utf-8", "surrogatepass")) > limits.node_id_bytes_max:
        raise ClockDecodeError(f"{where}: node id is longer than {limits.node_id_bytes_max} bytes")
    return node


def _counter(counter: object, where: str) -> int:
    if not isinstance(counter, int) or isinstance(counter, bool):
        raise ClockDecodeError(f"{where}: counter must be an integer, not {type(counter).__name__}")
    if not 0 < counter <= COUNTER_MAX:
        raise ClockDecodeError(f"{where}: counter {counter} is outside 1..{COUNTER_MAX}")
    return counter


def _check_sorted(nodes: list[str]) -> None:
    for earlier, later in pairwise(nodes):
        if earlier >= later:
            raise ClockDecodeError(f"node ids must be sorted and distinct: {earlier!r} before {later!r}")
