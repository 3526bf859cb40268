"""The docker-compose cluster as the chaos suite sees it: containers, their IPs, docker exec, health.

Edge module (subprocess, HTTP). Everything is addressed through one `Cluster`: a compose project
name and the client ports it publishes, so a test or a run never touches another project's
containers (a developer's cluster is project `titra` on 7070..; see docker/up.sh). Containers are
found by their compose labels, never by name patterns. Every command has a timeout.
"""

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cluster.frozen import frozen

ROOT = Path(__file__).resolve().parents[1]
CHAOS_COMPOSE_FILE = "docker-compose.chaos.yml"
COMMAND_TIMEOUT_S = 60.0
UP_TIMEOUT_S = 900.0  # the first build on a machine may debootstrap a base image
POLL_INTERVAL_S = 0.25
HTTP_TIMEOUT_S = 2.0
SNAPSHOT_INTERVAL_S = 0.5

Snapshot = tuple[int, dict[str, dict[str, str]]]  # (time_ns, node -> key -> digest)


class DockerError(RuntimeError):
    pass


def docker_unusable_reason() -> str | None:
    if shutil.which("docker") is None:
        return "no `docker` command on PATH"
    if shutil.which("docker-compose") is None:
        return "no `docker-compose` command on PATH"
    try:
        info = subprocess.run(["docker", "info"], check=False, capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return "`docker info` did not answer within 30 s"
    if info.returncode != 0:
        return f"`docker info` failed: {info.stderr.strip()[-300:]}"
    return None


def run(
    command: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    timeout_s: float = COMMAND_TIMEOUT_S,
    check: bool = True,
    cwd: Path = ROOT,
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        list(command), check=False, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout_s
    )
    if check and result.returncode != 0:
        raise DockerError(
            f"{' '.join(command)} exited {result.returncode}: {(result.stderr or result.stdout).strip()[-2000:]}"
        )
    return result


def wait_until(what: str, probe: Callable[[], bool], timeout_s: float) -> float:
    """Poll `probe` until it holds; returns the seconds it took, raises TimeoutError naming `what`."""
    started = time.monotonic()
    while True:
        if probe():
            return time.monotonic() - started
        if time.monotonic() - started > timeout_s:
            raise TimeoutError(f"timed out after {timeout_s} s waiting until {what}")
        time.sleep(POLL_INTERVAL_S)  # the pace of the poll; the deadline bounds it


def get_json(url: str, timeout_s: float = HTTP_TIMEOUT_S) -> tuple[int, Any]:
    """(status, parsed body); (0, error text) when nothing answered."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        body = error.read()
        try:
            return error.code, json.loads(body or b"null")
        except ValueError:
            return error.code, body.decode("utf-8", "replace")
    except (OSError, ValueError) as error:
        return 0, f"{type(error).__name__}: {error}"


def send_json(method: str, url: str, body: object, timeout_s: float = HTTP_TIMEOUT_S) -> tuple[int, Any]:
    data = json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode("utf-8", "replace")
    except OSError as error:
        return 0, f"{type(error).__name__}: {error}"


@frozen
class Cluster:
    project: str = "titra"  # docker/up.sh's default project
    nodes: int = 3
    port_base: int = 7070  # n1 publishes its client port here, n2 on the next, ...
    root: Path = ROOT

    @property
    def node_ids(self) -> tuple[str, ...]:
        return tuple(f"n{i}" for i in range(1, self.nodes + 1))

    def port(self, node: str) -> int:
        return self.port_base + int(node.removeprefix("n")) - 1

    def url(self, node: str) -> str:
        """The node's client API as published on the host."""
        return f"http://127.0.0.1:{self.port(node)}"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "COMPOSE_FILE"}
        env["COMPOSE_PROJECT_NAME"] = self.project
        env.update({f"TITRA_PORT_{node.upper()}": str(self.port(node)) for node in self.node_ids})
        return env

    def compose(self, *args: str, client: bool = False) -> list[str]:
        files = ["docker-compose.yml"] + (["docker-compose.5.yml"] if self.nodes == 5 else [])
        files += [CHAOS_COMPOSE_FILE] if client else []
        return ["docker-compose", *(part for f in files for part in ("-f", f)), *args]

    # --- lifecycle ---

    def build(self) -> None:
        run(["docker/build.sh"], env=self.env(), timeout_s=UP_TIMEOUT_S, cwd=self.root)

    def up(self) -> None:
        """docker/up.sh without its build (call `build` first): start and wait for readiness."""
        run(
            ["docker/up.sh", "--nodes", str(self.nodes), "--no-build"],
            env=self.env(),
            timeout_s=UP_TIMEOUT_S,
            cwd=self.root,
        )

    def down(self, *, volumes: bool) -> None:
        run(["docker/down.sh", *(["-v"] if volumes else [])], env=self.env(), timeout_s=180, cwd=self.root)

    def logs(self, tail: int = 60) -> str:
        result = run(
            self.compose("logs", "--no-color", "--tail", str(tail)), env=self.env(), check=False, cwd=self.root
        )
        return result.stdout

    # --- containers ---

    def container(self, node: str) -> str:
        found = run(
            [
                "docker",
                "ps",
                "-aq",
                "--filter",
                f"label=com.docker.compose.project={self.project}",
                "--filter",
                f"label=com.docker.compose.service={node}",
            ]
        ).stdout.split()
        if len(found) != 1:
            raise DockerError(f"expected one container for {node} in project {self.project}, found {found}")
        return found[0]

    def containers_exist(self) -> bool:
        """Does every node of this project have a container (running or not)?"""
        labels = f"label=com.docker.compose.project={self.project}"
        found = run(["docker", "ps", "-a", "--filter", labels, "--format", '{{.Label "com.docker.compose.service"}}'])
        return set(self.node_ids) <= set(found.stdout.split())

    def inspect(self, node: str, template: str) -> str:
        return run(["docker", "inspect", "-f", template, self.container(node)]).stdout.strip()

    def ip(self, node: str) -> str:
        ip = self.inspect(node, "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}").split()
        if len(ip) != 1:
            raise DockerError(f"{node}: expected one network address, found {ip}")
        return ip[0]

    def state(self, node: str) -> str:
        """running, paused, exited, ... then the health status when there is one."""
        return self.inspect(node, "{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{end}}")

    def exec(self, node: str, argv: Sequence[str], timeout_s: float = 30.0) -> subprocess.CompletedProcess[str]:
        return run(["docker", "exec", self.container(node), *argv], timeout_s=timeout_s, check=False)

    def docker(self, verb: str, node: str, *args: str) -> None:
        run(["docker", verb, *args, self.container(node)])

    # --- the nodes' own view ---

    def ready(self, node: str) -> bool:
        return get_json(f"{self.url(node)}/health/ready")[0] == 200

    def peers_connected(self, node: str) -> dict[str, bool] | None:
        """Node -> does `node` hold a live connection to it (its /v1/status); None if it did not answer."""
        status, body = get_json(f"{self.url(node)}/v1/status")
        if status != 200 or not isinstance(body, dict):
            return None
        return {peer: bool(info.get("connected")) for peer, info in body.get("peers", {}).items()}

    def members(self, node: str) -> dict[str, str] | None:
        """Member -> status ("alive", "suspect", "down") in `node`'s failure detector, if it has one."""
        status, body = get_json(f"{self.url(node)}/v1/status")
        members = body.get("membership", {}).get("members") if status == 200 and isinstance(body, dict) else None
        if not isinstance(members, list):
            return None
        return {m["node_id"]: m["status"] for m in members if m.get("node_id") != node}

    def fully_connected(self) -> bool:
        for node in self.node_ids:
            view = self.peers_connected(node)
            if view is None or not all(view.get(p, False) for p in self.node_ids if p != node):
                return False
        return True

    def wait_healthy(self, timeout_s: float = 90.0) -> float:
        """Every node ready and holding a connection to every other node; seconds it took."""
        return wait_until(
            "every node is ready and connected to every peer",
            lambda: all(self.ready(n) for n in self.node_ids) and self.fully_connected(),
            timeout_s,
        )

    def start_client(self, name: str, out_dir: Path, argv: Sequence[str], log_path: Path) -> subprocess.Popen[bytes]:
        """The workload container (docker-compose.chaos.yml's `client`), `out_dir` mounted on /out."""
        command = self.compose(
            "run",
            "--rm",
            "-T",
            "--no-deps",
            "--name",
            name,
            "-v",
            f"{out_dir.resolve()}:/out",
            "client",
            *argv,
            client=True,
        )
        with log_path.open("wb") as log:
            return subprocess.Popen(command, cwd=self.root, env=self.env(), stdout=log, stderr=subprocess.STDOUT)


