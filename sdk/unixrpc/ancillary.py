"""Socket control messages (``sendmsg``/``recvmsg`` ancillary data) for Unix sockets.

Owns the user-facing containers (:class:`SocketAncillary`, :class:`SCMRights`,
:class:`SCMCredentials`, :class:`UnixCredentials`) and the pure conversions
between them and the ``(level, type, data)`` tuples of the ``socket`` module.
Does no I/O; never closes a descriptor it did not receive.
"""

from __future__ import annotations

import array
import contextlib
import os
import socket
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import NamedTuple, Protocol

__all__ = [
    "DEFAULT_ANCILLARY_BUFSIZE",
    "FileDescriptorLike",
    "SCMCredentials",
    "SCMRights",
    "SocketAncillary",
    "UnixCredentials",
]

#: Default control buffer for ``recv_packet(ancillary_data=...)``: about 8 KiB,
#: room for about 2000 descriptors.
DEFAULT_ANCILLARY_BUFSIZE = 8192

_UCRED = struct.Struct("iII")  # struct ucred: pid_t pid; uid_t uid; gid_t gid


class _HasFileno(Protocol):
    def fileno(self) -> int: ...


#: An ``int`` descriptor or any object with ``fileno()`` (file, socket, ...).
FileDescriptorLike = int | _HasFileno


class UnixCredentials(NamedTuple):
    """The identity of a process: its pid, user id and group id."""

    pid: int
    uid: int
    gid: int

    @classmethod
    def of_this_process(cls) -> UnixCredentials:
        """The credentials of the calling process (what ``SCM_CREDENTIALS`` sends by default)."""
        return cls(os.getpid(), os.getuid(), os.getgid())


@dataclass(frozen=True, slots=True)
class SCMRights:
    """An ``SCM_RIGHTS`` message: file descriptors.

    Received descriptors belong to you: close them (``os.close``) or wrap them
    (``socket.socket(fileno=fd)``, ``os.fdopen(fd)``). They are close-on-exec.
    """

    fds: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class SCMCredentials:
    """An ``SCM_CREDENTIALS`` message: the sender's credentials, as checked by
    the kernel. Arrives on sockets with ``SO_PASSCRED`` (``pass_credentials=True``)."""

    credentials: tuple[UnixCredentials, ...]


def _fileno(obj: FileDescriptorLike) -> int:
    if isinstance(obj, int):
        fd = obj
    else:
        fileno = getattr(obj, "fileno", None)
        if fileno is None:
            raise TypeError(f"expected a file descriptor (int or object with fileno()), got {obj!r}")
        fd = fileno()
    if isinstance(fd, bool) or not isinstance(fd, int) or fd < 0:
        raise ValueError(f"invalid file descriptor: {obj!r}")
    return fd


class SocketAncillary:
    """Control messages to send with a packet, or received with one.

    To send: ``add_fds()`` / ``add_creds()``, then pass it as
    ``send_packet(..., ancillary_data=anc)``. To receive: pass an (empty)
    instance as ``recv_packet(ancillary_data=anc)``; the messages that
    arrived are appended, read them with :meth:`messages` or
    :meth:`iter_fds`.

    Not thread-safe; use one instance per call.
    """

    __slots__ = ("_messages",)

    def __init__(self) -> None:
        self._messages: list[SCMRights | SCMCredentials] = []

    def __repr__(self) -> str:
        return f"SocketAncillary({self._messages!r})"

    def __bool__(self) -> bool:
        return bool(self._messages)

    def add_fds(self, fds: Iterable[FileDescriptorLike]) -> None:
        """Add an ``SCM_RIGHTS`` message with *fds* (ints, files, sockets...).

        The descriptors are duplicated into the peer by the kernel when sent;
        yours stay open and stay yours.

        Raises:
            TypeError: an item is neither an int nor has ``fileno()``.
            ValueError: an item is a negative descriptor.
        """
        self._messages.append(SCMRights(tuple(_fileno(fd) for fd in fds)))

    def add_creds(self, credentials: Iterable[UnixCredentials]) -> None:
        """Add an ``SCM_CREDENTIALS`` message. The kernel checks them: an
        unprivileged process may only send its own pid, uid and gid.

        Raises:
            TypeError: an item is not a ``UnixCredentials`` (or 3-tuple).
        """
        creds = tuple(UnixCredentials(*c) for c in credentials)
        self._messages.append(SCMCredentials(creds))

    def messages(self) -> Iterator[SCMRights | SCMCredentials]:
        """Yield the control messages, in order; usable in ``match``::

        match message:
            case SCMRights(fds): ...
            case SCMCredentials(credentials): ...
        """
        return iter(list(self._messages))

    def iter_fds(self) -> Iterator[int]:
        """Yield every descriptor of every ``SCM_RIGHTS`` message, in order."""
        for message in list(self._messages):
            if isinstance(message, SCMRights):
                yield from message.fds

    def clear(self) -> None:
        """Forget all messages (received descriptors are not closed)."""
        self._messages.clear()

    # -- conversions used by the transports -----------------------------------

    def _to_cmsgs(self) -> list[tuple[int, int, bytes]]:
        cmsgs: list[tuple[int, int, bytes]] = []
        for message in self._messages:
            if isinstance(message, SCMRights):
                if message.fds:
                    cmsgs.append(
                        (socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", message.fds).tobytes())
                    )
            else:
                data = b"".join(_UCRED.pack(*c) for c in message.credentials)
                cmsgs.append((socket.SOL_SOCKET, socket.SCM_CREDENTIALS, data))
        return cmsgs

    def _append(self, message: SCMRights | SCMCredentials) -> None:
        self._messages.append(message)


def parse_cmsgs(ancdata: list[tuple[int, int, bytes]]) -> list[SCMRights | SCMCredentials]:
    """Turn ``recvmsg`` ancillary tuples into messages; unknown ones are ignored."""
    messages: list[SCMRights | SCMCredentials] = []
    for level, kind, data in ancdata:
        if level != socket.SOL_SOCKET:
            continue
        if kind == socket.SCM_RIGHTS:
            fds = array.array("i")
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
            messages.append(SCMRights(tuple(fds)))
        elif kind == socket.SCM_CREDENTIALS:
            usable = len(data) - len(data) % _UCRED.size
            creds = tuple(UnixCredentials(*c) for c in _UCRED.iter_unpack(data[:usable]))
            messages.append(SCMCredentials(creds))
    return messages


def close_fds_in(messages: Iterable[SCMRights | SCMCredentials]) -> int:
    """Close every descriptor in *messages*; return how many."""
    count = 0
    for message in messages:
        if isinstance(message, SCMRights):
            for fd in message.fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
                count += 1
    return count
