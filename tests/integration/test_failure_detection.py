"""Gossip and phi-accrual failure detection on a real 3-process cluster on 127.0.0.1.

kill -9 n3  ->  n1 and n2 show n3 `down` within the detector's documented time
            ->  a quorum write right after succeeds on n1 and n2 without waiting for a timeout
restart n3  ->  `alive` again everywhere, with a higher incarnation

and a fourth node started with `--seeds` only (no `--peers`) is learned by every node.
"""

import asyncio
import json
import os
import signal
import subprocess
from collections.abc import AsyncIterator, Callable
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from cluster.cli import main as titra_main
from cluster.failure_detector import silence_for_phi_ms
from cluster.limits import MEMBERSHIP_DEFAULTS as SETTINGS
from tests.integration.harness import BIN, SECRET, LocalCluster, Node, free_port, until

pytestmark = [pytest.mark.integration]

# Conviction comes phi_convict * ln 10 mean intervals after the last heartbeat (4.6 s at 250 ms).
# A window still young at the kill is judged partly by the bootstrap interval, which bounds the
# mean; add a round for the last heartbeat to spread and slack for process scheduling.
EXPECTED_MS = silence_for_phi_ms(SETTINGS.phi_convict, SETTINGS.gossip_interval_ms)
DEADLINE_MS = silence_for_phi_ms(SETTINGS.phi_convict, SETTINGS.bootstrap_interval_ms) + 2_000


@pytest_asyncio.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[LocalCluster]:
    c = LocalCluster(tmp_path, 3)
    try:
        await c.start()
        yield c
    finally:
        await c.stop()


async def members(cluster: LocalCluster, observer: str) -> dict[str, dict[str, Any]]:
    async with aiohttp.ClientSession() as session, session.get(f"{cluster.node(observer).url}/v1/status") as resp:
        status = await resp.json()
    return {m["node_id"]: m for m in status["membership"]["members"]}


async def titra_status_json(cluster: LocalCluster, observer: str, capsys: pytest.CaptureFixture[str]) -> Any:
    """`titra status --json` against `observer`, as a user runs it."""
    capsys.readouterr()
    code = await asyncio.to_thread(titra_main, ["status", "--endpoint", cluster.node(observer).url, "--json"])
    assert code == 0
    return json.loads(capsys.readouterr().out)


def seen_as(status: str, incarnation: int | None = None) -> Callable[[dict[str, Any]], bool]:
    """Seen with `status` and heard from (incarnation 0 is a configured peer not heard from yet)."""

    def check(member: dict[str, Any]) -> bool:
        if incarnation is None:
            return member["status"] == status and member["incarnation"] >= 1
        return member["status"] == status and member["incarnation"] == incarnation

    return check


async def everyone_sees(
    cluster: LocalCluster, observers: list[str], node: str, check: Callable[[dict[str, Any]], bool]
) -> bool:
    for observer in observers:
        try:
            view = (await members(cluster, observer)).get(node)
        except aiohttp.ClientError:
            return False
        if view is None or not check(view):
            return False
    return True


