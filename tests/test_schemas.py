"""schemas/envelope.schema.json against the sdk's own envelope encoders and its
receiver (``wire.classify``), with a small validator for the subset of JSON
Schema the file uses (``jsonschema`` is not a dependency)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from rpc_support import Add, Count, GetUser, Log, UserNotFound
from unixrpc import (
    CallCancelledError,
    InternalError,
    InvalidParamsError,
    MethodNotFoundError,
    PermissionDeniedError,
    ProtocolViolationError,
    RPCError,
    ServerBusyError,
)
from unixrpc._core import wire
from unixrpc.methods import method_spec

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "schemas" / "envelope.schema.json"
MAX_ID = 2**63 - 1

# -- a validator for the subset of JSON Schema 2020-12 the envelope schema uses -----------

_KEYWORDS = {"type", "required", "properties", "additionalProperties", "oneOf", "const", "enum"}
_KEYWORDS |= {"minimum", "maximum", "$ref"}
_ANNOTATIONS = {"$schema", "$id", "$defs", "$comment", "title", "description", "examples"}
_TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}


def _same(a: Any, b: Any) -> bool:
    """JSON equality (``True`` is not ``1``)."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def schema_errors(instance: Any, schema: dict[str, Any], root: dict[str, Any], path: str = "$") -> list[str]:
    """Why *instance* does not match *schema* (empty: it matches).

    Raises:
        ValueError: the schema uses a keyword this validator does not implement.
    """
    unknown = set(schema) - _KEYWORDS - _ANNOTATIONS
    if unknown:
        raise ValueError(f"unsupported schema keywords at {path}: {sorted(unknown)}")
    errors: list[str] = []
    if "$ref" in schema:
        ref = schema["$ref"]
        if not ref.startswith("#/$defs/"):
            raise ValueError(f"unsupported $ref {ref!r}")
        errors += schema_errors(instance, root["$defs"][ref.removeprefix("#/$defs/")], root, path)
    if "type" in schema:
        types = [schema["type"]] if isinstance(schema["type"], str) else schema["type"]
        if not any(_TYPES[name](instance) for name in types):
            return [*errors, f"{path}: {instance!r} is not of type {types}"]
    if "const" in schema and not _same(instance, schema["const"]):
        errors.append(f"{path}: {instance!r} is not {schema['const']!r}")
    if "enum" in schema and not any(_same(instance, value) for value in schema["enum"]):
        errors.append(f"{path}: {instance!r} is not one of {schema['enum']!r}")
    if _TYPES["number"](instance):
        if "minimum" in schema and instance < schema["minimum"]:
            errors.append(f"{path}: {instance!r} is below {schema['minimum']}")
        if "maximum" in schema and instance > schema["maximum"]:
            errors.append(f"{path}: {instance!r} is above {schema['maximum']}")
    if isinstance(instance, dict):
        errors += [
            f"{path}: {key!r} is required" for key in schema.get("required", ()) if key not in instance
        ]
        properties, extra = schema.get("properties", {}), schema.get("additionalProperties", True)
        for key, value in instance.items():
            if key in properties:
                errors += schema_errors(value, properties[key], root, f"{path}.{key}")
            elif extra is False:
                errors.append(f"{path}: unexpected member {key!r}")
            elif isinstance(extra, dict):
                errors += schema_errors(value, extra, root, f"{path}.{key}")
    if "oneOf" in schema:
        matched = [sub for sub in schema["oneOf"] if not schema_errors(instance, sub, root, path)]
        if len(matched) != 1:
            errors.append(f"{path}: matches {len(matched)} of the oneOf alternatives, not exactly 1")
    return errors


def matching_kind(instance: Any, root: dict[str, Any]) -> str:
    """The name of the one top-level alternative ($defs name) *instance* matches."""
    names = [
        sub["$ref"].removeprefix("#/$defs/")
        for sub in root["oneOf"]
        if not schema_errors(instance, sub, root)
    ]
    assert len(names) == 1, f"{instance!r} matches {names}"
    return names[0]


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    return loaded


