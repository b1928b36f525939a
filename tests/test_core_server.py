"""The server core (``_core/server.py``) with frames in and actions out: no
sockets, no event loop, no threads. Every rule the module header lists is
driven here directly; the engines' behaviour over real sockets is tested in
test_server.py and the other server suites."""

from __future__ import annotations

import json
import logging
import os
import struct
from collections.abc import Iterator
from typing import Any

import pytest

from unixrpc import FD, FileDescriptor, Method, StreamMethod
from unixrpc._core import wire
from unixrpc._core.server import (
    ITEM,
    NO_CREDIT,
    Admission,
    Cancel,
    Close,
    FdFrame,
    Grant,
    Handler,
    ServerCall,
    ServerConnection,
    ServerRules,
)
from unixrpc.methods import method_spec


class Add(Method[int]):
    a: int
    b: int


class Count(StreamMethod[int]):
    n: int


class Take(Method[str]):
    fd: FD


class Give(Method[FD]):
    pass


def _handler(cls: type[Any]) -> Handler:
    return Handler(method_spec(cls), lambda request: None, wants_context=False, is_async=True)


def make(**limits: Any) -> tuple[ServerConnection, ServerRules]:
    handlers = {cls.__rpc_spec__.name: _handler(cls) for cls in (Add, Count, Take, Give)}
    rules = ServerRules(handlers, **limits)
    return ServerConnection(rules, 1, peer_pid=123, peer_uid=1000), rules


def frame(nfds: int = 0, **envelope: Any) -> wire.RawFrame:
    return wire.RawFrame(json.dumps(envelope).encode(), nfds)


def output(core: ServerConnection) -> list[dict[str, Any]]:
    """Every frame queued, decoded (and reported written)."""
    frames = []
    for chunk in core.take_output():
        data = chunk if isinstance(chunk, bytes) else chunk.data
        while data:
            size, _ = struct.unpack(">IH", data[:6])
            frames.append(json.loads(data[6 : 6 + size]))
            data = data[6 + size :]
        core.written(chunk)
    return frames


def pipe_fds(count: int) -> list[int]:
    fds = []
    for _ in range(count):
        r, w = os.pipe()
        os.close(w)
        fds.append(r)
    return fds


def is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


@pytest.fixture
def core() -> Iterator[ServerConnection]:
    connection, _ = make()
    yield connection
    connection.close()


# -- routing by kind -----------------------------------------------------------------------------


def test_a_request_starts_a_call_and_its_result_retires_it(core: ServerConnection) -> None:
    call = core.receive_frame(frame(id=7, method="Add", params={"a": 1, "b": 2}))
    assert isinstance(call, ServerCall)
    assert (call.call_id, call.request) == (7, Add(a=1, b=2))
    assert len(core) == 1
    assert core.busy()
    core.finish(call, 3)
    assert len(core) == 0
    assert output(core) == [{"id": 7, "result": 3}]
    assert not core.busy()


def test_a_notification_starts_a_call_that_gets_no_reply(core: ServerConnection) -> None:
    call = core.receive_frame(frame(method="Add", params={"a": 1, "b": 2}))
    assert isinstance(call, ServerCall)
    assert call.call_id is None
    core.finish(call, 3)
    assert output(core) == []
    assert len(core) == 0


def test_a_cancel_reaches_the_call_once(core: ServerConnection) -> None:
    call = core.receive_frame(frame(id=1, method="Add", params={"a": 1, "b": 2}))
    event = core.receive_frame(frame(cancel=1))
    assert isinstance(event, Cancel)
    assert event.call is call
    assert core.receive_frame(frame(cancel=1)) is None  # already asked
    assert core.receive_frame(frame(cancel=99)) is None  # no such call
    assert isinstance(call, ServerCall)
    core.stop(call)
    assert output(core) == [
        {"id": 1, "error": {"code": "unixrpc.Cancelled", "message": "call cancelled by the client"}}
    ]
    core.finish(call, 3)  # the handler's late outcome changes nothing
    assert output(core) == []


