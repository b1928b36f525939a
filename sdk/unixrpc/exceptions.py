"""The whole public error hierarchy of unixrpc.

This module owns every exception class a user may catch. It imports nothing
of ours, so any layer may import it.

Naming follows anyio's split between "you closed it" and "it broke under
you", and h11's split between "you misused the API" and "the peer
misbehaved":

* :class:`ClientClosedError` -- you closed the client (or its write side).
* :class:`ConnectionBrokenError` -- the peer went away, or the connection
  reached a state it cannot recover from.
* :class:`StreamProtocolParseError` -- the peer sent bytes that are not a
  valid packet; the stream is still usable and the next packet can be read.
* :class:`SerializeError` / :class:`FrameTooLargeError` -- you asked to send
  something that cannot be sent; nothing was written.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AncillaryDataTruncatedError",
    "ClientClosedError",
    "ConnectionBrokenError",
    "DeserializeError",
    "FrameTooLargeError",
    "IncrementalDeserializeError",
    "OversizedFrameError",
    "SerializeError",
    "StreamProtocolParseError",
]


class ClientClosedError(ConnectionError):
    """The client was closed by this process (``close()``/``aclose()``), or its
    write side was shut down with ``send_eof()`` and a send was attempted."""


class ConnectionBrokenError(ConnectionError):
    """The connection broke under you: the peer closed it, reset it, or it is in
    a state the client cannot recover from (for example a send that was
    interrupted in the middle of a frame). Every later operation on the same
    client raises this error too; close the client and reconnect."""


class AncillaryDataTruncatedError(ConnectionBrokenError):
    """The kernel truncated the control data of a ``recvmsg`` (``MSG_CTRUNC``).

    Some file descriptors the peer sent were lost. The ones that did arrive
    have been closed, and the connection is marked broken, since no one can
    tell which packet the lost descriptors belonged to. Raise
    ``ancillary_bufsize`` (``socket.CMSG_SPACE(4 * max_fds)``) to avoid it.

    Attributes:
        bufsize: the ancillary buffer size that was too small.
        closed_fds: how many descriptors arrived and were closed.
    """

    def __init__(self, message: str, *, bufsize: int, closed_fds: int) -> None:
        super().__init__(message)
        self.bufsize = bufsize
        self.closed_fds = closed_fds


class SerializeError(TypeError):
    """A packet could not be turned into bytes (an object the serializer does not
    know how to encode). Nothing was sent."""


class FrameTooLargeError(ValueError):
    """A packet to send encodes to more bytes than the serializer's size limit.
    Nothing was sent.

    Attributes:
        size: the encoded size in bytes.
        limit: the limit in bytes.
    """

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"packet encodes to {size} bytes, over the frame limit of {limit} bytes")
        self.size = size
        self.limit = limit


class DeserializeError(Exception):
    """Raised by a serializer when bytes are not a valid packet.

    Attributes:
        error_info: machine-readable details, when the serializer has them
            (for :class:`~unixrpc.PydanticSerializer`, pydantic's ``errors()`` list).
    """

    def __init__(self, message: str, *, error_info: Any = None) -> None:
        super().__init__(message)
        self.error_info = error_info


class OversizedFrameError(DeserializeError):
    """Raised by :meth:`AbstractFramedPacketSerializer.locate_frame` when the frame
    starting at ``start`` is over the size limit. The receiver reports it as a
    :class:`StreamProtocolParseError` and discards the frame as its bytes
    arrive, without buffering them.

    Attributes:
        next_frame_at: index in the buffer where the next frame begins (it may lie
            beyond the bytes received so far), or ``None`` when the serializer only
            finds it by scanning (see ``resync``).
    """

    def __init__(self, message: str, *, next_frame_at: int | None) -> None:
        super().__init__(message)
        self.next_frame_at = next_frame_at


class IncrementalDeserializeError(DeserializeError):
    """Raised by an incremental deserializer generator when a frame is invalid.

    Attributes:
        remaining_data: the bytes that followed the bad frame; they are kept
            for the next packet.
    """

    def __init__(self, message: str, remaining_data: bytes, *, error_info: Any = None) -> None:
        super().__init__(message, error_info=error_info)
        self.remaining_data = remaining_data


class StreamProtocolParseError(Exception):
    """The peer sent a frame that is not a valid packet.

    The bad frame has been consumed; the stream stays in sync, so the next
    call receives the next packet.

    Attributes:
        error: the serializer's :class:`DeserializeError`.
        error_info: shortcut for ``error.error_info`` (pydantic's error list for
            :class:`~unixrpc.PydanticSerializer`).
    """

    def __init__(self, error: DeserializeError) -> None:
        super().__init__(f"invalid packet: {error}")
        self.error = error
        self.error_info = error.error_info
