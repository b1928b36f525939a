"""The part of building request frames that needs the socket layer: the
descriptors of an outgoing frame as ancillary data. Everything else the
clients do between the wire and the caller is sans-IO and lives in
``_core`` (``_core/client/``: calls, routing and timeouts; ``_core/codec.py``:
params, results, items and errors).
"""

from __future__ import annotations

import array
import socket

from .._core import wire
from ..ancillary import SocketAncillary
from ..fds import FdContext

__all__ = ["outgoing", "outgoing_fds"]


def outgoing(body: bytes, fd_context: FdContext | None) -> tuple[wire.RawFrame, SocketAncillary | None]:
    """The frame for *body* and the ancillary data carrying its descriptors."""
    if fd_context is None or not fd_context.outgoing:
        return wire.RawFrame(body), None
    ancillary = SocketAncillary()
    ancillary.add_fds(handle.fileno() for handle in fd_context.outgoing)
    return wire.RawFrame(body, len(fd_context.outgoing)), ancillary


def outgoing_fds(fd_context: FdContext | None) -> tuple[list[tuple[int, int, bytes]] | None, int]:
    """The ``SCM_RIGHTS`` control message carrying the descriptors of
    *fd_context* (for the transports' ``send_data``/``try_send``), and how
    many there are: ``(None, 0)`` when there are none."""
    if fd_context is None or not fd_context.outgoing:
        return None, 0
    fds = array.array("i", (handle.fileno() for handle in fd_context.outgoing))
    return [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds.tobytes())], len(fds)
