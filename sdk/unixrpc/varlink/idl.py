"""Varlink interface descriptions (IDL, https://varlink.org/Interface-Definition)
both ways: generated from pydantic ``Method``/``StreamMethod`` classes and
``RPCError`` classes (:func:`describe`), and parsed into a small AST
(:func:`parse`) that :mod:`.codegen` turns into Python.

The type mapping (docs/varlink.md): ``bool``, ``int``, ``float``, ``str``
(and what pydantic writes as a string: ``bytes``, dates, UUIDs, paths) →
``bool int float string``; ``FD`` → ``int`` (a descriptor index); ``X |
None`` → ``?X``; lists, tuples of one type and sets → ``[]X``; ``dict[str,
X]`` → ``[string]X``; ``Any`` and ``dict`` of ``Any`` → ``object``; string
``Literal``\\ s and string enums → ``(a, b)``; models → named ``type``\\ s.
What has no varlink type (a union of two types that is not ``X | None``,
a dict whose keys are not strings, a tuple of several types, a name that is
no varlink field name) raises :class:`VarlinkTypeError` naming the field.

A method's parameters are its fields; its reply a model result's fields, or
``(result: X)`` for any other result (``(item: X)`` for a stream's items);
``Method[None]`` replies ``()``. Docstrings become ``#`` comments.
"""

from __future__ import annotations

import datetime
import decimal
import enum
import ipaddress
import pathlib
import re
import types
import typing
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

from pydantic import BaseModel

from .._core.server.varlink import ITEM_FIELD, RESULT_FIELD
from .._core.varlink import is_field_name, is_interface_name, is_member_name, qualified_name
from ..exceptions import RPCError
from ..fds import FileDescriptor
from ..methods import method_spec

__all__ = [
    "Array",
    "Dict",
    "Enum",
    "Error",
    "Field",
    "Interface",
    "MethodDef",
    "Named",
    "Optional",
    "Primitive",
    "Struct",
    "TypeDef",
    "VarlinkSyntaxError",
    "VarlinkTypeError",
    "describe",
    "parse",
]


class VarlinkTypeError(TypeError):
    """A model has a type (or a name) that varlink cannot express."""


class VarlinkSyntaxError(ValueError):
    """An interface description that does not parse."""


# -- the AST --------------------------------------------------------------------------


@dataclass(frozen=True)
class Primitive:
    name: str  # bool, int, float, string, object

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class Optional:
    type: VarlinkType

    def __str__(self) -> str:
        return f"?{self.type}"


@dataclass(frozen=True)
class Array:
    type: VarlinkType

    def __str__(self) -> str:
        return f"[]{self.type}"


@dataclass(frozen=True)
class Dict:
    type: VarlinkType | None  # None: ``[string]()``, a set of strings

    def __str__(self) -> str:
        return f"[string]{self.type if self.type is not None else '()'}"


@dataclass(frozen=True)
class Named:
    name: str

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class Enum:
    values: tuple[str, ...]

    def __str__(self) -> str:
        return f"({', '.join(self.values)})"


@dataclass(frozen=True)
class Field:
    name: str
    type: VarlinkType
    doc: str = ""


@dataclass(frozen=True)
class Struct:
    fields: tuple[Field, ...] = ()

    def __str__(self) -> str:
        return f"({', '.join(f'{f.name}: {f.type}' for f in self.fields)})"


VarlinkType = Union[Primitive, Optional, Array, Dict, Named, Enum, Struct]  # noqa: UP007


@dataclass(frozen=True)
class TypeDef:
    name: str
    type: Struct | Enum
    doc: str = ""


@dataclass(frozen=True)
class MethodDef:
    name: str
    input: Struct
    output: Struct
    doc: str = ""


@dataclass(frozen=True)
class Error:
    name: str
    type: Struct
    doc: str = ""


@dataclass
class Interface:
    name: str
    doc: str = ""
    types: dict[str, TypeDef] = field(default_factory=dict)
    methods: dict[str, MethodDef] = field(default_factory=dict)
    errors: dict[str, Error] = field(default_factory=dict)

    def __str__(self) -> str:
        return format_interface(self)


# -- generating -------------------------------------------------------------------------

_STRINGLIKE = (
    str,
    bytes,
    datetime.datetime,
    datetime.date,
    datetime.time,
    datetime.timedelta,
    uuid.UUID,
    pathlib.PurePath,
    decimal.Decimal,
    ipaddress.IPv4Address,
    ipaddress.IPv6Address,
)


