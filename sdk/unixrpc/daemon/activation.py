"""Socket activation: serving the listening sockets systemd passed, or any
listening socket the caller hands over.

Owns the ``LISTEN_FDS`` protocol of sd_listen_fds(3): the passed descriptors
start at fd 3 (``SD_LISTEN_FDS_START``) and are consecutive; ``LISTEN_FDS``
says how many; ``LISTEN_PID`` says which process they are for (a child that
merely inherited the variables must not use them); ``LISTEN_FDNAMES`` gives a
colon-separated name per descriptor (``FileDescriptorName=`` in
systemd.socket(5), ``--fdname`` for ``systemd-socket-activate``; ``unknown``
when absent). Like ``sd_listen_fds(unset_environment=1)``, the first read
removes the three variables from ``os.environ`` whatever it finds, so child
processes do not inherit them, and sets ``FD_CLOEXEC`` on every passed fd.
What was read is remembered for this process, so several servers in one
process can each take their sockets (by name); each passed socket is handed
out once.

Every socket served is checked to be ``AF_UNIX`` + ``SOCK_STREAM`` and
listening (``SO_ACCEPTCONN``); a wrong one raises
:class:`~unixrpc.exceptions.SocketActivationError` saying what it is and what
to change. Sockets come back as adopted
:class:`~unixrpc.server.binding.BoundListener` objects: never probed,
unlinked or chmod-ed, closing them closes only our descriptor.

Imports only the stdlib, :mod:`unixrpc.address`, :mod:`unixrpc.exceptions`
and :mod:`unixrpc.server.binding` (a leaf); never the server itself, which
calls this module.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import stat
import threading
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from typing import Final, NamedTuple

from ..address import UnixAddressLike, UnixSocketAddress
from ..exceptions import SocketActivationError
from ..server.binding import BoundListener

__all__ = [
    "SD_LISTEN_FDS_START",
    "ListenFd",
    "adopt_listener",
    "inherited_listener_at",
    "inherited_listeners",
    "listen_fds",
]

#: The first descriptor systemd passes (sd_listen_fds(3)).
SD_LISTEN_FDS_START: Final = 3

_VARIABLES: Final = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")
_HOW_TO_ACTIVATE: Final = (
    "start the daemon from a .socket unit (systemd.socket(5)) or under "
    "`systemd-socket-activate -l PATH`, or give an address to bind"
)


class ListenFd(NamedTuple):
    """A descriptor passed by systemd and its name (``LISTEN_FDNAMES``)."""

    fd: int
    name: str


@dataclass
class _Passed:
    pid: int  # the process that read the variables
    fds: list[ListenFd]
    why_none: str  # why fds is empty, for error messages
    taken: set[int] = field(default_factory=set)


_lock = threading.Lock()
_passed: _Passed | None = None


def _parse(environ: MutableMapping[str, str], pid: int) -> _Passed:
    listen_pid = environ.get("LISTEN_PID")
    listen_fds = environ.get("LISTEN_FDS")
    listen_names = environ.get("LISTEN_FDNAMES")
    if listen_fds is None:
        return _Passed(pid, [], "LISTEN_FDS is not set: no socket was passed")
    if listen_pid is None:
        return _Passed(pid, [], "LISTEN_FDS is set but LISTEN_PID is not")
    try:
        target = int(listen_pid)
    except ValueError:
        raise SocketActivationError(f"LISTEN_PID={listen_pid!r} is not a process id") from None
    if target != pid:
        return _Passed(
            pid,
            [],
            f"LISTEN_PID={target} is not this process ({pid}): the sockets were passed to another process",
        )
    try:
        count = int(listen_fds)
    except ValueError:
        raise SocketActivationError(f"LISTEN_FDS={listen_fds!r} is not a number of descriptors") from None
    if count < 0:
        raise SocketActivationError(f"LISTEN_FDS={count} is negative")
    if count == 0:
        return _Passed(pid, [], "LISTEN_FDS=0: no socket was passed")
    if listen_names is None:
        names = ["unknown"] * count
    else:
        names = listen_names.split(":")
        if len(names) != count:
            raise SocketActivationError(
                f"LISTEN_FDNAMES={listen_names!r} names {len(names)} descriptors but LISTEN_FDS={count}"
            )
    passed: list[ListenFd] = []
    for offset, name in enumerate(names):
        fd = SD_LISTEN_FDS_START + offset
        try:
            flags = fcntl.fcntl(fd, fcntl.F_GETFD)
            fcntl.fcntl(fd, fcntl.F_SETFD, flags | fcntl.FD_CLOEXEC)
        except OSError:
            raise SocketActivationError(
                f"LISTEN_FDS={count} but fd {fd} is not open: the variables do not describe "
                "the descriptors this process has"
            ) from None
        passed.append(ListenFd(fd, name))
    return _Passed(pid, passed, "")


def _read() -> _Passed:
    """What was passed to this process; reads (and unsets) the variables once."""
    global _passed
    pid = os.getpid()
    if _passed is None or _passed.pid != pid:  # a forked child does not own its parent's fds
        try:
            _passed = (
                _parse(os.environ, pid)
                if _passed is None
                else _Passed(pid, [], "this process was forked from the one the sockets were passed to")
            )
        except SocketActivationError as exc:
            _passed = _Passed(pid, [], str(exc))  # raised once; later calls say why nothing is there
            raise
        finally:
            for name in _VARIABLES:
                os.environ.pop(name, None)
    return _passed


def listen_fds() -> list[ListenFd]:
    """The descriptors systemd passed to this process, with their names, like
    ``sd_listen_fds_with_names(3)``.

    The first call reads ``LISTEN_PID``, ``LISTEN_FDS`` and ``LISTEN_FDNAMES``,
    removes them from ``os.environ`` (so child processes do not inherit them)
    and sets ``FD_CLOEXEC`` on the passed fds; later calls in the same process
    return the same list. It is empty when nothing was passed, or when the
    variables are meant for another process (``LISTEN_PID`` is not ours). The
    descriptors are not checked here: they may be any kind of file.

    Raises:
        SocketActivationError: the variables are malformed (not numbers, a
            name count that differs from ``LISTEN_FDS``, or a passed fd that
            is not open).
    """
    with _lock:
        return list(_read().fds)


def _describe_kind(mode: int) -> str:
    for test, kind in (
        (stat.S_ISREG, "a regular file"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return kind
    return "not a socket"


def _check(sock: socket.socket, what: str, *, inherited: bool) -> UnixSocketAddress:
    """Check *sock* is a listening AF_UNIX stream socket; return its address."""
    family = sock.getsockopt(socket.SOL_SOCKET, socket.SO_DOMAIN)
    if family != socket.AF_UNIX:
        name = _enum_name(socket.AddressFamily, family)
        hint = (
            "use ListenStream= with a path or @name in the .socket unit"
            if inherited
            else "create it with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)"
        )
        raise SocketActivationError(
            f"{what} is an {name} socket, not AF_UNIX: unixrpc serves Unix sockets; {hint}"
        )
    kind = sock.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE)
    if kind != socket.SOCK_STREAM:
        name = _enum_name(socket.SocketKind, kind)
        hint = (
            "use ListenStream=, not ListenDatagram= or ListenSequentialPacket=, in the .socket unit"
            if inherited
            else "create it with socket.SOCK_STREAM"
        )
        raise SocketActivationError(f"{what} is a {name} socket, not SOCK_STREAM; {hint}")
    if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        hint = (
            "with Accept=yes systemd passes one connection per instance; unixrpc needs Accept=no "
            "(the default) in the .socket unit"
            if inherited
            else "call bind() and listen() before handing it over"
        )
        raise SocketActivationError(f"{what} is not a listening socket; {hint}")
    return UnixSocketAddress.from_raw(sock.getsockname())


def _enum_name(enum: type[socket.AddressFamily] | type[socket.SocketKind], value: int) -> str:
    try:
        return enum(value).name
    except ValueError:
        return str(value)


def _socket_for(passed: ListenFd) -> socket.socket:
    """A socket object owning the passed fd; raises if the fd is not a socket."""
    what = f"fd {passed.fd} (name {passed.name!r})"
    try:
        mode = os.fstat(passed.fd).st_mode
    except OSError as exc:
        raise SocketActivationError(f"{what} cannot be examined: {exc.strerror}") from None
    if not stat.S_ISSOCK(mode):
        raise SocketActivationError(
            f"{what} passed by systemd is {_describe_kind(mode)}, not a socket; "
            "select the sockets to serve with listen_name="
        )
    return socket.socket(fileno=passed.fd)


def _inspect(passed: ListenFd) -> tuple[socket.socket, UnixSocketAddress]:
    """A socket object on the passed fd and its address, once checked; on
    failure the fd is left as it was (not ours to close)."""
    sock = _socket_for(passed)
    try:
        address = _check(sock, f"fd {passed.fd} (name {passed.name!r}) passed by systemd", inherited=True)
    except BaseException:
        sock.detach()
        raise
    return sock, address


def _take(passed: ListenFd, sock: socket.socket, address: UnixSocketAddress) -> BoundListener:
    sock.setblocking(False)
    return BoundListener(sock, address, None, adopted=True, name=passed.name)


def inherited_listeners(listen_name: str | None = None) -> list[BoundListener]:
    """Take the listening sockets systemd passed, for a server to serve.

    With no *listen_name*, every passed socket not yet taken; with one, those
    named so in ``LISTEN_FDNAMES`` (a .socket unit with several
    ``ListenStream=`` lines passes several sockets of the same name). All are
    checked before any is taken. Each socket is handed out once per process;
    closing a returned listener closes only this process's descriptor.

    Raises:
        SocketActivationError: nothing was passed to this process (the message
            says why: variables unset or for another pid), no passed socket has
            that name, the sockets were already taken, a passed descriptor is
            not a listening ``AF_UNIX`` ``SOCK_STREAM`` socket, or the
            variables are malformed.
    """
    with _lock:
        state = _read()
        if not state.fds:
            raise SocketActivationError(f"no socket to serve: {state.why_none}; {_HOW_TO_ACTIVATE}")
        chosen = [p for p in state.fds if listen_name is None or p.name == listen_name]
        if not chosen:
            names = ", ".join(sorted({p.name for p in state.fds}))
            raise SocketActivationError(
                f"no socket named {listen_name!r} was passed (LISTEN_FDNAMES has: {names}); set "
                f"FileDescriptorName={listen_name} in the .socket unit "
                "(--fdname with systemd-socket-activate)"
            )
        free = [p for p in chosen if p.fd not in state.taken]
        if not free:
            which = ", ".join(str(p.fd) for p in chosen)
            raise SocketActivationError(f"the passed sockets (fd {which}) are already served in this process")
        inspected: list[tuple[ListenFd, socket.socket, UnixSocketAddress]] = []
        try:
            for passed in free:
                inspected.append((passed, *_inspect(passed)))
        except BaseException:
            for _, sock, _ in inspected:  # nothing is taken unless all are good
                sock.detach()
            raise
        state.taken.update(p.fd for p in free)
        return [_take(passed, sock, address) for passed, sock, address in inspected]


def inherited_listener_at(address: UnixAddressLike) -> BoundListener | None:
    """Take the socket systemd passed that listens on *address*, if any.

    For a server asked to bind an address while socket-activated (for example
    ``serve_forever("/run/kv.sock")`` under ``systemd-socket-activate -l
    /run/kv.sock``): serving the passed socket instead of binding the path
    again. Passed descriptors of other kinds are ignored; a path matches by
    file identity, an abstract name by value.

    Returns:
        The adopted listener (taken: it is not handed out again), or None when
        no passed, not yet taken socket listens there.

    Raises:
        SocketActivationError: the activation variables are malformed.
        ValueError: *address* is not a valid Unix socket address.
    """
    wanted = UnixSocketAddress.from_raw(address)
    path = wanted.as_pathname()
    identity: tuple[int, int] | None = None
    if path is not None:
        try:
            st = os.stat(path)
        except OSError:
            return None
        identity = (st.st_dev, st.st_ino)
    with _lock:
        state = _read()
        for passed in state.fds:
            if passed.fd in state.taken:
                continue
            try:
                sock, bound = _inspect(passed)
            except SocketActivationError:
                continue
            if _same_address(bound, wanted, identity):
                state.taken.add(passed.fd)
                return _take(passed, sock, bound)
            sock.detach()
    return None


def _same_address(
    bound: UnixSocketAddress, wanted: UnixSocketAddress, identity: tuple[int, int] | None
) -> bool:
    if identity is None:
        return bound == wanted
    path = bound.as_pathname()
    if path is None:
        return False
    try:
        st = os.stat(path)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == identity


def adopt_listener(sock: socket.socket) -> BoundListener:
    """Serve a listening socket the caller bound (``serve(listener=sock)``).

    The server takes it over: it is made non-blocking and non-inheritable,
    and closed (never unlinked, probed or chmod-ed) when the server stops.
    Hand over ``sock.dup()`` to keep using the original.

    Raises:
        SocketActivationError: *sock* is not an ``AF_UNIX`` ``SOCK_STREAM``
            socket, or is not listening (``listen()`` was not called).
        OSError (EBADF): *sock* is closed.
    """
    if sock.fileno() < 0:
        raise OSError(errno.EBADF, "the socket handed over is closed")
    address = _check(sock, "the socket handed over", inherited=False)
    sock.set_inheritable(False)
    sock.setblocking(False)
    return BoundListener(sock, address, None, adopted=True)


def _forget() -> None:
    """Forget what was read (tests only: a new process would start afresh)."""
    global _passed
    with _lock:
        _passed = None
