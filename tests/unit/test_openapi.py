"""The OpenAPI document is well formed OpenAPI 3.1, describes every route of the app, and every
response the API tests see conforms to it.

`conformance_problems` is the checker: tests/unit/test_http_api.py records every response it
gets and runs it at fixture teardown. JSON bodies are validated with `jsonschema` when it is
installed, else with the small validator below (it refuses schema keywords it does not know, so
it cannot pass a body by ignoring part of a schema).
"""

import importlib.util
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import msgpack
import pytest

from node.http import build_client_app
from node.http.errors import CODES
from node.http.openapi import build_document, encode_document

DOCUMENT = build_document()
METHODS = ("get", "put", "post", "delete", "patch", "head", "options", "trace")
HAS_JSONSCHEMA = importlib.util.find_spec("jsonschema") is not None


@dataclass(frozen=True)
class Recorded:
    """One response as a client saw it."""

    method: str
    path: str  # without the query string, percent-encoded as sent
    status: int
    headers: Mapping[str, str]
    body: bytes


# --- Resolving the document. ---


def resolve(node: Any) -> Any:
    while isinstance(node, dict) and "$ref" in node:
        target: Any = DOCUMENT
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        extra = {k: v for k, v in node.items() if k != "$ref"}
        node = {**target, **extra} if extra else target
    return node


def all_refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from all_refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from all_refs(value)


def template_regex(template: str) -> re.Pattern[str]:
    # `{key}` is the rest of the path (a key may contain '/'); other parameters are one segment.
    pattern = re.sub(r"\\\{key\\\}", "(.*)", re.escape(template))
    return re.compile(re.sub(r"\\\{[a-z_]+\\\}", "([^/]+)", pattern))


def find_operation(method: str, path: str) -> dict[str, Any] | None:
    for template, item in DOCUMENT["paths"].items():
        if template_regex(template).fullmatch(path):
            return item.get(method.lower())  # type: ignore[no-any-return]
    return None


# --- JSON Schema validation. ---

_JSON_TYPES: dict[str, Any] = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}
_UNDERSTOOD = {
    "$ref", "type", "properties", "required", "additionalProperties", "items", "enum", "pattern", "minimum",
    "maximum", "minLength", "maxLength", "minItems", "maxItems", "description", "default", "contentEncoding",
}  # fmt: skip


def _is_type(instance: Any, name: str) -> bool:
    if name == "integer":
        return isinstance(instance, int) and not isinstance(instance, bool)
    return isinstance(instance, _JSON_TYPES[name])


def _subset_problems(instance: Any, schema: Any, where: str) -> list[str]:
    schema = resolve(schema)
    unknown = set(schema) - _UNDERSTOOD
    assert not unknown, f"the fallback validator does not understand {unknown} at {where}"
    types = schema.get("type", [])
    types = [types] if isinstance(types, str) else types
    if types and not any(_is_type(instance, t) for t in types):
        return [f"{where}: {instance!r:.60} is not of type {types}"]
    problems = []
    if "enum" in schema and instance not in schema["enum"]:
        problems.append(f"{where}: {instance!r:.60} is not one of {schema['enum']}")
    if isinstance(instance, str):
        if "pattern" in schema and not re.search(schema["pattern"], instance):
            problems.append(f"{where}: {instance!r:.60} does not match {schema['pattern']}")
        if not schema.get("minLength", 0) <= len(instance) <= schema.get("maxLength", len(instance)):
            problems.append(f"{where}: length {len(instance)} is out of bounds")
    if _is_type(instance, "integer") and not schema.get("minimum", instance) <= instance <= schema.get(
        "maximum", instance
    ):
        problems.append(f"{where}: {instance} is out of bounds")
    if isinstance(instance, list):
        if not schema.get("minItems", 0) <= len(instance) <= schema.get("maxItems", len(instance)):
            problems.append(f"{where}: {len(instance)} items is out of bounds")
        for index, item in enumerate(instance):
            problems += _subset_problems(item, schema.get("items", {}), f"{where}[{index}]")
    if isinstance(instance, dict):
        properties = schema.get("properties", {})
        problems += [f"{where}: missing {name!r}" for name in schema.get("required", []) if name not in instance]
        if schema.get("additionalProperties", True) is False:
            problems += [f"{where}: unexpected {name!r}" for name in instance if name not in properties]
        for name, value in instance.items():
            if name in properties:
                problems += _subset_problems(value, properties[name], f"{where}.{name}")
    return problems


