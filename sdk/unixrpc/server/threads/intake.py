"""Reading under the threads engine (composed into
:class:`.connection.ThreadConnection`, working on its state under its lock):
arming the socket, reading what it has, choosing the wire from the first
byte, handing frames to the core (holding back requests while the calls
wait for threads, but never cancels or credit), acting on what they cause,
and the core's timers.
"""

from __future__ import annotations

import itertools
import select
import time
from collections import deque
from typing import TYPE_CHECKING

from ..._core import wire
from ..._core.server import Cancel, Close, Grant, ServerCall
from ..._core.server.wires import VARLINK
from ...exceptions import StreamProtocolParseError
from ..kit import NO_BYTE, first_byte
from .pool import no_thread

if TYPE_CHECKING:
    from .connection import ThreadConnection

__all__ = ["READ_ONCE", "Intake"]

#: how the socket is registered in the connection's epoll: one waiting thread woken per batch
READ_ONCE = select.EPOLLIN | select.EPOLLONESHOT
#: frames taken in between two offers of the GIL to other threads (a 64 KiB read holds about
#: 2,400 cancels: 3-5 ms of Python without one, where CPython switches every 5 ms)
_TURN = 64
#: calls a connection's core holds waiting for a thread, beyond those running
_QUEUED_CALLS = 16
#: the bytes of frames read and not yet taken in over which a connection is not read further
_INBOX_BYTES = 256 * 1024


def _bytes_of(frames: deque[wire.RawFrame]) -> int:
    return sum(len(frame.body) for frame in frames)


