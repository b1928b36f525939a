"""Varlink IDL both ways (``unixrpc.varlink.idl``) and the Method classes
generated from it (``unixrpc.varlink.codegen``): no sockets."""

from __future__ import annotations

import sys
import types
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

import pytest
from pydantic import BaseModel, Field

from unixrpc import FD, Method, RPCError, StreamMethod
from unixrpc.methods import method_spec
from unixrpc.varlink.codegen import generate
from unixrpc.varlink.idl import VarlinkSyntaxError, VarlinkTypeError, describe, parse

varlink = pytest.importorskip("varlink", reason="python-varlink is not installed")
HERE = Path(__file__).resolve().parent / "varlink"


class Color(StrEnum):
    red = "red"
    blue = "blue"


class Address(BaseModel):
    """Where someone lives."""

    street: str
    number: int | None = None


class Person(BaseModel):
    """Someone."""

    name: str = Field(description="their name")
    tags: list[str]
    scores: dict[str, float]
    home: Address
    color: Color
    mood: Literal["happy", "sad"]
    extra: dict[str, Any]


class Missing(RPCError, code="people.Missing"):
    """No such person."""

    name: str


class Find(Method[Person], name="people.find", errors=[Missing]):
    """Find a person by name."""

    name: str


class Count(Method[int], name="people.Count"):
    pass


class Watch(StreamMethod[Person], name="people.Watch"):
    pass


class Share(Method[None], name="people.Share"):
    fd: FD


METHODS = [Find, Count, Watch, Share]


def test_the_idl_of_example_methods_is_read_by_python_varlink_and_by_us() -> None:
    text = describe("org.example.people", METHODS, doc="People.")
    interface = varlink.Interface(text)
    # a model result's fields are the reply's parameters: Person is no named type
    assert set(interface.members) == {"Find", "Count", "Watch", "Share", "Missing", "Address"}
    parsed = parse(text)
    assert str(parsed) == text
    assert [field.name for field in parsed.methods["Find"].output.fields][:2] == ["name", "tags"]
    assert "# Find a person by name." in text
    assert "  # their name\n  name: string" in text
    assert "color: (red, blue)" in text
    assert "scores: [string]float" in text
    assert "extra: object" in text
    assert "method Count() -> (result: int)" in text
    assert "method Share(fd: int) -> ()" in text
    assert "error Missing (name: string)" in text


@pytest.mark.parametrize(
    ("annotation", "why"),
    [
        (int | str, "int | str has no varlink type"),
        (dict[int, str], "dict keys of type int have no varlink type"),
        (tuple[int, str], "a tuple of several types"),
        (Literal[1, 2], "enum value 1 is not a varlink name"),
    ],
)
def test_what_has_no_varlink_type_is_refused_naming_the_field(annotation: Any, why: str) -> None:
    def body(namespace: dict[str, Any]) -> None:
        namespace["__annotations__"] = {"field": annotation}

    bad = types.new_class("Bad", (Method[int],), {"name": "x.Bad"}, body)
    with pytest.raises(VarlinkTypeError, match=f"Bad.field: {why}".replace("|", r"\|").replace("[", r"\[")):
        describe("org.example", [bad])


def test_parse_errors_say_where() -> None:
    with pytest.raises(VarlinkSyntaxError, match="line 3"):
        parse("interface org.example\n\nmethod Foo(a: int -> ()\n")
    with pytest.raises(VarlinkSyntaxError, match="not a varlink interface name"):
        parse("interface nodots\n")


def test_generated_methods_round_trip_the_idl() -> None:
    text = describe("org.example.people", METHODS)
    source = generate(text, streams=["Watch"])
    module = types.ModuleType("people_generated")
    sys.modules["people_generated"] = module
    try:
        exec(compile(source, "people_generated.py", "exec"), module.__dict__)
        find = module.Find
        assert method_spec(find).name == "org.example.people.Find"
        assert method_spec(module.Watch).streaming
        assert method_spec(module.Count).result_type is int
        assert issubclass(module.Missing, RPCError)
        assert module.Missing.code == "org.example.people.Missing"
        # the generated models describe the same interface again
        generated = [find, module.Count, module.Watch, module.Share]
        again = describe("org.example.people", generated, [module.Missing])
        assert again == describe("org.example.people", METHODS)
    finally:
        del sys.modules["people_generated"]


def test_the_userdb_idl_parses_both_ways() -> None:
    text = (HERE / "io.systemd.UserDatabase.varlink").read_text()
    interface = parse(text)
    assert set(interface.methods) == {"GetUserRecord", "GetGroupRecord", "GetMemberships"}
    assert varlink.Interface(str(interface)).name == "io.systemd.UserDatabase"