class _Builder:
    def __init__(self) -> None:
        self.types: dict[str, TypeDef] = {}
        self._models: dict[str, type[BaseModel]] = {}

    def struct(self, model: type[BaseModel], where: str) -> Struct:
        fields = []
        for name, info in model.model_fields.items():
            wire = info.serialization_alias or info.alias or name
            place = f"{where}.{name}"
            if not is_field_name(wire):
                raise VarlinkTypeError(f"{place}: {wire!r} is not a varlink field name")
            kind = self.type(info.annotation, place)
            if not info.is_required() and not isinstance(kind, Optional):
                kind = Optional(kind)  # a field with a default may be omitted
            fields.append(Field(wire, kind, info.description or ""))
        return Struct(tuple(fields))

    def model(self, model: type[BaseModel], where: str) -> Named:
        name = model.__name__
        known = self._models.get(name)
        if known is model:
            return Named(name)
        if known is not None:
            raise VarlinkTypeError(f"{where}: two different models are named {name}")
        if not is_member_name(name):
            raise VarlinkTypeError(f"{where}: the model name {name!r} is not a varlink type name")
        self._models[name] = model
        self.types[name] = TypeDef(name, self.struct(model, name), _doc(model))
        return Named(name)

    def type(self, hint: Any, where: str) -> VarlinkType:
        origin = typing.get_origin(hint)
        args = typing.get_args(hint)
        if origin is typing.Annotated:
            return self.type(args[0], where)
        if hint is Any or hint is object:
            return Primitive("object")
        if hint is bool:
            return Primitive("bool")
        if hint is int or hint is FileDescriptor:
            return Primitive("int")
        if hint is float:
            return Primitive("float")
        if isinstance(hint, type) and issubclass(hint, enum.Enum):
            return self._enum([member.value for member in hint], where)
        if isinstance(hint, type) and issubclass(hint, _STRINGLIKE):
            return Primitive("string")
        if isinstance(hint, type) and issubclass(hint, BaseModel):
            return self.model(hint, where)
        if origin is typing.Literal:
            return self._enum(list(args), where)
        if origin is Union or origin is types.UnionType:
            rest = [arg for arg in args if arg is not type(None)]
            if len(rest) == 1 and len(args) == 2:
                inner = self.type(rest[0], where)
                return inner if isinstance(inner, Optional) else Optional(inner)
            shown = " | ".join(getattr(arg, "__name__", str(arg)) for arg in args)
            raise VarlinkTypeError(
                f"{where}: {shown} has no varlink type (a union other than X | None); "
                "use one type, or object (Any)"
            )
        if origin in (list, set, frozenset, Sequence) or (
            origin is tuple and len(args) == 2 and args[1] is ...
        ):
            return Array(self.type(args[0] if args else Any, where))
        if hint in (list, set, frozenset):
            return Array(Primitive("object"))
        if origin is tuple:
            raise VarlinkTypeError(f"{where}: a tuple of several types has no varlink type; use a model")
        if origin in (dict, Mapping) or hint is dict:
            key, value = args if args else (str, Any)
            if key is not str:
                name = getattr(key, "__name__", str(key))
                raise VarlinkTypeError(
                    f"{where}: dict keys of type {name} have no varlink type (keys are strings)"
                )
            inner = self.type(value, where)
            return Primitive("object") if inner == Primitive("object") else Dict(inner)
        if hint is type(None) or hint is None:
            raise VarlinkTypeError(f"{where}: None alone has no varlink type")
        raise VarlinkTypeError(f"{where}: {getattr(hint, '__name__', hint)!s} has no varlink type")

    @staticmethod
    def _enum(values: list[Any], where: str) -> Enum:
        for value in values:
            if not isinstance(value, str) or not is_field_name(value):
                raise VarlinkTypeError(f"{where}: enum value {value!r} is not a varlink name (strings only)")
        return Enum(tuple(values))


def _doc(obj: Any) -> str:
    doc = obj.__dict__.get("__doc__") if isinstance(obj, type) else None
    return typing.cast(str, doc or "").strip()


_STREAM_NOTE = "A stream: call it with more; each reply continues."


