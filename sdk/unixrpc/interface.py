"""Interface documents: a daemon's methods as an OpenRPC document.

Owns the document format (docs/interfaces.md): OpenRPC 1.3 with by-name
params, JSON Schemas from pydantic, and ``x-unixrpc-*`` extensions for what
OpenRPC has no word for (streams, file descriptors, errors with dotted
string codes). Pure: method specs in, a JSON-able dict out; no I/O, and
nothing here imports the server or the clients.

    {"openrpc": "1.3.2",
     "info": {"title": "example.rpc", "version": "1.0.0"},
     "methods": [{"name": "users.Get", "paramStructure": "by-name",
                  "params": [{"name": "uid", "required": true, "schema": {"type": "integer"}}],
                  "result": {"name": "result", "schema": {"$ref": "#/components/schemas/User"}},
                  "x-unixrpc-errors": [{"code": "users.NotFound", "message": "No such user.",
                                        "data": {"$ref": "#/components/schemas/UserNotFoundData"}}]}],
     "components": {"schemas": {"User": {...}, "UserNotFoundData": {...}}}}
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Iterator
from typing import Any

from pydantic import TypeAdapter
from pydantic.json_schema import GenerateJsonSchema
from pydantic_core import core_schema

from .methods import MethodSpec

__all__ = [
    "FD_MARK",
    "OPENRPC_VERSION",
    "REF_PREFIX",
    "fd_paths",
    "method_entry",
    "openrpc_document",
    "refs_in",
    "resolve",
]

OPENRPC_VERSION = "1.3.2"
#: where the shared schemas live in a document
REF_PREFIX = "#/components/schemas/"
#: the JSON Schema keyword that marks an ``FD`` field (an index into the frame's descriptors)
FD_MARK = "x-unixrpc-fd"


class _SchemaGenerator(GenerateJsonSchema):
    """pydantic's generator, except that what a daemon sends (results, items,
    error data: serialization mode) lists a field with a default as
    required: the daemon always sends it, so a client may rely on it. The
    ``default`` stays in the field's schema, for clients of older daemons."""

    def field_is_required(
        self,
        field: core_schema.ModelField | core_schema.DataclassField | core_schema.TypedDictField,
        total: bool,
    ) -> bool:
        if self.mode == "serialization" and field["type"] != "typed-dict-field":
            return field.get("serialization_exclude_if") is None
        return super().field_is_required(field, total)


def _docstring(cls: type) -> str | None:
    """The class's own docstring (not one inherited from Method or RPCError)."""
    doc = cls.__dict__.get("__doc__")
    return inspect.cleandoc(doc) if isinstance(doc, str) and doc.strip() else None


def _error_message(error: type[Any]) -> str:
    doc = _docstring(error)
    return doc.splitlines()[0] if doc else str(error.code)


def openrpc_document(
    methods: Iterable[MethodSpec],
    *,
    title: str,
    version: str,
    description: str | None = None,
) -> dict[str, Any]:
    """The OpenRPC document of *methods* (sorted by wire name).

    Params are described by name, one content descriptor per field of the
    method class, as a server validates them; results (or stream items) and
    error data as a server sends them: every field is sent, so a field with a
    default is listed in ``required`` there too (its ``default`` kept). Named models go to
    ``components.schemas`` and are referred to with ``$ref``.

    Raises:
        TypeError: a result type is a forward reference that does not resolve.
        pydantic.PydanticUserError: a type has no JSON Schema.
    """
    specs = sorted(methods, key=lambda spec: spec.name)
    inputs: list[tuple[tuple[str, str], Any, TypeAdapter[Any]]] = []
    for spec in specs:
        inputs.append(((spec.name, "params"), "validation", TypeAdapter(spec.method_class)))
        inputs.append(((spec.name, "result"), "serialization", spec.result_adapter))
        for error in spec.errors:
            if error.__rpc_data_model__ is not None:
                inputs.append(
                    (
                        (spec.name, "error:" + error.code),
                        "serialization",
                        TypeAdapter(error.__rpc_data_model__),
                    )
                )
    keyed, defs = TypeAdapter.json_schemas(
        [(key, mode, adapter) for key, mode, adapter in inputs],
        ref_template=REF_PREFIX + "{model}",
        schema_generator=_SchemaGenerator,
    )
    schemas: dict[str, Any] = dict(defs.get("$defs", {}))
    by_key = {key: schema for (key, _mode), schema in keyed.items()}
    # the method classes themselves become params lists, not shared schemas
    params_defs: dict[str, dict[str, Any]] = {}
    for spec in specs:
        ref = by_key[(spec.name, "params")].get("$ref", "")
        if ref.startswith(REF_PREFIX):
            params_defs[spec.name] = schemas.get(ref.removeprefix(REF_PREFIX), {})
    referenced = _refs_in([by_key[key] for key in by_key if key[1] != "params"] + list(params_defs.values()))
    for spec in specs:
        ref = by_key[(spec.name, "params")].get("$ref", "")
        name = ref.removeprefix(REF_PREFIX)
        if name in schemas and name not in referenced:
            del schemas[name]
    components = {"schemas": dict(sorted(schemas.items()))}
    entries = [
        method_entry(spec, params_defs.get(spec.name, {}), by_key, components["schemas"]) for spec in specs
    ]
    info: dict[str, Any] = {"title": title, "version": version}
    if description:
        info["description"] = description
    document: dict[str, Any] = {"openrpc": OPENRPC_VERSION, "info": info, "methods": entries}
    if components["schemas"]:
        document["components"] = components
    return document


