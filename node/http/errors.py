"""Operating errors at the HTTP edge: one typed exception, stable codes, and how a structured
body (error or not) is rendered as JSON or msgpack.

Rules:
- Every code a client can see is in `CODES`; codes are stable, messages are for people and name
  the parameter, header or limit at fault.
- A known coordinator status always maps to a 4xx/5xx here (never to 500); 500 `internal` is only
  for an exception nobody expected, and it is logged.
- 503 means "surely not written"; 504 means "outcome unknown" (Jepsen's indeterminate operation).
"""

import http
import json
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence

import msgpack
from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

log = logging.getLogger(__name__)

JSON = "application/json"
MSGPACK = "application/msgpack"

# Stable error codes, with the status each one is sent with (the OpenAPI document enumerates them).
CODES: dict[str, int] = {
    "unknown_parameter": 400,
    "duplicate_parameter": 400,
    "invalid_consistency": 400,
    "invalid_replica_count": 400,
    "invalid_timeout": 400,
    "invalid_durability": 400,
    "invalid_sloppy": 400,
    "invalid_prefix": 400,
    "invalid_limit": 400,
    "invalid_cursor": 400,
    "invalid_keyspace_name": 400,
    "invalid_key": 400,
    "invalid_context": 400,
    "invalid_if_none_match": 400,
    "invalid_idempotency_key": 400,
    "invalid_content_type": 400,
    "invalid_body": 400,
    "invalid_keyspace_definition": 400,
    "invalid_request": 400,
    "bad_request": 400,
    "key_not_found": 404,
    "keyspace_not_found": 404,
    "route_not_found": 404,
    "method_not_allowed": 405,
    "keyspace_conflict": 409,
    "siblings_limit": 409,
    "precondition_failed": 412,
    "key_too_large": 413,
    "value_too_large": 413,
    "body_too_large": 413,
    "unsupported_media_type": 415,
    "idempotency_mismatch": 422,
    "internal": 500,
    "not_implemented": 501,
    "unavailable": 503,
    "not_ready": 503,
    "timeout": 504,
    "replica_failed": 504,
}


