"""What the sync and async Unix stream clients share: socket checks, peer
credentials, the socket proxy, and the handling of one ``recvmsg`` result
(ancillary data, ``MSG_CTRUNC``, end of stream).

Everything here is synchronous and never blocks; the shells decide how to
wait. Must not import anyio, trio or asyncio.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import socket
import stat
import struct
import sys
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from ..address import UnixAddressLike, UnixSocketAddress
from ..ancillary import (
    DEFAULT_ANCILLARY_BUFSIZE,
    SCMCredentials,
    SCMRights,
    SocketAncillary,
    UnixCredentials,
    close_fds_in,
    parse_cmsgs,
)
from ..exceptions import (
    AncillaryDataTruncatedError,
    ClientClosedError,
    ConnectError,
    ConnectionBrokenError,
    ConnectTimeoutError,
    SocketNotFoundError,
    SocketPermissionError,
    SocketRefusedError,
)

__all__ = [
    "MSG_CMSG_CLOEXEC",
    "SocketProxy",
    "check_connected_socket",
    "connect_address",
    "connect_error",
    "connect_timeout_error",
    "copy_error",
    "eof_error",
    "handle_ancillary",
    "make_cmsgs",
    "map_send_error",
    "peer_credentials",
    "send_error_is_mapped",
    "resolve_ancillary_bufsize",
]

T = TypeVar("T")
E = TypeVar("E", bound=BaseException)

MSG_CMSG_CLOEXEC: int = int(getattr(socket, "MSG_CMSG_CLOEXEC", 0))
_MSG_CTRUNC = int(socket.MSG_CTRUNC)
_DISCONNECT_ERRNOS = frozenset({errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.ESHUTDOWN})


def connect_address(address: UnixAddressLike) -> str | bytes:
    """The raw form of *address* for ``socket.connect()``.

    Raises:
        ValueError: the address is unnamed or not a valid socket path.
        TypeError: *address* is not a path, bytes or :class:`UnixSocketAddress`.
    """
    if not isinstance(address, str | bytes | UnixSocketAddress) and not hasattr(address, "__fspath__"):
        raise TypeError(f"expected a socket path, abstract name or connected socket, got {address!r}")
    parsed = UnixSocketAddress.from_raw(address)
    if parsed.is_unnamed():
        raise ValueError("cannot connect to an empty address")
    return parsed.as_raw()


def _shown(raw: str | bytes) -> str:
    return str(UnixSocketAddress.from_raw(raw))


def connect_timeout_error(raw: str | bytes, timeout: float) -> ConnectTimeoutError:
    """The error for a connect that found the listen backlog of *raw* full
    for *timeout* seconds."""
    where = _shown(raw)
    return ConnectTimeoutError(
        errno.ETIMEDOUT,
        f"could not connect to {where} within {timeout} seconds: the daemon's listen backlog stayed "
        "full (it is running but not accepting connections)",
        where,
    )


def connect_error(exc: OSError, raw: str | bytes) -> OSError:
    """The error to raise for a failed ``connect()`` to *raw*: one that names
    the address and the likely cause, of a class that keeps the standard
    one (``FileNotFoundError``, ``ConnectionRefusedError``,
    ``PermissionError``). Looks at the path (``stat``) to tell a stale socket
    from a file or a directory; never changes anything."""
    where = _shown(raw)
    code = exc.errno or 0
    abstract = isinstance(raw, bytes) and raw[:1] == b"\0"
    if abstract:
        if code == errno.ECONNREFUSED:  # what Linux says of an unbound name: kept a ConnectionRefusedError
            return SocketRefusedError(
                code, f"nothing listens on the abstract name {where} (is the daemon running?)", where
            )
        return ConnectError(code, f"cannot connect to {where}: {exc.strerror}", where)
    try:
        info: os.stat_result | None = os.stat(raw)
    except OSError:
        info = None
    if code == errno.ENOENT:
        parent = os.path.dirname(os.path.abspath(os.fsdecode(raw)))
        if not os.path.isdir(parent):
            detail = f"the directory {parent} does not exist"
        else:
            detail = "nothing exists at that path"
        return SocketNotFoundError(
            code, f"no socket at {where}: {detail} (is the daemon running, and listening there?)", where
        )
    if code == errno.ECONNREFUSED:
        if info is not None and stat.S_ISDIR(info.st_mode):
            detail = "it is a directory, not a socket (give the path of the socket inside it)"
        elif info is not None and not stat.S_ISSOCK(info.st_mode):
            detail = "it is a regular file, not a socket (wrong path?)"
        else:
            detail = (
                "a socket file is there but no process listens on it (the daemon exited without "
                "removing it, or has not started listening yet)"
            )
        return SocketRefusedError(code, f"connection refused at {where}: {detail}", where)
    if code in (errno.EACCES, errno.EPERM):
        if info is not None:
            mode = stat.S_IMODE(info.st_mode)
            detail = (
                f"the socket is mode {mode:04o}, owner uid {info.st_uid} gid {info.st_gid}, and this "
                f"process is uid {os.geteuid()} gid {os.getegid()}; the daemon chooses who may connect "
                "with socket_mode= and socket_group="
            )
        else:
            detail = _blocking_directory(os.fsdecode(raw))
        return SocketPermissionError(code, f"permission denied connecting to {where}: {detail}", where)
    if code == errno.ENOTDIR:
        detail = "a component of the path is not a directory"
        return ConnectError(code, f"cannot connect to {where}: {detail}", where)
    return ConnectError(code, f"cannot connect to {where}: {exc.strerror}", where)


def _blocking_directory(path: str) -> str:
    """Which directory on *path* this process may not search (``x``), said
    with its mode and owner; a generic phrase if none is found (the
    permissions changed since, or a security module refused)."""
    directory = os.path.dirname(os.path.abspath(path))
    parts = [part for part in directory.split(os.sep) if part]
    effective = os.access in os.supports_effective_ids
    for depth in range(len(parts) + 1):
        current = os.sep + os.sep.join(parts[:depth])
        try:
            info = os.stat(current)
        except OSError:
            break  # gone, or not what the kernel refused: say no more than we know
        if not os.access(current, os.X_OK, effective_ids=effective):
            return (
                f"the directory {current} does not let this user through (mode "
                f"{stat.S_IMODE(info.st_mode):04o}, owner uid {info.st_uid} gid {info.st_gid}; this "
                f"process is uid {os.geteuid()} gid {os.getegid()} and needs search (x) permission there)"
            )
    return "a directory on the path does not let this user through"


def check_connected_socket(sock: socket.socket) -> None:
    """Check that *sock* is a connected ``AF_UNIX``/``SOCK_STREAM`` socket.

    Raises:
        ValueError: wrong family or type.
        OSError: the socket is not connected (``ENOTCONN``) or is closed.
    """
    if sock.family != socket.AF_UNIX:
        raise ValueError(f"expected an AF_UNIX socket, got {sock.family!r}")
    if sock.type != socket.SOCK_STREAM:
        raise ValueError(f"expected a SOCK_STREAM socket, got {sock.type!r}")
    sock.getpeername()  # raises OSError(ENOTCONN) when not connected


def set_connect_timeout(sock: socket.socket, timeout: float | None) -> None:
    """Bound a blocking ``connect()`` with ``SO_SNDTIMEO``: for Unix sockets the
    kernel waits for room in the listener's backlog up to that long, then fails
    with ``EAGAIN``. (``socket.settimeout`` can't do it: a non-blocking Unix
    connect fails with ``EAGAIN`` at once instead of ``EINPROGRESS``.)"""
    seconds = 0.0 if timeout is None else max(timeout, 1e-6)
    whole = int(seconds)
    sock.setsockopt(
        socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", whole, int((seconds - whole) * 1e6))
    )


def peer_credentials(sock: socket.socket) -> UnixCredentials:
    """The pid, uid and gid of the peer process, as of connect time.

    Linux: ``SO_PEERCRED``. Elsewhere: ``getpeereid()`` from libc, with
    ``pid`` 0 since it cannot tell.

    Raises:
        OSError: the socket is closed or the platform cannot tell.
    """
    if hasattr(socket, "SO_PEERCRED"):
        data = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("iII"))
        return UnixCredentials(*struct.unpack("iII", data))
    return _getpeereid(sock.fileno())  # pragma: no cover - non-Linux


def _getpeereid(fd: int) -> UnixCredentials:  # pragma: no cover - non-Linux
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    uid, gid = ctypes.c_uint32(), ctypes.c_uint32()
    if libc.getpeereid(fd, ctypes.byref(uid), ctypes.byref(gid)) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"getpeereid failed on {sys.platform}")
    return UnixCredentials(0, uid.value, gid.value)


def make_cmsgs(ancillary: SocketAncillary | None) -> list[tuple[int, int, bytes]]:
    """Control messages to send, from a :class:`SocketAncillary` (or none)."""
    if ancillary is None:
        return []
    if not isinstance(ancillary, SocketAncillary):
        raise TypeError(f"ancillary_data must be a SocketAncillary, got {ancillary!r}")
    return ancillary._to_cmsgs()


def resolve_ancillary_bufsize(ancillary: SocketAncillary | None, bufsize: int | None) -> int:
    """The control buffer size for a receive call.

    Raises:
        ValueError: *bufsize* is given without *ancillary*, or is too small to
            hold a single control message.
        TypeError: *ancillary* is not a :class:`SocketAncillary`.
    """
    if ancillary is None:
        if bufsize is not None:
            raise ValueError("ancillary_bufsize was given without ancillary_data")
        return 0
    if not isinstance(ancillary, SocketAncillary):
        raise TypeError(f"ancillary_data must be a SocketAncillary, got {ancillary!r}")
    if bufsize is None:
        return DEFAULT_ANCILLARY_BUFSIZE
    if bufsize < socket.CMSG_LEN(0):
        raise ValueError(f"ancillary_bufsize must be at least {socket.CMSG_LEN(0)} bytes, got {bufsize}")
    return bufsize


def handle_ancillary(
    ancdata: list[tuple[int, int, bytes]], msg_flags: int, bufsize: int, into: SocketAncillary
) -> None:
    """File the control messages of one ``recvmsg`` into *into*.

    Raises:
        AncillaryDataTruncatedError: ``MSG_CTRUNC`` was set; every descriptor
            that arrived has been closed.
    """
    messages: list[SCMRights | SCMCredentials] = parse_cmsgs(ancdata) if ancdata else []
    if msg_flags & _MSG_CTRUNC:
        closed = close_fds_in(messages)
        raise AncillaryDataTruncatedError(
            f"control data was truncated (MSG_CTRUNC): the ancillary buffer of {bufsize} bytes is too "
            f"small and file descriptors were lost; {closed} that arrived were closed. Pass a larger "
            "ancillary_bufsize, e.g. socket.CMSG_SPACE(4 * max_fds)",
            bufsize=bufsize,
            closed_fds=closed,
        )
    for message in messages:
        into._append(message)


def copy_error(error: E) -> E:
    """A new exception like *error* (same class, arguments and attributes),
    without its traceback, cause or context.

    A client that stays broken keeps the error that broke it and raises a
    copy on every later call. It never raises the kept one itself: a raised
    exception holds its traceback, whose frames hold the client, so the
    client would sit in a reference cycle and its buffers would stay alive
    until the cyclic garbage collector runs.
    """
    copy = type(error).__new__(type(error), *error.args)
    copy.args = error.args  # OSError subclasses with their own __init__ skip it in __new__
    copy.__dict__.update(error.__dict__)
    return copy


def eof_error(pending: int) -> ConnectionBrokenError:
    """The error for a peer that closed the connection, *pending* bytes into a packet."""
    detail = f" in the middle of a packet ({pending} bytes pending)" if pending else ""
    return ConnectionBrokenError("peer closed the connection" + detail)


def map_recv_error(exc: OSError, closed: bool, pending: int) -> OSError:
    """The error to raise for an ``OSError`` from a receive: a reset (the peer
    closed with our data unread) is the end of the connection, like EOF."""
    if closed:
        return ClientClosedError("client is closed")
    if exc.errno == errno.ECONNRESET:
        detail = f" in the middle of a packet ({pending} bytes pending)" if pending else ""
        return ConnectionBrokenError(f"peer reset the connection{detail}")
    return exc


def send_error_is_mapped(exc: OSError, closed: bool) -> bool:
    """Whether a send's ``OSError`` becomes another error (:func:`map_send_error`);
    if not, re-raise it as it is, with a bare ``raise`` (``raise exc from
    exc`` would make the error its own cause: a reference cycle)."""
    return closed or exc.errno in _DISCONNECT_ERRNOS


def map_send_error(exc: OSError, closed: bool) -> OSError:
    """The error to raise for an ``OSError`` from a send, when
    :func:`send_error_is_mapped`."""
    if closed:
        return ClientClosedError("client was closed")
    return ConnectionBrokenError(f"peer closed the connection ({errno.errorcode.get(exc.errno or 0, exc)})")


class SocketProxy:
    """A view of the client's socket for ``getsockopt``/``setsockopt`` and
    friends, without the power to read, write or close it.

    With a lock (the sync client's send lock), each call holds it, so socket
    options never change in the middle of a write.
    """

    __slots__ = ("_lock", "_sock")

    def __init__(self, sock: socket.socket, lock: threading.Lock | None = None) -> None:
        self._sock = sock
        self._lock = lock

    def __repr__(self) -> str:
        return f"<SocketProxy of {self._sock!r}>"

    def _call(self, func: Callable[..., T], *args: Any) -> T:
        if self._lock is None:
            return func(*args)
        with self._lock:
            return func(*args)

    @property
    def family(self) -> socket.AddressFamily:
        """``AF_UNIX``."""
        return self._sock.family

    @property
    def type(self) -> socket.SocketKind:
        """``SOCK_STREAM``."""
        return self._sock.type

    @property
    def proto(self) -> int:
        """The socket's protocol number."""
        return self._sock.proto

    def fileno(self) -> int:
        """The socket's descriptor (-1 once closed). Do not close it."""
        return self._call(self._sock.fileno)

    def getsockopt(self, level: int, optname: int, buflen: int | None = None) -> int | bytes:
        """``socket.getsockopt``.

        Raises:
            OSError: the option is unknown or the socket is closed.
        """
        if buflen is None:
            return self._call(self._sock.getsockopt, level, optname)
        return self._call(self._sock.getsockopt, level, optname, buflen)

    def setsockopt(self, level: int, optname: int, value: int | bytes) -> None:
        """``socket.setsockopt``.

        Raises:
            OSError: the option is unknown or invalid, or the socket is closed.
        """
        self._call(self._sock.setsockopt, level, optname, value)

    def getsockname(self) -> Any:
        """``socket.getsockname``; raises OSError once closed."""
        return self._call(self._sock.getsockname)

    def getpeername(self) -> Any:
        """``socket.getpeername``; raises OSError once closed."""
        return self._call(self._sock.getpeername)
