"""Binding the server's listening socket safely, and removing it afterwards.

Owns the rules: the socket file is created with a restrictive mode (never
briefly world-connectable), a path where a live server listens is refused,
a stale socket file is replaced, anything that is not a socket is left
alone, and on close the file is removed only if it is still ours.

A listener we did not bind ourselves (inherited from systemd, or handed over
by the caller: see :mod:`unixrpc.daemon.activation`) is *adopted*: it is
never probed, unlinked or chmod-ed; closing it only closes our descriptor.
The stale-socket probe never connects to a socket this process itself
listens on (for example fd 3 passed by ``systemd-socket-activate``): that
path is refused with a message saying how to serve the inherited socket.

Imports nothing from the rest of ``server/`` nor from ``daemon/``.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import stat
import threading

from ..address import UnixAddressLike, UnixSocketAddress

__all__ = ["BoundListener", "bind_listener"]

_umask_lock = threading.Lock()


class BoundListener:
    """A listening socket and what is needed to clean up after it.

    Attributes:
        socket: the listening socket (non-blocking).
        address: where it listens.
        adopted: True for a socket this process did not bind (inherited from
            systemd or handed over): its file is never unlinked or chmod-ed.
        name: for a socket passed by systemd, its name from ``LISTEN_FDNAMES``
            (``FileDescriptorName=``; ``"unknown"`` when none was given);
            None otherwise.
        wire: the one wire its connections speak (``"varlink"``, ``"unixrpc"``),
            or None: both, chosen per connection by its first byte.
    """

    def __init__(
        self,
        sock: socket.socket,
        address: UnixSocketAddress,
        identity: tuple[int, int] | None,
        *,
        adopted: bool = False,
        name: str | None = None,
        wire: str | None = None,
    ) -> None:
        self.socket = sock
        self.address = address
        self.adopted = adopted
        self.name = name
        self.wire = wire
        self._identity = None if adopted else identity

    def __repr__(self) -> str:
        how = f"adopted, name={self.name!r}" if self.adopted else "bound"
        if self.wire is not None:
            how += f", {self.wire} only"
        return f"<BoundListener {self.address} fd={self.socket.fileno()} {how}>"

    def close(self) -> None:
        """Close the socket and remove its file if it is still the one we made.

        An adopted socket is only closed (our descriptor; systemd keeps its
        own): its file stays. Idempotent; never raises.
        """
        self.socket.close()
        path = self.address.as_pathname()
        if path is None or self._identity is None:
            return
        identity, self._identity = self._identity, None
        try:
            st = os.lstat(path)
            if (st.st_dev, st.st_ino) == identity:
                os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as exc:  # (a daemon that dropped its privileges after binding, say)
            logging.getLogger("unixrpc.server").warning("could not remove the socket file %s: %s", path, exc)


def _check_path_is_free(path: str) -> None:
    """Remove a stale socket file at *path*; refuse a live one or a non-socket."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise FileExistsError(errno.EEXIST, f"{path} exists and is not a socket; refusing to replace it")
    held = _listening_in_this_process(st)
    if held is not None:  # never probe our own (e.g. inherited) listener: it would answer
        raise OSError(
            errno.EADDRINUSE,
            f"a server is already listening on {path}: this process holds its listening socket "
            f"(fd {held}); if systemd passed it (socket activation), serve it with serve() and no "
            "address, serve(listen_name=...) or serve(listener=sock) instead of binding the path again",
        )
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(path)
    except ConnectionRefusedError:
        os.unlink(path)  # stale: nobody listens behind it
        return
    except (BlockingIOError, TimeoutError):
        pass  # a live server whose backlog is full
    except FileNotFoundError:
        return
    finally:
        probe.close()
    raise OSError(errno.EADDRINUSE, f"a server is already listening on {path}")