class HttpError(Exception):
    """A request the edge answers with an error body; `extra` fields sit beside `error`."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        extra: Mapping[str, object] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        assert code in CODES, f"unregistered error code {code!r}"
        super().__init__(message)
        self.status = CODES[code]
        self.code = code
        self.message = message
        self.extra = dict(extra or {})
        self.headers = dict(headers or {})


def _media_ranges(accept: str) -> list[tuple[str, float]]:
    ranges: list[tuple[str, float]] = []
    for item in accept.split(","):
        media, *params = (part.strip() for part in item.split(";"))
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0  # an unreadable weight must not win over a readable one
        if media:
            ranges.append((media.lower(), q))
    return ranges


def negotiate(accept: str | None, offers: Sequence[str]) -> str:
    """The best of `offers` for an Accept header; the first offer when nothing matches, since a
    client that asks for nothing we serve is better served JSON than a 406."""
    assert offers
    if not accept:
        return offers[0]
    weights = dict(_media_ranges(accept))
    best, best_q = offers[0], 0.0
    for offer in offers:
        kind = offer.split("/")[0]
        # RFC 9110 §12.5.1: the most specific range that matches an offer gives its weight.
        q = weights.get(offer, weights.get(f"{kind}/*", weights.get("*/*", 0.0)))
        if q > best_q:
            best, best_q = offer, q
    return best


def wants_msgpack(request: web.Request) -> bool:
    return negotiate(request.headers.get("Accept"), (JSON, MSGPACK)) == MSGPACK


def encode_structured(body: object, media: str) -> bytes:
    if media == MSGPACK:
        return bytes(msgpack.packb(body, use_bin_type=True))
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def structured_response(
    request: web.Request, status: int, body: object, headers: Mapping[str, str] | None = None
) -> web.Response:
    media = MSGPACK if wants_msgpack(request) else JSON
    out = dict(headers or {})
    out["Content-Type"] = media
    return web.Response(status=status, body=encode_structured(body, media), headers=out)


def error_parts(error: HttpError, accept: str | None) -> tuple[int, dict[str, str], bytes]:
    """An error's status, headers and body, for the client that sent `accept` (both front doors
    of the client port render errors through here)."""
    media = negotiate(accept, (JSON, MSGPACK))
    body: dict[str, object] = {"error": {"code": error.code, "message": error.message}}
    body.update(error.extra)
    return error.status, {**error.headers, "Content-Type": media}, encode_structured(body, media)


def internal_error() -> HttpError:
    """What a client sees of an exception nobody expected (the node logs the exception itself)."""
    return HttpError("internal", "internal error; the node logged it")


def error_response(request: BaseRequest, error: HttpError) -> web.Response:
    status, headers, body = error_parts(error, request.headers.get("Accept"))
    response = web.Response(status=status, body=body, headers=headers)
    if error.status == 413:
        # The body was not read; closing is cheaper than keeping a connection whose next
        # request would start in the middle of an unread body.
        response.force_close()
    return response


_HTTP_EXCEPTION_CODES = {400: "bad_request", 404: "route_not_found", 405: "method_not_allowed", 413: "body_too_large"}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def answer_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure becomes a JSON (or msgpack) error body with a stable code. A plain
    function, so the metrics middleware can call it in the same frame (node/http/metrics.py)."""
    try:
        return await handler(request)
    except HttpError as error:
        return error_response(request, error)
    except web.HTTPException as exc:
        code = _HTTP_EXCEPTION_CODES.get(exc.status)
        if code is None:
            raise
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else {}
        message = f"{request.method} {request.path}: {exc.reason}"
        return error_response(request, HttpError(code, message, headers=headers))
    except Exception:
        # Nothing the client sent should get here (tests/unit/test_http_api.py tries); log it.
        log.exception("unexpected error serving %s %s", request.method, request.path)
        return error_response(request, internal_error())


error_middleware = web.middleware(answer_errors)


class JsonErrorsRequestHandler(RequestHandler):
    """aiohttp's connection protocol, answering what it refuses before any route runs (a
    malformed or oversized head, bad body framing) with Titra's error body instead of its
    text/plain page: `bad_request` naming what aiohttp found, on a closed connection.

    aiohttp has no hook for its protocol class, so `json_errors_protocol` re-classes the one
    aiohttp's server makes; this subclass adds no state."""

    __slots__ = ()

    def handle_error(
        self, request: BaseRequest, status: int = 500, exc: BaseException | None = None, message: str | None = None
    ) -> web.StreamResponse:
        code = "internal" if status >= 500 else _HTTP_EXCEPTION_CODES.get(status)
        if code is None:
            return super().handle_error(request, status, exc, message)
        if code == "internal":
            # aiohttp's own logs the exception, and refuses once an answer has started.
            super().handle_error(request, status, exc, message)
            error = internal_error()
        else:
            if request.writer.output_size > 0:
                raise ConnectionError("an answer has started: no error answer can follow it")
            error = HttpError(code, _one_line(message or http.HTTPStatus(status).phrase))
            # A client's mistake, not the node's: one line, where aiohttp logs a traceback.
            log.info("refused a request from %s: %s", request.remote, error.message)
        response = error_response(request, error)
        response.force_close()  # the parser lost its place in the stream: nothing after is trusted
        return response


def json_errors_protocol(server: web.Server) -> RequestHandler:
    """A new connection protocol of aiohttp's `server` that answers what its parser refuses
    with Titra's error body (the client port's edge hands connections to these)."""
    protocol = server()
    protocol.__class__ = JsonErrorsRequestHandler
    return protocol


def _one_line(message: str) -> str:
    """aiohttp's parser messages quote the line at fault and point at it with a caret line
    below; as one line: `Invalid character in Content-Length: b'Content-Length: abc'`."""
    parts = [line.strip() for line in message.splitlines()]
    return " ".join(part for part in parts if part and set(part) != {"^"})
