"""A 3-member etcd cluster on 127.0.0.1, the yardstick of `titra bench cluster`.

Debian's `etcd` (package etcd-server, 3.4) with its defaults, fsync included: each member is
started with a static `--initial-cluster`, its data under the benchmark's directory and its log
beside it, in a session of its own (setsid) so that a terminal's ^C reaches only the benchmark,
which then stops the members itself. Clients speak HTTP/JSON to etcd's gRPC gateway (/v3/...),
as they do to Titra: the gateway adds a JSON-to-gRPC hop inside etcd, a cost a native gRPC client
would not pay.
"""

import base64
import contextlib
import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from cluster.bench_wrk import Request
from cluster.frozen import frozen
from cluster.limits import BENCH_DEFAULTS, BenchDefaults

ETCD = "etcd"
HOST = "127.0.0.1"
PUT_PATH = "/v3/kv/put"  # etcd 3.4's gateway serves /v3/ (and the older /v3beta/)
RANGE_PATH = "/v3/kv/range"
LOG_TAIL_BYTES = 4_096

# Health and status are asked of 127.0.0.1 directly: an http_proxy in the environment must not answer.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class EtcdError(Exception):
    """The etcd cluster could not be started or asked; the message says why."""


@frozen
class Member:
    name: str
    client_port: int
    peer_port: int
    root: Path

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://{HOST}:{self.peer_port}"

    @property
    def data_dir(self) -> Path:
        return self.root / self.name

    @property
    def log_file(self) -> Path:
        return self.root / f"{self.name}.log"


def plan(root: Path, client_ports: Sequence[int], peer_ports: Sequence[int]) -> tuple[Member, ...]:
    assert len(client_ports) == len(peer_ports) > 0
    return tuple(
        Member(f"e{i + 1}", client, peer, root)
        for i, (client, peer) in enumerate(zip(client_ports, peer_ports, strict=True))
    )


def member_command(member: Member, cluster: Sequence[Member], token: str) -> list[str]:
    initial = ",".join(f"{m.name}={m.peer_url}" for m in cluster)
    return [
        ETCD,
        "--name",
        member.name,
        "--data-dir",
        str(member.data_dir),
        "--listen-client-urls",
        member.endpoint,
        "--advertise-client-urls",
        member.endpoint,
        "--listen-peer-urls",
        member.peer_url,
        "--initial-advertise-peer-urls",
        member.peer_url,
        "--initial-cluster",
        initial,
        "--initial-cluster-state",
        "new",
        "--initial-cluster-token",
        token,
    ]


