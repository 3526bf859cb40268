"""The OpenAPI 3.1 document of the client API (served at /v1/openapi.json), as data.

It is built from the same constants the edge validates with (limits, levels, error codes), so a
limit changed in cluster/limits.py changes the document too. tests/unit/test_openapi.py checks
that every route is described and that every response the API tests see conforms to it.
"""

import json
from typing import Any

from cluster.limits import REQUEST_DEFAULTS, RequestDefaults
from node.http.errors import CODES
from node.http.parse import DURABILITIES, LEVELS, RESOLUTIONS, keyspace_pattern

Schema = dict[str, Any]

_RECEIPT = {
    "Titra-Context": (
        "opaque causal context token: pass it back to supersede what you read, and for causal",
        {"type": "string", "pattern": "^[A-Za-z0-9_-]+$"},
    ),
    "Titra-Consistency-Requested": (
        "the level asked for, with r/w if given (e.g. quorum;w=2)",
        {"type": "string", "pattern": f"^({'|'.join(LEVELS)})(;[rw]=[0-9]+)?$"},
    ),
    "Titra-Consistency-Achieved": (
        "the strongest level the acknowledgements met; empty if none",
        {"type": "string", "pattern": f"^({'|'.join(LEVELS)})?$"},
    ),
    "Titra-Replicas": (
        "node ids that acknowledged (writes) or answered (reads), in order, comma-separated",
        {"type": "string"},
    ),
    "Titra-Fallbacks": (
        "hints used for replicas that were down, as target@holder, comma-separated (hinted handoff)",
        {"type": "string"},
    ),
    "Titra-Timestamp": (
        "the coordinator's hybrid-logical-clock timestamp of the operation",
        {"type": "string", "pattern": r"^([0-9a-f]{12}\.[0-9a-f]{8}\..+)?$"},
    ),
    "Titra-Coordinator": ("the node that coordinated (or refused) the request", {"type": "string", "minLength": 1}),
}
_LIST_RECEIPT = ("Titra-Replicas", "Titra-Fallbacks", "Titra-Coordinator")


def _ref(kind: str, name: str) -> Schema:
    return {"$ref": f"#/components/{kind}/{name}"}


def _headers(names: tuple[str, ...] | list[str], required: tuple[str, ...] | list[str]) -> dict[str, Schema]:
    return {name: {**_ref("headers", name), **({"required": True} if name in required else {})} for name in names}


def _structured(description: str, schema: Schema, headers: dict[str, Schema] | None = None) -> Schema:
    response: Schema = {
        "description": description,
        "content": {"application/json": {"schema": schema}, "application/msgpack": {"schema": schema}},
    }
    if headers:
        response["headers"] = headers
    return response


def _error(description: str, headers: dict[str, Schema] | None = None) -> Schema:
    return _structured(description, _ref("schemas", "Error"), headers)


def _common_errors() -> dict[str, Schema]:
    return {
        "400": _error("a bad parameter, name, header or body; the message names it"),
        "500": _error("an unexpected failure of this node (code `internal`); never caused by the input"),
    }


def _kv_responses(reads: bool, writes: bool) -> dict[str, Schema]:
    everything = list(_RECEIPT)
    full = _headers(everything, everything)
    # Refused at the edge (not coordinated): only Titra-Coordinator is certain to be there.
    edge = _headers(everything, ["Titra-Coordinator"])
    responses: dict[str, Schema] = {
        "400": _error("a bad parameter, key, header or body, or the coordinator refused it (r/w above N)", edge),
        "404": _error(
            "no such key (`key_not_found`, with the Titra-Context to supersede the tombstone) or "
            "keyspace (`keyspace_not_found`)",
            full,
        ),
        "413": _error("the key or the value is over its limit; the body was not read", edge),
        "500": _error("an unexpected failure of this node (code `internal`)"),
        "501": _error("`consistency=linearizable` is not built yet (`not_implemented`); nothing was done", edge),
        "503": _error(
            "too few replicas were reachable before the request started; a write surely did not happen", full
        ),
        "504": _error(
            "timed out (`timeout`) or a replica failed (`replica_failed`): the outcome is unknown; the "
            "body says how many replicas acknowledged",
            full,
        ),
    }
    if reads:
        responses["200"] = {
            "description": "one live value: the raw value with its own Content-Type",
            "headers": full,
            "content": {"*/*": {"schema": {}}},
        }
        responses["300"] = {
            "description": "siblings: concurrent values, all kept; the one Titra-Context covers every sibling",
            "headers": full,
            "content": {
                "application/json": {"schema": _ref("schemas", "SiblingsJson")},
                "application/msgpack": {"schema": _ref("schemas", "SiblingsMsgpack")},
                "multipart/mixed": {
                    "schema": {"description": "one part per sibling, with Content-Type and Titra-Timestamp headers"}
                },
            },
        }
    if writes:
        responses["204"] = {"description": "acknowledged at the requested level", "headers": full}
        responses["409"] = _error("the key holds `siblings_max` siblings (`siblings_limit`); resolve them first", full)
        responses["412"] = _error("If-Match or If-None-Match failed; nothing was written", edge)
        responses["422"] = _error("the Idempotency-Key was used with a different request", full)
    return dict(sorted(responses.items()))


