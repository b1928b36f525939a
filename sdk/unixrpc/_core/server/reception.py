"""What one server connection receives (composed into
:class:`.connection.ServerConnection`, whose state it works on, and which
exposes its methods as its own): descriptors that arrived with a read, and
frames taken in order (or a cancel or credit ahead of requests read before
it), each routed by kind; requests admitted, or refused in order.

Rules this module owns (docs/protocol.md):

* Routing by kind: a request or a notification starts a call; a cancel
  reaches the call in flight with that id (or nothing); a credit adds to the
  window of the stream with that id, never beyond ``max_stream_window``;
  anything else a client may not send is answered with a protocol error
  (``"id": null``) and the connection goes on.
* Refusals, checked in this order: the server is shutting down; too many
  calls in flight on the connection; a call id already in flight; an unknown
  method; the access policy denies the peer (:mod:`..access`); a stream
  method called without a window (or a window sent to a unary method, or
  one over ``max_stream_window``); params that do not validate. A refused
  request is answered with its error, a refused notification only logged;
  the descriptors of a refused frame are closed at once.

No I/O: the engine reads; this decides what a frame means.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ...exceptions import (
    MethodNotFoundError,
    ProtocolViolationError,
    RPCError,
    ServerBusyError,
    ServerShuttingDownError,
)
from .. import messages, wire
from ..calls import close_fds
from .call import Cancel, Close, Event, Grant, ServerCall
from .codec import CANCEL, CREDIT, INVALID, REQUEST
from .encoding import log_call
from .intake import make_call
from .rules import UNKNOWN_PEER

if TYPE_CHECKING:
    from .connection import ServerConnection

__all__ = ["Reception"]

logger = logging.getLogger("unixrpc.server")


def _debug() -> bool:
    return logger.isEnabledFor(logging.DEBUG)


class Reception:
    """The receiving side of one server connection (see the module docstring)."""

    __slots__ = ("_conn",)

    def __init__(self, connection: ServerConnection) -> None:
        self._conn = connection

    def receive_fds(self, fds: Iterable[int]) -> None:
        """Descriptors that arrived with the bytes of a read (ours to close)."""
        conn = self._conn
        if conn._closed is not None:
            close_fds(fds)
            return
        if conn._read_fds is not None:
            before = len(conn._fd_queue)
            conn._fd_queue.push(fds)
            conn._read_fds.took(len(conn._fd_queue) - before)
        else:
            conn._fd_queue.push(fds)
        if not conn._recount_fds():  # many connections each holding descriptors for a frame begun
            limit = conn._rules.fd_budget.limit
            conn.fatal(
                f"the server holds more than {limit} descriptors sent ahead of their frames; try again later",
                at_once=True,
            )

    def stray_fds(self, frame_pending: bool) -> Close | None:
        """Check, with every received frame taken, that no descriptor waits
        for none (they ride on their frame's first byte)."""
        conn = self._conn
        queued = len(conn._fd_queue)
        if queued and not frame_pending:
            return conn.fatal(f"{queued} file descriptors came with no frame")
        if queued > conn._rules.max_fds:  # more than the one frame begun may carry
            limit = conn._rules.max_fds
            return conn.fatal(
                f"{queued} file descriptors queued for one frame (a frame carries at most {limit})"
            )
        return None

    def receive_control(self, frame: wire.RawFrame) -> Event | bool | None:
        """Take *frame* ahead of requests read before it, if it is a cancel
        or credit for a call already in flight (an engine whose calls wait
        for threads reads on, so those get through): its event, or None;
        False if it must wait its turn (a request, or anything else)."""
        conn = self._conn
        if conn._closed is not None or frame.nfds or conn._codec.ordered:
            return False  # (an ordered wire has neither cancel nor credit)
        message = conn._codec.decode(frame.body)
        if message[0] not in (CANCEL, CREDIT) or message[1] not in conn._calls:
            return False
        return self.receive_frame(frame)

    def receive_frame(self, frame: wire.RawFrame) -> Event | None:
        """Take one received frame: the event it causes, if any. Errors it
        causes (refusals, a frame that is no envelope) are queued as output."""
        conn = self._conn
        if conn._closed is not None:
            return None
        fds: list[int] = []
        if frame.nfds:
            try:
                fds = conn._fd_queue.take(frame.nfds)
            except ValueError as exc:
                return conn.fatal(str(exc))
            conn._recount_fds()
        message = conn._codec.decode(frame.body)
        kind = message[0]
        if kind == REQUEST:
            return self._request(message[1], message[2], message[3], message[4], fds)
        close_fds(fds)  # only requests carry descriptors
        if kind == CANCEL:
            call = conn._calls.get(message[1])
            if call is None or call.cancel_requested or call.answered:
                return None  # already answered (or never was): nothing to cancel
            call.cancel_requested = True
            return Cancel(call)
        if kind == CREDIT:
            call = conn._calls.get(message[1])
            if call is None or call.window is None:
                return None
            # outstanding credit never exceeds the window cap: a client within
            # its window never needs more, and a flood of credit buys nothing
            call.credit = min(call.credit + message[2], conn._rules.max_stream_window)
            if call.waiting_credit:
                call.waiting_credit = False
                return Grant(call)
            return None
        assert kind == INVALID
        conn._error(message[1], message[2])
        return None

    def _request(
        self, call_id: int | None, name: str, params: Any, window: int | None, fds: list[int]
    ) -> ServerCall | None:
        conn = self._conn
        rules = conn._rules
        error: RPCError
        if rules.stopping:
            self._refuse(call_id, name, fds, ServerShuttingDownError("server is shutting down"))
            return None
        if len(conn._calls) >= rules.max_calls_per_connection:
            limit = rules.max_calls_per_connection
            error = ServerBusyError(f"too many calls in flight on this connection (limit {limit})")
            self._refuse(call_id, name, fds, error)
            return None
        if call_id is not None and call_id in conn._calls:
            self._refuse(
                call_id, name, fds, ProtocolViolationError(f"call id {call_id} is already in flight")
            )
            return None
        handler = conn._handlers.get(name)
        if handler is None:
            self._refuse(
                call_id, name, fds, MethodNotFoundError(messages.method_not_found(name, conn._handlers))
            )
            return None
        if rules.access is not None:
            denied = rules.access.refusal(name, conn.peer or UNKNOWN_PEER)
            if denied is not None:
                self._refuse(call_id, name, fds, denied)
                return None
        call = make_call(handler, call_id, params, window, fds, rules.max_stream_window)
        if not isinstance(call, ServerCall):
            self._refuse(call_id, name, fds, call)
            return None
        if _debug():
            call.started = time.monotonic()
        conn._calls[call.key] = call
        return call

    def _refuse(self, call_id: int | None, name: str, fds: list[int], error: RPCError) -> None:
        conn = self._conn
        close_fds(fds)
        if call_id is not None:
            conn._queue(conn._codec.error(call_id, error.code, error.message, error.data))
        else:
            logger.info("connection %d: notification %r refused: %s", conn.connection_id, name, error)
        if _debug():  # the one line of a call that reached the server, refused
            log_call(
                name, call_id, conn.peer_pid, conn.peer_uid, f"refused {error.code}: {error.message}", None
            )
