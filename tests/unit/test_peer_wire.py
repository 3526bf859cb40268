"""The titra-peer/1 wire without sockets (node/peer_wire.py): frames split the same however the
bytes arrive, an oversized length breaks the stream, and the upgrade handshake admits exactly the
heads it should, refusing the rest with the HTTP answer a `curl` would read (h11-style tests)."""

import functools
import json

import pytest
from peer_heads import upgrade_head

from node.peer_wire import (
    LENGTH_BYTES,
    NODE_ID_HEADER,
    PEER_PATH,
    PEER_PROTOCOL,
    SWITCHING_PROTOCOLS,
    Admission,
    FrameReader,
    Refusal,
    Upgrade,
    read_upgrade_answer,
    read_upgrade_request,
    upgrade_request,
)

SECRET = b"s3cret-token"
HEAD_MAX = 1024
FRAME_MAX = 64


def frame(payload: bytes) -> bytes:
    return len(payload).to_bytes(LENGTH_BYTES, "big") + payload


def admission(*, admit_unknown_peers: bool = False, members_max: int = 8) -> Admission:
    return Admission(
        node_id="b",
        secret=SECRET,
        head_bytes_max=HEAD_MAX,
        admit_unknown_peers=admit_unknown_peers,
        node_id_bytes_max=16,
        members_max=members_max,
    )


# A well-formed request from peer "a" unless told otherwise.
request_head = functools.partial(upgrade_head, secret=SECRET)


def read(
    head: bytes, known: tuple[str, ...] = ("a",), *, admit_unknown_peers: bool = False, members_max: int = 8
) -> Upgrade | Refusal | None:
    """What the listener of node "b", knowing the peers `known`, makes of `head`."""
    rules = admission(admit_unknown_peers=admit_unknown_peers, members_max=members_max)
    return read_upgrade_request(head, rules, set(known))


def refused(head: bytes, *, admit_unknown_peers: bool = False) -> tuple[int, str]:
    result = read(head, admit_unknown_peers=admit_unknown_peers)
    assert isinstance(result, Refusal), result
    return result.status, result.code


# --- frames ---------------------------------------------------------------------------------------

PAYLOADS = [b"first", b"", b"\x00\x00\x00\x05 looks like a length", bytes(range(FRAME_MAX))]
STREAM = b"".join(frame(p) for p in PAYLOADS)
FRAME_ENDS = [sum(len(frame(p)) for p in PAYLOADS[: i + 1]) for i in range(len(PAYLOADS))]


def test_a_stream_in_one_piece_gives_every_payload_in_order() -> None:
    reader = FrameReader(FRAME_MAX)
    assert reader.feed(STREAM) == PAYLOADS
    assert reader.partial_bytes == 0
    assert reader.oversized_length is None


@pytest.mark.parametrize("cut", range(len(STREAM) + 1))
def test_a_stream_split_at_any_byte_gives_the_same_payloads(cut: int) -> None:
    reader = FrameReader(FRAME_MAX)
    first = reader.feed(STREAM[:cut])
    held = reader.partial_bytes
    second = reader.feed(STREAM[cut:])
    assert first + second == PAYLOADS
    complete = sum(1 for end in FRAME_ENDS if end <= cut)
    assert len(first) == complete  # every frame as soon as its last byte is in, none before
    assert held == cut - ([0, *FRAME_ENDS][complete])  # exactly the incomplete tail is held
    assert reader.partial_bytes == 0


def test_a_stream_fed_a_byte_at_a_time_gives_the_same_payloads() -> None:
    reader = FrameReader(FRAME_MAX)
    payloads = []
    for i in range(len(STREAM)):
        payloads += reader.feed(STREAM[i : i + 1])
    assert payloads == PAYLOADS
    assert reader.partial_bytes == 0


def test_every_pair_of_cuts_gives_the_same_payloads() -> None:
    stream = frame(b"ab") + frame(b"") + frame(b"cdef")
    for i in range(len(stream) + 1):
        for j in range(i, len(stream) + 1):
            reader = FrameReader(FRAME_MAX)
            got = reader.feed(stream[:i]) + reader.feed(stream[i:j]) + reader.feed(stream[j:])
            assert got == [b"ab", b"", b"cdef"], (i, j)


def test_a_frame_of_exactly_the_maximum_is_read() -> None:
    reader = FrameReader(FRAME_MAX)
    assert reader.feed(frame(b"x" * FRAME_MAX)) == [b"x" * FRAME_MAX]
    assert reader.oversized_length is None


