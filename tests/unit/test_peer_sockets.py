"""Peer connections get TCP keepalive and TCP_USER_TIMEOUT whichever event loop runs the node
(node/server.py runs nodes on uvloop, whose transports hand out a socket stand-in, not a socket)."""

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest
import uvloop

from cluster.limits import PEER_DEFAULTS
from node.transport import _keep_alive, _stream

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}


@asynccontextmanager
async def a_connection() -> AsyncIterator[asyncio.BaseTransport]:
    """A TCP connection to a listener of this test, on the running loop."""
    server = await asyncio.start_server(lambda reader, writer: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    transport, _ = await asyncio.get_running_loop().create_connection(asyncio.Protocol, "127.0.0.1", port)
    try:
        yield transport
    finally:
        transport.close()
        server.close()
        await server.wait_closed()


async def _options_of_a_peer_connection() -> dict[str, int]:
    async with a_connection() as transport:
        _keep_alive(transport, PEER_DEFAULTS)
        sock = transport.get_extra_info("socket")
        return {
            "keepalive": sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
            "idle_s": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
            "unacked_ms": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT),
            "nodelay": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY),
        }


@pytest.mark.parametrize("loop_name", sorted(LOOPS))
def test_keepalive_and_user_timeout_are_set_on_either_loop(loop_name: str) -> None:
    with asyncio.Runner(loop_factory=LOOPS[loop_name]) as runner:
        options = runner.run(_options_of_a_peer_connection())
    assert options == {
        "keepalive": 1,
        "idle_s": PEER_DEFAULTS.keepalive_idle_s,
        "unacked_ms": PEER_DEFAULTS.unacked_timeout_ms,
        "nodelay": 1,  # both loops disable Nagle on TCP: a frame leaves at once
    }


@pytest.mark.parametrize("loop_name", sorted(LOOPS))
def test_both_loops_transports_pass_as_stream_transports(loop_name: str) -> None:
    async def check() -> None:
        async with a_connection() as transport:
            assert _stream(transport) is transport

    with asyncio.Runner(loop_factory=LOOPS[loop_name]) as runner:
        runner.run(check())


def test_a_transport_that_cannot_write_is_refused() -> None:
    with pytest.raises(TypeError, match="stream transport"):
        _stream(asyncio.BaseTransport())
