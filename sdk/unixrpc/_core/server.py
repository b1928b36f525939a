"""The server side of one connection, as a sans-IO protocol object.

Frames and their descriptors go in (:meth:`ServerConnection.receive_fds`,
:meth:`~ServerConnection.receive_frame`); what the engine must do comes out
as events (start this call, cancel that one, credit arrived for this
stream, close the connection); what a call produced goes in
(:meth:`~ServerConnection.complete`, :meth:`~ServerConnection.fail`,
:meth:`~ServerConnection.cancelled`, :meth:`~ServerConnection.item`); the
bytes to write come out of one outbox (:meth:`~ServerConnection.take_output`),
in the order they were produced.

Rules this module owns (docs/protocol.md):

* Routing by kind: a request or a notification starts a call; a cancel
  reaches the call in flight with that id (or nothing); a credit adds to the
  window of the stream with that id; anything else a client may not send is
  answered with a protocol error (``"id": null``) and the connection goes on.
* Refusals, checked in this order: the server is shutting down; too many
  calls in flight on the connection; a call id already in flight; an unknown
  method; the access policy denies the peer (:mod:`.access`); a stream
  method called without a ``"stream"`` window (or a window sent to a unary
  method); params that do not validate. A refused request is
  answered with its error, a refused notification is only logged; the
  descriptors of a refused frame are closed at once.
* Answered or fatal: a frame that is not an envelope gets an error and the
  connection goes on, but a stream that cannot be trusted any more (an
  oversized frame, more descriptors than a frame may carry, a frame declaring
  descriptors that never came, descriptors that came with no frame) queues one
  error (``"id": null``) and closes the connection: :class:`Close`.
* Credit: a stream may send as many items as its window, plus what credit
  messages add. A notification of a stream method runs, and its items are
  discarded (nobody reads them).
* Every call gets exactly one final reply: its result (a stream's is
  ``null``), its error, or ``Cancelled``. It is retired on one path
  (:meth:`ServerConnection._retire`): out of the call table, its final frame
  queued, its request descriptors closed once nothing can refer to them any
  more (after the reply that may hand one back is written, and after a handler
  that was abandoned still running has returned).
* Encoding: results, items and typed errors are encoded here (FD fields with
  the frame), a result that does not fit its type or a frame over the limit
  becomes an ``InternalError`` for the same call.
* Output: the outbox counts the bytes not yet written (:attr:`unsent`);
  :meth:`ServerConnection.wants_input` is False while those queued behind a
  write in progress are over the connection's bound, so a peer that does not
  read cannot grow it.

No I/O here: no socket, anyio, trio, asyncio or threading import (this module
and the typed layer it uses, :mod:`..fds` and :mod:`..methods`, never wait or
touch a socket). Engines (``server/``) wait and move bytes.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, Final

import orjson
from pydantic import ValidationError

from .._ratelog import RateLimitedLog
from ..exceptions import (
    AncillaryDataTruncatedError,
    CallCancelledError,
    InternalError,
    InvalidParamsError,
    MethodNotFoundError,
    PermissionDeniedError,
    ProtocolViolationError,
    RPCError,
    ServerBusyError,
    ServerShuttingDownError,
    StreamProtocolParseError,
)
from ..fds import EMPTY_FDS, NO_FDS, FdContext, serialize
from ..methods import MethodSpec
from . import messages, wire
from .access import AccessTable, PeerFacts
from .calls import FdQueue, close_fds
from .results import encode_value

__all__ = [
    "Admission",
    "MemoryBudget",
    "Cancel",
    "Close",
    "FdFrame",
    "Grant",
    "Handler",
    "ServerCall",
    "ServerConnection",
    "ServerRules",
]

logger = logging.getLogger("unixrpc.server")

_NO_PARAMS: Final[dict[str, Any]] = {}  # a request without "params" (pydantic never writes to input)
_frame: Final = wire.frame
#: the largest window a stream may be opened with; credit beyond it is not honoured
DEFAULT_MAX_STREAM_WINDOW: Final = 1024
#: unsent bytes over which a connection stops being read (its peer does not read)
DEFAULT_MAX_UNSENT: Final = 1024 * 1024


def _debug() -> bool:
    return logger.isEnabledFor(logging.DEBUG)


def _outcome(body: bytes) -> str:
    """What a final frame says, for the log: ok, or the error's code."""
    if body.startswith(b'{"id":') and b',"result":' in body[:40]:
        return "ok"
    try:
        return str(orjson.loads(body)["error"]["code"])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return "?"


_warn = RateLimitedLog(logger, logging.WARNING, "protocol violations")


