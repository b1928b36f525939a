"""The threads of one connection under the threads engine (composed into
:class:`.connection.ThreadConnection`, working on its state under its lock):
each thread's loop, starting threads within the budget, handing queued
calls to threads, and leaving an idle connection to the engine.

How calls run (leader/follower): the idle threads of a connection wait
in one epoll, where the socket is registered one-shot, so new data wakes
exactly one of them, the leader: it reads, re-arms the socket (the next
data wakes another waiting thread, which leads in turn), and runs the call
it read itself, on the thread that read it, with no hand-off on the way.
When no other thread waits, it starts one before running the call, so a
slow call never holds back a fast one; calls queued behind the first of a
read wake further threads through an eventfd. Calls of one connection run
concurrently, up to ``max_threads_per_connection`` at once; beyond that,
they wait for a thread of their connection while reading goes on (so
cancels and credit always get through). A sequential caller thus costs one
wake-up per call, as a thread-per-connection server does.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from typing import TYPE_CHECKING

from ..._core.server import ServerCall
from ..._ratelog import RateLimitedLog
from ...exceptions import ServerBusyError

if TYPE_CHECKING:
    from .connection import ThreadConnection

__all__ = ["Pool", "no_thread", "thread_start_failed"]

logger = logging.getLogger("unixrpc.server")
#: a thread idle this long ends if another one waits; the last one then leaves the
#: connection to the engine's idle watch (an idle connection holds no thread)
_IDLE_SECONDS = 2.0
#: the threads a connection always may have (one reads while one runs a call); more come
#: from the server's budget (``max_threads``)
_OWN_THREADS = 2
#: "could not start a thread", at most 10 lines per 10 s
thread_start_failed = RateLimitedLog(logger, logging.ERROR, "failed thread starts")
#: "the thread budget is spent", at most 10 lines per 10 s
thread_budget_spent = RateLimitedLog(logger, logging.WARNING, "connections short of threads")


def no_thread() -> ServerBusyError:
    """The error of a call no thread could be started for."""
    return ServerBusyError("the server could not start a thread to run this call; try again later")


class Pool:
    """The threads of one connection (see the module docstring)."""

    __slots__ = ("_conn",)

    def __init__(self, connection: ThreadConnection) -> None:
        self._conn = connection

    def spawn(self) -> bool | None:  # lock held
        """Start a thread for the connection: False if the system would not
        (``RLIMIT_NPROC``, a cgroup's ``pids.max``, ``TasksMax=``): logged, at
        a bounded rate, and the daemon goes on. None if the connection has
        its own two threads already and the server's budget of further ones
        (``max_threads``) is spent: its calls wait for the threads it has."""
        conn = self._conn
        budgeted = conn._threads >= _OWN_THREADS
        if budgeted:
            if not conn._engine.take_thread():
                thread_budget_spent(
                    "connection %d: the server runs max_threads=%d threads beyond its connections' "
                    "first two: its calls wait for its own threads",
                    conn.connection_id,
                    conn._config.max_threads,
                )
                return None
            conn._budgeted += 1
        conn._threads += 1
        conn._spawned += 1
        name = f"unixrpc-conn{conn.connection_id}-{conn._spawned}"
        try:
            threading.Thread(target=self.main, name=name, daemon=True).start()
        except RuntimeError as exc:  # "can't start new thread"
            conn._threads -= 1
            self.give_back()
            thread_start_failed("connection %d: could not start a thread: %s", conn.connection_id, exc)
            return False
        return True

    def give_back(self) -> None:  # lock held
        """Return to the server's budget what the threads now running no longer use."""
        conn = self._conn
        if conn._budgeted > max(conn._threads - _OWN_THREADS, 0):
            conn._budgeted -= 1
            conn._engine.give_thread()

    def reader_left(self) -> bool:  # lock held
        """Whether, if this thread takes a queued call, a thread still
        reads: one waits, or the reading is over, or one can be started."""
        conn = self._conn
        return bool(conn._waiting) or conn._reading_over or self.spawn() is True

    def signal_work(self) -> None:  # lock held
        conn = self._conn
        if not conn._work_signalled and not conn._fds_closed:
            conn._work_signalled = True
            os.eventfd_write(conn._work_fd, 1)

    def clear_work(self) -> None:  # lock held
        conn = self._conn
        if conn._work_signalled and not conn._reading_over and not conn._fds_closed:  # the end wakes all
            conn._work_signalled = False
            with contextlib.suppress(BlockingIOError):
                os.eventfd_read(conn._work_fd)

    def main(self) -> None:
        """A thread of the connection: run a queued call, or wait in the
        epoll and read (leading), until the reading is over or it is idle."""
        conn = self._conn
        lock, sock_fd, epoll = conn._lock, conn._sock_fd, conn._epoll
        intake, writer, runner = conn._intake, conn._writer, conn._runner
        call: ServerCall | None = None
        idle = False  # this thread left the connection to the engine's idle watch
        turn = False  # varlink: messages that waited their turn were taken in (refusals to write)
        try:
            while True:
                with lock:
                    if call is not None:
                        conn._running -= 1
                        call = None
                        if conn._varlink:  # the turn of the messages held back came
                            if conn._inbox and intake.take_in():
                                conn._end_reading()
                            intake.arm()
                            turn = conn.core.has_output()  # (refusals of what was taken in)
                    runq = conn._runq
                    if runq and conn._running < conn._max_running and self.reader_left():
                        call = runq.popleft()
                        conn._running += 1
                        if not runq:
                            self.clear_work()
                        if conn._inbox and intake.take_in():
                            conn._end_reading()
                        if not conn._armed:
                            intake.arm()
                        if call.engine is None:
                            call.engine = True  # running: a cancel answers it at once
                    elif conn._reading_over:
                        return
                    else:
                        self.clear_work()  # (queued calls left wait for a thread that ends one)
                        spare = conn._waiting > 0  # another thread waits: this one may retire
                        conn._waiting += 1
                        deadline = intake.read_deadline()
                if turn:
                    turn = False
                    writer.flush()
                if call is None:
                    timeout = _IDLE_SECONDS
                    if deadline is not None:
                        timeout = min(timeout, max(deadline - time.monotonic(), 0.0))
                    try:
                        events = epoll.poll(timeout)
                    except ValueError:  # closed by a shutdown that left a handler behind: the end
                        with lock:
                            conn._waiting -= 1
                        return
                    except BaseException:
                        with lock:
                            conn._waiting -= 1
                        raise
                    if not events and deadline is not None and time.monotonic() >= deadline:
                        with lock:
                            conn._waiting -= 1
                            intake.time_out()
                        writer.flush()
                        continue
                    if events and any(fd == sock_fd for fd, _ in events):
                        call = intake.read()  # counts this thread out of the waiting ones
                        if call is None:
                            continue
                    else:
                        with lock:
                            conn._waiting -= 1
                            if not events and conn._waiting and not conn._runq:
                                return  # idle for a while, and not the last one waiting
                            if not events and not spare and self.go_idle():
                                idle = True
                        if idle:  # the connection holds no thread while it is idle
                            conn._engine.idle(conn)
                            return
                        continue
                runner.run(call)
        finally:
            if call is not None:
                with lock:
                    conn._running -= 1
            if not idle:
                self.thread_done()

    def go_idle(self) -> bool:  # lock held
        """The last thread of a connection with nothing to do (no call, no
        output, no frame begun, nothing held back) leaves it to the engine,
        which watches its epoll with the other idle connections and starts a
        thread for it when it has something (:meth:`wake`)."""
        conn = self._conn
        if (
            conn._threads == 1
            and not conn._waiting
            and not conn._runq
            and not conn._inbox
            and not len(conn.core)
            and not conn._writing
            and not conn.core.has_output()
            and conn._armed
            and not conn._reading_over
            and not conn._fds_closed
            and conn._io.buffered_size() == 0
            and conn._intake.read_deadline() is None
        ):
            conn._threads = 0
            conn._idle = True
            return True
        return False

    def thread_done(self) -> None:
        """A thread of the connection ends; the last one closes it."""
        conn = self._conn
        with conn._cond:
            conn._threads -= 1
            self.give_back()
            last = conn._threads == 0
            conn._cond.notify_all()
        if last:
            conn._close()

    def dispatch(self, taking: int) -> bool | None:  # lock held
        """Get threads for the calls waiting in the queue (waiting ones
        first, then new ones), leaving one waiting for the next request when
        this thread, or one of them, is about to run a call (*taking*).

        False if the system would not start a thread: then the queued calls
        no thread will take are refused ``ServerBusyError``, and the caller
        refuses the call it was about to run unless a thread is left to read.
        None if the server's thread budget is spent: the queued calls wait
        for the connection's threads, and the caller puts the call it was
        about to run back in the queue unless a thread is left to read.
        """
        conn = self._conn
        runq = conn._runq
        extra = min(len(runq), conn._max_running - conn._running)
        if extra and conn._waiting:
            self.signal_work()  # each woken thread takes one, and wakes the next
        elif runq and not extra:
            self.clear_work()  # every thread is busy: the first one free takes it
        for started in range(extra + taking - conn._waiting):
            spawned = self.spawn()
            if spawned is None:
                return None
            if not spawned:
                free = conn._waiting + started  # threads that will take a queued call
                while len(runq) > free:
                    conn.core.finish(runq.pop(), raised=no_thread())
                return False
        return True
