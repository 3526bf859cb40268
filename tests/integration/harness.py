"""A real local cluster for integration tests: `titra-node serve` processes on 127.0.0.1.

Scenario tests read as scripts (etcd's datadriven tests, TigerBeetle's `t.replica(R0)`):

    cluster = LocalCluster(tmp_path, nodes=3); await cluster.start()
    await cluster.kill("n2"); ...; await cluster.restart("n2")

Ports are taken from the kernel (bind to port 0), data lives under pytest's tmp_path, and every
wait polls a condition with a deadline and names what it waited for.
"""

import asyncio
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

SECRET = "integration-secret-0123456789"
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def until(probe: Callable[[], Awaitable[bool]], what: str, timeout_s: float = 15.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        if await probe():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s} s waiting until {what}")


@dataclass
class Node:
    node_id: str
    port: int
    peer_port: int
    data_dir: Path
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class LocalCluster:
    root: Path
    nodes_count: int = 3
    nodes: dict[str, Node] = field(default_factory=dict)
    # Extra environment for every node, e.g. {"TITRA_AE_INTERVAL_MS": "100"} (node/anti_entropy.py).
    env: dict[str, str] = field(default_factory=dict)
    # Extra `titra-node serve` arguments per node id, e.g. {"n3": ["--event-loop", "asyncio"]}.
    node_args: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for i in range(1, self.nodes_count + 1):
            node_id = f"n{i}"
            data = self.root / node_id
            self.nodes[node_id] = Node(node_id, free_port(), free_port(), data, self.root / f"{node_id}.log")

    def node(self, node_id: str) -> Node:
        return self.nodes[node_id]

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes.values()]

    def _peers(self) -> str:
        return ",".join(f"{n.node_id}=127.0.0.1:{n.peer_port}" for n in self.nodes.values())

    def _spawn(self, node: Node) -> None:
        env = {**os.environ, **self.env, "TITRA_CLUSTER_SECRET": SECRET}
        log = node.log_path.open("ab")
        node.process = subprocess.Popen(
            [
                str(BIN / "titra-node"),
                "serve",
                "--node-id",
                node.node_id,
                "--listen",
                f"127.0.0.1:{node.port}",
                "--peer-listen",
                f"127.0.0.1:{node.peer_port}",
                "--peers",
                self._peers(),
                "--data-dir",
                str(node.data_dir),
                *self.node_args.get(node.node_id, []),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        log.close()

    async def start(self) -> None:
        for node in self.nodes.values():
            self._spawn(node)
        for node in self.nodes.values():
            await self.wait_ready(node.node_id)
        await self.wait_connected()

    async def wait_ready(self, node_id: str) -> None:
        node = self.nodes[node_id]

        async def ready() -> bool:
            assert node.process is not None
            if node.process.poll() is not None:
                raise AssertionError(f"{node_id} exited with {node.process.returncode}: {self.log_tail(node_id)}")
            try:
                async with aiohttp.ClientSession() as session, session.get(f"{node.url}/health/ready") as resp:
                    return resp.status == 200
            except aiohttp.ClientError:
                return False

        await until(ready, f"{node_id} answers /health/ready")

    async def wait_connected(self, among: list[str] | None = None) -> None:
        """Every running node sees every other running node as reachable."""
        names = among or [n for n, node in self.nodes.items() if node.process and node.process.poll() is None]

        async def connected() -> bool:
            async with aiohttp.ClientSession() as session:
                for name in names:
                    try:
                        async with session.get(f"{self.nodes[name].url}/v1/status") as resp:
                            status = await resp.json()
                    except aiohttp.ClientError:
                        return False
                    peers = status.get("peers", {})
                    for other in names:
                        if other != name and not peers.get(other, {}).get("connected"):
                            return False
            return True

        await until(connected, f"nodes {names} are connected to each other")

    async def kill(self, node_id: str) -> None:
        node = self.nodes[node_id]
        assert node.process is not None
        node.process.send_signal(signal.SIGKILL)
        await asyncio.to_thread(node.process.wait, 10)

    async def restart(self, node_id: str) -> None:
        self._spawn(self.nodes[node_id])
        await self.wait_ready(node_id)

    def log_tail(self, node_id: str, lines: int = 30) -> str:
        path = self.nodes[node_id].log_path
        if not path.exists():
            return "(no log)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    async def stop(self) -> None:
        for node in self.nodes.values():
            if node.process is not None and node.process.poll() is None:
                node.process.send_signal(signal.SIGTERM)
        for node in self.nodes.values():
            if node.process is not None:
                try:
                    await asyncio.to_thread(node.process.wait, 10)
                except subprocess.TimeoutExpired:
                    node.process.kill()
                    await asyncio.to_thread(node.process.wait, 10)
