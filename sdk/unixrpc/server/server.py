"""Server: the daemon side. Declare handlers for method classes, then serve
them on a Unix socket under asyncio or trio (anyio).

Owns the server-wide rules: registration, limits, the accept loop, the
authorization hook, graceful shutdown and signals. Per-connection work is
in :mod:`.connection`; binding the socket in :mod:`.binding`.
"""

from __future__ import annotations

import contextlib
import inspect
import itertools
import logging
import signal
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
import anyio.abc

from .._core import wire
from .._core.framing import FrameSerializer
from ..address import UnixAddressLike, UnixSocketAddress
from ..exceptions import ServerBusyError
from ..methods import MethodSpec, method_spec
from ..protocol import StreamProtocol
from ..transport.async_client import AsyncUnixStreamClient
from . import introspection as introspection_methods
from .binding import BoundListener, bind_listener
from .connection import Connection
from .context import CallContext

__all__ = ["AuthorizeHook", "Server"]

logger = logging.getLogger("unixrpc.server")

F = TypeVar("F", bound=Callable[..., Any])

#: ``authorize(context, request) -> bool`` (or an awaitable of it): False
#: refuses the call with PermissionDeniedError before the handler runs.
AuthorizeHook = Callable[[CallContext, Any], "bool | Awaitable[bool]"]


@dataclass(frozen=True, slots=True)
class _Handler:
    spec: MethodSpec
    function: Callable[..., Any]
    wants_context: bool
    is_async: bool


