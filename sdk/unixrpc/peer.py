"""Peer: who is at the other end of a server connection, as the kernel tells it.

Owns reading the peer's identity from a connected ``AF_UNIX`` socket
(``SO_PEERCRED``, ``SO_PEERGROUPS``, ``SO_PEERSEC``, ``SO_PEERPIDFD``), the
fallbacks where the kernel lacks an option, and the ownership of the peer's
pidfd (taken on first use, closed with the connection). Everything is as of
connect time and checked by the kernel, not claimed by the client.

Imports the standard library and :mod:`.ancillary` only; never anyio, trio
or asyncio. Engines make one :class:`Peer` per connection with
:func:`read_peer` and call :meth:`Peer._close` before they close the socket.
"""

from __future__ import annotations

import ctypes
import errno
import grp
import os
import socket
import struct
import sys
import threading
from typing import Any, Final, Protocol

from .ancillary import UnixCredentials

__all__ = ["Peer", "read_peer"]

_LINUX: Final = sys.platform.startswith("linux")
#: Linux 4.13: the peer's supplementary groups at connect time
SO_PEERGROUPS: Final = int(getattr(socket, "SO_PEERGROUPS", 59))
#: Linux 6.5: a pidfd of the peer process
SO_PEERPIDFD: Final = int(getattr(socket, "SO_PEERPIDFD", 77))
#: the peer's LSM security label (SELinux, AppArmor, Smack) at connect time
SO_PEERSEC: Final = int(getattr(socket, "SO_PEERSEC", 31))
#: errnos meaning "this kernel (or its LSM setup) cannot tell": the option is then absent
_ABSENT: Final = frozenset({errno.ENOPROTOOPT, errno.EOPNOTSUPP, errno.EINVAL, errno.ENODATA})
_UCRED: Final = struct.Struct("iII")
#: what socket.getsockopt can read at most: 256 groups (more are read through libc)
_OPT_MAX: Final = 1024


class _GetSockOpt(Protocol):
    def getsockopt(self, level: int, optname: int, buflen: int, /) -> Any: ...

    def fileno(self) -> int: ...


class Peer(UnixCredentials):
    """The calling process, as the kernel saw it when it connected: what a
    handler finds in ``ctx.peer``. A :class:`~unixrpc.UnixCredentials`
    (``pid``, ``uid``, ``gid``, unpacking and equality as before) with more:

    Attributes:
        groups: the supplementary group ids of the process at connect time
            (``SO_PEERGROUPS``, Linux 4.13+: the groups the kernel checks
            file access with, not a lookup of the user in ``/etc/group``);
            None where the kernel cannot tell.
        security_label: the process's LSM label (``SO_PEERSEC``, e.g. an
            SELinux context or AppArmor profile); None where no security
            module gives one (the usual case without SELinux or AppArmor).

    The pidfd (:attr:`pidfd`, :meth:`current_pid`) is taken from the socket
    on first use and closed when the connection closes.

    ``Peer(pid, uid, gid, groups=..., security_label=...)`` makes one by
    hand (tests of a policy or of a handler without a socket); it has no
    pidfd.
    """

    groups: tuple[int, ...] | None = None
    security_label: str | None = None
    _socket: _GetSockOpt | None = None
    _lock: threading.Lock | None = None
    _pidfd: int | None = None
    _closed: bool = False

    def __new__(
        cls,
        pid: int,
        uid: int,
        gid: int,
        *,
        groups: tuple[int, ...] | None = None,
        security_label: str | None = None,
    ) -> Peer:
        self = super().__new__(cls, pid, uid, gid)
        self.groups = None if groups is None else tuple(groups)
        self.security_label = security_label
        return self

    def __repr__(self) -> str:
        return (
            f"Peer(pid={self.pid}, uid={self.uid}, gid={self.gid}, groups={self.groups!r}, "
            f"security_label={self.security_label!r})"
        )

    def in_group(self, group: int | str) -> bool:
        """Whether the process is in *group* (a gid or a group name): its
        primary gid or one of its supplementary :attr:`groups` (only the
        primary gid where the kernel cannot tell the others).

        Raises:
            KeyError: *group* is a name this system does not know.
        """
        gid = grp.getgrnam(group).gr_gid if isinstance(group, str) else group
        return gid == self.gid or (self.groups is not None and gid in self.groups)

    @property
    def pidfd(self) -> int | None:
        """A pidfd of the calling process (``SO_PEERPIDFD``, Linux 6.5+): it
        refers to that process and no other, even once its pid is reused
        (wait for it with ``select``/``poll``, signal it with
        ``signal.pidfd_send_signal``). None where the kernel has no
        ``SO_PEERPIDFD``, or for a peer made by hand. Taken on first use;
        the connection owns it: do not close it, ``os.dup`` it to keep it
        beyond the call.

        Raises:
            ProcessLookupError: the process has exited and been reaped already.
            ValueError: the connection is closed (its pidfd was closed with it).
        """
        lock = self._lock
        if lock is None:
            return None
        with lock:
            if self._closed:
                raise ValueError(
                    "the connection of this peer is closed, and its pidfd with it: "
                    "os.dup() the pidfd while the call runs to keep it"
                )
            if self._pidfd is None and self._socket is not None:
                self._pidfd = _read_pidfd(self._socket)
                if self._pidfd is None:
                    self._socket = None  # the kernel has none: don't ask again
            return self._pidfd

    def current_pid(self) -> int | None:
        """The process's pid now, read through its pidfd (the ``Pid:`` line
        of ``/proc/self/fdinfo/<pidfd>``): the pid in this process's pid
        namespace, 0 if the process lives in one this cannot see. Unlike
        :attr:`pid`, it cannot name another process that reused the pid.
        None without a pidfd (see :attr:`pidfd`).

        Raises:
            ProcessLookupError: the process has exited.
            ValueError: the connection is closed.
        """
        pidfd = self.pidfd
        if pidfd is None:
            return None
        pid = pid_of_pidfd(pidfd)
        if pid < 0:
            raise ProcessLookupError(errno.ESRCH, f"the calling process (pid {self.pid}) has exited")
        return pid

    def _close(self) -> None:
        """The connection is closing (before its socket is): close the
        pidfd and read nothing more from the socket. Idempotent."""
        lock = self._lock
        if lock is None:
            return
        with lock:
            self._closed = True
            self._socket = None
            pidfd, self._pidfd = self._pidfd, None
        if pidfd is not None:
            os.close(pidfd)