async def test_kill_9_is_convicted_in_time_writes_skip_it_and_a_restart_comes_back_alive(
    cluster: LocalCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    nodes = ["n1", "n2", "n3"]
    for node in nodes:
        await until(partial(everyone_sees, cluster, nodes, node, seen_as("alive")), f"every node sees {node} alive")
    before = (await members(cluster, "n1"))["n3"]["incarnation"]
    assert before >= 1
    # Let the arrival windows fill with real intervals (as in a cluster that has run for a while).
    await asyncio.sleep(3 * SETTINGS.bootstrap_interval_ms / 1000)

    loop = asyncio.get_running_loop()
    await cluster.kill("n3")
    killed_at = loop.time()
    await until(
        partial(everyone_sees, cluster, ["n1", "n2"], "n3", seen_as("down")),
        f"n1 and n2 convict n3 (deadline {DEADLINE_MS / 1000:.1f} s from the settings)",
        timeout_s=DEADLINE_MS / 1000,
    )
    detected_ms = (loop.time() - killed_at) * 1000
    with capsys.disabled():
        print(
            f"\nn3 convicted {detected_ms:.0f} ms after kill -9 "
            f"(expected ~{EXPECTED_MS:.0f} ms, deadline {DEADLINE_MS:.0f} ms)"
        )
    assert detected_ms >= silence_for_phi_ms(SETTINGS.phi_suspect, SETTINGS.arrival_mean_ms_min), "convicted too soon"

    document = await titra_status_json(cluster, "n1", capsys)
    n3 = next(m for m in document["membership"]["members"] if m["node_id"] == "n3")
    assert n3["status"] == "down" and n3["phi"] >= SETTINGS.phi_convict and n3["last_seen_ms_ago"] >= EXPECTED_MS / 2
    code = await asyncio.to_thread(titra_main, ["status", "--endpoint", cluster.node("n1").url])
    assert code == 0
    text = capsys.readouterr().out
    assert any(line.split()[:2] == ["n3", "down"] for line in text.splitlines()), text

    async with aiohttp.ClientSession() as session:
        started = loop.time()
        url = f"{cluster.node('n1').url}/v1/kv/default/after-conviction?consistency=quorum"
        async with session.put(url, data=b"v") as resp:
            assert resp.status == 204, await resp.text()
            assert sorted(resp.headers["Titra-Replicas"].split(",")) == ["n1", "n2"]
        took_ms = (loop.time() - started) * 1000
        async with session.put(url.replace("quorum", "all"), data=b"v") as resp:
            assert resp.status == 503, "a write that needs the convicted replica is refused before writing"
    with capsys.disabled():
        print(f"quorum write right after conviction: {took_ms:.0f} ms")
    assert took_ms < 1_000, "the write must not wait for a timeout"

    await cluster.restart("n3")
    await until(
        partial(everyone_sees, cluster, nodes, "n3", seen_as("alive", before + 1)),
        f"n3 alive again everywhere with incarnation {before + 1}",
    )
    document = await titra_status_json(cluster, "n3", capsys)
    assert document["membership"]["incarnation"] == before + 1


def spawn_with_seed_only(cluster: LocalCluster, node_id: str, seed: str) -> Node:
    """A node that knows one peer listener address, not even the node id behind it (no --peers)."""
    node = Node(node_id, free_port(), free_port(), cluster.root / node_id, cluster.root / f"{node_id}.log")
    with node.log_path.open("ab") as log:
        node.process = subprocess.Popen(
            [
                str(BIN / "titra-node"),
                "serve",
                "--node-id",
                node_id,
                "--listen",
                f"127.0.0.1:{node.port}",
                "--peer-listen",
                f"127.0.0.1:{node.peer_port}",
                "--seeds",
                seed,
                "--data-dir",
                str(node.data_dir),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "TITRA_CLUSTER_SECRET": SECRET},
        )
    return node


async def test_a_node_started_with_only_a_seed_is_learned_by_every_node(cluster: LocalCluster) -> None:
    cluster.nodes["n4"] = n4 = spawn_with_seed_only(cluster, "n4", f"127.0.0.1:{cluster.node('n1').peer_port}")
    try:
        await until(
            partial(everyone_sees, cluster, ["n1", "n2", "n3", "n4"], "n4", seen_as("alive", 1)),
            "n1, n2 and n3 learn n4 through gossip",
        )
        for node in ("n1", "n2", "n3"):
            await until(partial(everyone_sees, cluster, ["n4"], node, seen_as("alive")), f"n4 sees {node} alive")
        async with aiohttp.ClientSession() as session, session.get(f"{cluster.node('n1').url}/v1/status") as resp:
            status = await resp.json()
        assert "n4" not in status["ring"]["nodes"], "gossip shows members; the ring stays the configured one"
    finally:
        del cluster.nodes["n4"]
        assert n4.process is not None
        n4.process.send_signal(signal.SIGTERM)
        await asyncio.to_thread(n4.process.wait, 10)