def _reply(builder: _Builder, result: Any, streaming: bool, where: str) -> Struct:
    if isinstance(result, type) and issubclass(result, BaseModel):
        return builder.struct(result, where)
    if result is None or result is type(None):
        return Struct()
    kind = builder.type(result, where)
    return Struct((Field(ITEM_FIELD if streaming else RESULT_FIELD, kind),))


def describe(
    interface: str,
    methods: Iterable[type[BaseModel]],
    errors: Iterable[type[RPCError]] = (),
    *,
    doc: str = "",
    method_names: Mapping[str, str] | None = None,
) -> str:
    """The varlink IDL of *interface*: the *methods* whose varlink name
    (:func:`~unixrpc._core.varlink.qualified_name`, or *method_names*) is in
    it, the errors they declare and *errors*, and the models they use as
    named types. *doc* is the interface's comment.

    Raises:
        VarlinkTypeError: a field (or result) has no varlink type; the
            message names it.
        ValueError: *interface* is no varlink interface name.
    """
    return format_interface(build(interface, methods, errors, doc=doc, method_names=method_names))


def build(
    interface: str,
    methods: Iterable[type[BaseModel]],
    errors: Iterable[type[RPCError]] = (),
    *,
    doc: str = "",
    method_names: Mapping[str, str] | None = None,
) -> Interface:
    """The AST :func:`describe` formats."""
    if not is_interface_name(interface):
        raise ValueError(f"{interface!r} is not a varlink interface name")
    builder = _Builder()
    result = Interface(interface, doc.strip())
    error_classes = list(errors)
    for cls in methods:
        spec = method_spec(cls)
        name = (method_names or {}).get(spec.name) or qualified_name(spec.name, interface)
        iface, _, member = name.rpartition(".")
        if iface != interface:
            continue
        spec.result_adapter  # noqa: B018 - resolves a forward reference
        inputs = builder.struct(cls, f"{cls.__name__}")
        outputs = _reply(builder, spec.result_type, spec.streaming, f"{cls.__name__} result")
        text = _doc(cls)
        if spec.streaming and _STREAM_NOTE not in text:
            text = (text + "\n" if text else "") + _STREAM_NOTE
        result.methods[member] = MethodDef(member, inputs, outputs, text)
        error_classes.extend(spec.errors)
    for error in error_classes:
        name = qualified_name(error.code, interface)
        iface, _, member = name.rpartition(".")
        if iface != interface or member in result.errors:
            continue
        model = error.__rpc_data_model__
        fields = builder.struct(model, error.__name__) if model is not None else Struct()
        result.errors[member] = Error(member, fields, _doc(error))
    result.types = builder.types
    return result


def _comment(text: str, indent: str = "") -> str:
    return "".join(f"{indent}# {line}".rstrip() + "\n" for line in text.splitlines())


def format_interface(interface: Interface) -> str:
    """*interface* as IDL text."""
    out = [_comment(interface.doc), f"interface {interface.name}\n"]
    for typedef in interface.types.values():
        out.append("\n" + _comment(typedef.doc) + f"type {typedef.name} {_format(typedef.type)}\n")
    for method in interface.methods.values():
        text = f"method {method.name}{_format(method.input)} -> {_format(method.output)}\n"
        out.append("\n" + _comment(method.doc) + text)
    for error in interface.errors.values():
        out.append("\n" + _comment(error.doc) + f"error {error.name} {_format(error.type)}\n")
    return "".join(out)


def _format(kind: Struct | Enum) -> str:
    if isinstance(kind, Enum) or not kind.fields:
        return str(kind)
    if len(kind.fields) <= 2 and not any(f.doc for f in kind.fields) and len(str(kind)) < 60:
        return str(kind)
    lines = []
    for item in kind.fields:
        lines.append(_comment(item.doc, "  ") + f"  {item.name}: {item.type}")
    return "(\n" + ",\n".join(lines) + "\n)"


# -- parsing ----------------------------------------------------------------------------

