"""ClientConnection: the client side of one unixrpc connection, without I/O.

In the manner of h11's ``Connection``: the shells (``rpc/client.py`` with
threads, ``rpc/async_client.py`` with anyio) hand it the frames and
descriptors they read and write the bytes it gives them; it tells them
which calls to wake. It never waits, locks or touches a socket, so the two
shells differ only in how they wait and lock.

Rules this module owns:

* Call ids are allocated per connection, increasing, never reused (a
  request that cannot be framed burns its id, and leaves no call behind).
* Descriptors go to frames by count, out of one FIFO (``FdQueue``): a frame
  that declares more than have arrived is fatal. Descriptors ride on their
  frame's first byte, so descriptors still queued when the bytes read so far
  hold no partial frame came with no frame at all: fatal too (otherwise a
  later frame would take the wrong ones).
* Routing: a result or an error goes to its call and ends it; an item goes
  to its stream. A message for a call no one waits for any more (timed out,
  cancelled, dropped stream) is dropped and its descriptors closed.
  Requests, notifications, cancels and credits from a server are ignored
  (descriptors closed). An error with id ``null`` is about the connection:
  fatal, and it is what every call raises.
* Replies of exactly the shape ``{"id": N, "result": R}`` without
  descriptors are filed without the general decoder (most replies).
* Broken is sticky. A body that is not an envelope, a frame the framing
  refused, a failed read, a request cut in the middle of its frame, or
  ``close()``: the first cause is kept (without its traceback: no cycle
  through the frames that raised it), every call in flight is failed, and
  every later operation raises a fresh error of the cause's class
  (``ConnectionBrokenError``, or its subclasses ``RemoteProtocolError``
  when the server broke the protocol and ``AncillaryDataTruncatedError``
  when descriptors were lost; ``ClientClosedError``; the server's own
  ``RPCError``) whose message names the cause.
* A call given up (timeout, cancel, dropped stream) whose request went out
  and whose reply is not in gets a cancel frame; one never sent gets none.
* Stream credit: the server may send ``window`` items ahead; after every
  ``max(window // 2, 1)`` consumed items a credit frame grants them back.
* Timeouts name the method and the seconds; a stream's is per item.

stdlib, orjson and our own sans-IO modules only: never socket, anyio, trio,
asyncio or threading.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterable
from typing import Any

import orjson

from ..exceptions import (
    AncillaryDataTruncatedError,
    ClientClosedError,
    ConnectionBrokenError,
    RemoteProtocolError,
    RPCError,
    StreamProtocolParseError,
)
from ..methods import MethodSpec
from . import wire
from .calls import FdQueue, close_fds
from .framing import FrameSerializer

__all__ = ["CallSlot", "ClientConnection", "Message"]

#: what a call receives: (kind, envelope, descriptors now owned by the receiver)
Message = tuple[str, dict[str, Any], list[int]]

_RESULT, _ITEM, _ERROR = wire.RESULT, wire.ITEM, wire.ERROR
_ID_LIMIT = wire.ID_LIMIT
_pack_header = wire.HEADER.pack
_loads = orjson.loads
_JSONDecodeError = orjson.JSONDecodeError


class CallSlot:
    """One call in flight: what it has received so far, oldest first.

    A unary call receives one final message (result or error); a stream
    receives items, then one final message. ``waiter`` belongs to the shell
    (the async one parks an event there).
    """

    __slots__ = ("call_id", "consumed", "finished", "messages", "spec", "waiter")

    def __init__(self, call_id: int, spec: MethodSpec) -> None:
        self.call_id = call_id
        self.spec = spec
        self.messages: deque[Message] = deque()
        self.finished = False  # the final message has been filed
        self.consumed = 0  # stream items consumed since the last credit
        self.waiter: Any = None

    def discard(self) -> None:
        """Close the descriptors of every message not yet consumed."""
        while self.messages:
            close_fds(self.messages.popleft()[2])


def _detached(error: BaseException) -> BaseException:
    """*error*, or an equivalent of the same class for :meth:`broken_error`,
    without traceback or chained exceptions: kept for the life of the
    connection, those would hold the frames that raised it, and through
    them the connection itself (a cycle only the GC breaks)."""
    if error.__traceback__ is None and error.__cause__ is None and error.__context__ is None:
        return error
    message = str(error)
    if isinstance(error, AncillaryDataTruncatedError):
        return AncillaryDataTruncatedError(message, bufsize=error.bufsize, closed_fds=error.closed_fds)
    if isinstance(error, RemoteProtocolError):
        return RemoteProtocolError(message)
    if isinstance(error, ClientClosedError):
        return ClientClosedError(message)
    if isinstance(error, RPCError):
        return RPCError.from_wire(error.code, error.message, error.data)
    return ConnectionBrokenError(message)


def _seconds(seconds: float) -> str:
    return "1 second" if seconds == 1 else f"{seconds:g} seconds"


class ClientConnection:
    """The client side of one connection (see the module docstring).

    Args:
        framing: the frame serializer of the connection (limits).
        stream_window: items a stream may receive ahead of consumption (>= 1).

    Raises:
        ValueError: *stream_window* is below 1.
    """

    __slots__ = (
        "_credit_every",
        "_fds",
        "_fds_queued",
        "_framing",
        "_ids",
        "_slots",
        "broken",
        "stream_window",
    )

    def __init__(self, framing: FrameSerializer, stream_window: int) -> None:
        if stream_window < 1:
            raise ValueError(f"stream_window must be at least 1, got {stream_window}")
        self._framing = framing
        self.stream_window = stream_window
        self._credit_every = max(stream_window // 2, 1)
        self._ids = itertools.count(1)
        self._slots: dict[int, CallSlot] = {}
        self._fds = FdQueue()
        self._fds_queued = False  # descriptors came since the queue was last seen empty
        #: the first cause of the connection's end, or None while it is usable
        self.broken: BaseException | None = None

    def __len__(self) -> int:
        """Calls in flight."""
        return len(self._slots)

    # -- usability -------------------------------------------------------------

    def check_usable(self) -> None:
        """Raises: the broken error (see :meth:`broken_error`) once broken."""
        if self.broken is not None:
            raise self.broken_error()

    def broken_error(self) -> Exception:
        """A fresh exception for a caller, because the connection ended with
        :attr:`broken`: of the cause's class, chained to it."""
        broken = self.broken
        if isinstance(broken, ClientClosedError):
            return ClientClosedError("client is closed")
        if isinstance(broken, RPCError):
            return RPCError.from_wire(broken.code, broken.message, broken.data)
        message = f"connection is broken: {broken}"
        error: ConnectionBrokenError
        if isinstance(broken, AncillaryDataTruncatedError):
            error = AncillaryDataTruncatedError(message, bufsize=broken.bufsize, closed_fds=broken.closed_fds)
        elif isinstance(broken, RemoteProtocolError):
            error = RemoteProtocolError(message)
        else:
            error = ConnectionBrokenError(message)
        error.__cause__ = broken
        return error

    def timeout_error(self, slot: CallSlot, seconds: float) -> TimeoutError:
        """What a caller raises when *slot*'s next message took longer than *seconds*."""
        name = slot.spec.name
        if slot.spec.streaming:
            return TimeoutError(
                f"no item from {name} within {_seconds(seconds)} (the timeout applies to each item; "
                "timeout=None waits for ever)"
            )
        return TimeoutError(f"no reply to {name} within {_seconds(seconds)}")

    def send_timeout_error(
        self, spec: MethodSpec, seconds: float, *, cut: bool, what: str = "request"
    ) -> TimeoutError:
        """What a caller raises when its request (or other *what*) could not
        be written within *seconds*; *cut*: it was cut in the middle of its
        frame (then call :meth:`send_failed` too)."""
        message = f"could not send the {what} for {spec.name} within {_seconds(seconds)}"
        if cut:
            return TimeoutError(
                f"{message}: it was cut in the middle of its frame, so the connection is broken"
            )
        return TimeoutError(f"{message} (the server is not reading)")

    # -- what to send ------------------------------------------------------------

    def request(self, spec: MethodSpec, params: bytes, nfds: int = 0) -> tuple[CallSlot, bytes]:
        """Open a call of *spec* with the encoded *params*: its slot, and its
        framed request (whose header declares *nfds* descriptors).

        Raises:
            the broken error (see :meth:`broken_error`);
            FrameTooLargeError, LocalProtocolError: the request cannot be
                framed (no call is opened).
        """
        if self.broken is not None:
            raise self.broken_error()
        call_id = next(self._ids)
        window = self.stream_window if spec.streaming else None
        body = wire.encode_request(call_id, spec.name_json, params, window)
        data = self._framing.frame_bytes(body, nfds)
        slot = self._slots[call_id] = CallSlot(call_id, spec)
        return slot, data

    def notification(self, spec: MethodSpec, params: bytes, nfds: int = 0) -> bytes:
        """The framed notification of *spec* with *params*.

        Raises: as :meth:`request`.
        """
        if self.broken is not None:
            raise self.broken_error()
        return self._framing.frame_bytes(wire.encode_notification(spec.name_json, params), nfds)

    def give_up(self, slot: CallSlot, *, request_sent: bool = True) -> bytes | None:
        """The caller no longer wants *slot*: what came for it is dropped
        (descriptors closed), and so is whatever still comes. Returns the
        framed cancel to send when the server should be told (the request
        went out, or started to, and its final message is not in), else
        None. Idempotent."""
        pending = self._slots.pop(slot.call_id, None) is not None
        slot.discard()
        if pending and request_sent and self.broken is None:
            body = wire.encode_cancel(slot.call_id)
            return _pack_header(len(body), 0) + body
        return None

    def item_consumed(self, slot: CallSlot) -> bytes | None:
        """A stream item of *slot* was taken by its caller: the framed credit
        to send when one is due, else None."""
        slot.consumed += 1
        if slot.consumed < self._credit_every:
            return None
        count, slot.consumed = slot.consumed, 0
        body = wire.encode_credit(slot.call_id, count)
        return _pack_header(len(body), 0) + body

    # -- what was received ---------------------------------------------------------

    def receive_fds(self, fds: Iterable[int]) -> None:
        """Descriptors that arrived with the bytes of a read, in order (owned
        by the connection from now on)."""
        if self.broken is not None:
            close_fds(fds)
        else:
            self._fds.push(fds)
            self._fds_queued = True

    def receive_frames(self, frames: Iterable[wire.RawFrame], buffered: int) -> list[CallSlot]:
        """File *frames*, whole frames read in order, under their calls;
        *buffered*: the bytes of a partial frame read after them (0 if none).
        Call :meth:`receive_fds` first with the descriptors of the same reads.

        Returns the slots to wake: those that received a message, and, if
        the frames broke the connection (check :attr:`broken`), every call
        that was in flight. Never raises.
        """
        woken: list[CallSlot] = []
        if self.broken is not None:
            return woken
        slots, fd_queue = self._slots, self._fds
        for frame in frames:
            envelope: Any = None
            if not frame.nfds:
                try:  # noqa: SIM105 - suppress() costs about 0.5 us a frame
                    envelope = _loads(frame.body)
                except _JSONDecodeError:
                    pass  # _decode says why
            if type(envelope) is dict and len(envelope) == 2 and "result" in envelope:
                # the common case, {"id": N, "result": R}, without _decode
                call_id = envelope.get("id")
                if type(call_id) is not int or not 0 <= call_id < _ID_LIMIT:
                    woken += self._violation('peer sent an invalid envelope: "id" must be a call id')
                    return woken
                slot = slots.pop(call_id, None)
                if slot is not None:
                    slot.messages.append((_RESULT, envelope, []))
                    slot.finished = True
                    woken.append(slot)
                continue
            try:
                fds = fd_queue.take(frame.nfds)
            except ValueError as exc:
                woken += self._violation(f"peer broke the protocol: {exc}")
                return woken
            try:
                envelope = _loads(frame.body)
                kind = wire.classify(envelope)
            except (_JSONDecodeError, ValueError) as exc:
                close_fds(fds)
                woken += self._violation(f"peer sent an invalid envelope: {exc}")
                return woken
            if kind is not _RESULT and kind is not _ITEM and kind is not _ERROR:
                close_fds(fds)  # requests from a server are not part of the protocol: ignored
                continue
            call_id = envelope["id"]
            if call_id is None:  # an error about the connection as a whole
                close_fds(fds)
                error = envelope["error"]
                woken += self.fail(
                    RPCError.from_wire(error["code"], str(error.get("message", "")), error.get("data"))
                )
                return woken
            slot = slots.get(call_id) if kind is _ITEM else slots.pop(call_id, None)
            if slot is None:
                close_fds(fds)  # late: no one waits for it any more
                continue
            slot.messages.append((kind, envelope, fds))
            if kind is not _ITEM:
                slot.finished = True
            woken.append(slot)
        if self._fds_queued and not buffered:  # (a flag: most reads bring no descriptors)
            count = len(fd_queue)
            if count:
                woken += self._violation(
                    f"peer broke the protocol: {count} file descriptors came with no frame"
                )
            else:
                self._fds_queued = False
        return woken

    def read_failed(self, error: BaseException) -> list[CallSlot]:
        """The transport could not read (a frame the framing refused, end of
        stream, reset, lost descriptors): the connection is broken. Returns
        the slots to wake (every call in flight)."""
        if isinstance(error, StreamProtocolParseError):
            return self._violation(f"server broke the protocol: {error.error}")
        return self.fail(error)

    def send_failed(self, error: BaseException, *, cut: bool) -> list[CallSlot] | None:
        """A write raised *error*; *cut*: part of its frame went out (the
        transport's ``is_send_broken()``). The connection is broken when the
        frame was cut (the server could never find the next frame) or the
        peer is gone; then returns the slots to wake. Else (nothing was
        written: a timeout waiting for room, a cancel, a refused descriptor)
        it stays usable and None is returned."""
        if not cut and not isinstance(error, ConnectionBrokenError):
            return None
        if isinstance(error, OSError) and not isinstance(error, TimeoutError):
            return self.fail(error)
        return self.fail(ConnectionBrokenError("a frame was cut in the middle by a timeout or cancel"))

    def close(self) -> list[CallSlot]:
        """The client is being closed. Returns the slots to wake."""
        return self.fail(ClientClosedError("client is closed"))

    def fail(self, error: BaseException) -> list[CallSlot]:
        """The connection is over because of *error* (kept only if it is the
        first cause; a failed read or write not covered by :meth:`read_failed`
        and :meth:`send_failed`): every call in flight is failed, queued
        descriptors are closed. Returns the slots to wake."""
        if self.broken is None:
            self.broken = _detached(error)
        slots = list(self._slots.values())
        self._slots.clear()
        for slot in slots:
            slot.discard()
        self._fds.close_all()
        return slots

    def _violation(self, message: str) -> list[CallSlot]:
        return self.fail(RemoteProtocolError(message))
