"""`titra` (cluster.cli): arguments, output and exit codes against a fake node, and the
`titra local` process management (cluster.local) with stand-in processes instead of titra-node.

`main` is blocking (its client runs its own loop), so the async tests call it in a thread while
the fake node answers on the test's loop.
"""

import asyncio
import io
import json
import os
import shlex
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDict

from cluster import local
from cluster.cli import main
from cluster.limits import CLIENT_DEFAULTS

RECEIPT = {
    "Titra-Context": "ctx-1",
    "Titra-Consistency-Requested": "quorum",
    "Titra-Consistency-Achieved": "all",
    "Titra-Replicas": "n1,n2,n3",
    "Titra-Timestamp": "1700000000000.3",
    "Titra-Coordinator": "n2",
}


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, str]
    headers: CIMultiDict[str]
    body: bytes


@dataclass
class FakeNode:
    """One node's HTTP API, just enough for the CLI: values, two fixed siblings, pages, errors."""

    url: str = ""
    seen: list[Seen] = field(default_factory=list)
    values: dict[str, tuple[bytes, str]] = field(default_factory=dict)
    script: list[int] = field(default_factory=list)  # statuses to answer the next writes with
    keyspaces: dict[str, dict[str, object]] = field(
        default_factory=lambda: {"default": {"n": 3, "resolution": "siblings"}}
    )

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/v1/kv/{keyspace}/{key:.+}", self.kv)
        app.router.add_get("/v1/kv/{keyspace}", self.listing)
        app.router.add_put("/v1/keyspaces/{name}", self.keyspace)
        app.router.add_get("/v1/status", self.status)
        return app

    async def record(self, request: web.Request) -> None:
        path = unquote(request.raw_path.split("?")[0])
        body = await request.read()
        self.seen.append(Seen(request.method, path, dict(request.query), CIMultiDict(request.headers), body))

    def error(self, status: int, code: str, message: str, **extra: object) -> web.Response:
        return web.json_response({"error": {"code": code, "message": message}, **extra}, status=status, headers=RECEIPT)

    async def kv(self, request: web.Request) -> web.Response:
        await self.record(request)
        keyspace, key = request.match_info["keyspace"], request.match_info["key"]
        if keyspace not in self.keyspaces:
            return self.error(404, "keyspace_not_found", f"no keyspace {keyspace!r}")
        if request.method != "GET" and self.script:
            status = self.script.pop(0)
            return self.error(status, "timeout", "2 of 3 replicas did not answer", acknowledged=1, required=2)
        if request.method == "PUT":
            self.values[key] = (await request.read(), request.headers["Content-Type"])
        elif request.method == "DELETE":
            self.values.pop(key, None)
        elif key == "twins":
            with aiohttp.MultipartWriter("mixed") as parts:
                parts.append("left", {"Content-Type": "text/plain", "Titra-Timestamp": "1.1"})
                parts.append(b"\xff\xfe", {"Content-Type": "application/octet-stream", "Titra-Timestamp": "1.2"})
            return web.Response(status=300, body=parts, headers=RECEIPT)
        elif key in self.values:
            value, content_type = self.values[key]
            return web.Response(body=value, headers={**RECEIPT, "Content-Type": content_type})
        else:
            return self.error(404, "key_not_found", "no value")
        return web.Response(status=204, headers=RECEIPT)

    async def listing(self, request: web.Request) -> web.Response:
        await self.record(request)
        limit, after = int(request.query.get("limit", "100")), request.query.get("cursor", "")
        names = [name for name in sorted(self.values) if name.startswith(request.query.get("prefix", ""))]
        later = [name for name in names if name > after]
        cursor = later[limit - 1] if len(later) > limit else None
        return web.json_response({"keys": later[:limit], "cursor": cursor})

    async def keyspace(self, request: web.Request) -> web.Response:
        await self.record(request)
        name, definition = request.match_info["name"], json.loads(await request.read())
        if name in self.keyspaces and self.keyspaces[name] != definition:
            return self.error(409, "keyspace_conflict", f"keyspace {name} exists with {self.keyspaces[name]}")
        status = 200 if name in self.keyspaces else 201
        self.keyspaces[name] = definition
        return web.json_response({"name": name, **definition}, status=status)

    async def status(self, request: web.Request) -> web.Response:
        await self.record(request)
        peers = [{"node_id": "n2", "state": "up"}, {"node_id": "n3", "state": "suspect"}]
        return web.json_response({"node_id": "n1", "ring": {"vnodes_per_node": 64}, "peers": peers})


