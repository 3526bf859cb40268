"""TestServers whose port is what a node's client port is: aiohttp with the node's limits, and
the edge's fast path in front of it (node/http/edge.py). Tests use them with aiohttp's TestClient."""

import asyncio
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer
from yarl import URL

from node.http.app import API_KEY
from node.http.edge import ClientEdge, aiohttp_limits
from node.http.errors import json_errors_protocol


class LimitedTestServer(TestServer):
    """aiohttp alone, with the node's head limits and idle timeout (node/server.py gives them to
    its AppRunner; TestServer's own keywords never reach the runner), and with aiohttp's protocol
    as the edge hands connections to it (errors.json_errors_protocol)."""

    def __init__(self, app: web.Application) -> None:
        super().__init__(app)
        self._listener: asyncio.Server | None = None

    async def _make_runner(self, **kwargs: Any) -> web.AppRunner:
        return await super()._make_runner(**{**aiohttp_limits(self.app[API_KEY].limits), **kwargs})

    def protocol_factory(self, server: web.Server) -> Any:
        return lambda: json_errors_protocol(server)

    async def start_server(self, loop: asyncio.AbstractEventLoop | None = None, **kwargs: Any) -> None:
        if self.runner:
            return
        self.runner = await self._make_runner(**kwargs)
        await self.runner.setup()
        assert self.runner.server is not None
        factory = self.protocol_factory(self.runner.server)
        self._listener = await asyncio.get_running_loop().create_server(factory, self.host, 0)
        self.port = self._listener.sockets[0].getsockname()[1]
        self.scheme = "http"
        self._root = URL(f"http://{self.host}:{self.port}")

    def stop_listening(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    async def close(self) -> None:
        self.stop_listening()
        await super().close()


class EdgeTestServer(LimitedTestServer):
    def __init__(self, app: web.Application) -> None:
        super().__init__(app)
        self.edge: ClientEdge | None = None

    def protocol_factory(self, server: web.Server) -> Any:
        self.edge = ClientEdge(self.app, server)
        return self.edge

    async def close(self) -> None:
        self.stop_listening()  # no new connection while the edge lets the answers in flight finish
        if self.edge is not None:
            await self.edge.close(1.0)
        await super().close()
