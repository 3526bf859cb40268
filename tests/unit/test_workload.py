"""chaos.workload against a fake Titra node on 127.0.0.1: how each answer and each connection
failure is recorded (ok / fail / info, Jepsen's indeterminate ops), and that histories are well formed."""

import asyncio
import base64
import io
import json
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web

from chaos.checkers import check_set
from chaos.history import Event, from_jsonl, operations, to_jsonl
from chaos.workload import (
    Client,
    Recorder,
    Target,
    classify_exception,
    classify_status,
    final_read_sets,
    new_session,
    run_workload,
)

RECEIPT = {"Titra-Context": "ctx-1", "Titra-Coordinator": "n1", "Titra-Replicas": "n1,n2"}


@dataclass
class FakeNode:
    """Answers by key name: the key says which reply to give. Counts requests per key."""

    requests: dict[str, int] = field(default_factory=dict)
    contexts: list[str] = field(default_factory=list)
    stored: set[str] = field(default_factory=set)

    async def kv(self, request: web.Request) -> web.StreamResponse:
        key = request.match_info["key"]
        self.requests[key] = self.requests.get(key, 0) + 1
        self.contexts.append(request.headers.get("Titra-Context", ""))
        behaviour = key.split("/")[-1]
        if behaviour == "drop":  # read the request, then cut the connection: lost after sending
            assert request.transport is not None
            request.transport.close()
            await asyncio.sleep(0.5)
        if behaviour == "hang":
            await asyncio.sleep(2)
        errors = {
            "unavailable": (503, "unavailable"),
            "timeout": (504, "timeout"),
            "bad": (400, "invalid_key"),
            "boom": (500, "internal"),
            "siblimit": (409, "siblings_limit"),
            "noks": (404, "keyspace_not_found"),
        }
        if behaviour in errors:
            status, code = errors[behaviour]
            return web.json_response({"error": {"code": code, "message": "m"}}, status=status, headers=RECEIPT)
        if request.method == "PUT":
            self.stored.add(key)
            return web.Response(status=204, headers=RECEIPT)
        if behaviour == "missing":
            return web.json_response({"error": {"code": "key_not_found", "message": "m"}}, status=404, headers=RECEIPT)
        if behaviour == "garbled":  # off the API's contract: the op's outcome is unknown, the run goes on
            return web.Response(status=300, body=b"not json", headers=RECEIPT)
        if behaviour == "siblings":
            siblings = [
                {"value_base64": base64.b64encode(v).decode(), "content_type": "text/plain", "timestamp": "t"}
                for v in (b"5", b"6")
            ]
            return web.json_response({"siblings": siblings}, status=300, headers=RECEIPT)
        return web.Response(status=200, body=b"7", headers={**RECEIPT, "Content-Type": "text/plain"})

    async def listing(self, request: web.Request) -> web.StreamResponse:
        keys = sorted(k for k in self.stored if k.startswith(request.query.get("prefix", "")))
        start = int(request.query.get("cursor", "0"))
        page = keys[start : start + int(request.query["limit"])]
        cursor = str(start + len(page)) if start + len(page) < len(keys) else None
        return web.json_response({"keyspace": "ks", "keys": page, "cursor": cursor})


@pytest.fixture
async def node() -> AsyncIterator[tuple[FakeNode, str]]:
    fake = FakeNode()
    app = web.Application()
    app.router.add_route("*", "/v1/kv/ks/{key:.*}", fake.kv)
    app.router.add_get("/v1/kv/ks", fake.listing)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield fake, f"http://127.0.0.1:{port}"
    await runner.cleanup()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def one_op(url: str, method: str, key: str, op_timeout_s: float = 1.0) -> Event:
    recorder = Recorder(t0_wall_ns=0)
    async with new_session(op_timeout_s) as http:
        client = Client(0, Target({"n1": url}, "ks", "quorum"), http, recorder)
        if method == "PUT":
            await client.write("n1", key, 11)
        else:
            await client.read("n1", key)
    invoke, done = recorder.events
    assert (invoke.type, invoke.op_id, invoke.process) == ("invoke", done.op_id, done.process)
    assert invoke.time_ns <= done.time_ns
    return done


@pytest.mark.parametrize(
    ("method", "key", "outcome", "value"),
    [
        ("PUT", "w/ok", "ok", 11),
        ("PUT", "w/unavailable", "fail", 11),  # 503: surely not written
        ("PUT", "w/bad", "fail", 11),
        ("PUT", "w/siblimit", "fail", 11),
        ("PUT", "w/timeout", "info", 11),  # 504: unknown
        ("PUT", "w/boom", "info", 11),
        ("GET", "r/value", "ok", [7]),
        ("GET", "r/siblings", "ok", [5, 6]),
        ("GET", "r/missing", "ok", []),
        ("GET", "r/noks", "fail", None),
        ("GET", "r/garbled", "info", None),
        ("GET", "r/timeout", "info", None),
    ],
)
async def test_each_status_is_recorded_with_its_outcome_value_and_receipt(
    node: tuple[FakeNode, str], method: str, key: str, outcome: str, value: object
) -> None:
    fake, url = node
    done = await one_op(url, method, key)
    assert (done.type, done.value) == (outcome, value)
    assert done.receipt["Titra-Coordinator"] == "n1"
    assert fake.requests[key] == 1


