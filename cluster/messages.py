"""Every message between nodes, as frozen dataclasses, and their msgpack codec.

Pure. Inside the code messages are typed values dispatched with `match`; msgpack is only the
edge (STYLE.md). On the wire a message is `[tag, field, field, ...]` in field order; nested
request/outcome values are encoded the same way. Decoding checks the tag and the arity and the
primitive types of every field, so a malformed frame is refused with `MessageDecodeError`
rather than raising deep inside a handler.

`round_id` ties a reply to the request that caused it; it is unique per sending node.
`round_id == 0` on a ReplicaMerge means "no acknowledgement wanted" (read repair, the
asynchronous remainder of a write at `one`).
"""

import dataclasses
import itertools
import operator
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Union, get_type_hints

from cluster.requests import WriteOutcome, WriteRequest


class MessageDecodeError(ValueError):
    code = "bad_message"


@dataclass(frozen=True, slots=True)
class ReplicaRead:
    round_id: int
    keyspace: str
    key: bytes


@dataclass(frozen=True, slots=True)
class ReplicaReadReply:
    round_id: int
    clock: bytes | None  # the encoded sibling set; None when the replica has no such key
    error: str = ""


@dataclass(frozen=True, slots=True)
class ReplicaMerge:
    round_id: int
    keyspace: str
    key: bytes
    clock: bytes
    durability: str


@dataclass(frozen=True, slots=True)
class ReplicaMergeAck:
    round_id: int
    ok: bool
    error: str = ""


@dataclass(frozen=True, slots=True)
class ForwardWrite:
    """A write handed to a replica of its key to coordinate (the receiver is not one, or the
    request carries an Idempotency-Key and must reach the key's first replica)."""

    round_id: int
    request: WriteRequest


@dataclass(frozen=True, slots=True)
class ForwardWriteReply:
    round_id: int
    outcome: WriteOutcome


@dataclass(frozen=True, slots=True)
class ListKeys:
    round_id: int
    keyspace: str
    prefix: bytes
    after: bytes | None
    limit: int


@dataclass(frozen=True, slots=True)
class ListKeysReply:
    round_id: int
    keys: tuple[bytes, ...]
    complete: bool  # no more keys after the last one on this replica
    error: str = ""


# --- membership (cluster/membership.py) ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GossipEntry:
    """What one node gossips about a member: newer is a higher (incarnation, heartbeat)."""

    node_id: str
    address: str  # "host:port" of its peer listener
    incarnation: int  # bumped by the member itself on every restart
    heartbeat: int  # bumped by the member itself every gossip interval
    left: bool  # reserved: the member announced its departure (grow/shrink work)

    # A hand-written codec: a message carries up to members_max entries, and the generic checker
    # (type hints resolved per entry) would cost ~20 ms per 512-entry message.
    def to_wire(self) -> list[object]:
        return [self.node_id, self.address, self.incarnation, self.heartbeat, self.left]

    @staticmethod
    def from_wire(items: list[Any]) -> "GossipEntry":
        if len(items) != 5:
            raise ValueError(f"a gossip entry has 5 fields, not {len(items)}")
        node_id, address, incarnation, heartbeat, left = items
        if not isinstance(node_id, str) or not isinstance(address, str):
            raise ValueError("node_id and address must be strings")
        if type(incarnation) is not int or type(heartbeat) is not int or type(left) is not bool:
            raise ValueError("incarnation and heartbeat must be integers, left a boolean")
        return GossipEntry(node_id, address, incarnation, heartbeat, left)


@dataclass(frozen=True, slots=True)
class GossipSyn:
    """Push: the sender's whole membership; the receiver merges it and answers what the sender lacks."""

    entries: tuple[GossipEntry, ...]


@dataclass(frozen=True, slots=True)
class GossipAck:
    """Pull: the entries the receiver of a GossipSyn holds newer than the sender, or the sender lacks."""

    entries: tuple[GossipEntry, ...]


# --- end membership ------------------------------------------------------------------------------


# --- repair: hinted handoff and anti-entropy (cluster/hints.py, cluster/anti_entropy.py) ---------


