"""What the client reads from Titra's HTTP API (docs/api.md): receipts, results, typed errors.

Pure (no I/O): `cluster.client` sends the requests and hands each reply here as a `Reply`, so
this half of the protocol is tested without a socket. Errors follow api.md's status table:
a 4xx is `RequestError` (nothing written, do not retry), 503 is `Unavailable` (surely not
written), 504 is `OutcomeUnknown` (maybe written; Jepsen's indeterminate operation).
"""

import base64
import json
from collections.abc import Mapping
from email.message import Message
from typing import Any
from urllib.parse import quote

from cluster.frozen import frozen
from cluster.limits import CLOCK_DEFAULTS

Key = str | bytes
OCTET_STREAM = "application/octet-stream"


@frozen
class Receipt:
    """The consistency receipt a KV response carries in its headers (docs/api.md, "Headers")."""

    context: str | None
    requested: str
    achieved: str
    replicas: tuple[str, ...]
    fallbacks: tuple[str, ...]
    timestamp: str
    coordinator: str

    @classmethod
    def from_headers(cls, headers: Mapping[str, str]) -> "Receipt":
        def ids(name: str) -> tuple[str, ...]:
            return tuple(part.strip() for part in headers.get(name, "").split(",") if part.strip())

        return cls(
            context=headers.get("Titra-Context") or None,
            requested=headers.get("Titra-Consistency-Requested", ""),
            achieved=headers.get("Titra-Consistency-Achieved", ""),
            replicas=ids("Titra-Replicas"),
            fallbacks=ids("Titra-Fallbacks"),
            timestamp=headers.get("Titra-Timestamp", ""),
            coordinator=headers.get("Titra-Coordinator", ""),
        )


@frozen
class Sibling:
    value: bytes
    content_type: str
    timestamp: str


class SiblingsPresent(ValueError):
    """`GetResult.value` on a key with concurrent values: resolve them with a write (api.md)."""


@frozen
class GetResult:
    found: bool
    siblings: tuple[Sibling, ...]  # one when the key has a single value; empty when not found
    receipt: Receipt

    @property
    def value(self) -> bytes | None:
        """The value, None when not found; raises SiblingsPresent rather than pick one."""
        if len(self.siblings) > 1:
            raise SiblingsPresent(f"{len(self.siblings)} siblings; read .siblings and write a resolution")
        return self.siblings[0].value if self.siblings else None

    @property
    def values(self) -> tuple[bytes, ...]:
        return tuple(sibling.value for sibling in self.siblings)

    @property
    def content_types(self) -> tuple[str, ...]:
        return tuple(sibling.content_type for sibling in self.siblings)

    @property
    def context(self) -> str | None:
        """Pass it back in a write (or If-Match) to supersede every sibling read here."""
        return self.receipt.context


@frozen
class WriteResult:
    receipt: Receipt
    idempotency_key: str
    attempts: int

    @property
    def context(self) -> str | None:
        return self.receipt.context


@frozen
class KeyPage:
    keys: tuple[str, ...]
    cursor: str | None  # pass it back for the next page; None on the last one


@frozen
class Keyspace:
    name: str
    n: int
    resolution: str
    created: bool  # False when it already existed with this definition


@frozen
class Health:
    ok: bool
    status: int
    body: dict[str, Any]


