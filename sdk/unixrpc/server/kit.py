"""What every engine does the same way, written once: noticing that the
peer hung up, refusing a connection (the frame, and how many refused
connections may linger at once), and the limits an engine must honour
while it waits and moves bytes.

Engines (the anyio engine, the threads engine) import this; it imports
neither of them, nor :class:`~unixrpc.Server`. Protocol decisions stay in
the core (:mod:`.._core.server`); this module only touches sockets.
"""

from __future__ import annotations

import logging
import resource
import select
import socket
from typing import Final, Protocol

from .._core import wire
from ..exceptions import ServerBusyError

__all__ = [
    "LINGER_SECONDS",
    "grace_elapsed",
    "MAX_LINGERING",
    "connection_limits",
    "first_byte",
    "peer_hung_up",
    "raise_fd_limit",
    "refusal_frame",
    "send_refusal",
]

#: refused connections kept open at once (each for at most LINGER_SECONDS) so their
#: peers read why instead of a reset; beyond it a refused connection is closed at once
MAX_LINGERING: Final = 64
LINGER_SECONDS: Final = 1.0
#: what counts as "the peer is gone": both directions closed (POLLHUP), or an error
#: pending on the socket (POLLERR: a reset). A mere shutdown of its write side is not.
_GONE: Final = select.POLLHUP | select.POLLERR


class _HasFileno(Protocol):
    def fileno(self) -> int: ...


def peer_hung_up(sock: _HasFileno, wait: float = 0.0) -> bool:
    """True when the peer of *sock* is gone (see ``_GONE``), waiting up to
    *wait* seconds for it; a closed socket counts as gone."""
    try:
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLHUP)
        return any(events & _GONE for _, events in poller.poll(wait * 1000))
    except (OSError, ValueError):
        return True


def refusal_frame(refusal: str) -> bytes:
    """The one frame a refused connection gets: ``ServerBusyError`` with
    ``"id": null`` saying why."""
    error = ServerBusyError(refusal)
    return wire.frame(wire.encode_error(None, error.code, error.message))


def send_refusal(conn: socket.socket, refusal: str) -> bool:
    """Tell the peer of *conn* why it is refused and shut down our side,
    without blocking: True if the connection should now linger (the caller
    keeps it open up to LINGER_SECONDS, reading and dropping what comes),
    False if it was closed here."""
    try:
        conn.setblocking(False)
        conn.send(refusal_frame(refusal))
        conn.shutdown(socket.SHUT_WR)
    except OSError:
        conn.close()
        return False
    return True


logger = logging.getLogger("unixrpc.server")
#: the defaults of Server(max_connections=None, max_connections_per_uid=None) at most
DEFAULT_MAX_CONNECTIONS: Final = 4096
DEFAULT_MAX_CONNECTIONS_PER_UID: Final = 1024
#: the most a soft RLIMIT_NOFILE is raised to (the kernel's nr_open default)
_NOFILE_CEILING: Final = 1 << 20


def raise_fd_limit() -> int:
    """Raise this process's soft ``RLIMIT_NOFILE`` to its hard limit where
    allowed (systemd starts services with a soft limit of 1,024 and a hard
    one of 524,288), and return the soft limit it ends with."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = _NOFILE_CEILING if hard == resource.RLIM_INFINITY else min(hard, _NOFILE_CEILING)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (OSError, ValueError) as exc:
            logger.info("could not raise the soft RLIMIT_NOFILE from %d to %d: %s", soft, target, exc)
    return soft


def connection_limits(
    max_connections: int | None, per_uid: int | None, fds_per_connection: int, fd_limit: int
) -> tuple[int, int]:
    """The connection limits a server enforces: those it was given, or
    defaults derived from the descriptor limit *fd_limit*: connections may
    use three quarters of the fd table (as sd-varlink does; the rest is for
    listeners, handlers and descriptors in flight), each costing
    *fds_per_connection*; one uid gets at most a quarter of them, so one
    local user can never take the table. A *max_connections* given keeps the
    per-uid default of 1,024 (at most all of them)."""
    usable = max(fd_limit * 3 // 4 // fds_per_connection, 1)
    total = max_connections if max_connections is not None else min(DEFAULT_MAX_CONNECTIONS, usable)
    if per_uid is None:  # derived: a quarter; given: all of them may be one user's, up to 1,024
        share = max(total // 4, 1) if max_connections is None else total
        per_uid = min(DEFAULT_MAX_CONNECTIONS_PER_UID, share)
    return total, per_uid


def grace_elapsed(grace: float, running: list[str]) -> None:
    """Log the calls a shutdown cancels because its grace is over (each
    described by the core: method, call id, caller)."""
    if running:
        logger.warning(
            "shutdown grace of %ss elapsed; cancelling %d calls: %s", grace, len(running), "; ".join(running)
        )


#: what :func:`first_byte` says of a connection that ended (or failed) before its first byte
NO_BYTE: Final = -1


def first_byte(sock: socket.socket) -> int | None:
    """The first byte waiting on *sock*, left in place (``MSG_PEEK``), for
    the core to choose the connection's wire by; None if nothing came yet;
    :data:`NO_BYTE` if the connection ended or failed (the read that follows
    finds out how)."""
    try:
        data = sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except (BlockingIOError, InterruptedError):
        return None
    except OSError:
        return NO_BYTE
    return data[0] if data else NO_BYTE
