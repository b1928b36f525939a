"""The server core's clocks, budget and read facts (``_core/server.py``),
with a fake clock and no sockets: frame_timeout and connection_idle_timeout
as ``next_deadline``/``on_timer``, the server-wide memory budget charged for
received bytes and for unsent output, what a failed read means, and the
stream window cap. Both engines only feed these facts in (tests on real
sockets: test_reliability.py, test_reliability_round3.py)."""

from __future__ import annotations

import os
from typing import Any

import pytest

from test_core_server import _handler, frame, make, output
from unixrpc import FileDescriptor, Method
from unixrpc._core.server import ITEM, Close, ServerCall, ServerConnection, ServerRules
from unixrpc.exceptions import (
    AncillaryDataTruncatedError,
    ConnectionBrokenError,
    DeserializeError,
    StreamProtocolParseError,
)

KiB = 1024


def test_a_frame_begun_must_arrive_whole_within_frame_timeout() -> None:
    core, _ = make(frame_timeout=5.0)
    assert core.received(100.0, partial=True) is None
    assert core.next_deadline(101.0) == 105.0
    core.received(103.0, partial=True)  # more bytes of the same frame: the clock keeps running
    assert core.next_deadline(103.0) == 105.0
    assert core.on_timer(104.9) is None
    closed = core.on_timer(105.0)
    assert isinstance(closed, Close)
    assert "not finished within 5.0 s" in closed.reason
    (notice,) = output(core)  # the peer is told why
    assert notice["id"] is None
    assert "not finished within" in notice["error"]["message"]
    assert core.next_deadline(106.0) is None  # closing: no more timers


def test_a_frame_finished_stops_the_frame_clock() -> None:
    core, _ = make(frame_timeout=5.0)
    core.received(100.0, partial=True)
    core.received(101.0, partial=False)
    assert core.next_deadline(104.0) is None  # no idle timeout configured
    assert core.on_timer(200.0) is None


def test_the_idle_clock_starts_when_the_connection_becomes_idle() -> None:
    """One rule for both engines: with nothing in flight and nothing to
    write, a connection silent for ``connection_idle_timeout`` is closed;
    the clock starts at the later of its last read and the moment its last
    call was answered and written (not when its calls began)."""
    core, _ = make(connection_idle_timeout=2.0)
    core.received(10.0, partial=False)
    call = core.receive_frame(frame(id=1, method="Add", params={"a": 1, "b": 2}))
    assert isinstance(call, ServerCall)
    assert core.next_deadline(11.0) is None  # a call in flight: never idle
    assert core.on_timer(50.0) is None
    core.finish(call, 3)
    assert core.next_deadline(51.0) is None  # its reply not written yet
    output(core)
    assert core.next_deadline(52.0) == 54.0  # idle since it was written
    assert core.on_timer(53.9) is None
    closed = core.on_timer(54.0)
    assert isinstance(closed, Close)
    assert "idle for 2.0 s" in closed.reason
    assert output(core) == []  # an idle close is silent


def test_a_timer_acting_on_an_old_deadline_closes_nothing() -> None:
    """A waiter that computed its deadline before another read a request
    (the threads engine's defect of issue 21 item 8): on_timer looks again."""
    core, _ = make(connection_idle_timeout=2.0)
    core.received(10.0, partial=False)
    assert core.next_deadline(10.0) == 12.0
    core.receive_frame(frame(id=1, method="Add", params={"a": 1, "b": 2}))  # read by another thread
    assert core.on_timer(12.0) is None
    assert core.closing is None


def test_bytes_received_restart_the_idle_clock() -> None:
    core, _ = make(connection_idle_timeout=2.0)
    core.received(10.0, partial=False)
    core.received(11.5, partial=False)
    assert core.next_deadline(11.5) == 13.5


