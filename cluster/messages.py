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
import types
import typing
from dataclasses import dataclass
from functools import cache
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
_TAG_OF = {cls: tag for tag, cls in enumerate(_MESSAGE_TYPES, start=1)}
_NESTED = (WriteRequest, WriteOutcome)


def encode(message: Message) -> list[Any]:
    return [_TAG_OF[type(message)], *(_to_wire(getattr(message, f.name)) for f in dataclasses.fields(message))]


def _to_wire(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        if hasattr(value, "to_wire"):
            return value.to_wire()
        return [_to_wire(getattr(value, f.name)) for f in dataclasses.fields(value)]
    if isinstance(value, tuple):
        return [_to_wire(v) for v in value]
    return value


def decode(wire: object) -> Message:
    if not isinstance(wire, list | tuple) or not wire or not isinstance(wire[0], int):
        raise MessageDecodeError("a message must be a list starting with its integer tag")
    tag = wire[0]
    if not 1 <= tag <= len(_MESSAGE_TYPES):
        raise MessageDecodeError(f"unknown message tag {tag}")
    cls = _MESSAGE_TYPES[tag - 1]
    message: Message = _from_wire(cls, list(wire[1:]), cls.__name__)
    return message


@cache
def _hints_of(cls: type) -> dict[str, Any]:
    """Field types per message class, resolved once (resolving them was a tenth of a node's CPU)."""
    return get_type_hints(cls)


def _from_wire(cls: type, items: list[Any], where: str) -> Any:
    if hasattr(cls, "from_wire"):
        try:
            return cls.from_wire(items)
        except ValueError as exc:
            raise MessageDecodeError(f"{where}: {exc}") from exc
    fields = dataclasses.fields(cls)
    if len(items) != len(fields):
        raise MessageDecodeError(f"{where} has {len(items)} fields, expected {len(fields)}")
    hints = _hints_of(cls)
    values = [_check(hints[f.name], item, f"{where}.{f.name}") for f, item in zip(fields, items, strict=True)]
    return cls(*values)


def _check(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        for option in typing.get_args(hint):
            try:
                return _check(option, value, where)
            except MessageDecodeError:
                continue
        raise MessageDecodeError(f"{where}: {type(value).__name__} matches none of {hint}")
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise MessageDecodeError(f"{where} must be a list")
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_check(args[0], v, f"{where}[]") for v in value)
        if len(args) != len(value):
            raise MessageDecodeError(f"{where} must have {len(args)} items")
        return tuple(_check(a, v, f"{where}[]") for a, v in zip(args, value, strict=True))
    if hint is type(None):
        if value is not None:
            raise MessageDecodeError(f"{where} must be null")
        return None
    if hint in _NESTED or (isinstance(hint, type) and dataclasses.is_dataclass(hint)):
        if not isinstance(value, list | tuple):
            raise MessageDecodeError(f"{where} must be a list")
        return _from_wire(hint, list(value), where)
    if hint is bool:
        if not isinstance(value, bool):
            raise MessageDecodeError(f"{where} must be a boolean")
        return value
    if hint is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise MessageDecodeError(f"{where} must be an integer")
        return value
    if hint in (str, bytes):
        if not isinstance(value, hint):
            raise MessageDecodeError(f"{where} must be {hint.__name__}")
        return value
    raise MessageDecodeError(f"{where}: no decoder for {hint}")
