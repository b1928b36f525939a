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

Identity: ``serving(server, other_users=True)`` serves where any user may
connect (the server's access policy, not file modes, decides then), and
:func:`call_as` makes one call as another user (uid, gid, supplementary
groups), in a forked child that drops to them, so a test of "uid 65534 is
refused" needs no hand-written subprocess. To test a handler or a policy
without a socket, make the peer by hand: ``Peer(pid, uid, gid, groups=...)``.

The plugin is registered through the ``pytest11`` entry point ``unixrpc``,
so installing unixrpc is enough: no ``conftest.py`` line is needed (with
``PYTEST_DISABLE_PLUGIN_AUTOLOAD`` set, load it with ``-p unixrpc.testing``).
The helpers work without pytest; the fixtures are defined only when pytest
is importable, and nothing in the rest of the package imports this module.

Imports the public server API, the sans-IO core's codec (for :func:`call_as`)
and stdlib only; never an engine's internals.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pwd
import select
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Final, TypeVar

import orjson

from ._core import codec, wire
from .methods import Method
from .transport import connect_error

if TYPE_CHECKING:
    from .server import Server

__all__ = ["call_as", "serving", "temporary_socket_path"]

R = TypeVar("R")

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
def temporary_socket_path(name: str = "server.sock", *, other_users: bool = False) -> Iterator[str]:
    """A socket path in a new, private (mode 0700), short temporary
    directory, for the ``with`` block; the directory and everything in it
    are removed on exit. Nothing is created at the path itself. With
    *other_users*, the directory is mode 0711: other users can reach a
    socket in it (but not list it).

    Raises:
        ValueError: *name* is empty or holds a ``/``, or the path would be
            longer than the 107 bytes ``sun_path`` holds.
    """
    if not name or "/" in name:
        raise ValueError(f"a socket file name is needed, not a path: {name!r}")
    directory = tempfile.mkdtemp(prefix="unixrpc-", dir=_short_temp_root())
    try:
        if other_users:
            os.chmod(directory, 0o711)
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
    other_users: bool = False,
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
        other_users: let any user connect: the temporary directory is mode
            0711 and the socket file mode 0666 once listening, whatever the
            server's ``socket_mode`` (for tests of its access policy; see
            :func:`call_as`).

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
            path = stack.enter_context(temporary_socket_path(other_users=other_users))
        with server.serve_in_thread(path, backend=backend, timeout=timeout):
            if other_users:
                os.chmod(path, 0o666)
            try:
                yield path
            finally:
                if grace is not None:
                    server.shutdown(grace=grace)  # a later shutdown() never lengthens it


