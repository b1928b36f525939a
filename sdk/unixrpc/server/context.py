"""CallContext: what a handler may know about the call it serves."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from ..ancillary import UnixCredentials
from ..peer import Peer

__all__ = ["CallContext", "context_of"]


@dataclass(frozen=True, slots=True)
class CallContext:
    """Information about one call, given to handlers that take a second
    argument and to the server's authorization hook.

    Attributes:
        peer: the calling process as the kernel saw it at connect time
            (checked by the kernel, not claimed by the client): a
            :class:`~unixrpc.Peer`, the ``pid``, ``uid`` and ``gid`` of
            ``SO_PEERCRED`` plus the supplementary ``groups``, the
            ``security_label`` and a ``pidfd`` where the kernel gives them.
        method: the method's wire name.
        call_id: the call's id on its connection (None for a notification).
        connection_id: a number identifying the connection within this server.

    A plain ``def`` handler cannot be interrupted: it learns that its call
    was cancelled (the client gave up or cancelled, its peer left, or the
    server is shutting down and the grace period is over) from
    :attr:`cancelled` or :meth:`wait_cancelled`. Its reply has then already
    been sent as ``Cancelled``; what it returns is discarded. An ``async
    def`` handler is cancelled the usual way (its await raises the
    backend's cancellation exception), and sees the flag set too.
    """

    peer: Peer
    method: str
    call_id: int | None
    connection_id: int
    _rules: Any = field(default=None, repr=False, compare=False)
    _cancel: threading.Event = field(default_factory=threading.Event, repr=False, compare=False)

    @property
    def shutting_down(self) -> bool:
        """True once the server began shutting down: a long call should wrap
        up (it has ``shutdown_grace`` seconds; a stream is ended at once)."""
        return self._rules is not None and bool(self._rules.stopping)

    @property
    def cancelled(self) -> bool:
        """True once the call was cancelled: stop working, the result is unused."""
        return self._cancel.is_set()

    def wait_cancelled(self, timeout: float | None = None) -> bool:
        """Block the calling thread until the call is cancelled or *timeout*
        seconds pass (None: for ever); True if it was cancelled. For plain
        ``def`` handlers that wait (never call it in an event loop)."""
        return self._cancel.wait(timeout)

    def _set_cancelled(self) -> None:
        self._cancel.set()


def context_of(call: Any, peer: UnixCredentials, connection_id: int, rules: Any) -> CallContext:
    """The context of *call* (a core ``ServerCall``), made on first use and
    kept on the call (the engines' one way to make it)."""
    context: CallContext | None = call.context
    if context is None:
        if not isinstance(peer, Peer):
            peer = Peer(*peer)
        context = CallContext(peer, call.handler.spec.name, call.call_id, connection_id, _rules=rules)
        call.context = context
    return context