def test_an_oversized_length_breaks_the_stream_after_the_frames_before_it() -> None:
    reader = FrameReader(FRAME_MAX)
    oversized = (FRAME_MAX + 1).to_bytes(LENGTH_BYTES, "big")
    assert reader.feed(frame(b"ok") + oversized + b"x" * 10) == [b"ok"]
    assert reader.oversized_length == FRAME_MAX + 1
    assert reader.partial_bytes == 0  # nothing of a broken stream is kept
    assert reader.feed(frame(b"later")) == []  # nor is anything after it read


def test_an_oversized_length_is_seen_before_its_payload_arrives() -> None:
    reader = FrameReader(FRAME_MAX)
    assert reader.feed(b"\xff\xff") == []
    assert reader.oversized_length is None  # half a length is no verdict yet
    assert reader.partial_bytes == 2
    assert reader.feed(b"\xff\xff" + b"x" * 10) == []
    assert reader.oversized_length == 2**32 - 1
    assert reader.partial_bytes == 0  # the held half is dropped with the rest


# --- the upgrade request, at the listener ---------------------------------------------------------


def test_a_good_request_is_admitted() -> None:
    assert read(request_head()) == Upgrade("a", b"")


def test_the_request_a_node_sends_is_admitted_by_its_peer() -> None:
    head = upgrade_request("127.0.0.1:7170", "a", SECRET)
    assert read(head) == Upgrade("a", b"")
    assert read(upgrade_request("127.0.0.1:7170", "a", b"other-secret")) == Refusal(
        401, "unauthorized", "peer endpoints need the cluster secret as a Bearer token"
    )


def test_frames_right_behind_the_head_are_handed_on() -> None:
    assert read(request_head() + frame(b"m1") + b"\x00\x00") == Upgrade("a", frame(b"m1") + b"\x00\x00")


def test_a_query_string_does_not_change_the_path() -> None:
    assert read(request_head(path=f"{PEER_PATH}?v=1")) == Upgrade("a", b"")


def test_a_head_is_not_judged_before_its_blank_line() -> None:
    head = request_head()
    for end in range(len(head)):
        assert read(head[:end]) is None, end


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (request_head(secret=None), (401, "unauthorized")),
        (request_head(secret=b"wrong"), (401, "unauthorized")),
        (request_head(secret=None, extra=(f"Authorization: Basic {SECRET.decode()}",)), (401, "unauthorized")),
        (request_head(path="/v1/status"), (404, "route_not_found")),
        (request_head(path="/v1/peers"), (404, "route_not_found")),
        (request_head(method="POST"), (400, "bad_request")),
        (request_head(node_id="mallory"), (403, "forbidden")),
        (request_head(node_id=None), (403, "forbidden")),
        (request_head(upgrade=None), (400, "bad_request")),
        (request_head(upgrade="websocket"), (400, "bad_request")),
    ],
    ids=["no-secret", "wrong-secret", "basic-auth", "other-path", "path-prefix", "post", "unknown-node",
         "no-node-id", "no-upgrade", "other-upgrade"],
)  # fmt: skip
def test_a_request_is_refused_for_what_it_lacks(head: bytes, expected: tuple[int, str]) -> None:
    assert refused(head) == expected


@pytest.mark.parametrize(
    "head",
    [
        b"GET /v1/peer\r\n\r\n",  # HTTP/0.9: two words
        request_head(version="HTTP/1.0"),
        request_head(path="v1/peer"),
        request_head(extra=("Host 127.0.0.1",)),  # no colon
        request_head(extra=("Bad Name: x",)),  # a space is no token character
        request_head(extra=(f"{NODE_ID_HEADER}: b",)),  # given twice
        "GET /v1/pée HTTP/1.1\r\n\r\n".encode(),  # not ASCII
    ],
    ids=["http-0.9", "http-1.0", "relative-path", "no-colon", "bad-name", "header-twice", "not-ascii"],
)
def test_a_malformed_head_is_a_bad_request(head: bytes) -> None:
    result = read(head)
    assert isinstance(result, Refusal)
    assert (result.status, result.code) == (400, "bad_request")
    assert result.message.startswith("malformed request head: ")


def test_checks_run_in_order_and_the_first_failure_answers() -> None:
    # form, path, method, secret, sender, upgrade: each head below fails every check after its own.
    assert refused(b"GET /v1/status\r\n\r\n") == (400, "bad_request")
    assert refused(request_head(path="/v1/status", method="POST", secret=None)) == (404, "route_not_found")
    assert refused(request_head(method="POST", secret=None)) == (400, "bad_request")
    assert refused(request_head(secret=None, node_id="mallory", upgrade=None)) == (401, "unauthorized")
    assert refused(request_head(node_id="mallory", upgrade=None)) == (403, "forbidden")