class EtcdCluster:
    """The members' processes: `start` waits until every member is healthy; `stop` always ends them."""

    def __init__(self, members: Sequence[Member], defaults: BenchDefaults = BENCH_DEFAULTS) -> None:
        self.members = tuple(members)
        self.defaults = defaults
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def start(self) -> None:
        # etcd also reads its flags from ETCD_* variables; one left in the environment would change
        # the configuration under test (or conflict with a flag), so none is passed on.
        env = {name: value for name, value in os.environ.items() if not name.startswith("ETCD_")}
        token = f"titra-bench-{self.members[0].root.name}"
        self.members[0].root.mkdir(parents=True, exist_ok=True)
        for member in self.members:
            with member.log_file.open("ab") as log:
                self.processes[member.name] = subprocess.Popen(
                    member_command(member, self.members, token),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,
                )
        self._wait_healthy()

    @property
    def pids(self) -> dict[str, int]:
        return {name: process.pid for name, process in self.processes.items()}

    def _wait_healthy(self) -> None:
        poll_s = self.defaults.poll_interval_ms / 1_000
        deadline = time.monotonic() + self.defaults.etcd_ready_timeout_ms / 1_000
        waiting = list(self.members)
        while waiting:
            for member in list(waiting):
                code = self.processes[member.name].poll()
                if code is not None:
                    raise EtcdError(f"etcd member {member.name} exited with status {code}\n{_tail(member.log_file)}")
                if _healthy(member):
                    waiting.remove(member)
            if waiting and time.monotonic() >= deadline:
                names = ", ".join(m.name for m in waiting)
                raise EtcdError(
                    f"etcd not healthy after {self.defaults.etcd_ready_timeout_ms} ms: {names}\n"
                    + "\n".join(_tail(m.log_file) for m in waiting)
                )
            if waiting:
                time.sleep(poll_s)

    def leader(self) -> str | None:
        """The leader's member name, from each member's maintenance status; None if unknown."""
        ids: dict[str, str] = {}
        leader_id = None
        for member in self.members:
            status = post_json(member, "/v3/maintenance/status", {})
            header = status.get("header")
            if isinstance(header, dict):
                ids[str(header.get("member_id"))] = member.name
            leader_id = str(status.get("leader", leader_id))
        return ids.get(leader_id) if leader_id is not None else None

    def stop(self) -> None:
        """Followers first, then the leader: a leader stopped while its peers still answer first
        tries to hand leadership over, and waits seconds for peers that are stopping too; one
        whose peers are gone exits at once. SIGKILL for any member still running at the deadline."""
        try:
            leader = self.leader()
        except EtcdError:  # no answer (not started, or already gone): the order does not matter
            leader = None
        deadline = time.monotonic() + self.defaults.etcd_stop_timeout_ms / 1_000
        followers = [name for name in self.processes if name != leader]
        self._terminate(followers, deadline)
        self._terminate([name for name in self.processes if name not in followers], deadline)

    def _terminate(self, names: Sequence[str], deadline: float) -> None:
        for name in names:
            process = self.processes[name]
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
        for name in names:
            process = self.processes[name]
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _healthy(member: Member) -> bool:
    try:
        with _DIRECT.open(f"{member.endpoint}/health", timeout=1.0) as reply:
            body = json.loads(reply.read())
    except (urllib.error.URLError, OSError, ValueError):  # refused, 503 (no leader yet), or garbage
        return False
    return isinstance(body, dict) and body.get("health") == "true"


def post_json(member: Member, path: str, body: dict[str, object]) -> dict[str, object]:
    request = urllib.request.Request(
        f"{member.endpoint}{path}", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with _DIRECT.open(request, timeout=5.0) as reply:
            answer = json.loads(reply.read())
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise EtcdError(f"{member.name} {path}: {exc}") from exc
    if not isinstance(answer, dict):
        raise EtcdError(f"{member.name} {path}: not a JSON object")
    return answer


def _tail(path: Path) -> str:
    try:
        with path.open("rb") as log:
            log.seek(max(0, log.seek(0, os.SEEK_END) - LOG_TAIL_BYTES))
            return f"--- end of {path}\n" + log.read().decode(errors="replace")
    except OSError as exc:
        return f"(no log {path}: {exc})"


def version() -> str:
    try:
        timeout_s = BENCH_DEFAULTS.tool_version_timeout_s
        done = subprocess.run([ETCD, "--version"], capture_output=True, text=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    first = done.stdout.splitlines()
    return first[0].removeprefix("etcd Version:").strip() if first else "unknown"


# --- the requests --------------------------------------------------------------------------------


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def put_body(key: str, value: str) -> str:
    return json.dumps({"key": _b64(key), "value": _b64(value)}, separators=(",", ":"))


def put_requests(keys: Sequence[str], value: str) -> list[Request]:
    return [Request("POST", PUT_PATH, put_body(key, value)) for key in keys]


def range_requests(keys: Sequence[str], serializable: bool) -> list[Request]:
    """Range reads of one key; linearizable (a ReadIndex round through the leader) unless
    `serializable`, which any member answers from its own state, like Titra's `one`."""
    extra = {"serializable": True} if serializable else {}
    return [Request("POST", RANGE_PATH, json.dumps({"key": _b64(key), **extra}, separators=(",", ":"))) for key in keys]
