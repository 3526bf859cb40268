"""Turning an HTTP request into a coordinator request, or into an `HttpError` naming the problem.

Rules:
- Everything is validated before anything is done: query parameters, path, headers, then the
  declared Content-Length, and only then is the body read (with a bounded reader, for bodies
  without a Content-Length). A request that fails here reaches no coordinator.
- Keys and keyspace names come from the raw request target, not aiohttp's decoded path, so a
  key may hold any percent-encoded byte sequence that is UTF-8, including `/` (`%2F`).
- Every limit comes from `cluster.limits.RequestDefaults`.
"""

import base64
import binascii
import functools
import hashlib
import json
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Protocol
from urllib.parse import unquote_to_bytes, urlencode, urlsplit

from aiohttp import web
from multidict import MultiMapping

from cluster.context import ContextError, decode_token, scoped_key, version_of
from cluster.frozen import frozen
from cluster.limits import RequestDefaults
from cluster.requests import ContextEntry, KeyspaceDef, Level, ReadRequest, WriteRequest
from cluster.siblings import Resolution
from node.http.errors import HttpError

LEVELS = tuple(level.value for level in Level)
DEFAULT_LEVEL = Level.QUORUM.value
# Levels on the roadmap (CASPaxos per key, then Percolator-style transactions): a clear 501.
PLANNED_LEVELS = ("linearizable", "serializable")
DURABILITIES = ("fsync", "async")
BOOLEANS = ("true", "false")
RESOLUTIONS = tuple(resolution.value for resolution in Resolution)
DEFAULT_CONTENT_TYPE = "application/octet-stream"

# The query parameters each route accepts; anything else is a 400 naming it.
WRITE_PARAMS = ("consistency", "w", "timeout_ms", "durability", "sloppy")
READ_PARAMS = ("consistency", "r", "timeout_ms")
LIST_PARAMS = ("prefix", "limit", "cursor", "timeout_ms")
TIMEOUT_PARAMS = ("timeout_ms",)
NO_PARAMS: tuple[str, ...] = ()

# RFC 9110 §5.6.2 token and §5.6.4 quoted-string, printable ASCII only.
_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_QUOTED = r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\x20-\x7e])*"'
_MEDIA_TYPE = re.compile(rf"{_TOKEN}/{_TOKEN}(?:[ \t]*;[ \t]*{_TOKEN}=(?:{_TOKEN}|{_QUOTED}))*")
_DIGITS = re.compile(r"[0-9]{1,12}")
_BASE64URL = re.compile(r"[A-Za-z0-9_-]+")


class RequestHead(Protocol):
    """What parsing needs of a request before its body: aiohttp's `web.Request` has it, and so
    does the client edge's own fast path (node/http/edge.py)."""

    @property
    def method(self) -> str: ...

    @property
    def raw_path(self) -> str: ...

    @property
    def query(self) -> MultiMapping[str]: ...

    @property
    def headers(self) -> Mapping[str, str]: ...

    @property
    def content_length(self) -> int | None: ...


BodyReader = Callable[[], Awaitable[bytes]]


def keyspace_pattern(limits: RequestDefaults) -> str:
    # Names start with a letter or digit, so internal keyspaces (`_system`) cannot be addressed.
    return f"^[a-z0-9][a-z0-9_-]{{0,{limits.keyspace_name_bytes_max - 1}}}$"


@functools.cache
def _keyspace_regex(limits: RequestDefaults) -> re.Pattern[str]:
    return re.compile(keyspace_pattern(limits))


def _quote(text: str) -> str:
    """Client text echoed in a message, bounded so an error body stays small."""
    return repr(text[:64] + ("..." if len(text) > 64 else ""))


# --- Query parameters. ---


def check_params(query: MultiMapping[str], allowed: Sequence[str]) -> None:
    given = set(query)  # len(query) counts repeated names too
    if len(given) == len(query) and all(name in allowed for name in given):
        return  # the usual case, checked in one pass; the rest finds the problem to name
    unknown = sorted({name for name in query if name not in allowed})
    if unknown:
        accepted = ", ".join(allowed) if allowed else "none"
        names = ", ".join(_quote(name) for name in unknown[:8])
        raise HttpError("unknown_parameter", f"unknown query parameter {names}; this route accepts: {accepted}")
    for name in allowed:
        if len(query.getall(name, [])) > 1:
            raise HttpError("duplicate_parameter", f"query parameter {name!r} is given more than once")


