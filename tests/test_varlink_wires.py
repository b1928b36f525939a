"""The core's rules of a shared socket (``_core/server/wires.py`` and
``ServerConnection.choose_wire``/``waiting_turn``/``frames_read``), bytes
in and decisions out, no sockets: which wire a first byte means, varlink
framing, which message a read's descriptors belong to (systemd issue
43823), and one call at a time."""

from __future__ import annotations

import os
from typing import Any

import pytest

from unixrpc import FD, Method
from unixrpc._core import wire
from unixrpc._core.server import Handler, ServerCall, ServerConnection, ServerRules
from unixrpc._core.server.varlink import VarlinkNames
from unixrpc._core.server.wires import (
    UNIXRPC,
    VARLINK,
    MessageFraming,
    ReadFds,
    check_shared,
    wire_of,
)
from unixrpc.exceptions import OversizedFrameError
from unixrpc.methods import method_spec


class Add(Method[int], name="org.example.calc.Add"):
    a: int
    b: int


class Take(Method[str], name="org.example.calc.Take"):
    fd: FD


def test_the_first_byte_decides_and_never_guesses() -> None:
    limit = wire.DEFAULT_MAX_FRAME_SIZE  # 16 MiB: a unixrpc frame's first byte is 0x00
    varlink_bytes = {byte for byte in range(256) if wire_of(byte, limit) == VARLINK}
    assert varlink_bytes == set(b"{ \t\r\n")
    for byte in range(256):
        # a unixrpc frame under the limit begins with length >> 24: never a varlink byte
        if byte << 24 <= limit:
            assert wire_of(byte, limit) == UNIXRPC
    # with frames up to 512 MiB a frame may begin with a tab, newline or space: those are unixrpc then
    assert wire_of(ord(" "), 512 * 1024 * 1024) == UNIXRPC
    assert wire_of(ord("{"), 512 * 1024 * 1024) == VARLINK
    check_shared((ord("{") << 24) - 1)
    with pytest.raises(ValueError, match="can begin with '\\{'"):
        check_shared(ord("{") << 24)


def test_framing_splits_at_nul_and_refuses_an_oversized_message_before_its_end() -> None:
    framing = MessageFraming(max_frame_size=10)
    buffer = b'{"a":1}\0{"b":2}\0{"c"'
    assert framing.split_frames(buffer, 0, len(buffer)) == (
        [wire.RawFrame(b'{"a":1}'), wire.RawFrame(b'{"b":2}')],
        16,
    )
    assert framing.locate_frame(buffer, 16, len(buffer), 16) is None
    with pytest.raises(OversizedFrameError):
        framing.locate_frame(b"x" * 11, 0, 11, 0)
    with pytest.raises(OversizedFrameError):
        framing.resync(b"x" * 11, 0, 11)


def frames(*bodies: bytes) -> list[wire.RawFrame]:
    return [wire.RawFrame(body) for body in bodies]


def counts(result: list[wire.RawFrame]) -> list[int]:
    return [frame.nfds for frame in result]


def test_descriptors_of_a_joined_read_go_to_the_last_message_starting_in_it() -> None:
    # systemd issue 43823: a oneway call without descriptors, then a call with one, in one read
    fds = ReadFds()
    fds.took(1)
    assert counts(fds.assign(frames(b"A", b"B"), partial=False)) == [0, 1]


def test_descriptors_of_a_message_still_arriving_wait_for_its_frame() -> None:
    fds = ReadFds()
    fds.took(2)
    assert counts(fds.assign(frames(b"A"), partial=True)) == [0]  # B began in this read
    assert counts(fds.assign([], partial=True)) == []
    assert counts(fds.assign(frames(b"B", b"C"), partial=False)) == [2, 0]


def test_a_read_in_which_no_message_starts_gives_them_to_the_one_in_progress() -> None:
    fds = ReadFds()
    assert counts(fds.assign([], partial=True)) == []  # A begins
    fds.took(1)
    assert counts(fds.assign(frames(b"A"), partial=False)) == [1]
    fds.took(1)
    assert counts(fds.assign([], partial=True)) == []  # B begins, with one
    fds.took(1)
    assert counts(fds.assign(frames(b"B"), partial=False)) == [2]  # and one more with its tail


def test_a_read_that_ends_one_message_and_starts_another_one_gives_them_to_the_new_one() -> None:
    fds = ReadFds()
    assert fds.assign([], partial=True) == []  # A begins
    fds.took(1)
    assert counts(fds.assign(frames(b"A", b"B"), partial=False)) == [0, 1]


