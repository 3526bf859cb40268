"""The peer message codec: every message round-trips, the wire format is pinned, and a malformed
frame is refused with MessageDecodeError naming the field (h11: a remote protocol error is typed)."""

import enum
import re

import msgpack
import pytest

from cluster.dvv import VersionVector
from cluster.messages import (
    _MESSAGE_TYPES,
    AeHashes,
    AeHashesReply,
    AeKeys,
    AeKeysReply,
    AeRoots,
    AeRootsReply,
    ForwardWrite,
    ForwardWriteReply,
    GossipAck,
    GossipEntry,
    GossipSyn,
    HintDeliver,
    HintDeliverAck,
    HintStore,
    HintStoreAck,
    ListKeys,
    ListKeysReply,
    Message,
    MessageDecodeError,
    ReplicaMerge,
    ReplicaMergeAck,
    ReplicaRead,
    ReplicaReadReply,
    decode,
    encode,
)
from cluster.requests import ContextEntry, WriteOutcome, WriteRequest

VV = VersionVector.of({"n1": 3, "n2": 1})
CLOCK = bytes(range(256)) + bytes(44)  # an encoded sibling set of 300 bytes


def write_request(**changes: object) -> WriteRequest:
    fields: dict[str, object] = {
        "keyspace": "default",
        "key": b"k1",
        "value": b"\x00value",
        "content_type": "text/plain",
        "deleted": False,
        "level": "quorum",
        "w": None,
        "timeout_ms": 1_000,
        "durability": "fsync",
        "context": (ContextEntry(b"default\x00k0", VV),),
        "if_match": VV,
        "if_none_match": False,
        "idempotency_key": "idem-1",
        "request_digest": b"digest",
        "sloppy": True,
    }
    fields.update(changes)
    return WriteRequest(**fields)  # type: ignore[arg-type]


OUTCOME = WriteOutcome("ok", "n1", ("n1", "n2"), 2, VV, "ts", "quorum", "", ("n3@n1",))
ENTRY = GossipEntry("n1", "127.0.0.1:7001", 2, 41, False)

# At least one value of every message type; a new message type fails test_every_type_has_samples.
SAMPLES: list[Message] = [
    ReplicaRead(1, "default", b"k1"),
    ReplicaReadReply(2, CLOCK),
    ReplicaReadReply(3, None, "store failed"),
    ReplicaMerge(4, "bench", b"k1", CLOCK, "fsync"),
    ReplicaMerge(0, "default", b"", b"", "none"),  # round_id 0: no acknowledgement wanted
    ReplicaMergeAck(5, True),
    ReplicaMergeAck(6, False, "disk full"),
    ForwardWrite(7, write_request()),
    ForwardWrite(8, write_request(w=2, context=(), if_match=None, if_none_match=True)),
    ForwardWriteReply(9, OUTCOME),
    ForwardWriteReply(10, WriteOutcome("timeout", "n2", (), 2, None, "", "", "timed out")),
    ListKeys(11, "default", b"pre", None, 100),
    ListKeys(12, "default", b"", b"pre/last", 1),
    ListKeysReply(13, (b"a", b"b\x00"), True),
    ListKeysReply(14, (), False, "no keyspace"),
    GossipSyn((ENTRY, GossipEntry("n2", "127.0.0.1:7002", 1, 7, True))),
    GossipAck(()),
    GossipAck((ENTRY,)),
    HintStore(15, "n3", "default", b"k1", CLOCK, "fsync"),
    HintStoreAck(16, True),
    HintDeliver(17, "default", b"k1", CLOCK),
    HintDeliverAck(18, False, "not a replica"),
    AeRoots(19, "default", ((2**63 - 1, 2**64 - 1), (-(2**63), 0))),
    AeRootsReply(20, (5, 9), (100, 0)),
    AeHashes(21, "default", 2**62, 3, ((0, 1), (7, 2**64 - 1))),
    AeHashesReply(22, ()),
    AeKeys(23, "default", 2**62, (1, 2), ((b"k1", b"digest1"), (b"k2", b""))),
    AeKeysReply(24, ((b"k1", b"d"),), (b"k9",)),
]


def refused(wire: object, text: str) -> None:
    """decode(wire) raises MessageDecodeError with exactly `text`."""
    with pytest.raises(MessageDecodeError, match=f"^{re.escape(text)}$"):
        decode(wire)


def tag_of(cls: type) -> int:
    return _MESSAGE_TYPES.index(cls) + 1


