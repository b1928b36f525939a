"""What every engine does the same way, written once: noticing that the
peer hung up, refusing a connection (the frame, and how many refused
connections may linger at once), and the limits an engine must honour
while it waits and moves bytes.

Engines (the anyio engine, the threads engine) import this; it imports
neither of them, nor :class:`~unixrpc.Server`. Protocol decisions stay in
the core (:mod:`.._core.server`); this module only touches sockets.
"""

from __future__ import annotations

import select
import socket
from typing import Final, Protocol

from .._core import wire
from ..exceptions import ServerBusyError

__all__ = ["LINGER_SECONDS", "MAX_LINGERING", "peer_hung_up", "refusal_frame", "send_refusal"]

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
