"""Client workloads of a chaos run: sessions issuing single-attempt HTTP operations, recorded as history.

Edge module (asyncio, aiohttp, clock). It runs inside the client container on the compose network
(`titra-chaos workload ...`), and the runner reuses `final_read_sets` from the host. Rules:
- Every operation is one HTTP request, never retried (aiohttp's own retry of idempotent methods is
  switched off), with a per-op timeout; it is recorded as an `invoke` then exactly one of `ok`,
  `fail` (surely did not happen: 503, 4xx, could not connect) or `info` (unknown: 504, other 5xx,
  connection lost after sending, client timeout) -- Jepsen's indeterminate operations.
- Each session (Jepsen's "process") is one asyncio task, sequential, with its own Titra-Context.
- Times are nanoseconds since the run's start (`t0_wall_ns`, the wall clock the runner and the
  nemesis share), read through the monotonic clock so they never go backwards.
- Every loop is bounded by a deadline and an op count; SIGTERM stops new ops and lets running ones finish.
Workloads (Jepsen's set, register, and a COPS-style session test for `causal`):
- set: each add is a PUT of a fresh key `set/<element>`; the final reads list the keyspace.
- register: reads and writes of unique values over a few keys; reads record every sibling.
- session: each session writes a key through one node, then reads it back through another.
"""

import asyncio
import base64
import contextlib
import json
import signal
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import IO, Any

import aiohttp

from chaos.history import Event, Outcome
from chaos.schedule import Rng
from cluster.frozen import frozen

WORKLOADS = ("set", "register", "session")
RECEIPT_PREFIX = "titra-"
CONNECT_TIMEOUT_S = 1.0
ELEMENTS_PER_PROCESS = 1_000_000  # element = process * this + counter: unique across sessions
SET_PREFIX = "set/"
CONTEXT_SHOWN_CHARS = 48


class Recorder:
    """Appends events to memory and, line by line, to a JSONL file (a killed client leaves a history)."""

    def __init__(self, t0_wall_ns: int, sink: IO[str] | None = None) -> None:
        wall, mono = time.time_ns(), time.monotonic_ns()
        self._offset_ns = wall - t0_wall_ns - mono
        self._sink = sink
        self.events: list[Event] = []
        self._op_ids: dict[int, int] = {}

    def now_ns(self) -> int:
        return time.monotonic_ns() + self._offset_ns

    def record(self, event: Event) -> None:
        self.events.append(event)
        if self._sink is not None:
            self._sink.write(json.dumps(asdict(event), separators=(",", ":")) + "\n")
            self._sink.flush()

    def next_op_id(self, process: int) -> int:
        self._op_ids[process] = self._op_ids.get(process, -1) + 1
        return self._op_ids[process]


@frozen
class Reply:
    outcome: Outcome
    status: int  # 0 when no HTTP answer came back
    body: bytes
    headers: dict[str, str]  # the consistency receipt, as recorded (a long context token cut short)
    error: str
    context: str  # the whole Titra-Context token


def classify_status(status: int, error_code: str, *, read: bool) -> Outcome:
    """An HTTP status as an outcome, per docs/api.md (503: surely not written; 504: unknown)."""
    if 200 <= status < 300 or (read and status == 300):
        return "ok"
    if read and status == 404 and error_code == "key_not_found":
        return "ok"  # an empty read is a read
    if 400 <= status < 500 or status == 503:
        return "fail"
    return "info"  # 504, and any other 5xx: the node may have acted before it failed


def classify_exception(exc: BaseException) -> tuple[Outcome, str]:
    """A client-side error as an outcome: fail only when the request surely never left."""
    name = f"{type(exc).__name__}: {exc}"[:300]
    if isinstance(exc, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError):
        return "fail", f"not connected: {name}"  # never connected, so never sent
    if isinstance(exc, TimeoutError):
        return "info", f"client timeout: {name}"
    return "info", f"connection lost: {name}"  # reset or closed after the request went out


def new_session(op_timeout_s: float) -> aiohttp.ClientSession:
    # force_close: one connection per op, so a failed connect means "not sent" without ambiguity.
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(force_close=True),
        timeout=aiohttp.ClientTimeout(total=op_timeout_s, sock_connect=CONNECT_TIMEOUT_S),
    )
    # aiohttp (3.10+) resends an idempotent request (GET, PUT) once after a lost connection; a
    # history needs exactly one attempt per op, so that is switched off (no public switch exists).
    session._retry_connection = False
    return session