def _integer(text: str, name: str, low: int, high: int, code: str) -> int:
    if not _DIGITS.fullmatch(text) or not low <= int(text) <= high:
        raise HttpError(code, f"{name} must be an integer in {low}..{high}, not {_quote(text)}")
    return int(text)


def parse_level(query: MultiMapping[str]) -> str:
    level = query.get("consistency", DEFAULT_LEVEL)
    if level in PLANNED_LEVELS:
        raise HttpError(
            "not_implemented",
            f"consistency={level} is not built yet; available now: {', '.join(LEVELS)}",
        )
    if level not in LEVELS:
        raise HttpError("invalid_consistency", f"consistency must be one of {', '.join(LEVELS)}, not {_quote(level)}")
    return level


def parse_count(query: MultiMapping[str], name: str, limits: RequestDefaults) -> int | None:
    """`r` or `w`. Above the keyspace's N is the coordinator's 400; above any N possible is ours."""
    text = query.get(name)
    return None if text is None else _integer(text, name, 1, limits.replicas_max, "invalid_replica_count")


def parse_timeout(query: MultiMapping[str], limits: RequestDefaults) -> int:
    text = query.get("timeout_ms")
    if text is None:
        return limits.request_timeout_ms_default
    return _integer(text, "timeout_ms", 1, limits.request_timeout_ms_max, "invalid_timeout")


def parse_durability(query: MultiMapping[str]) -> str:
    durability = query.get("durability", DURABILITIES[0])
    if durability not in DURABILITIES:
        allowed = ", ".join(DURABILITIES)
        raise HttpError("invalid_durability", f"durability must be one of {allowed}, not {_quote(durability)}")
    return durability


def parse_sloppy(query: MultiMapping[str]) -> bool:
    """`sloppy=true`: hints on fallback nodes count toward W at quorum/all (Dynamo's sloppy quorum)."""
    text = query.get("sloppy", "false")
    if text not in BOOLEANS:
        raise HttpError("invalid_sloppy", f"sloppy must be true or false, not {_quote(text)}")
    return text == "true"


# --- Path: keyspace names and keys, from the raw request target. ---


def _raw_segments(request: RequestHead) -> list[str]:
    # Splitting before decoding keeps `%2F` inside a key instead of turning it into a separator.
    target = request.raw_path
    if target.startswith("/"):  # origin form, what clients send: the path ends at the query
        return target.partition("?")[0].split("/")
    return urlsplit(target).path.split("/")  # absolute form (RFC 9112 §3.2.2)


def parse_keyspace_name(request: RequestHead, limits: RequestDefaults, segments: list[str] | None = None) -> str:
    """The name in `/v1/kv/{keyspace}...` or `/v1/keyspaces/{name}` (both the fourth segment)."""
    segments = _raw_segments(request) if segments is None else segments
    raw = segments[3] if len(segments) > 3 else ""
    name = unquote_to_bytes(raw).decode("utf-8", "replace")
    if not _keyspace_regex(limits).fullmatch(name):
        raise HttpError(
            "invalid_keyspace_name",
            f"keyspace name {_quote(name)} must match {keyspace_pattern(limits)}",
        )
    return name


def parse_key(request: RequestHead, limits: RequestDefaults, segments: list[str] | None = None) -> bytes:
    segments = _raw_segments(request) if segments is None else segments
    key = unquote_to_bytes("/".join(segments[4:]))
    if not key:
        raise HttpError("invalid_key", "the key (the path after the keyspace) is empty")
    if len(key) > limits.key_bytes_max:
        raise HttpError("key_too_large", f"the key is {len(key)} bytes; the limit is {limits.key_bytes_max}")
    try:
        key.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise HttpError("invalid_key", f"the key is not UTF-8 once percent-decoded ({exc.reason})") from exc
    return key


# --- Headers. ---


def parse_context(token: str | None, secret: bytes, header: str = "Titra-Context") -> tuple[ContextEntry, ...]:
    if token is None:
        return ()
    try:
        return decode_token(token, secret)
    except ContextError as exc:
        raise HttpError("invalid_context", f"{header}: {exc}") from exc


def parse_if_match(value: str | None, secret: bytes) -> tuple[ContextEntry, ...] | None:
    if value is None:
        return None
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1]  # tolerate the entity-tag quoting HTTP tools add
    return parse_context(value, secret, "If-Match")


def parse_if_none_match(value: str | None) -> bool:
    if value is None:
        return False
    if value.strip() != "*":
        raise HttpError("invalid_if_none_match", f"If-None-Match accepts only '*', not {_quote(value)}")
    return True