_TOKEN = re.compile(
    r"""(?P<space>[ \t\r\n]+)
      | (?P<comment>\#[^\n]*)
      | (?P<arrow>->)
      | (?P<dict>\[string\])
      | (?P<array>\[\])
      | (?P<punct>[():,?])
      | (?P<word>[A-Za-z][A-Za-z0-9_.-]*)
    """,
    re.VERBOSE,
)
_PRIMITIVES = frozenset({"bool", "int", "float", "string", "object"})


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens: list[tuple[str, str, int]] = []  # (kind, text, line)
        self.docs: list[str] = []
        position, line = 0, 1
        while position < len(text):
            match = _TOKEN.match(text, position)
            if match is None:
                raise VarlinkSyntaxError(f"line {line}: unexpected {text[position : position + 10]!r}")
            kind = match.lastgroup or ""
            value = match.group()
            if kind != "space":
                self.tokens.append((kind, value, line))
            line += value.count("\n")
            position = match.end()
        self.index = 0

    def doc(self) -> str:
        lines = []
        while self.index < len(self.tokens) and self.tokens[self.index][0] == "comment":
            lines.append(self.tokens[self.index][1][1:].strip())
            self.index += 1
        return "\n".join(lines)

    def peek(self) -> tuple[str, str, int]:
        while self.index < len(self.tokens) and self.tokens[self.index][0] == "comment":
            self.index += 1
        return self.tokens[self.index] if self.index < len(self.tokens) else ("end", "", -1)

    def take(self, expected: str | None = None, kind: str | None = None) -> str:
        token = self.peek()
        if (expected is not None and token[1] != expected) or (kind is not None and token[0] != kind):
            want = expected or kind
            raise VarlinkSyntaxError(f"line {token[2]}: expected {want!r}, found {token[1] or 'the end'!r}")
        self.index += 1
        return token[1]

    def interface(self) -> Interface:
        doc = self.doc()
        self.take("interface")
        name = self.take(kind="word")
        if not is_interface_name(name):
            raise VarlinkSyntaxError(f"{name!r} is not a varlink interface name")
        result = Interface(name, doc)
        while True:
            doc = self.doc()
            keyword = self.peek()
            if keyword[0] == "end":
                return result
            self.take(kind="word")
            member = self.take(kind="word")
            if not is_member_name(member):
                raise VarlinkSyntaxError(f"line {keyword[2]}: {member!r} is not a varlink member name")
            if keyword[1] == "type":
                result.types[member] = TypeDef(member, self.struct_or_enum(), doc)
            elif keyword[1] == "method":
                inputs = self.struct()
                self.take("->")
                result.methods[member] = MethodDef(member, inputs, self.struct(), doc)
            elif keyword[1] == "error":
                result.errors[member] = Error(member, self.struct(), doc)
            else:
                raise VarlinkSyntaxError(f"line {keyword[2]}: expected type, method or error")

    def struct(self) -> Struct:
        kind = self.struct_or_enum()
        if isinstance(kind, Enum):
            raise VarlinkSyntaxError(f"expected a struct, found the enum {kind}")
        return kind

    def struct_or_enum(self) -> Struct | Enum:
        self.take("(")
        fields: list[Field] = []
        values: list[str] = []
        while True:
            doc = self.doc()
            if self.peek()[1] == ")":
                break
            name = self.take(kind="word")
            if not is_field_name(name):
                raise VarlinkSyntaxError(f"line {self.peek()[2]}: {name!r} is not a varlink field name")
            if self.peek()[1] == ":":
                self.take(":")
                fields.append(Field(name, self.type(), doc))
            else:
                values.append(name)
            if self.peek()[1] != ",":
                break
            self.take(",")
        self.take(")")
        if fields and values:
            raise VarlinkSyntaxError("a struct and an enum mixed")
        return Enum(tuple(values)) if values else Struct(tuple(fields))

    def type(self) -> VarlinkType:
        token = self.peek()
        if token[1] == "?":
            self.take("?")
            return Optional(self.type())
        if token[0] == "array":
            self.index += 1
            return Array(self.type())
        if token[0] == "dict":
            self.index += 1
            if self.peek()[1] == "(" and self.tokens[self.index + 1][1] == ")":
                self.index += 2
                return Dict(None)
            return Dict(self.type())
        if token[1] == "(":
            return self.struct_or_enum()
        name = self.take(kind="word")
        if name in _PRIMITIVES:
            return Primitive(name)
        if not is_member_name(name):
            raise VarlinkSyntaxError(f"line {token[2]}: unknown type {name!r}")
        return Named(name)


def parse(text: str) -> Interface:
    """The AST of an interface description.

    Raises:
        VarlinkSyntaxError: *text* is no valid description (the message says where).
    """
    return _Parser(text).interface()