class MemoryBudget:
    """The bytes all connections of a server may hold beyond their read
    buffers: large frames being received and output not yet written. A
    connection that grows while the total is over the limit is closed (the
    engines charge after every read), so the worst case is the limit plus
    one frame, not connections x frames. The connections charge it
    themselves (:class:`ServerConnection`), after every read and whenever
    their unsent output changes; an engine whose connections run on several
    threads gives it a lock (any context manager: the core imports no
    threading)."""

    __slots__ = ("_lock", "limit", "total")

    def __init__(self, limit: int, lock: AbstractContextManager[Any] | None = None) -> None:
        self.limit = limit
        self.total = 0
        self._lock = lock if lock is not None else nullcontext()

    def charge(self, before: int, now: int) -> bool:
        """A connection held *before* bytes and holds *now*: False if it grew
        and the server is now over its budget (close that connection)."""
        with self._lock:
            self.total += now - before
            return now <= before or self.total <= self.limit


class Admission:
    """Who may connect: at most *max_connections* at once, and at most
    *per_uid* of them from one user (so one local user cannot lock the
    others out). Not thread-safe: the engines call it from their accepting
    loop."""

    def __init__(self, max_connections: int, per_uid: int) -> None:
        self.max_connections = max_connections
        self.per_uid = per_uid
        self.connections = 0
        self._by_uid: dict[int, int] = {}

    def admit(self, uid: int, pid: int) -> str | None:
        """Count a new connection from *uid* in: None, or why it is refused."""
        if self.connections >= self.max_connections:
            refusal = f"too many connections (limit {self.max_connections})"
        elif self._by_uid.get(uid, 0) >= self.per_uid:
            refusal = f"too many connections from uid {uid} (limit {self.per_uid} per uid)"
        else:
            self.connections += 1
            self._by_uid[uid] = self._by_uid.get(uid, 0) + 1
            return None
        logger.info("refused a connection from pid %d uid %d: %s", pid, uid, refusal)
        return refusal

    def release(self, uid: int) -> None:
        """A connection admitted for *uid* has ended."""
        self.connections -= 1
        left = self._by_uid[uid] - 1
        if left:
            self._by_uid[uid] = left
        else:
            del self._by_uid[uid]


@dataclass(frozen=True, slots=True)
class Handler:
    """A served method: its spec and the function that serves it."""

    spec: MethodSpec
    function: Callable[..., Any]
    wants_context: bool
    is_async: bool


class ServerRules:
    """What every connection of one server obeys: the methods served, the
    limits, and whether the server is shutting down (set by the server)."""

    __slots__ = (
        "access",
        "connection_idle_timeout",
        "expose_tracebacks",
        "frame_timeout",
        "handlers",
        "max_calls_per_connection",
        "max_fds",
        "max_frame_size",
        "max_stream_window",
        "max_unsent",
        "memory",
        "stopping",
    )

    def __init__(
        self,
        handlers: dict[str, Handler],
        *,
        max_calls_per_connection: int = 256,
        max_frame_size: int = wire.DEFAULT_MAX_FRAME_SIZE,
        max_fds: int = wire.DEFAULT_MAX_FDS_PER_FRAME,
        max_unsent: int = DEFAULT_MAX_UNSENT,
        expose_tracebacks: bool = False,
        max_buffered_bytes: int = 256 * 1024 * 1024,
        max_stream_window: int = DEFAULT_MAX_STREAM_WINDOW,
        frame_timeout: float | None = None,
        connection_idle_timeout: float | None = None,
        memory_lock: AbstractContextManager[Any] | None = None,
    ) -> None:
        self.handlers = handlers
        #: the largest stream window (and outstanding credit) a client may ask for
        self.max_stream_window = max_stream_window
        self.max_calls_per_connection = max_calls_per_connection
        self.max_frame_size = max_frame_size
        self.max_fds = max_fds
        self.max_unsent = max_unsent
        self.expose_tracebacks = expose_tracebacks
        #: seconds a frame begun may take to arrive whole (None: no limit)
        self.frame_timeout = frame_timeout
        #: seconds a connection with nothing in flight may stay silent (None: no limit)
        self.connection_idle_timeout = connection_idle_timeout
        self.stopping = False
        #: what all connections hold beyond their read buffers
        self.memory = MemoryBudget(max_buffered_bytes, memory_lock)
        #: the access policy (set by the server when it starts serving); None: none
        self.access: AccessTable | None = None


class _UnknownPeer:
    """The peer of a connection made without one: no rule but everyone allows it."""

    pid, uid, gid, groups = 0, -1, -1, None


_UNKNOWN_PEER: Final = _UnknownPeer()


