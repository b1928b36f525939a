"""Python source of pydantic ``Method`` classes generated from a varlink
interface description (:func:`generate`): what ``unixrpc varlink-gen``
prints, so a program calls a varlink service (systemd's among them) with
typed models instead of dicts.

The mapping, the reverse of :mod:`.idl`'s: ``bool int float string`` →
``bool int float str``; ``object`` → ``dict[str, Any]`` (``Any`` inside
containers); ``?T`` → ``T | None = None``; ``[]T`` → ``list[T]``;
``[string]T`` → ``dict[str, T]``; ``[string]()`` (a set of strings) →
``dict[str, None]``; enums → ``Literal[...]``; a ``type`` → a model of that
name; an anonymous struct → a model named after where it is. A method's
reply is a model ``<Method>Reply``, unless it is exactly ``(result: T)``
(unixrpc's wrapping of a scalar result), then ``Method[T]``; methods named
in *streams* become ``StreamMethod`` (varlink's IDL does not say which
methods stream; a :class:`~unixrpc.varlink.client.VarlinkClient` can also
``stream`` a plain method). Errors become ``RPCError`` subclasses with
their qualified name as code. Field names that are Python keywords or
shadow pydantic's own get a trailing ``_`` and an alias.
"""

from __future__ import annotations

import keyword
from collections.abc import Iterable

from pydantic import BaseModel

from .._core.server.varlink import ITEM_FIELD, RESULT_FIELD
from .idl import Array, Dict, Enum, Field, Interface, Named, Optional, Primitive, Struct, VarlinkType, parse

__all__ = ["generate"]

_PRIMITIVES = {"bool": "bool", "int": "int", "float": "float", "string": "str", "object": "dict[str, Any]"}
_RESERVED = set(dir(BaseModel)) | {"model_config"}


class _Writer:
    def __init__(self, interface: Interface) -> None:
        self.interface = interface
        self.blocks: list[str] = []
        self.emitted: set[str] = set()

    def annotation(self, kind: VarlinkType, owner: str, name: str) -> str:
        if isinstance(kind, Primitive):
            return _PRIMITIVES[kind.name]
        if isinstance(kind, Optional):
            return f"{self.annotation(kind.type, owner, name)} | None"
        if isinstance(kind, Array):
            return f"list[{self.annotation(kind.type, owner, name)}]"
        if isinstance(kind, Dict):
            return (
                "dict[str, None]"
                if kind.type is None
                else f"dict[str, {self.annotation(kind.type, owner, name)}]"
            )
        if isinstance(kind, Named):
            self.typedef(kind.name)
            return kind.name
        if isinstance(kind, Enum):
            return "Literal[" + ", ".join(repr(value) for value in kind.values) + "]"
        model = owner + name[:1].upper() + name[1:]
        self.model(model, kind, "")
        return model

    def typedef(self, name: str) -> None:
        if name in self.emitted:
            return
        typedef = self.interface.types.get(name)
        if typedef is None:
            raise ValueError(f"type {name} is used but not defined in {self.interface.name}")
        self.emitted.add(name)
        if isinstance(typedef.type, Enum):
            values = ", ".join(repr(value) for value in typedef.type.values)
            self.blocks.append(_comments(typedef.doc) + f"{name} = Literal[{values}]\n")
        else:
            self.model(name, typedef.type, typedef.doc)

    def fields(self, struct: Struct, owner: str) -> list[str]:
        lines = []
        for item in struct.fields:
            lines.extend(self.field(item, owner))
        return lines

    def field(self, item: Field, owner: str) -> list[str]:
        annotation = self.annotation(item.type, owner, item.name)
        python = item.name
        if keyword.iskeyword(python) or python in _RESERVED:
            python += "_"
        extras = []
        if python != item.name:
            extras.append(f"alias={item.name!r}")
        if item.doc:
            extras.append(f"description={item.doc!r}")
        default = " = None" if isinstance(item.type, Optional) else ""
        if extras:
            inner = ", ".join((["default=None"] if default else []) + extras)
            default = f" = Field({inner})"
        return [f"    {python}: {annotation}{default}"]

    def model(self, name: str, struct: Struct, doc: str, base: str = "BaseModel", keywords: str = "") -> None:
        body = self.fields(struct, name)
        lines = [f"class {name}({base}{keywords}):"]
        if doc:
            lines.append(f"    {_docstring(doc)}")
        if any("alias=" in line for line in body):
            lines.append("    model_config = ConfigDict(populate_by_name=True)")
        lines.extend(body or ([] if doc else ["    pass"]))
        self.blocks.append("\n".join(lines) + "\n")


def _docstring(doc: str) -> str:
    text = doc.replace("\\", "\\\\").replace('"""', '\\"\\"\\"')
    return f'"""{text}"""' if "\n" not in text else f'"""{text}\n    """'.replace("\n", "\n    ")


def _comments(doc: str) -> str:
    return "".join(f"# {line}\n" for line in doc.splitlines())


def generate(text: str | Interface, *, streams: Iterable[str] = ()) -> str:
    """Python source defining a ``Method`` class per method of the
    interface described by *text* (IDL text, or its AST from
    :func:`~unixrpc.varlink.idl.parse`), with the models and errors it uses.
    *streams*: method names (``Watch`` or qualified) to generate as
    ``StreamMethod``.

    Raises:
        VarlinkSyntaxError: *text* does not parse.
        ValueError: a type is used and not defined.
    """
    interface = parse(text) if isinstance(text, str) else text
    wanted = set(streams)
    writer = _Writer(interface)
    for name in interface.types:
        writer.typedef(name)
    for error in interface.errors.values():
        qualified = f"{interface.name}.{error.name}"
        writer.model(error.name, error.type, error.doc, "RPCError", f", code={qualified!r}")
    for method in interface.methods.values():
        qualified = f"{interface.name}.{method.name}"
        streaming = method.name in wanted or qualified in wanted
        wrap = ITEM_FIELD if streaming else RESULT_FIELD
        fields = method.output.fields
        if len(fields) == 1 and fields[0].name == wrap:
            result = writer.annotation(fields[0].type, method.name, "Result")
        elif not fields:
            result = "None"
        else:
            result = f"{method.name}Reply"
            writer.model(result, method.output, "")
        base = f"{'StreamMethod' if streaming else 'Method'}[{result}]"
        writer.model(method.name, method.input, method.doc, base, f", name={qualified!r}")
    header = [
        f'"""Generated by unixrpc from the varlink interface {interface.name}; do not edit.',
        "",
        *(interface.doc.splitlines() if interface.doc else []),
        '"""',
        "",
        "from __future__ import annotations",
        "",
        "from typing import Any, Literal",
        "",
        "from pydantic import BaseModel, ConfigDict, Field",
        "",
        "from unixrpc import Method, RPCError, StreamMethod",
        "",
        "__all__ = [" + ", ".join(repr(name) for name in _public(writer.blocks)) + "]",
        "",
    ]
    source = "\n".join(header) + "\n" + "\n\n".join(writer.blocks)
    return source


def _public(blocks: list[str]) -> list[str]:
    names = []
    for block in blocks:
        head = block.split("(", 1)[0].split("=", 1)[0]
        names.append(head.removeprefix("class ").strip().splitlines()[-1].strip())
    return sorted(names)