@pytest.fixture
async def fake() -> AsyncIterator[FakeNode]:
    node = FakeNode()
    runner = web.AppRunner(node.app())
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    node.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield node
    await runner.cleanup()


async def titra(*argv: str) -> int:
    return await asyncio.to_thread(main, list(argv))


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_put_then_get_prints_the_value_and_the_receipt(
    fake: FakeNode, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await titra("put", "default", "greeting", "hello world", "--endpoint", fake.url) == 0
    out = capsys.readouterr().out
    assert "idempotency-key" in out and "coordinator      n2" in out and "replicas         n1,n2,n3" in out
    assert fake.values["greeting"] == (b"hello world", "text/plain; charset=utf-8")
    assert await titra("get", "default", "greeting", "--endpoint", fake.url) == 0
    out = capsys.readouterr().out
    assert "value            hello world" in out and "achieved         all" in out and "context          ctx-1" in out


async def test_json_output_and_options_reach_the_request(fake: FakeNode, capsys: pytest.CaptureFixture[str]) -> None:
    code = await titra(
        *("put", "default", "k", "v", "--json", "--endpoint", fake.url, "--consistency", "all", "--w", "2"),
        *("--timeout-ms", "900", "--durability", "async", "--if-none-match", "--idempotency-key", "op-7"),
        *("--context", "ctx-0", "--content-type", "application/x-thing"),
    )
    assert code == 0
    written = json.loads(capsys.readouterr().out)
    assert written["idempotency_key"] == "op-7" and written["receipt"]["replicas"] == ["n1", "n2", "n3"]
    seen = fake.seen[-1]
    assert seen.query == {"consistency": "all", "w": "2", "timeout_ms": "900", "durability": "async"}
    assert (seen.headers["If-None-Match"], seen.headers["Idempotency-Key"], seen.headers["Titra-Context"]) == (
        "*",
        "op-7",
        "ctx-0",
    )
    assert await titra("get", "default", "k", "--json", "--endpoint", fake.url, "--r", "1") == 0
    read = json.loads(capsys.readouterr().out)
    assert read["found"] is True and read["siblings"][0]["value"] == "v"
    assert read["siblings"][0]["content_type"] == "application/x-thing" and fake.seen[-1].query == {"r": "1"}


async def test_a_value_comes_from_a_file_or_standard_input(
    fake: FakeNode, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "blob").write_bytes(b"\x00\x01binary")
    assert await titra("put", "default", "f", "--file", str(tmp_path / "blob"), "--endpoint", fake.url) == 0
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"piped\xff")))
    assert await titra("put", "default", "s", "-", "--endpoint", fake.url) == 0
    assert fake.values["f"] == (b"\x00\x01binary", "application/octet-stream")
    assert fake.values["s"] == (b"piped\xff", "application/octet-stream")


