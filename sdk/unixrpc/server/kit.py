"""What every engine does the same way, written once: noticing that the
peer hung up, refusing a connection (:class:`Refused`: what the peer is
told on each wire, and how many refused connections may linger at once),
the limits an engine must honour while it waits and moves bytes, and when
the shutdown sequence (:class:`Shutdown`, :func:`drain`). A
connection's socket I/O is :mod:`.sockio`'s.

Engines (the anyio engine, the threads engine) import this; it imports
neither of them, nor :class:`~unixrpc.Server`. Protocol decisions stay in
the core (:mod:`.._core.server`); this module only touches sockets.
"""

from __future__ import annotations

import logging
import resource
import select
import socket
from collections.abc import Iterable
from typing import TYPE_CHECKING, Final, Protocol

from .._core import wire
from .._core.server.wires import UNIXRPC, VARLINK, wire_of
from ..exceptions import ServerBusyError

if TYPE_CHECKING:
    from .._core.server import ServerRules
    from .binding import BoundListener

__all__ = [
    "LINGER_SECONDS",
    "Refused",
    "Shutdown",
    "DRAIN_POLL",
    "Draining",
    "check_listeners",
    "drain",
    "grace_elapsed",
    "MAX_LINGERING",
    "connection_limits",
    "first_byte",
    "peer_hung_up",
    "raise_fd_limit",
    "refusal_frame",
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


#: how often a shutdown looks whether its connections are done
DRAIN_POLL: Final = 0.01


class Draining(Protocol):
    """What the shutdown asks of an engine's connection."""

    def busy(self) -> bool:
        """Calls in flight, or replies not yet written."""
        ...

    def describe_calls(self) -> list[str]:
        """The calls in flight, for the log (the core's wording)."""
        ...

    def end_streams(self) -> None:
        """Tell the streams in flight to end (they would never end by themselves)."""
        ...


def drain(began: float, now: float, grace: float, connections: Iterable[Draining]) -> float | None:
    """The shutdown drain, one rule for every engine. Once accepting has
    stopped and the streams were ended, a shutdown waits while any
    connection is busy, at most *grace* seconds from *began* (the engine
    passes the grace as it is *now*: a later, shorter one hurries it).

    Returns how long to wait before asking again, or None when the drain is
    over: nothing is busy, or the grace passed (the calls left are logged).
    The engine then aborts every connection (``cut_off`` in the core)."""
    connections = list(connections)
    if not any(connection.busy() for connection in connections):
        return None
    if now >= began + grace:
        grace_elapsed(grace, [line for connection in connections for line in connection.describe_calls()])
        return None
    return min(DRAIN_POLL, began + grace - now)


class Shutdown:
    """The shutdown sequence, the same on every engine:

    1. :meth:`request` (from any thread or a signal handler, through the
       engine's ``stop``): the first request starts it; a later one with a
       shorter grace hurries it, a longer one changes nothing.
    2. The engine stops accepting and closes its listeners, then calls
       :meth:`begin`: every stream in flight is told to end.
    3. The engine waits :meth:`pause` seconds while it is not None (calls in
       flight and unsent replies, at most the grace; :func:`drain`).
    4. The engine aborts every connection that is left (the core's
       ``cut_off``) and ends its own threads or tasks.

    Args:
        default_grace: the server's ``shutdown_grace``, for a shutdown
            requested without one.
    """

    __slots__ = ("_began", "_default", "grace")

    def __init__(self, default_grace: float) -> None:
        self._default = default_grace
        #: the grace asked for (None: no shutdown requested yet)
        self.grace: float | None = None
        self._began = 0.0

    @property
    def requested(self) -> bool:
        """A shutdown was requested."""
        return self.grace is not None

    def request(self, grace: float | None = None) -> bool:
        """Ask for a shutdown with *grace* seconds for calls in flight
        (None: the server's ``shutdown_grace``). Returns True for the
        request that started it."""
        if grace is None:
            grace = self._default
        first = self.grace is None
        if self.grace is None or grace < self.grace:
            self.grace = grace
        return first

    def begin(self, now: float, connections: Iterable[Draining]) -> None:
        """Accepting has stopped: tell the streams in flight to end, and
        start the grace's clock at *now*."""
        self._began = now
        for connection in connections:
            connection.end_streams()

    def pause(self, now: float, connections: Iterable[Draining]) -> float | None:
        """How long to wait before asking again, or None: abort what is left."""
        grace = self.grace if self.grace is not None else self._default
        return drain(self._began, now, grace, connections)


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


class Refused:
    """A connection refused at accept (server busy, per-uid limit, no
    thread), told why in the words of the wire it speaks:

    * a unixrpc peer gets one frame, ``ServerBusyError`` with ``"id":
      null``, and our side is shut down;
    * a varlink peer gets nothing: the connection is closed, as sd-varlink
      closes one over its limits (``validate_connection`` refuses, the
      accepted descriptor is closed); varlink has no reply that is not the
      answer to a call.

    On a listener that speaks both wires the peer's first byte says which
    (peeked, as :meth:`~.._core.server.ServerConnection.choose_wire` does):
    the refusal waits for it while the connection lingers. A refused
    connection lingers at most :data:`LINGER_SECONDS` (the engine's clock)
    and at most :data:`MAX_LINGERING` of them at once, so a refused peer
    never holds the server: what it sends meanwhile is read and dropped.
    One that sent nothing by then gets the unixrpc frame before the close.
    """

    __slots__ = ("_max_frame_size", "_refusal", "_wire", "sock")

    def __init__(
        self, sock: socket.socket, refusal: str, rules: ServerRules, listener_wire: str | None
    ) -> None:
        self.sock = sock
        self._refusal = refusal
        self._max_frame_size = rules.max_frame_size
        if listener_wire is None and (rules.varlink is None or not rules.varlink_shared):
            listener_wire = UNIXRPC  # its connections can only speak unixrpc
        self._wire = listener_wire  # None: the first byte will say

    def begin(self) -> bool:
        """Act on what is known at accept: True if the connection is to
        linger (the engine then calls :meth:`readable` when it is, and
        :meth:`expire` after LINGER_SECONDS), False if it is closed."""
        try:
            self.sock.setblocking(False)
        except OSError:
            self.close()
            return False
        return True if self._wire is None else self._decided()

    def at_once(self) -> None:
        """Refuse it with no lingering (too many linger already): the
        unixrpc frame if the wire is known to be unixrpc, then the close."""
        if self._wire is None:
            first = first_byte(self.sock)
            if first is not None and first != NO_BYTE:
                self._wire = wire_of(first, self._max_frame_size)
        if self._wire == UNIXRPC:
            self._tell()
        self.close()

    def readable(self) -> bool:
        """The socket is readable: True if the connection is done (closed)."""
        if self._wire is None:
            first = first_byte(self.sock)
            if first is None:
                return False
            if first == NO_BYTE:
                self.close()
                return True
            self._wire = wire_of(first, self._max_frame_size)
            if not self._decided():
                return True
        try:
            if self.sock.recv(65536):
                return False
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            pass
        self.close()
        return True

    def expire(self) -> None:
        """Its time is up: close it (a peer that sent nothing yet gets the
        unixrpc frame first)."""
        if self._wire is None:
            self._wire = UNIXRPC
            self._tell()
        self.close()

    def close(self) -> None:
        self.sock.close()

    def _decided(self) -> bool:
        if self._wire == VARLINK:
            self.close()
            return False
        if not self._tell():
            self.close()
            return False
        return True

    def _tell(self) -> bool:
        try:
            self.sock.send(refusal_frame(self._refusal))
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            return False
        return True


def check_listeners(listeners: Iterable[BoundListener], rules: ServerRules) -> None:
    """Check that a server can serve every one of *listeners*.

    Raises:
        ValueError: one speaks varlink only and the server has no varlink
            face (its method names do not map to varlink names).
    """
    for bound in listeners:
        if bound.wire == VARLINK and rules.varlink is None:
            raise ValueError(
                f"cannot serve varlink on {bound.address}: this server's method names do not map to "
                "varlink names (two map to one name); give them qualified names or a varlink_interface"
            )
