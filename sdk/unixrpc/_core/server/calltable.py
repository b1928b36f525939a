"""The calls in flight on one server connection, and the one way each
ends (:class:`CallTable`): the authorization verdict judged, a handler's
outcome turned into its reply (:meth:`~CallTable.finish`), a cancel answered
(:meth:`~CallTable.stop`), a stream paced (:meth:`~CallTable.stream_step`),
every call retired on one path and its request descriptors released exactly
once. Part of :class:`.connection.ServerConnection`, which admits the calls
and owns the outbox. No I/O.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Final

from ...exceptions import (
    CallCancelledError,
    InternalError,
    PermissionDeniedError,
    RPCError,
    ServerShuttingDownError,
)
from ...fds import EMPTY_FDS, FdContext
from .. import messages
from .call import ServerCall
from .codec import WireCodec
from .encoding import discard_value, error_body, error_of, log_call, log_invalid, outcome_of
from .results import encode_value
from .rules import ServerRules

__all__ = ["ITEM", "NO_CREDIT", "NO_ROOM", "STOP", "CallTable"]

logger = logging.getLogger("unixrpc.server")

#: what :meth:`CallTable.stream_step` tells the engine to do next
ITEM: Final = "item"  # produce the next item (its credit is taken)
NO_CREDIT: Final = "credit"  # wait for the Grant event
NO_ROOM: Final = "room"  # wait until the output is written (the peer reads)
STOP: Final = "stop"  # the call was answered: close the generator, then finish()

Queue = Callable[..., None]


class CallTable:
    """The calls in flight of one connection (see the module docstring).

    *queue* queues a reply body (``queue(body, fds, release, call_id, owner)``);
    *output_full* says whether a stream must wait for the peer to read;
    *peer* is ``(pid, uid)`` for the log."""

    __slots__ = ("_codec", "_output_full", "_peer", "_queue", "_rules", "calls", "farewell", "turn")

    def __init__(
        self,
        rules: ServerRules,
        codec: WireCodec,
        queue: Queue,
        output_full: Callable[[], bool],
        peer: tuple[int, int],
    ) -> None:
        self._rules = rules
        self._codec = codec
        self._queue = queue
        self._output_full = output_full
        self._peer = peer
        self.calls: dict[int | object, ServerCall] = {}
        #: the connection's last words (an error about the connection), queued
        #: after the replies of the calls still in flight when it was closed
        self.farewell: bytes | None = None
        #: told when the last call in flight of an ordered wire retires (the next may start)
        self.turn: Callable[[], None] | None = None

    def authorized(self, call: ServerCall, verdict: object) -> bool:
        """The authorization hook answered *verdict* for *call* (its return
        value, or the exception it raised): True to run the handler. Else the
        call is answered (``PermissionDenied``; a typed error as itself; any
        other exception as the hook's failure, logged) and over."""
        if isinstance(verdict, BaseException):
            if isinstance(verdict, RPCError):
                self._fail_with(call, verdict)
                return False
            method = call.handler.spec.name
            logger.error("the authorize hook raised on a call of %s", method, exc_info=verdict)
            self._fail_with(call, InternalError(messages.authorize_failed(method, verdict)))
            return False
        if verdict:
            return True
        name, uid, pid = call.handler.spec.name, self._peer[1], self._peer[0]
        logger.info("denied %s to pid %d uid %d (the authorize hook said no)", name, pid, uid)
        self._fail_with(call, PermissionDeniedError(f"{name} is not allowed for uid {uid} (pid {pid})"))
        return False

    def finish(self, call: ServerCall, value: Any = None, *, raised: BaseException | None = None) -> None:
        """The handler of *call* returned *value* (a stream: its generator
        ended), or raised *raised*. Its reply is queued and it is retired;
        for a call already answered (stopped while its handler ran on), what
        it produced is discarded (descriptors it hands over are closed) and
        its request descriptors are released."""
        if call.answered:
            if raised is None:
                discard_value(call.handler.spec, value)
            self.release(call)
            return
        if call.cancel_requested and call.handler.spec.streaming and raised is None:
            # a stream that stopped because it was cancelled (stream_step said STOP before the
            # engine's cancellation reached it): it ends with the cancel's error, never a result
            self.stop(call)
            return
        if raised is not None:
            self._fail(call, raised)
            return
        call_id = call.call_id
        if call_id is None:
            discard_value(call.handler.spec, value)
            self._retire(call, None, None)
            return
        if call.handler.spec.streaming:
            self._retire(call, self._codec.result(call_id, b"null"), None)
            return
        try:
            encoded, fds = encode_value(call.handler.spec, value, "result")
        except InternalError as exc:
            log_invalid(exc, value)
            self._fail_with(call, exc)
            return
        self._retire(call, self._codec.result(call_id, encoded), fds)

    def stop(self, call: ServerCall, *, running: bool = False) -> None:
        """*call* was cancelled (by its client, its peer leaving, or shutdown):
        answer ``Cancelled`` (or the shutdown error) now. *running*: its
        handler runs on (a thread that cannot be interrupted, a cleanup): its
        request descriptors stay open until :meth:`finish`. Else the call is
        over and released now (also for a call answered before)."""
        if call.answered:
            if not running:
                self.release(call)
            return
        call.abandoned = running
        if call.call_id is None:
            self._retire(call, None, None)
            return
        error = call.cancel_error or CallCancelledError("call cancelled by the client")
        self._retire(call, self._codec.error(call.call_id, error.code, error.message), None)

    def stream_step(self, call: ServerCall) -> str:
        """What the stream *call* does next: :data:`ITEM` (produce one item;
        its credit is taken), :data:`NO_CREDIT` (wait for the Grant event),
        :data:`NO_ROOM` (wait until the output is written), or :data:`STOP`
        (answered or cancelled: close the generator, then :meth:`finish`)."""
        if call.answered or call.cancel_requested:
            return STOP
        if self._output_full():
            return NO_ROOM
        if call.call_id is None or not self._codec.credit:
            return ITEM
        if call.credit > 0:
            call.credit -= 1
            return ITEM
        call.waiting_credit = True
        return NO_CREDIT

    def item(self, call: ServerCall, value: Any) -> None:
        """Queue a stream item of *call* (discarded for a notification).

        Raises:
            InternalError: the item does not fit the stream's type, or its
                frame is over the limit (finish the call with it).
        """
        if call.call_id is None or call.answered:
            discard_value(call.handler.spec, value)
            return
        try:
            encoded, fds = encode_value(call.handler.spec, value, "item")
        except InternalError as exc:
            log_invalid(exc, value)
            raise
        body = self._codec.item(call.call_id, encoded)
        if len(body) > self._rules.max_frame_size:
            if fds is not None:
                fds.sent()
            raise InternalError(f"a stream item of {len(body)} bytes is over the frame limit")
        self._queue(body, fds, owner=call)

    def _fail(self, call: ServerCall, exc: BaseException) -> None:
        pid, uid = self._peer
        who = f" (call {call.call_id} from pid {pid} uid {uid})"
        fields = {"unixrpc_method": call.handler.spec.name, "unixrpc_call_id": call.call_id}
        fields.update(unixrpc_peer_pid=pid, unixrpc_peer_uid=uid, unixrpc_outcome="raised")
        self._fail_with(
            call, error_of(call.handler.spec.name, exc, self._rules.expose_tracebacks, who, fields)
        )

    def _fail_with(self, call: ServerCall, error: RPCError) -> None:
        if call.call_id is None:
            logger.info("notification %s failed: %r", call.handler.spec.name, error)
            self._retire(call, None, None)
            return
        self._retire(call, *error_body(self._codec, call.call_id, error))

    def _retire(self, call: ServerCall, body: bytes | None, fds: FdContext | None) -> None:
        """The one path out of the call table: queue the final frame, free
        the id and the slot, and release the request's descriptors once
        nothing can refer to them; the connection's farewell, if one waits,
        follows the last call's reply."""
        call.answered = True
        call.waiting_credit = False
        self.calls.pop(call.key, None)
        if call.started:
            ms = (time.monotonic() - call.started) * 1000
            log_call(call.handler.spec.name, call.call_id, self._peer[0], self._peer[1], outcome_of(body), ms)
        request_fds = call.request_fds
        if body is None:
            if not call.abandoned:
                self.release(call)
        elif fds is not None:
            # a reply may hand back a request descriptor: release them with it
            release = None if call.abandoned or request_fds is EMPTY_FDS else request_fds
            if release is not None:
                call.released = True
            self._queue(body, fds, release, call.call_id)
        else:
            self._queue(body, call_id=call.call_id)
            if call.abandoned:
                pass
            elif request_fds is EMPTY_FDS and not call.fd_frames:  # (release, inlined: the usual case)
                call.released = True
            else:
                self.release(call)
        if self.farewell is not None and not self.calls:
            farewell, self.farewell = self.farewell, None
            self._queue(farewell)
        if self.turn is not None and not self.calls:
            self.turn()

    @staticmethod
    def release(call: ServerCall) -> None:
        """Close *call*'s request descriptors, once (after the items that may
        carry one of them are written)."""
        if call.released:
            return
        if call.fd_frames:  # an item still to write may carry one of them
            call.release_pending = True
            return
        call.released = True
        if call.request_fds is not EMPTY_FDS:
            call.request_fds.abort()

    def hang_up(self) -> list[ServerCall]:
        """The peer is gone (no reply can reach it): the calls to cancel
        (notifications are let finish)."""
        to_cancel = []
        for call in self.calls.values():
            if call.call_id is not None and not call.cancel_requested:
                call.cancel_requested = True
                to_cancel.append(call)
        return to_cancel

    def end_streams(self) -> list[ServerCall]:
        """Shutdown began: the streams to cancel now (they would never end by
        themselves); each is answered ``ServerShuttingDownError``."""
        ended = []
        for call in self.calls.values():
            if call.handler.spec.streaming and not call.cancel_requested:
                call.cancel_requested = True
                call.cancel_error = ServerShuttingDownError("server is shutting down: the stream was ended")
                ended.append(call)
        return ended

    def cut_off(self) -> list[ServerCall]:
        """The grace period is over: answer every call still in flight
        ``ServerShuttingDownError`` now. The calls to cancel (each still
        ends with :meth:`finish`, or :meth:`stop` if it never ran)."""
        left = []
        for call in list(self.calls.values()):
            if call.call_id is not None:
                call.cancel_requested = True
                call.cancel_error = ServerShuttingDownError(
                    "server is shutting down: the call did not finish within the grace period"
                )
                self.stop(call, running=True)
                left.append(call)
        return left