def rules() -> ServerRules:
    handlers: dict[str, Handler] = {}

    async def add(request: Add) -> int:
        return request.a + request.b

    def take(request: Take) -> str:
        return os.read(request.fd.fileno(), 10).decode()

    for cls, function in ((Add, add), (Take, take)):
        spec = method_spec(cls)
        handlers[spec.name] = Handler(spec, function, False, False)
    result = ServerRules(handlers)
    result.varlink = VarlinkNames.build(handlers, "org.example.calc")
    return result


def call(method: str, **fields: Any) -> bytes:
    import json

    return json.dumps({"method": f"org.example.calc.{method}", **fields}).encode()


def test_a_connection_chooses_its_wire_from_the_first_byte() -> None:
    core = ServerConnection(rules())
    assert core.choose_wire(0) == UNIXRPC
    assert not core.waiting_turn()
    off = rules()
    off.varlink = None
    assert ServerConnection(off).choose_wire(ord("{")) == UNIXRPC
    assert ServerConnection(rules()).choose_wire(ord("{")) == VARLINK


def test_varlink_calls_take_turns_and_the_engine_is_told_when_the_turn_comes() -> None:
    core = ServerConnection(rules())
    core.choose_wire(ord("{"))
    turns: list[int] = []
    core.watch_turns(lambda: turns.append(len(core)))
    first = core.receive_frame(wire.RawFrame(call("Add", parameters={"a": 1, "b": 2})))
    assert isinstance(first, ServerCall)
    assert core.waiting_turn()
    assert core.receive_control(wire.RawFrame(call("Add"))) is False  # no cancel or credit to take early
    core.finish(first, 3)
    assert turns == [0]
    assert not core.waiting_turn()


def test_descriptors_reach_the_call_the_read_rule_says() -> None:
    core = ServerConnection(rules())
    core.choose_wire(ord("{"))
    read, write = os.pipe()
    os.write(write, b"hi")
    os.close(write)
    core.receive_fds([read])  # one read: a oneway Add, then Take with its descriptor
    got = core.frames_read(
        [
            wire.RawFrame(call("Add", parameters={"a": 1, "b": 1}, oneway=True)),
            wire.RawFrame(call("Take", parameters={"fd": 0})),
        ],
        partial=False,
    )
    assert counts(got) == [0, 1]
    note = core.receive_frame(got[0])
    assert isinstance(note, ServerCall)
    core.finish(note, 2)
    take = core.receive_frame(got[1])
    assert isinstance(take, ServerCall)
    assert os.read(take.request.fd.fileno(), 2) == b"hi"
    core.finish(take, "hi")
    assert core.take_output() == [b'{"parameters":{"result":"hi"}}\0']


def test_a_server_whose_wires_or_names_are_ambiguous_serves_unixrpc_only(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from unixrpc import Server
    from unixrpc.server.varlink_face import build_face

    class GetA(Method[int], name="a.Get"):
        pass

    class GetB(Method[int], name="b.Get"):
        pass

    def make(**options: Any) -> Server:
        server = Server(name="org.example.calc", **options)
        server.add_method(GetA, lambda request: 1)
        server.add_method(GetB, lambda request: 2)
        return server

    with caplog.at_level("WARNING", logger="unixrpc.server"):
        assert build_face(make(), wire.DEFAULT_MAX_FRAME_SIZE) is None  # both are org.example.calc.Get
        assert "both map to the varlink name 'org.example.calc.Get'" in caplog.text
        server = Server()
        assert build_face(server, 1 << 31) is not None  # for listeners of varlink alone
        assert "can begin with '{'" in caplog.text
        assert not server._rules.varlink_shared
    with pytest.raises(ValueError, match="both map"):
        build_face(make(varlink_interface="org.example.calc"), wire.DEFAULT_MAX_FRAME_SIZE)
    off = Server(varlink=False)
    assert build_face(off, wire.DEFAULT_MAX_FRAME_SIZE) is not None  # for listeners of varlink alone
    assert not off._rules.varlink_shared
    face = build_face(Server(name="not an interface"), wire.DEFAULT_MAX_FRAME_SIZE)
    assert face is not None
    assert face.names.interface == "org.unixrpc.app"
    assert "org.varlink.service.GetInfo" in face.names.methods