def method_entry(
    spec: MethodSpec,
    params_schema: dict[str, Any],
    by_key: dict[tuple[str, str], Any],
    schemas: dict[str, Any],
) -> dict[str, Any]:
    """One entry of a document's ``methods`` (see :func:`openrpc_document`)."""
    entry: dict[str, Any] = {"name": spec.name}
    doc = _docstring(spec.method_class)
    if doc:
        entry["summary"] = doc.splitlines()[0]
        if "\n" in doc:
            entry["description"] = doc
    required = set(params_schema.get("required", ()))
    params = []
    for name, schema in params_schema.get("properties", {}).items():
        if isinstance(schema, dict) and "title" in schema:  # pydantic's title of a field: its name again
            schema = {key: value for key, value in schema.items() if key != "title"}
        descriptor: dict[str, Any] = {"name": name, "required": name in required, "schema": schema}
        if isinstance(schema, dict) and schema.get("description"):
            descriptor["description"] = schema["description"]
        params.append(descriptor)
    entry["paramStructure"] = "by-name"
    entry["params"] = params
    result = by_key[(spec.name, "result")]
    entry["result"] = {"name": "item" if spec.streaming else "result", "schema": result}
    if spec.streaming:
        entry["x-unixrpc-stream"] = True
    if spec.idempotent:
        entry["x-unixrpc-idempotent"] = True
    fds = {}
    param_fds = [
        path
        for name, schema in params_schema.get("properties", {}).items()
        for path in fd_paths(schema, schemas, name)
    ]
    if param_fds:
        fds["params"] = list(dict.fromkeys(param_fds))
    result_fds = list(dict.fromkeys(fd_paths(result, schemas, "")))
    if result_fds:
        fds["item" if spec.streaming else "result"] = result_fds
    if fds:
        entry["x-unixrpc-fds"] = fds
    if spec.errors:
        errors = []
        for error in sorted(spec.errors, key=lambda cls: cls.code):
            described: dict[str, Any] = {"code": error.code, "message": _error_message(error)}
            data = by_key.get((spec.name, "error:" + error.code))
            if data is not None:
                described["data"] = data
            errors.append(described)
        entry["x-unixrpc-errors"] = errors
    return entry


def resolve(schema: Any, schemas: dict[str, Any]) -> Any:
    """*schema* with a top-level ``$ref`` into ``components.schemas`` followed
    (as many times as it takes); other schemas as they are."""
    seen: set[str] = set()
    while isinstance(schema, dict) and isinstance(schema.get("$ref"), str):
        ref = schema["$ref"]
        if not ref.startswith(REF_PREFIX) or ref in seen:
            break
        seen.add(ref)
        schema = schemas.get(ref.removeprefix(REF_PREFIX), {})
    return schema


def fd_paths(schema: Any, schemas: dict[str, Any], path: str = "") -> Iterator[str]:
    """Where in a value of *schema* the descriptors are (``FD`` fields):
    paths such as ``fd``, ``files[]`` (every element), ``handles{}`` (every
    value of an object) or ``file.fd``; the empty path for the value itself."""
    yield from _fd_paths(schema, schemas, path, frozenset())


def _fd_paths(schema: Any, schemas: dict[str, Any], path: str, seen: frozenset[str]) -> Iterator[str]:
    if not isinstance(schema, dict):
        return
    ref = schema.get("$ref")
    if isinstance(ref, str):
        if ref in seen:
            return
        seen = seen | {ref}
        schema = resolve(schema, schemas)
        if not isinstance(schema, dict):
            return
    if schema.get(FD_MARK):
        yield path
        return
    for key in ("anyOf", "oneOf", "allOf"):
        for branch in schema.get(key, ()):
            yield from _fd_paths(branch, schemas, path, seen)
    for name, sub in schema.get("properties", {}).items():
        yield from _fd_paths(sub, schemas, f"{path}.{name}" if path else name, seen)
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _fd_paths(schema["additionalProperties"], schemas, path + "{}", seen)
    if isinstance(schema.get("items"), dict):
        yield from _fd_paths(schema["items"], schemas, path + "[]", seen)
    for index, sub in enumerate(schema.get("prefixItems", ())):
        yield from _fd_paths(sub, schemas, f"{path}[{index}]", seen)


def _refs_in(values: Iterable[Any]) -> set[str]:
    """The names in ``components.schemas`` that *values* refer to directly."""
    found: set[str] = set()
    stack = list(values)
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith(REF_PREFIX):
                found.add(ref.removeprefix(REF_PREFIX))
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return found


def refs_in(values: Iterable[Any], schemas: dict[str, Any]) -> set[str]:
    """The names in *schemas* (``components.schemas``) that *values* refer
    to, directly or through other schemas."""
    found: set[str] = set()
    pending = _refs_in(values)
    while pending:
        name = pending.pop()
        if name in found or name not in schemas:
            continue
        found.add(name)
        pending |= _refs_in([schemas[name]]) - found
    return found