def parse_idempotency_key(value: str | None, limits: RequestDefaults) -> str:
    if value is None:
        return ""
    if not 1 <= len(value) <= limits.idempotency_key_bytes_max or not all(" " <= ch <= "~" for ch in value):
        raise HttpError(
            "invalid_idempotency_key",
            f"Idempotency-Key must be 1..{limits.idempotency_key_bytes_max} printable ASCII characters",
        )
    return value


def parse_content_type(value: str | None, limits: RequestDefaults) -> str:
    if value is None:
        return DEFAULT_CONTENT_TYPE
    value = value.strip()
    if len(value) > limits.content_type_bytes_max:
        raise HttpError(
            "invalid_content_type", f"Content-Type is {len(value)} bytes; the limit is {limits.content_type_bytes_max}"
        )
    if not _MEDIA_TYPE.fullmatch(value):
        raise HttpError("invalid_content_type", f"Content-Type {_quote(value)} is not a media type (type/subtype)")
    return value


# --- Bodies. ---


def check_declared_length(request: RequestHead, limit: int, code: str) -> None:
    """413 from the Content-Length header alone, before a byte of the body is read."""
    declared = request.content_length
    if declared is not None and declared > limit:
        raise HttpError(code, f"the body is {declared} bytes (Content-Length); the limit is {limit}")