async def http_op(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    read: bool,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> Reply:
    try:
        async with session.request(method, url, data=body, headers=headers) as response:
            payload = await response.read()
            got = {k: v for k, v in response.headers.items() if k.lower().startswith(RECEIPT_PREFIX)}
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        outcome, error = classify_exception(exc)
        return Reply(outcome, 0, b"", {}, error, "")
    code = ""
    if response.status >= 400:
        code = _error_code(payload)
    outcome = classify_status(response.status, code, read=read)
    context = got.get("Titra-Context", "")
    if len(context) > CONTEXT_SHOWN_CHARS:  # the token grows with the session: the history keeps its head
        got["Titra-Context"] = f"{context[:CONTEXT_SHOWN_CHARS]}... ({len(context)} chars)"
    error = "" if outcome == "ok" else f"HTTP {response.status} {code}".strip()
    return Reply(outcome, response.status, payload, got, error, context)


def _error_code(payload: bytes) -> str:
    try:
        parsed = json.loads(payload)
    except ValueError:
        return ""
    error = parsed.get("error") if isinstance(parsed, dict) else None
    return str(error.get("code", "")) if isinstance(error, dict) else ""


def decode_read(reply: Reply) -> list[Any]:
    """A read's values: [] for not found, one per sibling (300), ints where the body is one."""
    if reply.status == 404:
        return []
    if reply.status == 300:
        siblings = json.loads(reply.body).get("siblings", [])
        return [_value(base64.b64decode(s["value_base64"])) for s in siblings]
    return [_value(reply.body)]


def _value(raw: bytes) -> Any:
    text = raw.decode("utf-8", "replace")
    return int(text) if text.lstrip("-").isdigit() else text


@frozen
class Target:
    """Where and how a workload talks: node id -> base URL, keyspace, level."""

    urls: dict[str, str]
    keyspace: str
    level: str
    server_timeout_ms: int = 2_000


class Client:
    """One session (Jepsen process): sequential ops, its own Titra-Context, every op recorded."""

    def __init__(
        self, process: int, target: Target, http: aiohttp.ClientSession, recorder: Recorder, *, session: bool = True
    ) -> None:
        self.process = process
        self.target = target
        self.http = http
        self.recorder = recorder
        self.session = session  # keep the Titra-Context and send it back (not for blind unique adds)
        self.context = ""

    def _url(self, node: str, key: str) -> str:
        t = self.target
        return f"{t.urls[node]}/v1/kv/{t.keyspace}/{key}?consistency={t.level}&timeout_ms={t.server_timeout_ms}"

    async def _op(self, f: str, node: str, key: str, value: Any, method: str, body: bytes | None) -> Reply:
        op_id = self.recorder.next_op_id(self.process)
        level = self.target.level
        self.recorder.record(Event("invoke", self.process, op_id, f, key, value, self.recorder.now_ns(), node, level))
        headers = {"Content-Type": "text/plain", "Accept": "application/json"}
        if self.context:
            headers["Titra-Context"] = self.context
        read = method == "GET"
        reply = await http_op(self.http, method, self._url(node, key), read=read, body=body, headers=headers)
        if self.session and reply.outcome == "ok" and reply.context:
            self.context = reply.context
        outcome, error, out = reply.outcome, reply.error, (None if read else value)
        if read and outcome == "ok":
            try:
                out = decode_read(reply)
            except (ValueError, KeyError, TypeError, AttributeError) as exc:  # a body off the API's contract
                outcome, error = "info", f"undecodable read body: {type(exc).__name__}: {exc}"[:300]
        now_ns = self.recorder.now_ns()
        self.recorder.record(
            Event(outcome, self.process, op_id, f, key, out, now_ns, node, level, reply.headers, error)
        )
        return reply

    async def write(self, node: str, key: str, value: int, f: str = "write") -> Reply:
        return await self._op(f, node, key, value, "PUT", str(value).encode())

    async def read(self, node: str, key: str) -> Reply:
        return await self._op("read", node, key, None, "GET", None)


@frozen
class Pace:
    deadline_ns: int  # in recorder time
    ops_max: int  # per session
    op_interval_s: float


async def run_session(
    workload: str, client: Client, nodes: Sequence[str], pace: Pace, stop: asyncio.Event, seed: int, keys: int
) -> None:
    rng = Rng(seed * 1_000_003 + client.process)
    base = client.process * ELEMENTS_PER_PROCESS
    for i in range(pace.ops_max):
        if stop.is_set() or client.recorder.now_ns() >= pace.deadline_ns:
            return
        node = nodes[(client.process + i) % len(nodes)]  # every session visits every node in turn
        if workload == "set":
            element = base + i
            await client.write(node, f"{SET_PREFIX}{element}", element, f="add")
        elif workload == "register":
            key = f"r/{rng.below(keys)}"
            if rng.below(2):
                await client.write(node, key, base + i)
            else:
                await client.read(node, key)
        else:  # session: write through one node, read back through the next one
            key = f"s/{rng.below(keys)}"
            await client.write(node, key, base + i)
            await client.read(nodes[(client.process + i + 1) % len(nodes)], key)
        if pace.op_interval_s > 0:
            with contextlib.suppress(TimeoutError):  # the pace of the load; a stop ends the pause early
                await asyncio.wait_for(stop.wait(), pace.op_interval_s)


async def run_workload(
    workload: str,
    target: Target,
    recorder: Recorder,
    *,
    concurrency: int,
    duration_s: float,
    op_interval_s: float,
    ops_max: int,
    seed: int,
    keys: int = 3,
    op_timeout_s: float = 5.0,
    stop: asyncio.Event | None = None,
) -> None:
    """Run `concurrency` sessions until `duration_s` passes, `ops_max` each, or `stop` is set."""
    assert workload in WORKLOADS, workload
    stop = stop or asyncio.Event()
    nodes = sorted(target.urls)
    pace = Pace(recorder.now_ns() + int(duration_s * 1e9), ops_max, op_interval_s)
    async with new_session(op_timeout_s) as http:
        clients = [Client(p, target, http, recorder, session=workload != "set") for p in range(concurrency)]
        await asyncio.gather(*(run_session(workload, c, nodes, pace, stop, seed, keys) for c in clients))


async def list_elements(http: aiohttp.ClientSession, url: str, keyspace: str) -> tuple[Reply, list[int]]:
    """Every `set/` element through one node's listing, page by page (bounded); the last reply."""
    elements: list[int] = []
    cursor = ""
    for _ in range(10_000):  # pages of 1000: ten million keys, far beyond any run
        query = f"prefix={SET_PREFIX}&limit=1000" + (f"&cursor={cursor}" if cursor else "")
        reply = await http_op(http, "GET", f"{url}/v1/kv/{keyspace}?{query}", read=True)
        if reply.outcome != "ok":
            return reply, elements
        page = json.loads(reply.body)
        elements += [int(k.removeprefix(SET_PREFIX)) for k in page["keys"] if k.startswith(SET_PREFIX)]
        cursor = page.get("cursor") or ""
        if not cursor:
            return reply, elements
    raise AssertionError("listing did not end within 10000 pages")


async def final_read_sets(target: Target, recorder: Recorder, first_process: int, op_timeout_s: float) -> None:
    """One `read_set` op per node: that node's listing of the whole set (after the heal)."""
    async with new_session(op_timeout_s) as http:
        for offset, node in enumerate(sorted(target.urls)):
            process = first_process + offset
            op_id = recorder.next_op_id(process)
            recorder.record(Event("invoke", process, op_id, "read_set", SET_PREFIX, None, recorder.now_ns(), node))
            reply, elements = await list_elements(http, target.urls[node], target.keyspace)
            value = sorted(elements) if reply.outcome == "ok" else None
            recorder.record(
                Event(
                    reply.outcome,
                    process,
                    op_id,
                    "read_set",
                    SET_PREFIX,
                    value,
                    recorder.now_ns(),
                    node,
                    "",
                    reply.headers,
                    reply.error,
                )
            )


def main_workload(args: Any) -> int:
    """`titra-chaos workload`: run in the client container, history to `args.out` (JSONL)."""
    urls = dict(item.split("=", 1) for item in args.nodes.split(","))
    target = Target(urls, args.keyspace, args.level, args.server_timeout_ms)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    async def go(recorder: Recorder) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await run_workload(
            args.workload,
            target,
            recorder,
            concurrency=args.concurrency,
            duration_s=args.duration,
            op_interval_s=args.op_interval_ms / 1000,
            ops_max=args.ops_max,
            seed=args.seed,
            keys=args.keys,
            op_timeout_s=args.op_timeout_s,
            stop=stop,
        )

    with out.open("w", encoding="utf-8") as sink:
        recorder = Recorder(args.t0_wall_ns or time.time_ns(), sink)
        # The runner starts its fault clock when this file appears: the load is about to begin.
        out.with_suffix(".started").write_text(f"{recorder.now_ns()}\n", encoding="utf-8")
        asyncio.run(go(recorder))
    return 0