@dataclass(frozen=True, slots=True)
class HintStore:
    """Sloppy quorum (Dynamo §4.6): keep this clock as a hint for `target`, which is down."""

    round_id: int
    target: str
    keyspace: str
    key: bytes
    clock: bytes
    durability: str


@dataclass(frozen=True, slots=True)
class HintStoreAck:
    round_id: int
    ok: bool
    error: str = ""


@dataclass(frozen=True, slots=True)
class HintDeliver:
    """A hint replayed to the replica it was meant for; merged like a ReplicaMerge."""

    delivery_id: int
    keyspace: str
    key: bytes
    clock: bytes


@dataclass(frozen=True, slots=True)
class HintDeliverAck:
    delivery_id: int
    ok: bool
    error: str = ""


@dataclass(frozen=True, slots=True)
class AeRoots:
    """Anti-entropy: the sender's Merkle roots of shared ranges, as (range end token, root)."""

    session_id: int
    keyspace: str
    roots: tuple[tuple[int, int], ...]


@dataclass(frozen=True, slots=True)
class AeRootsReply:
    session_id: int
    differing: tuple[int, ...]  # range end tokens whose roots differ
    sizes: tuple[int, ...]  # the receiver's key count in each of them


@dataclass(frozen=True, slots=True)
class AeHashes:
    """The sender's hashes at one tree level, as (position, hash), under nodes that differed."""

    session_id: int
    keyspace: str
    range_end: int
    level: int
    hashes: tuple[tuple[int, int], ...]


@dataclass(frozen=True, slots=True)
class AeHashesReply:
    session_id: int
    differing: tuple[int, ...]  # positions whose hashes differ


@dataclass(frozen=True, slots=True)
class AeKeys:
    """The sender's (key, clock digest) pairs in differing leaves (no leaves: the whole range)."""

    session_id: int
    keyspace: str
    range_end: int
    leaves: tuple[int, ...]
    entries: tuple[tuple[bytes, bytes], ...]


@dataclass(frozen=True, slots=True)
class AeKeysReply:
    session_id: int
    entries: tuple[tuple[bytes, bytes], ...]  # the receiver's pairs that differ or the sender lacks
    missing: tuple[bytes, ...]  # the sender's keys the receiver lacks


# --- end repair ----------------------------------------------------------------------------------


Message = Union[  # noqa: UP007 (typing.get_args needs a real Union object here)
    ReplicaRead,
    ReplicaReadReply,
    ReplicaMerge,
    ReplicaMergeAck,
    ForwardWrite,
    ForwardWriteReply,
    ListKeys,
    ListKeysReply,
    GossipSyn,  # membership
    GossipAck,  # membership
    HintStore,  # repair
    HintStoreAck,  # repair
    HintDeliver,  # repair
    HintDeliverAck,  # repair
    AeRoots,  # repair
    AeRootsReply,  # repair
    AeHashes,  # repair
    AeHashesReply,  # repair
    AeKeys,  # repair
    AeKeysReply,  # repair
]

# Tags are part of the wire format: append, never reorder.
_MESSAGE_TYPES: tuple[type, ...] = typing.get_args(Message)
_NESTED = (WriteRequest, WriteOutcome)


def encode(message: Message) -> list[Any]:
    return _ENCODERS[type(message)](message)


def decode(wire: object) -> Message:
    if not isinstance(wire, _SEQUENCE) or not wire or not isinstance(wire[0], int):
        raise MessageDecodeError("a message must be a list starting with its integer tag")
    decode_fields = _DECODERS.get(wire[0])
    if decode_fields is None:
        raise MessageDecodeError(f"unknown message tag {wire[0]}")
    message: Message = decode_fields(wire[1:])
    return message


# --- the codec, compiled once per class ----------------------------------------------------------
#
# Walking the type hints of every message cost ~8% of a node's CPU under write load, so each class
# gets, at import, an encoder (an attrgetter of its fields, plus converters for the fields that
# are not their own wire form) and a decoder (per-field checkers, and for classes of primitive
# fields a fast path: one lookup of the exact types of the items). A new message needs only its
# line in `Message`; a field type the codec cannot carry fails at import.

