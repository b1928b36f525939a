"""LengthPrefixedSerializer: a 4-byte big-endian length, then the body.

Wraps any one-shot serializer. The limit is checked on the header, so an
oversized frame is refused before a byte of its body is buffered. Must not
import anything that does I/O.
"""

from __future__ import annotations

from typing import Generic, TypeVar

from ..exceptions import FrameTooLargeError, OversizedFrameError
from ._lines import DEFAULT_MAX_FRAME_SIZE
from .abc import AbstractFramedPacketSerializer, AbstractPacketSerializer, FrameLocation

__all__ = ["LengthPrefixedSerializer"]

SentT = TypeVar("SentT")
ReceivedT = TypeVar("ReceivedT")

_HEADER_SIZE = 4
_MAX_LIMIT = 2**32 - 1


class LengthPrefixedSerializer(AbstractFramedPacketSerializer[SentT, ReceivedT], Generic[SentT, ReceivedT]):
    """Frame each packet as ``uint32 big-endian body length`` + body.

    Args:
        serializer: the one-shot serializer that encodes bodies, e.g.
            ``JSONSerializer()`` or ``PydanticSerializer(Model)``.
        max_frame_size: largest body accepted or sent, in bytes (default
            16 MiB, at most ``2**32 - 1``).

    Raises:
        TypeError: *serializer* is not an :class:`AbstractPacketSerializer`.
        ValueError: ``max_frame_size`` is out of range.
    """

    __slots__ = ("_dumps", "_loads", "_serializer", "max_frame_size")

    def __init__(
        self,
        serializer: AbstractPacketSerializer[SentT, ReceivedT],
        *,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
    ) -> None:
        if not isinstance(serializer, AbstractPacketSerializer):
            raise TypeError(f"expected a one-shot AbstractPacketSerializer, got {serializer!r}")
        if not 0 < max_frame_size <= _MAX_LIMIT:
            raise ValueError(f"max_frame_size must be in 1..{_MAX_LIMIT}, got {max_frame_size}")
        self._serializer = serializer
        self.max_frame_size = max_frame_size
        self._dumps = serializer.serialize
        self._loads = serializer.deserialize

    @property
    def serializer(self) -> AbstractPacketSerializer[SentT, ReceivedT]:
        """The wrapped one-shot serializer."""
        return self._serializer

    def serialize_frame(self, packet: SentT) -> bytes:
        """Return the length-prefixed frame for *packet*.

        Raises:
            SerializeError: the wrapped serializer cannot encode *packet*.
            FrameTooLargeError: the body is over ``max_frame_size``.
        """
        body = self._dumps(packet)
        size = len(body)
        if size > self.max_frame_size:
            raise FrameTooLargeError(size, self.max_frame_size)
        return size.to_bytes(4, "big") + body

    def locate_frame(
        self, buffer: bytes | bytearray, start: int, end: int, searched: int
    ) -> FrameLocation | None:
        body_start = start + _HEADER_SIZE
        if end < body_start:
            return None
        size = int.from_bytes(buffer[start:body_start], "big")
        body_end = body_start + size
        if size > self.max_frame_size:
            raise OversizedFrameError(
                f"frame of {size} bytes is over the limit of {self.max_frame_size} bytes",
                next_frame_at=body_end,
            )
        if end < body_end:
            return None
        return body_start, body_end, body_end

    def frame_extent(self, buffer: bytes | bytearray, start: int, end: int) -> int | None:
        if end - start < _HEADER_SIZE:
            return None
        size = int.from_bytes(buffer[start : start + _HEADER_SIZE], "big")
        return None if size > self.max_frame_size else _HEADER_SIZE + size

    def max_frame_extent(self) -> int | None:
        return _HEADER_SIZE + self.max_frame_size

    def parse_frame_body(self, body: bytes | bytearray | memoryview) -> ReceivedT:
        return self._loads(body)  # type: ignore[arg-type]