def test_received_bytes_are_charged_to_the_budget_and_released_on_close() -> None:
    """Charged in steps of 64 KiB, rounded down (small replies never touch
    the shared budget): 640 KiB held is charged, and a second connection of
    the same server that grows past the 1 MiB budget is closed."""
    core, rules = make(max_buffered_bytes=1024 * KiB)
    assert core.received(1.0, partial=True, receive_buffer=640 * KiB) is None
    assert rules.memory.total == 640 * KiB
    other = ServerConnection(rules, 2)  # a second connection of the same server
    closed = other.received(1.0, partial=True, receive_buffer=640 * KiB)  # 1,280 KiB > 1 MiB: it goes
    assert isinstance(closed, Close)
    assert f"budget of {1024 * KiB} bytes" in closed.reason
    other.close()
    core.close()
    assert rules.memory.total == 0


class Big(Method[str]):
    size: int


def test_unsent_output_is_charged_and_a_connection_whose_output_overflows_is_closed() -> None:
    """Issue 21 item 3: replies the peer does not read count against the
    server-wide budget; the connection that takes it over is closed with a
    reason, its queued output dropped, and what its calls still produce is
    dropped (nothing grows any more)."""
    rules = ServerRules({"Big": _handler(Big)}, max_buffered_bytes=256 * KiB)
    core = ServerConnection(rules, 1)
    calls = []
    for call_id in range(3):
        call = core.receive_frame(frame(id=call_id, method="Big", params={"size": 100 * KiB}))
        assert isinstance(call, ServerCall)
        calls.append(call)
    core.finish(calls[0], "x" * (100 * KiB))
    held = rules.memory.total
    assert held == 64 * KiB  # 100 KiB unsent, charged in 64 KiB steps
    others = 256 * KiB - held
    rules.memory.total += others  # other connections hold the rest of the budget
    core.finish(calls[1], "x" * (100 * KiB))  # 200 KiB unsent: over, closed
    assert core.closing is not None
    assert f"budget of {256 * KiB} bytes" in core.closing
    core.finish(calls[2], "x" * (100 * KiB))  # produced after: dropped
    frames = output(core)
    assert len(frames) == 1
    assert frames[0]["id"] is None
    assert f"budget of {256 * KiB} bytes" in frames[0]["error"]["message"]
    rules.memory.total -= others
    core.close()
    assert rules.memory.total == 0


@pytest.mark.parametrize(
    ("exc", "told", "words"),
    [
        (
            StreamProtocolParseError(DeserializeError("frame of 9 bytes is over the limit")),
            True,
            "over the limit",
        ),
        (AncillaryDataTruncatedError("control data truncated", bufsize=64, closed_fds=0), False, "truncated"),
        (ConnectionBrokenError("peer closed"), False, "peer closed"),
    ],
)
def test_what_a_failed_read_means(exc: Any, told: bool, words: str) -> None:
    core, _ = make()
    closed = core.read_failed(exc)
    assert isinstance(closed, Close)
    assert words in closed.reason
    frames = output(core)
    assert bool(frames) is told
    assert core.closing is not None
    assert not core.wants_input()


def test_a_stream_window_over_the_server_limit_is_refused_and_credit_is_capped() -> None:
    core, _ = make(max_stream_window=8)
    assert core.receive_frame(frame(id=1, method="Count", params={"n": 1}, stream=9)) is None
    (refusal,) = output(core)
    assert refusal["id"] == 1
    assert "over this server's limit of 8" in refusal["error"]["message"]
    call = core.receive_frame(frame(id=2, method="Count", params={"n": 1}, stream=8))
    assert isinstance(call, ServerCall)
    core.receive_frame(frame(credit=2, n=2**62))
    assert call.credit == 8  # never more outstanding than the cap