Checker = Callable[[Any], Any]  # returns the decoded value, or raises MessageDecodeError
Converter = Callable[[Any], Any]  # a value to its wire form

_SEQUENCE = (list, tuple)
_PRIMITIVES = (int, bool, str, bytes, type(None))
_SIGNATURES_MAX = 16  # exact-type combinations a fast path may accept (unions multiply them)


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (Union, types.UnionType)


def _is_dataclass_type(hint: Any) -> bool:
    return hint in _NESTED or (isinstance(hint, type) and dataclasses.is_dataclass(hint))


def _exact_types(hint: Any) -> tuple[type, ...] | None:
    """The Python types msgpack yields for a primitive hint, or None when it is not primitive."""
    if _is_union(hint):
        options = [_exact_types(option) for option in typing.get_args(hint)]
        return None if None in options else tuple(kind for kinds in options if kinds for kind in kinds)
    return (hint,) if hint in _PRIMITIVES else None


def _signatures(hints: list[Any]) -> frozenset[tuple[type, ...]] | None:
    """Every tuple of exact item types the hints accept as they are, if all are primitive."""
    per_item = [_exact_types(hint) for hint in hints]
    if any(kinds is None for kinds in per_item):
        return None
    combos = frozenset(itertools.product(*(kinds for kinds in per_item if kinds)))
    return combos if len(combos) <= _SIGNATURES_MAX else None


def _fields(cls: type) -> tuple[tuple[str, ...], list[Any]]:
    hints = get_type_hints(cls)
    names = tuple(f.name for f in dataclasses.fields(cls))
    return names, [hints[name] for name in names]


def _fields_decoder(cls: type, where: str) -> Checker:
    """Build `cls` from the list of its field values, every one checked against its hint."""
    names, hints = _fields(cls)
    checkers = tuple(_checker(hint, f"{where}.{name}") for name, hint in zip(names, hints, strict=True))
    arity = len(checkers)

    def checked(items: Sequence[Any]) -> Any:
        if len(items) != arity:
            raise MessageDecodeError(f"{where} has {len(items)} fields, expected {arity}")
        return cls(*[check(item) for check, item in zip(checkers, items, strict=True)])

    signatures = _signatures(hints)
    if signatures is None:
        return checked

    def fast(items: Sequence[Any]) -> Any:
        # Exact types only; anything else (a subclass, a wrong type) goes through the checkers.
        if tuple(map(type, items)) in signatures:
            return cls(*items)
        return checked(items)

    return fast


def _checker(hint: Any, where: str) -> Checker:
    """A decoder for one value of type `hint`; errors name the field as `where`."""
    if _is_union(hint):
        return _union_checker(hint, where)
    if typing.get_origin(hint) is tuple:
        return _tuple_checker(typing.get_args(hint), where)
    if _is_dataclass_type(hint):
        return _dataclass_checker(hint, where)
    if hint is type(None):
        message = f"{where} must be null"
        kinds: Any = type(None)
    elif hint is bool:
        message, kinds = f"{where} must be a boolean", bool
    elif hint is int:
        message, kinds = f"{where} must be an integer", int
    elif hint in (str, bytes):
        message, kinds = f"{where} must be {hint.__name__}", hint
    else:
        raise TypeError(f"{where}: no wire codec for {hint}")
    refused = bool if hint is int else ()  # bool is a subclass of int, never an integer here

    def check_primitive(value: Any) -> Any:
        if isinstance(value, kinds) and not isinstance(value, refused):
            return value
        raise MessageDecodeError(message)

    return check_primitive


def _union_checker(hint: Any, where: str) -> Checker:
    options = tuple(_checker(option, where) for option in typing.get_args(hint))
    exact = _exact_types(hint) or ()

    def check_union(value: Any) -> Any:
        if type(value) in exact:
            return value
        for option in options:  # the first option that accepts the value, as typing reads a union
            try:
                return option(value)
            except MessageDecodeError:
                continue
        raise MessageDecodeError(f"{where}: {type(value).__name__} matches none of {hint}")

    return check_union