def test_every_type_has_samples() -> None:
    assert {type(m) for m in SAMPLES} == set(_MESSAGE_TYPES)


@pytest.mark.parametrize("message", SAMPLES, ids=lambda m: type(m).__name__)
def test_round_trip_through_msgpack(message: Message) -> None:
    # The transport packs with use_bin_type and unpacks with use_list: tuples come back as lists.
    packed = msgpack.packb(encode(message), use_bin_type=True)
    wire = msgpack.unpackb(packed, raw=False, use_list=True)
    decoded = decode(wire)
    assert decoded == message  # dataclass equality: a list left where a tuple belongs fails here
    assert type(decoded) is type(message)
    assert decode(tuple(wire)) == message  # an in-process wire may be a tuple


def test_tags_are_append_only() -> None:
    # The tags are the wire format: these first twenty must never move.
    assert [cls.__name__ for cls in _MESSAGE_TYPES[:20]] == [
        "ReplicaRead",
        "ReplicaReadReply",
        "ReplicaMerge",
        "ReplicaMergeAck",
        "ForwardWrite",
        "ForwardWriteReply",
        "ListKeys",
        "ListKeysReply",
        "GossipSyn",
        "GossipAck",
        "HintStore",
        "HintStoreAck",
        "HintDeliver",
        "HintDeliverAck",
        "AeRoots",
        "AeRootsReply",
        "AeHashes",
        "AeHashesReply",
        "AeKeys",
        "AeKeysReply",
    ]


def test_wire_format_is_tag_then_fields_in_order() -> None:
    assert encode(ReplicaMerge(4, "bench", b"k1", b"c", "fsync")) == [3, 4, "bench", b"k1", b"c", "fsync"]
    assert encode(ReplicaMergeAck(5, True)) == [4, 5, True, ""]
    assert encode(ReplicaReadReply(2, None)) == [2, 2, None, ""]
    assert encode(AeRoots(19, "ks", ((1, 2),))) == [15, 19, "ks", [[1, 2]]]
    assert encode(GossipAck((ENTRY,))) == [10, [["n1", "127.0.0.1:7001", 2, 41, False]]]
    # Nested values are lists in field order; a VersionVector is its own list of (node, counter).
    assert encode(ForwardWriteReply(9, OUTCOME)) == [
        6,
        9,
        ["ok", "n1", ["n1", "n2"], 2, [("n1", 3), ("n2", 1)], "ts", "quorum", "", ["n3@n1"]],
    ]
    request = encode(ForwardWrite(7, write_request()))[2]
    assert request[9] == [[b"default\x00k0", [("n1", 3), ("n2", 1)]]]  # context: [key, version]
    assert len(request) == 15


def test_not_a_tagged_list_is_refused() -> None:
    for wire in (None, 3, b"\x03", {}, [], ["3"], [1.0, 1, "ks", b"k"], [None]):
        refused(wire, "a message must be a list starting with its integer tag")


@pytest.mark.parametrize("tag", [0, -1, len(_MESSAGE_TYPES) + 1, 2**70])
def test_unknown_tag_is_refused(tag: int) -> None:
    refused([tag, 1, "ks", b"k"], f"unknown message tag {tag}")


def test_wrong_arity_is_refused() -> None:
    merge = tag_of(ReplicaMerge)
    refused([merge, 4, "bench", b"k1", CLOCK], "ReplicaMerge has 4 fields, expected 5")
    refused([merge, 4, "bench", b"k1", CLOCK, "fsync", "extra"], "ReplicaMerge has 6 fields, expected 5")
    refused([tag_of(ReplicaMergeAck)], "ReplicaMergeAck has 0 fields, expected 3")


