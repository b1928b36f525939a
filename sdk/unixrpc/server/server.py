"""Server: the daemon side. Declare handlers for method classes, then serve
them on a Unix socket under asyncio or trio (anyio), or on blocking threads.

Owns the public face: registration (handlers checked by
:mod:`.registration`), the limits and policies every engine applies (handed
to each connection's protocol object as :class:`.._core.server.ServerRules`),
and the serving entry points, which hand to :class:`.serving.Serving`
(composed: the engine that runs, signals, serving in a thread). The engines
are :mod:`.anyio` and :mod:`.threads`; binding the socket is :mod:`.binding`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from .._core import wire
from .._core.framing import FrameSerializer
from .._core.server import DEFAULT_MAX_STREAM_WINDOW, Handler, ServerRules
from .._core.varlink import is_interface_name
from ..methods import MethodSpec, method_spec
from ..protocol import StreamProtocol
from . import introspection as introspection_methods
from .context import CallContext
from .policy import Allow
from .registration import make_handler, missing_method_class
from .serving import Serving
from .serving_face import ServingFace

__all__ = ["AuthorizeHook", "Server"]

logger = logging.getLogger("unixrpc.server")

F = TypeVar("F", bound=Callable[..., Any])

#: ``authorize(context, request) -> bool`` (or an awaitable of it): False
#: refuses the call with PermissionDeniedError before the handler runs.
AuthorizeHook = Callable[[CallContext, Any], "bool | Awaitable[bool]"]


class Server(ServingFace):
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
            before every handler; it sees the caller's identity (``ctx.peer``).
        policy: who may call the methods that have no ``allow=`` of their
            own, e.g. ``Allow(users="root", groups="wheel")``; checked before
            ``authorize`` and the handler, denials answered
            ``PermissionDeniedError`` and logged at INFO. None: whoever can
            connect (the socket's mode and group decide). See docs/daemon.md.
        max_connections: connections served at once; more are told
            ``ServerBusyError`` and closed. Default: derived when serving
            starts from the descriptor limit (the soft ``RLIMIT_NOFILE``,
            raised first to the hard limit where allowed): three quarters of
            it, divided by the descriptors a connection costs (1 on the anyio
            engine, 3 on the threads engine), at most 4,096.
        max_connections_per_uid: connections served at once for one user
            (the peer's uid), so one local user cannot lock the others out.
            Default: a quarter of ``max_connections``, at most 1,024.
        frame_timeout: seconds a peer may take to finish a frame it started
            (a stalled half frame holds a slot and a buffer); then the
            connection is closed. None: no limit.
        connection_idle_timeout: close a connection with no call in flight
            that sent nothing for this many seconds (None: never).
        write_timeout: seconds a write of replies that the socket could not
            take at once may wait for the peer to read it (one write: the
            replies queued meanwhile, at most 1 MiB plus one frame);
            then the peer is taken not to read, and the connection is closed
            and logged, its unsent replies dropped. None: no limit.
        max_buffered_bytes: the bytes all connections together may hold
            beyond their 64 KiB read buffers (large frames arriving, replies
            the peer has not read); a connection that grows past it is closed.
        max_calls_per_connection: calls in flight per connection; more are
            answered with ``ServerBusyError``.
        max_frame_size: the largest frame body accepted or sent.
        max_fds_per_frame: the most descriptors one frame may carry.
        max_stream_window: the largest window (items sent ahead of the
            client's credit) a stream may be opened with (default 1,024; the
            clients ask for 16); a larger one is refused with
            ``ProtocolViolationError``, and credit beyond it is not honoured.
        socket_mode: permission bits of the socket file (default 0o600: only
            the server's user may connect).
        socket_group: group (name or gid) of the socket file.
        expose_tracebacks: send handler tracebacks to clients in
            ``InternalError.data`` (for development only).
        shutdown_grace: seconds calls in flight get to finish on shutdown.
        max_threads: threads that run plain ``def`` handlers at once, server
            wide, on the asyncio and trio backends (more calls wait for one).
            On the threads backend: the threads all connections may have
            beyond their first two (one reads while one runs a call), server
            wide; a connection that would need more runs its calls on the
            threads it has, one after another (reading goes on).
        on_reload: a hook (plain, or returning an awaitable) run on SIGHUP or
            :meth:`reload`, between ``RELOADING=1`` and ``READY=1`` to systemd
            (``Type=notify-reload``): re-read configuration there.
        idle_timeout: stop after this many seconds with no connection (for
            socket-activated daemons, which systemd starts again on demand).
        max_threads_per_connection: on the threads backend, the threads of one
            connection that run calls at once (plus one that reads); more
            calls wait for one of them while reading goes on.
        varlink: answer varlink clients on the same sockets (the wire is
            chosen per connection by its first byte; docs/varlink.md). False:
            unixrpc only (varlink bytes are then a protocol error, as before).
        varlink_interface: the varlink interface of the methods whose names
            are not qualified varlink names (default: ``name`` if it is an
            interface name such as ``org.example.calc``, else
            ``org.unixrpc.app``).
        varlink_vendor, varlink_url: what ``org.varlink.service.GetInfo``
            answers beside ``name`` (product) and ``version``.

    Raises:
        ValueError: a limit is out of range.
        TypeError: *policy* is not an :class:`Allow`.
    """

    def __init__(
        self,
        *,
        name: str | None = None,
        version: str | None = None,
        description: str | None = None,
        introspection: bool = True,
        authorize: AuthorizeHook | None = None,
        policy: Allow | None = None,
        max_connections: int | None = None,
        max_connections_per_uid: int | None = None,
        max_calls_per_connection: int = 256,
        max_frame_size: int = wire.DEFAULT_MAX_FRAME_SIZE,
        max_fds_per_frame: int = wire.DEFAULT_MAX_FDS_PER_FRAME,
        socket_mode: int = 0o600,
        socket_group: int | str | None = None,
        expose_tracebacks: bool = False,
        shutdown_grace: float = 10.0,
        max_threads: int = 64,
        max_threads_per_connection: int = 16,
        on_reload: Callable[[], Any] | None = None,
        idle_timeout: float | None = None,
        frame_timeout: float | None = 30.0,
        connection_idle_timeout: float | None = None,
        write_timeout: float | None = 30.0,
        max_buffered_bytes: int = 256 * 1024 * 1024,
        max_stream_window: int = DEFAULT_MAX_STREAM_WINDOW,
        varlink: bool = True,
        varlink_interface: str | None = None,
        varlink_vendor: str = "",
        varlink_url: str = "",
    ) -> None:
        self.name, self.version, self.description = name, version, description
        if varlink_interface is not None and not is_interface_name(varlink_interface):
            raise ValueError(f"varlink_interface {varlink_interface!r} is not a varlink interface name")
        self.varlink = varlink
        self.varlink_interface = varlink_interface
        self.varlink_vendor, self.varlink_url = varlink_vendor, varlink_url
        for limit, value in (
            ("max_connections", max_connections),
            ("max_connections_per_uid", max_connections_per_uid),
            ("max_calls_per_connection", max_calls_per_connection),
            ("max_threads", max_threads),
            ("max_threads_per_connection", max_threads_per_connection),
            ("max_stream_window", max_stream_window),
        ):
            if value is not None and value < 1:
                raise ValueError(f"{limit} must be at least 1, got {value}")
        if policy is not None and not isinstance(policy, Allow):
            raise TypeError(f"policy must be an Allow(users=..., groups=...), got {policy!r}")
        self.authorize = authorize
        self.policy = policy
        self._allow: dict[str, Allow] = {}  # the methods' own policies
        self.max_connections = max_connections
        self.max_connections_per_uid = max_connections_per_uid
        self.max_calls_per_connection = max_calls_per_connection
        self.socket_mode = socket_mode
        self.socket_group = socket_group
        self.shutdown_grace = shutdown_grace
        self._framing = FrameSerializer(max_frame_size=max_frame_size, max_fds=max_fds_per_frame)
        self._protocol = StreamProtocol(self._framing)
        self.max_threads = max_threads
        self.max_threads_per_connection = max_threads_per_connection
        self.on_reload = on_reload
        self.idle_timeout = idle_timeout
        self._handlers: dict[str, Handler] = {}
        self._rules = ServerRules(
            self._handlers,
            max_calls_per_connection=max_calls_per_connection,
            max_frame_size=max_frame_size,
            max_fds=max_fds_per_frame,
            expose_tracebacks=expose_tracebacks,
            max_buffered_bytes=max_buffered_bytes,
            max_stream_window=max_stream_window,
            frame_timeout=frame_timeout,
            connection_idle_timeout=connection_idle_timeout,
            write_timeout=write_timeout,
            memory_lock=threading.Lock(),
        )
        self._serving = Serving(self)  # the engine, listeners and entry points of serving
        if introspection:
            introspection_methods.install(self)

    @property
    def frame_timeout(self) -> float | None:
        """Seconds a peer may take to finish a frame it started (None: no limit)."""
        return self._rules.frame_timeout

    @property
    def write_timeout(self) -> float | None:
        """Seconds a blocked write of replies may wait for the peer to read it (None: no limit)."""
        return self._rules.write_timeout

    @property
    def connection_idle_timeout(self) -> float | None:
        """Seconds a connection with nothing in flight may stay silent (None: no limit)."""
        return self._rules.connection_idle_timeout

    @property
    def expose_tracebacks(self) -> bool:
        """Whether handler tracebacks are sent to clients (for development only)."""
        return self._rules.expose_tracebacks

    # -- declaring methods ----------------------------------------------------

    def method(self, method_class: type[Any], *, allow: Allow | None = None) -> Callable[[F], F]:
        """Decorator: serve *method_class* with the decorated function.

        The handler takes ``(request)`` or ``(request, context)``; it may be
        ``async def`` or plain ``def`` (run in a worker thread). For a
        ``StreamMethod`` it is an async or plain generator of items.

        *allow* (an :class:`Allow`) says who may call this method; it
        replaces the server's ``policy`` for it (and may be wider:
        ``Allow(everyone=True)``). Without it, the server's ``policy`` applies.

        Raises:
            TypeError: not a concrete method class (``@server.method`` with
                no class names the fix), a handler of the wrong kind or with
                its parameters as ``(context, request)``, a name already
                served, or *allow* not an :class:`Allow`.
        """
        if not isinstance(method_class, type) and callable(method_class):
            raise TypeError(missing_method_class(method_class))

        def register(function: F) -> F:
            self.add_method(method_class, function, allow=allow)
            return function

        return register

    def add_method(
        self, method_class: type[Any], function: Callable[..., Any], *, allow: Allow | None = None
    ) -> None:
        """Serve *method_class* with *function* (see :meth:`method`).

        Raises:
            TypeError: as for :meth:`method`, or a name in the reserved
                ``unixrpc.`` namespace.
        """
        if allow is not None and not isinstance(allow, Allow):
            raise TypeError(f"allow must be an Allow(users=..., groups=...), got {allow!r}")
        spec = method_spec(method_class)
        if spec.name.startswith(introspection_methods.RESERVED_PREFIX):
            raise TypeError(
                f"method names starting with 'unixrpc.' are reserved for the library: {spec.name!r}"
            )
        self._add(spec, function)
        if allow is not None:
            self._allow[spec.name] = allow

    def _add_reserved(self, method_class: type[Any], function: Callable[..., Any]) -> None:
        """Serve one of the library's own ``unixrpc.*`` methods."""
        self._add(method_spec(method_class), function)

    def _add(self, spec: MethodSpec, function: Callable[..., Any]) -> None:
        self._handlers[spec.name] = make_handler(spec, function, self._handlers)

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