def schema_problems(instance: Any, schema: Any) -> list[str]:
    if not HAS_JSONSCHEMA:
        return _subset_problems(instance, schema, "body")
    import jsonschema  # type: ignore[import-untyped,unused-ignore]

    root = {"components": DOCUMENT["components"], "allOf": [schema]}
    validator = jsonschema.Draft202012Validator(root)
    return [f"body{list(error.absolute_path)}: {error.message}" for error in validator.iter_errors(instance)]


# --- Conformance of one response. ---


def _media_matches(media: str, declared: str) -> bool:
    return declared in (media, "*/*") or (declared.endswith("/*") and media.startswith(declared[:-1]))


def conformance_problems(record: Recorded) -> list[str]:
    what = f"{record.method} {record.path} -> {record.status}"
    operation = find_operation(record.method, record.path)
    if operation is None:
        # Not an API route: only aiohttp's routing answers, rendered as our Error body.
        if record.status not in (404, 405):
            return [f"{what}: undocumented route answered {record.status}"]
        packed = record.headers.get("Content-Type") == "application/msgpack"
        body = msgpack.unpackb(record.body, raw=False) if packed else json.loads(record.body)
        return [f"{what}: {p}" for p in schema_problems(body, {"$ref": "#/components/schemas/Error"})]
    response = operation["responses"].get(str(record.status))
    if response is None:
        return [f"{what}: status not documented (documented: {sorted(operation['responses'])})"]
    response = resolve(response)
    problems = []
    for name, declared in response.get("headers", {}).items():
        header = resolve(declared)
        if name not in record.headers:
            if header.get("required"):
                problems.append(f"{what}: required header {name} missing")
            continue
        problems += [
            f"{what}: header {name}: {p}" for p in _subset_problems(record.headers[name], header["schema"], "")
        ]
    content = response.get("content")
    if not content:
        if record.body:
            problems.append(f"{what}: a body where none is documented")
        return problems
    media = record.headers.get("Content-Type", "").split(";")[0].strip().lower()
    declared = next((d for d in content if _media_matches(media, d)), None)
    if declared is None:
        return [*problems, f"{what}: Content-Type {media!r} not documented (documented: {sorted(content)})"]
    if media == "application/json":
        body = json.loads(record.body)
        problems += [f"{what}: {p}" for p in schema_problems(body, content[declared]["schema"])]
    elif media == "application/msgpack" and not isinstance(msgpack.unpackb(record.body, raw=False), dict):
        # msgpack carries raw bytes, which JSON Schema cannot describe; check it decodes to a map.
        problems.append(f"{what}: msgpack body is not a map")
    return problems


# --- The document itself. ---


def test_document_is_openapi_3_1_with_info_and_unique_operation_ids() -> None:
    assert re.fullmatch(r"3\.1\.\d+", DOCUMENT["openapi"])
    assert DOCUMENT["info"]["title"] and DOCUMENT["info"]["version"]
    operation_ids = [op["operationId"] for item in DOCUMENT["paths"].values() for m, op in item.items() if m in METHODS]
    assert len(operation_ids) == len(set(operation_ids)) == 14


def test_every_ref_resolves() -> None:
    refs = set(all_refs(DOCUMENT))
    assert "#/components/schemas/Error" in refs
    for ref in refs:
        assert ref.startswith("#/components/"), ref
        assert resolve({"$ref": ref}), ref


def test_every_operation_declares_valid_responses_and_parameters() -> None:
    for template, item in DOCUMENT["paths"].items():
        declared_path_params = set(re.findall(r"\{([a-z_]+)\}", template))
        for method, op in item.items():
            assert method in METHODS, (template, method)
            assert op["responses"], (template, method)
            for status, response in op["responses"].items():
                assert re.fullmatch(r"[1-5][0-9][0-9]", status), (template, method, status)
                assert isinstance(resolve(response)["description"], str)
                assert "500" in op["responses"], f"{method} {template} must document the internal error"
            params = [resolve(p) for p in op["parameters"]]
            for param in params:
                assert param["in"] in ("query", "header", "path", "cookie") and "schema" in param, param
                # OpenAPI 3.1 §4.8.12: these header parameters are ignored; content/produces cover them.
                assert param["name"] not in ("Accept", "Content-Type", "Authorization")
            path_params = {p["name"] for p in params if p["in"] == "path"}
            assert path_params == declared_path_params, (template, method)
            assert all(p["required"] for p in params if p["in"] == "path")