def _param(name: str, where: str, description: str, schema: Schema) -> Schema:
    return {"name": name, "in": where, "required": where == "path", "description": description, "schema": schema}


def _integer(low: int, high: int | None = None, **more: Any) -> Schema:
    return {"type": "integer", "minimum": low, **({} if high is None else {"maximum": high}), **more}


def _object(properties: Schema, required: list[str] | None = None, **more: Any) -> Schema:
    """A closed object: a field the document does not name is a bug the API tests catch."""
    return {"type": "object", "required": required or [], "properties": properties, "additionalProperties": False,
            **more}  # fmt: skip


def _parameters(limits: RequestDefaults) -> dict[str, Schema]:
    name = {"type": "string", "pattern": keyspace_pattern(limits)}
    count = _integer(1, limits.replicas_max)
    override = "(overrides the level's {}; above the keyspace's N is a 400)"
    key_text = f"the rest of the path (may contain '/'), percent-decoded UTF-8, 1..{limits.key_bytes_max} bytes"
    if_match = "a context token: write only if the key's context is still exactly the one it names (412 if not)"
    idempotency = {
        "type": "string",
        "minLength": 1,
        "maxLength": limits.idempotency_key_bytes_max,
        "pattern": "^[ -~]+$",
    }
    timeout = _integer(1, limits.request_timeout_ms_max, default=limits.request_timeout_ms_default)
    return {
        "keyspace": _param("keyspace", "path", "the keyspace name", name),
        "name": _param("name", "path", "the keyspace name", name),
        "key": _param("key", "path", key_text, {"type": "string", "minLength": 1}),
        "consistency": _param("consistency", "query", "the consistency level",
                              {"type": "string", "enum": list(LEVELS), "default": "quorum"}),
        "r": _param("r", "query", "replicas that must answer " + override.format("R"), count),
        "w": _param("w", "query", "replicas that must acknowledge " + override.format("W"), count),
        "timeout_ms": _param("timeout_ms", "query", "how long the coordinator may take", timeout),
        "durability": _param("durability", "query", "fsync before acknowledging, or not",
                             {"type": "string", "enum": list(DURABILITIES), "default": DURABILITIES[0]}),
        "sloppy": _param("sloppy", "query", "quorum/all: hints kept by fallback nodes count toward W (sloppy quorum)",
                         {"type": "string", "enum": ["true", "false"], "default": "false"}),
        "prefix": _param("prefix", "query", "only keys that start with this", {"type": "string", "default": ""}),
        "limit": _param("limit", "query", "keys in one page",
                        _integer(1, limits.list_page_max, default=limits.list_page_default)),
        "cursor": _param("cursor", "query", "the `cursor` of the previous page (base64url)",
                         {"type": "string", "pattern": "^[A-Za-z0-9_-]+$"}),
        "Titra-Context": _param("Titra-Context", "header", "the token from an earlier response", {"type": "string"}),
        "If-Match": _param("If-Match", "header", if_match, {"type": "string"}),
        "If-None-Match": _param("If-None-Match", "header", "write only if the key has no live value",
                                {"type": "string", "enum": ["*"]}),
        "Idempotency-Key": _param("Idempotency-Key", "header", "retries of the same request get the first outcome",
                                  idempotency),
    }  # fmt: skip