def test_messages_a_client_may_not_send_are_answered_and_the_connection_goes_on(
    core: ServerConnection,
) -> None:
    assert core.receive_frame(frame(id=1, result=3)) is None
    assert core.receive_frame(wire.RawFrame(b"not json")) is None
    assert core.receive_frame(frame(id=5, method=7)) is None
    replies = output(core)
    assert [reply["error"]["code"] for reply in replies] == ["unixrpc.ProtocolError"] * 3
    assert "may not send result" in replies[0]["error"]["message"]
    assert replies[1]["id"] is None
    assert replies[2]["id"] == 5
    assert isinstance(core.receive_frame(frame(id=2, method="Add", params={"a": 1, "b": 1})), ServerCall)


# -- refusals -----------------------------------------------------------------------------------


def test_refusals_in_order(core: ServerConnection) -> None:
    first = core.receive_frame(frame(id=1, method="Add", params={"a": 1, "b": 2}))
    assert isinstance(first, ServerCall)
    assert core.receive_frame(frame(id=1, method="Add", params={"a": 1, "b": 2})) is None
    assert core.receive_frame(frame(id=2, method="Nope", params={})) is None
    assert core.receive_frame(frame(id=3, method="Count", params={"n": 1})) is None
    assert core.receive_frame(frame(id=4, method="Add", params={"a": 1, "b": 2}, stream=3)) is None
    assert core.receive_frame(frame(id=5, method="Add", params={"a": "x", "b": 2})) is None
    replies = {reply["id"]: reply["error"] for reply in output(core)}
    assert replies[1]["message"] == "call id 1 is already in flight"
    assert replies[2]["code"] == "unixrpc.MethodNotFound"
    assert "Count is a stream method" in replies[3]["message"]
    assert replies[4]["message"] == "Add is not a stream method"
    assert replies[5]["code"] == "unixrpc.InvalidParams"
    assert replies[5]["data"][0]["loc"] == ["a"]
    assert len(core) == 1  # only the first is in flight


def test_too_many_calls_in_flight_and_shutting_down() -> None:
    core, rules = make(max_calls_per_connection=1)
    assert isinstance(core.receive_frame(frame(id=1, method="Add", params={"a": 1, "b": 2})), ServerCall)
    assert core.receive_frame(frame(id=2, method="Add", params={"a": 1, "b": 2})) is None
    rules.stopping = True
    assert core.receive_frame(frame(id=3, method="Add", params={"a": 1, "b": 2})) is None
    codes = [reply["error"]["code"] for reply in output(core)]
    assert codes == ["unixrpc.Busy", "unixrpc.ShuttingDown"]


def test_unknown_params_from_the_wire_are_ignored(core: ServerConnection) -> None:
    call = core.receive_frame(frame(id=1, method="Add", params={"a": 1, "b": 2, "newer": True}))
    assert isinstance(call, ServerCall)
    assert call.request == Add(a=1, b=2)


# -- descriptors --------------------------------------------------------------------------------


def test_descriptors_go_to_the_frame_that_declares_them(core: ServerConnection) -> None:
    fds = pipe_fds(2)
    core.receive_fds(fds)
    call = core.receive_frame(frame(1, id=1, method="Take", params={"fd": 0}))
    assert isinstance(call, ServerCall)
    assert call.request.fd.fileno() == fds[0]
    refused = core.receive_frame(frame(1, id=2, method="Nope", params={}))  # its fd is closed at once
    assert refused is None
    assert not is_open(fds[1])
    assert is_open(fds[0])
    core.finish(call, "ok")
    assert not is_open(fds[0])  # released with the call


def test_a_frame_declaring_descriptors_that_never_came_is_fatal(core: ServerConnection) -> None:
    event = core.receive_frame(frame(2, id=1, method="Add", params={"a": 1, "b": 2}))
    assert isinstance(event, Close)
    assert "declares 2 file descriptors" in event.reason
    assert output(core)[0]["id"] is None
    assert not core.wants_input()
    assert core.receive_frame(frame(id=2, method="Add", params={"a": 1, "b": 2})) is None


def test_descriptors_with_no_frame_or_more_than_a_frame_carries_are_fatal() -> None:
    core, _ = make(max_fds=2)
    fds = pipe_fds(3)
    core.receive_fds(fds)
    assert core.stray_fds(frame_pending=True) is not None  # 3 > 2 for the one frame begun
    assert not any(is_open(fd) for fd in fds)
    other, _ = make()
    more = pipe_fds(1)
    other.receive_fds(more)
    assert other.stray_fds(frame_pending=True) is None  # may belong to the frame begun
    closing = other.stray_fds(frame_pending=False)
    assert isinstance(closing, Close)
    assert "came with no frame" in closing.reason
    assert not is_open(more[0])