class Server:
    """A unixrpc daemon: methods, limits and policies, served on a Unix socket.

    Args:
        name: the daemon's name, for its interface document and ``unixrpc
            ping`` (e.g. ``"org.example.Logs"``).
        version: the daemon's interface version (e.g. ``"1.2.0"``).
        description: a sentence or two about the daemon, for its document.
        introspection: serve ``unixrpc.Describe`` and ``unixrpc.Ping`` (the
            interface document, name and version), which the ``authorize``
            hook sees like any call; False leaves them out.
        authorize: a hook ``(CallContext, request) -> bool`` (sync or async) run
            before every handler; it sees the caller's pid, uid and gid.
        max_connections: connections served at once; more are told
            ``ServerBusyError`` and closed.
        max_calls_per_connection: calls in flight per connection; more are
            answered with ``ServerBusyError``.
        max_frame_size: the largest frame body accepted or sent.
        max_fds_per_frame: the most descriptors one frame may carry.
        socket_mode: permission bits of the socket file (default 0o600: only
            the server's user may connect).
        socket_group: group (name or gid) of the socket file.
        expose_tracebacks: send handler tracebacks to clients in
            ``InternalError.data`` (for development only).
        shutdown_grace: seconds calls in flight get to finish on shutdown.

    Raises:
        ValueError: a limit is out of range.
    """

    def __init__(
        self,
        *,
        name: str | None = None,
        version: str | None = None,
        description: str | None = None,
        introspection: bool = True,
        authorize: AuthorizeHook | None = None,
        max_connections: int = 1024,
        max_calls_per_connection: int = 256,
        max_frame_size: int = wire.DEFAULT_MAX_FRAME_SIZE,
        max_fds_per_frame: int = wire.DEFAULT_MAX_FDS_PER_FRAME,
        socket_mode: int = 0o600,
        socket_group: int | str | None = None,
        expose_tracebacks: bool = False,
        shutdown_grace: float = 10.0,
    ) -> None:
        self.name, self.version, self.description = name, version, description
        for limit, value in (
            ("max_connections", max_connections),
            ("max_calls_per_connection", max_calls_per_connection),
        ):
            if value < 1:
                raise ValueError(f"{limit} must be at least 1, got {value}")
        self.authorize = authorize
        self.max_connections = max_connections
        self.max_calls_per_connection = max_calls_per_connection
        self.socket_mode = socket_mode
        self.socket_group = socket_group
        self.expose_tracebacks = expose_tracebacks
        self.shutdown_grace = shutdown_grace
        self._framing = FrameSerializer(max_frame_size=max_frame_size, max_fds=max_fds_per_frame)
        self._protocol = StreamProtocol(self._framing)
        self._handlers: dict[str, _Handler] = {}
        self._connections: set[Connection] = set()
        self._connection_ids = itertools.count(1)
        self._stopping = False
        self._stop_event: anyio.Event | None = None
        self._listener: BoundListener | None = None
        if introspection:
            introspection_methods.install(self)

    # -- declaring methods ----------------------------------------------------

    def method(self, method_class: type[Any]) -> Callable[[F], F]:
        """Decorator: serve *method_class* with the decorated function.

        The handler takes ``(request)`` or ``(request, context)``; it may be
        ``async def`` or plain ``def`` (run in a worker thread). For a
        ``StreamMethod`` it is an async or plain generator of items.

        Raises:
            TypeError: not a concrete method class, a handler of the wrong
                kind, or a name already served.
        """

        def register(function: F) -> F:
            self.add_method(method_class, function)
            return function

        return register

    def add_method(self, method_class: type[Any], function: Callable[..., Any]) -> None:
        """Serve *method_class* with *function* (see :meth:`method`).

        Raises:
            TypeError: as for :meth:`method`, or a name in the reserved
                ``unixrpc.`` namespace.
        """
        spec = method_spec(method_class)
        if spec.name.startswith(introspection_methods.RESERVED_PREFIX):
            raise TypeError(
                f"method names starting with 'unixrpc.' are reserved for the library: {spec.name!r}"
            )
        self._add(spec, function)

    def _add_reserved(self, method_class: type[Any], function: Callable[..., Any]) -> None:
        """Serve one of the library's own ``unixrpc.*`` methods."""
        self._add(method_spec(method_class), function)

    def _add(self, spec: MethodSpec, function: Callable[..., Any]) -> None:
        if spec.name in self._handlers:
            raise TypeError(
                f"method {spec.name!r} is already served by {self._handlers[spec.name].function!r}"
            )
        if spec.streaming:
            is_async = inspect.isasyncgenfunction(function)
            if not is_async and not inspect.isgeneratorfunction(function):
                raise TypeError(f"the handler of stream method {spec.name!r} must be a generator function")
        else:
            is_async = inspect.iscoroutinefunction(function)
            if inspect.isasyncgenfunction(function) or inspect.isgeneratorfunction(function):
                raise TypeError(f"{spec.name!r} is not a StreamMethod: its handler must return, not yield")
        positional = [
            p
            for p in inspect.signature(function).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
        if not 1 <= len(positional) <= 2:
            raise TypeError(f"a handler takes (request) or (request, context), got {function!r}")
        self._handlers[spec.name] = _Handler(spec, function, len(positional) == 2, is_async)

    @property
    def methods(self) -> dict[str, MethodSpec]:
        """The served methods by wire name (the reserved ``unixrpc.*`` ones included)."""
        return {name: handler.spec for name, handler in self._handlers.items()}

    def interface_document(self) -> dict[str, Any]:
        """The server's interface document (OpenRPC, see docs/interfaces.md):
        what ``unixrpc.Describe`` answers and ``unixrpc schema`` prints.
        Needs no running server.

        Raises:
            TypeError: a method's result type is a forward reference that
                does not resolve.
        """
        return introspection_methods.interface_document(self)

    # -- serving --------------------------------------------------------------

    @property
    def address(self) -> UnixSocketAddress | None:
        """Where the server listens, while it does."""
        return self._listener.address if self._listener is not None else None

    def is_shutting_down(self) -> bool:
        """True once :meth:`shutdown` was called."""
        return self._stopping

    def shutdown(self) -> None:
        """Start a graceful shutdown: stop accepting, refuse new calls, give calls
        in flight ``shutdown_grace`` seconds, then cancel the rest. Call it from
        the server's event loop (from another thread, through a portal)."""
        self._stopping = True
        if self._stop_event is not None:
            self._stop_event.set()

    async def serve(
        self,
        address: UnixAddressLike,
        *,
        task_status: anyio.abc.TaskStatus[UnixSocketAddress] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on *address* and serve until :meth:`shutdown` (graceful) or
        cancellation (immediate). The socket file is removed on the way out.
        With ``task_group.start(server.serve, path)`` it returns once listening.

        Raises:
            OSError (EADDRINUSE): a live server already listens there.
            FileExistsError: the path exists and is not a socket.
            RuntimeError: this server is already serving.
        """
        if self._listener is not None:
            raise RuntimeError("this server is already serving")
        listener = bind_listener(address, mode=self.socket_mode, group=self.socket_group)
        self._listener = listener
        self._stopping = False
        self._stop_event = anyio.Event()
        logger.info("serving %d methods on %s", len(self._handlers), listener.address)
        try:
            async with anyio.create_task_group() as task_group:
                accept_scope = anyio.CancelScope()
                task_group.start_soon(self._accept_loop, listener.socket, task_group, accept_scope)
                task_status.started(listener.address)
                await self._stop_event.wait()
                accept_scope.cancel()
                listener.close()
                await self._drain()
                task_group.cancel_scope.cancel()
        finally:
            listener.close()
            self._listener = None
            logger.info("stopped serving on %s", listener.address)

    async def _drain(self) -> None:
        with anyio.move_on_after(self.shutdown_grace) as scope:
            while any(connection.busy() for connection in self._connections):
                await anyio.sleep(0.01)
        if scope.cancelled_caught:
            left = sum(len(c.in_flight) for c in self._connections)
            logger.warning("shutdown grace of %ss elapsed; cancelling %d calls", self.shutdown_grace, left)
        with anyio.CancelScope(shield=True):
            for connection in list(self._connections):
                await connection.abort()

    async def _accept_loop(
        self, listener: socket.socket, task_group: anyio.abc.TaskGroup, scope: anyio.CancelScope
    ) -> None:
        with scope:
            while True:
                await anyio.wait_readable(listener)
                try:
                    conn, _ = listener.accept()
                except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                    continue
                except OSError as exc:  # EMFILE and friends: back off instead of spinning
                    logger.error("accept failed: %s", exc)
                    await anyio.sleep(0.1)
                    continue
                task_group.start_soon(self._serve_connection, conn)

    async def _serve_connection(self, conn: socket.socket) -> None:
        transport = AsyncUnixStreamClient(conn, self._protocol, max_recv_size=wire.RECV_SIZE)
        async with transport:
            if len(self._connections) >= self.max_connections:
                error = ServerBusyError(f"too many connections (limit {self.max_connections})")
                with contextlib.suppress(OSError):
                    await transport.send_packet(
                        wire.RawFrame(wire.encode_error(None, error.code, error.message))
                    )
                return
            connection = Connection(self, transport, next(self._connection_ids))
            self._connections.add(connection)
            try:
                await connection.run()
            finally:
                self._connections.discard(connection)

    def serve_forever(self, address: UnixAddressLike, *, backend: str = "asyncio") -> None:
        """Serve on *address* in a new event loop until SIGTERM or SIGINT, then
        shut down gracefully. Call from the main thread.

        Raises:
            OSError, FileExistsError: as for :meth:`serve`.
        """

        async def main() -> None:
            async with anyio.create_task_group() as task_group:

                async def on_signals() -> None:
                    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                        async for signum in signals:
                            logger.info("received %s: shutting down", signal.Signals(signum).name)
                            self.shutdown()

                task_group.start_soon(on_signals)
                await self.serve(address)
                task_group.cancel_scope.cancel()

        anyio.run(main, backend=backend)
