"""Helpers for testing a daemon built on unixrpc: start it in the test, call
it, stop it.

Owns: short temporary socket paths, serving a :class:`~unixrpc.Server` in a
thread for the length of a ``with`` block (on top of
:meth:`Server.serve_in_thread <unixrpc.Server.serve_in_thread>`), and a
pytest plugin with two fixtures built on them:

* ``unixrpc_socket_path``: a fresh socket path in a short temporary
  directory (``sun_path`` holds 107 bytes; pytest's ``tmp_path`` is often
  longer), removed after the test;
* ``unixrpc_serve``: a function ``unixrpc_serve(server, backend="threads")``
  that serves *server* in a thread on a fresh path, returns the path once
  the server listens, and shuts the server down after the test.

The plugin is registered through the ``pytest11`` entry point ``unixrpc``,
so installing unixrpc is enough: no ``conftest.py`` line is needed (with
``PYTEST_DISABLE_PLUGIN_AUTOLOAD`` set, load it with ``-p unixrpc.testing``).
The helpers work without pytest; the fixtures are defined only when pytest
is importable, and nothing in the rest of the package imports this module.

Imports the public server API and stdlib only; never an engine's internals.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from .server import Server

__all__ = ["serving", "temporary_socket_path"]

#: the longest path ``sun_path`` holds on Linux (108 bytes with the NUL)
_MAX_PATH: Final = 107


def _short_temp_root() -> str:
    """A directory for socket files whose paths fit ``sun_path``: the usual
    temporary directory when it is short (``TMPDIR`` honoured), else ``/tmp``."""
    root = tempfile.gettempdir()
    # mkdtemp adds a prefix and 8 characters, then "/" and the file name
    if len(os.fsencode(root)) > 60 and os.path.isdir("/tmp"):
        return "/tmp"
    return root


@contextlib.contextmanager
def temporary_socket_path(name: str = "server.sock") -> Iterator[str]:
    """A socket path in a new, private (mode 0700), short temporary
    directory, for the ``with`` block; the directory and everything in it
    are removed on exit. Nothing is created at the path itself.

    Raises:
        ValueError: *name* is empty or holds a ``/``, or the path would be
            longer than the 107 bytes ``sun_path`` holds.
    """
    if not name or "/" in name:
        raise ValueError(f"a socket file name is needed, not a path: {name!r}")
    directory = tempfile.mkdtemp(prefix="unixrpc-", dir=_short_temp_root())
    try:
        path = os.path.join(directory, name)
        if len(os.fsencode(path)) > _MAX_PATH:
            raise ValueError(
                f"socket path {path!r} is {len(os.fsencode(path))} bytes, longer than the "
                f"{_MAX_PATH} bytes sun_path holds: use a shorter name or TMPDIR"
            )
        yield path
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@contextlib.contextmanager
def serving(
    server: Server,
    path: str | None = None,
    *,
    backend: str = "threads",
    grace: float | None = None,
    timeout: float = 30.0,
) -> Iterator[str]:
    """Serve *server* in a new thread for the ``with`` block, on *path* or on
    a fresh temporary path (:func:`temporary_socket_path`), and yield the
    path once the server listens: connect to it with ``Client(path)`` or
    ``AsyncClient(path)``. On exit the server shuts down, calls in flight
    getting *grace* seconds (default: the server's ``shutdown_grace``), and
    the thread is waited for. A server may be served again after that (one
    ``Server`` defined at module level can serve test after test).

    Args:
        server: the daemon's server, methods registered.
        path: where to listen; None: a temporary path, removed on exit.
        backend: ``"threads"`` (the default: no event loop), ``"asyncio"``
            or ``"trio"`` (a new event loop in the thread), as for
            :meth:`~unixrpc.Server.serve_forever`.
        grace: seconds calls still in flight get at exit; 0 cancels them at once.
        timeout: seconds to wait for the server to listen, and to stop on exit.

    Raises:
        OSError, FileExistsError, SocketActivationError: binding failed
            (raised on entry, as :meth:`~unixrpc.Server.serve_forever` does).
        RuntimeError: *server* is serving already.
        ValueError: an unknown *backend*, or *path* too long for ``sun_path``.
        TimeoutError: the server did not listen, or stop, within *timeout*.

    An exception serving raised while the block ran is raised on exit.
    """
    with contextlib.ExitStack() as stack:
        if path is None:
            path = stack.enter_context(temporary_socket_path())
        with server.serve_in_thread(path, backend=backend, timeout=timeout):
            try:
                yield path
            finally:
                if grace is not None:
                    server.shutdown(grace=grace)  # a later shutdown() never lengthens it


# -- the pytest plugin ---------------------------------------------------------------

try:
    import pytest
except ImportError:  # the helpers above work without pytest
    pass
else:

    @pytest.fixture
    def unixrpc_socket_path() -> Iterator[str]:
        """A fresh socket path in a short private temporary directory,
        removed after the test (see :func:`temporary_socket_path`)."""
        with temporary_socket_path() as path:
            yield path

    @pytest.fixture
    def unixrpc_serve() -> Iterator[Callable[..., str]]:
        """A function ``unixrpc_serve(server, path=None, *, backend="threads",
        grace=None, timeout=30.0) -> str`` that serves *server* in a thread
        (see :func:`serving`) and returns the socket path once it listens.
        Every server it started is shut down after the test, the last
        started first; an error serving raised meanwhile fails the test at
        teardown. It raises what :func:`serving` raises on entry."""
        with contextlib.ExitStack() as stack:

            def serve(
                server: Server,
                path: str | None = None,
                *,
                backend: str = "threads",
                grace: float | None = None,
                timeout: float = 30.0,
            ) -> str:
                return stack.enter_context(
                    serving(server, path, backend=backend, grace=grace, timeout=timeout)
                )

            yield serve
