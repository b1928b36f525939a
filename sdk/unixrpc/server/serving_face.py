"""The serving half of :class:`~unixrpc.Server`'s public face: where it
listens, shutting down and reloading, and the three ways to serve (in a
running event loop, blocking, in a thread). A base class of ``Server`` kept
in its own file; all the work is :class:`.serving.Serving`'s (composed into
the server as ``_serving``)."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator

import anyio
import anyio.abc

from .._core.server import ServerRules
from ..address import UnixAddressLike, UnixSocketAddress
from .serving import Serving, journal_logging_by_default

__all__ = ["ServingFace"]


class ServingFace:
    """What ``Server`` offers for serving; see :class:`~unixrpc.Server`."""

    _serving: Serving
    _rules: ServerRules
    shutdown_grace: float

    @property
    def address(self) -> UnixSocketAddress | None:
        """Where the server listens (its first listener), while it does."""
        listeners = self._serving.listeners
        return listeners[0].address if listeners else None

    @property
    def addresses(self) -> list[UnixSocketAddress]:
        """Where the server listens, every listener, while it does."""
        return [bound.address for bound in self._serving.listeners]

    def is_shutting_down(self) -> bool:
        """True once :meth:`shutdown` was called (until the next serve)."""
        return self._rules.stopping

    def shutdown(self, grace: float | None = None) -> None:
        """Start a graceful shutdown: stop accepting, refuse new calls, give
        calls in flight *grace* seconds (default ``shutdown_grace``), then
        cancel the rest. Safe from any thread, a signal handler or a handler,
        on every backend; calling it again with a shorter grace hurries it
        (``grace=0``: cancel what is left at once). A no-op when not serving."""
        self._rules.stopping = True
        engine = self._serving.engine
        if engine is not None:
            engine.stop(self.shutdown_grace if grace is None else grace)

    def reload(self) -> None:
        """Run the ``on_reload`` hook in the serving loop, with systemd told
        ``RELOADING=1`` then ``READY=1`` (what SIGHUP does in the main
        thread). Safe from any thread. A no-op when not serving."""
        self._serving.reload()

    async def serve(
        self,
        address: UnixAddressLike | None = None,
        *,
        listener: socket.socket | None = None,
        listen_name: str | None = None,
        varlink: UnixAddressLike | socket.socket | None = None,
        task_status: anyio.abc.TaskStatus[UnixSocketAddress] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve until :meth:`shutdown` (graceful) or cancellation (immediate),
        in the running event loop (asyncio or trio). With
        ``task_group.start(server.serve, path)`` it returns once listening
        (with the first listener's address).

        Args:
            address: a path or abstract name to listen on (if systemd passed a
                socket listening there, that one is served instead).
            listener: an already-bound listening ``AF_UNIX`` socket to serve
                (the server takes it over and closes it when it stops).
            listen_name: serve the sockets systemd passed under this name
                (``FileDescriptorName=``).
            varlink: also serve, for varlink only, this path or abstract name
                (as *address*) or listening socket (as *listener*). Sockets
                systemd passed named ``varlink`` speak varlink only; the
                others both wires (docs/varlink.md, "Separate listeners").

        With none of them, every socket systemd passed (socket activation);
        they combine. A socket file the server bound is removed on the way
        out; an inherited or handed-over one is never probed, unlinked or
        chmod-ed. Under ``NOTIFY_SOCKET``, systemd is told ``READY=1`` once
        listening and ``STOPPING=1`` at shutdown, and the watchdog is pinged.

        Raises:
            OSError (EADDRINUSE): a live server already listens on *address*.
            FileExistsError: *address* exists and is not a socket.
            SocketActivationError: no socket was given and systemd passed none
                (or none of that name), or what was passed or handed over is
                not a listening ``AF_UNIX`` stream socket.
            RuntimeError: this server is already serving.
            ValueError: the access policy names a user or group this
                system does not know.
        """
        await self._serving.serve(address, listener, listen_name, task_status, varlink)

    def serve_forever(
        self,
        address: UnixAddressLike | None = None,
        *,
        listener: socket.socket | None = None,
        listen_name: str | None = None,
        varlink: UnixAddressLike | socket.socket | None = None,
        backend: str = "asyncio",
    ) -> None:
        """Serve until :meth:`shutdown`, or SIGTERM or SIGINT when called in
        the main thread (a second signal cancels what is left at once; SIGHUP
        runs ``on_reload``, or is logged and ignored when there is none), then
        shut down gracefully.
        Works in any thread. *address*, *listener*, *listen_name* and *varlink* are as
        for :meth:`serve`. Under systemd, when the program configured no
        logging, records go to the journal with their priorities.

        Args:
            backend: ``"asyncio"`` or ``"trio"`` (a new event loop, through
                anyio), ``"uvloop"`` (asyncio on uvloop's loop: install
                ``unixrpc[uvloop]``), or ``"threads"`` (blocking sockets and
                threads, no event loop: plain ``def`` handlers run on the
                thread that read their request; see docs/rpc.md for which to
                pick).

        Raises:
            OSError, FileExistsError, SocketActivationError, RuntimeError: as
                for :meth:`serve`.
            ValueError: an unknown backend.
            ModuleNotFoundError: ``"uvloop"`` without uvloop installed.
        """
        journal_logging_by_default()
        self._serving.blocking(backend, None, address, listener, listen_name, varlink)

    @contextlib.contextmanager
    def serve_in_thread(
        self,
        address: UnixAddressLike | None = None,
        *,
        listener: socket.socket | None = None,
        listen_name: str | None = None,
        varlink: UnixAddressLike | socket.socket | None = None,
        backend: str = "threads",
        timeout: float = 30.0,
    ) -> Iterator[UnixSocketAddress]:
        """Serve in a new thread for the ``with`` block: it is entered once
        the server listens (yielding the first listener's address) and shuts
        the server down on exit, waiting for the thread. For embedding a
        daemon in another program, and for tests. *address*, *listener* and
        *listen_name* (and *varlink*) are as for :meth:`serve`.

        Raises:
            OSError, FileExistsError, SocketActivationError, RuntimeError,
                ValueError: as for :meth:`serve_forever`, raised here when
                binding fails.
            TimeoutError: the server did not start listening in *timeout*
                seconds (or did not stop in *timeout* seconds on exit).
        """
        with self._serving.in_thread(backend, address, listener, listen_name, timeout, varlink) as where:
            yield where
