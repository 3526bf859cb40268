"""The peer transport: persistent WebSocket connections between Titra nodes.

Edge module (asyncio, aiohttp, logging). Rules:
- Each node opens ONE outbound connection to each peer at `ws://HOST:PORT/v1/peer` and only sends
  on it; it only receives on the connections peers opened to it. So A->B traffic rides A's
  socket and B->A rides B's, and neither side ever has to pick a winner between two sockets.
- `send` never blocks and never fails for a down peer: messages wait in a bounded per-peer queue
  (oldest dropped first) and the round that sent them times out on its own (a timeout is an
  unknown outcome, never a failure; STYLE.md).
- Messages sent in one event-loop tick to one peer leave as one frame: a msgpack list of encoded
  messages (`cluster.messages.encode`), at most `batch_messages_max` and `frame_bytes_max`.
- Order is preserved per peer (one FIFO queue, one writer per connection); delivery is at most once.
- Messages to self go through the same `on_message` callback on the next tick, so a coordinator
  treats its own replica like any other (peterbourgon/caspaxos: one interface, local or remote).
- Peer endpoints need the cluster secret (`Authorization: Bearer ...`), checked before the
  upgrade; the sender names itself with `Titra-Node-Id`, which must be a configured peer, unless
  `admit_unknown_peers` (a node serving gossip membership): then a sender holding the secret
  but not configured is a node joining through a seed, admitted (up to `members_max` peers)
  with no address until its gossip supplies one (`add_peer`, node/membership.py).
"""

import asyncio
import contextlib
import hmac
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp
import msgpack
from aiohttp import web

from cluster.limits import CLOCK_DEFAULTS, MEMBERSHIP_DEFAULTS, PEER_DEFAULTS, PeerDefaults
from cluster.messages import Message, MessageDecodeError, decode, encode

log = logging.getLogger("titra.transport")

PEER_PATH = "/v1/peer"
NODE_ID_HEADER = "Titra-Node-Id"
# The largest msgpack array header (0xdd + 4 bytes); a frame is this plus its packed messages.
_ARRAY_HEADER_BYTES_MAX = 5


class UnknownPeerError(LookupError):
    """`send` to a node id that is neither this node nor in the configured peer map."""


@dataclass(slots=True)
class TransportStats:
    frames_sent: int = 0
    messages_sent: int = 0
    messages_received: int = 0
    decode_errors: int = 0  # malformed frames plus malformed messages inside well-formed frames
    dropped: int = 0  # queue overflow, or a message too large for any frame


