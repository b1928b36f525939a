"""CallContext: what a handler may know about the call it serves."""

from __future__ import annotations

from dataclasses import dataclass

from ..ancillary import UnixCredentials

__all__ = ["CallContext"]


@dataclass(frozen=True, slots=True)
class CallContext:
    """Information about one call, given to handlers that take a second
    argument and to the server's authorization hook.

    Attributes:
        peer: the calling process's pid, uid and gid (``SO_PEERCRED``, as of
            connect time: checked by the kernel, not claimed by the client).
        method: the method's wire name.
        call_id: the call's id on its connection (None for a notification).
        connection_id: a number identifying the connection within this server.
    """

    peer: UnixCredentials
    method: str
    call_id: int | None
    connection_id: int
