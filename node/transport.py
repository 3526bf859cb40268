"""The peer transport: persistent titra-peer/1 connections between Titra nodes.

Edge module (asyncio, logging). Rules:
- Each node opens ONE outbound TCP connection to each peer's listener and only sends on it; it
  only receives on the connections peers opened to it. So A->B traffic rides A's socket and B->A
  rides B's, and neither side ever has to pick a winner between two sockets.
- A connection starts as HTTP/1.1 (`GET /v1/peer`, `Upgrade: titra-peer/1`), so refusals are
  ordinary HTTP answers with a JSON error a `curl` can read; after `101 Switching Protocols` it
  carries only frames: a 4-byte big-endian length, then a msgpack list of encoded messages
  (`cluster.messages.encode`), at most `batch_messages_max` and `frame_bytes_max`. A longer length
  is a protocol error that closes the connection; a malformed payload is dropped and counted.
- `send` never blocks and never fails for a down peer: messages wait in a bounded per-peer queue
  (oldest dropped first) and the round that sent them times out on its own (a timeout is an
  unknown outcome, never a failure; STYLE.md).
- Messages sent in one event-loop tick to one peer leave as one frame, written by that tick's
  flush straight into the socket's asyncio transport: no task wakes per frame. While the transport
  is paused (its buffer is past the high-water mark) frames stay in the queue.
- Order is preserved per peer (one FIFO queue, one connection); delivery is at most once.
- Messages to self go through the same `on_message` callback on the next tick, so a coordinator
  treats its own replica like any other (peterbourgon/caspaxos: one interface, local or remote).
- Peer endpoints need the cluster secret (`Authorization: Bearer ...`), checked before the
  upgrade; the sender names itself with `Titra-Node-Id`, which must be a configured peer, unless
  `admit_unknown_peers` (a node serving gossip membership): then a sender holding the secret
  but not configured is a node joining through a seed, admitted (up to `members_max` peers)
  with no address until its gossip supplies one (`add_peer`, node/membership.py).
"""

import asyncio
import hmac
import json
import logging
import re
import socket
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus

import msgpack

from cluster.limits import CLOCK_DEFAULTS, MEMBERSHIP_DEFAULTS, PEER_DEFAULTS, PeerDefaults
from cluster.messages import Message, MessageDecodeError, decode, encode

log = logging.getLogger("titra.transport")

PEER_PATH = "/v1/peer"
PEER_PROTOCOL = "titra-peer/1"
NODE_ID_HEADER = "Titra-Node-Id"
# The largest msgpack array header (0xdd + 4 bytes); a frame is this plus its packed messages.
_ARRAY_HEADER_BYTES_MAX = 5
_LENGTH_BYTES = 4  # before each frame: its payload's length, big-endian
_HEAD_END = b"\r\n\r\n"
_ADDRESS_BYTES_MAX = 259  # HOST:PORT, a 253-byte DNS name at most
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # an HTTP header name (RFC 9110 5.1)
_UPGRADED = f"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: {PEER_PROTOCOL}\r\n\r\n".encode()
_PACKER = msgpack.Packer(use_bin_type=True)

# An HTTP refusal of the upgrade: (status, code, message).
Refusal = tuple[int, str, str]


class UnknownPeerError(LookupError):
    """`send` to a node id that is neither this node nor in the configured peer map."""


@dataclass(slots=True)
class TransportStats:
    frames_sent: int = 0
    messages_sent: int = 0
    messages_received: int = 0
    decode_errors: int = 0  # malformed or oversized frames plus malformed messages inside frames
    dropped: int = 0  # queue overflow, or a message too large for any frame


@dataclass(slots=True, eq=False)
class _Peer:
    node_id: str
    address: str  # "host:port" of its peer listener; "" for a node met inbound, not yet located
    # Packed messages: encoding at `send` time surfaces an unencodable message in its caller.
    queue: deque[bytes] = field(default_factory=deque)
    conn: "_Outbound | None" = None
    flush_scheduled: bool = False
    task: asyncio.Task[None] | None = None
    sent: int = 0
    received: int = 0
    last_error: str = ""


