"""One connection under the blocking threads engine (:mod:`.engine`).

Plain sockets and threads, no event loop. It waits and moves bytes for
each connection's protocol object (:class:`.._core.server.ServerConnection`,
called under the connection's lock), which decides everything else.

This class holds the connection's state, its start and end, cancels, the
streams parked waiting for credit, the end of reading and the server's view;
composed parts work on that state under its lock: the threads
(:mod:`.pool`, where the leader/follower scheme is described), reading
(:mod:`.intake`), writing (:mod:`.writer`) and running calls (:mod:`.calls`).

A plain ``def`` handler cannot be interrupted: on a cancel (the client's,
its peer leaving, or shutdown) its reply is ``Cancelled`` at once, it learns
it from ``CallContext.cancelled``, and what it returns is discarded. An
``async def`` handler (or async generator) runs on one shared event-loop
thread (asyncio), started with the server when it has any, and is
cancelled the usual way there.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import threading
from collections import deque
from concurrent.futures import Future
from typing import Any

from ..._core import wire
from ..._core.server import ServerCall, ServerConnection
from ...peer import Peer
from ..config import ServerConfig
from ..kit import peer_hung_up
from ..sockio import ServerSocket
from .calls import CallRunner, Parked
from .intake import READ_ONCE, Intake
from .loop_thread import LoopThread
from .pool import Pool, thread_start_failed
from .writer import Writer

__all__ = ["LoopThread", "ThreadConnection"]


class ThreadConnection:
    """One accepted connection under the threads engine (see the module docstring)."""

    def __init__(
        self, config: ServerConfig, engine: Any, sock: socket.socket, connection_id: int, peer: Peer
    ) -> None:
        self._config = config
        self._engine = engine
        self._io = ServerSocket(sock, config.protocol, config.ancillary_bufsize)
        self.connection_id = connection_id
        self.peer = peer  # (its pidfd is closed with the connection)
        self.core = ServerConnection(
            config.rules, connection_id, self.peer.pid, self.peer.uid, peer=self.peer
        )
        self._lock = threading.Lock()  # guards the core and everything below
        self._cond = threading.Condition(self._lock)
        self._runq: deque[ServerCall] = deque()
        self._inbox: deque[wire.RawFrame] = deque()  # frames read, not yet taken in (no thread free)
        self._unscanned = 0  # frames at the end of the inbox not yet looked at for cancels and credit
        self._reading_over = False
        self._writing = False  # a thread is writing (and writes what is queued meanwhile)
        self._waiting = 0  # threads waiting in epoll for a request (or queued work)
        self._threads = 0
        self._budgeted = 0  # threads taken from the server's budget (beyond the first two)
        self._parked = 0  # streams waiting for credit with no thread (not counted as calls held)
        self._idle = False  # no thread: the engine watches the connection's epoll
        self._spawned = 0
        self._cond_waiters = 0  # threads waiting on the condition (credit, output drain)
        # Threads wait in one epoll: the socket, registered one-shot, wakes
        # exactly one of them per batch of data (re-armed once it is read);
        # an eventfd wakes them for calls queued beyond the first of a read,
        # and at the end.
        self._sock = sock
        self._sock_fd = sock.fileno()
        self._epoll = select.epoll()
        self._work_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self._work_signalled = False
        self._epoll.register(self._work_fd, select.EPOLLIN)
        self._epoll.register(self._sock_fd, READ_ONCE)
        self._armed = True
        self._running = 0  # threads running a call
        self._max_running = config.max_threads_per_connection
        self.finished = threading.Event()
        self._fds_closed = False  # epoll and eventfd closed (by _close, or by a shutdown that left a handler)
        self._intake = Intake(self)
        self._writer = Writer(self)
        self._pool = Pool(self)
        self._runner = CallRunner(self)
        self._choosing = config.varlink_protocol is not None  # the wire waits for the first byte
        self._varlink = False  # one call at a time (the core's waiting_turn)

    def start(self) -> bool:
        """Start the connection's first thread (it waits for the first
        request); False if no thread could be started (then :meth:`discard`
        it and refuse the connection)."""
        with self._lock:
            return self._pool.spawn() is True

    def discard(self) -> None:
        """Free what a connection that never started holds, except its
        socket (the engine refuses the connection on it)."""
        with self._lock:
            self.core.close()
        self.release_descriptors()
        self._engine.connection_done(self)
        self.finished.set()

    # -- idle ---------------------------------------------------------------------

    def idle_fd(self) -> int:
        """What the engine polls for an idle connection: its epoll (readable
        when the socket or the work signal is)."""
        return self._epoll.fileno()

    def wake(self) -> None:
        """The engine saw the idle connection's epoll readable (or shuts
        down): start a thread for it; if the system will not, close it."""
        with self._lock:
            self._idle = False
            started = self._pool.spawn() is True
        if not started:
            self._close()

    # -- the end of reading, cancels, parked streams ---------------------------------

    def _end_reading(self) -> None:  # lock held
        """The reading is over: if the peer is gone, its calls are cancelled;
        if it only shut down its write side, they finish and are answered,
        unless it hangs up meanwhile (a watcher thread looks)."""
        self._reading_over = True
        self._pool.signal_work()  # waiting threads end
        self._notify_all()
        if peer_hung_up(self._sock):
            for call in self.core.hang_up():
                self._cancel(call)
        elif len(self.core):
            self._threads += 1
            name = f"unixrpc-conn{self.connection_id}-hangup"
            try:
                threading.Thread(target=self._watch_hang_up, name=name, daemon=True).start()
            except (
                RuntimeError
            ) as exc:  # the calls finish; a hang-up meanwhile is noticed when they are written
                self._threads -= 1
                thread_start_failed("connection %d: could not start a thread: %s", self.connection_id, exc)

    def _watch_hang_up(self) -> None:
        """After the reading ended with calls in flight: cancel them if the
        peer closes the connection before they are answered."""
        try:
            while True:
                with self._lock:
                    if not len(self.core):
                        return
                if peer_hung_up(self._sock, wait=0.2):
                    with self._lock:
                        for call in self.core.hang_up():
                            self._cancel(call)
                    self._writer.flush()
                    return
        finally:
            self._pool.thread_done()

    def _cancel(self, call: ServerCall) -> None:  # lock held
        """Stop *call*: an async one is cancelled on the loop; a plain one is
        answered now and told through its context."""
        context = call.context
        if context is not None:
            context._set_cancelled()
        future = call.engine
        if isinstance(future, Future):  # awaited on the loop thread: cancelled there
            future.cancel()
        else:  # not started (None), running on its thread (True) or parked: answered now
            self.core.stop(call, running=future is not None)
            self._resume(call)  # a parked stream: its generator is closed on a thread
        self._notify_all()  # a stream waiting for the writer stops

    def park(self, call: ServerCall, parked: Parked) -> None:  # lock held
        """The stream *call* waits for credit with no thread: requests held
        back while the core held as many calls as threads can run may come
        in now (a parked stream is not counted)."""
        call.engine = parked
        self._parked += 1
        if self._inbox and not self._reading_over:
            if self._intake.take_in():
                self._end_reading()
            else:
                self._pool.dispatch(0)
                self._intake.arm()

    def _resume(self, call: ServerCall) -> None:  # lock held
        """A stream parked waiting for credit goes on (credit came) or ends
        (cancelled): queued for a thread, once."""
        parked = call.engine
        if type(parked) is Parked and not parked.queued:
            parked.queued = True
            self._parked -= 1
            self._runq.append(call)
            self._pool.dispatch(0)

    # -- waiting on the condition -------------------------------------------------

    def _notify_all(self) -> None:  # lock held
        if self._cond_waiters:
            self._cond.notify_all()

    def _wait(self) -> None:  # lock held
        self._cond_waiters += 1
        try:
            self._cond.wait()
        finally:
            self._cond_waiters -= 1

    # -- the server's view --------------------------------------------------------------

    def busy(self) -> bool:
        """Calls in flight, or replies not yet written: a graceful shutdown waits."""
        with self._lock:
            return self.core.busy() or self._writing

    def calls_in_flight(self) -> int:
        with self._lock:
            return len(self.core)

    def end_streams(self) -> None:
        """Shutdown began: end the streams now (they would never end)."""
        with self._lock:
            for call in self.core.end_streams():
                self._cancel(call)
        self._writer.flush()

    def abort(self) -> None:
        """The grace period is over: answer what is left ``ShuttingDown``
        and tell the peer, as far as the socket takes it without waiting;
        then cut the connection (blocked reads and writes fail) and cancel
        the calls."""
        with self._lock:
            left = self.core.cut_off()
            chunks = [] if self._writing else self.core.take_output()
        with contextlib.suppress(OSError):
            for chunk in chunks:
                if type(chunk) is bytes and self._io.send(chunk, 0, None) < len(chunk):
                    break  # (what follows a cut frame would be garbage)
        self.peer._close()  # its pidfd, before the socket closes
        self._io.close(wait=True)  # no reply gets out any more
        with self._cond:
            for chunk in chunks:
                self.core.written(chunk, ok=False)
            for call in left + self.core.hang_up():
                self._cancel(call)
            self._reading_over = True
            self._pool.signal_work()
            self._cond.notify_all()

    def _close(self) -> None:
        # the core lets go first (memory charge, queued descriptors), then the socket
        # closes: a peer that sees the close finds the server's budgets already freed
        with self._lock:
            for call in self._runq:  # never got a thread: nothing uses their descriptors
                self._runner.close_parked(call)
                self.core.stop(call)
            self._runq.clear()
            for call in self.core.calls():  # (a stream parked when the connection ended)
                if type(call.engine) is Parked:
                    self._runner.close_parked(call)
                    self.core.stop(call)
            self.core.close()
        self.peer._close()  # its pidfd, before the socket closes
        self._io.close(wait=True)
        self.release_descriptors()
        self._engine.connection_done(self)
        self.finished.set()

    def release_descriptors(self) -> None:
        """Close the connection's epoll and eventfd (once): when its last
        thread ends, or at shutdown when a handler would not return (its
        thread, when it does, finds them closed and ends)."""
        with self._lock:
            if self._fds_closed:
                return
            self._fds_closed = True
            self._epoll.close()
            os.close(self._work_fd)

    def describe_calls(self) -> list[str]:
        """The calls in flight, for the log (the core's wording)."""
        with self._lock:
            return self.core.describe_calls()