def test_a_head_longer_than_the_maximum_is_refused() -> None:
    padding = "X-Pad: " + "p" * HEAD_MAX
    result = read(request_head(extra=(padding,))[: HEAD_MAX + 1])
    assert result == Refusal(400, "bad_request", f"the request head is longer than {HEAD_MAX} bytes")
    assert read(b"G" * HEAD_MAX) is None  # at the maximum, still waiting for the blank line


def test_a_head_of_exactly_the_maximum_is_read() -> None:
    bare = request_head(extra=("X-Pad: ",))
    exact = request_head(extra=("X-Pad: " + "p" * (HEAD_MAX - len(bare)),))
    assert len(exact) == HEAD_MAX
    assert read(exact) == Upgrade("a", b"")
    one_more = request_head(extra=("X-Pad: " + "p" * (HEAD_MAX - len(bare) + 1),))
    assert refused(one_more) == (400, "bad_request")


def test_a_stranger_with_the_secret_is_admitted_when_membership_allows() -> None:
    assert read(request_head(node_id="joiner"), admit_unknown_peers=True) == Upgrade("joiner", b"")
    assert refused(request_head(node_id="joiner"), admit_unknown_peers=False) == (403, "forbidden")
    assert refused(request_head(node_id="b"), admit_unknown_peers=True) == (403, "forbidden")  # itself
    assert refused(request_head(node_id="x" * 17), admit_unknown_peers=True) == (403, "forbidden")  # too long
    assert refused(request_head(node_id=None), admit_unknown_peers=True) == (403, "forbidden")
    assert refused(request_head(node_id="joiner", secret=b"wrong"), admit_unknown_peers=True) == (401, "unauthorized")


def test_a_stranger_is_refused_once_the_cluster_is_full() -> None:
    full = tuple(f"n{i}" for i in range(8))
    result = read(request_head(node_id="joiner"), known=full, admit_unknown_peers=True, members_max=8)
    assert result == Refusal(403, "forbidden", "this node knows as many peers as a cluster may have")
    assert read(request_head(node_id="n3"), known=full, admit_unknown_peers=True, members_max=8) == Upgrade("n3", b"")


def test_a_refusal_is_an_http_answer_with_a_json_error() -> None:
    answer = Refusal(401, "unauthorized", "no secret").response()
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *lines = head.decode().split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    assert status_line == "HTTP/1.1 401 Unauthorized"
    assert headers["content-type"] == "application/json; charset=utf-8"
    assert headers["connection"] == "close"
    assert int(headers["content-length"]) == len(body)
    assert json.loads(body) == {"error": {"code": "unauthorized", "message": "no secret"}}


# --- the listener's answer, at the connecting node ------------------------------------------------


def test_switching_protocols_is_an_upgrade() -> None:
    assert read_upgrade_answer(SWITCHING_PROTOCOLS, HEAD_MAX) == ""
    for end in range(len(SWITCHING_PROTOCOLS)):
        assert read_upgrade_answer(SWITCHING_PROTOCOLS[:end], HEAD_MAX) is None, end


def test_an_answer_other_than_the_upgrade_says_why() -> None:
    refusal = Refusal(401, "unauthorized", "no secret").response()
    assert read_upgrade_answer(refusal, HEAD_MAX) == "refused by the peer: HTTP/1.1 401 Unauthorized"
    other = SWITCHING_PROTOCOLS.replace(PEER_PROTOCOL.encode(), b"websocket")
    assert read_upgrade_answer(other, HEAD_MAX) == f"the peer switched to a protocol other than {PEER_PROTOCOL}"
    assert read_upgrade_answer(SWITCHING_PROTOCOLS + b"\x00", HEAD_MAX) == (
        "the peer sent data on a send-only connection"
    )
    malformed = read_upgrade_answer(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade titra\r\n\r\n", HEAD_MAX)
    assert malformed is not None and malformed.startswith("a malformed answer to the upgrade: not a header line")
    assert read_upgrade_answer(b"H" * (HEAD_MAX + 1), HEAD_MAX) == "the peer's answer to the upgrade is too long"
    assert read_upgrade_answer(b"H" * HEAD_MAX, HEAD_MAX) is None