class ServerCall:
    """One call in flight, from its request to its retirement.

    ``engine`` and ``context`` are the engine's own slots (what cancels the
    call; the ``CallContext`` its handler sees); the core never looks at them.
    """

    __slots__ = (
        "abandoned",
        "answered",
        "call_id",
        "cancel_error",
        "cancel_requested",
        "context",
        "credit",
        "engine",
        "fd_frames",
        "handler",
        "key",
        "release_pending",
        "request",
        "request_fds",
        "started",
        "waiting_credit",
        "window",
    )

    def __init__(
        self,
        handler: Handler,
        request: Any,
        call_id: int | None,
        window: int | None,
        request_fds: FdContext,
    ) -> None:
        self.handler = handler
        self.request = request
        self.call_id = call_id  # None for a notification
        self.key: int | object = call_id if call_id is not None else object()
        self.window = window  # a stream's initial credit window (None: unary, or a notification)
        self.credit = window or 0
        self.request_fds = request_fds
        self.answered = False  # its final reply is queued (it is retired)
        self.abandoned = False  # answered while its handler still runs (a thread)
        self.cancel_requested = False
        self.cancel_error: RPCError | None = None  # why, when not the client's cancel
        self.waiting_credit = False
        self.started = 0.0  # monotonic time it started (kept only for the debug log)
        # items with descriptors not yet written: an item may hand back a request
        # descriptor, so those are released only once the last one is out
        self.fd_frames = 0
        self.release_pending = False
        self.engine: Any = None
        self.context: Any = None  # the CallContext the engine made for it, if any

    @property
    def streaming(self) -> bool:
        return self.handler.spec.streaming

    @property
    def method(self) -> str:
        return self.handler.spec.name

    def __repr__(self) -> str:
        return f"<call {self.call_id} of {self.handler.spec.name}>"


class Cancel:
    """Event: the client cancelled *call*; stop it, then report :meth:`ServerConnection.cancelled`."""

    __slots__ = ("call",)

    def __init__(self, call: ServerCall) -> None:
        self.call = call


class Grant:
    """Event: credit arrived for *call*, a stream that waits for it."""

    __slots__ = ("call",)

    def __init__(self, call: ServerCall) -> None:
        self.call = call