def test_a_reply_carrying_a_descriptor_is_one_fd_frame() -> None:
    core, _ = make()
    call = core.receive_frame(frame(id=1, method="Give", params={}))
    assert isinstance(call, ServerCall)
    (fd,) = pipe_fds(1)
    core.finish(call, FileDescriptor.borrow(fd))
    (chunk,) = core.take_output()
    assert isinstance(chunk, FdFrame)
    assert chunk.fileno_list() == [fd]
    assert struct.unpack(">IH", chunk.data[:6])[1] == 1
    core.written(chunk)
    assert is_open(fd)  # borrowed: the handler's to close
    os.close(fd)


# -- streams and credit -------------------------------------------------------------------------


def test_credit_bounds_a_stream_and_a_grant_wakes_it(core: ServerConnection) -> None:
    call = core.receive_frame(frame(id=1, method="Count", params={"n": 3}, stream=1))
    assert isinstance(call, ServerCall)
    assert core.stream_step(call) == ITEM
    core.item(call, 0)
    assert core.stream_step(call) == NO_CREDIT  # the window is used up: wait for a Grant
    event = core.receive_frame(frame(credit=1, n=2))
    assert isinstance(event, Grant)
    assert event.call is call
    assert core.stream_step(call) == ITEM
    assert core.stream_step(call) == ITEM
    core.item(call, 1)
    core.finish(call)
    assert output(core) == [{"id": 1, "item": 0}, {"id": 1, "item": 1}, {"id": 1, "result": None}]


def test_a_notification_of_a_stream_runs_and_its_items_are_discarded(
    core: ServerConnection, caplog: pytest.LogCaptureFixture
) -> None:
    call = core.receive_frame(frame(method="Count", params={"n": 3}))
    assert isinstance(call, ServerCall)
    assert call.window is None
    for i in range(3):
        assert core.stream_step(call) == ITEM  # never waits
        core.item(call, i)
    core.finish(call)
    assert output(core) == []
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_an_item_of_the_wrong_type_is_an_internal_error(core: ServerConnection) -> None:
    call = core.receive_frame(frame(id=1, method="Count", params={"n": 1}, stream=4))
    assert isinstance(call, ServerCall)
    with pytest.raises(Exception, match="returned an invalid item"):
        core.item(call, "not an int")


# -- answered or fatal, encoding ----------------------------------------------------------------


def test_failures_become_typed_errors(core: ServerConnection) -> None:
    calls = [core.receive_frame(frame(id=i, method="Add", params={"a": 1, "b": 2})) for i in (1, 2, 3)]
    assert all(isinstance(call, ServerCall) for call in calls)
    core.finish(calls[0], raised=ValueError("secret"))  # type: ignore[arg-type]
    core.finish(calls[1], "not an int")  # type: ignore[arg-type]
    assert core.authorized(calls[2], False) is False  # type: ignore[arg-type]
    errors = {reply["id"]: reply["error"] for reply in output(core)}
    assert errors[1] == {"code": "unixrpc.InternalError", "message": "handler of Add raised ValueError"}
    assert "returned an invalid result" in errors[2]["message"]
    assert errors[3]["code"] == "unixrpc.PermissionDenied"
    assert "uid 1000" in errors[3]["message"]


def test_a_reply_over_the_frame_limit_becomes_an_error_for_the_same_call() -> None:
    core, _ = make(max_frame_size=64)
    call = core.receive_frame(frame(id=9, method="Add", params={"a": 1, "b": 2}))
    assert isinstance(call, ServerCall)
    core.finish(call, raised=Exception("x" * 200))
    (reply,) = output(core)
    assert reply["id"] == 9
    assert reply["error"]["code"] == "unixrpc.InternalError"


# -- output bound, the end --------------------------------------------------------------------------


