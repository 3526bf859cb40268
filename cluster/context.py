"""The causal context token (`Titra-Context`): what a client session has seen, signed.

Pure. The token lists the keys the session read or wrote most recently, each with the version
vector it saw; it is the DVV "context" of Riak for one key and the session vector of Bayou's
session guarantees (Terry et al., 1994) for many. It is signed with an HMAC keyed by the cluster
secret, because a forged context could name counters no node has issued and make real later
writes look superseded (and so vanish).

Bounded: at most `causal_context_keys_max` keys, most recent last; older ones fall off, and
with them the guarantee about those keys (documented in docs/api.md).
"""

import base64
import hashlib
import hmac

import msgpack

from cluster.dvv import ClockDecodeError, VersionVector
from cluster.limits import REQUEST_DEFAULTS
from cluster.requests import ContextEntry

_TOKEN_VERSION = 1
_MAC_BYTES = 16
_KEYED: dict[bytes, "hmac.HMAC"] = {}
_KEYED_MAX = 16
# Reused (msgpack.packb builds a Packer per call); a pack of lists, bytes, str and int runs no
# Python code, so it holds the GIL throughout and threads never interleave in it.
_PACKER = msgpack.Packer(use_bin_type=True)


class ContextError(ValueError):
    code = "invalid_context"


def scoped_key(keyspace: str, key: bytes) -> bytes:
    return keyspace.encode() + b"\x00" + key


def version_of(context: tuple[ContextEntry, ...], key: bytes) -> VersionVector | None:
    for entry in context:
        if entry.key == key:
            return entry.version
    return None


def remember(
    context: tuple[ContextEntry, ...], key: bytes, version: VersionVector, keys_max: int | None = None
) -> tuple[ContextEntry, ...]:
    """The context after seeing `key` at `version` (merged with what it had seen of it)."""
    keys_max = keys_max or REQUEST_DEFAULTS.causal_context_keys_max
    known = version_of(context, key)
    merged = version if known is None else known.merge(version)
    kept = [entry for entry in context if entry.key != key]
    kept.append(ContextEntry(key, merged))
    return tuple(kept[-keys_max:])


def merge(
    context: tuple[ContextEntry, ...], more: tuple[ContextEntry, ...], keys_max: int | None = None
) -> tuple[ContextEntry, ...]:
    for entry in more:
        context = remember(context, entry.key, entry.version, keys_max)
    return context


def _mac(secret: bytes, payload: bytes) -> bytes:
    # A copy of an HMAC already keyed with the secret: the key's inner and outer pads are hashed
    # once, not per token (one token per request each way); half the cost of hmac.digest's
    # one-shot path under OpenSSL 3, whose per-call digest lookup is the expensive part.
    keyed = _KEYED.get(secret)
    if keyed is None:
        if len(_KEYED) >= _KEYED_MAX:  # a node has one secret; tests make many
            _KEYED.clear()
        keyed = _KEYED[secret] = hmac.new(secret, digestmod=hashlib.sha256)
    mac = keyed.copy()
    mac.update(payload)
    return mac.digest()[:_MAC_BYTES]


def encode_token(context: tuple[ContextEntry, ...], secret: bytes) -> str:
    payload: bytes = _PACKER.pack([_TOKEN_VERSION, [[entry.key, entry.version.to_wire()] for entry in context]])
    blob = payload + _mac(secret, payload)
    return base64.urlsafe_b64encode(blob).rstrip(b"=").decode()


def decode_token(token: str, secret: bytes) -> tuple[ContextEntry, ...]:
    """Parse and verify a token; raises ContextError naming what is wrong."""
    if len(token) > REQUEST_DEFAULTS.context_token_bytes_max:
        raise ContextError(
            f"Titra-Context is {len(token)} bytes; the limit is {REQUEST_DEFAULTS.context_token_bytes_max}"
        )
    try:
        blob = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except ValueError as exc:
        raise ContextError("Titra-Context is not base64url") from exc
    payload, mac = blob[:-_MAC_BYTES], blob[-_MAC_BYTES:]
    if len(blob) <= _MAC_BYTES or not hmac.compare_digest(mac, _mac(secret, payload)):
        raise ContextError("Titra-Context was not issued by this cluster (bad signature)")
    try:
        version, entries = msgpack.unpackb(payload, raw=False)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise ContextError("Titra-Context payload is malformed") from exc
    if version != _TOKEN_VERSION or not isinstance(entries, list):
        raise ContextError(f"Titra-Context has an unknown format version {version!r}")
    out: list[ContextEntry] = []
    for item in entries[: REQUEST_DEFAULTS.causal_context_keys_max]:
        if not isinstance(item, list) or len(item) != 2 or not isinstance(item[0], bytes):
            raise ContextError("Titra-Context entry is malformed")
        try:
            out.append(ContextEntry(item[0], VersionVector.from_wire(item[1])))
        except ClockDecodeError as exc:
            raise ContextError(f"Titra-Context entry is malformed: {exc}") from exc
    return tuple(out)