# -- the schema file itself -----------------------------------------------------------------


def test_schema_file_is_draft_2020_12_json(schema: dict[str, Any]) -> None:
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    kinds = {wire.REQUEST, wire.NOTIFICATION, wire.RESULT, wire.ERROR, wire.ITEM, wire.CANCEL, wire.CREDIT}
    assert {sub["$ref"] for sub in schema["oneOf"]} == {f"#/$defs/{kind}" for kind in kinds}


def test_schema_refs_resolve_and_keywords_are_supported(schema: dict[str, Any]) -> None:
    refs: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if "$ref" in node:
                refs.append(node["$ref"])
            for key, value in node.items():
                if key not in ("examples", "const", "enum"):
                    walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    assert refs
    for ref in refs:
        assert ref.removeprefix("#/$defs/") in schema["$defs"], ref
    for name, sub in schema["$defs"].items():  # every definition is used, and validates something
        assert f"#/$defs/{name}" in refs, f"unused definition {name}"
        schema_errors(None, sub, schema)  # raises on a keyword the validator does not implement


def test_validator_refuses_keywords_it_does_not_implement(schema: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="pattern"):
        schema_errors("x", {"type": "string", "pattern": "^x$"}, schema)


# -- everything the sdk's encoders produce is valid --------------------------------------------


def _params(method: Any) -> bytes:
    return method.model_dump_json(by_alias=True).encode()


_add, _count, _get, _log = (method_spec(m) for m in (Add, Count, GetUser, Log))

ENCODED: list[tuple[str, bytes]] = [
    ("request", wire.encode_request(1, _add.name_json, _params(Add(a=1, b=2)))),
    ("request", wire.encode_request(0, b'"x"', b"{}")),
    ("request", wire.encode_request(MAX_ID, _get.name_json, _params(GetUser(uid=5)))),
    ("request", wire.encode_request(2, _count.name_json, _params(Count(n=5)), 2)),
    ("request", wire.encode_request(3, _count.name_json, _params(Count(n=5)), MAX_ID)),
    ("request", wire.encode_request(4, b'"\\u00e9t\\u00e9"', b'{"nested":{"l":[1,2.5,null,true]}}')),
    ("notification", wire.encode_notification(_log.name_json, _params(Log(line="hello")))),
    ("notification", wire.encode_notification(b'"users.Get"', b"{}")),
    ("result", wire.encode_result(1, b"3")),
    ("result", wire.encode_result(0, b"null")),
    ("result", wire.encode_result(MAX_ID, b'{"uid":0,"name":"root"}')),
    ("result", wire.encode_result(5, b'[1,"two",{"three":3}]')),
    ("item", wire.encode_item(2, b"0")),
    ("item", wire.encode_item(MAX_ID, b'"text"')),
    ("error", wire.encode_error(1, "unixrpc.MethodNotFound", "no method named 'Nope'")),
    ("error", wire.encode_error(None, "unixrpc.ProtocolError", "invalid envelope")),
    ("error", wire.encode_error(None, "unixrpc.Busy", "too many connections (limit 1)")),
    ("error", wire.encode_error(7, "users.NotFound", "not found", {"uid": 5})),
    ("error", wire.encode_error(7, "unixrpc.InvalidParams", "bad", [{"loc": ["a"], "msg": "x"}])),
    ("error", wire.encode_error(7, "unixrpc.Error", "plain", "a string")),
    ("error", wire.encode_error(7, "unixrpc.Error", "not JSON data", {"obj": object()})),  # repr fallback
    ("error", wire.encode_error(MAX_ID, "unixrpc.Cancelled", "call cancelled by the client")),
    ("cancel", wire.encode_cancel(1)),
    ("cancel", wire.encode_cancel(MAX_ID)),
    ("credit", wire.encode_credit(2, 1)),
    ("credit", wire.encode_credit(2, 8)),
    ("credit", wire.encode_credit(MAX_ID, 0)),
]

