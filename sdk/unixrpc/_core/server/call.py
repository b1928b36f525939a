"""One call in flight (:class:`ServerCall`), what a connection tells its
engine (events: the call itself to start, :class:`Cancel`, :class:`Grant`,
:class:`Close`), what an engine tells the core a handler did (outcomes:
:class:`Returned`, :class:`Raised`), and an outgoing frame with descriptors
(:class:`FdFrame`). Data only: the rules are in :mod:`.connection`.
"""

from __future__ import annotations

from typing import Any

from ...exceptions import RPCError
from ...fds import FdContext
from .rules import Handler

__all__ = [
    "Cancel",
    "Chunk",
    "Close",
    "Event",
    "FdFrame",
    "Grant",
    "ServerCall",
]


class ServerCall:
    """One call in flight, from its request to its retirement.

    ``engine`` and ``context`` are the engine's own slots (what cancels the
    call; the ``CallContext`` its handler sees); the core never looks at them.
    """

    __slots__ = (
        "abandoned",
        "answered",
        "call_id",
        "cancel_error",
        "cancel_requested",
        "context",
        "credit",
        "engine",
        "fd_frames",
        "handler",
        "key",
        "release_pending",
        "released",
        "request",
        "request_fds",
        "started",
        "waiting_credit",
        "window",
    )

    def __init__(
        self,
        handler: Handler,
        request: Any,
        call_id: int | None,
        window: int | None,
        request_fds: FdContext,
    ) -> None:
        self.handler = handler
        self.request = request
        self.call_id = call_id  # None for a notification
        self.key: int | object = call_id if call_id is not None else object()
        self.window = window  # a stream's initial credit window (None: unary, or a notification)
        self.credit = window or 0
        self.request_fds = request_fds
        self.answered = False  # its final reply is queued (it is retired)
        self.abandoned = False  # answered while its handler still runs (a thread)
        self.cancel_requested = False
        self.cancel_error: RPCError | None = None  # why, when not the client's cancel
        self.waiting_credit = False
        self.started = 0.0  # monotonic time it started (kept only for the debug log)
        # items with descriptors not yet written: an item may hand back a request
        # descriptor, so those are released only once the last one is out
        self.fd_frames = 0
        self.release_pending = False
        self.released = False  # its request descriptors were closed (exactly once)
        self.engine: Any = None
        self.context: Any = None  # the CallContext the engine made for it, if any

    @property
    def streaming(self) -> bool:
        return self.handler.spec.streaming

    @property
    def method(self) -> str:
        return self.handler.spec.name

    def __repr__(self) -> str:
        return f"<call {self.call_id} of {self.handler.spec.name}>"


class Cancel:
    """Event: the client cancelled *call*; stop it, then report :meth:`ServerConnection.cancelled`."""

    __slots__ = ("call",)

    def __init__(self, call: ServerCall) -> None:
        self.call = call


class Grant:
    """Event: credit arrived for *call*, a stream that waits for it."""

    __slots__ = ("call",)

    def __init__(self, call: ServerCall) -> None:
        self.call = call


class Close:
    """Event: the connection cannot go on; write what is queued and close it."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def __repr__(self) -> str:
        return f"Close({self.reason!r})"


Event = ServerCall | Cancel | Grant | Close


class FdFrame:
    """An outgoing frame with descriptors: they go on the ``sendmsg`` that
    carries its first byte. Report it written (or not) with
    :meth:`ServerConnection.written`."""

    __slots__ = ("data", "fds", "owner", "release")

    def __init__(
        self, data: bytes, fds: FdContext, release: FdContext | None, owner: ServerCall | None = None
    ) -> None:
        self.data = data
        self.fds = fds  # what the frame carries
        self.release = release  # request descriptors to close once it is written
        self.owner = owner  # the stream whose item it is (its request fds wait for it)

    def fileno_list(self) -> list[int]:
        return [handle.fileno() for handle in self.fds.outgoing]


Chunk = bytes | FdFrame
