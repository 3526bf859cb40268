"""Every message between nodes, as frozen dataclasses, their wire tags, and `encode`/`decode`.

Pure. Inside the code messages are typed values dispatched with `match`; msgpack is only the
edge (STYLE.md). On the wire a message is `[tag, field, field, ...]` in field order; nested
request/outcome values are encoded the same way. Decoding checks the tag and the arity and the
primitive types of every field, so a malformed frame is refused with `MessageDecodeError`
rather than raising deep inside a handler. The codec, compiled once per class at import, is
cluster/message_codec.py; a new message needs only its line in `Message`.

`round_id` ties a reply to the request that caused it; it is unique per sending node.
`round_id == 0` on a ReplicaMerge means "no acknowledgement wanted" (read repair, the
asynchronous remainder of a write at `one`).
"""

import typing
from typing import Any, Union

from cluster import message_codec
from cluster.frozen import frozen
from cluster.message_codec import SEQUENCES, Checker, Encoder, fields_decoder, fields_encoder
from cluster.requests import WriteOutcome, WriteRequest

# Raised by the codec (cluster/message_codec.py); importable from here, with the messages.
MessageDecodeError = message_codec.MessageDecodeError


@frozen
class ReplicaRead:
    round_id: int
    keyspace: str
    key: bytes


@frozen
class ReplicaReadReply:
    round_id: int
    clock: bytes | None  # the encoded sibling set; None when the replica has no such key
    error: str = ""


@frozen
class ReplicaMerge:
    round_id: int
    keyspace: str
    key: bytes
    clock: bytes
    durability: str


@frozen
class ReplicaMergeAck:
    round_id: int
    ok: bool
    error: str = ""


@frozen
class ForwardWrite:
    """A write handed to a replica of its key to coordinate (the receiver is not one, or the
    request carries an Idempotency-Key and must reach the key's first replica)."""

    round_id: int
    request: WriteRequest


@frozen
class ForwardWriteReply:
    round_id: int
    outcome: WriteOutcome


@frozen
class ListKeys:
    round_id: int
    keyspace: str
    prefix: bytes
    after: bytes | None
    limit: int


@frozen
class ListKeysReply:
    round_id: int
    keys: tuple[bytes, ...]
    complete: bool  # no more keys after the last one on this replica
    error: str = ""


# --- membership (cluster/membership.py) ---------------------------------------------------------


@frozen
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


@frozen
class GossipSyn:
    """Push: the sender's whole membership; the receiver merges it and answers what the sender lacks."""

    entries: tuple[GossipEntry, ...]


@frozen
class GossipAck:
    """Pull: the entries the receiver of a GossipSyn holds newer than the sender, or the sender lacks."""

    entries: tuple[GossipEntry, ...]


# --- end membership ------------------------------------------------------------------------------


# --- repair: hinted handoff and anti-entropy (cluster/hints.py, cluster/anti_entropy.py) ---------


@frozen
class HintStore:
    """Sloppy quorum (Dynamo §4.6): keep this clock as a hint for `target`, which is down."""

    round_id: int
    target: str
    keyspace: str
    key: bytes
    clock: bytes
    durability: str


@frozen
class HintStoreAck:
    round_id: int
    ok: bool
    error: str = ""


@frozen
class HintDeliver:
    """A hint replayed to the replica it was meant for; merged like a ReplicaMerge."""

    delivery_id: int
    keyspace: str
    key: bytes
    clock: bytes


@frozen
class HintDeliverAck:
    delivery_id: int
    ok: bool
    error: str = ""


@frozen
class AeRoots:
    """Anti-entropy: the sender's Merkle roots of shared ranges, as (range end token, root)."""

    session_id: int
    keyspace: str
    roots: tuple[tuple[int, int], ...]


@frozen
class AeRootsReply:
    session_id: int
    differing: tuple[int, ...]  # range end tokens whose roots differ
    sizes: tuple[int, ...]  # the receiver's key count in each of them


@frozen
class AeHashes:
    """The sender's hashes at one tree level, as (position, hash), under nodes that differed."""

    session_id: int
    keyspace: str
    range_end: int
    level: int
    hashes: tuple[tuple[int, int], ...]


@frozen
class AeHashesReply:
    session_id: int
    differing: tuple[int, ...]  # positions whose hashes differ


@frozen
class AeKeys:
    """The sender's (key, clock digest) pairs in differing leaves (no leaves: the whole range)."""

    session_id: int
    keyspace: str
    range_end: int
    leaves: tuple[int, ...]
    entries: tuple[tuple[bytes, bytes], ...]


@frozen
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

# Each class's codec is compiled once, here: encode and decode are one dict lookup and one call.
_ENCODERS: dict[type, Encoder] = {cls: fields_encoder(cls, tag) for tag, cls in enumerate(_MESSAGE_TYPES, start=1)}
_DECODERS: dict[int, Checker] = {
    tag: fields_decoder(cls, cls.__name__) for tag, cls in enumerate(_MESSAGE_TYPES, start=1)
}


def encode(message: Message) -> list[Any]:
    return _ENCODERS[type(message)](message)


def decode(wire: object) -> Message:
    if not isinstance(wire, SEQUENCES) or not wire or not isinstance(wire[0], int):
        raise MessageDecodeError("a message must be a list starting with its integer tag")
    decode_fields = _DECODERS.get(wire[0])
    if decode_fields is None:
        raise MessageDecodeError(f"unknown message tag {wire[0]}")
    message: Message = decode_fields(wire[1:])
    return message
