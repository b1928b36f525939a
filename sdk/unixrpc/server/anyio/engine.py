"""The anyio engine: ``await server.serve(path)`` under asyncio or trio.

Accepts connections and runs each in a task (:mod:`.connection`). Shutdown
stops accepting, lets calls in flight finish for the grace period, then
closes the connections (blocked writes fail, calls are cancelled).
:meth:`AnyioEngine.stop` may be called from any thread or a signal handler:
it reaches the event loop through its thread-safe entry
(``call_soon_threadsafe`` on asyncio, the trio token's ``run_sync_soon``).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import math
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING

import anyio
import anyio.abc

from ..._core.server import Admission
from ..._ratelog import RateLimitedLog
from ...address import UnixSocketAddress
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
from ..sockio import LoopServerSocket
from .connection import Connection

if TYPE_CHECKING:
    from ..server import Server

__all__ = ["AnyioEngine"]

logger = logging.getLogger("unixrpc.server")
_accept_failed = RateLimitedLog(logger, logging.ERROR, "failed accepts")


def _threadsafe_entry() -> Callable[[Callable[[], None]], object]:
    """How to run a callback in the current event loop from anywhere."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        import trio

        run_sync_soon = trio.lowlevel.current_trio_token().run_sync_soon
        return lambda callback: run_sync_soon(callback)
    return loop.call_soon_threadsafe


class AnyioEngine:
    """Serves one :class:`~unixrpc.Server` in the running event loop until stopped."""

    def __init__(self, server: Server, config: ServerConfig) -> None:
        self._server = server  # for its lifecycle (signals, reload, notify)
        self._config = config
        self.connections: set[Connection] = set()
        self._stop_event: anyio.Event | None = None
        self._enter: Callable[[Callable[[], None]], object] | None = None
        self._shutdown = Shutdown(config.shutdown_grace)
        self.lifecycle: Lifecycle | None = None
        total, per_uid = connection_limits(
            config.max_connections, config.max_connections_per_uid, 1, fd_limit := raise_fd_limit()
        )
        # descriptors queued ahead of their frames, all connections together: a quarter of the table
        config.rules.fd_budget.limit = max(fd_limit // 4, config.rules.max_fds)
        self._admission = Admission(total, per_uid)
        self._housekeeping_wake: anyio.Event | None = None
        self._lingering = 0  # refused connections kept open so their peers read why

    def stop(self, grace: float) -> None:
        """Begin a shutdown with *grace* seconds for calls in flight (a
        shorter grace given later hurries a shutdown in progress)."""
        self._shutdown.request(grace)
        if self.lifecycle is not None:
            self.lifecycle.stopping()
        enter = self._enter
        if enter is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closing: it stops anyway
                enter(self._on_stop)

    def _poke(self) -> None:  # in the loop: housekeeping has something to do
        if self._housekeeping_wake is not None:
            self._housekeeping_wake.set()

    def _on_stop(self) -> None:  # in the loop
        if self._stop_event is not None:
            self._stop_event.set()

    async def serve(
        self, listeners: list[BoundListener], task_status: anyio.abc.TaskStatus[UnixSocketAddress]
    ) -> None:
        check_listeners(listeners, self._config.rules)
        self._stop_event = anyio.Event()
        enter = self._enter = _threadsafe_entry()
        lifecycle = self.lifecycle = Lifecycle(self._server, lambda: enter(self._poke))
        if self._shutdown.requested:  # stopped before it began
            self._stop_event.set()
        async with anyio.create_task_group() as task_group:
            accept_scopes = [anyio.CancelScope() for _ in listeners]
            for listener, scope in zip(listeners, accept_scopes, strict=True):
                task_group.start_soon(self._accept_loop, listener, task_group, scope)
            task_group.start_soon(self._housekeeping, lifecycle)
            task_status.started(listeners[0].address)
            lifecycle.started([listener.address for listener in listeners])
            await self._stop_event.wait()
            lifecycle.stopping()
            for scope in accept_scopes:
                scope.cancel()
            for listener in listeners:
                listener.close()
            await self._drain()
            task_group.cancel_scope.cancel()

    async def _housekeeping(self, lifecycle: Lifecycle) -> None:
        """Watchdog pings, idle exit and reloads, from the serving loop (a
        wedged loop stops pinging)."""
        while True:
            wake = self._housekeeping_wake = anyio.Event()
            delay = lifecycle.tick(len(self.connections))
            if not lifecycle.reload_requested:  # (asked before this task ran: no wait)
                with anyio.move_on_after(math.inf if delay is None else delay):
                    await wake.wait()
            if lifecycle.reload_requested:
                pending = lifecycle.reload()
                if pending is not None and inspect.isawaitable(pending):
                    try:
                        await pending
                    except Exception:
                        logger.exception("the on_reload hook raised")
                lifecycle.reloaded()

    async def _drain(self) -> None:
        shutdown = self._shutdown
        shutdown.begin(anyio.current_time(), self.connections)
        # (a later stop(), a second signal, may shorten the grace meanwhile)
        while (pause := shutdown.pause(anyio.current_time(), self.connections)) is not None:
            await anyio.sleep(pause)
        with anyio.CancelScope(shield=True):
            for connection in list(self.connections):
                await connection.abort()

    async def _accept_loop(
        self, bound: BoundListener, task_group: anyio.abc.TaskGroup, scope: anyio.CancelScope
    ) -> None:
        listener, only = bound.socket, bound.wire
        with scope:
            while True:
                await anyio.wait_readable(listener)
                try:
                    conn, _ = listener.accept()
                except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                    continue
                except OSError as exc:  # EMFILE and friends: back off instead of spinning
                    _accept_failed("accept failed: %s", exc)
                    await anyio.sleep(0.1)
                    continue
                task_group.start_soon(self._serve_connection, conn, only)

    async def _serve_connection(self, conn: socket.socket, only: str | None) -> None:
        config = self._config
        try:
            conn.setblocking(False)
            peer = read_peer(conn)
        except OSError:
            conn.close()
            return
        refusal = self._admission.admit(peer.uid, peer.pid)
        if refusal is not None:
            peer._close()
            try:
                await self._refuse(conn, refusal, only)
            finally:
                conn.close()
            return
        io = LoopServerSocket(conn, config.protocol, config.ancillary_bufsize)
        try:
            connection = Connection(config, io, next(config.connection_ids), peer)
            connection.core.listener_wire = only
            self.connections.add(connection)
            try:
                await connection.run()
            finally:
                self.connections.discard(connection)
                self._admission.release(peer.uid)
        finally:
            peer._close()  # (before the socket closes; idempotent)
            io.close()

    async def _refuse(self, conn: socket.socket, refusal: str, only: str | None) -> None:
        """Tell the peer why it is refused in its wire's words (``kit.Refused``),
        keeping the connection open a moment (at most MAX_LINGERING at once)."""
        refused = Refused(conn, refusal, self._config.rules, only)
        if self._lingering >= MAX_LINGERING:  # (the kit's cap, as on every engine)
            refused.at_once()
            return
        if not refused.begin():
            return
        self._lingering += 1
        try:
            with anyio.move_on_after(LINGER_SECONDS):  # let the peer read why before the close
                while True:
                    await anyio.wait_readable(conn)
                    if refused.readable():
                        return
            refused.expire()
        finally:
            self._lingering -= 1
