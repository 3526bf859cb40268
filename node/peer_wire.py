"""The titra-peer/1 wire without I/O: the HTTP/1.1 upgrade handshake, then length-prefixed frames.

Pure (no asyncio, sockets, clocks or logging): functions take the bytes received so far and
return what they mean; node/transport.py carries the bytes and acts on the answers (h11's shape).
Rules:
- A connection opens with `GET /v1/peer`, `Connection: Upgrade`, `Upgrade: titra-peer/1`,
  `Authorization: Bearer <cluster secret>` and `Titra-Node-Id: <sender>`. The listener answers
  `101 Switching Protocols`, or refuses with an HTTP error whose JSON body a `curl` can read.
- A head, its blank line included, is at most `head_bytes_max` bytes.
- An upgrade request is checked in a fixed order (form, path, method, secret, sender, upgrade
  headers) and the first check that fails is the refusal; the secret is compared in constant time.
- After the upgrade a stream is frames: a 4-byte big-endian payload length, then the payload.
  A length above `frame_bytes_max` breaks the stream: nothing after it is read, and the
  connection must close.
"""

import hmac
import json
import re
from collections.abc import Collection
from dataclasses import field
from http import HTTPStatus

from cluster.frozen import frozen

PEER_PATH = "/v1/peer"
PEER_PROTOCOL = "titra-peer/1"
NODE_ID_HEADER = "Titra-Node-Id"
LENGTH_BYTES = 4  # before each frame: its payload's length, big-endian
SWITCHING_PROTOCOLS = (
    f"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: {PEER_PROTOCOL}\r\n\r\n".encode()
)

_HEAD_END = b"\r\n\r\n"
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # an HTTP header name (RFC 9110 5.1)
_PROTOCOL_TOKEN = PEER_PROTOCOL.encode()


