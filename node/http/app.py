"""The client HTTP API of docs/api.md: routes, handlers, and the consistency receipt.

Handlers are thin: `node.http.parse` validates everything and builds the coordinator request,
the coordinator (node/runtime.py) does the work, and the outcome's status is mapped to an HTTP
status here (`ClientApi.coordinate_write` / `coordinate_read`, which the client port's fast
path in node/http/edge.py calls too, so both front doors answer alike). A KV response the
coordinator produced carries the whole consistency receipt; a request the edge rejected (400,
412 on an If-Match that never saw the key, 413) was not coordinated and carries only
`Titra-Coordinator`.
"""

import base64
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager

from aiohttp import MultipartWriter, web
from aiohttp.http import HttpVersion11

from cluster.context import encode_token, merge, remember, scoped_key
from cluster.enums import by_value
from cluster.limits import REQUEST_DEFAULTS, RequestDefaults
from cluster.requests import (
    ContextEntry,
    Coordinator,
    KeyspaceDef,
    Level,
    Outcome,
    ReadOutcome,
    ReadRequest,
    ReadStatus,
    WriteOutcome,
    WriteRequest,
    WriteStatus,
)
from cluster.siblings import Sibling
from node.http import parse
from node.http.errors import (
    JSON,
    MSGPACK,
    HttpError,
    encode_structured,
    error_middleware,
    negotiate,
    structured_response,
    wants_msgpack,
)
from node.http.metrics import LEVEL_KEY, HttpMetrics, RepairStatus, metrics_middleware
from node.http.openapi import build_document, encode_document

MULTIPART = "multipart/mixed"
METRICS_KEY = web.AppKey("titra_http_metrics", HttpMetrics)

# Write statuses that are errors: (code, message when the coordinator gave none).
_WRITE_ERRORS: dict[WriteStatus, tuple[str, str]] = {
    WriteStatus.UNAVAILABLE: ("unavailable", "too few replicas were reachable; the write did not happen"),
    WriteStatus.TIMEOUT: ("timeout", "timed out; the write may or may not have happened"),
    WriteStatus.FAILED: ("replica_failed", "a replica refused the write; it may have happened on others"),
    WriteStatus.PRECONDITION_FAILED: ("precondition_failed", "the precondition failed; nothing was written"),
    WriteStatus.SIBLINGS_LIMIT: ("siblings_limit", "the key holds too many siblings; resolve them first"),
    WriteStatus.NO_KEYSPACE: ("keyspace_not_found", "no such keyspace"),
    WriteStatus.INVALID: ("invalid_request", "the coordinator refused the request"),
    WriteStatus.IDEMPOTENCY_MISMATCH: ("idempotency_mismatch", "the Idempotency-Key was used for another request"),
}
# What a client may assume happened, for the write errors whose outcome is not plain.
_WRITE_FATE = {WriteStatus.UNAVAILABLE: "not_written", WriteStatus.TIMEOUT: "unknown", WriteStatus.FAILED: "unknown"}
_READ_ERRORS: dict[ReadStatus, tuple[str, str]] = {
    ReadStatus.NOT_FOUND: ("key_not_found", "no value for this key"),
    ReadStatus.UNAVAILABLE: ("unavailable", "too few replicas were reachable"),
    ReadStatus.TIMEOUT: ("timeout", "timed out before enough replicas answered"),
    ReadStatus.NO_KEYSPACE: ("keyspace_not_found", "no such keyspace"),
    ReadStatus.INVALID: ("invalid_request", "the coordinator refused the request"),
}
_OUTCOME_ERRORS: dict[Outcome, tuple[str, str]] = {
    Outcome.CONFLICT: ("keyspace_conflict", "the keyspace exists with another definition"),
    Outcome.UNAVAILABLE: ("unavailable", "too few nodes were reachable"),
    Outcome.TIMEOUT: ("timeout", "timed out; the outcome is unknown"),
    Outcome.NO_KEYSPACE: ("keyspace_not_found", "no such keyspace"),
    Outcome.INVALID: ("invalid_request", "the coordinator refused the request"),
}


def _requested(level: str, name: str, count: int | None) -> str:
    return level if count is None else f"{level};{name}={count}"


def _keyspace_body(definition: KeyspaceDef) -> dict[str, object]:
    return {"name": definition.name, "n": definition.n, "resolution": definition.resolution}


def _replica_fields(replicas: tuple[str, ...], required: int) -> dict[str, object]:
    return {"acknowledged": len(replicas), "acknowledged_by": list(replicas), "required": required}


