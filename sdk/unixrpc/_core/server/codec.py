"""The interface between the protocol-neutral server connection
(:mod:`.connection`) and a wire's codec: what a received body means, and
how replies are encoded. One implementation per wire: :mod:`.unixrpc`
today (replies by id, streams paced by credit); varlink's (replies in the
order of the calls, no credit, no cancel) implements the same.

No I/O.
"""

from __future__ import annotations

from typing import Any, Final, Protocol

__all__ = ["CANCEL", "CREDIT", "INVALID", "REQUEST", "Message", "WireCodec"]

#: ``(REQUEST, call_id | None, method, params, stream_window | None)``: a call, or a
#: notification (no id)
REQUEST: Final = "request"
#: ``(CANCEL, call_id)``: the client gives up on a call
CANCEL: Final = "cancel"
#: ``(CREDIT, call_id, n)``: the client grants a stream *n* more items
CREDIT: Final = "credit"
#: ``(INVALID, call_id | None, message)``: not a message a client may send; answered
#: with a protocol error, and the connection goes on
INVALID: Final = "invalid"

Message = tuple[Any, ...]


class WireCodec(Protocol):
    """What a wire must provide to the server connection."""

    @property
    def name(self) -> str:
        """The wire's name, for the log."""
        ...

    @property
    def ordered(self) -> bool:
        """Replies must go out in the order the calls were received."""
        ...

    @property
    def credit(self) -> bool:
        """Streams are paced by the client's credit (else only by the socket)."""
        ...

    def decode(self, body: bytes) -> Message:
        """The message in a received body; never raises (``INVALID``)."""
        ...

    def result(self, call_id: int, encoded: bytes) -> bytes:
        """The body of a final result (*encoded*: its JSON)."""
        ...

    def item(self, call_id: int, encoded: bytes) -> bytes:
        """The body of a stream item."""
        ...

    def error(self, call_id: int | None, code: str, message: str, data: Any = None) -> bytes:
        """The body of an error (``call_id`` None: about the connection)."""
        ...

    def frame(self, body: bytes, nfds: int = 0) -> bytes:
        """A body as it goes on the socket, declaring *nfds* descriptors."""
        ...
