"""How a :class:`~unixrpc.Server` comes to serve, apart from the engines:
its serving state and entry points (:class:`Serving`, composed into the
server: the engine that runs, its frozen config, the listeners, serving
blocking or in a thread, the ends of serving); the sockets it serves (bound
here, handed over, or passed by systemd), the signals a blocking
``serve_forever`` answers, journal logging by default, and the one error a
task group wrapped.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import itertools
import logging
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Final

import anyio
import anyio.abc

from .._core.server.wires import VARLINK
from ..address import UnixAddressLike, UnixSocketAddress
from .anyio import AnyioEngine, HandlerThreads
from .binding import BoundListener, bind_listener
from .config import ServerConfig
from .lifecycle import served_method_count
from .policy import access_table
from .threads import ThreadEngine
from .varlink_face import build_face

if TYPE_CHECKING:
    from .server import Server

__all__ = [
    "VARLINK_FDNAME",
    "Serving",
    "journal_logging_by_default",
    "listeners_for",
    "signals_shut_down",
    "unwrap",
]

logger = logging.getLogger("unixrpc.server")

#: the ``LISTEN_FDNAMES`` name (``FileDescriptorName=``) of activated sockets that speak varlink only
VARLINK_FDNAME: Final = "varlink"


class Serving:
    """The serving side of one :class:`~unixrpc.Server` (composed into it):
    the engine running now and its listeners, the handler threads, and the
    entry points the server's public methods hand to (see their docstrings
    for what they raise)."""

    __slots__ = ("_connection_ids", "_handler_threads", "_lock", "_server", "engine", "listeners")

    def __init__(self, server: Server) -> None:
        self._server = server
        self._connection_ids = itertools.count(1)
        self._handler_threads: HandlerThreads | None = None
        self._lock = threading.Lock()
        #: the engine serving now (None when not serving), and its listeners
        self.engine: AnyioEngine | ThreadEngine | None = None
        self.listeners: list[BoundListener] = []

    def _threads(self) -> HandlerThreads:
        """The threads that run plain ``def`` handlers (started on first use)."""
        pool = self._handler_threads
        if pool is None:
            pool = self._handler_threads = HandlerThreads(self._server.max_threads)
        return pool

    def config(self) -> ServerConfig:
        """What the engines see of the server, frozen now (serve time)."""
        server = self._server
        rules, framing = server._rules, server._framing
        face = build_face(server, framing.max_frame_size)
        rules.varlink = face.names if face is not None else None
        rules.varlink_handlers = face.handlers if face is not None else server._handlers
        return ServerConfig(
            rules=rules,
            protocol=server._protocol,
            ancillary_bufsize=framing.ancillary_bufsize,
            authorize=server.authorize,
            max_connections=server.max_connections,
            max_connections_per_uid=server.max_connections_per_uid,
            max_threads_per_connection=server.max_threads_per_connection,
            max_threads=server.max_threads,
            shutdown_grace=server.shutdown_grace,
            connection_ids=self._connection_ids,
            handler_threads=self._threads,
            has_async_handlers=any(handler.is_async for handler in server._handlers.values()),
            varlink_protocol=face.protocol if face is not None else None,
        )

    def begin(
        self,
        engine: AnyioEngine | ThreadEngine,
        address: UnixAddressLike | None,
        listener: socket.socket | None,
        listen_name: str | None,
        varlink: UnixAddressLike | socket.socket | None = None,
    ) -> list[BoundListener]:
        """Serving starts on *engine*: the listeners it serves (bound or taken now)."""
        server = self._server
        with self._lock:
            if self.engine is not None:
                raise RuntimeError("this server is already serving")
            server._rules.access = access_table(server.policy, server._allow)  # names looked up now
            listeners = listeners_for(
                address, listener, listen_name, server.socket_mode, server.socket_group, varlink
            )
            self.listeners, self.engine = listeners, engine
            server._rules.stopping = False
        where = ", ".join(str(bound.address) for bound in listeners)
        logger.info("serving %d methods on %s", served_method_count(server), where)  # as STATUS= says
        return listeners

    def end(self, listeners: list[BoundListener]) -> None:
        """Serving ended: close *listeners* and the handler threads."""
        for listener in listeners:
            listener.close()
        with self._lock:
            self.listeners, self.engine = [], None
            pool, self._handler_threads = self._handler_threads, None
        if pool is not None:
            pool.close()
        logger.info("stopped serving on %s", ", ".join(str(bound.address) for bound in listeners))

    def reload(self) -> None:
        """What :meth:`~unixrpc.Server.reload` does."""
        engine = self.engine
        if engine is not None and engine.lifecycle is not None:
            engine.lifecycle.request_reload()

    async def serve(
        self,
        address: UnixAddressLike | None,
        listener: socket.socket | None,
        listen_name: str | None,
        task_status: anyio.abc.TaskStatus[UnixSocketAddress],
        varlink: UnixAddressLike | socket.socket | None = None,
    ) -> None:
        """What :meth:`~unixrpc.Server.serve` does."""
        engine = AnyioEngine(self._server, self.config())
        listeners = self.begin(engine, address, listener, listen_name, varlink)
        try:
            await engine.serve(listeners, task_status)
        except BaseExceptionGroup as group:
            raise unwrap(group) from None
        finally:
            self.end(listeners)

    def blocking(
        self,
        backend: str,
        started: Callable[[UnixSocketAddress], None] | None,
        address: UnixAddressLike | None,
        listener: socket.socket | None = None,
        listen_name: str | None = None,
        varlink: UnixAddressLike | socket.socket | None = None,
    ) -> None:
        """Serve on *backend* until shut down, blocking this thread (see
        :meth:`~unixrpc.Server.serve_forever`); *started* is called with the
        first listener's address once listening."""
        server = self._server
        if backend not in ("asyncio", "trio", "threads", "uvloop"):
            raise ValueError(f"unknown backend {backend!r}: use 'asyncio', 'trio', 'uvloop' or 'threads'")
        options: dict[str, Any] = {}
        if backend == "uvloop":
            importlib.import_module("uvloop")  # raises ModuleNotFoundError before anything starts
            backend, options = "asyncio", {"use_uvloop": True}
        with signals_shut_down(server):
            if backend == "threads":
                engine = ThreadEngine(server, self.config())
                listeners = self.begin(engine, address, listener, listen_name, varlink)
                try:
                    first = listeners[0].address
                    engine.serve(listeners, None if started is None else lambda: started(first))
                finally:
                    self.end(listeners)
                return

            async def main() -> None:
                async with anyio.create_task_group() as task_group:
                    address_now = await task_group.start(
                        functools.partial(
                            server.serve, address, listener=listener, listen_name=listen_name, varlink=varlink
                        )
                    )
                    if started is not None:
                        started(address_now)

            try:
                anyio.run(main, backend=backend, backend_options=options)
            except BaseExceptionGroup as group:
                raise unwrap(group) from None

    @contextlib.contextmanager
    def in_thread(
        self,
        backend: str,
        address: UnixAddressLike | None,
        listener: socket.socket | None,
        listen_name: str | None,
        timeout: float,
        varlink: UnixAddressLike | socket.socket | None = None,
    ) -> Iterator[UnixSocketAddress]:
        """What :meth:`~unixrpc.Server.serve_in_thread` does."""
        server = self._server
        listening = threading.Event()
        where: list[UnixSocketAddress] = []
        failure: list[BaseException] = []

        def started(bound: UnixSocketAddress) -> None:
            where.append(bound)
            listening.set()

        def run() -> None:
            try:
                self.blocking(backend, started, address, listener, listen_name, varlink)
            except BaseException as exc:  # handed to the caller
                failure.append(exc)
            finally:
                listening.set()

        thread = threading.Thread(target=run, name="unixrpc-server", daemon=True)
        thread.start()
        if not listening.wait(timeout):
            server.shutdown(grace=0)
            raise TimeoutError(f"the server did not start listening within {timeout} s")
        if failure:
            thread.join()
            raise failure[0]
        try:
            yield where[0]
        finally:
            server.shutdown()
            thread.join(timeout + server.shutdown_grace)
            if thread.is_alive():
                raise TimeoutError("the server thread did not stop")
            if failure:
                raise failure[0]


