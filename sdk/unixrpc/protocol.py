"""StreamProtocol and its sans-IO receiver: bytes in, packets out.

Owns: turning a packet into the exact bytes of one frame (all or nothing),
and splitting a received byte stream into packets, keeping extraneous bytes
for the next packet, skipping invalid and oversized frames so that the
stream stays in sync. Must never import socket, anyio, trio, asyncio or
threading: a transport moves bytes, this module decides what they mean.
"""

from __future__ import annotations

import enum
from collections.abc import Generator
from typing import Any, Final, Generic, TypeVar, cast

from .exceptions import (
    DeserializeError,
    IncrementalDeserializeError,
    OversizedFrameError,
    StreamProtocolParseError,
)
from .serializers.abc import (
    AbstractFramedPacketSerializer,
    AbstractIncrementalPacketSerializer,
    AbstractPacketSerializer,
)

__all__ = ["DEFAULT_MAX_RECV_SIZE", "NEED_DATA", "NeedData", "PacketReceiver", "StreamProtocol"]

SentT = TypeVar("SentT")
ReceivedT = TypeVar("ReceivedT")

#: Default size of one socket read, and of the receive buffer's free space.
DEFAULT_MAX_RECV_SIZE: Final = 64 * 1024

#: A receiver that keeps large buffers (``keep_large=True``) gives its grown
#: buffer back after this many frames in a row under half its size ...
KEEP_SMALL_RUN: Final = 16
#: ... or once the connection was idle this many seconds with nothing
#: buffered (the transport waits that long, then calls ``release_kept()``).
KEEP_IDLE_SECONDS: Final = 1.0
#: a receiver that does not keep large buffers (a server's: its peers are not trusted)
#: grows a frame's buffer to at most this many times the bytes of it received so far
#: (up to the size its header declares)
GROWTH: Final = 4


class NeedData(enum.Enum):
    """Type of :data:`NEED_DATA`."""

    NEED_DATA = "NEED_DATA"


#: Returned by :meth:`PacketReceiver.next_packet` when no whole packet is buffered.
NEED_DATA: Final = NeedData.NEED_DATA


class StreamProtocol(Generic[SentT, ReceivedT]):
    """Turns packets into frames and a byte stream into packets, with an
    incremental serializer.

    A ``StreamProtocol`` has no per-connection state: share one between
    clients freely. Each connection gets its own :class:`PacketReceiver`.

    Args:
        serializer: an incremental serializer (``JSONSerializer()``,
            ``LengthPrefixedSerializer(...)``, ``PydanticSerializer(...)`` or
            your own :class:`AbstractIncrementalPacketSerializer`).

    Raises:
        TypeError: *serializer* cannot frame packets on a stream (a one-shot
            serializer must be wrapped, e.g. in ``LengthPrefixedSerializer``).
    """

    __slots__ = ("_frame_packet", "_serializer")

    def __init__(self, serializer: AbstractIncrementalPacketSerializer[SentT, ReceivedT]) -> None:
        if not isinstance(serializer, AbstractIncrementalPacketSerializer):
            if isinstance(serializer, AbstractPacketSerializer):
                raise TypeError(
                    f"{type(serializer).__name__} is a one-shot serializer and cannot frame packets; "
                    "wrap it: StreamProtocol(LengthPrefixedSerializer(serializer))"
                )
            raise TypeError(f"expected an incremental serializer, got {serializer!r}")
        self._serializer = serializer
        self._frame_packet = (
            serializer.serialize_frame if isinstance(serializer, AbstractFramedPacketSerializer) else None
        )

    @property
    def serializer(self) -> AbstractIncrementalPacketSerializer[SentT, ReceivedT]:
        """The serializer given at construction."""
        return self._serializer

    def serialize(self, packet: SentT) -> bytes:
        """Return the complete frame for *packet*.

        The frame is built whole before anything is sent, so a failure never
        leaves half a frame on the wire.

        Raises:
            SerializeError: the serializer cannot encode *packet*.
            FrameTooLargeError: the frame is over the serializer's limit.
        """
        if self._frame_packet is not None:
            return self._frame_packet(packet)
        return b"".join(self._serializer.incremental_serialize(packet))

    def receiver(
        self, max_recv_size: int = DEFAULT_MAX_RECV_SIZE, *, keep_large: bool = False
    ) -> PacketReceiver[ReceivedT]:
        """Return a new receiver for one connection.

        Raises:
            ValueError: *max_recv_size* is not positive.
        """
        return PacketReceiver(self._serializer, max_recv_size, keep_large=keep_large)