@pytest.mark.parametrize(
    ("wire", "text"),
    [
        ([3, 4, "bench", "k1", CLOCK, "fsync"], "ReplicaMerge.key must be bytes"),
        ([3, 4, "bench", b"k1", bytearray(CLOCK), "fsync"], "ReplicaMerge.clock must be bytes"),
        ([3, 4, b"bench", b"k1", CLOCK, "fsync"], "ReplicaMerge.keyspace must be str"),
        ([3, "4", "bench", b"k1", CLOCK, "fsync"], "ReplicaMerge.round_id must be an integer"),
        ([3, 4.0, "bench", b"k1", CLOCK, "fsync"], "ReplicaMerge.round_id must be an integer"),
        ([4, 5, 1, ""], "ReplicaMergeAck.ok must be a boolean"),
        ([4, 5, None, ""], "ReplicaMergeAck.ok must be a boolean"),
        ([1, 1, "ks", None], "ReplicaRead.key must be bytes"),
        ([2, 2, "clock", ""], "ReplicaReadReply.clock: str matches none of bytes | None"),
        ([7, 11, "ks", b"", 5, 10], "ListKeys.after: int matches none of bytes | None"),
        ([8, 13, [b"a", "b"], True, ""], "ListKeysReply.keys[] must be bytes"),
        ([8, 13, b"ab", True, ""], "ListKeysReply.keys must be a list"),
        ([15, 19, "ks", [[1, 2, 3]]], "AeRoots.roots[] must have 2 items"),
        ([15, 19, "ks", [[1, "2"]]], "AeRoots.roots[][] must be an integer"),
        ([19, 23, "ks", 1, [], [[b"k", "d"]]], "AeKeys.entries[][] must be bytes"),
        ([10, [["n1", "a", 1, 2]]], "GossipAck.entries[]: a gossip entry has 5 fields, not 4"),
        ([10, ["n1"]], "GossipAck.entries[] must be a list"),
    ],
)
def test_wrong_field_type_is_refused_naming_the_field(wire: list[object], text: str) -> None:
    refused(wire, text)


@pytest.mark.parametrize(
    "wire",
    [
        [3, True, "bench", b"k1", CLOCK, "fsync"],  # round_id
        [7, 11, "ks", b"", None, False],  # limit
        [17, 21, "ks", 1, True, []],  # level
    ],
)
def test_bool_is_not_an_integer(wire: list[object]) -> None:
    with pytest.raises(MessageDecodeError, match=r"\.(round_id|limit|level) must be an integer$"):
        decode(wire)


def test_bool_is_not_an_integer_inside_an_optional() -> None:
    wire = encode(ForwardWrite(8, write_request(w=2)))
    wire[2][6] = True
    refused(wire, "ForwardWrite.request.w: bool matches none of int | None")


def test_malformed_nested_request_is_refused_naming_the_path() -> None:
    good = encode(ForwardWrite(7, write_request()))

    def with_request(change: int, value: object) -> list[object]:
        request = list(good[2])
        request[change] = value
        return [good[0], good[1], request]

    refused(with_request(1, "k1"), "ForwardWrite.request.key must be bytes")
    refused(with_request(7, False), "ForwardWrite.request.timeout_ms must be an integer")
    refused(
        with_request(9, [[b"k", [("n1", 1)]], ["k", [("n1", 1)]]]), "ForwardWrite.request.context[].key must be bytes"
    )
    refused(with_request(9, [[b"k"]]), "ForwardWrite.request.context[] has 1 fields, expected 2")
    # The rest of a ClockDecodeError's text belongs to cluster/dvv.py; the prefix is this codec's.
    with pytest.raises(MessageDecodeError, match=r"^ForwardWrite\.request\.context\[\]\.version: "):
        decode(with_request(9, [[b"k", [["n1", "x"]]]]))
    refused(
        with_request(10, [["n1"]]),
        "ForwardWrite.request.if_match: list matches none of cluster.dvv.VersionVector | None",
    )
    refused([good[0], good[1], good[2][:-1]], "ForwardWrite.request has 14 fields, expected 15")
    refused([good[0], good[1], "request"], "ForwardWrite.request must be a list")


def test_malformed_nested_outcome_is_refused_naming_the_path() -> None:
    wire = encode(ForwardWriteReply(9, OUTCOME))
    wire[2][2] = ["n1", 2]
    refused(wire, "ForwardWriteReply.outcome.acks[] must be str")


def test_subclasses_of_field_types_are_accepted_as_before() -> None:
    # The fast path matches exact types only; anything else takes the per-field checkers, which
    # accept what isinstance accepts (e.g. an IntEnum where an integer is expected).
    class Round(enum.IntEnum):
        FIRST = 4

    class Name(str):
        pass

    decoded = decode([3, Round.FIRST, Name("bench"), b"k1", CLOCK, "fsync"])
    assert decoded == ReplicaMerge(4, "bench", b"k1", CLOCK, "fsync")
    assert isinstance(decoded, ReplicaMerge) and type(decoded.round_id) is Round


def test_decoded_sequences_are_tuples() -> None:
    decoded = decode([tag_of(AeKeys), 23, "ks", 1, [1, 2], [[b"k", b"d"]]])
    assert isinstance(decoded, AeKeys)
    assert decoded.leaves == (1, 2) and decoded.entries == ((b"k", b"d"),)
    assert type(decoded.leaves) is tuple and type(decoded.entries[0]) is tuple
