"""The varlink codec (``_core/server/varlink.py``) and message splitting
(``_core/varlink.py``) with bytes in and replies out, no sockets: alone,
and driving a real ``ServerConnection``."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
from pydantic import BaseModel

from unixrpc import FD, FileDescriptor, Method, RPCError, StreamMethod
from unixrpc._core import wire
from unixrpc._core.server import Handler, ServerCall, ServerConnection, ServerRules
from unixrpc._core.server.codec import INVALID, REQUEST
from unixrpc._core.server.varlink import VarlinkCodec, VarlinkNames
from unixrpc._core.varlink import (
    MessageSplitter,
    MessageTooLargeError,
    camel_case,
    message_length,
    qualified_name,
)
from unixrpc.exceptions import PermissionDeniedError
from unixrpc.methods import method_spec


class Point(BaseModel):
    x: int
    y: int


class DivisionByZero(RPCError, code="org.example.calc.DivisionByZero"):
    dividend: int


class NotFound(RPCError, code="calc.NotFound"):
    key: str


class Add(Method[int], name="org.example.calc.Add"):
    a: int
    b: int


class Divide(Method[int], name="calc.divide", errors=[DivisionByZero, NotFound]):
    a: int
    b: int


class Origin(Method[Point], name="calc.Origin"):
    pass


class Nothing(Method[None], name="calc.Nothing"):
    pass


class Count(StreamMethod[int], name="calc.Count"):
    n: int


class Points(StreamMethod[Point], name="calc.Points"):
    pass


class Take(Method[str], name="calc.Take"):
    fd: FD


class Give(Method[FD], name="calc.Give"):
    pass


METHODS = (Add, Divide, Origin, Nothing, Count, Points, Take, Give)


def _handler(cls: type[Any]) -> Handler:
    return Handler(method_spec(cls), lambda request: None, wants_context=False, is_async=True)


def handlers() -> dict[str, Handler]:
    return {cls.__rpc_spec__.name: _handler(cls) for cls in METHODS}


@pytest.fixture
def names() -> VarlinkNames:
    return VarlinkNames.build(handlers(), "org.example.calc")


def call(**message: Any) -> bytes:
    return json.dumps(message).encode()


# -- names ------------------------------------------------------------------------


def test_names_keep_qualified_ones_and_map_the_others() -> None:
    assert qualified_name("org.example.calc.Add", "org.other") == "org.example.calc.Add"
    assert qualified_name("calc.divide", "org.example.calc") == "org.example.calc.Divide"
    assert qualified_name("get_user", "org.example.calc") == "org.example.calc.GetUser"
    assert camel_case("NotFound") == "NotFound"
    with pytest.raises(ValueError, match="not a varlink interface name"):
        qualified_name("add", "calc")
    with pytest.raises(ValueError, match="cannot be made a varlink name"):
        qualified_name("x.9lives", "org.example")


def test_the_name_tables(names: VarlinkNames) -> None:
    assert set(names.methods) == {
        "org.example.calc.Add",
        "org.example.calc.Divide",
        "org.example.calc.Origin",
        "org.example.calc.Nothing",
        "org.example.calc.Count",
        "org.example.calc.Points",
        "org.example.calc.Take",
        "org.example.calc.Give",
    }
    assert names.methods["org.example.calc.Divide"].handler == "calc.divide"
    assert names.methods["org.example.calc.Origin"].wrap is None
    assert names.methods["org.example.calc.Add"].wrap == "result"
    assert names.methods["org.example.calc.Count"].wrap == "item"
    assert names.errors["org.example.calc.DivisionByZero"] == "org.example.calc.DivisionByZero"
    assert names.errors["calc.NotFound"] == "org.example.calc.NotFound"
    assert names.interfaces == {"org.example.calc"}


def test_two_methods_with_one_varlink_name_are_refused() -> None:
    class Other(Method[int], name="other.Add"):
        pass

    table = {**handlers(), "other.Add": _handler(Other)}
    with pytest.raises(ValueError, match=r"both map to the varlink name 'org\.example\.calc\.Add'"):
        VarlinkNames.build(table, "org.example.calc")
    renamed = VarlinkNames.build(
        table, "org.example.calc", method_names={"other.Add": "org.example.other.Add"}
    )
    assert renamed.methods["org.example.other.Add"].handler == "other.Add"


# -- decoding ------------------------------------------------------------------------


def test_calls_are_numbered_by_the_codec(names: VarlinkNames) -> None:
    codec = VarlinkCodec(names)
    first = codec.decode(call(method="org.example.calc.Add", parameters={"a": 1, "b": 2}))
    assert first == (REQUEST, 1, "org.example.calc.Add", {"a": 1, "b": 2}, None)
    second = codec.decode(call(method="org.example.calc.Divide", parameters={"a": 1, "b": 2}))
    assert second == (REQUEST, 2, "calc.divide", {"a": 1, "b": 2}, None)
    assert codec.calls_waiting == 2


@pytest.mark.parametrize("params", [{}, {"parameters": None}, {"parameters": {}}])
def test_omitted_null_and_empty_parameters_are_the_same(names: VarlinkNames, params: dict[str, Any]) -> None:
    message = VarlinkCodec(names).decode(call(method="org.example.calc.Origin", **params))
    assert message == (REQUEST, 1, "calc.Origin", {}, None)


def test_oneway_is_a_notification_and_more_opens_a_stream(names: VarlinkNames) -> None:
    codec = VarlinkCodec(names, window=8)
    assert codec.decode(call(method="org.example.calc.Add", oneway=True))[:2] == (REQUEST, None)
    assert codec.decode(call(method="org.example.calc.Count", more=True, parameters={"n": 1}))[4] == 8
    # more on a unary method: a plain call, answered once
    assert codec.decode(call(method="org.example.calc.Add", more=True))[4] is None
    assert codec.calls_waiting == 2


@pytest.mark.parametrize(
    ("message", "why"),
    [
        (b"{nope", "invalid message"),
        (b"[1]", "not a JSON object"),
        (call(method="org.example.calc.Add", extra=1), "unknown key 'extra'"),
        (call(method="org.example.calc.Add", oneway=True, more=True), '"oneway" and "more" together'),
        (call(method="org.example.calc.Add", upgrade=True), '"upgrade" is not supported'),
        (call(method="Add"), "not a qualified varlink method name"),
        (call(method=7), '"method" must be a string'),
        (call(method="org.example.calc.Add", more="yes"), '"more" must be a boolean'),
        (call(method="org.example.calc.Add", parameters=[1]), '"parameters" must be an object'),
    ],
)
def test_what_sd_varlink_refuses_is_invalid(names: VarlinkNames, message: bytes, why: str) -> None:
    codec = VarlinkCodec(names)
    kind, call_id, text = codec.decode(message)
    assert kind == INVALID
    assert call_id == 1
    assert why in text
    reply = json.loads(codec.error(call_id, "unixrpc.ProtocolError", text))
    assert reply == {"error": "org.unixrpc.ProtocolError", "parameters": {"message": text}}
    assert codec.calls_waiting == 0


def test_an_invalid_oneway_call_gets_no_reply(names: VarlinkNames) -> None:
    codec = VarlinkCodec(names)
    kind, call_id, _ = codec.decode(call(method="org.example.calc.Add", oneway=True, extra=1))
    assert (kind, call_id) == (INVALID, None)
    assert codec.frame(codec.error(None, "unixrpc.ProtocolError", "x")) == b""


# -- encoding ------------------------------------------------------------------------


def test_replies(names: VarlinkNames) -> None:
    codec = VarlinkCodec(names)
    for method in ("Add", "Origin", "Nothing", "Count", "Points"):
        codec.decode(call(method=f"org.example.calc.{method}", more=method in ("Count", "Points")))
    assert codec.frame(codec.result(1, b"3")) == b'{"parameters":{"result":3}}\0'
    assert json.loads(codec.result(2, b'{"x":0,"y":0}')) == {"parameters": {"x": 0, "y": 0}}
    assert json.loads(codec.result(3, b"null")) == {"parameters": {}}
    assert json.loads(codec.item(4, b"7")) == {"parameters": {"item": 7}, "continues": True}
    assert json.loads(codec.result(4, b"null")) == {"parameters": {}}
    assert json.loads(codec.item(5, b'{"x":1,"y":2}')) == {"parameters": {"x": 1, "y": 2}, "continues": True}
    assert codec.calls_waiting == 1


def test_errors(names: VarlinkNames) -> None:
    codec = VarlinkCodec(names)

    def error(method: str, code: str, message: str = "m", data: Any = None, **flags: Any) -> Any:
        call_id = codec.decode(call(method=method, **flags))[1]
        return json.loads(codec.error(call_id, code, message, data))

    assert error("org.example.calc.Nope", "unixrpc.MethodNotFound") == {
        "error": "org.varlink.service.MethodNotFound",
        "parameters": {"method": "org.example.calc.Nope"},
    }
    assert error("org.other.Nope", "unixrpc.MethodNotFound") == {
        "error": "org.varlink.service.InterfaceNotFound",
        "parameters": {"interface": "org.other"},
    }
    invalid = [{"loc": ["b"], "msg": "field required", "type": "missing"}]
    assert error("org.example.calc.Add", "unixrpc.InvalidParams", "m", invalid) == {
        "error": "org.varlink.service.InvalidParameter",
        "parameters": {"parameter": "b"},
    }
    assert error("org.example.calc.Add", "unixrpc.PermissionDenied")["error"] == (
        "org.varlink.service.PermissionDenied"
    )
    assert error("org.example.calc.Count", "unixrpc.ProtocolError") == {
        "error": "org.varlink.service.ExpectedMore",
        "parameters": {},
    }
    assert error("org.example.calc.Add", "unixrpc.Busy", "too many") == {
        "error": "org.unixrpc.Busy",
        "parameters": {"message": "too many"},
    }
    assert error("org.example.calc.Divide", "calc.NotFound", "m", {"key": "k"}) == {
        "error": "org.example.calc.NotFound",
        "parameters": {"key": "k"},
    }
    assert error("org.example.calc.Divide", "org.example.calc.DivisionByZero", "m", {"dividend": 1}) == {
        "error": "org.example.calc.DivisionByZero",
        "parameters": {"dividend": 1},
    }
    # an error code nobody declared maps as a method name does
    assert error("org.example.calc.Add", "misc.went_wrong")["error"] == "org.example.calc.WentWrong"


# -- splitting ------------------------------------------------------------------------


def test_messages_are_split_at_nul_and_fds_go_to_the_first_message_starting_in_their_read() -> None:
    splitter = MessageSplitter(max_size=100)
    assert splitter.feed(b'{"a":1}\0{"b"', 0) == [(b'{"a":1}', 0)]
    assert splitter.partial
    # the read that ends {"b"...} and starts {"c"...} brought 2 fds: they are {"c"}'s
    assert splitter.feed(b':2}\0{"c":3}\0{"d":4}\0', 2) == [(b'{"b":2}', 0), (b'{"c":3}', 2), (b'{"d":4}', 0)]
    assert not splitter.partial
    assert splitter.feed(b'{"e"', 1) == []
    assert splitter.feed(b":5}\0", 0) == [(b'{"e":5}', 1)]


def test_a_message_over_the_limit_is_refused_before_it_is_buffered() -> None:
    splitter = MessageSplitter(max_size=10)
    with pytest.raises(MessageTooLargeError, match="over the limit of 10 bytes"):
        splitter.feed(b"x" * 11)
    splitter = MessageSplitter(max_size=10)
    splitter.feed(b"x" * 6)
    with pytest.raises(MessageTooLargeError):
        splitter.feed(b"x" * 6)
    assert MessageSplitter(max_size=10).feed(b"x" * 10 + b"\0") == [(b"x" * 10, 0)]


def test_message_length_after_a_peek() -> None:
    assert message_length(b'{"a":1}\0{"b"') == 8
    assert message_length(b'{"a":1') is None


# -- a real ServerConnection with the varlink codec ---------------------------------------


def connection(**limits: Any) -> tuple[ServerConnection, VarlinkCodec]:
    rules = ServerRules(handlers(), **limits)
    codec = VarlinkCodec(
        VarlinkNames.build(rules.handlers, "org.example.calc"), window=rules.max_stream_window
    )
    return ServerConnection(rules, 1, peer_pid=123, peer_uid=1000, codec=codec), codec


def feed(core: ServerConnection, data: bytes, fds: list[int] | None = None) -> list[Any]:
    """*data* as one read (with *fds*) into *core*: the events."""
    splitter = MessageSplitter()
    events = []
    if fds:
        core.receive_fds(fds)
    for body, nfds in splitter.feed(data, len(fds or ())):
        events.append(core.receive_frame(wire.RawFrame(body, nfds)))
    return events


def output(core: ServerConnection) -> list[Any]:
    """Every reply queued, decoded (and reported written)."""
    replies = []
    for chunk in core.take_output():
        data = chunk if isinstance(chunk, bytes) else chunk.data
        replies.extend(json.loads(part) for part in data.split(b"\0") if part)
        core.written(chunk)
    return replies


def test_a_connection_answers_varlink_calls() -> None:
    core, _ = connection()
    (event,) = feed(core, call(method="org.example.calc.Add", parameters={"a": 1, "b": 2}) + b"\0")
    assert isinstance(event, ServerCall)
    assert event.request == Add(a=1, b=2)
    core.finish(event, 3)
    assert output(core) == [{"parameters": {"result": 3}}]
    (event,) = feed(core, call(method="org.example.calc.Origin") + b"\0")
    core.finish(event, Point(x=0, y=0))
    assert output(core) == [{"parameters": {"x": 0, "y": 0}}]


def test_a_connection_refuses_in_varlink_terms() -> None:
    core, _ = connection()
    data = b"\0".join(
        [
            call(method="org.example.calc.Nope"),
            call(method="org.example.calc.Add", parameters={"a": 1}),
            call(method="org.example.calc.Count", parameters={"n": 1}),
            call(method="org.example.calc.Add", bogus=True),
            b"",
        ]
    )
    assert feed(core, data) == [None, None, None, None]
    assert [reply["error"] for reply in output(core)] == [
        "org.varlink.service.MethodNotFound",
        "org.varlink.service.InvalidParameter",
        "org.varlink.service.ExpectedMore",
        "org.unixrpc.ProtocolError",
    ]
    assert core.closing is None  # the connection goes on


def test_a_more_call_streams_items_then_ends_and_oneway_gets_nothing() -> None:
    core, _ = connection()
    (stream,) = feed(core, call(method="org.example.calc.Count", more=True, parameters={"n": 2}) + b"\0")
    assert isinstance(stream, ServerCall)
    assert stream.window is not None
    for n in range(2):
        assert core.stream_step(stream) == "item"
        core.item(stream, n)
    core.finish(stream, None)
    assert output(core) == [
        {"parameters": {"item": 0}, "continues": True},
        {"parameters": {"item": 1}, "continues": True},
        {"parameters": {}},
    ]
    (note,) = feed(
        core, call(method="org.example.calc.Add", oneway=True, parameters={"a": 1, "b": 1}) + b"\0"
    )
    assert isinstance(note, ServerCall)
    assert note.call_id is None
    core.finish(note, 2)
    assert output(core) == []


def test_an_error_of_the_authorize_hook_and_a_typed_error() -> None:
    core, _ = connection()
    (first,) = feed(core, call(method="org.example.calc.Add", parameters={"a": 1, "b": 1}) + b"\0")
    assert not core.authorized(first, PermissionDeniedError("no"))
    (second,) = feed(core, call(method="org.example.calc.Divide", parameters={"a": 1, "b": 0}) + b"\0")

    core.finish(second, raised=DivisionByZero(dividend=1))
    assert output(core) == [
        {"error": "org.varlink.service.PermissionDenied", "parameters": {}},
        {"error": "org.example.calc.DivisionByZero", "parameters": {"dividend": 1}},
    ]


def test_descriptors_both_ways_by_index() -> None:
    core, _ = connection()
    read, write = os.pipe()
    os.write(write, b"hi")
    os.close(write)
    (event,) = feed(core, call(method="org.example.calc.Take", parameters={"fd": 0}) + b"\0", [read])
    assert isinstance(event, ServerCall)
    assert os.read(event.request.fd.fileno(), 2) == b"hi"
    core.finish(event, "ok")
    assert output(core) == [{"parameters": {"result": "ok"}}]
    assert not _is_open(read)  # released with the reply
    (give,) = feed(core, call(method="org.example.calc.Give") + b"\0")
    out_read, out_write = os.pipe()
    core.finish(give, FileDescriptor.transfer(out_read))
    (chunk,) = core.take_output()
    assert not isinstance(chunk, bytes)
    assert chunk.data == b'{"parameters":{"result":0}}\0'
    assert chunk.fileno_list() == [out_read]
    core.written(chunk)
    assert not _is_open(out_read)
    os.close(out_write)


def test_a_protocol_failure_of_the_stream_is_not_sent_as_a_reply() -> None:
    core, _ = connection()
    close = core.fatal("a message of 20 bytes is over the limit")
    assert close.reason.startswith("a message")
    assert output(core) == []


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True