def listeners_for(
    address: UnixAddressLike | None,
    listener: socket.socket | None,
    listen_name: str | None,
    mode: int,
    group: int | str | None,
    varlink: UnixAddressLike | socket.socket | None = None,
) -> list[BoundListener]:
    """The sockets to serve: *listener* (handed over), *address* (the
    socket systemd passed for it, else bound here), the sockets systemd
    passed by *listen_name*, or, with none of these, every socket systemd
    passed; and *varlink*, a socket (handed over) or an address (as
    *address*) that speaks varlink only. They combine. Sockets systemd
    passed under the name ``varlink`` speak varlink only, the others both
    wires (chosen per connection by its first byte)."""
    # systemd's side of it (LISTEN_FDS) lives with the daemon plumbing, which imports binding
    from ..daemon.activation import adopt_listener, inherited_listener_at, inherited_listeners

    listeners: list[BoundListener] = []

    def at(where: UnixAddressLike) -> BoundListener:
        inherited = inherited_listener_at(where)
        return inherited if inherited is not None else bind_listener(where, mode=mode, group=group)

    try:
        if listener is not None:
            listeners.append(adopt_listener(listener))
        if address is not None:
            listeners.append(at(address))
        if varlink is not None:
            only = adopt_listener(varlink) if isinstance(varlink, socket.socket) else at(varlink)
            only.wire = VARLINK
            listeners.append(only)
        if listen_name is not None or not listeners:
            listeners.extend(inherited_listeners(listen_name))
    except BaseException:
        for taken in listeners:
            taken.close()
        raise
    for bound in listeners:
        if bound.name == VARLINK_FDNAME:
            bound.wire = VARLINK
    return listeners