def _schemas(limits: RequestDefaults) -> dict[str, Schema]:
    name = {"type": "string", "pattern": keyspace_pattern(limits)}
    resolution = {"type": "string", "enum": list(RESOLUTIONS)}
    timestamp = {"type": "string", "pattern": r"^[0-9a-f]{12}\.[0-9a-f]{8}\..+$"}
    sibling = _object(
        {"value_base64": {"type": "string", "contentEncoding": "base64"}, "content_type": {"type": "string"},
         "timestamp": timestamp},
        ["value_base64", "content_type", "timestamp"],
    )  # fmt: skip
    error = _object({"code": {"type": "string", "enum": sorted(CODES)}, "message": {"type": "string"}},
                    ["code", "message"])  # fmt: skip
    return {
        "Error": _object({
            "error": error,
            "acknowledged": _integer(0, description="replicas that acknowledged (or answered)"),
            "acknowledged_by": {"type": "array", "items": {"type": "string"}},
            "required": _integer(0, description="acknowledgements the level needed"),
            "outcome": {"type": "string", "enum": ["not_written", "unknown"],
                        "description": "for writes: what the client may assume happened"},
            "keyspace": {**_ref("schemas", "Keyspace"), "description": "on a 409: the definition in force"},
        }, ["error"]),
        "Keyspace": _object({"name": name, "n": _integer(1, limits.replicas_max), "resolution": resolution},
                            ["name", "n", "resolution"]),
        "KeyspaceDefinition": _object({
            "n": _integer(1, limits.replicas_max, default=limits.replicas_default),
            "resolution": {**resolution, "default": RESOLUTIONS[0]},
        }),
        "KeyspaceList": _object({"keyspaces": {"type": "array", "items": _ref("schemas", "Keyspace")}}, ["keyspaces"]),
        "KeyList": _object({
            "keyspace": name,
            "keys": {"type": "array", "maxItems": limits.list_page_max, "items": {"type": "string"},
                     "description": "in order; raw bytes in msgpack"},
            "cursor": {"type": ["string", "null"], "description": "pass as `cursor` for the next page; null: done"},
        }, ["keyspace", "keys", "cursor"]),
        "SiblingsJson": _object({"siblings": {"type": "array", "minItems": 2, "items": sibling}}, ["siblings"]),
        "SiblingsMsgpack": {"type": "object", "required": ["siblings"],
                            "description": "as SiblingsJson, with the raw bytes in `value` (msgpack bin)"},
        "Health": _object({
            "status": {"type": "string", "enum": ["live", "ready", "not_ready"]},
            "live": {"type": "boolean"}, "ready": {"type": "boolean"}, "node": {"type": "string"},
        }, ["status", "live", "ready", "node"]),
        "Status": {"type": "object", "description": "this node, the ring and the peers, as the runtime reports them"},
        "ReplicaDigest": _object({
            "node": {"type": "string"}, "keyspace": name,
            "entries": {"type": "array", "maxItems": limits.list_page_max,
                        "items": {"type": "array", "minItems": 2, "maxItems": 2, "items": {"type": "string"}},
                        "description": "[key, digest of the stored clock], in key order, tombstones included"},
            "cursor": {"type": ["string", "null"], "description": "pass as `cursor` for the next page; null: done"},
        }, ["node", "keyspace", "entries", "cursor"]),
    }  # fmt: skip


def _operation(op_id: str, summary: str, params: list[str], responses: dict[str, Schema], **more: Any) -> Schema:
    """Every operation can answer 400 (unknown parameter, at least) and 500 (a bug)."""
    responses = {**_common_errors(), **responses}
    return {"operationId": op_id, "summary": summary, "parameters": [_ref("parameters", name) for name in params],
            "responses": dict(sorted(responses.items())), **more}  # fmt: skip


def _health_op(op_id: str, summary: str, can_fail: bool) -> Schema:
    health = _ref("schemas", "Health")
    responses = {"200": _structured("the node's health", health)}
    if can_fail:
        responses["503"] = _structured("not ready: the store is not open or the node has no ring yet", health)
    return {"get": _operation(op_id, summary, [], responses)}