def _listening_in_this_process(st: os.stat_result) -> int | None:
    """The fd of a listening Unix socket of this process bound to the file *st*
    describes, if there is one (fds inherited from systemd included)."""
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return None
    for name in names:
        fd = int(name)
        try:
            if not os.readlink(f"/proc/self/fd/{name}").startswith("socket:"):
                continue
            copy = os.dup(fd)  # inspect a duplicate: never take ownership of the original
        except OSError:
            continue  # closed meanwhile (or the listdir fd itself)
        try:
            sock = socket.socket(fileno=copy)
        except OSError:
            os.close(copy)
            continue
        try:
            with sock:
                if sock.family != socket.AF_UNIX:
                    continue
                if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                    continue
                bound = sock.getsockname()
                if not isinstance(bound, str) or not bound:
                    continue  # abstract or unnamed: not a file
                other = os.stat(bound)
        except OSError:
            continue
        if (other.st_dev, other.st_ino) == (st.st_dev, st.st_ino):
            return fd
    return None


def _bind_error(exc: OSError, path: str) -> OSError:
    """*exc* (from binding *path*) again, of the same class, with a message
    that names the path and the fix."""
    parent = os.path.dirname(os.path.abspath(path))
    if isinstance(exc, FileNotFoundError) and os.path.isdir(parent):
        detail = f"{parent} does not take a socket file ({exc.strerror})"
    elif isinstance(exc, FileNotFoundError):
        detail = (
            f"the directory {parent} does not exist: create it first (os.makedirs, or "
            "RuntimeDirectory= in the systemd unit)"
        )
    elif isinstance(exc, NotADirectoryError):
        detail = f"a component of {parent} is not a directory"
    else:
        detail = f"this user (uid {os.geteuid()}) may not create files in {parent}"
    return type(exc)(exc.errno, f"cannot serve on {path}: {detail}")


def bind_listener(
    address: UnixAddressLike, *, mode: int = 0o600, group: int | str | None = None, backlog: int = 128
) -> BoundListener:
    """Create, bind and listen on a Unix stream socket at *address*.

    Args:
        address: a filesystem path or an abstract name.
        mode: permission bits of the socket file (who may connect).
        group: a group name or gid to own the socket file (with ``mode`` 0o660
            lets that group connect).
        backlog: the listen backlog.

    Raises:
        OSError (EADDRINUSE): a live server listens on that path (or this
            process itself does, e.g. on a socket systemd passed).
        FileExistsError: the path exists and is not a socket.
        FileNotFoundError: the directory of the path does not exist.
        NotADirectoryError, PermissionError: a component of the path is not
            a directory, or this user may not create the socket there.
        KeyError: *group* is not a known group name.
        ValueError: the address is empty or invalid.
    """
    parsed = UnixSocketAddress.from_raw(address)
    if parsed.is_unnamed():
        raise ValueError("cannot serve on an empty address")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    made: str | None = None  # the socket file we created, to remove if we fail after
    try:
        path = parsed.as_pathname()
        if path is None:  # abstract: no file, no permissions
            sock.bind(parsed.as_raw())
            sock.listen(backlog)
            sock.setblocking(False)
            return BoundListener(sock, parsed, None)
        text = str(path)
        try:
            _check_path_is_free(text)
            # bind() creates the file with 0777 & ~umask: make it 0600 from the first
            # instant (the umask is process-wide; it is only ever narrowed, briefly).
            with _umask_lock:
                previous = os.umask(0o177)
                try:
                    sock.bind(text)
                    made = text
                finally:
                    os.umask(previous)
        except (FileNotFoundError, NotADirectoryError, PermissionError) as exc:
            raise _bind_error(exc, text) from None
        # listen at once: a starting rival must not take the new file for a stale one
        sock.listen(backlog)
        if group is not None:
            import grp

            gid = grp.getgrnam(group).gr_gid if isinstance(group, str) else group
            os.chown(text, -1, gid)
        os.chmod(text, mode)
        st = os.lstat(text)
        sock.setblocking(False)
        return BoundListener(sock, parsed, (st.st_dev, st.st_ino))
    except BaseException:
        sock.close()
        if made is not None:  # do not leave a half-made socket file behind
            with contextlib.suppress(OSError):
                os.unlink(made)
        raise
