"""The peer transport: persistent titra-peer/1 connections between Titra nodes.

Edge module (asyncio, logging); what the bytes mean (the handshake heads, where frames begin and
end) is node/peer_wire.py's, and this module moves them. Rules:
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
import logging
import socket
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

import msgpack

from cluster.limits import CLOCK_DEFAULTS, MEMBERSHIP_DEFAULTS, PEER_DEFAULTS, PeerDefaults
from cluster.messages import Message, MessageDecodeError, decode, encode
from node import peer_wire
from node.peer_wire import LENGTH_BYTES, NODE_ID_HEADER, PEER_PATH, PEER_PROTOCOL, Refusal

# The handshake's names stay importable from here, where they were before node/peer_wire.py.
__all__ = ["NODE_ID_HEADER", "PEER_PATH", "PEER_PROTOCOL", "PeerTransport", "TransportStats", "UnknownPeerError"]

log = logging.getLogger("titra.transport")

# The largest msgpack array header (0xdd + 4 bytes); a frame is this plus its packed messages.
_ARRAY_HEADER_BYTES_MAX = 5
_ADDRESS_BYTES_MAX = 259  # HOST:PORT, a 253-byte DNS name at most
_PACKER = msgpack.Packer(use_bin_type=True)


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
        self._admission = peer_wire.Admission(
            node_id=node_id,
            secret=self._secret,
            head_bytes_max=defaults.handshake_head_bytes_max,
            admit_unknown_peers=admit_unknown_peers,
            node_id_bytes_max=CLOCK_DEFAULTS.node_id_bytes_max,
            members_max=MEMBERSHIP_DEFAULTS.members_max,
        )
        self._on_connected = on_connected  # told each time an outbound connection comes up
        self._peers = {nid: _Peer(nid, addr) for nid, addr in peers.items() if nid != node_id}
        self._inbound: set[_Inbound] = set()
        self._server: asyncio.Server | None = None
        self._started = False
        self._closed = False
        # The loop that send() schedules flushes on, cached: on CPython 3.11 every
        # asyncio.get_running_loop() is a getpid(2) system call, and send() runs per message.
        self._loop: asyncio.AbstractEventLoop | None = None
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
        loop = self._loop
        if loop is None or loop.is_closed():
            loop = self._loop = asyncio.get_running_loop()
        if node_id == self.node_id:
            loop.call_soon(self._on_message, node_id, message)
            return
        peer = self._peers.get(node_id)
        if peer is None:
            raise UnknownPeerError(node_id)
        # One Packer reused (the event loop's thread only) instead of packb's new one per message.
        packed: bytes = _PACKER.pack(encode(message))
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
        length = (len(header) + size).to_bytes(LENGTH_BYTES, "big")
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
        return peer_wire.upgrade_request(address, self.node_id, self._secret)

    # Inbound: the listener's handshake, then frames.

    def _admitted(self, sender: str) -> _Peer:
        """The peer behind an accepted upgrade (peer_wire.read_upgrade_request checked the sender)."""
        peer = self._peers.get(sender)
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
        self._transport = _stream(transport)
        _keep_alive(transport, self._defaults)
        self._transport.write(self._request)

    def data_received(self, data: bytes) -> None:
        assert self._transport is not None
        if self.upgraded.done():
            self._fail("the peer sent data on a send-only connection")
            return
        self._head += data
        why = peer_wire.read_upgrade_answer(self._head, self._defaults.handshake_head_bytes_max)
        if why is None:
            return  # the answer's head is still incomplete
        if why:
            self._fail(why)
            return
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
        self._head = bytearray()  # the request head, until the upgrade or the refusal
        self._frames_read = peer_wire.FrameReader(self._defaults.frame_bytes_max)
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
        self._transport = _stream(transport)
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
        self._head += data
        owner = self._owner
        request = peer_wire.read_upgrade_request(self._head, owner._admission, owner._peers)
        if request is None:
            return  # the head is still incomplete
        if isinstance(request, Refusal):
            self._refuse(request)
            return
        self._head.clear()
        assert self._timer is not None
        self._timer.cancel()
        peer = self._peer = owner._admitted(request.sender)
        self.transport.write(peer_wire.SWITCHING_PROTOCOLS)
        if request.rest:  # frames sent right behind the request
            self._frames(peer, request.rest)

    def _refuse(self, refusal: Refusal) -> None:
        peername = self.transport.get_extra_info("peername")
        log.debug("refused a peer connection from %s: %d %s", peername, refusal.status, refusal.code)
        self._refused = True
        self._head.clear()
        self.transport.write(refusal.response())
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
            refusal = Refusal(408, "request_timeout", f"no complete upgrade request within {limit_s} s")
            self.transport.write(refusal.response())
            self.transport.close()

    def _frames(self, peer: _Peer, data: bytes) -> None:
        """Deliver every frame `data` completes; a length above frame_bytes_max closes the connection."""
        frames_read = self._frames_read
        for payload in frames_read.feed(data):
            self._owner._receive_frame(peer, payload)
        if frames_read.oversized_length is not None:
            self._owner._frame_too_large(peer, frames_read.oversized_length)
            self.transport.abort()


def _stream(transport: asyncio.BaseTransport) -> asyncio.Transport:
    """A TCP connection's transport, which reads and writes. Checked by its methods, not by
    isinstance: uvloop's transports (node/server.py runs nodes on uvloop) implement the
    interface without deriving from asyncio.Transport."""
    if not (hasattr(transport, "write") and hasattr(transport, "pause_reading")):
        raise TypeError(f"the peer transport needs a stream transport, not {type(transport).__name__}")
    return cast(asyncio.Transport, transport)


def _keep_alive(transport: asyncio.BaseTransport, defaults: PeerDefaults) -> None:
    """Let the kernel find dead links: TCP keepalive, and TCP_USER_TIMEOUT for unacknowledged data.

    This replaces the earlier aiohttp transport's WebSocket heartbeat, which found half-open
    sockets with a ping per second from Python on both ends: the kernel probes only silent
    connections and costs no task wakeup.
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
