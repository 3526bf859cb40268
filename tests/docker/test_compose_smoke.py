"""Smoke test of the Docker deployment: docker/up.sh, docker-compose.yml, docker/down.sh.

Three nodes come up through docker/up.sh; a quorum write through n1 is read back through n2 and n3,
and is still there after `docker-compose restart` (the data lives in named volumes).

The test runs as its own compose project on its own client ports, so that a developer's cluster
(project `titra`, ports 7070..7072) is neither reused nor torn down; it removes its own cluster
and volumes with `docker/down.sh -v` whatever happens.
"""

import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROJECT = "titra-smoke"
CLIENT_PORTS = {"n1": 17070, "n2": 17071, "n3": 17072}
UP_TIMEOUT_S = 600.0  # the first run on a machine also builds the base image (debootstrap)
COMMAND_TIMEOUT_S = 180.0
READY_TIMEOUT_S = 120.0
POLL_INTERVAL_S = 0.25
HTTP_TIMEOUT_S = 5.0


def docker_unusable_reason() -> str | None:
    if shutil.which("docker") is None:
        return "no `docker` command on PATH"
    try:
        info = subprocess.run(["docker", "info"], check=False, capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return "`docker info` did not answer within 30 s"
    if info.returncode != 0:
        return f"`docker info` failed: {info.stderr.strip()[-300:]}"
    return None


def compose_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "COMPOSE_FILE"}
    env["COMPOSE_PROJECT_NAME"] = PROJECT
    env.update({f"TITRA_PORT_{node.upper()}": str(port) for node, port in CLIENT_PORTS.items()})
    return env


def run(command: list[str], env: dict[str, str], timeout_s: float) -> str:
    result = subprocess.run(command, check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout_s)
    if result.returncode != 0:
        raise AssertionError(
            f"{' '.join(command)} exited {result.returncode}\n--- stdout\n{result.stdout[-4000:]}"
            f"\n--- stderr\n{result.stderr[-4000:]}"
        )
    return result.stdout


def http(method: str, url: str, body: bytes | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method=method)
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def wait_until(what: str, probe: Callable[[], bool], timeout_s: float = READY_TIMEOUT_S) -> None:
    """Poll `probe` until it holds; connection errors (a node restarting) count as 'not yet'."""
    deadline = time.monotonic() + timeout_s
    last_error = ""
    while time.monotonic() < deadline:
        try:
            if probe():
                return
        except OSError as error:  # refused, reset: the node is not listening yet
            last_error = f" (last error: {error!r})"
        time.sleep(POLL_INTERVAL_S)  # the pace of the poll; the deadline bounds the wait
    raise AssertionError(f"timed out after {timeout_s} s waiting until {what}{last_error}")


def is_ready(node: str) -> bool:
    return http("GET", f"http://127.0.0.1:{CLIENT_PORTS[node]}/health/ready")[0] == 200


def kv_url(node: str, key: str) -> str:
    return f"http://127.0.0.1:{CLIENT_PORTS[node]}/v1/kv/default/{key}?consistency=quorum"


@pytest.mark.docker
def test_three_nodes_replicate_and_keep_data_across_restart() -> None:
    reason = docker_unusable_reason()
    if reason is not None:
        pytest.skip(f"Docker is not usable on this machine: {reason}")
    env = compose_env()
    key = f"smoke-{uuid.uuid4().hex}"
    value = f"hello from {key}".encode()
    reads: dict[str, tuple[int, bytes]] = {}

    def reads_back(node: str) -> bool:
        reads[node] = http("GET", kv_url(node, key))
        return reads[node] == (200, value)

    try:
        run(["docker/up.sh", "--nodes", "3"], env, UP_TIMEOUT_S)

        # 503 means "surely not written", so retrying it is safe; any other failure is final.
        written: list[tuple[int, bytes]] = []

        def put_answers() -> bool:
            written.append(http("PUT", kv_url("n1", key), value))
            return written[-1][0] != 503

        wait_until("n1 answers a quorum PUT with something other than 503", put_answers)
        status, body = written[-1]
        assert 200 <= status < 300, f"quorum PUT through n1: {status} {body[:500]!r}"
        for node in ("n2", "n3"):
            assert reads_back(node), f"quorum GET through {node} right after the write: {reads[node]}"

        run(["docker-compose", "-f", "docker-compose.yml", "restart"], env, COMMAND_TIMEOUT_S)
        for node in CLIENT_PORTS:
            wait_until(f"{node} is ready again after the restart", partial(is_ready, node))
        for node in CLIENT_PORTS:
            wait_until(
                f"a quorum GET through {node} returns the value written before the restart",
                partial(reads_back, node),
            )
    except BaseException:
        logs = subprocess.run(
            ["docker-compose", "-f", "docker-compose.yml", "logs", "--no-color", "--tail", "60"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_S,
            check=False,
        )
        print(f"last reads: {reads}\n--- node logs\n{logs.stdout[-12000:]}")
        raise
    finally:
        run(["docker/down.sh", "-v"], env, COMMAND_TIMEOUT_S)
