"""The blocking threads engine: ``server.serve_forever(path, backend="threads")``.

Plain sockets and threads, no event loop: the thread that calls
:meth:`ThreadEngine.serve` accepts connections; each connection has its
own threads (:mod:`.thread_connection`). Shutdown stops accepting, lets
calls in flight finish for ``shutdown_grace`` seconds, then cuts the
connections (blocked reads and writes fail, calls are cancelled).
``shutdown()`` may be called from any thread or a signal handler: it only
sets a flag and writes one byte to a pipe the accept loop polls.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import select
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..._core.server import Admission
from ..._ratelog import RateLimitedLog
from ...peer import read_peer
from ..binding import BoundListener
from ..config import ServerConfig
from ..kit import (
    LINGER_SECONDS,
    MAX_LINGERING,
    Refused,
    Shutdown,
    check_listeners,
    connection_limits,
    raise_fd_limit,
)
from ..lifecycle import Lifecycle
from .connection import LoopThread, ThreadConnection

if TYPE_CHECKING:
    from ..server import Server

__all__ = ["ThreadEngine"]

logger = logging.getLogger("unixrpc.server")
#: how long shutdown waits, after cutting the connections, for their threads to end
_ABORT_JOIN = 0.25
_accept_failed = RateLimitedLog(logger, logging.ERROR, "failed accepts")


class ThreadEngine:
    """Serves one :class:`~unixrpc.Server` on blocking threads until shut down."""

    def __init__(self, server: Server, config: ServerConfig) -> None:
        self._config = config
        self.lock = threading.Lock()
        self._connections: set[ThreadConnection] = set()
        self._loop_thread: LoopThread | None = None
        self._loop_closed = False  # shut down: a late connection thread must not start another
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._poller = select.poll()
        # refused connections kept open a moment, so the peer reads why
        # instead of a reset: {fd: (refused, when to close it)}
        self._refused: dict[int, tuple[Refused, float]] = {}
        self._shutdown = Shutdown(config.shutdown_grace)
        self.lifecycle = Lifecycle(server, self.wake)
        total, per_uid = connection_limits(
            config.max_connections, config.max_connections_per_uid, 3, fd_limit := raise_fd_limit()
        )
        # descriptors queued ahead of their frames, all connections together: a quarter of the table
        config.rules.fd_budget.limit = max(fd_limit // 4, config.rules.max_fds)
        self._admission = Admission(total, per_uid)
        # idle connections, with no thread: {their epoll's fd: connection}; those just
        # left by their last thread wait in _idle_new for the accept loop to poll them
        self._idle: dict[int, ThreadConnection] = {}
        self._idle_new: list[ThreadConnection] = []
        # threads beyond each connection's first two, all connections together
        self._spare_threads = config.max_threads
        self._spare_lock = threading.Lock()

    # -- what connections use -------------------------------------------------------

    def loop_thread(self) -> LoopThread:
        """The event-loop thread for ``async def`` handlers (started on first use).

        Raises:
            RuntimeError: the server has shut down (a connection thread left
                behind must not start a loop thread that nothing would close).
        """
        with self.lock:
            if self._loop_thread is None:
                if self._loop_closed:
                    raise RuntimeError("the threads engine's event-loop thread has stopped")
                self._loop_thread = LoopThread()
            return self._loop_thread

    def take_thread(self) -> bool:
        """Take one thread of the server-wide budget (``max_threads``): False
        if it is spent (the connection makes do with the threads it has)."""
        with self._spare_lock:
            if self._spare_threads <= 0:
                return False
            self._spare_threads -= 1
            return True

    def give_thread(self) -> None:
        """A thread taken with :meth:`take_thread` ended."""
        with self._spare_lock:
            self._spare_threads += 1

    def idle(self, connection: ThreadConnection) -> None:
        """*connection*'s last thread left it (nothing to do): the accept
        loop watches it and wakes it when its epoll is readable."""
        with self.lock:
            self._idle_new.append(connection)
        self.wake()

    def _watch_idle(self) -> None:
        """Poll the connections left idle since the last turn."""
        with self.lock:
            fresh, self._idle_new = self._idle_new, []
        for connection in fresh:
            fd = connection.idle_fd()
            self._idle[fd] = connection
            self._poller.register(fd, select.POLLIN)

    def _wake_idle(self, fd: int) -> None:
        connection = self._idle.pop(fd)
        self._poller.unregister(fd)
        connection.wake()

    def connection_done(self, connection: ThreadConnection) -> None:
        with self.lock:
            self._connections.discard(connection)
            self._admission.release(connection.peer.uid)
        self.wake()

    # -- serving ------------------------------------------------------------------

    def wake(self) -> None:
        """Wake the accept loop (thread-safe, async-signal-safe)."""
        fd = self._wake_w
        if fd >= 0:
            with contextlib.suppress(OSError):  # the pipe is full: it is awake already
                os.write(fd, b"x")

    def stop(self, grace: float) -> None:
        """Ask the accept loop to shut down, giving calls in flight *grace*
        seconds (from any thread or a signal handler; a shorter grace given
        later hurries a shutdown in progress)."""
        self._shutdown.request(grace)
        self.lifecycle.stopping()
        self.wake()

    def serve(self, listeners: list[BoundListener], started: Callable[[], None] | None = None) -> None:
        """Accept and serve on *listeners* until :meth:`stop`, then shut down
        gracefully. The listeners are closed on the way out."""
        config, lifecycle = self._config, self.lifecycle
        ids = config.connection_ids
        try:
            check_listeners(listeners, config.rules)
            if config.has_async_handlers:
                self.loop_thread()  # started with the server, not by its first async call
            poller = self._poller
            listening = {listener.socket.fileno(): listener for listener in listeners}
            for fd in listening:
                poller.register(fd, select.POLLIN)
            poller.register(self._wake_r, select.POLLIN)
            if started is not None:
                started()
            lifecycle.started([listener.address for listener in listeners])
            while not self._shutdown.requested:
                if self._idle_new:
                    self._watch_idle()
                with self.lock:
                    count = len(self._connections)
                due = lifecycle.tick(count)  # watchdog pings come from this loop: it must not wedge
                refused = self._refused
                if refused:
                    linger = max(0.0, min(when for _, when in refused.values()) - time.monotonic())
                    due = linger if due is None else min(due, linger)
                events = poller.poll(None if due is None else due * 1000)
                if refused:
                    self._linger([fd for fd, _ in events if fd in refused])
                if lifecycle.reload_requested:
                    self._reload()
                for fd, _ in events:
                    if fd == self._wake_r:
                        with contextlib.suppress(OSError):
                            os.read(self._wake_r, 4096)
                        continue
                    if fd in self._idle:  # a request, a hang-up: it gets a thread again
                        self._wake_idle(fd)
                        continue
                    bound = listening.get(fd)
                    if bound is None or self._shutdown.requested:
                        continue
                    try:
                        conn, _ = bound.socket.accept()
                    except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                        continue
                    except OSError as exc:  # EMFILE and friends: back off instead of spinning
                        _accept_failed("accept failed: %s", exc)
                        time.sleep(0.1)
                        continue
                    conn.setblocking(True)
                    self._admit(conn, next(ids), bound.wire)
        finally:
            for listener in listeners:
                listener.close()
            self._shut_down()

    def _reload(self) -> None:
        pending = self.lifecycle.reload()
        if pending is not None and inspect.isawaitable(pending):
            awaitable = pending

            async def run() -> None:
                await awaitable

            try:
                self.loop_thread().start(run).result()
            except Exception:
                logger.exception("the on_reload hook raised")
        self.lifecycle.reloaded()

    def _admit(self, conn: socket.socket, connection_id: int, wire: str | None) -> None:
        try:
            peer = read_peer(conn)
        except OSError:
            conn.close()
            return
        with self.lock:
            refusal = self._admission.admit(peer.uid, peer.pid)
        if refusal is not None:
            self._refuse(conn, refusal, wire)
            return
        try:
            connection = ThreadConnection(self._config, self, conn, connection_id, peer)
        except OSError as exc:  # the peer left already
            logger.debug("connection %d: %s", connection_id, exc)
            conn.close()
            with self.lock:
                self._admission.release(peer.uid)
            return
        connection.core.listener_wire = wire
        with self.lock:
            self._connections.add(connection)
        if not connection.start():  # no thread to serve it: refused, the daemon goes on
            connection.discard()
            refusal = "the server could not start a thread for this connection; try again later"
            self._refuse(conn, refusal, wire)

    def _refuse(self, conn: socket.socket, refusal: str, wire: str | None) -> None:
        """Tell the peer why it is refused in its wire's words (``kit.Refused``),
        keeping the connection open a moment (at most MAX_LINGERING at once)."""
        refused = Refused(conn, refusal, self._config.rules, wire)
        if len(self._refused) >= MAX_LINGERING:
            refused.at_once()
            return
        if not refused.begin():
            return
        self._refused[conn.fileno()] = (refused, time.monotonic() + LINGER_SECONDS)
        self._poller.register(conn.fileno(), select.POLLIN)

    def _linger(self, readable: list[int]) -> None:
        """Read and drop what refused peers send (the first byte of one on a
        listener of both wires says how it is refused); close those that
        hung up or whose time is up."""
        now = time.monotonic()
        for fd, (refused, when) in list(self._refused.items()):
            if when <= now:
                refused.expire()
            elif fd not in readable or not refused.readable():
                continue
            self._poller.unregister(fd)
            del self._refused[fd]

    def _shut_down(self) -> None:
        for fd, (refused, _) in list(self._refused.items()):
            self._poller.unregister(fd)
            refused.close()
        self._refused.clear()
        self._watch_idle()
        for fd in list(self._idle):  # idle connections end like the others: each on a thread
            self._wake_idle(fd)
        config = self._config
        config.rules.stopping = True
        with self.lock:
            connections = list(self._connections)
        shutdown = self._shutdown
        shutdown.begin(time.monotonic(), connections)
        # (a later stop(), a second signal, may shorten the grace meanwhile)
        while (pause := shutdown.pause(time.monotonic(), connections)) is not None:
            time.sleep(pause)
            with self.lock:
                connections = list(self._connections)
        for connection in connections:
            connection.abort()
        # the threads the abort woke end at once; a handler that does not return is
        # left running (a daemon thread, told through ctx.cancelled) and its connection's
        # descriptors are closed now: no wait beyond the grace, nothing left open
        deadline = time.monotonic() + _ABORT_JOIN
        for connection in connections:
            if not connection.finished.wait(max(deadline - time.monotonic(), 0.0)):
                logger.warning(
                    "connection %d: a handler still runs after shutdown; left behind",
                    connection.connection_id,
                )
                connection.release_descriptors()
        with self.lock:
            loop, self._loop_thread = self._loop_thread, None
            self._loop_closed = True
        if loop is not None:
            loop.close()
        wake_r, wake_w = self._wake_r, self._wake_w
        self._wake_w = self._wake_r = -1  # a late stop() writes nowhere
        os.close(wake_r)
        os.close(wake_w)