class PeerTransport:
    def __init__(
        self,
        node_id: str,
        peers: dict[str, str],
        secret: str,
        on_message: Callable[[str, Message], None],
        defaults: PeerDefaults = PEER_DEFAULTS,
        admit_unknown_peers: bool = False,
        on_connected: Callable[[str], None] | None = None,
    ) -> None:
        if not secret:
            raise ValueError("the peer transport needs a non-empty cluster secret")
        if any(c in text for c in "\r\n" for text in (secret, node_id)):
            raise ValueError("the cluster secret and the node id travel in HTTP headers: no line breaks")
        self.node_id = node_id
        self.stats = TransportStats()
        self._secret = secret.encode()
        self._on_message = on_message
        self._defaults = defaults
        self._admit_unknown_peers = admit_unknown_peers
        self._on_connected = on_connected  # told each time an outbound connection comes up
        self._peers = {nid: _Peer(nid, addr) for nid, addr in peers.items() if nid != node_id}
        self._inbound: set[_Inbound] = set()
        self._server: asyncio.Server | None = None
        self._started = False
        self._closed = False
        if len(self._upgrade_request("h" * _ADDRESS_BYTES_MAX)) > defaults.handshake_head_bytes_max:
            raise ValueError("the cluster secret is too long for the peer handshake")

    async def listen(self, host: str | None = None, port: int = 0, *, sock: socket.socket | None = None) -> None:
        """Serve the peer endpoint on `host:port` (or an already bound `sock`) until close_inbound()."""
        assert self._server is None and not self._closed, "listen() once, again only after close_inbound()"
        loop = asyncio.get_running_loop()
        if sock is not None:
            self._server = await loop.create_server(lambda: _Inbound(self), sock=sock)
        else:
            self._server = await loop.create_server(lambda: _Inbound(self), host, port)

    async def start(self) -> None:
        assert not self._started, "start() is called once"
        self._started = True
        for peer in self._peers.values():
            if peer.address:
                peer.task = asyncio.create_task(self._run_outbound(peer), name=f"titra-peer-{peer.node_id}")

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        tasks = [peer.task for peer in self._peers.values() if peer.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.close_inbound()

    async def close_inbound(self) -> None:
        """Stop listening and close the connections peers opened to us (a node stopping, and close())."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for inbound in list(self._inbound):
            inbound.close()
        if server is not None:
            await server.wait_closed()

    def send(self, node_id: str, message: Message) -> None:
        loop = asyncio.get_running_loop()
        if node_id == self.node_id:
            loop.call_soon(self._on_message, node_id, message)
            return
        peer = self._peers.get(node_id)
        if peer is None:
            raise UnknownPeerError(node_id)
        packed: bytes = msgpack.packb(encode(message), use_bin_type=True)
        if len(packed) + _ARRAY_HEADER_BYTES_MAX > self._defaults.frame_bytes_max:
            # limits.py asserts frame_bytes_max covers the largest value twice over, so this is a
            # bug upstream; the receiver would refuse the frame and drop the whole connection.
            log.error(
                "dropping a %s of %d bytes to %s: larger than a frame", type(message).__name__, len(packed), node_id
            )
            self.stats.dropped += 1
            return
        if len(peer.queue) >= self._defaults.queue_messages_max:
            peer.queue.popleft()
            self.stats.dropped += 1
        peer.queue.append(packed)
        if not peer.flush_scheduled:
            # One flush per tick: everything sent in this tick goes out together.
            peer.flush_scheduled = True
            loop.call_soon(self._flush, peer)

    def add_peer(self, node_id: str, address: str) -> None:
        """Make a node learned by gossip reachable. A peer with an address keeps it (the configured one wins)."""
        assert node_id != self.node_id and address
        peer = self._peers.get(node_id)
        if peer is None:
            peer = self._peers[node_id] = _Peer(node_id, address)
        elif peer.address:
            return
        peer.address = address
        if self._started and not self._closed:
            peer.task = asyncio.create_task(self._run_outbound(peer), name=f"titra-peer-{node_id}")

    def remove_peer(self, node_id: str) -> None:
        """Stop connecting to a peer (a seed's placeholder once its node id is known)."""
        peer = self._peers.pop(node_id, None)
        if peer is not None and peer.task is not None:
            peer.task.cancel()

    def is_reachable(self, node_id: str) -> bool:
        if node_id == self.node_id:
            return True
        peer = self._peers.get(node_id)
        return peer is not None and peer.conn is not None and peer.conn.writable()

    def status(self) -> dict[str, dict[str, object]]:
        return {
            peer.node_id: {
                "connected": self.is_reachable(peer.node_id),
                "address": peer.address,
                "queued": len(peer.queue),
                "sent": peer.sent,
                "received": peer.received,
                "last_error": peer.last_error,
            }
            for peer in self._peers.values()
        }

    # Outbound: the tick's flush writes frames; one connector task per peer only (re)connects.

    def _flush(self, peer: _Peer) -> None:
        peer.flush_scheduled = False
        self._drain(peer)  # a disconnected or paused peer keeps its queue: connecting or resuming drains it

    def _drain(self, peer: _Peer) -> None:
        conn = peer.conn
        if conn is None:
            return
        # pause_writing() is called from inside write() once the buffer passes the high-water mark.
        while peer.queue and not conn.paused and conn.writable():
            frame, count = self._take_frame(peer)
            conn.write(frame)
            self.stats.frames_sent += 1
            self.stats.messages_sent += count
            peer.sent += count

    def _take_frame(self, peer: _Peer) -> tuple[bytes, int]:
        queue = peer.queue
        count_max = self._defaults.batch_messages_max
        room = self._defaults.frame_bytes_max - _ARRAY_HEADER_BYTES_MAX
        parts: list[bytes] = []
        size = 0
        while queue and len(parts) < count_max and size + len(queue[0]) <= room:
            packed = queue.popleft()
            parts.append(packed)
            size += len(packed)
        assert parts, "send never queues a message that cannot fit in a frame alone"
        header: bytes = _PACKER.pack_array_header(len(parts))
        length = (len(header) + size).to_bytes(_LENGTH_BYTES, "big")
        return b"".join([length, header, *parts]), len(parts)

    async def _run_outbound(self, peer: _Peer) -> None:
        retry_ms = self._defaults.reconnect_interval_ms
        while True:
            try:
                conn = await self._connect(peer)
            except (OSError, TimeoutError) as exc:  # refusals are ConnectionErrors
                peer.last_error = _describe(exc)
                log.debug("peer %s at %s unreachable: %s", peer.node_id, peer.address, peer.last_error)
                await asyncio.sleep(retry_ms / 1000)
                retry_ms = min(2 * retry_ms, self._defaults.reconnect_interval_ms_max)
                continue
            retry_ms = self._defaults.reconnect_interval_ms
            log.info("connected to peer %s at %s", peer.node_id, peer.address)
            peer.conn = conn
            peer.last_error = ""
            conn.on_resume = lambda: self._drain(peer)
            if self._on_connected is not None:
                self._on_connected(peer.node_id)
            # Flushes that ran while disconnected left their messages queued, and so did a
            # connection that died mid-drain: send them now.
            self._drain(peer)
            try:
                peer.last_error = await conn.closed
            finally:
                peer.conn = None
                conn.close()
            log.warning("lost peer %s at %s: %s", peer.node_id, peer.address, peer.last_error)
            await asyncio.sleep(retry_ms / 1000)

    async def _connect(self, peer: _Peer) -> "_Outbound":
        host, _, port = peer.address.rpartition(":")
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ConnectionError(f"not a HOST:PORT address: {peer.address!r}")
        loop = asyncio.get_running_loop()
        conn = _Outbound(self._upgrade_request(peer.address), self._defaults)
        try:
            async with asyncio.timeout(self._defaults.connect_timeout_ms / 1000):
                await loop.create_connection(lambda: conn, host.strip("[]"), int(port))
                refused = await conn.upgraded
        except BaseException:
            conn.close()
            raise
        if refused:
            conn.close()
            raise ConnectionError(refused)
        return conn

    def _upgrade_request(self, address: str) -> bytes:
        return (
            f"GET {PEER_PATH} HTTP/1.1\r\nHost: {address}\r\nConnection: Upgrade\r\nUpgrade: {PEER_PROTOCOL}\r\n"
            f"Authorization: Bearer {self._secret.decode()}\r\n{NODE_ID_HEADER}: {self.node_id}\r\n\r\n"
        ).encode()

    # Inbound: the listener's handshake, then frames.

    def _admit(self, head: bytes) -> _Peer | Refusal:
        """The peer an upgrade request comes from, or why it is refused: form, path, method, secret, sender, upgrade."""
        try:
            request_line, headers = _parse_head(head)
            method, target, version = request_line.decode("ascii").split(" ")  # a ValueError if not three
            if version != "HTTP/1.1" or not target.startswith("/"):
                raise ValueError("the request line is not `METHOD /PATH HTTP/1.1`")
        except ValueError as exc:  # UnicodeDecodeError is one too
            return 400, "bad_request", f"malformed request head: {exc}"
        if target.partition("?")[0] != PEER_PATH:
            return 404, "route_not_found", f"the peer listener serves only {PEER_PATH}"
        if method != "GET":
            return 400, "bad_request", f"{PEER_PATH} takes GET with `Upgrade: {PEER_PROTOCOL}`"
        if not hmac.compare_digest(headers.get("authorization", b""), b"Bearer " + self._secret):
            return 401, "unauthorized", "peer endpoints need the cluster secret as a Bearer token"
        sender = headers.get(NODE_ID_HEADER.lower(), b"").decode("utf-8", "replace")
        peer = self._peers.get(sender)
        if peer is None:
            if not self._admit_unknown_peers:
                return 403, "forbidden", f"{NODE_ID_HEADER} names no configured peer"
            if not sender or sender == self.node_id or len(sender.encode()) > CLOCK_DEFAULTS.node_id_bytes_max:
                return 403, "forbidden", f"{NODE_ID_HEADER} must name the sending node"
            if len(self._peers) >= MEMBERSHIP_DEFAULTS.members_max:
                return 403, "forbidden", "this node knows as many peers as a cluster may have"
        connection = {token.strip().lower() for token in headers.get("connection", b"").split(b",")}
        if b"upgrade" not in connection or headers.get("upgrade", b"").lower() != PEER_PROTOCOL.encode():
            return 400, "bad_request", f"{PEER_PATH} needs `Connection: Upgrade` and `Upgrade: {PEER_PROTOCOL}`"
        if peer is None:
            # Holds the secret but is not configured: a node joining through gossip (its address comes later).
            peer = self._peers[sender] = _Peer(sender, "")
        return peer

    def _frame_too_large(self, peer: _Peer, length: int) -> None:
        self.stats.decode_errors += 1
        log.warning(
            "closing the connection from peer %s: a frame of %d bytes (at most %d)",
            peer.node_id, length, self._defaults.frame_bytes_max,
        )  # fmt: skip

    def _receive_frame(self, peer: _Peer, data: bytes | bytearray) -> None:
        try:
            # unpackb bounds every length by len(data), itself at most frame_bytes_max.
            items = msgpack.unpackb(data, raw=False, use_list=True)
        except ValueError as exc:  # msgpack's ExtraData, FormatError, StackError, ... are ValueErrors
            self.stats.decode_errors += 1
            log.warning("dropped a malformed frame from peer %s: %s", peer.node_id, exc)
            return
        if not isinstance(items, list):
            self.stats.decode_errors += 1
            log.warning("dropped a frame from peer %s: not a list of messages", peer.node_id)
            return
        for item in items:
            try:
                message = decode(item)
            except MessageDecodeError as exc:
                self.stats.decode_errors += 1
                log.warning("dropped a malformed message from peer %s: %s", peer.node_id, exc)
                continue
            self.stats.messages_received += 1
            peer.received += 1
            self._on_message(peer.node_id, message)


class _Outbound(asyncio.Protocol):
    """Our connection to a peer: the upgrade request, then frames written by PeerTransport._drain."""

    def __init__(self, request: bytes, defaults: PeerDefaults) -> None:
        loop = asyncio.get_running_loop()
        self.upgraded: asyncio.Future[str] = loop.create_future()  # "" once upgraded, else why not
        self.closed: asyncio.Future[str] = loop.create_future()  # why the upgraded connection ended
        self.paused = False
        self.on_resume: Callable[[], None] | None = None
        self._request = request
        self._defaults = defaults
        self._transport: asyncio.Transport | None = None
        self._head = bytearray()
        self._open = False  # upgraded, and not lost since

    @property
    def transport(self) -> asyncio.Transport:
        assert self._transport is not None
        return self._transport

    def writable(self) -> bool:
        return self._open and not self.transport.is_closing()

    def write(self, frame: bytes) -> None:
        assert self._transport is not None
        self._transport.write(frame)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        _keep_alive(transport, self._defaults)
        transport.write(self._request)

    def data_received(self, data: bytes) -> None:
        assert self._transport is not None
        if self.upgraded.done():
            self._fail("the peer sent data on a send-only connection")
            return
        self._head += data
        end = self._head.find(_HEAD_END)
        if end < 0:
            if len(self._head) > self._defaults.handshake_head_bytes_max:
                self._fail("the peer's answer to the upgrade is too long")
            return
        try:
            status_line, headers = _parse_head(bytes(self._head[:end]))
        except ValueError as exc:
            self._fail(f"a malformed answer to the upgrade: {exc}")
            return
        if status_line.split(b" ", 2)[1:2] != [b"101"]:
            self._fail(f"refused by the peer: {status_line.decode('latin-1')}")
        elif headers.get("upgrade", b"").lower() != PEER_PROTOCOL.encode():
            self._fail(f"the peer switched to a protocol other than {PEER_PROTOCOL}")
        elif len(self._head) > end + len(_HEAD_END):
            self._fail("the peer sent data on a send-only connection")
        else:
            self._head.clear()
            self._open = True
            self.upgraded.set_result("")

    def _fail(self, why: str) -> None:
        if not self.upgraded.done():
            self.upgraded.set_result(why)
        elif not self.closed.done():
            self.closed.set_result(why)
        assert self._transport is not None
        self._transport.abort()

    def eof_received(self) -> bool:
        return False  # the peer closed: close our side too (connection_lost follows)

    def connection_lost(self, exc: Exception | None) -> None:
        self._open = False
        why = _describe(exc) if exc is not None else "closed by the peer"
        if not self.upgraded.done():
            self.upgraded.set_result(why or "closed")
        if not self.closed.done():
            self.closed.set_result(why)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if self.on_resume is not None:
            self.on_resume()  # asyncio allows writing from here (the buffer has drained below the low mark)


class _Inbound(asyncio.Protocol):
    """A connection a peer opened to our listener: its upgrade request, then frames to receive."""

    def __init__(self, owner: PeerTransport) -> None:
        self._owner = owner
        self._defaults = owner._defaults
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()  # the request head, then a partial frame
        self._peer: _Peer | None = None  # set by the upgrade
        self._refused = False  # answered with an HTTP error: waiting for the client to close
        self._discarded_bytes = 0
        self._timer: asyncio.TimerHandle | None = None

    @property
    def transport(self) -> asyncio.Transport:
        assert self._transport is not None
        return self._transport

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._owner._inbound.add(self)
        _keep_alive(transport, self._defaults)
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self._defaults.handshake_timeout_ms / 1000, self._handshake_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        self._owner._inbound.discard(self)
        if self._timer is not None:
            self._timer.cancel()

    def eof_received(self) -> bool:
        return False  # close our side too

    def data_received(self, data: bytes) -> None:
        if self._peer is not None:
            self._frames(self._peer, data)
        elif self._refused:
            # Read what the client still sends (closing on unread data would reset the connection
            # and could destroy our answer before it is read), but not much of it.
            self._discarded_bytes += len(data)
            if self._discarded_bytes > self._defaults.handshake_head_bytes_max:
                self.transport.abort()
        else:
            self._read_head(data)

    def _read_head(self, data: bytes) -> None:
        self._buffer += data
        head_max = self._defaults.handshake_head_bytes_max
        end = self._buffer.find(_HEAD_END, 0, head_max + 1)
        if end < 0 or end + len(_HEAD_END) > head_max:
            if len(self._buffer) > head_max:
                self._refuse((400, "bad_request", f"the request head is longer than {head_max} bytes"))
            return
        head, rest = bytes(self._buffer[:end]), bytes(self._buffer[end + len(_HEAD_END) :])
        self._buffer.clear()
        admitted = self._owner._admit(head)
        if isinstance(admitted, tuple):
            self._refuse(admitted)
            return
        assert self._timer is not None
        self._timer.cancel()
        self._peer = admitted
        self.transport.write(_UPGRADED)
        if rest:  # frames sent right behind the request
            self._frames(admitted, rest)

    def _refuse(self, refusal: Refusal) -> None:
        peername = self.transport.get_extra_info("peername")
        log.debug("refused a peer connection from %s: %d %s", peername, refusal[0], refusal[1])
        self._refused = True
        self._buffer.clear()
        self.transport.write(_http_error(*refusal))
        if self.transport.can_write_eof():
            self.transport.write_eof()  # the client reads the answer, then closes; the timer bounds the wait
        else:
            self.transport.close()

    def _handshake_timed_out(self) -> None:
        if self._refused:
            self.transport.abort()
        else:
            self._refused = True
            limit_s = self._defaults.handshake_timeout_ms / 1000
            self.transport.write(_http_error(408, "request_timeout", f"no complete upgrade request within {limit_s} s"))
            self.transport.close()

    def _frames(self, peer: _Peer, data: bytes) -> None:
        """Deliver every complete frame in the buffered bytes plus `data`; keep the partial tail."""
        buffer = self._buffer
        view: bytes | bytearray = data
        if buffer:
            buffer += data
            view = buffer
        frame_max = self._defaults.frame_bytes_max
        offset, total = 0, len(view)
        while total - offset >= _LENGTH_BYTES:
            start = offset + _LENGTH_BYTES
            length = int.from_bytes(view[offset:start], "big")
            if length > frame_max:
                self._owner._frame_too_large(peer, length)
                buffer.clear()
                self.transport.abort()
                return
            end = start + length
            if end > total:
                break
            self._owner._receive_frame(peer, view[start:end])
            offset = end
        if view is buffer:
            del buffer[:offset]
        elif offset < total:
            buffer += data[offset:]


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


def _http_error(status: int, code: str, message: str) -> bytes:
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    head = (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\nContent-Type: application/json; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


def _keep_alive(transport: asyncio.BaseTransport, defaults: PeerDefaults) -> None:
    """Let the kernel find dead links: TCP keepalive, and TCP_USER_TIMEOUT for unacknowledged data.

    This replaces the WebSocket heartbeat, which found half-open sockets with a ping per second
    from Python on both ends: the kernel probes only silent connections and costs no task wakeup.
    A live but hung process still acknowledges at the TCP level; the phi-accrual failure detector
    (node/membership.py) is what convicts it.
    """
    sock = transport.get_extra_info("socket")
    if sock is None:
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    options = [
        (getattr(socket, "TCP_KEEPIDLE", None) or getattr(socket, "TCP_KEEPALIVE", None), defaults.keepalive_idle_s),
        (getattr(socket, "TCP_KEEPINTVL", None), defaults.keepalive_interval_s),
        (getattr(socket, "TCP_KEEPCNT", None), defaults.keepalive_probes_count),
        (getattr(socket, "TCP_USER_TIMEOUT", None), defaults.unacked_timeout_ms),  # Linux only
    ]
    for option, value in options:
        if option is not None:
            sock.setsockopt(socket.IPPROTO_TCP, option, value)


def _describe(exc: BaseException | None) -> str:
    return "" if exc is None else f"{type(exc).__name__}: {exc}"
