"""Repair on a real 3-process cluster: hinted handoff, anti-entropy and tombstone purging.

Convergence is judged on `GET /v1/replica/{keyspace}`, which reads each node's own store and never
read-repairs, and no test reads a key before the replicas have converged: what brings a node that
was down back in line is hinted handoff and anti-entropy alone. Settings are shortened through the
environment (node/anti_entropy.py): a pass every 100 ms, a 1 s hint TTL, a 3 s tombstone grace.
"""

import asyncio
import shutil
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from tests.integration.harness import LocalCluster, until

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

GRACE_MS = 3_000
ENV = {
    "TITRA_AE_INTERVAL_MS": "100",
    "TITRA_AE_TICK_MS": "20",
    "TITRA_AE_SESSION_TIMEOUT_MS": "2000",
    "TITRA_AE_TOMBSTONE_GRACE_MS": str(GRACE_MS),
    "TITRA_HINT_TTL_MS": "1000",
    "TITRA_HINT_TICK_MS": "20",
}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cluster(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LocalCluster]:
    c = LocalCluster(tmp_path_factory.mktemp("repair"), 3, env=ENV)
    try:
        await c.start()
        yield c
    finally:
        await c.stop()


@pytest_asyncio.fixture(loop_scope="module")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def kv(cluster: LocalCluster, node: str, key: str, query: str = "") -> str:
    return f"{cluster.node(node).url}/v1/kv/default/{key}" + (f"?{query}" if query else "")


async def replica_state(http: aiohttp.ClientSession, cluster: LocalCluster, node: str) -> dict[str, str]:
    """The node's own replica of `default`: key -> digest of the stored clock (tombstones too)."""
    state: dict[str, str] = {}
    cursor = None
    while True:
        query = "limit=1000" + (f"&cursor={cursor}" if cursor else "")
        async with http.get(f"{cluster.node(node).url}/v1/replica/default?{query}") as resp:
            assert resp.status == 200
            body = await resp.json()
        state.update({key: digest for key, digest in body["entries"]})
        cursor = body["cursor"]
        if cursor is None:
            return state


async def converged(http: aiohttp.ClientSession, cluster: LocalCluster) -> bool:
    states = [await replica_state(http, cluster, node) for node in cluster.nodes]
    return all(state == states[0] for state in states[1:])


async def status(http: aiohttp.ClientSession, cluster: LocalCluster, node: str) -> dict[str, Any]:
    async with http.get(f"{cluster.node(node).url}/v1/status") as resp:
        body: dict[str, Any] = await resp.json()
        return body["repair"]


async def put(http: aiohttp.ClientSession, url: str, value: bytes) -> dict[str, str]:
    async with http.put(url, data=value) as resp:
        assert resp.status == 204, await resp.text()
        return dict(resp.headers)


async def restart_and_time_convergence(http: aiohttp.ClientSession, cluster: LocalCluster, node: str) -> str:
    """Restart `node`, wait until every replica is identical; says how long each step took."""
    started = time.monotonic()
    await cluster.restart(node)
    ready = time.monotonic()
    await cluster.wait_connected()
    connected = time.monotonic()

    async def same() -> bool:
        return await converged(http, cluster)

    await until(same, "every node's replica of `default` is identical", timeout_s=60)
    done = time.monotonic()
    return (
        f"{done - started:.2f} s (process ready {ready - started:.2f} s, peers connected +{connected - ready:.2f} s, "
        f"replicas identical +{done - connected:.2f} s)"
    )