def read_peer(sock: _GetSockOpt) -> Peer:
    """The identity of the peer of the connected ``AF_UNIX`` socket *sock*
    (anything with ``getsockopt``): pid, uid and gid, supplementary groups
    and security label where the kernel gives them, and a pidfd on first use.

    The caller owns the result: call its ``_close()`` before closing *sock*.

    Raises:
        OSError: the socket is closed or not connected.
    """
    if not _LINUX:  # pragma: no cover - non-Linux
        from .transport import peer_credentials

        return Peer(*peer_credentials(sock))  # type: ignore[arg-type]
    pid, uid, gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
    peer = Peer(pid, uid, gid, groups=read_groups(sock), security_label=read_security_label(sock))
    peer._socket = sock
    peer._lock = threading.Lock()
    return peer


def read_groups(sock: _GetSockOpt) -> tuple[int, ...] | None:
    """The peer's supplementary groups (``SO_PEERGROUPS``), None where the
    kernel has no such option.

    Raises:
        OSError: the socket is closed, or another failure than a missing option.
    """
    try:
        data = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, _OPT_MAX)
    except OSError as exc:
        if exc.errno in _ABSENT:
            return None
        if exc.errno != errno.ERANGE:
            raise
        data = _getsockopt_large(sock.fileno(), SO_PEERGROUPS, os.sysconf("SC_NGROUPS_MAX") * 4)
    count = len(data) // 4
    return struct.unpack(f"{count}I", data[: count * 4])


def _getsockopt_large(fd: int, option: int, size: int) -> bytes:
    """``getsockopt`` through libc, for answers longer than the 1024 bytes
    ``socket.getsockopt`` reads.

    Raises:
        OSError: what ``getsockopt(2)`` failed with.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    buffer = ctypes.create_string_buffer(size)
    length = ctypes.c_uint32(size)
    if libc.getsockopt(fd, socket.SOL_SOCKET, option, buffer, ctypes.byref(length)) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"getsockopt: {os.strerror(code)}")
    return buffer.raw[: length.value]


def read_security_label(sock: _GetSockOpt) -> str | None:
    """The peer's security label (``SO_PEERSEC``), None where no security
    module gives one.

    Raises:
        OSError: the socket is closed, or another failure than a missing label.
    """
    try:
        data = sock.getsockopt(socket.SOL_SOCKET, SO_PEERSEC, _OPT_MAX)
    except OSError as exc:
        if exc.errno in _ABSENT:
            return None
        raise
    label = bytes(data).rstrip(b"\0")
    return label.decode("utf-8", "backslashreplace") if label else None


def _read_pidfd(sock: _GetSockOpt) -> int | None:
    """A new pidfd of the peer (close-on-exec), None where the kernel has no
    ``SO_PEERPIDFD`` or the peer has no process.

    Raises:
        ProcessLookupError: the peer process is gone.
        OSError: the socket is closed.
    """
    try:
        data = sock.getsockopt(socket.SOL_SOCKET, SO_PEERPIDFD, 4)
    except OSError as exc:
        if exc.errno in _ABSENT:
            return None
        if exc.errno == errno.ESRCH:
            raise ProcessLookupError(errno.ESRCH, "the calling process has exited already") from None
        raise
    fd: int = struct.unpack("i", data)[0]
    return fd


def pid_of_pidfd(pidfd: int) -> int:
    """The ``Pid:`` of *pidfd* in ``/proc/self/fdinfo``: the pid in this pid
    namespace, 0 if not visible from it, -1 once the process has exited.

    Raises:
        OSError: *pidfd* is not open, or its fdinfo has no ``Pid:`` line
            (not a pidfd, or ``/proc`` is not mounted).
    """
    with open(f"/proc/self/fdinfo/{pidfd}", "rb") as info:
        for line in info:
            if line.startswith(b"Pid:"):
                return int(line.split()[1])
    raise OSError(errno.EINVAL, f"descriptor {pidfd} is not a pidfd (no Pid: line in its fdinfo)")