def call_as(
    path: str,
    request: Method[R],
    *,
    user: int | str,
    group: int | str | None = None,
    groups: Iterable[int] = (),
    timeout: float = 10.0,
) -> R:
    """Make one call of *request* to the server at *path* as another user:
    a child forked for it sets its supplementary groups to *groups*, its
    gid to *group* and its uid to *user*, connects, sends the request and
    reads the reply; the result is checked here as :meth:`Client.call
    <unixrpc.Client.call>` checks it. The server sees that uid, gid and
    those groups in ``ctx.peer`` (the kernel's, not a claim). Serve with
    ``serving(server, other_users=True)`` so that the user can reach the
    socket. Blocks: from async code, run it in a thread
    (``anyio.to_thread.run_sync``).

    Args:
        path: the socket path.
        request: the call (a :class:`~unixrpc.Method` instance without
            descriptors; streams and replies with descriptors are not
            supported).
        user: a user name or uid.
        group: a group name or gid; default: the user's primary group
            (the uid itself for a uid with no user).
        groups: the supplementary gids (default: none).
        timeout: seconds for the whole call.

    Raises:
        RPCError: the server answered with an error (its registered subclass:
            ``PermissionDeniedError`` for a denial).
        SocketPermissionError, SocketNotFoundError, SocketRefusedError,
            ConnectError: the user could not connect.
        PermissionError: this process may not change its uid (needs root,
            or CAP_SETUID and CAP_SETGID).
        KeyError: *user* or *group* is a name this system does not know.
        TypeError: *request* is not a ``Method`` instance, or carries descriptors.
        TimeoutError: no reply within *timeout* seconds.
        ConnectionError: the server closed the connection without a reply.
    """
    import grp

    spec = codec.spec_of(request, streaming=False, api="call")
    params, fds = codec.encode_params(request, spec)
    if fds is not None and fds.outgoing:
        fds.abort()
        raise TypeError("call_as cannot send descriptors: call with a Client to pass FD fields")
    uid = pwd.getpwnam(user).pw_uid if isinstance(user, str) else user
    if group is None:
        try:
            gid = pwd.getpwuid(uid).pw_gid
        except KeyError:
            gid = uid
    else:
        gid = grp.getgrnam(group).gr_gid if isinstance(group, str) else group
    gids = list(groups)
    body = wire.encode_request(1, orjson.dumps(spec.name), params)
    frame = wire.HEADER.pack(len(body), 0) + body
    answer = _run_as_child(os.fsencode(path), frame, uid, gid, gids, timeout)
    kind, payload = answer[:1], answer[1:]
    if kind == b"P":
        code = int(payload)
        raise PermissionError(
            code,
            f"call_as could not become uid {uid} gid {gid}: {os.strerror(code)} "
            "(it needs root, or CAP_SETUID and CAP_SETGID)",
        )
    if kind == b"C":
        code = int(payload)
        raise connect_error(OSError(code, os.strerror(code)), path)
    if kind == b"T":
        raise TimeoutError(f"no reply from {path} within {timeout} seconds")
    if kind != b"R" or len(payload) < wire.HEADER_SIZE:
        raise ConnectionError(f"the server at {path} closed the connection without a reply")
    envelope: Any = orjson.loads(payload[wire.HEADER_SIZE :])
    result: R = codec.final_value(spec, wire.classify(envelope), envelope, [])
    return result


def _run_as_child(path: bytes, frame: bytes, uid: int, gid: int, groups: list[int], timeout: float) -> bytes:
    """Fork a child that becomes *uid*/*gid*/*groups*, sends *frame* to
    *path* and reads one reply frame; what it reports: ``R`` + the frame,
    ``C`` + errno (connect failed), ``P`` + errno (could not change
    identity), ``T`` (timed out), ``E`` (the connection ended first).

    The child runs only system calls (no locks another thread may hold at
    the fork, no imports) and leaves with ``os._exit``.
    """
    header, header_size = wire.HEADER, wire.HEADER_SIZE
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        status = 0
        try:
            os.close(reader)
            try:
                os.setgroups(groups)
                os.setresgid(gid, gid, gid)
                os.setresuid(uid, uid, uid)
            except OSError as exc:
                os.write(writer, b"P%d" % (exc.errno or errno.EPERM))
                raise
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            try:
                sock.connect(path)
            except OSError as exc:
                os.write(writer, b"C%d" % (exc.errno or errno.EIO))
                raise
            sock.sendall(frame)
            reply = b""
            try:
                while len(reply) < header_size or len(reply) < header_size + header.unpack_from(reply)[0]:
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    reply += chunk
            except TimeoutError:
                os.write(writer, b"T")
                raise
            answer = b"R" + reply if len(reply) >= header_size else b"E"
            while answer:
                answer = answer[os.write(writer, answer) :]
        except BaseException:
            status = 1
        finally:
            os._exit(status)
    os.close(writer)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout + 5.0
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([reader], [], [], left)[0]:
                os.kill(pid, signal.SIGKILL)
                return b"T"
            chunk = os.read(reader, 65536)
            if not chunk:
                return b"".join(chunks) or b"E"
            chunks.append(chunk)
    finally:
        os.close(reader)
        os.waitpid(pid, 0)


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
        grace=None, timeout=30.0, other_users=False) -> str`` that serves *server* in a thread
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
                other_users: bool = False,
            ) -> str:
                return stack.enter_context(
                    serving(
                        server, path, backend=backend, grace=grace, timeout=timeout, other_users=other_users
                    )
                )

            yield serve