@frozen
class Refusal:
    """An HTTP answer refusing the upgrade: `status`, and the JSON error's `code` and `message`."""

    status: int
    code: str
    message: str

    def response(self) -> bytes:
        """The whole HTTP/1.1 answer; the listener closes the connection after it."""
        body = json.dumps({"error": {"code": self.code, "message": self.message}}).encode()
        head = (
            f"HTTP/1.1 {self.status} {HTTPStatus(self.status).phrase}\r\n"
            "Content-Type: application/json; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        )
        return head.encode() + body


@frozen
class Upgrade:
    """An upgrade request the listener accepts: the node that sent it, and the bytes behind its head."""

    sender: str
    rest: bytes  # frames the sender wrote right behind its request


@frozen
class Admission:
    """Who the listener of node `node_id` lets in."""

    node_id: str
    secret: bytes = field(repr=False)
    head_bytes_max: int
    # A node serving gossip membership admits any holder of the secret that names itself: a node
    # joining through a seed, up to `members_max` known peers.
    admit_unknown_peers: bool
    node_id_bytes_max: int
    members_max: int


def upgrade_request(address: str, node_id: str, secret: bytes) -> bytes:
    """The head a node sends to open its connection to the peer listening at `address`."""
    return (
        f"GET {PEER_PATH} HTTP/1.1\r\nHost: {address}\r\nConnection: Upgrade\r\nUpgrade: {PEER_PROTOCOL}\r\n"
        f"Authorization: Bearer {secret.decode()}\r\n{NODE_ID_HEADER}: {node_id}\r\n\r\n"
    ).encode()


def read_upgrade_request(
    received: bytes | bytearray, admission: Admission, known_peers: Collection[str]
) -> Upgrade | Refusal | None:
    """What the bytes received on a listener's connection ask for; None while the head is incomplete.

    `known_peers` are the node ids the listener already knows (configured, or admitted before).
    """
    head_max = admission.head_bytes_max
    end = received.find(_HEAD_END, 0, head_max + 1)
    if end < 0 or end + len(_HEAD_END) > head_max:
        if len(received) > head_max:
            return Refusal(400, "bad_request", f"the request head is longer than {head_max} bytes")
        return None
    admitted = _admit(bytes(received[:end]), admission, known_peers)
    if isinstance(admitted, Refusal):
        return admitted
    return Upgrade(admitted, bytes(received[end + len(_HEAD_END) :]))


def _admit(head: bytes, admission: Admission, known_peers: Collection[str]) -> str | Refusal:
    """The node an upgrade request comes from, or why it is refused: form, path, method, secret, sender, upgrade."""
    try:
        request_line, headers = _parse_head(head)
        method, target, version = request_line.decode("ascii").split(" ")  # a ValueError if not three
        if version != "HTTP/1.1" or not target.startswith("/"):
            raise ValueError("the request line is not `METHOD /PATH HTTP/1.1`")
    except ValueError as exc:  # UnicodeDecodeError is one too
        return Refusal(400, "bad_request", f"malformed request head: {exc}")
    if target.partition("?")[0] != PEER_PATH:
        return Refusal(404, "route_not_found", f"the peer listener serves only {PEER_PATH}")
    if method != "GET":
        return Refusal(400, "bad_request", f"{PEER_PATH} takes GET with `Upgrade: {PEER_PROTOCOL}`")
    if not hmac.compare_digest(headers.get("authorization", b""), b"Bearer " + admission.secret):
        return Refusal(401, "unauthorized", "peer endpoints need the cluster secret as a Bearer token")
    sender = headers.get(NODE_ID_HEADER.lower(), b"").decode("utf-8", "replace")
    if sender not in known_peers:
        if not admission.admit_unknown_peers:
            return Refusal(403, "forbidden", f"{NODE_ID_HEADER} names no configured peer")
        if not sender or sender == admission.node_id or len(sender.encode()) > admission.node_id_bytes_max:
            return Refusal(403, "forbidden", f"{NODE_ID_HEADER} must name the sending node")
        if len(known_peers) >= admission.members_max:
            return Refusal(403, "forbidden", "this node knows as many peers as a cluster may have")
    connection = {token.strip().lower() for token in headers.get("connection", b"").split(b",")}
    if b"upgrade" not in connection or headers.get("upgrade", b"").lower() != _PROTOCOL_TOKEN:
        return Refusal(400, "bad_request", f"{PEER_PATH} needs `Connection: Upgrade` and `Upgrade: {PEER_PROTOCOL}`")
    return sender


def read_upgrade_answer(received: bytes | bytearray, head_bytes_max: int) -> str | None:
    """How a listener answered our upgrade request: "" when it switched to titra-peer/1, else why
    the connection cannot be used; None while the answer's head is incomplete."""
    end = received.find(_HEAD_END)
    if end < 0:
        return "the peer's answer to the upgrade is too long" if len(received) > head_bytes_max else None
    try:
        status_line, headers = _parse_head(bytes(received[:end]))
    except ValueError as exc:
        return f"a malformed answer to the upgrade: {exc}"
    if status_line.split(b" ", 2)[1:2] != [b"101"]:
        return f"refused by the peer: {status_line.decode('latin-1')}"
    if headers.get("upgrade", b"").lower() != _PROTOCOL_TOKEN:
        return f"the peer switched to a protocol other than {PEER_PROTOCOL}"
    if len(received) > end + len(_HEAD_END):
        return "the peer sent data on a send-only connection"
    return ""


def _parse_head(head: bytes) -> tuple[bytes, dict[str, bytes]]:
    """The start line and the headers (lowercase names) of an HTTP/1.1 head; ValueError if malformed."""
    start_line, *lines = head.split(b"\r\n")
    headers: dict[str, bytes] = {}
    for line in lines:
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.fullmatch(name):
            raise ValueError(f"not a header line: {line[:64]!r}")
        key = name.decode("ascii").lower()
        if key in headers:
            raise ValueError(f"header {key} given twice")
        headers[key] = value.strip(b" \t")
    return start_line, headers


class FrameReader:
    """Splits the byte stream of an upgraded connection into frame payloads, however the bytes arrive."""

    def __init__(self, frame_bytes_max: int) -> None:
        assert 0 <= frame_bytes_max < 2 ** (8 * LENGTH_BYTES), "a frame's length travels in 4 bytes"
        self.frame_bytes_max = frame_bytes_max
        self.oversized_length: int | None = None  # set by a length above frame_bytes_max: the stream is broken
        self._partial = bytearray()  # the start of a frame whose end has not arrived

    @property
    def partial_bytes(self) -> int:
        return len(self._partial)

    def feed(self, data: bytes) -> list[bytes | bytearray]:
        """The payload of every frame `data` completes, in order; a partial frame stays for the next call.

        Frames before an oversized length are returned; the reader then sets `oversized_length`,
        drops what it holds and returns nothing more.
        """
        if self.oversized_length is not None:
            return []
        partial = self._partial
        view: bytes | bytearray = data
        if partial:
            partial += data
            view = partial
        payloads: list[bytes | bytearray] = []
        offset, total = 0, len(view)
        while total - offset >= LENGTH_BYTES:
            start = offset + LENGTH_BYTES
            length = int.from_bytes(view[offset:start], "big")
            if length > self.frame_bytes_max:
                self.oversized_length = length
                partial.clear()
                return payloads
            end = start + length
            if end > total:
                break
            payloads.append(view[start:end])
            offset = end
        if view is partial:
            del partial[:offset]
        elif offset < total:
            partial += data[offset:]
        return payloads