def _tuple_checker(args: tuple[Any, ...], where: str) -> Checker:
    if len(args) == 2 and args[1] is Ellipsis:
        item = _checker(args[0], f"{where}[]")
        exact = frozenset(_exact_types(args[0]) or ())

        def check_variadic(value: Any) -> Any:
            if not isinstance(value, _SEQUENCE):
                raise MessageDecodeError(f"{where} must be a list")
            if exact and exact.issuperset(map(type, value)):
                return tuple(value)
            return tuple(map(item, value))

        return check_variadic

    items = tuple(_checker(arg, f"{where}[]") for arg in args)
    signatures = _signatures(list(args)) or frozenset()

    def check_fixed(value: Any) -> Any:
        if not isinstance(value, _SEQUENCE):
            raise MessageDecodeError(f"{where} must be a list")
        if tuple(map(type, value)) in signatures:
            return tuple(value)
        if len(value) != len(items):
            raise MessageDecodeError(f"{where} must have {len(items)} items")
        return tuple([check(v) for check, v in zip(items, value, strict=True)])

    return check_fixed


def _dataclass_checker(cls: type, where: str) -> Checker:
    from_wire = getattr(cls, "from_wire", None)
    decode_fields = None if from_wire is not None else _fields_decoder(cls, where)

    def check_dataclass(value: Any) -> Any:
        if not isinstance(value, _SEQUENCE):
            raise MessageDecodeError(f"{where} must be a list")
        if decode_fields is not None:
            return decode_fields(value)
        try:  # a hand-written codec (GossipEntry, VersionVector) signals a bad value by ValueError
            return from_wire(list(value))  # type: ignore[misc]
        except ValueError as exc:
            raise MessageDecodeError(f"{where}: {exc}") from exc

    return check_dataclass


def _fields_encoder(cls: type, tag: int | None) -> Callable[[Any], list[Any]]:
    """`[tag, field, field, ...]` (no tag for a nested value), each field in its wire form."""
    names, hints = _fields(cls)
    get_fields: Callable[[Any], tuple[Any, ...]]
    if len(names) == 1:
        name = names[0]
        get_fields = lambda obj: (getattr(obj, name),)  # noqa: E731 (attrgetter of one name gives no tuple)
    else:
        get_fields = operator.attrgetter(*names)
    converters = tuple(_converter(hint) for hint in hints)
    head = [] if tag is None else [tag]
    if not any(converters):  # every field is its own wire form: the hot replication messages
        if tag is None:
            return lambda obj: list(get_fields(obj))
        return lambda obj: [tag, *get_fields(obj)]

    def encode_fields(obj: Any) -> list[Any]:
        values = get_fields(obj)
        return [*head, *[v if convert is None else convert(v) for convert, v in zip(converters, values, strict=True)]]

    return encode_fields


def _converter(hint: Any) -> Converter | None:
    """How a value of type `hint` goes on the wire; None: as it is."""
    if _is_union(hint):
        options = [(typing.get_origin(o) or o, c) for o in typing.get_args(hint) if (c := _converter(o))]
        if not options:
            return None

        def convert_union(value: Any) -> Any:
            for kind, convert in options:
                if isinstance(value, kind):
                    return convert(value)
            return value

        return convert_union
    if typing.get_origin(hint) is tuple:
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            item = _converter(args[0])
            return list if item is None else lambda value: [item(v) for v in value]
        items = [_converter(arg) for arg in args]
        if not any(items):
            return list
        return lambda value: [v if convert is None else convert(v) for convert, v in zip(items, value, strict=True)]
    if _is_dataclass_type(hint):
        return operator.methodcaller("to_wire") if hasattr(hint, "to_wire") else _fields_encoder(hint, None)
    return None


_ENCODERS: dict[type, Callable[[Any], list[Any]]] = {
    cls: _fields_encoder(cls, tag) for tag, cls in enumerate(_MESSAGE_TYPES, start=1)
}
_DECODERS: dict[int, Checker] = {
    tag: _fields_decoder(cls, cls.__name__) for tag, cls in enumerate(_MESSAGE_TYPES, start=1)
}
