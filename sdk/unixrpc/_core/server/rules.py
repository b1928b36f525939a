"""What every connection of one server obeys, held once: the methods served
and every limit (:class:`ServerRules`), the server-wide memory budget
(:class:`MemoryBudget`) and who may connect (:class:`Admission`).

Built once by :class:`~unixrpc.Server` from its arguments; engines read
nothing else. No I/O, no threading import (a lock is handed in).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, Final

from ...methods import MethodSpec
from .. import wire
from ..access import AccessTable

__all__ = [
    "DEFAULT_MAX_STREAM_WINDOW",
    "DEFAULT_MAX_UNSENT",
    "UNKNOWN_PEER",
    "Admission",
    "Handler",
    "MemoryBudget",
    "ServerRules",
]

logger = logging.getLogger("unixrpc.server")

#: the largest window a stream may be opened with; credit beyond it is not honoured
DEFAULT_MAX_STREAM_WINDOW: Final = 1024
#: unsent bytes over which a connection stops being read (its peer does not read)
DEFAULT_MAX_UNSENT: Final = 1024 * 1024


class MemoryBudget:
    """The bytes all connections of a server may hold beyond their read
    buffers: large frames being received and output not yet written. A
    connection that grows while the total is over the limit is closed (the
    engines charge after every read), so the worst case is the limit plus
    one frame, not connections x frames. The connections charge it
    themselves (:class:`ServerConnection`), after every read and whenever
    their unsent output changes; an engine whose connections run on several
    threads gives it a lock (any context manager: the core imports no
    threading)."""

    __slots__ = ("_lock", "limit", "total")

    def __init__(self, limit: int, lock: AbstractContextManager[Any] | None = None) -> None:
        self.limit = limit
        self.total = 0
        self._lock = lock if lock is not None else nullcontext()

    def charge(self, before: int, now: int) -> bool:
        """A connection held *before* bytes and holds *now*: False if it grew
        and the server is now over its budget (close that connection)."""
        with self._lock:
            self.total += now - before
            return now <= before or self.total <= self.limit


class Admission:
    """Who may connect: at most *max_connections* at once, and at most
    *per_uid* of them from one user (so one local user cannot lock the
    others out). Not thread-safe: the engines call it from their accepting
    loop."""

    def __init__(self, max_connections: int, per_uid: int) -> None:
        self.max_connections = max_connections
        self.per_uid = per_uid
        self.connections = 0
        self._by_uid: dict[int, int] = {}

    def admit(self, uid: int, pid: int) -> str | None:
        """Count a new connection from *uid* in: None, or why it is refused."""
        if self.connections >= self.max_connections:
            refusal = f"too many connections (limit {self.max_connections})"
        elif self._by_uid.get(uid, 0) >= self.per_uid:
            refusal = f"too many connections from uid {uid} (limit {self.per_uid} per uid)"
        else:
            self.connections += 1
            self._by_uid[uid] = self._by_uid.get(uid, 0) + 1
            return None
        logger.info("refused a connection from pid %d uid %d: %s", pid, uid, refusal)
        return refusal

    def release(self, uid: int) -> None:
        """A connection admitted for *uid* has ended."""
        self.connections -= 1
        left = self._by_uid[uid] - 1
        if left:
            self._by_uid[uid] = left
        else:
            del self._by_uid[uid]


@dataclass(frozen=True, slots=True)
class Handler:
    """A served method: its spec and the function that serves it."""

    spec: MethodSpec
    function: Callable[..., Any]
    wants_context: bool
    is_async: bool


class ServerRules:
    """What every connection of one server obeys: the methods served, the
    limits, and whether the server is shutting down (set by the server)."""

    __slots__ = (
        "access",
        "connection_idle_timeout",
        "expose_tracebacks",
        "fd_budget",
        "frame_timeout",
        "handlers",
        "max_calls_per_connection",
        "max_fds",
        "max_frame_size",
        "max_stream_window",
        "max_unsent",
        "memory",
        "stopping",
        "varlink",
        "varlink_handlers",
        "varlink_shared",
        "write_timeout",
    )

    def __init__(
        self,
        handlers: dict[str, Handler],
        *,
        max_calls_per_connection: int = 256,
        max_frame_size: int = wire.DEFAULT_MAX_FRAME_SIZE,
        max_fds: int = wire.DEFAULT_MAX_FDS_PER_FRAME,
        max_unsent: int = DEFAULT_MAX_UNSENT,
        expose_tracebacks: bool = False,
        max_buffered_bytes: int = 256 * 1024 * 1024,
        max_stream_window: int = DEFAULT_MAX_STREAM_WINDOW,
        frame_timeout: float | None = None,
        connection_idle_timeout: float | None = None,
        write_timeout: float | None = None,
        memory_lock: AbstractContextManager[Any] | None = None,
    ) -> None:
        self.handlers = handlers
        #: the largest stream window (and outstanding credit) a client may ask for
        self.max_stream_window = max_stream_window
        self.max_calls_per_connection = max_calls_per_connection
        self.max_frame_size = max_frame_size
        self.max_fds = max_fds
        self.max_unsent = max_unsent
        self.expose_tracebacks = expose_tracebacks
        #: seconds a frame begun may take to arrive whole (None: no limit)
        self.frame_timeout = frame_timeout
        #: seconds a connection with nothing in flight may stay silent (None: no limit)
        self.connection_idle_timeout = connection_idle_timeout
        #: seconds one write of replies the socket could not take at once may
        #: wait for the peer to read it (None: no limit)
        self.write_timeout = write_timeout
        self.stopping = False
        #: what all connections hold beyond their read buffers
        self.memory = MemoryBudget(max_buffered_bytes, memory_lock)
        #: descriptors all connections hold that arrived ahead of their frames
        #: (the engine sets the limit from the descriptor table when serving starts)
        self.fd_budget = MemoryBudget(1 << 30, memory_lock)
        #: the access policy (set by the server when it starts serving); None: none
        self.access: AccessTable | None = None
        #: the varlink face (``VarlinkNames``; set by the server when it starts serving):
        #: None, connections speak unixrpc only
        self.varlink: Any = None
        #: the handlers a varlink connection serves: ``handlers`` plus ``org.varlink.service``'s
        self.varlink_handlers: dict[str, Handler] = handlers
        #: listeners that speak both wires answer varlink (the first byte says which);
        #: False: only listeners that speak varlink alone do
        self.varlink_shared = True


class _UnknownPeer:
    """The peer of a connection made without one: no rule but everyone allows it."""

    pid, uid, gid, groups = 0, -1, -1, None


UNKNOWN_PEER: Final = _UnknownPeer()