async def test_a_value_must_be_given_exactly_once(
    fake: FakeNode, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await titra("put", "default", "k", "v", "--file", str(tmp_path / "x"), "--endpoint", fake.url) == 2
    assert await titra("put", "default", "k", "--endpoint", fake.url) == 2
    assert capsys.readouterr().err.count("one of VALUE, - (standard input) or --file F") == 2
    assert fake.seen == []


async def test_get_shows_siblings_and_a_missing_key_exits_3(fake: FakeNode, capsys: pytest.CaptureFixture[str]) -> None:
    assert await titra("get", "default", "twins", "--endpoint", fake.url) == 0
    out = capsys.readouterr().out
    assert "siblings         2" in out and "[1] value        left" in out and "[2] value        base64://4=" in out
    assert await titra("get", "default", "twins", "--raw", "--endpoint", fake.url) == 2
    assert "2 siblings" in capsys.readouterr().err
    assert await titra("get", "default", "absent", "--endpoint", fake.url) == 3
    assert "found            no" in capsys.readouterr().out


async def test_raw_prints_only_the_bytes(fake: FakeNode, capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    fake.values["k"] = (b"exact\nbytes", "text/plain")
    assert await titra("get", "default", "k", "--raw", "--endpoint", fake.url) == 0
    assert capsysbinary.readouterr().out == b"exact\nbytes"


async def test_delete_writes_a_tombstone(fake: FakeNode, capsys: pytest.CaptureFixture[str]) -> None:
    fake.values["k"] = (b"v", "text/plain")
    assert await titra("delete", "default", "k", "--if-match", "ctx-1", "--endpoint", fake.url, "--json") == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True
    assert "k" not in fake.values and fake.seen[-1].headers["If-Match"] == "ctx-1"


async def test_ls_prints_a_page_with_its_cursor_or_every_page(
    fake: FakeNode, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.values = {name: (b"", "text/plain") for name in ["a1", "a2", "a3", "b1"]}
    assert await titra("ls", "default", "--prefix", "a", "--limit", "2", "--endpoint", fake.url) == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines() == ["a1", "a2"] and "--cursor a2" in captured.err
    assert await titra("ls", "default", "--all", "--limit", "1", "--json", "--endpoint", fake.url) == 0
    assert json.loads(capsys.readouterr().out) == {"keys": ["a1", "a2", "a3", "b1"], "cursor": None}


async def test_status_prints_peers_as_a_table(fake: FakeNode, capsys: pytest.CaptureFixture[str]) -> None:
    assert await titra("status", "--endpoint", fake.url) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["node_id", "n1"]
    assert ["node_id", "state"] in [line.split() for line in lines] and ["n3", "suspect"] in [
        line.split() for line in lines
    ]
    assert await titra("status", "--json", "--endpoint", fake.url) == 0
    assert json.loads(capsys.readouterr().out)["ring"] == {"vnodes_per_node": 64}


async def test_keyspace_create_is_idempotent_and_reports_a_conflict(
    fake: FakeNode, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await titra("keyspace", "create", "users", "--n", "5", "--resolution", "lww", "--endpoint", fake.url) == 0
    assert "created keyspace users n=5 resolution=lww" in capsys.readouterr().out
    assert await titra("keyspace", "create", "users", "--n", "5", "--resolution", "lww", "--endpoint", fake.url) == 0
    assert "exists" in capsys.readouterr().out
    assert await titra("keyspace", "create", "users", "--json", "--endpoint", fake.url) == 1
    captured = capsys.readouterr()
    assert "keyspace_conflict (409): keyspace users exists with" in captured.err
    assert json.loads(captured.out)["error"]["code"] == "keyspace_conflict"


async def test_errors_exit_non_zero_with_the_server_message(fake: FakeNode, capsys: pytest.CaptureFixture[str]) -> None:
    assert await titra("put", "missing", "k", "v", "--endpoint", fake.url) == 1
    assert "keyspace_not_found (404): no keyspace 'missing'" in capsys.readouterr().err
    fake.script = [504] * (CLIENT_DEFAULTS.write_retries_max + 1)
    assert await titra("put", "default", "k", "v", "--endpoint", fake.url) == 5
    err = capsys.readouterr().err
    assert "timeout (504): 2 of 3 replicas did not answer" in err and "acknowledged=1 required=2" in err
    assert len({seen.headers["Idempotency-Key"] for seen in fake.seen[1:]}) == 1
    assert await titra("get", "default", "k", "--endpoint", f"http://127.0.0.1:{closed_port()}") == 4


async def test_endpoints_fail_over_and_come_from_the_environment(
    fake: FakeNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TITRA_ENDPOINT", f"http://127.0.0.1:{closed_port()},{fake.url}")
    assert await titra("put", "default", "k", "v") == 0
    assert await titra("put", "default", "k2", "v", "--endpoint", f"http://127.0.0.1:{closed_port()}") == 4
    assert list(fake.values) == ["k"]


def test_limits_include_the_client_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["limits", "--json"]) == 0
    assert (
        json.loads(capsys.readouterr().out)["client_defaults"]["write_retries_max"] == CLIENT_DEFAULTS.write_retries_max
    )


# --- titra local ---------------------------------------------------------------------------------


def test_the_port_and_file_layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(local.NODE_COMMAND_ENV, "titra-node-under-test --verbose")
    cluster = local.plan(tmp_path, 3, 7070)
    assert [(n.node_id, n.client_port, n.peer_port) for n in cluster] == [
        ("n1", 7070, 7170),
        ("n2", 7071, 7171),
        ("n3", 7072, 7172),
    ]
    assert (cluster[1].data_dir, cluster[1].pid_file, cluster[1].log_file) == (
        tmp_path / "n2",
        tmp_path / "n2.pid",
        tmp_path / "n2.log",
    )
    assert local.node_command(cluster[1], cluster) == [
        *("titra-node-under-test", "--verbose", "serve", "--node-id", "n2", "--listen", "127.0.0.1:7071"),
        *("--peer-listen", "127.0.0.1:7171", "--peers", "n1=127.0.0.1:7170,n2=127.0.0.1:7171,n3=127.0.0.1:7172"),
        *("--data-dir", str(tmp_path / "n2")),
    ]
    for nodes, base_port in [(0, 7070), (CLIENT_DEFAULTS.local_nodes_max + 1, 7070), (3, 65_500)]:
        with pytest.raises(local.LocalClusterError):
            local.plan(tmp_path, nodes, base_port)


def test_the_cluster_secret_is_made_once_and_readable_only_by_its_owner(tmp_path: Path) -> None:
    secret = local.cluster_secret(tmp_path)
    assert len(secret) == 64 and int(secret, 16) >= 0
    assert stat.S_IMODE((tmp_path / "cluster.secret").stat().st_mode) == 0o600
    assert local.cluster_secret(tmp_path) == secret


def sleeper(*argv: str) -> "subprocess.Popen[bytes]":
    """A long-running stand-in process; its extra argv puts a node's data dir on its command line.

    Returned once the child has exec'd: until then /proc/PID/cmdline shows the parent's command
    line (or nothing), and `titra local` would rightly not take it for a node."""
    script = "import time; time.sleep(60)"
    process = subprocess.Popen([sys.executable, "-c", script, *argv])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if script.encode() in Path(f"/proc/{process.pid}/cmdline").read_bytes():
                return process
        except OSError:
            pass
        time.sleep(0.01)
    process.kill()
    raise AssertionError("the stand-in process did not start within 10 s")


def test_local_down_stops_the_node_processes_and_removes_pid_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    node = sleeper("--data-dir", str(tmp_path / "n1"))
    try:
        (tmp_path / "n1.pid").write_text(f"{node.pid}\n")
        assert main(["local", "down", "--data-dir", str(tmp_path)]) == 0
        assert node.wait(timeout=10) == -signal.SIGTERM
    finally:
        node.kill()
    assert f"stopped n1 (pid {node.pid})" in capsys.readouterr().out
    assert not (tmp_path / "n1.pid").exists()
    assert main(["local", "down", "--data-dir", str(tmp_path)]) == 0
    assert "no nodes running" in capsys.readouterr().out


def test_local_down_leaves_alone_a_process_that_reused_a_stale_pid(tmp_path: Path) -> None:
    stranger = sleeper()  # its command line does not name tmp_path/n1
    try:
        (tmp_path / "n1.pid").write_text(f"{stranger.pid}\n")
        assert main(["local", "down", "--data-dir", str(tmp_path)]) == 0
        assert stranger.poll() is None
        assert not (tmp_path / "n1.pid").exists()
    finally:
        stranger.kill()
        stranger.wait(timeout=10)


def test_local_up_refuses_a_directory_with_running_nodes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    node = sleeper("--data-dir", str(tmp_path / "n2"))
    try:
        (tmp_path / "n2.pid").write_text(f"{node.pid}\n")
        assert main(["local", "up", "--nodes", "2", "--data-dir", str(tmp_path), "--base-port", "7070"]) == 1
        assert f"already running in {tmp_path}: n2 (pid {node.pid})" in capsys.readouterr().err
        assert node.poll() is None and not (tmp_path / "n1.pid").exists()
    finally:
        node.kill()
        node.wait(timeout=10)


FAKE_NODE = """
import http.server, json, os, sys
args = sys.argv[sys.argv.index("serve") + 1:]
options = dict(zip(args[::2], args[1::2]))
with open(os.path.join(options["--data-dir"], "seen.json"), "w") as out:
    json.dump({"argv": args, "secret": os.environ.get("TITRA_CLUSTER_SECRET")}, out)
host, port = options["--listen"].split(":")

peers = [item.split("=")[0] for item in options["--peers"].split(",") if item.split("=")[0] != options["--node-id"]]
status_polls = os.path.join(options["--data-dir"], "status_polls")

class Ready(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/v1/status":
            # Connected to its peers only from the third poll on: `local up` must wait for it.
            with open(status_polls, "a") as out:
                out.write(".")
            polls = len(open(status_polls).read())
            body = json.dumps({"peers": {peer: {"connected": polls >= 3} for peer in peers}}).encode()
            self.send_response(200)
            self.end_headers()
            self.wfile.write(body)
            return
        self.send_response(200 if self.path == "/health/ready" else 404)
        self.end_headers()

http.server.HTTPServer((host, int(port)), Ready).serve_forever()
"""


def free_base_port(nodes: int) -> int:
    """A base port whose next `nodes` client ports are free now (bound and released)."""
    for _ in range(50):
        socks = [socket.socket()]
        try:
            socks[0].bind(("127.0.0.1", 0))
            base = socks[0].getsockname()[1]
            if base + CLIENT_DEFAULTS.local_peer_port_offset + nodes > 65_535:
                continue
            for offset in range(1, nodes):
                socks.append(socket.socket())
                socks[-1].bind(("127.0.0.1", base + offset))
            return int(base)
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise AssertionError("no run of free ports found")


def test_local_up_waits_for_ready_nodes_and_local_down_stops_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    script = tmp_path / "fake_node.py"
    script.write_text(FAKE_NODE)
    monkeypatch.setenv(local.NODE_COMMAND_ENV, f"{shlex.quote(sys.executable)} {shlex.quote(str(script))}")
    root, base = tmp_path / "cluster", free_base_port(2)
    try:
        assert main(["local", "up", "--nodes", "2", "--base-port", str(base), "--data-dir", str(root), "--json"]) == 0
        started = json.loads(capsys.readouterr().out)
        assert [n["endpoint"] for n in started["nodes"]] == [f"http://127.0.0.1:{base}", f"http://127.0.0.1:{base + 1}"]
        pids = {n["node_id"]: n["pid"] for n in started["nodes"]}
        assert {node_id: int((root / f"{node_id}.pid").read_text()) for node_id in pids} == pids
        # It returned only once each node said it was connected to the other (the third poll).
        assert all(len((root / node_id / "status_polls").read_text()) == 3 for node_id in ("n1", "n2"))
        seen = json.loads((root / "n2" / "seen.json").read_text())
        assert seen["secret"] == (root / "cluster.secret").read_text().strip()
        peer = base + CLIENT_DEFAULTS.local_peer_port_offset
        assert seen["argv"][seen["argv"].index("--peers") + 1] == f"n1=127.0.0.1:{peer},n2=127.0.0.1:{peer + 1}"
        assert main(["local", "up", "--nodes", "2", "--base-port", str(base), "--data-dir", str(root)]) == 1
    finally:
        assert main(["local", "down", "--data-dir", str(root), "--json"]) == 0
    stopped = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert stopped == {"stopped": pids, "killed": []}
    assert list(root.glob("*.pid")) == [] and local.running(root) == {}
    for pid in pids.values():  # the nodes are this process's children here: each ended by SIGTERM
        # `down` sees a node gone once its command line is (an exiting process's reads empty
        # before it is a zombie), so reap it within a deadline rather than at once.
        deadline = time.monotonic() + 10
        reaped, status = 0, 0
        while reaped == 0 and time.monotonic() < deadline:
            try:
                reaped, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                reaped = -1  # already reaped by subprocess's own bookkeeping
                break
            if reaped == 0:
                time.sleep(0.01)
        if reaped == -1:
            continue
        assert reaped == pid and os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM


def test_local_up_shows_the_log_of_a_node_that_failed_and_stops_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    script = tmp_path / "broken_node.py"
    script.write_text("import sys\nprint('boom: --peer-listen is not a valid address', flush=True)\nsys.exit(3)\n")
    monkeypatch.setenv(local.NODE_COMMAND_ENV, f"{shlex.quote(sys.executable)} {shlex.quote(str(script))}")
    assert (
        main(["local", "up", "--nodes", "2", "--base-port", str(free_base_port(2)), "--data-dir", str(tmp_path)]) == 1
    )
    err = capsys.readouterr().err
    assert "exited with status 3 before it was ready" in err and "boom: --peer-listen is not a valid address" in err
    assert list(tmp_path.glob("*.pid")) == []