def test_queued_output_over_the_bound_stops_input_until_taken() -> None:
    core, _ = make(max_unsent=100)
    for i in range(10):  # refusals are queued bytes, not tasks
        core.receive_frame(frame(id=i, method="Nope", params={}))
    assert not core.wants_input()
    chunks = core.take_output()
    assert core.wants_input()  # taken by a writer: a cancel behind it can be read
    assert core.busy()  # but not written yet
    for chunk in chunks:
        core.written(chunk)
    assert not core.busy()


def test_a_failed_write_drops_later_output(core: ServerConnection) -> None:
    call = core.receive_frame(frame(id=1, method="Add", params={"a": 1, "b": 2}))
    (chunk,) = [*core.take_output()] or [b""]
    core.written(chunk, ok=False)
    assert isinstance(call, ServerCall)
    core.finish(call, 3)
    assert core.take_output() == []
    assert core.output_failed


def test_hang_up_cancels_calls_but_not_notifications(core: ServerConnection) -> None:
    call = core.receive_frame(frame(id=1, method="Add", params={"a": 1, "b": 2}))
    note = core.receive_frame(frame(method="Add", params={"a": 1, "b": 2}))
    assert core.hang_up() == [call]
    assert isinstance(note, ServerCall)
    assert not note.cancel_requested


def test_shutdown_ends_streams_then_cuts_off_what_is_left(core: ServerConnection) -> None:
    stream = core.receive_frame(frame(id=1, method="Count", params={"n": 9}, stream=2))
    unary = core.receive_frame(frame(id=2, method="Add", params={"a": 1, "b": 2}))
    assert core.end_streams() == [stream]
    assert isinstance(stream, ServerCall)
    core.stop(stream)
    assert core.cut_off() == [unary]
    replies = output(core)
    assert [reply["id"] for reply in replies] == [1, 2, None]
    assert all(reply["error"]["code"] == "unixrpc.ShuttingDown" for reply in replies)
    assert "stream was ended" in replies[0]["error"]["message"]
    assert "grace period" in replies[1]["error"]["message"]


def test_an_abandoned_call_keeps_its_descriptors_until_its_handler_returns(core: ServerConnection) -> None:
    (fd,) = pipe_fds(1)
    core.receive_fds([fd])
    call = core.receive_frame(frame(1, id=1, method="Take", params={"fd": 0}))
    assert isinstance(call, ServerCall)
    core.receive_frame(frame(cancel=1))
    core.stop(call, running=True)  # answered now: a thread runs on
    assert output(core)[0]["error"]["code"] == "unixrpc.Cancelled"
    assert is_open(fd)
    core.finish(call, "late")  # the thread returned
    assert not is_open(fd)
    assert output(core) == []


def test_admission_counts_per_uid() -> None:
    admission = Admission(max_connections=3, per_uid=2)
    assert admission.admit(1000, 1) is None
    assert admission.admit(1000, 2) is None
    refusal = admission.admit(1000, 3)
    assert refusal is not None
    assert "from uid 1000 (limit 2 per uid)" in refusal
    assert admission.admit(0, 4) is None
    assert admission.admit(0, 5) == "too many connections (limit 3)"
    admission.release(1000)
    assert admission.admit(1000, 6) is None


def test_one_debug_line_per_call(caplog: pytest.LogCaptureFixture) -> None:
    core, _ = make()
    with caplog.at_level(logging.DEBUG, logger="unixrpc.server"):
        call = core.receive_frame(frame(id=4, method="Add", params={"a": 1, "b": 2}))
        assert isinstance(call, ServerCall)
        core.finish(call, 3)
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert len(lines) == 1
    assert lines[0].startswith("call Add id=4 from pid 123 uid 1000: ok in ")


def test_protocol_violation_warnings_are_rate_limited(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import unixrpc._core.server.connection as core_module
    from unixrpc._ratelog import RateLimitedLog

    # a fresh limiter: earlier tests of this run may have spent the current burst
    fresh = RateLimitedLog(core_module.logger, logging.WARNING, "protocol violations")
    monkeypatch.setattr(core_module, "_warn", fresh)
    core, _ = make()
    with caplog.at_level(logging.WARNING, logger="unixrpc.server"):
        for _ in range(500):
            core.receive_frame(wire.RawFrame(b"garbage"))
    assert 1 <= len([r for r in caplog.records if r.levelno == logging.WARNING]) <= 12
    assert len(output(core)) == 500  # every one still answered
