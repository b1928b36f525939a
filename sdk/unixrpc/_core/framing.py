"""FrameSerializer: the RPC frame (``u32 length | u16 fd count`` + JSON body)
as a raw-layer serializer, so the RPC clients and the server engines run on
the raw Unix stream clients.

Rules this module owns: a frame over ``max_frame_size`` or declaring more
than ``max_fds`` descriptors is refused from its header, before its body is
buffered; a frame's size is read from its header, so that the receive
buffer is sized to the frame (never more than ``HEADER_SIZE +
max_frame_size`` for one frame); the control buffer of one read holds exactly one frame's worth of
descriptors (the kernel hands over those of at most one ``sendmsg`` per
``recvmsg``).

No I/O, and no socket, anyio, trio, asyncio or threading imports.
"""

from __future__ import annotations

import struct
from typing import Final

from ..exceptions import FrameTooLargeError, LocalProtocolError, OversizedFrameError
from ..serializers.abc import AbstractFramedPacketSerializer, FrameLocation
from .wire import (
    DEFAULT_MAX_FDS_PER_FRAME,
    DEFAULT_MAX_FRAME_SIZE,
    HEADER,
    HEADER_SIZE,
    KERNEL_MAX_FDS,
    RawFrame,
)

__all__ = ["FrameSerializer", "cmsg_space"]

_WORD: Final = struct.calcsize("P")  # cmsg alignment: sizeof(size_t)
_CMSGHDR: Final = struct.calcsize("Pii")  # struct cmsghdr {size_t len; int level; int type}


def _align(size: int) -> int:
    return (size + _WORD - 1) & ~(_WORD - 1)


def cmsg_space(data_size: int) -> int:
    """``CMSG_SPACE(data_size)`` (Linux): the control-buffer bytes one control
    message of *data_size* bytes takes, header and padding included."""
    return _align(_CMSGHDR) + _align(data_size)


class FrameSerializer(AbstractFramedPacketSerializer[RawFrame, RawFrame]):
    """Frames :class:`RawFrame` packets for the unixrpc wire protocol.

    Args:
        max_frame_size: the largest body sent or accepted, in bytes.
        max_fds: the most descriptors one frame may declare (at most 253, the
            kernel's limit for one ``sendmsg``).

    Raises:
        ValueError: a limit is out of range.
    """

    __slots__ = ("ancillary_bufsize", "max_fds", "max_frame_size")

    copies_frame_body = True  # parse_frame_body copies the body out

    def __init__(
        self, *, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE, max_fds: int = DEFAULT_MAX_FDS_PER_FRAME
    ) -> None:
        if not 0 < max_frame_size < 2**32:
            raise ValueError(f"max_frame_size must be in 1..{2**32 - 1}, got {max_frame_size}")
        if not 0 <= max_fds <= KERNEL_MAX_FDS:
            raise ValueError(f"max_fds must be in 0..{KERNEL_MAX_FDS}, got {max_fds}")
        self.max_frame_size = max_frame_size
        self.max_fds = max_fds
        #: control buffer for one read: the kernel hands over the descriptors
        #: of at most one sendmsg per recvmsg
        self.ancillary_bufsize = cmsg_space(4 * max(max_fds, 1))

    def serialize_frame(self, packet: RawFrame) -> bytes:
        """The bytes of *packet* on the wire.

        Raises:
            FrameTooLargeError: the body is over ``max_frame_size``.
            LocalProtocolError: more descriptors than ``max_fds``.
        """
        return self.frame_bytes(*packet)

    def frame_bytes(self, body: bytes, nfds: int = 0) -> bytes:
        """Header + *body*: what :meth:`serialize_frame` gives for
        ``RawFrame(body, nfds)``, without building the tuple (hot paths).

        Raises:
            FrameTooLargeError, LocalProtocolError: as serialize_frame.
        """
        if len(body) > self.max_frame_size:
            raise FrameTooLargeError(len(body), self.max_frame_size)
        if nfds > self.max_fds:
            raise LocalProtocolError(f"a frame may carry at most {self.max_fds} file descriptors, got {nfds}")
        return HEADER.pack(len(body), nfds) + body

    def locate_frame(
        self, buffer: bytes | bytearray, start: int, end: int, searched: int
    ) -> FrameLocation | None:
        body_start = start + HEADER_SIZE
        if end < body_start:
            return None
        size, nfds = HEADER.unpack_from(buffer, start)
        body_end = body_start + size
        if size > self.max_frame_size:
            raise OversizedFrameError(
                f"frame of {size} bytes is over the limit of {self.max_frame_size} bytes",
                next_frame_at=body_end,
            )
        if nfds > self.max_fds:
            raise OversizedFrameError(
                f"frame declares {nfds} file descriptors, over the limit of {self.max_fds}",
                next_frame_at=body_end,
            )
        if end < body_end:
            return None
        return start, body_end, body_end  # the header too: parse_frame_body needs the fd count

    def frame_extent(self, buffer: bytes | bytearray, start: int, end: int) -> int | None:
        """The frame's size from its header (what the receiver sizes its
        buffer to); None before the header is in, or for a frame refused."""
        if end - start < HEADER_SIZE:
            return None
        size: int
        nfds: int
        size, nfds = HEADER.unpack_from(buffer, start)
        if size > self.max_frame_size or nfds > self.max_fds:
            return None
        return HEADER_SIZE + size

    def max_frame_extent(self) -> int:
        """The largest frame accepted, header included."""
        return HEADER_SIZE + self.max_frame_size

    def split_frames(self, buffer: bytes | bytearray, start: int, end: int) -> tuple[list[RawFrame], int]:
        frames: list[RawFrame] = []
        unpack, max_size, max_fds = HEADER.unpack_from, self.max_frame_size, self.max_fds
        while end - start >= HEADER_SIZE:
            size, nfds = unpack(buffer, start)
            body_start = start + HEADER_SIZE
            body_end = body_start + size
            if body_end > end or size > max_size or nfds > max_fds:
                break  # incomplete, or refused by locate_frame
            frames.append(RawFrame(bytes(buffer[body_start:body_end]), nfds))
            start = body_end
        return frames, start

    def parse_frame_body(self, body: bytes | bytearray | memoryview) -> RawFrame:
        return RawFrame(bytes(memoryview(body)[HEADER_SIZE:]), HEADER.unpack_from(body)[1])