#: Written by hand, as a peer in another language might: any whitespace and member order.
HANDWRITTEN: list[tuple[str, bytes]] = [
    ("request", b'{ "params" : {"b": 2, "a": 1}, "method": "Add", "id": 9 }'),
    ("request", b'{"id": 1, "method": "", "params": {}}'),  # valid; the server answers MethodNotFound
    ("error", b'{"error": {"message": "m", "code": "unixrpc.Busy"}, "id": null}'),
    ("credit", b'{"n": 4, "credit": 0}'),
]


@pytest.mark.parametrize(
    ("kind", "body"),
    ENCODED + HANDWRITTEN,
    ids=[f"{k}-{i}" for i, (k, _) in enumerate(ENCODED + HANDWRITTEN)],
)
def test_encoded_envelopes_are_valid(schema: dict[str, Any], kind: str, body: bytes) -> None:
    envelope = json.loads(body.decode("utf-8"))
    assert schema_errors(envelope, schema, schema) == []
    assert matching_kind(envelope, schema) == kind
    assert wire.classify(envelope) == kind  # the schema and the sdk's receiver agree on the kind


ERRORS = [
    MethodNotFoundError("no method named 'X'"),
    InvalidParamsError("invalid params for Add: 1 error(s)", data=[{"type": "missing", "loc": ["a"]}]),
    InternalError("handler of Add raised ValueError"),
    InternalError("handler of Add raised ValueError", data={"traceback": "Traceback ..."}),
    PermissionDeniedError("Add is not allowed for uid 1000 (pid 1)"),
    ServerBusyError("server is shutting down"),
    ProtocolViolationError("invalid envelope: ..."),
    CallCancelledError("call cancelled by the client"),
    RPCError("plain rpc error", data={"k": 1}),
    RPCError(),
    UserNotFound(uid=5),
]


@pytest.mark.parametrize("error", ERRORS, ids=[f"{type(e).__name__}-{i}" for i, e in enumerate(ERRORS)])
def test_error_envelopes_of_every_error_class_are_valid(schema: dict[str, Any], error: RPCError) -> None:
    envelope = json.loads(wire.encode_error(3, error.code, error.message, error.data))
    assert schema_errors(envelope, schema, schema) == []
    assert envelope["error"]["code"] == error.code
    if isinstance(error, UserNotFound):
        assert envelope["error"] == {
            "code": "users.NotFound",
            "message": "users.NotFound",
            "data": {"uid": 5},
        }


def test_builtin_error_codes() -> None:
    codes = {
        MethodNotFoundError: "unixrpc.MethodNotFound",
        InvalidParamsError: "unixrpc.InvalidParams",
        InternalError: "unixrpc.InternalError",
        PermissionDeniedError: "unixrpc.PermissionDenied",
        ServerBusyError: "unixrpc.Busy",
        ProtocolViolationError: "unixrpc.ProtocolError",
        CallCancelledError: "unixrpc.Cancelled",
        RPCError: "unixrpc.Error",
    }
    assert {cls: cls.code for cls in codes} == codes


# -- invalid envelopes are rejected ------------------------------------------------------------