def test_output_full_stops_a_stream_until_the_peer_reads() -> None:
    core, _ = make(max_unsent=100)
    call = core.receive_frame(frame(id=1, method="Count", params={"n": 1}, stream=1000 // 2))
    assert isinstance(call, ServerCall)
    while not core.output_full():
        assert core.stream_step(call) == ITEM
        core.item(call, 1)
    output(core)  # the peer read it
    assert not core.output_full()


def test_descriptors_returned_for_a_call_already_answered_are_closed() -> None:
    """Issue 21 item 5: a handler that returns ``FileDescriptor.transfer(fd)``
    for a call that was cancelled (or whose peer left) while it ran: the
    descriptor is closed, as a frame that could not be sent closes its own."""
    core, _ = make()
    call = core.receive_frame(frame(id=1, method="Give", params={}))
    assert isinstance(call, ServerCall)
    core.stop(call, running=True)  # answered now; the handler runs on
    r, w = os.pipe()
    os.close(w)
    core.finish(call, FileDescriptor.transfer(r))  # what it returned, too late
    with pytest.raises(OSError, match="Bad file descriptor"):
        os.fstat(r)
    (reply,) = output(core)
    assert reply["error"]["code"] == "unixrpc.Cancelled"


def test_the_fatal_error_goes_out_after_the_replies_of_calls_read_before_it() -> None:
    """Issue 21 item 11: a frame that ends the connection, read after calls
    still in flight: their replies go out first, then the ``"id": null``
    error (before, the threads engine sent the error first, and the client
    gave up on calls the server went on to answer)."""
    core, _ = make()
    call = core.receive_frame(frame(id=1, method="Add", params={"a": 1, "b": 2}))
    assert isinstance(call, ServerCall)
    core.read_failed(StreamProtocolParseError(DeserializeError("frame of 9 bytes is over the limit")))
    assert output(core) == []  # held back: a call is in flight
    core.finish(call, 3)
    replies = output(core)
    assert replies[0] == {"id": 1, "result": 3}
    assert replies[1]["id"] is None
    assert "over the limit" in replies[1]["error"]["message"]


def test_a_stream_stopped_by_its_cancel_ends_with_the_cancels_error() -> None:
    """A stream whose producer stopped because ``stream_step`` said STOP
    (cancelled, here by shutdown) before the engine's cancellation reached
    it: it ends with ``ServerShuttingDownError``, never a normal end, so a
    client knows to resume (found by the reconnect tests on the anyio engine)."""
    core, _ = make()
    call = core.receive_frame(frame(id=1, method="Count", params={"n": 3}, stream=4))
    assert isinstance(call, ServerCall)
    (ended,) = core.end_streams()
    assert ended is call
    assert core.stream_step(call) == "stop"
    core.finish(call)  # the generator was closed and the engine reports it ended
    (reply,) = output(core)
    assert reply["id"] == 1
    assert reply["error"]["code"] == "unixrpc.ShuttingDown"


def test_a_write_the_peer_does_not_take_within_write_timeout_closes_the_connection() -> None:
    """The engine waits ``write_timeout`` for a write the socket could not
    take at once, then reports it: the core closes the connection with the
    reason (logged, not sent: the peer does not read), drops what is queued
    and what its calls still produce."""
    core, rules = make(write_timeout=3.0, max_unsent=64 * KiB)
    assert core.write_timeout == 3.0
    count = core.receive_frame(frame(id=1, method="Count", params={"n": 10**6}, stream=16))
    assert isinstance(count, ServerCall)
    in_flight = core.take_output()  # (nothing yet) the writer takes what is queued
    for _ in range(16):
        assert core.stream_step(count) == ITEM
        core.item(count, 7)
    in_flight = core.take_output()
    assert in_flight
    assert core.unsent > 0
    core.item(count, 8)  # queued behind the blocked write
    closed = core.write_timed_out()  # (logged, rate-limited: the engine tests read the log)
    assert "did not read its replies for 3.0 s" in closed.reason
    for chunk in in_flight:  # the engine gives the write up
        core.written(chunk, ok=False)
    assert core.closing is not None
    assert not core.has_output()
    assert core.unsent == 0
    core.item(count, 9)  # what a call still produces is dropped
    assert not core.has_output()
    assert [call.call_id for call in core.hang_up()] == [1]
    assert rules.memory.total == 0


def test_without_a_write_timeout_the_engine_waits_for_ever() -> None:
    core, _ = make()
    assert core.write_timeout == float("inf")