def test_error_codes_in_the_document_are_the_codes_the_edge_uses() -> None:
    code_schema = DOCUMENT["components"]["schemas"]["Error"]["properties"]["error"]["properties"]["code"]
    assert code_schema["enum"] == sorted(CODES)


def test_component_schemas_are_valid_json_schema_2020_12() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    for schema in DOCUMENT["components"]["schemas"].values():
        jsonschema.Draft202012Validator.check_schema({"components": DOCUMENT["components"], **schema})
    for item in DOCUMENT["paths"].values():
        for op in item.values():
            for response in op["responses"].values():
                for media in resolve(response).get("content", {}).values():
                    jsonschema.Draft202012Validator.check_schema(media["schema"])


class _NoCoordinator:
    """Enough of a Coordinator to build the app; no route is called."""

    node_id = "n1"
    secret = b"s"


def test_every_route_of_the_app_is_in_the_document_and_back() -> None:
    app = build_client_app(_NoCoordinator())  # type: ignore[arg-type]
    routes = set()
    for route in app.router.routes():
        assert route.resource is not None
        routes.add((route.resource.canonical, route.method.lower()))
    documented = {(t, m) for t, item in DOCUMENT["paths"].items() for m in item}
    assert routes == documented


def test_encoded_document_is_the_built_one() -> None:
    assert json.loads(encode_document(DOCUMENT)) == DOCUMENT


# --- The checker catches what it should (else a green API suite would prove nothing). ---

_GOOD_ERROR = json.dumps({"error": {"code": "invalid_key", "message": "m"}}).encode()
_EDGE_HEADERS = {"Content-Type": "application/json", "Titra-Coordinator": "n1"}


def test_checker_accepts_a_conforming_error() -> None:
    record = Recorded("PUT", "/v1/kv/default/a/b", 400, _EDGE_HEADERS, _GOOD_ERROR)
    assert conformance_problems(record) == []


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        (Recorded("PUT", "/v1/kv/default/k", 418, _EDGE_HEADERS, _GOOD_ERROR), "status not documented"),
        (Recorded("PUT", "/v1/kv/default/k", 400, {"Content-Type": "application/json"}, _GOOD_ERROR), "required"),
        (
            Recorded("PUT", "/v1/kv/default/k", 400, _EDGE_HEADERS, b'{"error": {"code": "nope", "message": ""}}'),
            "nope",
        ),
        (Recorded("PUT", "/v1/kv/default/k", 400, _EDGE_HEADERS, b'{"error": {"code": "invalid_key"}}'), "message"),
        (Recorded("PUT", "/v1/kv/default/k", 400, {**_EDGE_HEADERS, "Content-Type": "text/html"}, b"x"), "text/html"),
        (Recorded("GET", "/v1/keyspaces", 200, {"Content-Type": "application/json"}, b'{"keyspaces": 3}'), "keyspaces"),
        (Recorded("GET", "/nowhere", 200, {}, b""), "undocumented route"),
        (Recorded("PUT", "/v1/kv/default/k", 204, {**_EDGE_HEADERS, "Titra-Timestamp": "yesterday"}, b""), "Titra"),
    ],
)
def test_checker_rejects_a_nonconforming_response(record: Recorded, expected: str) -> None:
    problems = conformance_problems(record)
    assert problems and any(expected in p for p in problems), problems


def test_fallback_validator_agrees_with_jsonschema_on_the_error_schema() -> None:
    pytest.importorskip("jsonschema")
    error = {"$ref": "#/components/schemas/Error"}
    bodies: list[Any] = [
        {"error": {"code": "timeout", "message": "m"}, "acknowledged": 1},
        {"error": {"code": "x"}},
        [],
    ]
    for body in bodies:
        assert bool(_subset_problems(body, error, "body")) == bool(schema_problems(body, error)), body
