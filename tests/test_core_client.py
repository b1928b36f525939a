"""The client core (``_core/client/``) with frames in and actions out: no
sockets, no event loop, no threads; time from a fake clock. Descriptors are real (``/dev/null``) so
that closing them can be checked."""

from __future__ import annotations

import ast
import gc
import os
import pathlib
import weakref
from collections.abc import Callable, Iterator

import orjson
import pytest

from rpc_support import Add, Count
from unixrpc import (
    AncillaryDataTruncatedError,
    ClientClosedError,
    ConnectionBrokenError,
    DeserializeError,
    FrameTooLargeError,
    InvalidResultError,
    RemoteProtocolError,
    ServerBusyError,
    StreamProtocolParseError,
)
from unixrpc._core import wire
from unixrpc._core.client import (
    CANCEL_SEND_LIMIT,
    DEFAULT,
    DEFAULT_STREAM_WINDOW,
    CallSlot,
    ClientConnection,
    ClientCore,
    Default,
)
from unixrpc._core.codec import final_value
from unixrpc._core.framing import FrameSerializer

ADD = Add.__rpc_spec__
COUNT = Count.__rpc_spec__


def core(window: int = 16, **limits: int) -> ClientConnection:
    return ClientConnection(FrameSerializer(**limits), window)


class FakeClock:
    """The time, moved by the test."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def frame(envelope: object, nfds: int = 0) -> wire.RawFrame:
    return wire.RawFrame(orjson.dumps(envelope), nfds)


def body_of(data: bytes) -> tuple[dict[str, object], int]:
    size, nfds = wire.HEADER.unpack_from(data)
    assert len(data) == wire.HEADER_SIZE + size
    return orjson.loads(data[wire.HEADER_SIZE :]), nfds


def is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


@pytest.fixture
def devnull() -> Iterator[Callable[[int], list[int]]]:
    """Makes fresh descriptors; whatever the test leaves open is closed after it."""
    made: list[int] = []

    def make(count: int = 1) -> list[int]:
        fds = [os.open(os.devnull, os.O_RDONLY) for _ in range(count)]
        made.extend(fds)
        return fds

    yield make
    for fd in made:
        if is_open(fd):
            os.close(fd)


# -- requests ---------------------------------------------------------------------------------


def test_requests_get_increasing_ids_and_are_framed() -> None:
    c = core(window=4)
    first, data = c.request(ADD, b'{"a":1,"b":2}')
    assert body_of(data) == ({"id": 1, "method": "Add", "params": {"a": 1, "b": 2}}, 0)
    second, data = c.request(COUNT, b'{"n":3}', nfds=2)
    assert body_of(data) == ({"id": 2, "method": "Count", "params": {"n": 3}, "stream": 4}, 2)
    assert (first.call_id, second.call_id, len(c)) == (1, 2, 2)


def test_a_request_that_cannot_be_framed_opens_no_call_and_burns_its_id() -> None:
    c = core(max_frame_size=50)
    with pytest.raises(FrameTooLargeError):
        c.request(ADD, b'{"pad":"' + b"x" * 100 + b'"}')
    assert len(c) == 0
    slot, _ = c.request(ADD, b"{}")
    assert slot.call_id == 2  # never reused


def test_notification_has_no_id() -> None:
    assert body_of(core().notification(ADD, b"{}", 1)) == ({"method": "Add", "params": {}}, 1)


# -- routing ----------------------------------------------------------------------------------


def test_a_plain_result_wakes_its_call_and_ends_it() -> None:
    c = core()
    slot, _ = c.request(ADD, b"{}")
    assert c.receive_frames([frame({"id": 1, "result": 3})], 0) == [slot]
    assert list(slot.messages) == [("result", {"id": 1, "result": 3}, [])]
    assert slot.finished
    assert len(c) == 0
    assert c.broken is None


def test_results_errors_and_items_go_to_their_calls_in_any_order(devnull: Callable[[int], list[int]]) -> None:
    c = core()
    unary, _ = c.request(ADD, b"{}")
    stream, _ = c.request(COUNT, b"{}")
    fds = devnull(1)
    c.receive_fds(fds)
    woken = c.receive_frames(
        [
            frame({"id": 2, "item": 0}),
            frame({"id": 2, "item": 1}, nfds=1),
            frame({"id": 1, "error": {"code": "x.Y", "message": "no"}}),
            frame({"id": 2, "result": None}),
        ],
        0,
    )
    assert woken == [stream, stream, unary, stream]
    assert [m[0] for m in stream.messages] == ["item", "item", "result"]
    assert stream.messages[1][2] == fds  # the item's descriptor, owned by the caller now
    assert unary.messages[0][:2] == ("error", {"id": 1, "error": {"code": "x.Y", "message": "no"}})
    assert len(c) == 0


def test_a_late_reply_is_dropped_and_its_descriptors_closed(devnull: Callable[[int], list[int]]) -> None:
    c = core()
    slot, _ = c.request(ADD, b"{}")
    assert c.give_up(slot) is not None
    fds = devnull(2)
    c.receive_fds(fds)
    assert c.receive_frames([frame({"id": 1, "result": 3}, nfds=2), frame({"id": 99, "result": 1})], 0) == []
    assert not any(is_open(fd) for fd in fds)
    assert c.broken is None


def test_requests_cancels_and_credits_from_a_server_are_ignored(devnull: Callable[[int], list[int]]) -> None:
    c = core()
    slot, _ = c.request(ADD, b"{}")
    fds = devnull(1)
    c.receive_fds(fds)
    frames = [
        frame({"id": 5, "method": "Evil", "params": {}}, nfds=1),
        frame({"method": "Evil", "params": {}}),
        frame({"cancel": 1}),
        frame({"credit": 1, "n": 3}),
    ]
    assert c.receive_frames(frames, 0) == []
    assert not is_open(fds[0])
    assert c.broken is None
    assert len(c) == 1
    assert not slot.messages


def test_descriptors_are_taken_by_count_across_frames(devnull: Callable[[int], list[int]]) -> None:
    """The kernel may hand over a later frame's descriptors with an earlier frame's bytes."""
    c = core()
    first, _ = c.request(ADD, b"{}")
    second, _ = c.request(ADD, b"{}")
    fds = devnull(3)
    c.receive_fds(fds)
    c.receive_frames([frame({"id": 1, "result": 0}, nfds=1), frame({"id": 2, "result": 0}, nfds=2)], 0)
    assert first.messages[0][2] == fds[:1]
    assert second.messages[0][2] == fds[1:]


# -- what breaks the connection ---------------------------------------------------------------


def test_descriptors_that_came_with_no_frame_break_the_connection(
    devnull: Callable[[int], list[int]],
) -> None:
    """Issue 11, defect 8: a stray descriptor must never be handed to a later frame."""
    c = core()
    first, _ = c.request(ADD, b"{}")
    second, _ = c.request(ADD, b"{}")
    stray = devnull(1)
    c.receive_fds(stray)  # arrived with frame 1, which declares none
    woken = c.receive_frames([frame({"id": 1, "result": 1})], 0)
    assert woken == [first, second]  # first got its reply; second fails
    assert first.messages
    assert not second.messages
    assert isinstance(c.broken, RemoteProtocolError)
    assert str(c.broken) == "peer broke the protocol: 1 file descriptors came with no frame"
    assert not is_open(stray[0])
    error = c.broken_error()
    assert type(error) is RemoteProtocolError
    assert (
        str(error) == "connection is broken: peer broke the protocol: 1 file descriptors came with no frame"
    )
    assert error.__cause__ is c.broken


def test_descriptors_may_wait_for_a_frame_whose_first_bytes_are_in(
    devnull: Callable[[int], list[int]],
) -> None:
    c = core()
    slot, _ = c.request(ADD, b"{}")
    fds = devnull(1)
    c.receive_fds(fds)
    assert c.receive_frames([], buffered=3) == []  # a partial frame is buffered: they may be its
    assert c.broken is None
    c.receive_frames([frame({"id": 1, "result": 1}, nfds=1)], 0)
    assert slot.messages[0][2] == fds


def test_a_frame_declaring_descriptors_that_never_came_is_fatal(devnull: Callable[[int], list[int]]) -> None:
    c = core()
    slot, _ = c.request(ADD, b"{}")
    c.receive_fds(devnull(1))
    assert c.receive_frames([frame({"id": 1, "result": 1}, nfds=2)], 0) == [slot]
    assert str(c.broken) == "peer broke the protocol: frame declares 2 file descriptors but only 1 arrived"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"not json", "peer sent an invalid envelope: invalid literal"),
        (b"[1]", "peer sent an invalid envelope: envelope must be a JSON object, got list"),
        (b'{"id": -1, "result": 1}', 'peer sent an invalid envelope: "id" must be a call id'),
        (b'{"id": "x", "item": 1}', 'peer sent an invalid envelope: "id" must be an integer in 0..2**63-1'),
    ],
)
def test_an_invalid_envelope_is_fatal(body: bytes, reason: str) -> None:
    c = core()
    slot, _ = c.request(ADD, b"{}")
    assert c.receive_frames([wire.RawFrame(body), frame({"id": 1, "result": 1})], 0) == [slot]
    assert not slot.messages  # nothing after the bad frame is filed
    assert isinstance(c.broken, RemoteProtocolError)
    assert str(c.broken).startswith(reason)
    with pytest.raises(RemoteProtocolError, match=r"^connection is broken: peer sent an invalid envelope"):
        c.request(ADD, b"{}")


def test_an_error_with_a_null_id_ends_the_connection_with_that_error() -> None:
    c = core()
    slot, _ = c.request(ADD, b"{}")
    busy = {"id": None, "error": {"code": "unixrpc.Busy", "message": "too many connections"}}
    assert c.receive_frames([frame(busy)], 0) == [slot]
    assert isinstance(c.broken, ServerBusyError)
    first, second = c.broken_error(), c.broken_error()
    assert type(first) is ServerBusyError
    assert first is not second
    assert first.message == "too many connections"


def test_a_frame_the_framing_refused_is_fatal() -> None:
    c = core()
    slot, _ = c.request(ADD, b"{}")
    error = StreamProtocolParseError(DeserializeError("frame of 99 bytes is over the limit of 10 bytes"))
    assert c.read_failed(error) == [slot]
    assert str(c.broken_error()) == (
        "connection is broken: server broke the protocol: frame of 99 bytes is over the limit of 10 bytes"
    )
    assert type(c.broken_error()) is RemoteProtocolError


def test_lost_descriptors_keep_their_class_and_details() -> None:
    c = core()
    c.read_failed(AncillaryDataTruncatedError("control data truncated", bufsize=24, closed_fds=1))
    error = c.broken_error()
    assert type(error) is AncillaryDataTruncatedError
    assert (str(error), error.bufsize, error.closed_fds) == (
        "connection is broken: control data truncated",
        24,
        1,
    )


def test_a_failed_read_or_write_and_close() -> None:
    c = core()
    c.request(ADD, b"{}")
    assert len(c.read_failed(ConnectionBrokenError("peer closed the connection"))) == 1
    assert type(c.broken_error()) is ConnectionBrokenError
    assert str(c.broken_error()) == "connection is broken: peer closed the connection"
    c.close()  # the first cause stays
    assert type(c.broken_error()) is ConnectionBrokenError
    closed = core()
    closed.close()
    closed.send_failed(ConnectionBrokenError("later"), cut=True)
    with pytest.raises(ClientClosedError, match=r"^client is closed$"):
        closed.notification(ADD, b"{}")


def test_breaking_fails_every_call_and_closes_what_they_held(devnull: Callable[[int], list[int]]) -> None:
    c = core()
    stream, _ = c.request(COUNT, b"{}")
    queued = devnull(2)
    c.receive_fds(queued[:1])
    c.receive_frames([frame({"id": 1, "item": 0}, nfds=1)], buffered=1)
    c.receive_fds(queued[1:])  # waiting for the partial frame
    assert c.fail(ConnectionBrokenError("gone")) == [stream]
    assert not stream.messages
    assert len(c) == 0
    assert not any(is_open(fd) for fd in queued)
    late = devnull(1)
    c.receive_fds(late)  # arrivals after the end are closed
    assert not is_open(late[0])
    assert c.receive_frames([frame({"id": 1, "result": None})], 0) == []


def test_a_failed_write_breaks_the_connection_only_if_it_cut_a_frame_or_the_peer_is_gone() -> None:
    c = core()
    slot, _ = c.request(ADD, b"{}")
    no_room = TimeoutError("no room")
    assert c.send_failed(no_room, cut=False) == (no_room, None)  # nothing written
    bad = OSError(9, "bad descriptor")
    assert c.send_failed(bad, cut=False) == (bad, None)
    assert c.broken is None
    assert c.send_failed(no_room, cut=True) == (no_room, [slot])
    assert (
        str(c.broken_error()) == "connection is broken: a frame was cut in the middle by a timeout or cancel"
    )
    gone = core()
    hung_up = ConnectionBrokenError("peer closed the connection")
    assert gone.wants_farewell(hung_up)
    assert not gone.wants_farewell(no_room)
    assert gone.send_failed(hung_up, cut=False) == (hung_up, [])
    assert str(gone.broken_error()) == "connection is broken: peer closed the connection"


def test_after_a_hang_up_the_servers_parting_error_is_what_the_caller_raises() -> None:
    """The shell read, without waiting, what the server left before it hung
    up (a connection-level error): the failed write raises that instead."""
    c = core()
    slot, _ = c.request(ADD, b"{}")
    hung_up = ConnectionBrokenError("peer closed the connection")
    assert c.wants_farewell(hung_up)
    busy = {"id": None, "error": {"code": "unixrpc.Busy", "message": "too many connections"}}
    assert c.receive_frames([frame(busy)], 0) == [slot]
    error, woken = c.send_failed(hung_up, cut=False, slot=slot)
    assert type(error) is ServerBusyError
    assert str(error) == "too many connections [unixrpc.Busy]"
    assert woken == []
    # a cut request whose peer said nothing raises what the write raised
    quiet = core()
    slot, _ = quiet.request(ADD, b"{}")
    assert quiet.send_failed(hung_up, cut=True, slot=slot)[0] is hung_up


def test_a_write_that_timed_out_names_the_call_and_whether_it_broke_the_connection() -> None:
    c = core()
    slot, _ = c.request(ADD, b"{}", timeout=2)
    error, woken = c.send_failed(TimeoutError(), cut=False, slot=slot)
    assert str(error) == "could not send the request for Add within 2 seconds (the server is not reading)"
    assert woken is None
    stream, _ = c.request(COUNT, b"{}", timeout=1)
    error, woken = c.send_failed(TimeoutError(), cut=True, slot=stream, what="credit")
    assert str(error) == (
        "could not send the credit for Count within 1 second: "
        "it was cut in the middle of its frame, so the connection is broken"
    )
    assert woken is not None
    forever = core()
    slot, _ = forever.request(ADD, b"{}", timeout=None)
    timeout = TimeoutError("raw")
    assert forever.send_failed(timeout, cut=False, slot=slot)[0] is timeout  # no timeout of ours: as raised


def test_an_item_whose_credit_could_not_be_sent_is_lost_with_its_descriptors(
    devnull: Callable[[int], list[int]],
) -> None:
    c = core(window=2)
    stream, _ = c.request(COUNT, b"{}")
    fds = devnull(1)
    c.receive_fds(fds)
    c.receive_frames([frame({"id": 1, "item": 0}, nfds=1)], 0)
    message, credit = c.take(stream)
    assert credit is not None
    assert body_of(credit) == ({"credit": 1, "n": 1}, 0)
    cancelled = KeyboardInterrupt()
    assert c.send_failed(cancelled, cut=False, slot=stream, what="credit", lost=message) == (cancelled, None)
    assert not is_open(fds[0])


def test_the_kept_cause_holds_no_frames() -> None:
    """A cause kept for the life of the connection must not keep what raised it
    alive (the frames of a shell's reader reference the client, and so the core)."""

    class Owner:
        pass

    def read(owner: Owner) -> None:
        try:
            raise OSError("reset")
        except OSError as exc:
            raise ConnectionBrokenError("peer reset the connection") from exc

    c, owner = core(), Owner()
    alive = weakref.ref(owner)
    try:
        read(owner)
    except ConnectionBrokenError as exc:
        c.read_failed(exc)
    del owner
    gc.disable()
    try:
        assert alive() is None  # freed at once, no collection needed
    finally:
        gc.enable()
    assert type(c.broken) is ConnectionBrokenError
    assert c.broken.__traceback__ is None
    assert c.broken.__cause__ is None
    assert str(c.broken_error()) == "connection is broken: peer reset the connection"


# -- giving up, credit ------------------------------------------------------------------------


def test_giving_up_sends_a_cancel_only_when_the_server_may_be_working() -> None:
    c = core()
    sent, _ = c.request(ADD, b"{}")
    cancel = c.give_up(sent)
    assert cancel is not None
    assert body_of(cancel) == ({"cancel": 1}, 0)
    assert c.give_up(sent) is None  # idempotent
    unsent, _ = c.request(ADD, b"{}")
    assert c.give_up(unsent, request_sent=False) is None
    answered, _ = c.request(ADD, b"{}")
    c.receive_frames([frame({"id": 3, "result": 1})], 0)
    assert c.give_up(answered) is None
    assert not answered.messages  # dropped
    broken, _ = c.request(ADD, b"{}")
    c.fail(ConnectionBrokenError("gone"))
    assert c.give_up(broken) is None


def test_giving_up_closes_the_descriptors_of_what_came(devnull: Callable[[int], list[int]]) -> None:
    c = core()
    stream, _ = c.request(COUNT, b"{}")
    fds = devnull(1)
    c.receive_fds(fds)
    c.receive_frames([frame({"id": 1, "item": 0}, nfds=1)], 0)
    assert c.give_up(stream) is not None
    assert not is_open(fds[0])
    assert c.receive_frames([frame({"id": 1, "item": 1})], 0) == []  # dropped


@pytest.mark.parametrize(("window", "every"), [(1, 1), (2, 1), (4, 2), (16, 8), (5, 2)])
def test_credit_is_granted_every_half_window(window: int, every: int) -> None:
    c = core(window=window)
    slot, _ = c.request(COUNT, b"{}")
    credits = [c.item_consumed(slot) for _ in range(every * 3)]
    granted = [body_of(credit) for credit in credits if credit is not None]
    assert granted == [({"credit": 1, "n": every}, 0)] * 3
    assert credits[every - 1] is not None


def test_the_window_must_be_positive() -> None:
    with pytest.raises(ValueError, match="stream_window must be at least 1, got 0"):
        core(window=0)


# -- messages ---------------------------------------------------------------------------------


def test_timeout_messages_name_the_method_and_the_seconds() -> None:
    c = core()
    assert str(c.timed_out(CallSlot(1, ADD, 0.25))) == "no reply to Add within 0.25 seconds"
    assert str(c.timed_out(CallSlot(1, ADD, 1))) == "no reply to Add within 1 second"
    assert str(c.timed_out(CallSlot(2, COUNT, 2.0))) == (
        "no item from Count within 2 seconds (the timeout applies to each item; timeout=None waits for ever)"
    )


# -- timeouts ---------------------------------------------------------------------------------


def test_a_calls_timeout_is_the_clients_unless_it_says_otherwise() -> None:
    clock = FakeClock()
    c = ClientConnection(FrameSerializer(), 16, timeout=5, clock=clock)
    default, _ = c.request(ADD, b"{}")
    assert (default.timeout, default.deadline) == (5, 105.0)
    own, _ = c.request(ADD, b"{}", timeout=0.5)
    assert (own.timeout, own.deadline) == (0.5, 100.5)
    forever, _ = c.request(ADD, b"{}", timeout=None)
    assert (forever.timeout, forever.deadline) == (None, None)
    assert (DEFAULT_STREAM_WINDOW, ClientConnection(FrameSerializer(), 16).timeout) == (16, None)
    assert DEFAULT is Default.DEFAULT


def test_a_unary_calls_deadline_covers_sending_and_the_reply() -> None:
    clock = FakeClock()
    c = ClientConnection(FrameSerializer(), 16, timeout=2, clock=clock)
    slot, _ = c.request(ADD, b"{}")
    clock.now += 1.5  # the request took that long to write
    assert slot.deadline == 102.0  # one deadline for the whole call


def test_a_streams_timeout_bounds_the_request_then_each_item_from_when_it_is_asked_for() -> None:
    clock = FakeClock()
    c = ClientConnection(FrameSerializer(), 2, timeout=2, clock=clock)
    stream, _ = c.request(COUNT, b"{}")
    assert stream.deadline == 102.0  # the request's send
    clock.now = 150.0
    c.ask_item(stream)
    assert stream.deadline == 152.0
    c.receive_frames([frame({"id": 1, "item": 0})], 0)
    _, credit = c.take(stream)
    assert credit is not None  # sent within the item's deadline
    clock.now = 151.0
    c.ask_item(stream)
    assert stream.deadline == 153.0
    forever, _ = c.request(COUNT, b"{}", timeout=None)
    c.ask_item(forever)
    assert forever.deadline is None


def test_a_cancel_may_take_at_most_the_cancel_send_limit() -> None:
    clock = FakeClock()
    c = ClientConnection(FrameSerializer(), 16, clock=clock)
    assert c.cancel_deadline() == 100.0 + CANCEL_SEND_LIMIT


# -- taking messages ------------------------------------------------------------------------


def test_taking_a_reply_or_the_end_of_a_stream_sends_nothing() -> None:
    c = core()
    unary, _ = c.request(ADD, b"{}")
    stream, _ = c.request(COUNT, b"{}")
    c.receive_frames([frame({"id": 1, "result": 3}), frame({"id": 2, "result": None})], 0)
    assert c.take(unary) == ((wire.RESULT, {"id": 1, "result": 3}, []), None)
    assert c.take(stream) == ((wire.RESULT, {"id": 2, "result": None}, []), None)


def test_an_item_for_a_unary_call_gives_the_call_up(devnull: Callable[[int], list[int]]) -> None:
    c = core()
    unary, _ = c.request(ADD, b"{}")
    fds = devnull(1)
    c.receive_fds(fds)
    assert c.receive_frames([frame({"id": 1, "item": 7}, nfds=1)], 0) == [unary]
    (kind, envelope, got), cancel = c.take(unary)
    assert (kind, envelope, got) == (wire.ITEM, {"id": 1, "item": 7}, fds)  # decoding it raises
    assert cancel is not None
    assert body_of(cancel) == ({"cancel": 1}, 0)
    assert len(c) == 0
    assert c.receive_frames([frame({"id": 1, "result": 3})], 0) == []  # the late reply is dropped
    with pytest.raises(
        InvalidResultError, match="server sent a stream item in reply to Add, which is not a stream"
    ):
        final_value(ADD, kind, envelope, got)
    assert not is_open(fds[0])


# -- the shells' face -----------------------------------------------------------------------


def test_the_shells_use_the_core_only_through_its_narrow_interface() -> None:
    """A session layer will implement ClientCore: the shells must not need
    more of ClientConnection than that face."""
    allowed = {name for name in dir(ClientCore) if not name.startswith("__")} | {"broken"}
    shells = pathlib.Path(wire.__file__).parent.parent / "client"
    used: set[str] = set()
    for path in sorted(shells.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Attribute):
                continue
            holder = node.value
            if (isinstance(holder, ast.Attribute) and holder.attr in {"_core", "core"}) or (
                isinstance(holder, ast.Name) and holder.id == "core"
            ):
                assert node.attr in allowed, f"{path.name} uses core.{node.attr}, not in ClientCore"
                used.add(node.attr)
    assert {"request", "take", "send_failed", "receive_frames"} <= used  # the check sees the shells' uses


# -- the layering rule ------------------------------------------------------------------------

FORBIDDEN = {"socket", "anyio", "trio", "asyncio", "threading", "select", "selectors"}


CORE = pathlib.Path(wire.__file__).parent


@pytest.mark.parametrize("module", sorted(str(p.relative_to(CORE)) for p in CORE.rglob("*.py")))
def test_core_modules_import_no_io(module: str) -> None:
    tree = ast.parse((CORE / module).read_text())
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & FORBIDDEN