def journal_logging_by_default() -> None:
    """Under systemd (stderr is the ``JOURNAL_STREAM``), a daemon that set up
    no logging of its own gets the default handler, with ``<N>`` priority
    prefixes so journald keeps the levels (``unixrpc.daemon.install_daemon_logging``)."""
    from ..daemon.logs import install_daemon_logging, stream_is_journal

    if not logging.getLogger().handlers and stream_is_journal():
        install_daemon_logging()


def unwrap(group: BaseExceptionGroup[Any]) -> BaseException:
    """The one exception inside *group* (task groups wrap what serving
    raised), or the group itself when it holds several."""
    leaves: list[BaseException] = []

    def collect(error: BaseException) -> None:
        if isinstance(error, BaseExceptionGroup):
            for inner in error.exceptions:
                collect(inner)
        else:
            leaves.append(error)

    collect(group)
    return leaves[0] if len(leaves) == 1 else group


@contextlib.contextmanager
def signals_shut_down(server: Server) -> Iterator[None]:
    """SIGTERM and SIGINT shut *server* down gracefully, a second one at
    once; SIGHUP runs ``on_reload``, or is logged and ignored without one;
    only in the main thread (the only one where Python runs signal
    handlers). The previous handlers are restored afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def on_signal(signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if received:
            logger.warning("received %s again: cancelling what is left", name)
            server.shutdown(grace=0)
        else:
            logger.info("received %s: shutting down", name)
            server.shutdown()
        received.append(signum)

    previous = {signum: signal.signal(signum, on_signal) for signum in (signal.SIGTERM, signal.SIGINT)}

    def on_hangup(signum: int, frame: Any) -> None:
        # never the default action (exit 129 with calls in flight and a stale socket)
        if server.on_reload is None:
            logger.warning("received SIGHUP: ignored (no on_reload hook to run; stop with SIGTERM)")
            return
        logger.info("received SIGHUP: reloading")
        server.reload()

    previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, on_hangup)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
