"""Base classes for serializers: what a serializer must provide to be used by
:class:`~unixrpc.StreamProtocol`.

Three levels, from the most general to the fastest:

* :class:`AbstractPacketSerializer` -- one-shot: a whole packet to bytes and back.
  It knows nothing of framing; wrap it in :class:`~unixrpc.LengthPrefixedSerializer`
  to put it on a stream.
* :class:`AbstractIncrementalPacketSerializer` -- frames packets itself, as a
  generator that is fed bytes until it returns ``(packet, remaining_bytes)``.
  Write one of these for a framing of your own that cannot say where a frame
  ends by looking at a buffer.
* :class:`AbstractFramedPacketSerializer` -- can locate a whole frame in a
  receive buffer. :class:`~unixrpc.StreamProtocol` uses this fast path (no
  generator per packet); the generator API is derived from it.

Serializers do no I/O and keep no per-connection state: one instance may be
shared by many connections and threads. This module must not import socket,
anyio or anything that does I/O.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Generator, Iterator
from typing import ClassVar, Generic, TypeVar

from ..exceptions import DeserializeError, IncrementalDeserializeError, OversizedFrameError

__all__ = [
    "AbstractFramedPacketSerializer",
    "AbstractIncrementalPacketSerializer",
    "AbstractPacketSerializer",
    "FrameLocation",
]

SentT = TypeVar("SentT", contravariant=True)
ReceivedT = TypeVar("ReceivedT", covariant=True)

#: ``(body_start, body_end, next_frame_start)``: indices into the buffer given
#: to :meth:`AbstractFramedPacketSerializer.locate_frame`.
FrameLocation = tuple[int, int, int]


class AbstractPacketSerializer(ABC, Generic[SentT, ReceivedT]):
    """One-shot serializer: turns a packet into bytes and bytes into a packet."""

    __slots__ = ()

    @abstractmethod
    def serialize(self, packet: SentT) -> bytes:
        """Return the encoding of *packet*.

        Raises:
            SerializeError: *packet* cannot be encoded.
        """

    @abstractmethod
    def deserialize(self, data: bytes) -> ReceivedT:
        """Return the packet encoded in *data* (all of it).

        Raises:
            DeserializeError: *data* is not a valid packet.
        """


class AbstractIncrementalPacketSerializer(ABC, Generic[SentT, ReceivedT]):
    """Stream serializer that frames packets itself."""

    __slots__ = ()

    @abstractmethod
    def incremental_serialize(self, packet: SentT) -> Iterator[bytes]:
        """Yield the bytes of the frame for *packet*, in one or more chunks.

        The protocol joins the chunks before sending, so a failure half-way
        never leaves half a frame on the wire.

        Raises:
            SerializeError: *packet* cannot be encoded.
            FrameTooLargeError: the frame would exceed the serializer's limit.
        """

    @abstractmethod
    def incremental_deserialize(self) -> Generator[None, bytes, tuple[ReceivedT, bytes]]:
        """Return a generator that parses one frame.

        The caller primes it with ``next()``, then ``send()``s received bytes
        until the generator returns ``(packet, remaining_data)``, where
        ``remaining_data`` is whatever followed the frame.

        Raises (from the generator):
            IncrementalDeserializeError: the frame is invalid; its
                ``remaining_data`` holds the bytes after the bad frame.
        """


class AbstractFramedPacketSerializer(AbstractIncrementalPacketSerializer[SentT, ReceivedT]):
    """Incremental serializer whose frames can be found in a buffer.

    Subclasses implement :meth:`serialize_frame`, :meth:`locate_frame` and
    :meth:`parse_frame_body` (and :meth:`resync` if an oversized frame's end
    can only be found by scanning, :meth:`frame_extent` and
    :meth:`max_frame_extent` so that a large frame costs no more buffer than
    its own size). The generator API of
    :class:`AbstractIncrementalPacketSerializer` is provided on top.
    """

    __slots__ = ()

    @abstractmethod
    def serialize_frame(self, packet: SentT) -> bytes:
        """Return the complete frame (framing included) for *packet*.

        Raises:
            SerializeError: *packet* cannot be encoded.
            FrameTooLargeError: the frame would exceed the size limit.
        """

    @abstractmethod
    def locate_frame(
        self, buffer: bytes | bytearray, start: int, end: int, searched: int
    ) -> FrameLocation | None:
        """Find the frame that begins at ``buffer[start]``; only ``buffer[:end]``
        holds received bytes.

        ``searched`` is an index (``>= start``) up to which a previous call
        already looked without finding the end of this frame; a delimiter scan
        may resume there instead of rescanning.

        Returns ``(body_start, body_end, next_frame_start)``, or ``None`` when
        the buffer does not hold the whole frame yet.

        Raises:
            OversizedFrameError: the frame is (or will be) over the size limit.
                The receiver reports it and discards the frame's bytes.
        """

    def frame_extent(self, buffer: bytes | bytearray, start: int, end: int) -> int | None:
        """Optional: the exact number of bytes the frame that begins at
        ``buffer[start]`` takes, framing included, once ``buffer[:end]`` holds
        enough of it to tell (a length header). The receiver sizes its buffer
        to it: a frame larger than one read is received into a buffer of
        exactly this many bytes, released once the frame is taken.

        Return None when it cannot tell (half a header, a delimited framing:
        the default), and for a frame that :meth:`locate_frame` refuses (over
        the limit: it is never buffered). Raises nothing.
        """
        return None

    def max_frame_extent(self) -> int | None:
        """Optional: the most bytes one frame can take, framing included (the
        size limit plus header or delimiter); None (the default) if this
        serializer sets no limit. The receiver never grows its buffer past
        it for a frame whose size :meth:`frame_extent` cannot tell.
        """
        return None

    #: True if :meth:`parse_frame_body` keeps no reference to *body* (it
    #: copies what it needs): a receiver that reuses its buffer may then pass
    #: a ``memoryview`` of it instead of a copy.
    copies_frame_body: ClassVar[bool] = False

    @abstractmethod
    def parse_frame_body(self, body: bytes | bytearray | memoryview) -> ReceivedT:
        """Decode the body of one frame (as delimited by :meth:`locate_frame`).

        Raises:
            DeserializeError: *body* is not a valid packet.
        """

    def split_frames(self, buffer: bytes | bytearray, start: int, end: int) -> tuple[list[ReceivedT], int]:
        """Optional fast path: every whole, valid frame from ``buffer[start]``
        on, parsed, and where the rest begins. It stops at the first frame
        that is incomplete or that :meth:`locate_frame` or
        :meth:`parse_frame_body` would refuse, so that the receiver reports
        that one through the usual path.

        The default finds none (``([], start)``): the receiver then takes one
        frame at a time. Raises nothing.
        """
        return [], start

    def resync(self, buffer: bytes | bytearray, start: int, end: int) -> int | None:
        """After an :class:`OversizedFrameError` without ``next_frame_at``, return
        the index in ``buffer[:end]`` (searching from *start*) where the next frame
        begins, or ``None`` if it is not in the buffer yet (the buffer is then
        discarded and the search goes on in the next bytes).

        The default cannot resynchronise and raises.

        Raises:
            DeserializeError: the stream cannot be resynchronised.
        """
        raise OversizedFrameError(f"{type(self).__name__} cannot skip an oversized frame", next_frame_at=None)

    # -- generator API derived from the fast path --------------------------------

    def incremental_serialize(self, packet: SentT) -> Iterator[bytes]:
        yield self.serialize_frame(packet)

    def incremental_deserialize(self) -> Generator[None, bytes, tuple[ReceivedT, bytes]]:
        buffer = bytearray()
        searched = 0
        while True:
            buffer += yield
            try:
                location = self.locate_frame(buffer, 0, len(buffer), searched)
            except OversizedFrameError as exc:
                remaining = yield from self._discard_oversized(buffer, exc)
                raise IncrementalDeserializeError(str(exc), remaining) from exc
            if location is None:
                searched = len(buffer)
                continue
            body_start, body_end, next_start = location
            rest = bytes(buffer[next_start:])
            try:
                packet = self.parse_frame_body(buffer[body_start:body_end])
            except IncrementalDeserializeError:
                raise
            except DeserializeError as exc:
                raise IncrementalDeserializeError(str(exc), rest, error_info=exc.error_info) from exc
            return packet, rest

    def _discard_oversized(
        self, buffer: bytearray, exc: OversizedFrameError
    ) -> Generator[None, bytes, bytes]:
        """Consume bytes until the oversized frame is behind us; return what follows."""
        if exc.next_frame_at is not None:
            to_skip = exc.next_frame_at - len(buffer)
            while to_skip > 0:
                chunk: bytes = yield
                if len(chunk) > to_skip:
                    return bytes(chunk[to_skip:])
                to_skip -= len(chunk)
            return bytes(buffer[exc.next_frame_at :])
        data = bytes(buffer)
        while True:
            try:
                index = self.resync(data, 0, len(data))
            except DeserializeError as error:
                raise IncrementalDeserializeError(str(error), b"") from error
            if index is not None:
                return data[index:]
            data = yield
