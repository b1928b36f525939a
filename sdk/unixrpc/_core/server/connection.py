"""The server side of one connection, as a sans-IO protocol object
(:class:`ServerConnection`), protocol-neutral: the wire's codec
(:mod:`.codec`; :mod:`.unixrpc` today) turns bodies into messages and
replies into bodies.

Facts go in: bytes and descriptors received (:meth:`~ServerConnection.receive_fds`,
:meth:`~ServerConnection.receive_frame`, :meth:`~ServerConnection.received`),
a failed read, the time (:meth:`~ServerConnection.on_timer`), the peer gone
(:meth:`~ServerConnection.hang_up`). What the engine must do comes out as
events (start this call, cancel that one, credit arrived, close). What comes
in is taken by :mod:`.reception` (composed). What a call did goes in
through one door, :meth:`~ServerConnection.finish`, and
the bytes to write come out of one outbox, in the order they were produced.

Rules this module owns (docs/protocol.md):

* Routing by kind and refusals in order: see :mod:`.reception`.
* Answered or fatal: a frame that is not an envelope gets an error and the
  connection goes on; a stream that cannot be trusted any more (an oversized
  frame, too many descriptors, descriptors that never came or came with no
  frame, truncated control data) closes the connection: :class:`.Close`.
* Authorization: the hook's verdict is judged here (:meth:`authorized`):
  a falsy answer is ``PermissionDenied`` (logged at INFO), an exception a
  typed error as itself or the hook's failure.
* Streams: an item is produced only with credit and room in the output
  (:meth:`stream_step`); a notification's items are discarded.
* Every call gets exactly one final reply: its result (a stream's is
  ``null``), its error, or ``Cancelled``. It is retired on one path
  (``_retire``). The release contract: every call handed to the engine
  ends with exactly one :meth:`finish` (its handler ran), or one
  :meth:`stop` with ``running=False`` (it never ran), or a False from
  :meth:`authorized`; :meth:`stop` with ``running=True`` answers it now and
  its :meth:`finish` only releases. Its request descriptors are closed
  exactly once, when nothing can refer to them any more.
* Time and memory: a frame begun must arrive whole within
  ``frame_timeout``; a connection idle (nothing in flight, nothing to
  write) for ``connection_idle_timeout`` is closed; the bytes it holds
  (receive buffer beyond the base, output not written) are charged to the
  server's :class:`.MemoryBudget`, and the connection that takes the server
  over it is closed with the reason.
* Output: no further request is taken while the output queued behind a
  write in progress is over ``max_unsent`` (:meth:`wants_input`).
* The wire: unixrpc unless the rules serve varlink too and the first byte
  of the connection says varlink (:meth:`choose_wire`, rule in
  :mod:`.wires`). On varlink (an ordered wire) calls run one at a time: a
  message waits while a call is in flight (:meth:`waiting_turn`; the
  engine is told when the turn comes, :meth:`watch_turns`), and a read's
  descriptors go to the message :class:`.wires.ReadFds` says
  (:meth:`frames_read`).

No I/O here: no socket, anyio, trio, asyncio or threading import (a test
checks). Engines (``server/``) wait and move bytes.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

from ..._ratelog import RateLimitedLog
from ...exceptions import (
    AncillaryDataTruncatedError,
    InternalError,
    ProtocolViolationError,
    ServerShuttingDownError,
    StreamProtocolParseError,
)
from ...fds import FdContext
from .. import wire
from ..access import PeerFacts
from ..calls import FdQueue
from .call import Chunk, Close, FdFrame, ServerCall
from .calltable import CallTable
from .clocks import CHARGE_SHIFT, Charge, Clocks
from .codec import WireCodec
from .outbox import FRAME_OVERHEAD, Outbox
from .reception import Reception
from .rules import ServerRules
from .unixrpc import UnixrpcCodec
from .varlink import VarlinkCodec
from .wires import UNIXRPC, VARLINK, ReadFds, pick_wire

__all__ = ["ServerConnection"]

logger = logging.getLogger("unixrpc.server")
_warn = RateLimitedLog(logger, logging.WARNING, "protocol violations")


def _debug() -> bool:
    return logger.isEnabledFor(logging.DEBUG)


class ServerConnection:
    """The protocol state of one server connection (see the module docstring).

    Not thread-safe: an engine with threads calls it under one lock.
    """

    __slots__ = (
        "_calls",
        "_charge",
        "_clocks",
        "_closed",
        "_codec",
        "_discard_output",
        "_fd_queue",
        "_fds_held",
        "_handlers",
        "_out",
        "_read_fds",
        "_rules",
        "_table",
        "authorized",
        "connection_id",
        "end_streams",
        "finish",
        "item",
        "listener_wire",
        "peer",
        "peer_pid",
        "peer_uid",
        "receive_control",
        "receive_fds",
        "receive_frame",
        "stop",
        "stray_fds",
        "stream_step",
    )

    def __init__(
        self,
        rules: ServerRules,
        connection_id: int = 0,
        peer_pid: int = 0,
        peer_uid: int = -1,
        *,
        peer: PeerFacts | None = None,
        codec: WireCodec | None = None,
    ) -> None:
        self._rules = rules
        self._codec: WireCodec = codec if codec is not None else UnixrpcCodec()
        self.connection_id = connection_id
        self.peer_pid = peer_pid  # for the log
        self.peer_uid = peer_uid
        self.peer = peer  # what the access policy judges (None: a connection made without one)
        self._fd_queue = FdQueue()
        self._fds_held = 0  # queued descriptors charged to the server's fd budget
        self._out = Outbox(CallTable.release)
        table = self._table = CallTable(
            rules, self._codec, self._queue, self.output_full, (peer_pid, peer_uid)
        )
        self._calls = table.calls
        # the one door in for what calls do (see CallTable)
        self.authorized = table.authorized
        self.finish = table.finish
        self.stop = table.stop
        self.stream_step = table.stream_step
        self.item = table.item
        self.end_streams = table.end_streams
        # what comes in: descriptors and frames (see Reception)
        reception = Reception(self)
        self.receive_fds = reception.receive_fds
        self.stray_fds = reception.stray_fds
        self.receive_control = reception.receive_control
        self.receive_frame = reception.receive_frame
        self._closed: str | None = None  # why the connection is closing
        self._discard_output = False  # closed for its output: what calls still produce is dropped
        self._clocks = Clocks()
        self._charge = Charge(rules.memory)
        self._handlers = rules.handlers  # the methods this connection's wire serves
        self._read_fds: ReadFds | None = None  # varlink: which message a read's descriptors belong to
        self.listener_wire: str | None = None  # its listener speaks this wire only (None: both)

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

    @property
    def unsent(self) -> int:
        """Bytes queued and not yet reported written."""
        return self._out.unsent

    @property
    def write_timeout(self) -> float:
        """Seconds a write the socket could not take at once may wait for
        the peer (``inf``: no limit); then :meth:`write_timed_out`."""
        limit = self._rules.write_timeout
        return math.inf if limit is None else limit

    @property
    def output_failed(self) -> bool:
        """A write failed: the peer is gone, further output is dropped."""
        return self._out.failed

    def busy(self) -> bool:
        """Calls in flight or output not yet written: a graceful shutdown waits."""
        return bool(self._calls) or bool(self._out.frames) or self._out.unsent > 0

    def wants_input(self) -> bool:
        """False once the connection is closing, or while the output queued
        behind a write in progress is over the bound: the peer does not read,
        so take no more requests until it does (neither from the socket nor
        from frames already read). The frame being written does not count."""
        return self._closed is None and self._out.queued <= self._rules.max_unsent

    def output_full(self) -> bool:
        """True while the output not yet written is over the bound."""
        return self._out.unsent > self._rules.max_unsent and not self._out.failed

    def describe_calls(self) -> list[str]:
        """The calls in flight, for the log: method, call id and caller."""
        pid, uid = self.peer_pid, self.peer_uid
        return [
            f"{call.method} (call {call.call_id}) from pid {pid} uid {uid}" for call in self._calls.values()
        ]

    def queued_fds(self) -> int:
        """Descriptors received and not yet taken by their frame."""
        return len(self._fd_queue)

    def has_output(self) -> bool:
        return bool(self._out.frames)

    def received(self, now: float, *, partial: bool, receive_buffer: int = 0) -> Close | None:
        """A read brought bytes at *now* (monotonic seconds): *partial* if a
        frame is still half received after it; *receive_buffer* the read
        buffer's size beyond the base read size. Restarts the idle clock,
        starts or stops the frame clock, and charges the memory budget: a
        Close if this connection grew while the server is over it."""
        self._clocks.received(now, partial)
        self._charge.receive_excess = receive_buffer
        if not self._charged():
            return self._over_budget()
        return None

    def read_failed(self, exc: BaseException) -> Close:
        """The engine's read raised *exc*: a stream that cannot be parsed is
        answered with one error and closed; truncated control data is closed
        silently (and logged); anything else means the peer is gone."""
        if isinstance(exc, StreamProtocolParseError):
            return self.fatal(str(exc.error))
        if isinstance(exc, AncillaryDataTruncatedError):
            return self.fatal(str(exc), tell_peer=False)
        if self._closed is None:
            self._closed = "the peer closed the connection"
        return Close(self._closed)

    def next_deadline(self, now: float) -> float | None:
        """When :meth:`on_timer` must be called if nothing else happens
        first (None: no deadline). The idle clock starts at the later of the
        last read and the moment the connection became idle (its last call
        answered and written), as first seen by a call of this method."""
        clocks, rules = self._clocks, self._rules
        if self._closed is not None or (
            clocks.partial_since is None and rules.connection_idle_timeout is None
        ):
            return None
        busy = bool(self._calls) or bool(self._out.unsent) or bool(self._out.frames)
        return clocks.deadline(now, busy, rules.frame_timeout, rules.connection_idle_timeout)

    def on_timer(self, now: float) -> Close | None:
        """A deadline may have passed: checked again with the state as it is
        *now* (a waiter acting on an old deadline closes nothing)."""
        deadline = self.next_deadline(now)
        if deadline is None or now < deadline:
            return None
        if self._clocks.partial_since is not None:
            return self.fatal(f"a frame was not finished within {self._rules.frame_timeout} s")
        return self.fatal(f"idle for {self._rules.connection_idle_timeout} s", tell_peer=False)

    def write_timed_out(self) -> Close:
        """A write of replies waited ``write_timeout`` seconds for the peer
        to read it (the engine waits for it, from the moment the socket would
        not take the write at once): the peer does not read. The connection
        closes with the reason (logged; nothing more can be said to a peer
        that does not read), its output and what its calls still produce is
        dropped. Also once the connection is closing (its last words wait
        for a peer that does not read them either). The engine then shuts
        the socket down, so the connection ends as if the peer hung up: its
        calls are cancelled (:meth:`hang_up`)."""
        reason = f"the peer did not read its replies for {self._rules.write_timeout} s"
        self.fatal(reason, tell_peer=False)
        self._out.failed = True  # the write in progress is given up: later output is dropped
        self._out.drop()
        self._discard_output = True
        self._charged()
        return Close(self._closed or reason)

    def _charged(self) -> bool:
        """Charge the memory budget for what is held now, in steps of
        ``CHARGE_STEP`` (small replies never touch the shared budget or its
        lock): False if the connection grew while the server is over it."""
        charge = self._charge
        if (charge.receive_excess + self._out.unsent) >> CHARGE_SHIFT == charge.held >> CHARGE_SHIFT:
            return True
        return charge.update(self._out.unsent)

    def _over_budget(self) -> Close:
        limit = self._rules.memory.limit
        return self.fatal(
            f"the server holds more than its budget of {limit} bytes in buffers; try again later",
            at_once=True,
        )

    # -- the wire -----------------------------------------------------------------

    def choose_wire(self, first: int) -> str:
        """The connection's first byte is *first* (seen before any frame is
        taken): the wire it speaks, :data:`.wires.VARLINK` or
        :data:`.wires.UNIXRPC`; the engine splits what it reads accordingly
        (NUL-ended messages, :class:`.wires.MessageFraming`, for varlink)."""
        rules = self._rules
        chosen = pick_wire(
            first, rules.max_frame_size, shared=rules.varlink_shared, listener_wire=self.listener_wire
        )
        if rules.varlink is None or chosen != VARLINK:
            return UNIXRPC
        codec = VarlinkCodec(rules.varlink, window=rules.max_stream_window)
        self._codec = self._table._codec = codec
        self._handlers = rules.varlink_handlers
        self._read_fds = ReadFds()
        return VARLINK

    def waiting_turn(self) -> bool:
        """True while the next message must wait: the wire answers in order
        and a call is in flight (it runs alone, as sd-varlink's do)."""
        return bool(self._calls) and self._codec.ordered

    def watch_turns(self, callback: Callable[[], None]) -> None:
        """Call *callback* (no argument) when the last call in flight of an
        ordered wire retires, so an engine waiting for the turn wakes up."""
        self._table.turn = callback

    def frames_read(self, frames: list[wire.RawFrame], partial: bool) -> list[wire.RawFrame]:
        """Every frame a read completed, and whether a frame is still half
        read after it: the frames with the descriptors they carry (unixrpc's
        declare theirs; varlink's are given the read's by :class:`.wires.ReadFds`)."""
        read_fds = self._read_fds
        if read_fds is None:
            return frames
        return read_fds.assign(frames, partial)

    # -- input (taking descriptors and frames: :mod:`.reception`) ----------------

    def _recount_fds(self) -> bool:
        """Charge the server's fd budget for the descriptors queued now:
        False if they grew while the server is over it."""
        queued = len(self._fd_queue)
        if queued == self._fds_held:
            return True
        ok = self._rules.fd_budget.charge(self._fds_held, queued)
        self._fds_held = queued
        return ok

    def fatal(self, reason: str, *, tell_peer: bool = True, at_once: bool = False) -> Close:
        """The stream cannot be trusted any more: no further frame is taken,
        and one error about it (``"id": null``) is queued, unless *tell_peer*
        is False, after the replies of the calls still in flight (they were
        read before the fault), unless one is a stream (no credit can come
        any more) or *at_once* (the output is over budget)."""
        if self._closed is None:
            self._closed = reason
            self._fd_queue.close_all()
            self._recount_fds()
            _warn("connection %d (pid %d): closed: %s", self.connection_id, self.peer_pid, reason)
            body = b""
            if tell_peer:
                error = ProtocolViolationError(reason)
                body = self._codec.error(None, error.code, error.message)
            if body:  # (varlink has no words about the connection)
                calls = self._calls
                if calls and not at_once and not any(call.handler.spec.streaming for call in calls.values()):
                    self._table.farewell = body  # (a stream would wait for credit for ever: not after it)
                else:
                    self._queue(body)
        return Close(reason)

    def _error(self, call_id: int | None, message: str) -> None:
        _warn("connection %d (pid %d): %s", self.connection_id, self.peer_pid, message)
        error = ProtocolViolationError(message)
        self._queue(self._codec.error(call_id, error.code, error.message))

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
        none. Output is charged to the memory budget."""
        out = self._out
        carried = fds.outgoing if fds is not None else None
        if out.failed or self._discard_output or len(body) > self._rules.max_frame_size:
            if fds is not None:
                fds.sent()
            if release is not None:
                release.abort()
            if out.failed or self._discard_output:  # nobody will read it
                return
            logger.error(
                "connection %d: a frame of %d bytes is over the limit", self.connection_id, len(body)
            )
            if call_id is None:
                return
            error = InternalError(
                f"the reply could not be sent: it encodes to {len(body)} bytes, over the limit"
            )
            body, carried, release = self._codec.error(call_id, error.code, error.message), None, None
        if carried:
            assert fds is not None
            out.put_fds(FdFrame(self._codec.frame(body, len(carried)), fds, release, owner))
        else:
            if fds is not None:
                fds.sent()
            if release is not None:
                release.abort()
            data = self._codec.frame(body)
            out.frames.append(data)  # (Outbox.put, inlined: the hot path)
            out.unsent += len(data) + FRAME_OVERHEAD
            out.queued += len(data) + FRAME_OVERHEAD
        if (out.unsent >> CHARGE_SHIFT or self._charge.held) and not self._charged() and self._closed is None:
            # (a closing connection's last words go out)
            self._output_over_budget()

    def _output_over_budget(self) -> None:
        """Output not yet written took the server over its memory budget:
        what is queued is dropped, the peer is told why, the connection is
        closing, and what its calls still produce is dropped."""
        self._out.drop()
        self._over_budget()
        self._discard_output = True

    def take_output(self) -> list[Chunk]:
        """What to write now, in order: write it, then report each chunk with
        :meth:`written`. Empty if nothing waits."""
        return self._out.take()

    def written(self, chunk: Chunk, *, ok: bool = True) -> None:
        """*chunk* (from :meth:`take_output`) was written whole, or could not
        be (*ok* False: the peer is gone; later output is dropped)."""
        self._out.written(chunk, ok=ok)
        if self._charge.held:
            self._charged()  # less is held: never refused

    def drop_output(self) -> None:
        """Discard what is queued, releasing its descriptors."""
        self._out.drop()
        self._charged()

    # -- the end ------------------------------------------------------------------

    def hang_up(self) -> list[ServerCall]:
        """The peer is gone (no reply can reach it): the calls to cancel
        (notifications are let finish). Queued descriptors are closed."""
        self._fd_queue.close_all()
        self._recount_fds()
        return self._table.hang_up()

    def cut_off(self) -> list[ServerCall]:
        """The grace period is over: every call still in flight is answered
        ``ServerShuttingDownError`` now, and the peer told the connection
        ends, ahead of closing it. The calls to cancel (each still ends with
        :meth:`finish`, or :meth:`stop` if it never ran)."""
        left = self._table.cut_off()
        if self._closed is None:
            error = ServerShuttingDownError("server is shutting down")
            body = self._codec.error(None, error.code, error.message)
            if body:
                self._queue(body)
            self._closed = "shutting down"
        return left

    def close(self) -> None:
        """The connection is closed: release every descriptor still held
        (queued, of undelivered output) and its memory charge. Calls still in
        flight keep their descriptors until the engine finishes them."""
        if self._closed is None:
            self._closed = "closed"
        self._fd_queue.close_all()
        self._recount_fds()
        self._out.failed = True
        self._out.drop()
        self._charge.receive_excess = 0
        self._charged()
