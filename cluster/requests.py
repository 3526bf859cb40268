"""Client requests and their outcomes, as the coordinator sees them (independent of HTTP).

Pure. The HTTP edge parses a request into a `WriteRequest` / `ReadRequest`, the node runtime
coordinates it, and the outcome says what happened in terms the edge maps to status codes:
`UNAVAILABLE` (503) only when the write surely did not happen, `TIMEOUT` (504) when the outcome
is unknown (Jepsen's indeterminate operation), never the other way round.
"""

import enum
from typing import Protocol

from cluster.dvv import VersionVector
from cluster.frozen import frozen
from cluster.siblings import Sibling


class Level(enum.Enum):
    ONE = "one"
    QUORUM = "quorum"
    ALL = "all"
    CAUSAL = "causal"


def required_acks(level: Level, n: int, override: int | None) -> int:
    """W or R for a level over N replicas (Dynamo's sloppy-free quorum arithmetic)."""
    if override is not None:
        return override
    if level is Level.ALL:
        return n
    if level is Level.QUORUM:
        return n // 2 + 1
    return 1


def achieved_level(acks: int, n: int) -> str:
    """The strongest level the number of acknowledgements met."""
    if acks >= n:
        return Level.ALL.value
    if acks >= n // 2 + 1:
        return Level.QUORUM.value
    if acks >= 1:
        return Level.ONE.value
    return ""


@frozen
class ContextEntry:
    """One key the session has seen or written (scoped key: keyspace NUL key) at a version."""

    key: bytes
    version: VersionVector


class WriteStatus(enum.Enum):
    OK = "ok"
    UNAVAILABLE = "unavailable"  # not enough replicas reachable before it started: not written
    TIMEOUT = "timeout"  # outcome unknown
    PRECONDITION_FAILED = "precondition_failed"  # If-Match / If-None-Match: not written
    SIBLINGS_LIMIT = "siblings_limit"  # not written
    NO_KEYSPACE = "no_keyspace"
    FAILED = "failed"  # a replica refused it (e.g. its store failed): not written there
    INVALID = "invalid"  # e.g. w above the keyspace's N: not written
    IDEMPOTENCY_MISMATCH = "idempotency_mismatch"  # the key was used for another request


@frozen
class WriteRequest:
    keyspace: str
    key: bytes
    value: bytes
    content_type: str
    deleted: bool
    level: str
    w: int | None
    timeout_ms: int
    durability: str
    context: tuple[ContextEntry, ...]
    if_match: VersionVector | None
    if_none_match: bool
    idempotency_key: str
    request_digest: bytes
    # Sloppy quorum (Dynamo §4.6): hints held by fallback nodes count toward W at quorum/all.
    sloppy: bool = False


@frozen
class WriteOutcome:
    status: str
    coordinator: str
    acks: tuple[str, ...]
    required: int
    version: VersionVector | None  # the key's version after the write (its new context)
    timestamp: str
    achieved: str
    message: str
    # Hints that counted or were stored for replicas that were down, as "target@holder".
    fallbacks: tuple[str, ...] = ()


class ReadStatus(enum.Enum):
    OK = "ok"  # one or more live siblings
    NOT_FOUND = "not_found"  # no value, or only tombstones
    UNAVAILABLE = "unavailable"
    TIMEOUT = "timeout"
    NO_KEYSPACE = "no_keyspace"
    INVALID = "invalid"  # e.g. r above the keyspace's N


@frozen
class ReadRequest:
    keyspace: str
    key: bytes
    level: str
    r: int | None
    timeout_ms: int
    context: tuple[ContextEntry, ...]


@frozen
class ReadOutcome:
    status: str
    coordinator: str
    replicas: tuple[str, ...]
    required: int
    siblings: tuple[Sibling, ...]  # live siblings, oldest first
    version: VersionVector | None  # covers every sibling and tombstone seen
    deps: tuple[ContextEntry, ...]  # the causal dependencies of the siblings returned
    timestamp: str
    achieved: str
    message: str


class Outcome(enum.Enum):
    """Outcomes of requests that are neither reads nor writes of a key."""

    OK = "ok"
    CREATED = "created"
    CONFLICT = "conflict"
    UNAVAILABLE = "unavailable"
    TIMEOUT = "timeout"
    NO_KEYSPACE = "no_keyspace"
    INVALID = "invalid"


@frozen
class KeyspaceDef:
    name: str
    n: int
    resolution: str  # cluster.siblings.Resolution value


@frozen
class KeyspaceOutcome:
    status: str  # Outcome value: CREATED, OK (same definition existed), CONFLICT, UNAVAILABLE, TIMEOUT
    keyspace: KeyspaceDef | None  # the definition in force
    message: str


@frozen
class ListOutcome:
    status: str  # Outcome value: OK, NO_KEYSPACE, UNAVAILABLE, TIMEOUT
    keys: tuple[bytes, ...]
    cursor: bytes | None  # pass back as `after` for the next page; None: no more keys
    replicas: tuple[str, ...]  # the nodes whose key lists were merged
    message: str


class Coordinator(Protocol):
    """What the HTTP edge needs from the node runtime (node/runtime.py implements it)."""

    node_id: str
    secret: bytes  # the cluster secret: signs causal context tokens

    async def put(self, request: WriteRequest) -> WriteOutcome: ...

    async def get(self, request: ReadRequest) -> ReadOutcome: ...

    async def list_keys(
        self, keyspace: str, prefix: bytes, after: bytes | None, limit: int, timeout_ms: int
    ) -> ListOutcome: ...

    async def create_keyspace(self, definition: KeyspaceDef, timeout_ms: int) -> KeyspaceOutcome: ...

    async def get_keyspace(self, name: str, timeout_ms: int) -> KeyspaceDef | None: ...

    async def list_keyspaces(self) -> list[KeyspaceDef]: ...

    async def replica_digest(
        self, keyspace: str, after: bytes | None, limit: int
    ) -> tuple[list[tuple[bytes, str]], bytes | None] | None:
        """This node's own replica of `keyspace` (tombstones included), as (key, digest of the
        stored clock) in key order, and the cursor of the next page; None: no such keyspace.
        Reads only the local store: no round, no read repair (the convergence checker needs to
        see replicas as they are)."""
        ...

    def status(self) -> dict[str, object]:
        """This node, the ring and the peers, JSON-ready."""
        ...

    def ready(self) -> bool:
        """Serving: the store is open and the node has its ring."""
        ...