def _expect_within(limit: int) -> Callable[[web.Request], Awaitable[web.StreamResponse | None]]:
    """`Expect: 100-continue` is answered only when the declared body fits: an oversized one
    gets its 413 from the handler without the client ever being invited to send the body."""

    async def expect_handler(request: web.Request) -> web.StreamResponse | None:
        if request.content_length is not None and request.content_length > limit:
            return None
        if request.version == HttpVersion11 and request.headers.get("Expect", "").lower() == "100-continue":
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        return None

    return expect_handler


# Outcome statuses by value, once per request (cluster/enums.py).
_write_status = by_value(WriteStatus)
_read_status = by_value(ReadStatus)


class ClientApi:
    """The client API's routes and the coordination steps they share with the edge's fast path."""

    def __init__(self, coordinator: Coordinator, limits: RequestDefaults, metrics: HttpMetrics) -> None:
        self.coordinator = coordinator
        self.limits = limits
        self.metrics = metrics
        self.document = encode_document(build_document(limits))

    @contextmanager
    def _at_the_edge(self) -> Iterator[None]:
        """Requests refused before coordination still say which node refused them."""
        try:
            yield
        except HttpError as error:
            error.headers.setdefault("Titra-Coordinator", self.coordinator.node_id)
            raise

    def _receipt(
        self,
        requested: str,
        achieved: str,
        replicas: tuple[str, ...],
        timestamp: str,
        coordinator: str,
        context: tuple[ContextEntry, ...],
        fallbacks: tuple[str, ...] = (),
    ) -> dict[str, str]:
        return {
            "Titra-Context": encode_token(context, self.coordinator.secret),
            "Titra-Consistency-Requested": requested,
            "Titra-Consistency-Achieved": achieved,
            "Titra-Replicas": ",".join(replicas),
            "Titra-Fallbacks": ",".join(fallbacks),
            "Titra-Timestamp": timestamp,
            "Titra-Coordinator": coordinator or self.coordinator.node_id,
        }

    # --- Keys. ---

    async def put_key(self, request: web.Request) -> web.StreamResponse:
        return await self._write(request, deleted=False)

    async def delete_key(self, request: web.Request) -> web.StreamResponse:
        return await self._write(request, deleted=True)

    async def _write(self, request: web.Request, *, deleted: bool) -> web.StreamResponse:
        with self._at_the_edge():
            write = await parse.parse_write(
                request, parse.body_of(request, self.limits), self.coordinator.secret, self.limits, deleted=deleted
            )
        request[LEVEL_KEY] = write.level
        return web.Response(status=204, headers=await self.coordinate_write(write))

    async def coordinate_write(self, write: WriteRequest) -> dict[str, str]:
        """The write's receipt headers once it succeeded, or an HttpError carrying them. Shared
        by the aiohttp route and the edge's fast path (node/http/edge.py)."""
        outcome: WriteOutcome = await self.coordinator.put(write)
        status = _write_status(outcome.status)
        context = write.context
        if outcome.version is not None:
            context = remember(context, scoped_key(write.keyspace, write.key), outcome.version)
        headers = self._receipt(
            _requested(write.level, "w", write.w),
            outcome.achieved,
            outcome.acks,
            outcome.timestamp,
            outcome.coordinator,
            context,
            outcome.fallbacks,
        )
        if status is WriteStatus.OK:
            return headers
        code, default = _WRITE_ERRORS[status]
        extra: dict[str, object] = {}
        if status in _WRITE_FATE:
            extra = {**_replica_fields(outcome.acks, outcome.required), "outcome": _WRITE_FATE[status]}
        raise HttpError(code, outcome.message or default, extra=extra, headers=headers)

    async def get_key(self, request: web.Request) -> web.StreamResponse:
        with self._at_the_edge():
            read = parse.parse_read(request, self.coordinator.secret, self.limits)
        request[LEVEL_KEY] = read.level
        status, headers, body = await self.coordinate_read(read, request.headers.get("Accept"))
        return web.Response(status=status, body=body, headers=headers)

    async def coordinate_read(self, read: ReadRequest, accept: str | None) -> tuple[int, dict[str, str], bytes]:
        """The read's status, headers (receipt included) and body, or an HttpError carrying the
        receipt. Shared by the aiohttp route and the edge's fast path (node/http/edge.py)."""
        outcome: ReadOutcome = await self.coordinator.get(read)
        status = _read_status(outcome.status)
        context = read.context
        if read.level == Level.CAUSAL.value:
            # Writes-follow-reads: whoever saw these values has seen what their writers had seen.
            context = merge(context, outcome.deps)
        if outcome.version is not None:
            # Last, so the key just read is the newest entry and the last to fall off the token.
            context = remember(context, scoped_key(read.keyspace, read.key), outcome.version)
        headers = self._receipt(
            _requested(read.level, "r", read.r),
            outcome.achieved,
            outcome.replicas,
            outcome.timestamp,
            outcome.coordinator,
            context,
        )
        if status is ReadStatus.OK and len(outcome.siblings) == 1:
            sibling = outcome.siblings[0]
            return 200, {**headers, "Content-Type": sibling.content_type}, sibling.value
        if status is ReadStatus.OK and outcome.siblings:
            return await _siblings_body(outcome.siblings, headers, accept)
        # OK with no live sibling cannot be told from "only tombstones", which reads as not found.
        code, default = _READ_ERRORS[ReadStatus.NOT_FOUND if status is ReadStatus.OK else status]
        extra: dict[str, object] = {}
        if status in (ReadStatus.UNAVAILABLE, ReadStatus.TIMEOUT):
            extra = _replica_fields(outcome.replicas, outcome.required)
        raise HttpError(code, outcome.message or default, extra=extra, headers=headers)

    async def list_keys(self, request: web.Request) -> web.StreamResponse:
        with self._at_the_edge():
            query = parse.parse_list(request, self.limits)
        outcome = await self.coordinator.list_keys(
            query.keyspace, query.prefix, query.after, query.limit, query.timeout_ms
        )
        # A listing has no level, version or timestamp: its receipt says who answered.
        headers = {
            "Titra-Replicas": ",".join(outcome.replicas),
            "Titra-Fallbacks": "",
            "Titra-Coordinator": self.coordinator.node_id,
        }
        status = Outcome(outcome.status)
        if status not in (Outcome.OK, Outcome.CREATED):
            code, default = _OUTCOME_ERRORS[status]
            raise HttpError(code, outcome.message or default, headers=headers)
        # Keys are UTF-8 (the edge refuses others); msgpack carries them as the raw bytes.
        keys: list[object] = list(outcome.keys)
        if not wants_msgpack(request):
            keys = [key.decode("utf-8", "replace") for key in outcome.keys]
        cursor = None if outcome.cursor is None else parse.encode_cursor(outcome.cursor)
        return structured_response(request, 200, {"keyspace": query.keyspace, "keys": keys, "cursor": cursor}, headers)

    async def replica_digest(self, request: web.Request) -> web.StreamResponse:
        """This node's own replica of a keyspace, for convergence checks (no read repair)."""
        query = parse.parse_list(request, self.limits)
        if query.prefix:
            raise HttpError("unknown_parameter", "prefix is not supported here; page with cursor")
        got = await self.coordinator.replica_digest(query.keyspace, query.after, query.limit)
        if got is None:
            raise HttpError("keyspace_not_found", f"no keyspace named {query.keyspace!r}")
        entries, cursor = got
        body = {
            "node": self.coordinator.node_id,
            "keyspace": query.keyspace,
            "entries": [[key.decode("utf-8", "replace"), digest] for key, digest in entries],
            "cursor": None if cursor is None else parse.encode_cursor(cursor),
        }
        return structured_response(request, 200, body)

    # --- Keyspaces. ---

    async def put_keyspace(self, request: web.Request) -> web.StreamResponse:
        parse.check_params(request.rel_url.query, parse.TIMEOUT_PARAMS)
        timeout_ms = parse.parse_timeout(request.rel_url.query, self.limits)
        definition = await parse.parse_keyspace_definition(request, self.limits)
        outcome = await self.coordinator.create_keyspace(definition, timeout_ms)
        status = Outcome(outcome.status)
        in_force = outcome.keyspace or definition
        if status in (Outcome.OK, Outcome.CREATED):
            return structured_response(request, 201 if status is Outcome.CREATED else 200, _keyspace_body(in_force))
        code, default = _OUTCOME_ERRORS[status]
        extra: dict[str, object] = {}
        if status is Outcome.CONFLICT and outcome.keyspace is not None:
            extra["keyspace"] = _keyspace_body(outcome.keyspace)
        if status is Outcome.TIMEOUT:
            extra["outcome"] = "unknown"
        raise HttpError(code, outcome.message or default, extra=extra)

    async def get_keyspace(self, request: web.Request) -> web.StreamResponse:
        parse.check_params(request.rel_url.query, parse.TIMEOUT_PARAMS)
        name = parse.parse_keyspace_name(request, self.limits)
        definition = await self.coordinator.get_keyspace(name, parse.parse_timeout(request.rel_url.query, self.limits))
        if definition is None:
            raise HttpError("keyspace_not_found", f"no keyspace named {name!r}")
        return structured_response(request, 200, _keyspace_body(definition))

    async def list_keyspaces(self, request: web.Request) -> web.StreamResponse:
        parse.check_params(request.rel_url.query, parse.NO_PARAMS)
        definitions = await self.coordinator.list_keyspaces()
        return structured_response(request, 200, {"keyspaces": [_keyspace_body(d) for d in definitions]})

    # --- Operations. ---

    def _health(self, request: web.Request, *, readiness: bool) -> web.Response:
        parse.check_params(request.rel_url.query, parse.NO_PARAMS)
        ready = self.coordinator.ready()
        body = {
            "status": "ready" if ready else "not_ready",
            "live": True,
            "ready": ready,
            "node": self.coordinator.node_id,
        }
        if not readiness:
            body["status"] = "live"
        return structured_response(request, 503 if readiness and not ready else 200, body)

    async def health(self, request: web.Request) -> web.StreamResponse:
        # A load balancer probing /health should stop sending to a node that cannot serve.
        return self._health(request, readiness=True)

    async def health_live(self, request: web.Request) -> web.StreamResponse:
        return self._health(request, readiness=False)

    async def health_ready(self, request: web.Request) -> web.StreamResponse:
        return self._health(request, readiness=True)

    async def status(self, request: web.Request) -> web.StreamResponse:
        parse.check_params(request.rel_url.query, parse.NO_PARAMS)
        return structured_response(request, 200, self.coordinator.status())

    async def metrics_text(self, request: web.Request) -> web.StreamResponse:
        parse.check_params(request.rel_url.query, parse.NO_PARAMS)
        return self.metrics.response()

    async def openapi(self, request: web.Request) -> web.StreamResponse:
        parse.check_params(request.rel_url.query, parse.NO_PARAMS)
        return web.Response(body=self.document, headers={"Content-Type": JSON})


