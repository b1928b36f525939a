"""ClientConnection: the client side of one unixrpc connection, without I/O.

In the manner of h11's ``Connection``: the shells (``client/sync.py`` with
threads, ``client/async_.py`` with anyio) hand it the frames and descriptors
they read, the time (through the clock they give it) and what became of
their writes, and write the bytes it gives them; it tells them which calls
to wake, which deadline to wait for, what to send and what to raise. It
never waits, locks or touches a socket, so the two shells differ only in
how they wait and lock. The shells use it through the narrow ``ClientCore``
interface (``interface.py``), where a reconnecting session can later sit.

Rules this module owns (with ``calls.py``: timeouts, the cancel-send limit;
``errors.py``: the errors' classes and wording):

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
* An item that comes for a unary call is the server's mistake: the call is
  given up (the server told to cancel it) and the item is what the caller
  decodes (``codec.final_value`` raises ``InvalidResultError`` for it).
* Broken is sticky. A body that is not an envelope, a frame the framing
  refused, a failed read, a request cut in the middle of its frame, or
  ``close()``: the first cause is kept, every call in flight is failed, and
  every later operation raises the broken error (``errors.py``).
* A failed write breaks the connection only when it cut its frame or the
  peer is gone. When the peer is gone the shell first reads, without
  waiting, what the server left before it hung up: a connection-level error
  there (``ServerBusyError``, say) is what the caller raises. A write that
  timed out raises the timeout naming the method; an item whose credit
  could not be sent is lost, its descriptors closed.
* A call given up (timeout, cancel, dropped stream) whose request went out
  and whose reply is not in gets a cancel frame; one never sent gets none.
* Stream credit: the server may send ``window`` items ahead; after every
  ``max(window // 2, 1)`` consumed items a credit frame grants them back.

stdlib, orjson and our own sans-IO modules only: never socket, anyio, trio,
asyncio or threading.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable
from typing import Any

import orjson

from ...exceptions import (
    ClientClosedError,
    ConnectionBrokenError,
    RemoteProtocolError,
    RPCError,
    StreamProtocolParseError,
)
from ...methods import MethodSpec
from .. import wire
from ..calls import FdQueue, close_fds
from ..framing import FrameSerializer
from .calls import CANCEL_SEND_LIMIT, DEFAULT, CallSlot, Message, Timeout
from .errors import broken_error, detached, send_timeout_error, timeout_error

__all__ = ["ClientConnection"]

_RESULT, _ITEM, _ERROR = wire.RESULT, wire.ITEM, wire.ERROR
_ID_LIMIT = wire.ID_LIMIT
_pack_header = wire.HEADER.pack
_loads = orjson.loads
_JSONDecodeError = orjson.JSONDecodeError


class ClientConnection:
    """The client side of one connection (see the module docstring).

    Args:
        framing: the frame serializer of the connection (limits).
        stream_window: items a stream may receive ahead of consumption (>= 1).
        timeout: the default timeout of a call, in seconds (None: for ever).
        clock: the shell's clock, in seconds; read only for calls with a
            timeout. Deadlines are on it.

    Raises:
        ValueError: *stream_window* is below 1.
    """

    __slots__ = (
        "_clock",
        "_credit_every",
        "_fds",
        "_fds_queued",
        "_framing",
        "_ids",
        "_slots",
        "broken",
        "stream_window",
        "timeout",
    )

    def __init__(
        self,
        framing: FrameSerializer,
        stream_window: int,
        *,
        timeout: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if stream_window < 1:
            raise ValueError(f"stream_window must be at least 1, got {stream_window}")
        self._framing = framing
        self.stream_window = stream_window
        self._credit_every = max(stream_window // 2, 1)
        self.timeout = timeout
        self._clock = clock
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
            raise broken_error(self.broken)

    def broken_error(self) -> Exception:
        """A fresh exception for a caller, because the connection ended with
        :attr:`broken`: of the cause's class, chained to it."""
        return broken_error(self.broken)

    def timed_out(self, slot: CallSlot) -> TimeoutError:
        """What the caller of *slot* raises when its deadline passed (it gives
        the call up with :meth:`give_up`)."""
        return timeout_error(slot.spec, slot.timeout if slot.timeout is not None else 0.0)

    # -- what to send ------------------------------------------------------------

    def request(
        self, spec: MethodSpec, params: bytes, nfds: int = 0, timeout: Timeout = DEFAULT
    ) -> tuple[CallSlot, bytes]:
        """Open a call of *spec* with the encoded *params*: its slot, and its
        framed request (whose header declares *nfds* descriptors). The slot's
        deadline covers sending the request and (a unary call) its reply.

        Raises:
            the broken error (see :meth:`broken_error`);
            FrameTooLargeError, LocalProtocolError: the request cannot be
                framed (no call is opened).
        """
        if self.broken is not None:
            raise broken_error(self.broken)
        call_id = next(self._ids)
        if timeout is DEFAULT:
            timeout = self.timeout
        window = self.stream_window if spec.streaming else None
        body = wire.encode_request(call_id, spec.name_json, params, window)
        data = self._framing.frame_bytes(body, nfds)
        slot = self._slots[call_id] = CallSlot(
            call_id, spec, timeout, None if timeout is None else self._clock() + timeout
        )
        return slot, data

    def notification(self, spec: MethodSpec, params: bytes, nfds: int = 0) -> bytes:
        """The framed notification of *spec* with *params*.

        Raises: as :meth:`request`.
        """
        if self.broken is not None:
            raise broken_error(self.broken)
        return self._framing.frame_bytes(wire.encode_notification(spec.name_json, params), nfds)

    def ask_item(self, slot: CallSlot) -> None:
        """The caller of stream *slot* asks for its next item (its request
        is out): the item's deadline starts now."""
        if slot.timeout is not None:
            slot.deadline = self._clock() + slot.timeout

    def take(self, slot: CallSlot) -> tuple[Message, bytes | None]:
        """The next message of *slot* (there is one: the shell saw it filed),
        and the frame to send before handing it to the caller: for a stream
        item, the credit when one is due (send it within ``slot.deadline``);
        for an item that came for a unary call, the cancel of the call, now
        given up (send it within :meth:`cancel_deadline`); else None.
        """
        message = slot.messages.popleft()
        if message[0] is not _ITEM:
            return message, None
        if slot.spec.streaming:
            return message, self.item_consumed(slot)
        return message, self.give_up(slot)

    def give_up(self, slot: CallSlot, *, request_sent: bool = True) -> bytes | None:
        """The caller no longer wants *slot*: what came for it is dropped
        (descriptors closed), and so is whatever still comes. Returns the
        framed cancel to send (within :meth:`cancel_deadline`) when the
        server should be told (the request went out, or started to, and its
        final message is not in), else None. Idempotent."""
        pending = self._slots.pop(slot.call_id, None) is not None
        slot.discard()
        if pending and request_sent and self.broken is None:
            body = wire.encode_cancel(slot.call_id)
            return _pack_header(len(body), 0) + body
        return None

    def cancel_deadline(self) -> float:
        """When writing a cancel must stop (the server is not reading): a
        caller giving up is held at most ``CANCEL_SEND_LIMIT`` seconds."""
        return self._clock() + CANCEL_SEND_LIMIT

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

    @staticmethod
    def wants_farewell(error: BaseException) -> bool:
        """Whether a write that raised *error* means the server hung up: then
        read what it left, without waiting, before :meth:`send_failed` (it
        may have said why)."""
        return isinstance(error, ConnectionBrokenError)

    def send_failed(
        self,
        error: BaseException,
        *,
        cut: bool,
        slot: CallSlot | None = None,
        what: str = "request",
        lost: Message | None = None,
    ) -> tuple[BaseException, list[CallSlot] | None]:
        """A write raised *error*; *cut*: part of its frame went out (the
        transport's ``is_send_broken()``); *slot*: the call whose *what*
        (request, credit) it was, if any; *lost*: a message that is lost
        with the write (an item whose credit this was: its descriptors are
        closed).

        The connection is broken when the frame was cut (the server could
        never find the next frame) or the peer is gone. Else (nothing was
        written: a timeout waiting for room, a cancel, a refused descriptor)
        it stays usable.

        Returns the error the caller raises (*error* itself, the server's
        parting error, or a timeout naming the call), and the slots to wake
        when the connection broke, else None.
        """
        if lost is not None:
            close_fds(lost[2])
        woken: list[CallSlot] | None = None
        if cut or isinstance(error, ConnectionBrokenError):
            if isinstance(error, OSError) and not isinstance(error, TimeoutError):
                woken = self.fail(error)
            else:
                woken = self.fail(
                    ConnectionBrokenError("a frame was cut in the middle by a timeout or cancel")
                )
        if isinstance(error, ConnectionBrokenError) and isinstance(self.broken, RPCError):
            return broken_error(self.broken), woken  # the server said why it hung up
        if isinstance(error, TimeoutError) and slot is not None and slot.timeout is not None:
            return send_timeout_error(slot.spec, slot.timeout, cut=cut, what=what), woken
        return error, woken

    def close(self) -> list[CallSlot]:
        """The client is being closed. Returns the slots to wake."""
        return self.fail(ClientClosedError("client is closed"))

    def fail(self, error: BaseException) -> list[CallSlot]:
        """The connection is over because of *error* (kept only if it is the
        first cause; a failed read or write not covered by :meth:`read_failed`
        and :meth:`send_failed`): every call in flight is failed, queued
        descriptors are closed. Returns the slots to wake."""
        if self.broken is None:
            self.broken = detached(error)
        slots = list(self._slots.values())
        self._slots.clear()
        for slot in slots:
            slot.discard()
        self._fds.close_all()
        return slots

    def _violation(self, message: str) -> list[CallSlot]:
        return self.fail(RemoteProtocolError(message))
