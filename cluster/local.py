"""`titra local`: a development cluster of real `titra-node serve` processes on 127.0.0.1.

Layout, for data directory D and base port P: node nI (I = 1..N) serves clients on
127.0.0.1:P+I-1 and peers on 127.0.0.1:P+100+I-1 (`local_peer_port_offset`), keeps its data in
D/nI, its pid in D/nI.pid and its log in D/nI.log. The cluster secret is made once into
D/cluster.secret (mode 0600) and handed to each node in TITRA_CLUSTER_SECRET, never on the
command line, where `ps` would show it to every user of the machine.

`TITRA_NODE_COMMAND` (split like a shell line) replaces `titra-node`, to run another build.
"""

import contextlib
import json
import os
import secrets
import shlex
import signal
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from cluster.frozen import frozen
from cluster.limits import CLIENT_DEFAULTS, ClientDefaults

HOST = "127.0.0.1"
SECRET_FILE = "cluster.secret"
SECRET_ENV = "TITRA_CLUSTER_SECRET"
NODE_COMMAND_ENV = "TITRA_NODE_COMMAND"
LOG_TAIL_LINES = 20


class LocalClusterError(Exception):
    """`local up` or `local down` could not do what was asked; the message says why."""


@frozen
class NodePlan:
    """Where one local node listens and keeps its files."""

    node_id: str
    client_port: int
    peer_port: int
    root: Path

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.client_port}"

    @property
    def data_dir(self) -> Path:
        return self.root / self.node_id

    @property
    def pid_file(self) -> Path:
        return self.root / f"{self.node_id}.pid"

    @property
    def log_file(self) -> Path:
        return self.root / f"{self.node_id}.log"


@frozen
class Stopped:
    pids: dict[str, int]  # node id -> pid sent SIGTERM
    killed: tuple[str, ...]  # node ids that needed SIGKILL after the deadline


def plan(root: Path, nodes: int, base_port: int, defaults: ClientDefaults = CLIENT_DEFAULTS) -> tuple[NodePlan, ...]:
    """The port and file layout of a local cluster (see the module docstring)."""
    if not 1 <= nodes <= defaults.local_nodes_max:
        raise LocalClusterError(f"--nodes must be 1..{defaults.local_nodes_max}, not {nodes}")
    offset = defaults.local_peer_port_offset
    if base_port < 1 or base_port + offset + nodes - 1 > 65_535:
        raise LocalClusterError(f"ports {base_port}..{base_port + offset + nodes - 1} do not fit in 1..65535")
    return tuple(NodePlan(f"n{i + 1}", base_port + i, base_port + offset + i, root) for i in range(nodes))


def node_command(node: NodePlan, cluster: Sequence[NodePlan]) -> list[str]:
    peers = ",".join(f"{peer.node_id}={HOST}:{peer.peer_port}" for peer in cluster)
    return [
        *node_executable(),
        "serve",
        "--node-id",
        node.node_id,
        "--listen",
        f"{HOST}:{node.client_port}",
        "--peer-listen",
        f"{HOST}:{node.peer_port}",
        "--peers",
        peers,
        "--data-dir",
        str(node.data_dir),
    ]


def node_executable() -> list[str]:
    """How a node is started: $TITRA_NODE_COMMAND, else `titra-node` beside this interpreter."""
    override = os.environ.get(NODE_COMMAND_ENV, "").strip()
    if override:
        return shlex.split(override)
    # The script installed beside this interpreter (the same virtualenv), else whatever is on PATH.
    beside = Path(sys.executable).with_name("titra-node")
    return [str(beside)] if beside.exists() else ["titra-node"]


def cluster_secret(root: Path) -> str:
    """The cluster's secret, made on first use; the file is created 0600, never widened later."""
    path = root / SECRET_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        secret = path.read_text().strip()
        if not secret:
            raise LocalClusterError(f"{path} is empty; remove it to make a new secret") from None
        return secret
    secret = secrets.token_hex(32)
    with os.fdopen(fd, "w") as out:
        out.write(secret + "\n")
    return secret


def running(root: Path) -> dict[str, int]:
    """Node id -> pid of every node whose pid file names a live process of that node."""
    found = {}
    for pid_file in sorted(root.glob("n*.pid")):
        pid = _read_pid(pid_file)
        if pid is not None and _is_node_process(pid, root / pid_file.stem):
            found[pid_file.stem] = pid
    return found


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _is_node_process(pid: int, data_dir: Path) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    # A pid file can outlive its node and the pid be reused: on Linux, only a process whose command
    # line names this node's data directory is taken for it (a zombie's command line is empty).
    proc = Path("/proc")
    if not proc.is_dir():
        return True
    try:
        argv = (proc / str(pid) / "cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return os.fsencode(data_dir) in argv


def up(
    root: Path, nodes: int, base_port: int, defaults: ClientDefaults = CLIENT_DEFAULTS
) -> tuple[tuple[NodePlan, int], ...]:
    """Start every node and return (node, pid) once all answer /health/ready with 200 and each
    is connected to every other."""
    root = root.resolve()
    cluster = plan(root, nodes, base_port, defaults)
    root.mkdir(parents=True, exist_ok=True)
    already = running(root)
    if already:
        pids = ", ".join(f"{node_id} (pid {pid})" for node_id, pid in already.items())
        raise LocalClusterError(f"nodes already running in {root}: {pids}; `titra local down` stops them")
    env = {**os.environ, SECRET_ENV: cluster_secret(root)}
    started: dict[str, int] = {}
    try:
        for node in cluster:
            node.data_dir.mkdir(exist_ok=True)
            started[node.node_id] = _spawn(node_command(node, cluster), node.log_file, env)
            _write_pid(node.pid_file, started[node.node_id])
        _wait_ready(cluster, started, defaults)
    except (LocalClusterError, OSError) as exc:
        # Leave nothing half-started behind: the logs stay for reading, the processes go.
        down(root, defaults)
        for pid in started.values():
            _exit_status(pid)  # reap our stopped children
        raise LocalClusterError(str(exc)) from exc
    return tuple((node, started[node.node_id]) for node in cluster)


def _spawn(argv: list[str], log_file: Path, env: Mapping[str, str]) -> int:
    # posix_spawn rather than subprocess.Popen: the node is meant to outlive this command, not to be
    # waited for, and setsid gives it a session of its own, so the terminal's ^C does not reach it.
    return os.posix_spawnp(
        argv[0],
        argv,
        env,
        file_actions=[
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_OPEN, 1, str(log_file), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644),
            (os.POSIX_SPAWN_DUP2, 1, 2),
        ],
        setsid=True,
    )


