"""Keyspace definitions: name, N and resolution, replicated to every node.

A definition is a value in the internal `_system` keyspace, whose N is the whole cluster and
whose resolution is `lww`, written and read at `quorum` through the same replication rounds as
user data (no second replication mechanism). Definitions never change once created, so a node
caches them forever; `default` always exists.
"""

import json
from collections.abc import Awaitable, Callable

from cluster.context import scoped_key
from cluster.limits import REQUEST_DEFAULTS
from cluster.requests import (
    KeyspaceDef,
    KeyspaceOutcome,
    Level,
    Outcome,
    ReadOutcome,
    ReadRequest,
    ReadStatus,
    WriteOutcome,
    WriteRequest,
    WriteStatus,
)
from cluster.siblings import Resolution, decode_clock, live
from cluster.store import Store

SYSTEM = "_system"
DEFAULT = KeyspaceDef("default", REQUEST_DEFAULTS.replicas_default, Resolution.SIBLINGS.value)
_PREFIX = b"keyspace/"


def _encode(definition: KeyspaceDef) -> bytes:
    return json.dumps({"n": definition.n, "resolution": definition.resolution}).encode()


def _decode(name: str, value: bytes) -> KeyspaceDef:
    body = json.loads(value)
    return KeyspaceDef(name, int(body["n"]), str(body["resolution"]))


class KeyspaceRegistry:
    def __init__(
        self,
        cluster_size: int,
        store: Store,
        write: Callable[[WriteRequest], Awaitable[WriteOutcome]],
        read: Callable[[ReadRequest], Awaitable[ReadOutcome]],
    ) -> None:
        self.system = KeyspaceDef(SYSTEM, cluster_size, Resolution.LWW.value)
        self._store = store
        self._write = write
        self._read = read
        self._cache: dict[str, KeyspaceDef] = {DEFAULT.name: DEFAULT, SYSTEM: self.system}

    def cached(self, name: str) -> KeyspaceDef | None:
        return self._cache.get(name)

    async def lookup(self, name: str, timeout_ms: int) -> KeyspaceDef | None:
        """The definition, from the cache, else a quorum read of `_system`."""
        known = self._cache.get(name)
        if known is not None:
            return known
        outcome = await self._read(
            ReadRequest(SYSTEM, _PREFIX + name.encode(), Level.QUORUM.value, None, timeout_ms, ())
        )
        if outcome.status != ReadStatus.OK.value or not outcome.siblings:
            return None
        definition = _decode(name, outcome.siblings[-1].value)
        self._cache[name] = definition
        return definition

    async def create(self, definition: KeyspaceDef, timeout_ms: int, retry: bool = True) -> KeyspaceOutcome:
        existing = await self.lookup(definition.name, timeout_ms)
        if existing is not None:
            if existing == definition:
                return KeyspaceOutcome(Outcome.OK.value, existing, "the keyspace exists with this definition")
            return KeyspaceOutcome(
                Outcome.CONFLICT.value,
                existing,
                f"keyspace {definition.name!r} exists with n={existing.n}, resolution={existing.resolution}",
            )
        if len(self._cache) - 1 >= REQUEST_DEFAULTS.keyspaces_max:
            return KeyspaceOutcome(Outcome.INVALID.value, None, f"at most {REQUEST_DEFAULTS.keyspaces_max} keyspaces")
        request = WriteRequest(
            SYSTEM,
            _PREFIX + definition.name.encode(),
            _encode(definition),
            "application/json",
            False,
            Level.QUORUM.value,
            None,
            timeout_ms,
            "fsync",
            (),
            None,
            True,
            "",
            b"",
        )
        outcome = await self._write(request)
        if outcome.status == WriteStatus.OK.value:
            self._cache[definition.name] = definition
            return KeyspaceOutcome(Outcome.CREATED.value, definition, "")
        if outcome.status == WriteStatus.PRECONDITION_FAILED.value and retry:
            return await self.create(definition, timeout_ms, retry=False)  # created meanwhile: compare
        status = Outcome.UNAVAILABLE if outcome.status == WriteStatus.UNAVAILABLE.value else Outcome.TIMEOUT
        return KeyspaceOutcome(status.value, None, outcome.message)

    async def all(self) -> list[KeyspaceDef]:
        """Every definition this node holds (it is a replica of all of `_system`)."""
        base = scoped_key(SYSTEM, _PREFIX)
        found = {DEFAULT.name: DEFAULT}
        after: bytes | None = None
        while True:
            page = await self._store.scan(base, after, 500)
            for skey, record in page.items:
                name = skey[len(base) :].decode()
                values = live(decode_clock(record.value))
                if values:
                    found[name] = _decode(name, values[-1].value)
            if page.cursor is None:
                break
            after = page.cursor
        for definition in found.values():
            self._cache.setdefault(definition.name, definition)
        return sorted(found.values(), key=lambda d: d.name)
