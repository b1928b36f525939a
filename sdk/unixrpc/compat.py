"""Compatibility of two interface documents: what a daemon's change would
break for clients built against its older interface.

Owns the evolution rules of docs/interfaces.md, as checks. Between OLD (what
clients know) and NEW (what the daemon now serves):

* compatible (reported, exit 0): a new method; a new optional param (or
  optional field of a param's model); a required param made optional (``FD``
  to ``FD | None = None`` included); a param that accepts more; a new result
  field (the note says whether new clients get a default from older
  daemons); a result that sends less (a narrower type, a field made
  required); a new typed error, or one no longer raised.
* breaking: a method removed; a call turned into a stream or back; a new
  required param, or an optional one made required; a param (or a field of a
  param's model) removed: old clients still send it and the daemon now
  ignores it; an optional param's default changed; a param that accepts
  less; a result (or item) that may send what old clients do not accept (a
  field removed or made optional, a wider type, a new enum value); a change
  of which values carry file descriptors.

A result field is "optional" only when the daemon may leave it out: the
documents list every field a daemon sends as required, defaults included
(:mod:`unixrpc.interface`), so giving a result field a default changes
nothing for old clients.

Params are checked "does NEW accept everything OLD accepted", results "does
OLD accept everything NEW may send", over the JSON Schema that pydantic
writes. What the checker cannot compare it reports as breaking, saying so.
Pure: documents in, a list of changes out.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .interface import FD_MARK, resolve

__all__ = ["Change", "compare"]

# keywords that describe a schema without constraining values
_ANNOTATIONS = frozenset(
    {"title", "description", "default", "examples", "deprecated", "readOnly", "writeOnly", "$comment"}
)
_HANDLED = frozenset(
    {
        "type",
        "properties",
        "required",
        "additionalProperties",
        "items",
        "prefixItems",
        "enum",
        "const",
        "anyOf",
        "oneOf",
        "$ref",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "minLength",
        "maxLength",
        "minItems",
        "maxItems",
        "pattern",
        "format",
        FD_MARK,
    }
)


@dataclass(frozen=True)
class Change:
    """One difference between two interface documents.

    Attributes:
        method: the method's wire name.
        where: what changed (``params.uid``, ``result.name``, ``stream``...).
        message: what changed and what it does to old clients.
        breaking: whether clients built against the old document may fail.
    """

    method: str
    where: str
    message: str
    breaking: bool

    def __str__(self) -> str:
        mark = "BREAKING" if self.breaking else "ok"
        where = f" {self.where}" if self.where else ""
        return f"{mark:8} {self.method}{where}: {self.message}"

    def as_dict(self) -> dict[str, Any]:
        """The change as JSON (for ``unixrpc compat --json``)."""
        return {
            "method": self.method,
            "where": self.where,
            "message": self.message,
            "breaking": self.breaking,
        }


def compare(old: dict[str, Any], new: dict[str, Any]) -> list[Change]:
    """The changes from interface document *old* to *new* (OpenRPC, as
    :func:`unixrpc.interface.openrpc_document` writes them), breaking ones
    first.

    Raises:
        ValueError: a document is not an interface document (no ``methods`` list).
    """
    for name, document in (("old", old), ("new", new)):
        if not isinstance(document, dict) or not isinstance(document.get("methods"), list):
            raise ValueError(f"the {name} document has no 'methods' list: not an OpenRPC document")
    old_schemas = old.get("components", {}).get("schemas", {})
    new_schemas = new.get("components", {}).get("schemas", {})
    old_methods = {entry["name"]: entry for entry in old["methods"]}
    new_methods = {entry["name"]: entry for entry in new["methods"]}
    changes: list[Change] = []
    for name in sorted(old_methods.keys() - new_methods.keys()):
        changes.append(Change(name, "", "method removed: old clients calling it get MethodNotFound", True))
    for name in sorted(new_methods.keys() - old_methods.keys()):
        changes.append(Change(name, "", "new method", False))
    for name in sorted(old_methods.keys() & new_methods.keys()):
        changes += _method_changes(name, old_methods[name], new_methods[name], old_schemas, new_schemas)
    return sorted(changes, key=lambda change: not change.breaking)


def _method_changes(
    name: str,
    old: dict[str, Any],
    new: dict[str, Any],
    old_schemas: dict[str, Any],
    new_schemas: dict[str, Any],
) -> Iterator[Change]:
    if bool(old.get("x-unixrpc-stream")) != bool(new.get("x-unixrpc-stream")):
        now = "a stream" if new.get("x-unixrpc-stream") else "a plain call"
        yield Change(name, "stream", f"became {now}: old clients call it the other way", True)
        return
    old_params = {param["name"]: param for param in old.get("params", ())}
    new_params = {param["name"]: param for param in new.get("params", ())}
    for param in sorted(old_params.keys() - new_params.keys()):
        yield Change(
            name,
            f"params.{param}",
            "param removed: old clients still send it and the daemon ignores it",
            True,
        )
    for param in sorted(new_params.keys() - old_params.keys()):
        if new_params[param].get("required"):
            yield Change(name, f"params.{param}", "new required param: old clients do not send it", True)
        else:
            yield Change(name, f"params.{param}", "new optional param", False)
    for param in sorted(old_params.keys() & new_params.keys()):
        before, after = old_params[param], new_params[param]
        where = f"params.{param}"
        if after.get("required") and not before.get("required"):
            yield Change(name, where, "optional param made required: old clients may leave it out", True)
        elif before.get("required") and not after.get("required"):
            yield Change(name, where, "required param made optional", False)
        elif not before.get("required") and not after.get("required"):
            old_default = before.get("schema", {}).get("default")
            new_default = after.get("schema", {}).get("default")
            if old_default != new_default:
                yield Change(
                    name,
                    where,
                    f"default changed from {_show([old_default])} to {_show([new_default])}: old clients "
                    "that leave it out now mean something else",
                    True,
                )
        checker = _Checker(new_schemas, old_schemas, sends=False)
        for path, problem in checker.covers(after.get("schema", {}), before.get("schema", {}), where):
            yield Change(
                name, path, f"the daemon no longer accepts what old clients may send: {problem}", True
            )
        for path, note in checker.notes:
            yield Change(name, path, note, False)
    what = "item" if new.get("x-unixrpc-stream") else "result"
    old_result = old.get("result", {}).get("schema", {})
    new_result = new.get("result", {}).get("schema", {})
    checker = _Checker(old_schemas, new_schemas, sends=True)
    for path, problem in checker.covers(old_result, new_result, what):
        yield Change(name, path, f"old clients may not accept what the daemon now sends: {problem}", True)
    for path, note in checker.notes:
        yield Change(name, path, note, False)
    old_errors = {error["code"] for error in old.get("x-unixrpc-errors", ())}
    new_errors = {error["code"] for error in new.get("x-unixrpc-errors", ())}
    for code in sorted(new_errors - old_errors):
        yield Change(name, f"errors.{code}", "new typed error (old clients see a plain RPCError)", False)
    for code in sorted(old_errors - new_errors):
        yield Change(name, f"errors.{code}", "typed error no longer declared", False)


class _Checker:
    """Whether schema *outer* accepts every value of schema *inner*:
    :meth:`covers` yields why not (empty: it does), and :attr:`notes` holds
    the compatible differences seen on the way (a new field).

    *sends*: the schemas are what a daemon sends (outer: the old clients'
    view, inner: the new daemon's); else what it accepts (outer: the new
    daemon, inner: what old clients send)."""

    def __init__(self, outer_defs: dict[str, Any], inner_defs: dict[str, Any], *, sends: bool) -> None:
        self.outer_defs = outer_defs
        self.inner_defs = inner_defs
        self.sends = sends
        self.assumed: set[tuple[str, str]] = set()  # $ref pairs under comparison (recursive models)
        self.notes: list[tuple[str, str]] = []

    def covers(self, outer: Any, inner: Any, path: str) -> Iterator[tuple[str, str]]:
        if outer is True or outer == {}:
            return
        if inner is False:
            return
        if not isinstance(outer, dict) or not isinstance(inner, dict):
            if outer != inner:
                yield path, "the schemas differ"
            return
        refs = (str(outer.get("$ref", "")), str(inner.get("$ref", "")))
        if refs != ("", ""):
            if refs in self.assumed:
                return
            self.assumed.add(refs)
        outer = resolve(outer, self.outer_defs)
        inner = resolve(inner, self.inner_defs)
        if not isinstance(outer, dict) or not isinstance(inner, dict):
            yield path, "a schema refers to a definition that is missing"
            return
        inner_branches = inner.get("anyOf") or inner.get("oneOf")
        if inner_branches:
            for branch in inner_branches:
                yield from self.covers(outer, branch, path)
            return
        outer_branches = outer.get("anyOf") or outer.get("oneOf")
        if outer_branches:
            for branch in outer_branches:
                trial = _Checker(self.outer_defs, self.inner_defs, sends=self.sends)
                trial.assumed = set(self.assumed)
                if not list(trial.covers(branch, inner, path)):
                    self.notes += trial.notes
                    return
            yield path, f"{_kind(inner)} is not among {_kind(outer)}"
            return
        yield from self._same_level(outer, inner, path)

    def _same_level(
        self, outer: dict[str, Any], inner: dict[str, Any], path: str
    ) -> Iterator[tuple[str, str]]:
        unknown = (set(outer) | set(inner)) - _HANDLED - _ANNOTATIONS
        for keyword in sorted(unknown):
            if outer.get(keyword) != inner.get(keyword):
                yield path, f"'{keyword}' changed (the checker cannot tell whether that is compatible)"
        outer_types = _types(outer)
        inner_types = _types(inner)
        nulls = {"null"} in (outer_types, inner_types)  # None for an FD: say null, below
        if bool(outer.get(FD_MARK)) != bool(inner.get(FD_MARK)) and not nulls:
            if self.sends:
                now = "carries" if inner.get(FD_MARK) else "no longer carries"
            else:
                now = "no longer carries" if inner.get(FD_MARK) else "now carries"
            yield path, f"the value {now} a file descriptor"
            return
        if outer_types is not None:
            if inner_types is None:
                yield path, f"now any value, where {'/'.join(sorted(outer_types))} was expected"
                return
            missing = {
                t
                for t in inner_types
                if not (t in outer_types or (t == "integer" and "number" in outer_types))
            }
            if missing:
                yield path, f"{'/'.join(sorted(missing))} where {'/'.join(sorted(outer_types))} is expected"
                return
        yield from self._values(outer, inner, path)
        yield from self._objects(outer, inner, path)
        yield from self._arrays(outer, inner, path)

    def _values(self, outer: dict[str, Any], inner: dict[str, Any], path: str) -> Iterator[tuple[str, str]]:
        allowed = _allowed_values(outer)
        if allowed is not None:
            given = _allowed_values(inner)
            if given is None:
                yield path, f"any value where only {_show(allowed)} is expected"
            else:
                extra = [value for value in given if value not in allowed]
                if extra:
                    yield path, f"{_show(extra)} not among {_show(allowed)}"
        for keyword, tighter in (
            ("minimum", max),
            ("exclusiveMinimum", max),
            ("minLength", max),
            ("minItems", max),
            ("maximum", min),
            ("exclusiveMaximum", min),
            ("maxLength", min),
            ("maxItems", min),
        ):
            if keyword in outer:
                bound = outer[keyword]
                if keyword not in inner or tighter(bound, inner[keyword]) != inner[keyword]:
                    yield path, f"{keyword} {bound} now applies (was {inner.get(keyword, 'none')})"
        for keyword in ("pattern", "format"):
            if keyword in outer and outer[keyword] != inner.get(keyword):
                yield path, f"{keyword} {outer[keyword]!r} now applies (was {inner.get(keyword)!r})"

    def _objects(self, outer: dict[str, Any], inner: dict[str, Any], path: str) -> Iterator[tuple[str, str]]:
        if "properties" not in outer and "properties" not in inner and "additionalProperties" not in outer:
            return
        outer_props = outer.get("properties", {})
        inner_props = inner.get("properties", {})
        inner_required = set(inner.get("required", ()))
        for field in outer.get("required", ()):
            if field not in inner_required:
                state = "optional" if field in inner_props else "absent"
                yield f"{path}.{field}", f"required field is {state}"
        outer_extra = outer.get("additionalProperties", True)
        for field, schema in inner_props.items():
            if field in outer_props:
                yield from self.covers(outer_props[field], schema, f"{path}.{field}")
            elif outer_extra is False:
                yield f"{path}.{field}", "field not allowed"
            elif isinstance(outer_extra, dict):
                yield from self.covers(outer_extra, schema, f"{path}.{field}")
            elif self.sends:
                self.notes.append((f"{path}.{field}", _new_result_field(schema)))
            else:
                yield f"{path}.{field}", "field removed (old clients still send it; the daemon ignores it)"
        if not self.sends:
            outer_required = set(outer.get("required", ()))
            for field in outer_props:
                if field not in inner_props and field not in outer_required:
                    self.notes.append((f"{path}.{field}", "new optional field"))
        inner_extra = inner.get("additionalProperties")
        if isinstance(inner_extra, dict) or inner_extra is True:
            if outer_extra is False:
                yield f"{path}{{}}", "arbitrary keys where none are allowed"
            elif isinstance(outer_extra, dict):
                yield from self.covers(outer_extra, inner_extra, f"{path}{{}}")
            for field, schema in outer_props.items():
                if field not in inner_props:
                    yield from self.covers(schema, inner_extra, f"{path}.{field}")

    def _arrays(self, outer: dict[str, Any], inner: dict[str, Any], path: str) -> Iterator[tuple[str, str]]:
        if "items" in outer:
            yield from self.covers(outer["items"], inner.get("items", {}), f"{path}[]")
        outer_prefix = outer.get("prefixItems", [])
        inner_prefix = inner.get("prefixItems", [])
        for index, schema in enumerate(outer_prefix):
            inner_item = inner_prefix[index] if index < len(inner_prefix) else inner.get("items", {})
            yield from self.covers(schema, inner_item, f"{path}[{index}]")


def _new_result_field(schema: Any) -> str:
    if isinstance(schema, dict) and "default" in schema:
        return (
            "new field: old clients ignore it; new clients get its default "
            f"({_show([schema['default']])}) from older daemons, which do not send it"
        )
    return (
        "new field: old clients ignore it; new clients fail on older daemons, which do not send it "
        "(give it a default if they must work together)"
    )


def _types(schema: dict[str, Any]) -> set[str] | None:
    kind = schema.get("type")
    if kind is None:
        if "const" in schema or "enum" in schema:
            return {_json_type(value) for value in _allowed_values(schema) or []}
        if "properties" in schema:
            return {"object"}
        return None
    return {kind} if isinstance(kind, str) else set(kind)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _allowed_values(schema: dict[str, Any]) -> list[Any] | None:
    if "const" in schema:
        return [schema["const"]]
    if "enum" in schema:
        return list(schema["enum"])
    return None


def _kind(schema: dict[str, Any]) -> str:
    branches = schema.get("anyOf") or schema.get("oneOf")
    if branches:
        return " | ".join(_kind(branch) if isinstance(branch, dict) else "?" for branch in branches)
    if "$ref" in schema:
        return str(schema["$ref"]).rsplit("/", 1)[-1]
    values = _allowed_values(schema)
    if values is not None:
        return _show(values)
    types = _types(schema)
    return "/".join(sorted(types)) if types else "any"


def _show(values: list[Any]) -> str:
    import json

    return ", ".join(json.dumps(value) for value in values)