def _paths(limits: RequestDefaults) -> dict[str, Schema]:
    write_params = ["keyspace", "key", "consistency", "w", "timeout_ms", "durability", "sloppy", "Titra-Context",
                    "If-Match", "If-None-Match", "Idempotency-Key"]  # fmt: skip
    read_params = ["keyspace", "key", "consistency", "r", "timeout_ms", "Titra-Context"]
    value = {"required": False, "description": f"the value, up to {limits.value_bytes_max} bytes",
             "content": {"*/*": {"schema": {}}}}  # fmt: skip
    definition = {"required": True, "content": {"application/json": {"schema": _ref("schemas", "KeyspaceDefinition")}}}
    receipt, edge = _headers(_LIST_RECEIPT, _LIST_RECEIPT), _headers(_LIST_RECEIPT, ["Titra-Coordinator"])
    keyspace = _ref("schemas", "Keyspace")
    listing = {
        "200": _structured("a page of keys", _ref("schemas", "KeyList"), receipt),
        "400": _error("a bad parameter or keyspace name", edge),
        "404": _error("no such keyspace (`keyspace_not_found`)", receipt),
        "503": _error("too few replicas were reachable", receipt),
        "504": _error("timed out", receipt),
    }
    create = {
        "200": _structured("the keyspace exists with the same definition", keyspace),
        "201": _structured("created", keyspace),
        "404": _error("the coordinator could not find the keyspace registry"),
        "409": _error("the keyspace exists with another definition (in `keyspace`)"),
        "413": _error(f"the body is over {limits.keyspace_body_bytes_max} bytes"),
        "415": _error("the body is not application/json"),
        "503": _error("too few nodes were reachable; not created"),
        "504": _error("timed out; the outcome is unknown"),
    }
    document = {
        "description": "the OpenAPI 3.1 document",
        "content": {"application/json": {"schema": {"type": "object"}}},
    }
    metrics = {"description": "Prometheus text format", "content": {"text/plain": {"schema": {}}}}
    return {
        "/v1/kv/{keyspace}/{key}": {
            "put": _operation("putKey", "write the request body (with its Content-Type)", write_params,
                              _kv_responses(reads=False, writes=True), requestBody=value),
            "get": _operation("getKey", "read: 200 value, 300 siblings, 404 none", read_params,
                              _kv_responses(reads=True, writes=False)),
            "delete": _operation("deleteKey", "write a tombstone", write_params,
                                 _kv_responses(reads=False, writes=True)),
        },
        "/v1/kv/{keyspace}": {"get": _operation("listKeys", "list keys, in order, paginated",
                                                ["keyspace", "prefix", "limit", "cursor", "timeout_ms"], listing)},
        "/v1/keyspaces": {"get": _operation("listKeyspaces", "list keyspaces", [],
                                            {"200": _structured("every keyspace", _ref("schemas", "KeyspaceList"))})},
        "/v1/keyspaces/{name}": {
            "put": _operation("createKeyspace", "create a keyspace", ["name", "timeout_ms"], create,
                              requestBody=definition),
            "get": _operation("getKeyspace", "one keyspace definition", ["name", "timeout_ms"], {
                "200": _structured("the definition", keyspace),
                "404": _error("no such keyspace (`keyspace_not_found`)"),
            }),
        },
        "/health": _health_op("health", "readiness, with liveness in the body", can_fail=True),
        "/health/live": _health_op("healthLive", "liveness: the process answers", can_fail=False),
        "/health/ready": _health_op("healthReady", "readiness: the node serves requests", can_fail=True),
        "/v1/replica/{keyspace}": {"get": _operation(
            "replicaDigest", "this node's own replica of a keyspace (no read repair), for convergence checks",
            ["keyspace", "limit", "cursor", "timeout_ms"], {
                "200": _structured("a page of (key, digest)", _ref("schemas", "ReplicaDigest")),
                "400": _error("a bad parameter or keyspace name"),
                "404": _error("no such keyspace (`keyspace_not_found`)"),
            })},
        "/v1/status": {"get": _operation("status", "this node, the ring, the peers", [],
                                         {"200": _structured("status", _ref("schemas", "Status"))})},
        "/metrics": {"get": _operation("metrics", "Prometheus metrics", [], {"200": metrics})},
        "/v1/openapi.json": {"get": _operation("openapi", "this document", [], {"200": document})},
    }  # fmt: skip


def build_document(limits: RequestDefaults = REQUEST_DEFAULTS) -> Schema:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Titra client API",
            "version": "1",
            "description": "A distributed key-value store whose consistency is chosen per request. "
            "Structured bodies are JSON, or msgpack with `Accept: application/msgpack`.",
        },
        "jsonSchemaDialect": "https://spec.openapis.org/oas/3.1/dialect/base",
        "paths": _paths(limits),
        "components": {
            "schemas": _schemas(limits),
            "parameters": _parameters(limits),
            "headers": {name: {"description": text, "schema": schema} for name, (text, schema) in _RECEIPT.items()},
        },
    }


def encode_document(document: Schema) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode()