# --- replicas, compared without client reads ---


def replica_snapshot(cluster: Cluster, keyspace: str) -> dict[str, dict[str, str]]:
    """Each answering node's own replica (key -> digest); a node that does not answer is left out."""
    out: dict[str, dict[str, str]] = {}
    for node in cluster.node_ids:
        entries: dict[str, str] = {}
        cursor = ""
        for _ in range(10_000):  # pages of 1000
            query = "limit=1000" + (f"&cursor={cursor}" if cursor else "")
            status, body = get_json(f"{cluster.url(node)}/v1/replica/{keyspace}?{query}", timeout_s=10.0)
            if status != 200 or not isinstance(body, dict):
                break
            entries.update({key: digest for key, digest in body["entries"]})
            cursor = body.get("cursor") or ""
            if not cursor:
                out[node] = entries
                break
    return out


def collect_snapshots(
    cluster: Cluster,
    keyspace: str,
    now_ns: Callable[[], int],
    timeout_s: float,
    settled: Callable[[dict[str, dict[str, str]]], bool],
) -> list[Snapshot]:
    """Snapshots until one is `settled` (the replicas agree), or the deadline. Consecutive
    duplicates are dropped (the first of a run of equal snapshots decides); the last is kept."""
    kept: list[Snapshot] = []
    deadline = time.monotonic() + timeout_s
    last: Snapshot | None = None
    while True:
        taken_ns = now_ns()
        snapshot = replica_snapshot(cluster, keyspace)
        if not kept or snapshot != kept[-1][1]:
            kept.append((taken_ns, snapshot))
            last = None
        else:
            last = (taken_ns, snapshot)
        done = len(snapshot) == cluster.nodes and settled(snapshot)
        if done or time.monotonic() >= deadline:
            return kept + ([last] if last is not None and not done else [])
        time.sleep(SNAPSHOT_INTERVAL_S)  # the pace of the poll; the deadline bounds it
