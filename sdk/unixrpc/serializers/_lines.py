"""Newline framing shared by the JSON serializers: one compact document per line.

Owns how a line frame is located, how an over-long line is skipped, and the
limit check. Must not import anything that does I/O.
"""

from __future__ import annotations

from typing import TypeVar

from ..exceptions import FrameTooLargeError, OversizedFrameError
from .abc import AbstractFramedPacketSerializer, AbstractPacketSerializer, FrameLocation

__all__ = ["DEFAULT_MAX_FRAME_SIZE", "LineFramedSerializer"]

#: Default frame size limit of every built-in serializer: 16 MiB.
DEFAULT_MAX_FRAME_SIZE = 16 * 1024 * 1024

SentT = TypeVar("SentT", contravariant=True)
ReceivedT = TypeVar("ReceivedT", covariant=True)


class LineFramedSerializer(
    AbstractFramedPacketSerializer[SentT, ReceivedT], AbstractPacketSerializer[SentT, ReceivedT]
):
    """A one-shot serializer whose encoding never contains a raw ``\\n``, framed
    on a stream by a trailing newline (newline-delimited JSON and the like).

    ``max_frame_size`` bounds one line, newline excluded.
    """

    __slots__ = ("max_frame_size",)

    def __init__(self, *, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        if max_frame_size <= 0:
            raise ValueError(f"max_frame_size must be positive, got {max_frame_size}")
        self.max_frame_size = max_frame_size

    def serialize_frame(self, packet: SentT) -> bytes:
        data = self.serialize(packet)
        if len(data) > self.max_frame_size:
            raise FrameTooLargeError(len(data), self.max_frame_size)
        return data + b"\n"

    def locate_frame(
        self, buffer: bytes | bytearray, start: int, end: int, searched: int
    ) -> FrameLocation | None:
        newline = buffer.find(b"\n", searched, end)
        if newline < 0:
            if end - start > self.max_frame_size:
                raise OversizedFrameError(
                    f"line is longer than the frame limit of {self.max_frame_size} bytes",
                    next_frame_at=None,
                )
            return None
        if newline - start > self.max_frame_size:
            raise OversizedFrameError(
                f"line of {newline - start} bytes is over the frame limit of {self.max_frame_size} bytes",
                next_frame_at=newline + 1,
            )
        return start, newline, newline + 1

    def max_frame_extent(self) -> int | None:
        return self.max_frame_size + 1  # a line's end is unknown until seen: only the limit bounds it

    def parse_frame_body(self, body: bytes | bytearray | memoryview) -> ReceivedT:
        return self.deserialize(body)  # type: ignore[arg-type]

    def resync(self, buffer: bytes | bytearray, start: int, end: int) -> int | None:
        newline = buffer.find(b"\n", start, end)
        return None if newline < 0 else newline + 1