class Intake:
    """Reads one connection and takes in what it read (see the module docstring)."""

    __slots__ = ("_conn",)

    def __init__(self, connection: ThreadConnection) -> None:
        self._conn = connection

    def arm(self) -> None:  # lock held
        """Let one waiting thread be woken when the socket has data, unless
        the connection must not be read now: its output waits for a peer
        that does not read, or the frames read and not yet taken (calls
        waiting for threads) reach ``_INBOX_BYTES``. Reading goes on while
        calls wait for a thread, so cancels and credit get through."""
        conn = self._conn
        if (
            not conn._armed
            and not conn._reading_over
            and (not conn._inbox or _bytes_of(conn._inbox) < _INBOX_BYTES)
            and (not conn._inbox or conn.core.queued_fds() <= conn._config.rules.max_fds)
            and not conn._fds_closed
            and conn.core.wants_input()
            and not (conn._inbox and conn._varlink and conn.core.waiting_turn())  # one waits its turn
        ):
            conn._armed = True
            try:  # (not contextlib.suppress: this runs once a call)  # noqa: SIM105
                conn._epoll.modify(conn._sock_fd, READ_ONCE)
            except OSError:
                pass

    def read(self) -> ServerCall | None:
        """Read what the socket has (this thread was woken for it), take it
        in, and re-arm the socket: the call this thread is to run, if any."""
        conn = self._conn
        core, io = conn.core, conn._io
        if conn._choosing and not self.choose_wire():
            with conn._lock:  # nothing came yet: wait again
                conn._waiting -= 1
                conn._armed = False
                self.arm()
            return None
        over = False
        failed: BaseException | None = None  # the read failed: what it means is the core's call
        frames: list[wire.RawFrame] = []
        try:
            frames = io.receive()
            if frames and io.buffered_size() >= wire.HEADER_SIZE:
                frames += io.buffered_frames()  # a bad frame behind them: raised now
        except (StreamProtocolParseError, OSError) as exc:  # (a bad frame, MSG_CTRUNC, the end)
            failed = exc
        mine: ServerCall | None = None
        now = time.monotonic()
        partial = io.buffered_size() > 0
        excess = max(io.receive_buffer_size() - wire.SERVER_RECV_SIZE, 0)
        with conn._lock:
            conn._waiting -= 1
            conn._armed = False
            received = io.fds
            if received:
                io.fds = []
                core.receive_fds(received)
            if conn._varlink:
                frames = core.frames_read(frames, partial)  # which frame the read's descriptors ride on
            if core.received(now, partial=partial, receive_buffer=excess) is not None and failed is None:
                over = True  # over the server's memory budget
            if core.closing is not None and failed is None:
                over = True  # (the descriptors that came took the server over its fd budget)
            conn._inbox.extend(frames)
            conn._unscanned += len(frames)
            if failed is not None:  # what came before a bad frame is served first
                self.take_in(everything=True)
                core.read_failed(failed)
                over = True
            if over or self.take_in():
                conn._end_reading()
            else:
                runq = conn._runq
                if runq and conn._running < conn._max_running:
                    mine = runq.popleft()  # run here: no hand-off
                    conn._running += 1
                    if mine.engine is None:
                        mine.engine = True  # running: a cancel answers it at once
                got = conn._pool.dispatch(1 if mine is not None else 0)
                if got is not True and mine is not None and not conn._waiting:
                    # no thread would read while this one runs the call
                    conn._running -= 1
                    if got is None:  # the budget is spent: it waits for a thread that ends a call
                        runq.appendleft(mine)
                        conn._pool.clear_work()
                    else:  # the system refused a thread: refused
                        core.finish(mine, raised=no_thread())
                    mine = None
                self.arm()  # if it may be read now; else the writer or a thread taking a call does
        if core.has_output():
            conn._writer.flush()
        return mine

    def choose_wire(self) -> bool:
        """Let the core choose the wire from the first byte (left unread):
        False if none came yet."""
        conn = self._conn
        first = first_byte(conn._sock)
        if first is None:
            return False
        with conn._lock:
            conn._choosing = False
            if first != NO_BYTE and conn.core.choose_wire(first) == VARLINK:
                assert conn._config.varlink_protocol is not None
                conn._io.switch_protocol(conn._config.varlink_protocol)
                conn._varlink = True
        return True

    def read_deadline(self) -> float | None:  # lock held
        """When a thread waiting for the socket must look at the core's
        timers (frame and idle timeouts are the core's rules)."""
        conn = self._conn
        if conn._reading_over or not conn._armed:
            return None
        return conn.core.next_deadline(time.monotonic())

    def time_out(self) -> None:  # lock held
        """A deadline passed: the core decides, with the state as it is now
        (another thread may have read a request meanwhile)."""
        conn = self._conn
        if not conn._reading_over and conn.core.on_timer(time.monotonic()) is not None:
            conn._end_reading()

    def take_in(self, *, everything: bool = False) -> bool:  # lock held
        """Hand the frames read to the core, in order, while the peer reads
        what is queued for it (else the writer takes the rest in later) and
        the core holds fewer calls than the threads plus ``_QUEUED_CALLS``
        (streams parked waiting for credit not counted):
        the rest wait in the inbox (turned into calls now, they would only
        be refused), except cancels and credit for calls in flight, which
        are taken at once. Or all of them (*everything*: no more will be read). True if
        the reading is over (the stream cannot be trusted any more)."""
        conn = self._conn
        core, inbox = conn.core, conn._inbox
        most = conn._config.rules.max_calls_per_connection
        hold = conn._max_running + _QUEUED_CALLS  # calls the core holds, running or waiting for a thread
        taking = everything or most <= hold  # (a small max_calls_per_connection: refused beyond it)
        turn = _TURN
        while (
            inbox
            and (everything or (core.wants_input() and (taking or len(core) - conn._parked < hold)))
            and not (conn._varlink and core.waiting_turn())  # one call at a time
        ):
            turn -= 1
            if not turn:  # a flood of frames must not hold the GIL from other connections' threads
                turn = _TURN
                time.sleep(0)
            event = core.receive_frame(inbox.popleft())
            if type(event) is ServerCall:
                conn._runq.append(event)
            elif event is not None and self.on_event(event):
                return True
        fresh = min(conn._unscanned, len(inbox))
        conn._unscanned = 0
        if fresh and not everything:  # calls wait for threads: cancels and credit get through
            older = len(inbox) - fresh  # (frames of earlier reads were looked at already)
            kept: deque[wire.RawFrame] = deque(itertools.islice(inbox, older))
            for frame in itertools.islice(inbox, older, None):
                turn -= 1
                if not turn:
                    turn = _TURN
                    time.sleep(0)
                control = core.receive_control(frame)
                if control is False:
                    kept.append(frame)
                    continue
                if self.on_event(control):
                    return True
            conn._inbox = kept
        if everything:
            return False
        return not conn._inbox and core.stray_fds(conn._io.buffered_size() > 0) is not None

    def on_event(self, event: object) -> bool:  # lock held
        """Act on what a frame caused: True if the reading is over."""
        conn = self._conn
        if event is None:
            return False
        if type(event) is ServerCall:
            conn._runq.append(event)
        elif type(event) is Cancel:
            conn._cancel(event.call)
        elif type(event) is Grant:
            conn._resume(event.call)
            conn._notify_all()
        else:
            assert type(event) is Close
            conn._inbox.clear()
            return True
        return False