class Close:
    """Event: the connection cannot go on; write what is queued and close it."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def __repr__(self) -> str:
        return f"Close({self.reason!r})"


Event = ServerCall | Cancel | Grant | Close


class FdFrame:
    """An outgoing frame with descriptors: they go on the ``sendmsg`` that
    carries its first byte. Report it written (or not) with
    :meth:`ServerConnection.written`."""

    __slots__ = ("data", "fds", "owner", "release")

    def __init__(
        self, data: bytes, fds: FdContext, release: FdContext | None, owner: ServerCall | None = None
    ) -> None:
        self.data = data
        self.fds = fds  # what the frame carries
        self.release = release  # request descriptors to close once it is written
        self.owner = owner  # the stream whose item it is (its request fds wait for it)

    def fileno_list(self) -> list[int]:
        return [handle.fileno() for handle in self.fds.outgoing]


Chunk = bytes | FdFrame


class ServerConnection:
    """The protocol state of one server connection (see the module docstring).

    Not thread-safe: an engine with threads calls it under one lock.
    """

    __slots__ = (
        "_calls",
        "_closed",
        "_discard_output",
        "_fd_queue",
        "_held",
        "_idle_since",
        "_out",
        "_out_fds",
        "_partial_since",
        "_queued",
        "_receive_excess",
        "_rules",
        "connection_id",
        "output_failed",
        "peer",
        "peer_pid",
        "peer_uid",
        "unsent",
    )

    def __init__(
        self,
        rules: ServerRules,
        connection_id: int = 0,
        peer_pid: int = 0,
        peer_uid: int = -1,
        *,
        peer: PeerFacts | None = None,
    ) -> None:
        self._rules = rules
        self.connection_id = connection_id
        self.peer_pid = peer_pid  # for the log
        self.peer_uid = peer_uid
        self.peer = peer  # what the access policy looks at (None: a policy refuses every call)
        self._fd_queue = FdQueue()
        self._calls: dict[int | object, ServerCall] = {}
        self._out: list[Chunk] = []
        self._out_fds = False  # the outbox holds an FdFrame
        self._queued = 0  # bytes in the outbox (not yet taken by a writer)
        self._closed: str | None = None  # why the connection is closing
        #: bytes queued and not yet reported written
        self.unsent = 0
        #: a write failed: the peer is gone, further output is dropped
        self.output_failed = False
        self._discard_output = False  # closed for its output: what calls still produce is dropped
        self._held = 0  # what this connection is charged in the server's memory budget
        self._receive_excess = 0  # its receive buffer beyond the base read size
        self._partial_since: float | None = None  # when the frame half received began to arrive
        self._idle_since: float | None = None  # when it last became idle (nothing in flight)

    # -- state ------------------------------------------------------------------

    def __len__(self) -> int:
        """Calls in flight."""
        return len(self._calls)

    def calls(self) -> list[ServerCall]:
        """The calls in flight."""
        return list(self._calls.values())

    @property
    def closing(self) -> str | None:
        """Why the connection is being closed, or None."""
        return self._closed

    def busy(self) -> bool:
        """Calls in flight or output not yet written: a graceful shutdown waits."""
        return bool(self._calls) or bool(self._out) or self.unsent > 0

    # -- facts from the engine: reads, time, hang-up ---------------------------------

    def received(self, now: float, *, partial: bool, receive_buffer: int = 0) -> Close | None:
        """A read brought bytes at *now* (monotonic seconds): *partial* if a
        frame is still half received after it; *receive_buffer* is the size
        of the read buffer beyond the base read size (a large frame growing
        it). Restarts the idle clock, starts or stops the frame clock, and
        charges the server's memory budget: a Close if this connection grew
        while the server is over it."""
        if partial:
            if self._partial_since is None:
                self._partial_since = now
        else:
            self._partial_since = None
        self._idle_since = now
        self._receive_excess = receive_buffer
        if not self._charge():
            return self._over_budget()
        return None

    def read_failed(self, exc: BaseException) -> Close:
        """The engine's read raised *exc*: what it means for the connection.
        A stream that cannot be parsed (an oversized frame, too many
        descriptors) is answered with one error and closed; truncated control
        data (descriptors lost on the way) is closed silently and logged; any
        other failure means the peer is gone."""
        if isinstance(exc, StreamProtocolParseError):
            return self.fatal(str(exc.error))
        if isinstance(exc, AncillaryDataTruncatedError):
            return self.fatal(str(exc), tell_peer=False)
        if self._closed is None:
            self._closed = "the peer closed the connection"
        return Close(self._closed)

    def next_deadline(self, now: float) -> float | None:
        """When :meth:`on_timer` must be called if nothing else happens
        first (None: no deadline now). A frame begun must arrive whole
        within ``frame_timeout``; a connection with no call in flight and no
        output waiting is closed after ``connection_idle_timeout`` of silence,
        counted from the later of its last read and the moment it became idle
        (its last call answered and written)."""
        rules = self._rules
        if self._closed is not None:
            return None
        if self._partial_since is not None:
            limit = rules.frame_timeout
            return None if limit is None else self._partial_since + limit
        limit = rules.connection_idle_timeout
        if self._calls or self.unsent or self._out:
            self._idle_since = None
            return None
        if self._idle_since is None:
            self._idle_since = now
        return None if limit is None else self._idle_since + limit

    def on_timer(self, now: float) -> Close | None:
        """A deadline of :meth:`next_deadline` may have passed (checked again
        now, so a waiter acting late on an old deadline closes nothing): the
        Close, if the connection must end."""
        deadline = self.next_deadline(now)
        if deadline is None or now < deadline:
            return None
        if self._partial_since is not None:
            return self.fatal(f"a frame was not finished within {self._rules.frame_timeout} s")
        return self.fatal(f"idle for {self._rules.connection_idle_timeout} s", tell_peer=False)

    def _charge(self) -> bool:
        held = self._receive_excess + self.unsent
        if held == self._held:
            return True
        ok = self._rules.memory.charge(self._held, held)
        self._held = held
        return ok

    def _over_budget(self) -> Close:
        limit = self._rules.memory.limit
        return self.fatal(
            f"the server holds more than its budget of {limit} bytes in buffers; try again later"
        )

    def wants_input(self) -> bool:
        """False once the connection is closing, or while the output queued
        behind a write in progress is over the bound: the peer does not read,
        so take no more requests until it does (neither from the socket nor
        from frames already read). (The frame being written does not count:
        a cancel or credit behind it must still be read.)"""
        return self._closed is None and self._queued <= self._rules.max_unsent

    def output_full(self) -> bool:
        """True while the output not yet written is over the bound: a stream
        produces no further item until the peer reads (or the write fails)."""
        return self.unsent > self._rules.max_unsent and not self.output_failed

    def has_output(self) -> bool:
        return bool(self._out)

    # -- input ------------------------------------------------------------------

    def receive_fds(self, fds: Iterable[int]) -> None:
        """Descriptors that arrived with the bytes of a read (ours to close)."""
        if self._closed is not None:
            close_fds(fds)
        else:
            self._fd_queue.push(fds)

    def stray_fds(self, frame_pending: bool) -> Close | None:
        """Check, with every received frame taken, that no descriptor waits
        for none: they ride on their frame's first byte, so with no frame
        begun (*frame_pending* False) they belong to none (the peer declared
        too few)."""
        queued = len(self._fd_queue)
        if queued and not frame_pending:
            return self.fatal(f"{queued} file descriptors came with no frame")
        if queued > self._rules.max_fds:  # more than the one frame begun may carry
            limit = self._rules.max_fds
            return self.fatal(
                f"{queued} file descriptors queued for one frame (a frame carries at most {limit})"
            )
        return None

    def fatal(self, reason: str, *, tell_peer: bool = True) -> Close:
        """The stream cannot be trusted any more (the engine's reader found an
        oversized frame, too many descriptors, truncated control data...):
        queue one error about it, unless *tell_peer* is False, and close."""
        if self._closed is None:
            self._closed = reason
            self._fd_queue.close_all()
            _warn("connection %d (pid %d): closed: %s", self.connection_id, self.peer_pid, reason)
            if tell_peer:
                error = ProtocolViolationError(reason)
                self._queue(wire.encode_error(None, error.code, error.message))
        return Close(reason)

    def receive_frame(self, frame: wire.RawFrame) -> Event | None:
        """Take one received frame: the event it causes, if any. Errors it
        causes (refusals, a frame that is no envelope) are queued as output."""
        if self._closed is not None:
            return None
        fds: list[int] = []
        if frame.nfds:
            try:
                fds = self._fd_queue.take(frame.nfds)
            except ValueError as exc:
                return self.fatal(str(exc))
        envelope: Any = None
        try:
            envelope = orjson.loads(frame.body)
            kind = wire.classify(envelope)
        except (orjson.JSONDecodeError, ValueError) as exc:
            close_fds(fds)
            call_id = envelope.get("id") if type(envelope) is dict else None
            self._error(call_id if wire.is_call_id(call_id) else None, f"invalid envelope: {exc}")
            return None
        if kind == wire.REQUEST or kind == wire.NOTIFICATION:
            return self._request(envelope, fds)
        close_fds(fds)  # only requests carry descriptors
        if kind == wire.CANCEL:
            call = self._calls.get(envelope["cancel"])
            if call is None or call.cancel_requested or call.answered:
                return None  # already answered (or never was): nothing to cancel
            call.cancel_requested = True
            return Cancel(call)
        if kind == wire.CREDIT:
            call = self._calls.get(envelope["credit"])
            if call is None or call.window is None:
                return None
            # outstanding credit never exceeds the window cap: a client within
            # its window never needs more, and a flood of credit buys nothing
            call.credit = min(call.credit + envelope["n"], self._rules.max_stream_window)
            if call.waiting_credit:
                call.waiting_credit = False
                return Grant(call)
            return None
        self._error(None, f"a client may not send {kind} messages")
        return None

    def _request(self, envelope: dict[str, Any], fds: list[int]) -> ServerCall | None:
        rules = self._rules
        call_id: int | None = envelope.get("id")
        name: str = envelope["method"]
        error: RPCError
        if rules.stopping:
            self._refuse(call_id, name, fds, ServerShuttingDownError("server is shutting down"))
            return None
        if len(self._calls) >= rules.max_calls_per_connection:
            limit = rules.max_calls_per_connection
            error = ServerBusyError(f"too many calls in flight on this connection (limit {limit})")
            self._refuse(call_id, name, fds, error)
            return None
        if call_id is not None and call_id in self._calls:
            error = ProtocolViolationError(f"call id {call_id} is already in flight")
            self._refuse(call_id, name, fds, error)
            return None
        handler = rules.handlers.get(name)
        if handler is None:
            error = MethodNotFoundError(messages.method_not_found(name, rules.handlers))
            self._refuse(call_id, name, fds, error)
            return None
        if rules.access is not None:
            denied = rules.access.refusal(name, self.peer or _UNKNOWN_PEER)
            if denied is not None:
                self._refuse(call_id, name, fds, denied)
                return None
        window = envelope.get("stream")
        if window is not None or handler.spec.streaming:
            if handler.spec.streaming and window is None and call_id is not None:
                error = ProtocolViolationError(f'{name} is a stream method: send a "stream" window')
                self._refuse(call_id, name, fds, error)
                return None
            if not handler.spec.streaming and window is not None:
                error = ProtocolViolationError(f"{name} is not a stream method")
                self._refuse(call_id, name, fds, error)
                return None
            if window is not None and window > rules.max_stream_window:
                limit = rules.max_stream_window
                error = ProtocolViolationError(
                    f"stream window {window} is over this server's limit of {limit}:"
                    " open the stream with a smaller stream_window"
                )
                self._refuse(call_id, name, fds, error)
                return None
            if call_id is None:
                window = None  # a notification of a stream: its items are discarded
        params = envelope.get("params", _NO_PARAMS)
        if fds:
            request_fds = FdContext(fds)
            context = request_fds.pydantic_context
            fds = []  # owned by request_fds from here on
        else:  # the common case: the shared empty context, which nothing changes
            request_fds, context = EMPTY_FDS, NO_FDS
        try:
            validator = handler.spec.method_class.__pydantic_validator__
            request = validator.validate_python(params, context=context, extra=handler.spec.wire_extra)
        except ValidationError as exc:
            request_fds.abort()
            errors = exc.errors(include_url=False, include_context=False)
            error = InvalidParamsError(messages.invalid_params(name, errors), data=errors)
            self._refuse(call_id, name, fds, error)
            return None
        except Exception as exc:  # a validator that raised something else: the call fails, not the server
            request_fds.abort()
            logger.exception("validating the params of %s raised", name)
            error = InternalError(f"validating the params of {name} raised {type(exc).__name__}")
            self._refuse(call_id, name, fds, error)
            return None
        if request_fds is not EMPTY_FDS:
            request_fds.finish()  # descriptors no FD field took are closed
        call = ServerCall(handler, request, call_id, window, request_fds)
        if _debug():
            call.started = time.monotonic()
        self._calls[call.key] = call
        return call

    def _refuse(self, call_id: int | None, name: str, fds: list[int], error: RPCError) -> None:
        close_fds(fds)
        if call_id is not None:
            self._queue(wire.encode_error(call_id, error.code, error.message, error.data))
        else:
            logger.info("connection %d: notification %r refused: %s", self.connection_id, name, error)

    def _error(self, call_id: int | None, message: str) -> None:
        _warn("connection %d (pid %d): %s", self.connection_id, self.peer_pid, message)
        error = ProtocolViolationError(message)
        self._queue(wire.encode_error(call_id, error.code, error.message))

    # -- what calls produce -----------------------------------------------------

    def complete(self, call: ServerCall, value: Any = None) -> None:
        """The handler of *call* returned *value* (a stream: ended). Its reply
        is queued and it is retired; for a call already answered (abandoned
        while its handler ran on), only its descriptors are released."""
        if call.answered:
            self._discard(call, value)
            self._release(call)
            return
        call_id = call.call_id
        if call_id is None:
            self._discard(call, value)
            self._retire(call, None, None)
            return
        if call.handler.spec.streaming:
            self._retire(call, wire.encode_result(call_id, b"null"), None)
            return
        try:
            encoded, fds = self._encode(call, value, "result")
        except InternalError as exc:
            self._fail_with(call, exc)
            return
        self._retire(call, wire.encode_result(call_id, encoded), fds)

    def fail(self, call: ServerCall, exc: BaseException) -> None:
        """The handler of *call* raised *exc*: a typed error is sent as
        itself, anything else as an InternalError (logged; its traceback sent
        only if the server exposes them)."""
        if call.answered:
            self._release(call)
            return
        if isinstance(exc, RPCError):
            self._fail_with(call, exc)
            return
        name = call.handler.spec.name
        logger.error("handler of %s raised", name, exc_info=exc)
        data = (
            {"traceback": "".join(traceback.format_exception(exc))} if self._rules.expose_tracebacks else None
        )
        self._fail_with(call, InternalError(f"handler of {name} raised {type(exc).__name__}", data=data))

    def deny(self, call: ServerCall, uid: int, pid: int) -> None:
        """The authorization hook refused *call* for the peer (*uid*, *pid*)."""
        logger.info(
            "denied %s to pid %d uid %d (the authorize hook said no)", call.handler.spec.name, pid, uid
        )
        error = PermissionDeniedError(f"{call.handler.spec.name} is not allowed for uid {uid} (pid {pid})")
        self._fail_with(call, error)

    def hook_failed(self, call: ServerCall, exc: Exception) -> None:
        """The authorization hook raised *exc* on *call*: a typed error goes
        as itself, anything else is reported as the hook's failure (not the
        handler's), and logged."""
        if isinstance(exc, RPCError):
            self._fail_with(call, exc)
            return
        method = call.handler.spec.name
        logger.error("the authorize hook raised on a call of %s", method, exc_info=exc)
        self._fail_with(call, InternalError(messages.authorize_failed(method, exc)))

    def cancelled(self, call: ServerCall, *, still_running: bool = False) -> None:
        """*call* was cancelled (by its client, its peer leaving, or shutdown):
        answer ``Cancelled``. With *still_running*, its handler runs on (a
        thread that cannot be interrupted): its request descriptors stay open
        until the engine reports it finished with :meth:`complete` or :meth:`fail`."""
        if call.answered:
            return
        call.abandoned = still_running
        if call.call_id is None:
            self._retire(call, None, None)
            return
        error = call.cancel_error or CallCancelledError("call cancelled by the client")
        self._retire(call, wire.encode_error(call.call_id, error.code, error.message), None)

    def take_credit(self, call: ServerCall) -> bool:
        """Use one item of *call*'s window: False when it has none (then wait
        for the :class:`Grant` event; a notification's stream never waits)."""
        if call.call_id is None:
            return True
        if call.credit > 0:
            call.credit -= 1
            return True
        call.waiting_credit = True
        return False

    def item(self, call: ServerCall, value: Any) -> None:
        """Queue a stream item of *call* (discarded for a notification).

        Raises:
            InternalError: the item does not fit the stream's type, or its
                frame is over the limit (fail the call with it).
        """
        if call.call_id is None or call.answered:
            self._discard(call, value)
            return
        encoded, fds = self._encode(call, value, "item")
        body = wire.encode_item(call.call_id, encoded)
        if len(body) > self._rules.max_frame_size:
            if fds is not None:
                fds.sent()
            raise InternalError(f"a stream item of {len(body)} bytes is over the frame limit")
        self._queue(body, fds, owner=call)

    def _fail_with(self, call: ServerCall, error: RPCError) -> None:
        if call.call_id is None:
            logger.info("notification %s failed: %r", call.handler.spec.name, error)
            self._retire(call, None, None)
            return
        fields = getattr(error, "_rpc_fields", None)
        fds: FdContext | None = None
        if fields is None:
            body = wire.encode_error(call.call_id, error.code, error.message, error.data)
        else:
            fds = FdContext()  # typed fields may hold FDs: encode them with the frame
            data = orjson.loads(fields.__pydantic_serializer__.to_json(fields, context=fds.pydantic_context))
            body = wire.encode_error(call.call_id, error.code, error.message, data)
            if not fds.outgoing:
                fds = None
        self._retire(call, body, fds)

    def _retire(self, call: ServerCall, body: bytes | None, fds: FdContext | None) -> None:
        """The one path out of the call table: queue the final frame, free
        the id and the slot, and release the request's descriptors once
        nothing can refer to them."""
        call.answered = True
        call.waiting_credit = False
        self._calls.pop(call.key, None)
        if call.started:
            outcome = "no reply" if body is None else _outcome(body)
            ms = (time.monotonic() - call.started) * 1000
            logger.debug(
                "call %s id=%s from pid %d uid %d: %s in %.2f ms",
                call.handler.spec.name,
                call.call_id,
                self.peer_pid,
                self.peer_uid,
                outcome,
                ms,
            )
        request_fds = call.request_fds
        if body is None:
            if not call.abandoned:
                self._release(call)
            return
        if fds is not None:
            # a reply may hand back a request descriptor: release them with it
            release = None if call.abandoned or request_fds is EMPTY_FDS else request_fds
            self._queue(body, fds, release, call.call_id)
            return
        self._queue(body, call_id=call.call_id)
        if not call.abandoned:
            self._release(call)

    def release(self, call: ServerCall) -> None:
        """The handler of *call* has finished (after its call was answered
        without it): its request descriptors are closed."""
        self._release(call)

    @staticmethod
    def _release(call: ServerCall) -> None:
        if call.fd_frames:  # an item still to write may carry one of them
            call.release_pending = True
            return
        if call.request_fds is not EMPTY_FDS:
            call.request_fds.abort()

    def _discard(self, call: ServerCall, value: Any) -> None:
        """*value* was produced for a call nobody will answer with it
        (cancelled, timed out, its peer gone, a notification): descriptors it
        hands over (``FileDescriptor.transfer``) are closed, as a frame that
        could not be sent closes them."""
        if value is None:
            return
        spec = call.handler.spec
        try:
            codec = spec.codec or spec.result_codec()
            if not codec.has_fds:
                return
            _, fds = serialize(codec.serializer, value, has_fds=True, warnings=False)
        except Exception:  # a value that does not even encode: nothing of ours to close
            return
        if fds is not None:
            fds.sent()

    def _encode(self, call: ServerCall, value: Any, what: str) -> tuple[bytes, FdContext | None]:
        return encode_value(call.handler.spec, value, what)  # the rules: _core/results.py

    # -- output -------------------------------------------------------------------

    def _queue(
        self,
        body: bytes,
        fds: FdContext | None = None,
        release: FdContext | None = None,
        call_id: int | None = None,
        owner: ServerCall | None = None,
    ) -> None:
        """Queue one frame (*release*: request descriptors to close once it
        is out; *owner*: the stream whose item it is). A frame over the limit
        is replaced by an InternalError for *call_id*, or dropped if it has
        none."""
        carried = fds.outgoing if fds is not None else None
        if self.output_failed or self._discard_output or len(body) > self._rules.max_frame_size:
            if fds is not None:
                fds.sent()
            if release is not None:
                release.abort()
            if self.output_failed or self._discard_output:  # nobody will read it
                return
            logger.error(
                "connection %d: a frame of %d bytes is over the limit", self.connection_id, len(body)
            )
            if call_id is None:
                return
            error = InternalError(
                f"the reply could not be sent: it encodes to {len(body)} bytes, over the limit"
            )
            body, carried, release = wire.encode_error(call_id, error.code, error.message), None, None
        if carried:
            assert fds is not None
            data = _frame(body, len(carried))
            self._out.append(FdFrame(data, fds, release, owner))
            self._out_fds = True
            if owner is not None:
                owner.fd_frames += 1
        else:
            if fds is not None:
                fds.sent()
            if release is not None:
                release.abort()
            data = _frame(body)
            self._out.append(data)
        self.unsent += len(data)
        self._queued += len(data)
        if not self._charge() and self._closed is None:  # (a closing connection's last words go out)
            self._output_over_budget()

    def _output_over_budget(self) -> None:
        """Output not yet written took the server over its memory budget:
        what is queued is dropped, the peer is told why, the connection is
        closing, and what its calls still produce is dropped."""
        self.drop_output()
        self._over_budget()
        self._discard_output = True

    def take_output(self) -> list[Chunk]:
        """What to write now, in order (plain frames joined): write it, then
        report it with :meth:`written`. Empty if nothing waits."""
        out = self._out
        if not out:
            return out
        self._out = []
        self._queued = 0
        if not self._out_fds:
            return [out[0] if len(out) == 1 else b"".join(out)]  # type: ignore[arg-type]
        self._out_fds = False
        chunks: list[Chunk] = []
        run: list[bytes] = []
        for chunk in out:
            if type(chunk) is bytes:
                run.append(chunk)
                continue
            if run:
                chunks.append(b"".join(run))
                run = []
            chunks.append(chunk)
        if run:
            chunks.append(b"".join(run))
        return chunks

    def written(self, chunk: Chunk, *, ok: bool = True) -> None:
        """*chunk* (from :meth:`take_output`) was written whole, or could not
        be (*ok* False: the peer is gone; later output is dropped). Its
        descriptors are released either way."""
        if type(chunk) is bytes:
            self.unsent -= len(chunk)
        else:
            assert isinstance(chunk, FdFrame)
            self.unsent -= len(chunk.data)
            chunk.fds.sent()
            if chunk.release is not None:
                chunk.release.abort()
            owner = chunk.owner
            if owner is not None:
                owner.fd_frames -= 1
                if not owner.fd_frames and owner.release_pending:
                    owner.release_pending = False
                    self._release(owner)
        if not ok and not self.output_failed:
            self.output_failed = True
            self.drop_output()
        self._charge()  # less is held: never refused

    def drop_output(self) -> None:
        """Discard what is queued (the connection is going away), releasing
        its descriptors."""
        out, self._out = self._out, []
        self._out_fds = False
        self._queued = 0
        for chunk in out:
            self.written(chunk)

    # -- the end ------------------------------------------------------------------

    def hang_up(self) -> list[ServerCall]:
        """The peer is gone (no reply can reach it): the calls to cancel
        (notifications are let finish). Queued descriptors are closed."""
        self._fd_queue.close_all()
        to_cancel = []
        for call in self._calls.values():
            if call.call_id is not None and not call.cancel_requested:
                call.cancel_requested = True
                to_cancel.append(call)
        return to_cancel

    def end_streams(self) -> list[ServerCall]:
        """Shutdown began: the streams to cancel now (they would never end by
        themselves); each is answered ``ServerShuttingDownError``. Unary
        calls get the grace period."""
        ended = []
        for call in self._calls.values():
            if call.handler.spec.streaming and not call.cancel_requested:
                call.cancel_requested = True
                call.cancel_error = ServerShuttingDownError("server is shutting down: the stream was ended")
                ended.append(call)
        return ended

    def cut_off(self) -> list[ServerCall]:
        """The grace period is over: answer every call still in flight
        ``ServerShuttingDownError`` now, and tell the peer the connection
        ends (an error with ``"id": null``), ahead of closing it. The calls
        to cancel (their handlers' outcomes then only release descriptors)."""
        left = []
        for call in list(self._calls.values()):
            if call.call_id is not None:
                call.cancel_requested = True
                call.cancel_error = ServerShuttingDownError(
                    "server is shutting down: the call did not finish within the grace period"
                )
                self.cancelled(call, still_running=True)
                left.append(call)
        if self._closed is None:
            error = ServerShuttingDownError("server is shutting down")
            self._queue(wire.encode_error(None, error.code, error.message))
            self._closed = "shutting down"
        return left

    def close(self) -> None:
        """The connection is closed: release every descriptor still held
        (queued, of undelivered output). Calls still in flight keep theirs
        until the engine reports them finished."""
        if self._closed is None:
            self._closed = "closed"
        self._fd_queue.close_all()
        self.output_failed = True
        self.drop_output()
        self._receive_excess = 0
        self._charge()
