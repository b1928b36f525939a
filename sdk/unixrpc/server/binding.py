"""Binding the server's listening socket safely, and removing it afterwards.

Owns the rules: the socket file is created with a restrictive mode (never
briefly world-connectable), a path where a live server listens is refused,
a stale socket file is replaced, anything that is not a socket is left
alone, and on close the file is removed only if it is still ours.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
import threading

from ..address import UnixAddressLike, UnixSocketAddress

__all__ = ["BoundListener", "bind_listener"]

_umask_lock = threading.Lock()


class BoundListener:
    """A listening socket and what is needed to clean up after it."""

    def __init__(
        self, sock: socket.socket, address: UnixSocketAddress, identity: tuple[int, int] | None
    ) -> None:
        self.socket = sock
        self.address = address
        self._identity = identity

    def close(self) -> None:
        """Close the socket and remove its file if it is still the one we made."""
        self.socket.close()
        path = self.address.as_pathname()
        if path is None or self._identity is None:
            return
        try:
            st = os.lstat(path)
            if (st.st_dev, st.st_ino) == self._identity:
                os.unlink(path)
        except FileNotFoundError:
            pass
        self._identity = None


def _check_path_is_free(path: str) -> None:
    """Remove a stale socket file at *path*; refuse a live one or a non-socket."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise FileExistsError(errno.EEXIST, f"{path} exists and is not a socket; refusing to replace it")
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
        OSError (EADDRINUSE): a live server listens on that path.
        FileExistsError: the path exists and is not a socket.
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