@dataclass(slots=True, eq=False)
class _Peer:
    node_id: str
    address: str  # "host:port" of its peer listener; "" for a node met inbound, not yet located
    # Packed messages: encoding at `send` time surfaces an unencodable message in its caller.
    queue: deque[bytes] = field(default_factory=deque)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    ws: aiohttp.ClientWebSocketResponse | None = None
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
        self.node_id = node_id
        self.stats = TransportStats()
        self._secret = secret.encode()
        self._on_message = on_message
        self._defaults = defaults
        self._admit_unknown_peers = admit_unknown_peers
        self._on_connected = on_connected  # told each time an outbound connection comes up
        self._peers = {nid: _Peer(nid, addr) for nid, addr in peers.items() if nid != node_id}
        self._inbound: set[web.WebSocketResponse] = set()
        self._session: aiohttp.ClientSession | None = None
        self._started = False
        self._closed = False

    def routes(self) -> list[web.RouteDef]:
        return [web.get(PEER_PATH, self._handle_inbound)]

    async def start(self) -> None:
        assert not self._started, "start() is called once"
        self._started = True
        # No total timeout: it would cap the life of a persistent socket. The handshake is bounded
        # by connect_timeout_ms in _connect instead.
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))
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
        if self._session is not None:
            await self._session.close()

    async def close_inbound(self) -> None:
        """Close the connections peers opened to us (the listener's on_shutdown, and close())."""
        for ws in list(self._inbound):
            await ws.close(code=aiohttp.WSCloseCode.GOING_AWAY, message=b"node shutting down")

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
        return peer is not None and peer.ws is not None and not peer.ws.closed

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

    # Outbound: one connector task per peer, which also writes the frames.

    def _flush(self, peer: _Peer) -> None:
        peer.flush_scheduled = False
        peer.wake.set()  # a disconnected peer keeps its queue; the connector wakes itself on connect

    async def _run_outbound(self, peer: _Peer) -> None:
        retry_ms = self._defaults.reconnect_interval_ms
        while True:
            try:
                ws = await self._connect(peer)
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                peer.last_error = _describe(exc)
                log.debug("peer %s at %s unreachable: %s", peer.node_id, peer.address, peer.last_error)
                await asyncio.sleep(retry_ms / 1000)
                retry_ms = min(2 * retry_ms, self._defaults.reconnect_interval_ms_max)
                continue
            retry_ms = self._defaults.reconnect_interval_ms
            log.info("connected to peer %s at %s", peer.node_id, peer.address)
            peer.ws = ws
            peer.last_error = ""
            if self._on_connected is not None:
                self._on_connected(peer.node_id)
            try:
                await self._write_until_closed(peer, ws)
            except (aiohttp.ClientError, ConnectionError) as exc:
                peer.last_error = _describe(exc)
            finally:
                peer.ws = None
                await ws.close()
            log.warning("lost peer %s at %s: %s", peer.node_id, peer.address, peer.last_error or "closed")
            await asyncio.sleep(retry_ms / 1000)

    async def _connect(self, peer: _Peer) -> aiohttp.ClientWebSocketResponse:
        assert self._session is not None
        headers = {"Authorization": f"Bearer {self._secret.decode()}", NODE_ID_HEADER: self.node_id}
        async with asyncio.timeout(self._defaults.connect_timeout_ms / 1000):
            return await self._session.ws_connect(
                f"ws://{peer.address}{PEER_PATH}",
                headers=headers,
                heartbeat=self._defaults.heartbeat_interval_ms / 1000,  # finds half-open sockets
                max_msg_size=self._defaults.frame_bytes_max,
                compress=0,  # msgpack of mostly binary values; deflate would only cost CPU
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=self._defaults.connect_timeout_ms / 1000),
            )

    async def _write_until_closed(self, peer: _Peer, ws: aiohttp.ClientWebSocketResponse) -> None:
        # The peer sends nothing on our socket, but reading is what answers pings and sees a close.
        reader = asyncio.create_task(self._read_until_closed(peer, ws))
        try:
            # Flushes scheduled while disconnected already set it, but a connection that died
            # mid-drain leaves messages queued with no flush pending: send them now.
            peer.wake.set()
            while True:
                await peer.wake.wait()
                peer.wake.clear()
                while peer.queue and not ws.closed:
                    frame, count = self._take_frame(peer)
                    await ws.send_bytes(frame)
                    self.stats.frames_sent += 1
                    self.stats.messages_sent += count
                    peer.sent += count
                if ws.closed or reader.done():
                    return
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader

    async def _read_until_closed(self, peer: _Peer, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for msg in ws:
            if msg.type is aiohttp.WSMsgType.ERROR:
                peer.last_error = _describe(ws.exception())
        if not peer.last_error:
            peer.last_error = f"closed by the peer (code {ws.close_code})"
        peer.wake.set()  # let the writer notice the close

    def _take_frame(self, peer: _Peer) -> tuple[bytes, int]:
        parts: list[bytes] = []
        size = _ARRAY_HEADER_BYTES_MAX
        while peer.queue and len(parts) < self._defaults.batch_messages_max:
            if size + len(peer.queue[0]) > self._defaults.frame_bytes_max:
                break
            packed = peer.queue.popleft()
            parts.append(packed)
            size += len(packed)
        assert parts, "send never queues a message that cannot fit in a frame alone"
        header: bytes = msgpack.Packer(use_bin_type=True).pack_array_header(len(parts))
        return header + b"".join(parts), len(parts)

    # Inbound: the /v1/peer handler.

    async def _handle_inbound(self, request: web.Request) -> web.StreamResponse:
        offered = request.headers.get("Authorization", "").encode("utf-8", "replace")
        if not hmac.compare_digest(offered, b"Bearer " + self._secret):
            return _error(401, "unauthorized", "peer endpoints need the cluster secret as a Bearer token")
        sender = request.headers.get(NODE_ID_HEADER, "")
        peer = self._peers.get(sender)
        if peer is None:
            if not self._admit_unknown_peers:
                return _error(403, "forbidden", f"{NODE_ID_HEADER} names no configured peer")
            if not sender or sender == self.node_id or len(sender.encode()) > CLOCK_DEFAULTS.node_id_bytes_max:
                return _error(403, "forbidden", f"{NODE_ID_HEADER} must name the sending node")
            if len(self._peers) >= MEMBERSHIP_DEFAULTS.members_max:
                return _error(403, "forbidden", "this node knows as many peers as a cluster may have")
            # Holds the secret but is not configured: a node joining through gossip (its address comes later).
            peer = self._peers[sender] = _Peer(sender, "")
        ws = web.WebSocketResponse(
            max_msg_size=self._defaults.frame_bytes_max,  # aiohttp refuses larger frames before decoding
            heartbeat=self._defaults.heartbeat_interval_ms / 1000,
            compress=False,
        )
        await ws.prepare(request)
        self._inbound.add(ws)
        try:
            async for msg in ws:
                if msg.type is aiohttp.WSMsgType.BINARY:
                    self._receive_frame(peer, msg.data)
                elif msg.type is aiohttp.WSMsgType.TEXT:
                    self.stats.decode_errors += 1
                    log.warning("dropped a text frame from peer %s", sender)
        finally:
            self._inbound.discard(ws)
        return ws

    def _receive_frame(self, peer: _Peer, data: bytes) -> None:
        try:
            # unpackb bounds every length by len(data), itself bounded by max_msg_size above.
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


def peer_app(transport: PeerTransport) -> web.Application:
    """The peer listener app: /v1/peer, closing inbound sockets on shutdown so it does not hang."""
    app = web.Application()
    app.add_routes(transport.routes())

    async def on_shutdown(_: web.Application) -> None:
        await transport.close_inbound()

    app.on_shutdown.append(on_shutdown)
    return app


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


def _describe(exc: BaseException | None) -> str:
    return "" if exc is None else f"{type(exc).__name__}: {exc}"