async def test_a_restarted_node_converges_without_client_reads(
    cluster: LocalCluster, http: aiohttp.ClientSession
) -> None:
    for i in range(100):
        await put(http, kv(cluster, f"n{1 + i % 3}", f"before-{i}", "consistency=all"), b"v")
    await cluster.kill("n3")
    fallbacks = []
    for i in range(50):
        headers = await put(http, kv(cluster, "n1", f"one-{i}", "consistency=one"), b"one")
        fallbacks.append(headers["Titra-Fallbacks"])
        headers = await put(http, kv(cluster, "n2", f"quorum-{i}", "consistency=quorum"), b"quorum")
        fallbacks.append(headers["Titra-Fallbacks"])
    for i in range(20):
        await put(http, kv(cluster, "n1", f"before-{i}", "consistency=quorum"), b"overwritten")
    assert "n3@n1" in fallbacks and "n3@n2" in fallbacks, "writes name the hints kept for n3"
    took = await restart_and_time_convergence(http, cluster, "n3")
    print(f"\nrestarted n3 (hints + anti-entropy) converged with no client reads in {took}")
    assert len(await replica_state(http, cluster, "n3")) == 200


async def test_a_node_that_lost_its_disk_is_rebuilt_by_anti_entropy(
    cluster: LocalCluster, http: aiohttp.ClientSession
) -> None:
    for i in range(300):
        await put(http, kv(cluster, f"n{1 + i % 3}", f"disk-{i}", "consistency=all"), b"v")
    await cluster.kill("n2")
    shutil.rmtree(cluster.node("n2").data_dir)
    took = await restart_and_time_convergence(http, cluster, "n2")
    print(f"\nn2 with an empty disk converged by anti-entropy in {took}")
    repair = await status(http, cluster, "n2")
    assert repair["anti_entropy"]["ready"] and repair["hints"]["backlog"] == 0
    async with http.get(f"{cluster.node('n2').url}/metrics") as resp:
        text = await resp.text()
    assert "titra_anti_entropy_keys_repaired_total" in text and "titra_hints_backlog" in text


async def test_a_node_down_past_the_grace_period_does_not_resurrect_deleted_keys(
    cluster: LocalCluster, http: aiohttp.ClientSession
) -> None:
    await put(http, kv(cluster, "n1", "zombie", "consistency=all"), b"brains")
    await cluster.kill("n3")
    async with http.delete(kv(cluster, "n1", "zombie", "consistency=quorum")) as resp:
        assert resp.status == 204 and resp.headers["Titra-Fallbacks"] == "n3@n1"
    deleted_at = time.monotonic()

    async def hint_expired_and_grace_passed() -> bool:
        hints = (await status(http, cluster, "n1"))["hints"]
        return hints["expired"] >= 1 and time.monotonic() - deleted_at > 1.5 * GRACE_MS / 1000

    await until(hint_expired_and_grace_passed, "n1's hint for n3 expired and the grace period passed", 30)
    for node in ("n1", "n2"):
        assert "zombie" in await replica_state(http, cluster, node), "n3 never confirmed: nothing is purged"
    await restart_and_time_convergence(http, cluster, "n3")

    async def purged_everywhere() -> bool:
        return all(["zombie" not in await replica_state(http, cluster, node) for node in cluster.nodes])

    await until(purged_everywhere, "the tombstone is purged on all three nodes", 30)
    passes = {node: (await status(http, cluster, node))["anti_entropy"]["full_passes"] for node in cluster.nodes}

    async def two_more_passes() -> bool:
        now = {node: (await status(http, cluster, node))["anti_entropy"]["full_passes"] for node in cluster.nodes}
        return all(now[node] >= passes[node] + 2 for node in cluster.nodes)

    await until(two_more_passes, "every node ran two more anti-entropy passes", 30)
    for node in cluster.nodes:
        async with http.get(kv(cluster, node, "zombie", "consistency=all")) as resp:
            assert resp.status == 404
        async with http.get(f"{cluster.node(node).url}/v1/kv/default?prefix=zombie") as resp:
            assert (await resp.json())["keys"] == []
        assert "zombie" not in await replica_state(http, cluster, node)
    assert sum([(await status(http, cluster, n))["anti_entropy"]["tombstones_purged"] for n in cluster.nodes]) >= 3
    await asyncio.sleep(0)