def _exit_status(pid: int) -> int | None:
    """The exit status of our child `pid` if it has ended (and reap it), else None."""
    try:
        reaped, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return None  # not (or no longer) our child
    return os.waitstatus_to_exitcode(status) if reaped == pid else None


def _write_pid(path: Path, pid: int) -> None:
    partial = path.with_suffix(".pid.tmp")
    partial.write_text(f"{pid}\n")
    partial.replace(path)  # atomic: a reader sees no pid file or a whole one


def _wait_ready(cluster: Sequence[NodePlan], started: Mapping[str, int], defaults: ClientDefaults) -> None:
    poll_s = defaults.local_poll_interval_ms / 1000
    deadline = time.monotonic() + defaults.local_ready_timeout_ms / 1000
    waiting = list(cluster)
    while True:
        for node in list(waiting):
            code = _exit_status(started[node.node_id])
            if code is not None:
                raise LocalClusterError(
                    f"{node.node_id} exited with status {code} before it was ready\n{_tails([node])}"
                )
            if _ready(node, poll_s) and _connected(node, cluster, poll_s):
                waiting.remove(node)
        if not waiting:
            return
        if time.monotonic() >= deadline:
            names = ", ".join(node.node_id for node in waiting)
            raise LocalClusterError(f"not ready after {defaults.local_ready_timeout_ms} ms: {names}\n{_tails(waiting)}")
        time.sleep(poll_s)


# Readiness is asked of 127.0.0.1 directly: an http_proxy in the environment must not answer for it.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _ready(node: NodePlan, timeout_s: float) -> bool:
    try:
        with _DIRECT.open(f"{node.endpoint}/health/ready", timeout=max(timeout_s, 0.5)) as reply:
            return bool(reply.status == 200)
    except (urllib.error.URLError, OSError):  # refused, not ready (503), or slow: ask again
        return False


def _connected(node: NodePlan, cluster: Sequence[NodePlan], timeout_s: float) -> bool:
    """Whether `node` reports a connection to every other node (/v1/status): until then a quorum
    request through it, such as creating a keyspace right after `up`, could get a 503."""
    others = {other.node_id for other in cluster if other.node_id != node.node_id}
    try:
        with _DIRECT.open(f"{node.endpoint}/v1/status", timeout=max(timeout_s, 0.5)) as reply:
            peers = json.loads(reply.read()).get("peers", {})
    except (urllib.error.URLError, OSError, ValueError, AttributeError):
        return False
    return all(isinstance(peers.get(other), dict) and peers[other].get("connected") is True for other in others)


def _tails(nodes: Iterable[NodePlan]) -> str:
    return "\n".join(f"--- last lines of {node.log_file}\n{log_tail(node.log_file)}" for node in nodes)


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        with path.open("rb") as log:
            log.seek(max(0, log.seek(0, os.SEEK_END) - 16 * 1024))
            text = log.read().decode(errors="replace")
    except OSError as exc:
        return f"(no log: {exc})"
    return "\n".join(text.splitlines()[-lines:])


def down(root: Path, defaults: ClientDefaults = CLIENT_DEFAULTS) -> Stopped:
    """SIGTERM every running node, SIGKILL those still alive at the deadline; remove pid files."""
    root = root.resolve()
    pids = running(root)
    for pid in pids.values():
        _signal(pid, signal.SIGTERM)
    left = _wait_gone(root, pids, defaults.local_stop_timeout_ms / 1000, defaults)
    for pid in left.values():
        _signal(pid, signal.SIGKILL)
    _wait_gone(root, left, defaults.local_stop_timeout_ms / 1000, defaults)
    for pid_file in root.glob("n*.pid"):
        pid_file.unlink(missing_ok=True)
    return Stopped(pids, tuple(left))


def _signal(pid: int, signum: signal.Signals) -> None:
    # It may exit between the check and the signal, which is what we wanted anyway.
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def _wait_gone(root: Path, pids: Mapping[str, int], timeout_s: float, defaults: ClientDefaults) -> dict[str, int]:
    """The nodes of `pids` still running when the deadline passes (waits for all to exit)."""
    deadline = time.monotonic() + timeout_s
    left = dict(pids)
    while True:
        left = {node_id: pid for node_id, pid in left.items() if _is_node_process(pid, root / node_id)}
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(defaults.local_poll_interval_ms / 1000)
