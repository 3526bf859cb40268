"""Nodes run on uvloop by default and on asyncio's own loop when asked; a cluster may mix them
(the wire does not depend on the loop), which is also how a rolling change of the setting runs."""

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from tests.integration.harness import LocalCluster

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def mixed(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LocalCluster]:
    c = LocalCluster(tmp_path_factory.mktemp("mixed"), 3, node_args={"n3": ["--event-loop", "asyncio"]})
    try:
        await c.start()
        await c.wait_connected()
        yield c
    finally:
        await c.stop()


async def _status(session: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with session.get(f"{url}/v1/status") as resp:
        assert resp.status == 200
        body: dict[str, Any] = await resp.json()
        return body


async def test_each_node_reports_the_event_loop_it_runs_on(mixed: LocalCluster) -> None:
    async with aiohttp.ClientSession() as session:
        loops = {n: (await _status(session, mixed.node(n).url))["node"]["event_loop"] for n in ("n1", "n2", "n3")}
    assert loops == {"n1": "uvloop", "n2": "uvloop", "n3": "asyncio"}


async def test_writes_at_all_replicate_between_uvloop_and_asyncio_nodes(mixed: LocalCluster) -> None:
    async with aiohttp.ClientSession() as session:
        for writer, key in (("n1", "from-uvloop"), ("n3", "from-asyncio")):
            url = f"{mixed.node(writer).url}/v1/kv/default/{key}"
            async with session.put(f"{url}?consistency=all", data=key.encode()) as resp:
                assert resp.status == 204, await resp.text()
                assert sorted(resp.headers["Titra-Replicas"].split(",")) == ["n1", "n2", "n3"]
            for reader in ("n1", "n2", "n3"):
                read = f"{mixed.node(reader).url}/v1/kv/default/{key}?consistency=one"
                async with session.get(read) as resp:
                    assert resp.status == 200
                    assert await resp.read() == key.encode()