async def test_a_connection_lost_after_sending_is_unknown_and_never_retried(node: tuple[FakeNode, str]) -> None:
    fake, url = node
    done = await one_op(url, "PUT", "w/drop")
    assert done.type == "info" and "connection lost" in done.error
    assert fake.requests["w/drop"] == 1  # aiohttp's own resend of an idempotent PUT is off


async def test_a_client_timeout_is_unknown(node: tuple[FakeNode, str]) -> None:
    _, url = node
    done = await one_op(url, "PUT", "w/hang", op_timeout_s=0.3)
    assert done.type == "info" and "timeout" in done.error


async def test_a_refused_connection_is_a_failure() -> None:
    done = await one_op(f"http://127.0.0.1:{free_port()}", "PUT", "w/ok")
    assert done.type == "fail" and "not connected" in done.error


def test_classification_tables() -> None:
    assert classify_status(204, "", read=False) == "ok"
    assert classify_status(300, "", read=False) == "info"
    assert classify_status(404, "key_not_found", read=False) == "fail"
    assert classify_status(502, "", read=True) == "info"
    assert classify_exception(aiohttp.ConnectionTimeoutError("connect"))[0] == "fail"
    assert classify_exception(TimeoutError())[0] == "info"
    assert classify_exception(aiohttp.ServerDisconnectedError())[0] == "info"


async def test_a_session_sends_back_the_context_it_was_given(node: tuple[FakeNode, str]) -> None:
    fake, url = node
    recorder = Recorder(t0_wall_ns=0)
    async with new_session(1.0) as http:
        client = Client(0, Target({"n1": url}, "ks", "causal"), http, recorder)
        await client.write("n1", "s/ok", 1)
        await client.read("n1", "s/value")
    assert fake.contexts == ["", "ctx-1"]


@pytest.mark.parametrize("workload", ["set", "register", "session"])
async def test_a_workload_history_is_well_formed_and_round_trips(node: tuple[FakeNode, str], workload: str) -> None:
    _, url = node
    recorder = Recorder(t0_wall_ns=0)
    target = Target({"n1": url, "n2": url}, "ks", "quorum")
    await run_workload(workload, target, recorder, concurrency=3, duration_s=5, op_interval_s=0, ops_max=8, seed=4)
    events = recorder.events
    assert from_jsonl(to_jsonl(events)) == events
    ops = operations(events)  # raises on a completion without an invoke, or a double invoke
    assert len(ops) * 2 == len(events)
    assert {op.process for op in ops} == {0, 1, 2}
    assert all(op.outcome == "ok" and op.complete_ns is not None and op.complete_ns >= op.invoke_ns for op in ops)
    for process in range(3):
        ids = [op.op_id for op in ops if op.process == process]
        assert ids == list(range(len(ids)))
    assert {op.node for op in ops} == {"n1", "n2"}  # sessions visit every node
    if workload == "set":
        assert len({op.value_in for op in ops}) == len(ops)  # unique elements
    if workload == "session":  # each session: a write, then a read of that key through the other node
        for process in range(3):
            own = [op for op in ops if op.process == process]
            for write, read in zip(own[::2], own[1::2], strict=True):
                assert (write.f, read.f, write.key) == ("write", "read", read.key) and write.node != read.node


async def test_the_final_reads_list_the_set_from_every_node_and_the_set_checks(node: tuple[FakeNode, str]) -> None:
    _, url = node
    recorder = Recorder(t0_wall_ns=0)
    target = Target({"n1": url, "n2": url}, "ks", "quorum")
    await run_workload("set", target, recorder, concurrency=2, duration_s=5, op_interval_s=0, ops_max=600, seed=1)
    await final_read_sets(target, recorder, first_process=1000, op_timeout_s=2)
    reads = [op for op in operations(recorder.events) if op.f == "read_set"]
    assert [(op.process, op.node, op.outcome) for op in reads] == [(1000, "n1", "ok"), (1001, "n2", "ok")]
    assert len(reads[0].value_out) == 1200  # two pages of the listing
    result = check_set(operations(recorder.events))
    assert result.valid is True and result.counts["lost"] == 0


async def test_a_stop_ends_the_sessions_promptly(node: tuple[FakeNode, str]) -> None:
    _, url = node
    recorder = Recorder(t0_wall_ns=0)
    stop = asyncio.Event()
    target = Target({"n1": url}, "ks", "one")
    task = asyncio.create_task(
        run_workload(
            "set", target, recorder, concurrency=2, duration_s=60, op_interval_s=0.05, ops_max=10**6, seed=1, stop=stop
        )
    )
    await asyncio.sleep(0.3)
    stop.set()
    await asyncio.wait_for(task, timeout=3)
    assert operations(recorder.events) and len(recorder.events) % 2 == 0


def test_the_recorder_writes_each_event_as_a_json_line() -> None:
    sink = io.StringIO()
    recorder = Recorder(t0_wall_ns=0, sink=sink)
    recorder.record(Event("invoke", 0, 0, "add", "set/1", 1, recorder.now_ns()))
    assert json.loads(sink.getvalue())["f"] == "add"