# The app's API object, for the edge's fast path (node/http/edge.py).
API_KEY = web.AppKey("titra_client_api", ClientApi)


async def _siblings_body(
    siblings: tuple[Sibling, ...], headers: Mapping[str, str], accept: str | None
) -> tuple[int, dict[str, str], bytes]:
    """A 300 with every sibling: one part each under multipart/mixed, else a JSON or msgpack list."""
    media = negotiate(accept, (JSON, MULTIPART, MSGPACK))
    if media == MULTIPART:
        writer = MultipartWriter("mixed")
        for sibling in siblings:
            writer.append(
                sibling.value, {"Content-Type": sibling.content_type, "Titra-Timestamp": sibling.timestamp.encode()}
            )
        # The writer's Content-Type carries the boundary.
        return 300, {**headers, "Content-Type": writer.content_type}, await writer.as_bytes()
    if media == MSGPACK:
        body: list[dict[str, object]] = [
            {"value": s.value, "content_type": s.content_type, "timestamp": s.timestamp.encode()} for s in siblings
        ]
    else:
        body = [
            {
                "value_base64": base64.b64encode(s.value).decode(),
                "content_type": s.content_type,
                "timestamp": s.timestamp.encode(),
            }
            for s in siblings
        ]
    return 300, {**headers, "Content-Type": media}, encode_structured({"siblings": body}, media)