class PacketReceiver(Generic[ReceivedT]):
    """The receive side of one connection, without I/O.

    A transport asks :meth:`get_buffer` for space, reads into it (at most
    ``max_recv_size`` bytes), reports the count with :meth:`buffer_updated`,
    and calls :meth:`next_packet` until it returns :data:`NEED_DATA`.
    :meth:`feed` is the same for bytes already in hand.

    Memory: the buffer holds ``max_recv_size`` bytes between frames. A frame
    larger than that is received into a second buffer of exactly the frame's
    size, as its header declares it (with a delimited framing, whose frames
    say their size only at their end, into one that doubles up to the limit
    plus one read), which is released as soon as the frame is taken. At
    most ``max_recv_size`` + the largest frame, then; an oversized frame is
    refused from its header and never buffered.

    With *keep_large*, a buffer grown for a frame is kept once the frame is
    taken, so that the next large frame is read into pages already mapped
    (a fresh buffer per frame costs a page fault per 4 KiB, and more than
    the copy). It is given back after :data:`KEEP_SMALL_RUN` frames in a
    row under half its size, when a larger frame needs a new one, or when
    the transport calls :meth:`release_kept` (after the connection was idle
    :data:`KEEP_IDLE_SECONDS`). The bound is the same: ``max_recv_size`` +
    the largest frame; an idle connection holds it for at most that long.
    Without it (a server's receivers: their peers are not trusted), a
    frame's buffer grows with the frame's bytes, to at most :data:`GROWTH`
    times what has arrived of it: a peer that declares a large frame and
    stalls or closes costs about what it sent.
    """

    __slots__ = (
        "_base",
        "_base_view",
        "_buf",
        "_discard",
        "_end",
        "_framed",
        "_generator",
        "_generator_pending",
        "_keep",
        "_kept",
        "_large",
        "_limit",
        "_recv_size",
        "_resyncing",
        "_searched",
        "_serializer",
        "_small_run",
        "_start",
        "_view",
    )

    def __init__(
        self,
        serializer: AbstractIncrementalPacketSerializer[Any, ReceivedT],
        max_recv_size: int,
        *,
        keep_large: bool = False,
    ) -> None:
        if max_recv_size <= 0:
            raise ValueError(f"max_recv_size must be positive, got {max_recv_size}")
        self._serializer = serializer
        self._framed: AbstractFramedPacketSerializer[Any, ReceivedT] | None = (
            serializer if isinstance(serializer, AbstractFramedPacketSerializer) else None
        )
        self._recv_size = max_recv_size
        self._large = 2 * max_recv_size  # a buffer past this was grown for one large frame
        self._limit = self._framed.max_frame_extent() if self._framed is not None else None
        self._base = self._buf = bytearray(max_recv_size)
        self._base_view = self._view = memoryview(self._buf)
        self._start = 0  # first unconsumed byte
        self._end = 0  # one past the last received byte
        self._searched = 0  # locate_frame already scanned up to here
        self._discard = 0  # bytes of an oversized frame still to drop
        self._resyncing = False  # dropping bytes until serializer.resync() finds a frame
        self._generator: Generator[None, bytes, tuple[ReceivedT, bytes]] | None = None
        self._generator_pending = 0  # bytes handed to an unfinished generator
        self._keep = keep_large and self._framed is not None
        self._kept = False  # the buffer is one grown for a large frame, kept for the next
        self._small_run = 0  # frames in a row under half the kept buffer

    @property
    def max_recv_size(self) -> int:
        """The most bytes one :meth:`get_buffer` view holds, and the size of
        the receive buffer between frames larger than that."""
        return self._recv_size

    def buffered_size(self) -> int:
        """Number of received bytes not yet consumed by a packet."""
        return self._end - self._start + self._generator_pending

    def allocated_size(self) -> int:
        """Bytes of receive buffer held now: ``max_recv_size`` between frames,
        up to the size of the frame being received while one larger than a
        read arrives (never more, when the serializer can tell a frame's size
        from its header; see :meth:`AbstractFramedPacketSerializer.frame_extent`)."""
        return len(self._buf)

    def get_buffer(self) -> memoryview:
        """Return writable space to read into: ``max_recv_size`` bytes, or
        fewer (never none) when that is all the frame being received still
        needs, or when at least half a read fits after the bytes pending.

        The buffer is sized to the frame being received: once more than half
        a read of a frame larger than a read has arrived, the buffer grows to
        that frame's size as its header declares it, never past it (by
        doubling, up to the serializer's largest frame plus a read, when it
        cannot tell), and it is replaced by one of ``max_recv_size`` bytes
        once the frame is taken.

        Drop the view before the next call; then report the count with
        :meth:`buffer_updated`.
        """
        start, end, size = self._start, self._end, self._recv_size
        if start == end:
            if len(self._buf) != size and not self._kept:
                self._replace(size)
            self._start = self._end = self._searched = start = end = 0
        elif len(self._buf) - end < size:
            return self._make_room()
        return self._view[end : end + size]

    def _make_room(self) -> memoryview:
        """Space after the pending bytes (some are pending): compact the
        buffer, or move them to a larger one sized for the frame they begin."""
        start, end, size, buf = self._start, self._end, self._recv_size, self._buf
        pending = end - start
        extent = None
        framed = self._framed
        if framed is not None and not (self._discard or self._resyncing):
            extent = framed.frame_extent(buf, start, end)
            if extent is not None and extent <= pending:
                extent = None  # whole frames are pending (fed, not taken yet): no bound for them
        if extent is not None and extent - pending <= size:
            need = extent - pending  # the rest of the frame, and no more
        elif pending <= size // 2:
            need = size - pending  # at least half a read
        else:
            need = size
        if len(buf) - pending >= need:
            if start:
                buf[:pending] = buf[start:end]
                self._searched = max(self._searched - start, 0)
                self._start, self._end = 0, pending
            capacity = len(buf)
        else:
            if extent is not None:
                # to the frame's size (at once when large frames are trusted: steps cost a
                # copy and fresh pages each); else at most GROWTH times what has come of it:
                # a peer that declares 16 MiB and sends a read's worth, then stalls or
                # closes, must not make a server allocate and zero-fill 16 MiB per connection
                capacity = extent if self._keep else min(extent, max(GROWTH * pending, pending + need))
            elif pending <= size:  # a frame of unknown size: room for one more read
                capacity = pending + need
            else:  # and more than a read of it: by doubling, up to the largest frame
                capacity = max(pending + need, 2 * len(buf))
                limit = self._limit
                if limit is not None and pending < limit:
                    capacity = max(pending + need, min(capacity, limit))
            self._replace(capacity)
        return self._view[pending : pending + min(size, capacity - pending)]

    def _replace(self, capacity: int) -> None:
        """Move the pending bytes to the start of a new buffer of *capacity*
        bytes (allocated exactly: a bytearray grown in place may keep more),
        or back to the buffer of ``max_recv_size`` bytes, which is kept
        meanwhile (its pages stay mapped: no fresh pages after each large
        frame). A grown buffer is freed as soon as no view of it is left."""
        start, end = self._start, self._end
        pending = end - start
        if capacity == self._recv_size:
            buf, view = self._base, self._base_view
        else:
            buf = bytearray(capacity)
            view = memoryview(buf)
        if pending:
            buf[:pending] = self._buf[start:end]
        self._searched = max(self._searched - start, 0)
        self._start, self._end = 0, pending
        self._buf, self._view = buf, view
        self._kept = False
        self._small_run = 0

    def _release(self) -> None:
        """After a frame was taken from a buffer larger than a read: back to
        ``max_recv_size`` bytes, unless what is left still needs more (a
        buffer of up to two reads is kept while frames keep straddling reads)."""
        pending = self._end - self._start
        size = self._recv_size
        if pending == 0 or (pending <= size and len(self._buf) > 2 * size):
            self._replace(size)

    def _taken_from_grown(self, extent: int, count: int = 1) -> None:
        """With *keep_large*: *count* frames (of *extent* bytes) were taken
        from a buffer larger than a read. One of at least half the buffer
        keeps it; :data:`KEEP_SMALL_RUN` smaller ones in a row give it back."""
        if 2 * extent >= len(self._buf):
            self._small_run = 0
        else:
            self._small_run += count
            if self._small_run >= KEEP_SMALL_RUN:
                self._release()
                return
        self._kept = True

    @property
    def kept(self) -> bool:
        """Whether a buffer grown for an earlier frame is kept (*keep_large*)."""
        return self._kept

    def release_kept(self) -> None:
        """Give back a kept buffer now, if no bytes are pending in it (the
        transport calls this once the connection was idle a while)."""
        if self._kept and self._start == self._end:
            self._replace(self._recv_size)

    def buffer_updated(self, nbytes: int) -> None:
        """Record that *nbytes* were written at the start of the last
        :meth:`get_buffer` view."""
        self._end += nbytes

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append *data* to the received bytes (as reads into
        :meth:`get_buffer` would)."""
        data = memoryview(data).cast("B")
        offset, total = 0, len(data)
        while offset < total:
            buffer = self.get_buffer()
            count = min(len(buffer), total - offset)
            buffer[:count] = data[offset : offset + count]
            del buffer
            self._end += count
            offset += count

    def next_packet(self) -> ReceivedT | NeedData:
        """Return the next whole packet, or :data:`NEED_DATA`.

        Raises:
            StreamProtocolParseError: the next frame is invalid or oversized.
                It is consumed (an oversized one is dropped as its bytes
                arrive); call again for the packet after it.
        """
        framed = self._framed
        if framed is None:
            return self._next_from_generator()
        if (self._discard or self._resyncing) and not self._skip():
            return NEED_DATA
        start, end = self._start, self._end
        if start == end:
            return NEED_DATA
        try:
            location = framed.locate_frame(self._buf, start, end, max(self._searched, start))
        except OversizedFrameError as exc:
            if exc.next_frame_at is None:
                self._resyncing = True
            else:
                self._discard = exc.next_frame_at - start
            self._skip()
            raise StreamProtocolParseError(exc) from None
        if location is None:
            self._searched = end
            return NEED_DATA
        body_start, body_end, self._start = location
        buf = self._buf
        body: bytes | bytearray | memoryview
        if self._keep and len(buf) > self._recv_size:  # grown: kept for the next large frame
            # the buffer is reused: the decoder gets a copy, or a view if it copies anyway
            body = self._view[body_start:body_end] if framed.copies_frame_body else buf[body_start:body_end]
            self._taken_from_grown(body_end - body_start)
        elif len(buf) > self._recv_size:  # grown for a large frame: release it
            # a buffer that is exactly this frame is handed over, uncopied
            body = buf if body_start == 0 and body_end == len(buf) else buf[body_start:body_end]
            self._release()
        else:
            body = buf[body_start:body_end]
        try:
            return framed.parse_frame_body(body)
        except DeserializeError as exc:
            raise StreamProtocolParseError(exc) from exc

    def next_packets(self) -> list[ReceivedT]:
        """Every whole packet buffered now, in order (empty if none): what
        calling :meth:`next_packet` until it returns NEED_DATA would give,
        in one go when the serializer can split frames itself.

        Raises:
            StreamProtocolParseError: as :meth:`next_packet`, only when no
                whole packet comes before the bad frame.
        """
        framed = self._framed
        # (a buffer grown for a large frame goes to next_packet, which hands it over uncopied)
        if framed is not None and not (self._discard or self._resyncing or self._end > self._large):
            start = self._start
            packets, self._start = framed.split_frames(self._buf, start, self._end)
            if packets:
                if len(self._buf) > self._recv_size:
                    if self._keep:  # (one frame: its size; more: each counted as small)
                        self._taken_from_grown(self._start - start if len(packets) == 1 else 0, len(packets))
                    else:
                        self._release()
                return packets
        packet = self.next_packet()
        return [] if packet is NEED_DATA else [packet]

    def _skip(self) -> bool:
        """Drop bytes of an oversized frame; True once it is behind us."""
        start, end = self._start, self._end
        if self._discard:
            dropped = min(self._discard, end - start)
            self._start = start + dropped
            self._discard -= dropped
            return not self._discard
        assert self._framed is not None
        try:
            index = self._framed.resync(self._buf, start, end)
        except DeserializeError as exc:
            # this serializer cannot find the next frame: the stream stays unusable
            raise StreamProtocolParseError(exc) from exc
        if index is None:
            self._start = end
            return False
        self._start = index
        self._resyncing = False
        return True

    def _next_from_generator(self) -> ReceivedT | NeedData:
        start, end = self._start, self._end
        if start == end:
            return NEED_DATA
        generator = self._generator
        if generator is None:
            generator = self._serializer.incremental_deserialize()
            next(generator)
            self._generator = generator
        data = bytes(self._view[start:end])
        self._start = self._end = 0
        self._generator_pending += len(data)
        try:
            generator.send(data)
        except StopIteration as stop:
            self._generator = None
            self._generator_pending = 0
            packet, remaining = stop.value
            self.feed(remaining)
            return cast(ReceivedT, packet)
        except IncrementalDeserializeError as exc:
            self._generator = None
            self._generator_pending = 0
            self.feed(exc.remaining_data)
            raise StreamProtocolParseError(exc) from exc
        except DeserializeError as exc:
            self._generator = None
            self._generator_pending = 0
            raise StreamProtocolParseError(exc) from exc
        return NEED_DATA