#: Rejected by the schema and by the sdk's receiver alike.
INVALID: list[tuple[str, Any]] = [
    ("not an object", [1, 2]),
    ("a string", "hello"),
    ("null", None),
    ("empty object", {}),
    ("no known member", {"hello": 1}),
    ("negative id", {"id": -1, "method": "Add", "params": {}}),
    ("id too large", {"id": 2**63, "method": "Add", "params": {}}),
    ("string id", {"id": "1", "method": "Add", "params": {}}),
    ("float id", {"id": 1.5, "method": "Add", "params": {}}),
    ("boolean id", {"id": True, "method": "Add", "params": {}}),
    ("method not a string", {"id": 1, "method": 5, "params": {}}),
    ("notification method not a string", {"method": None, "params": {}}),
    ("stream window 0", {"id": 1, "method": "Count", "params": {}, "stream": 0}),
    ("negative stream window", {"id": 1, "method": "Count", "params": {}, "stream": -2}),
    ("result with null id", {"id": None, "result": 3}),
    ("item with null id", {"id": None, "item": 3}),
    ("result with string id", {"id": "7", "result": 3}),
    ("id without payload", {"id": 1}),
    ("error not an object", {"id": 1, "error": "boom"}),
    ("error without code", {"id": 1, "error": {"message": "boom"}}),
    ("error code not a string", {"id": 1, "error": {"code": 42, "message": "boom"}}),
    ("cancel of null", {"cancel": None}),
    ("cancel of negative id", {"cancel": -1}),
    ("credit without n", {"credit": 1}),
    ("credit with negative n", {"credit": 1, "n": -1}),
    ("credit with string n", {"credit": 1, "n": "2"}),
    ("credit of null", {"credit": None, "n": 1}),
]

#: Rejected by the schema (what a conforming peer sends) but accepted by the sdk's
#: receiver (docs/protocol.md, "Receiver leniency").
LENIENT: list[tuple[str, Any, str]] = [
    ("unknown member", {"id": 1, "method": "Add", "params": {}, "extra": 1}, wire.REQUEST),
    ("request without params", {"id": 1, "method": "Add"}, wire.REQUEST),
    ("notification without params", {"method": "Log"}, wire.NOTIFICATION),
    ("params not an object", {"id": 1, "method": "Add", "params": [1, 2]}, wire.REQUEST),
    ("stream window null", {"id": 1, "method": "Add", "params": {}, "stream": None}, wire.REQUEST),
    ("notification with a window", {"method": "Count", "params": {}, "stream": 2}, wire.NOTIFICATION),
    ("error without message", {"id": 1, "error": {"code": "x.Y"}}, wire.ERROR),
    ("error message not a string", {"id": 1, "error": {"code": "x.Y", "message": 3}}, wire.ERROR),
    ("error with null data", {"id": 1, "error": {"code": "x.Y", "message": "m", "data": None}}, wire.ERROR),
    ("error with unknown member", {"id": 1, "error": {"code": "x.Y", "message": "m", "x": 1}}, wire.ERROR),
    ("result and error", {"id": 1, "result": 1, "error": {"code": "x.Y", "message": "m"}}, wire.RESULT),
    ("request and cancel", {"id": 1, "method": "Add", "params": {}, "cancel": 1}, wire.REQUEST),
]


@pytest.mark.parametrize(("why", "envelope"), INVALID, ids=[why for why, _ in INVALID])
def test_invalid_envelopes_are_rejected(schema: dict[str, Any], why: str, envelope: Any) -> None:
    assert schema_errors(envelope, schema, schema), f"schema accepted {why}: {envelope!r}"
    with pytest.raises(ValueError, match=r"must|needs|has none of"):
        wire.classify(envelope)


@pytest.mark.parametrize(("why", "envelope", "kind"), LENIENT, ids=[why for why, _, _ in LENIENT])
def test_receiver_leniency(schema: dict[str, Any], why: str, envelope: Any, kind: str) -> None:
    assert schema_errors(envelope, schema, schema), f"schema accepted {why}"
    assert wire.classify(envelope) == kind


def test_wire_header_constants() -> None:
    assert wire.HEADER.format == ">IH"
    assert wire.HEADER_SIZE == 6
    assert wire.HEADER.pack(46, 0) == bytes.fromhex("0000002e0000")
    assert wire.DEFAULT_MAX_FRAME_SIZE == 16 * 1024 * 1024
    assert wire.DEFAULT_MAX_FDS_PER_FRAME == wire.KERNEL_MAX_FDS == 253