def build_client_app(
    coordinator: Coordinator, *, limits: RequestDefaults = REQUEST_DEFAULTS, repair_status: RepairStatus | None = None
) -> web.Application:
    """The client API of one node. `limits` is for tests and tuning; production uses the defaults.
    `repair_status` (the runtime's) adds hinted handoff and anti-entropy to /metrics."""
    metrics = HttpMetrics()
    if repair_status is not None:
        metrics.watch_repair(repair_status)
    api = ClientApi(coordinator, limits, metrics)
    # client_max_size backs up parse.read_bounded: aiohttp's own readers refuse larger bodies too.
    app = web.Application(
        client_max_size=limits.value_bytes_max, middlewares=[metrics_middleware(metrics, error_middleware)]
    )
    app[METRICS_KEY] = metrics
    app[API_KEY] = api
    key_path = "/v1/kv/{keyspace}/{key:.*}"  # `.*`, so an empty key gets a 400 naming it, not a 404
    router = app.router
    router.add_route("PUT", key_path, api.put_key, expect_handler=_expect_within(limits.value_bytes_max))
    router.add_route("GET", key_path, api.get_key)
    router.add_route("DELETE", key_path, api.delete_key)
    router.add_route("GET", "/v1/kv/{keyspace}", api.list_keys)
    router.add_route("GET", "/v1/keyspaces", api.list_keyspaces)
    router.add_route(
        "PUT", "/v1/keyspaces/{name}", api.put_keyspace, expect_handler=_expect_within(limits.keyspace_body_bytes_max)
    )
    router.add_route("GET", "/v1/keyspaces/{name}", api.get_keyspace)
    router.add_route("GET", "/health", api.health)
    router.add_route("GET", "/health/live", api.health_live)
    router.add_route("GET", "/health/ready", api.health_ready)
    router.add_route("GET", "/v1/status", api.status)
    router.add_route("GET", "/v1/replica/{keyspace}", api.replica_digest)
    router.add_route("GET", "/metrics", api.metrics_text)
    router.add_route("GET", "/v1/openapi.json", api.openapi)
    return app