async def read_bounded(request: web.Request, limit: int, code: str) -> bytes:
    """The body, refused as soon as it passes `limit` (a chunked body declares no length)."""
    declared = request.content_length
    if declared is not None and declared <= limit:
        # The length is known and allowed (check_declared_length ran first). A small body has
        # usually arrived with the head: take it without awaiting; else one read.
        content = request.content
        if content.is_eof():
            return content.read_nowait()
        return await request.read()
    chunks: list[bytes] = []
    total = 0
    async for chunk in request.content.iter_any():
        total += len(chunk)
        if total > limit:
            raise HttpError(code, f"the body is over the {limit}-byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


def request_digest(request: RequestHead, keyspace: str, key: bytes, content_type: str, body: bytes) -> bytes:
    """What an Idempotency-Key retry must repeat: method, target, query, body, context and
    preconditions. Fields are length-prefixed so no two requests frame to the same bytes."""
    headers = request.headers
    fields = [
        request.method.encode(),
        keyspace.encode(),
        key,
        urlencode(sorted(request.query.items())).encode(),
        content_type.encode(),
        body,
        headers.get("Titra-Context", "").encode(),
        headers.get("If-Match", "").encode(),
        headers.get("If-None-Match", "").encode(),
    ]
    digest = hashlib.sha256()
    for field in fields:
        digest.update(len(field).to_bytes(8, "big"))
        digest.update(field)
    return digest.digest()


# --- Whole requests. ---


def body_of(request: web.Request, limits: RequestDefaults) -> BodyReader:
    """aiohttp's reader of a write's value, bounded by the value limit."""
    return functools.partial(read_bounded, request, limits.value_bytes_max, "value_too_large")


async def parse_write(
    request: RequestHead, read_body: BodyReader, secret: bytes, limits: RequestDefaults, *, deleted: bool
) -> WriteRequest:
    """`read_body` is called last, once everything else is valid (module docstring)."""
    query = request.query
    check_params(query, WRITE_PARAMS)
    level, w = parse_level(query), parse_count(query, "w", limits)
    timeout_ms, durability = parse_timeout(query, limits), parse_durability(query)
    sloppy = parse_sloppy(query)
    segments = _raw_segments(request)
    keyspace, key = parse_keyspace_name(request, limits, segments), parse_key(request, limits, segments)
    headers = request.headers
    context = parse_context(headers.get("Titra-Context"), secret)
    if_match_context = parse_if_match(headers.get("If-Match"), secret)
    if_none_match = parse_if_none_match(headers.get("If-None-Match"))
    idempotency_key = parse_idempotency_key(headers.get("Idempotency-Key"), limits)
    content_type, value = DEFAULT_CONTENT_TYPE, b""
    if not deleted:  # a tombstone has no value; a DELETE body is ignored, not stored
        content_type = parse_content_type(headers.get("Content-Type"), limits)
        check_declared_length(request, limits.value_bytes_max, "value_too_large")
        value = await read_body()
    if_match = None
    if if_match_context is not None:
        if_match = version_of(if_match_context, scoped_key(keyspace, key))
        if if_match is None:
            # A context that never saw this key cannot be "still exactly" its context.
            raise HttpError("precondition_failed", "If-Match: the context never saw this key; nothing was written")
    return WriteRequest(
        keyspace=keyspace,
        key=key,
        value=value,
        content_type=content_type,
        deleted=deleted,
        level=level,
        w=w,
        timeout_ms=timeout_ms,
        durability=durability,
        context=context,
        if_match=if_match,
        if_none_match=if_none_match,
        idempotency_key=idempotency_key,
        # Only an idempotent write is ever compared with its retry (node/idempotency.py).
        request_digest=request_digest(request, keyspace, key, content_type, value) if idempotency_key else b"",
        sloppy=sloppy,
    )


def parse_read(request: RequestHead, secret: bytes, limits: RequestDefaults) -> ReadRequest:
    query = request.query
    check_params(query, READ_PARAMS)
    level, r, timeout_ms = parse_level(query), parse_count(query, "r", limits), parse_timeout(query, limits)
    segments = _raw_segments(request)
    keyspace, key = parse_keyspace_name(request, limits, segments), parse_key(request, limits, segments)
    context = parse_context(request.headers.get("Titra-Context"), secret)
    return ReadRequest(keyspace=keyspace, key=key, level=level, r=r, timeout_ms=timeout_ms, context=context)


@frozen
class ListQuery:
    keyspace: str
    prefix: bytes
    after: bytes | None
    limit: int
    timeout_ms: int


def encode_cursor(key: bytes) -> str:
    return base64.urlsafe_b64encode(key).rstrip(b"=").decode()


def _decode_cursor(text: str, limits: RequestDefaults) -> bytes:
    # Bound the text before decoding: 4 characters carry 3 bytes.
    if len(text) > (limits.key_bytes_max * 4 + 2) // 3 or not _BASE64URL.fullmatch(text):
        raise HttpError("invalid_cursor", "cursor must be the base64url cursor of an earlier listing page")
    try:
        key = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise HttpError("invalid_cursor", "cursor is not base64url") from exc
    if not 1 <= len(key) <= limits.key_bytes_max:
        raise HttpError("invalid_cursor", "cursor does not name a key")
    return key


def parse_list(request: web.Request, limits: RequestDefaults) -> ListQuery:
    query = request.rel_url.query
    check_params(query, LIST_PARAMS)
    prefix = query.get("prefix", "").encode()
    if len(prefix) > limits.key_bytes_max:
        raise HttpError("invalid_prefix", f"prefix is {len(prefix)} bytes; keys are at most {limits.key_bytes_max}")
    text = query.get("limit")
    limit = (
        limits.list_page_default if text is None else _integer(text, "limit", 1, limits.list_page_max, "invalid_limit")
    )
    cursor = query.get("cursor")
    after = None if cursor is None else _decode_cursor(cursor, limits)
    return ListQuery(parse_keyspace_name(request, limits), prefix, after, limit, parse_timeout(query, limits))


async def parse_keyspace_definition(request: web.Request, limits: RequestDefaults) -> KeyspaceDef:
    """`PUT /v1/keyspaces/{name}` with a JSON body `{"n": 3, "resolution": "siblings"}`; both
    fields are optional (N = replicas_default, `siblings`), any other field is a 400."""
    name = parse_keyspace_name(request, limits)
    media = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if media != "application/json":
        raise HttpError("unsupported_media_type", f"a keyspace definition is application/json, not {_quote(media)}")
    check_declared_length(request, limits.keyspace_body_bytes_max, "body_too_large")
    body = await read_bounded(request, limits.keyspace_body_bytes_max, "body_too_large")
    try:
        definition = json.loads(body)
    except (ValueError, RecursionError) as exc:  # RecursionError: deeply nested arrays
        raise HttpError("invalid_body", "the body is not a JSON document") from exc
    if not isinstance(definition, dict):
        raise HttpError("invalid_body", 'the body must be a JSON object like {"n": 3, "resolution": "siblings"}')
    unknown = sorted(set(definition) - {"n", "resolution"})
    if unknown:
        fields = ", ".join(_quote(field) for field in unknown[:8])
        raise HttpError("invalid_keyspace_definition", f"unknown field {fields}; the fields are n, resolution")
    n = definition.get("n", limits.replicas_default)
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= limits.replicas_max:
        raise HttpError("invalid_keyspace_definition", f"n must be an integer in 1..{limits.replicas_max}")
    resolution = definition.get("resolution", Resolution.SIBLINGS.value)
    if resolution not in RESOLUTIONS:
        raise HttpError("invalid_keyspace_definition", f"resolution must be one of {', '.join(RESOLUTIONS)}")
    return KeyspaceDef(name=name, n=n, resolution=resolution)