class TitraError(Exception):
    """A request that did not succeed: HTTP status (0 when no answer came), stable code, message."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: Mapping[str, Any] | None = None,
        receipt: Receipt | None = None,
    ) -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.status = status
        self.code = code
        self.message = message
        self.details = dict(details or {})
        self.receipt = receipt


class RequestError(TitraError):
    """4xx: the server refused the request as sent; nothing was written, a retry would not help."""


class BadRequest(RequestError): ...


class Unauthorized(RequestError): ...


class NotFound(RequestError):
    """A missing keyspace (a missing key is `GetResult(found=False)`, not an error)."""


class Conflict(RequestError):
    """409: a keyspace exists with another definition, or the key holds `siblings_max` siblings."""


class PreconditionFailed(RequestError): ...


class TooLarge(RequestError): ...


class UnsupportedMediaType(RequestError): ...


class IdempotencyMismatch(RequestError):
    """422: the Idempotency-Key was used before for a different request."""


class Unavailable(TitraError):
    """503, or no endpoint reachable: the request surely did not take effect."""


class OutcomeUnknown(TitraError):
    """504, or the connection was lost after a write was sent: it may or may not have happened."""

    @property
    def acknowledged(self) -> int | None:
        value = self.details.get("acknowledged")
        return value if isinstance(value, int) else None

    @property
    def required(self) -> int | None:
        value = self.details.get("required")
        return value if isinstance(value, int) else None


class ServerError(TitraError): ...


class ProtocolError(TitraError):
    """A response this client cannot read (wrong shape, over `response_bytes_max`)."""


_STATUS_ERRORS: dict[int, type[TitraError]] = {
    400: BadRequest,
    401: Unauthorized,
    404: NotFound,
    409: Conflict,
    412: PreconditionFailed,
    413: TooLarge,
    415: UnsupportedMediaType,
    422: IdempotencyMismatch,
    503: Unavailable,
    504: OutcomeUnknown,
}


@frozen
class Reply:
    """One HTTP response, read whole; `headers` must look names up case-insensitively."""

    status: int
    headers: Mapping[str, str]
    body: bytes


def error_from(response: Reply) -> TitraError:
    code, message, details = f"http_{response.status}", response.body[:200].decode(errors="replace"), {}
    try:
        payload = json.loads(response.body)
    except ValueError:
        payload = None
    if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
        error = payload["error"]
        code, message = str(error.get("code", code)), str(error.get("message", ""))
        # api.md puts `acknowledged`/`required` "plus" the error object: accept them beside it or in it.
        extra = {**payload, **error}
        details = {name: value for name, value in extra.items() if name not in ("error", "code", "message")}
    kind = _STATUS_ERRORS.get(response.status, RequestError if response.status < 500 else ServerError)
    return kind(response.status, code, message, details, Receipt.from_headers(response.headers))


def protocol_error(response: Reply, message: str) -> ProtocolError:
    return ProtocolError(response.status, "unreadable_response", message, None, Receipt.from_headers(response.headers))


def _parse_multipart(response: Reply, boundary: str) -> tuple[Sibling, ...]:
    # RFC 2046 §5.1.1: every delimiter is CRLF "--" boundary, except that the first may open the body.
    chunks = (b"\r\n" + response.body).split(b"\r\n--" + boundary.encode("ascii"))
    if len(chunks) < 2 or not chunks[-1].startswith(b"--"):
        raise protocol_error(response, "multipart body without its closing delimiter")
    if len(chunks) - 2 > CLOCK_DEFAULTS.siblings_max:
        raise protocol_error(response, f"more than siblings_max={CLOCK_DEFAULTS.siblings_max} siblings")
    siblings = []
    for chunk in chunks[1:-1]:
        _padding, newline, part = chunk.partition(b"\r\n")
        # With the CRLF back in front, a part without headers also splits at a blank line.
        head, blank, value = (b"\r\n" + part).partition(b"\r\n\r\n")
        if not newline or not blank:
            raise protocol_error(response, "multipart part without a header block")
        headers: dict[str, str] = {}
        for line in head.split(b"\r\n"):
            name, colon, field = line.partition(b":")
            if line and not colon:
                raise protocol_error(response, f"bad multipart header line {line[:80]!r}")
            if line:
                headers[name.strip().decode("latin-1").lower()] = field.strip().decode("latin-1")
        # RFC 2046 §5.1: a part without Content-Type is text/plain.
        siblings.append(Sibling(value, headers.get("content-type", "text/plain"), headers.get("titra-timestamp", "")))
    return tuple(siblings)


def parse_siblings(response: Reply) -> tuple[Sibling, ...]:
    media = Message()
    media["Content-Type"] = response.headers.get("Content-Type", "")
    if media.get_content_type() == "multipart/mixed":
        boundary = media.get_boundary()
        if not boundary:
            raise protocol_error(response, "multipart/mixed without a boundary")
        return _parse_multipart(response, boundary)
    try:
        items = json.loads(response.body)["siblings"]
        siblings = tuple(
            Sibling(base64.b64decode(item["value_base64"], validate=True), item["content_type"], item["timestamp"])
            for item in items
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise protocol_error(response, f"unreadable sibling set: {exc!r}") from exc
    if len(siblings) > CLOCK_DEFAULTS.siblings_max:
        raise protocol_error(response, f"more than siblings_max={CLOCK_DEFAULTS.siblings_max} siblings")
    return siblings


def json_object(response: Reply) -> dict[str, Any]:
    try:
        payload = json.loads(response.body)
    except ValueError as exc:
        raise protocol_error(response, f"expected JSON: {exc}") from exc
    if not isinstance(payload, dict):
        raise protocol_error(response, "expected a JSON object")
    return payload


def key_path(keyspace: str, key: Key) -> str:
    # An empty key would address the keyspace listing instead: refuse it here.
    if not keyspace or not key:
        raise ValueError("keyspace and key must be non-empty")
    return f"/v1/kv/{quote(keyspace, safe='')}/{quote(key, safe='')}"


def query_params(**params: str | int | None) -> dict[str, str]:
    return {name: str(value) for name, value in params.items() if value is not None}


def read_result(response: Reply) -> GetResult:
    """A 200, 300 or 404 reply to a key read."""
    receipt = Receipt.from_headers(response.headers)
    if response.status == 404:
        error = error_from(response)
        # A missing keyspace is an error; a missing key is an answer (with a context to keep).
        if "keyspace" in error.code:
            raise error
        return GetResult(False, (), receipt)
    if response.status == 300:
        return GetResult(True, parse_siblings(response), receipt)
    content_type = response.headers.get("Content-Type", OCTET_STREAM)
    return GetResult(True, (Sibling(response.body, content_type, receipt.timestamp),), receipt)


def key_page(response: Reply) -> KeyPage:
    """A listing: `{"keys": [...], "cursor": "..." | null}` (`next_cursor` accepted too)."""
    payload = json_object(response)
    keys, after = payload.get("keys"), payload.get("cursor", payload.get("next_cursor"))
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise protocol_error(response, "a key listing without a list of string keys")
    if after is not None and not isinstance(after, str):
        raise protocol_error(response, "a key listing with a non-string cursor")
    return KeyPage(tuple(keys), after or None)
