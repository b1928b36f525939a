"""Which wire a server connection speaks, and the varlink wire's rules that
are about the byte stream rather than the messages: the choice from the
connection's first byte (:func:`wire_of`), the framing of varlink messages
(:class:`MessageFraming`), and which message a read's descriptors belong
to (:class:`ReadFds`). Used by :class:`.connection.ServerConnection`
(``choose_wire``, ``frames_read``); engines only peek the first byte and
switch their splitter to what the core chose.

Rules this module owns (docs/varlink.md, "One socket, two wires"):

* A unixrpc frame begins with its body length, a big-endian ``u32``: its
  first byte is ``length >> 24``. A varlink message is a JSON object: its
  first byte is ``{`` (0x7B) or JSON whitespace (0x09, 0x0A, 0x0D, 0x20).
  A first byte *b* among those is varlink when a unixrpc frame starting
  with it would be over the server's ``max_frame_size`` (``b << 24 >
  max_frame_size``): such a frame is refused anyway, so the rule is exact,
  never a guess. With the default 16 MiB limit every one of them is
  varlink; a server configured with frames of 2 GiB or more cannot tell
  and refuses to serve both wires on one socket (:func:`check_shared`).
* Varlink framing: a message is its bytes up to a NUL; one over
  ``max_frame_size`` (NUL excluded) is refused as soon as that many bytes
  came without a NUL; a refused message closes the connection (the stream
  cannot be resynchronised: the NUL may be inside the data).
* Descriptors (sd-varlink's rule: SCM_RIGHTS on the ``sendmsg`` that carries
  the message's first byte): the kernel ends a read after the first
  ``sendmsg`` chunk that carried descriptors, and may put chunks without
  descriptors before it (systemd issue 43823). So the descriptors of a read
  belong to the *last* message that starts in that read; a read in which no
  message starts gives them to the message in progress. This is exact for
  every sender that sends a message with descriptors in a ``sendmsg`` that
  holds no later message's first byte (sd-varlink, asyncvarlink and
  unixrpc's own client do), whatever the kernel joins.

No I/O; stdlib only (the framing is a serializer of the raw layer).
"""

from __future__ import annotations

from typing import Final

from ...exceptions import FrameTooLargeError, OversizedFrameError
from ...serializers.abc import AbstractFramedPacketSerializer, FrameLocation
from ..wire import RawFrame

__all__ = ["UNIXRPC", "VARLINK", "MessageFraming", "ReadFds", "check_shared", "pick_wire", "wire_of"]

#: the wires a connection may speak
UNIXRPC: Final = "unixrpc"
VARLINK: Final = "varlink"

#: what a varlink message (a JSON object) may begin with
_JSON_STARTS: Final = frozenset(b"{ \t\r\n")
#: the smallest max_frame_size with which a unixrpc frame could begin with ``{``
_AMBIGUOUS_FROM: Final = ord("{") << 24


def wire_of(first: int, max_frame_size: int) -> str:
    """The wire of a connection whose first byte is *first*: :data:`VARLINK`
    or :data:`UNIXRPC` (see the module docstring)."""
    if first in _JSON_STARTS and first << 24 > max_frame_size:
        return VARLINK
    return UNIXRPC


def pick_wire(first: int, max_frame_size: int, *, shared: bool, listener_wire: str | None) -> str:
    """The wire of a connection whose first byte is *first*, accepted on a
    listener that speaks *listener_wire* only (:data:`VARLINK` or
    :data:`UNIXRPC`), or both (None): then varlink only if the server
    shares its sockets between the wires (*shared*) and :func:`wire_of`
    says so."""
    if listener_wire is not None:
        return listener_wire
    return wire_of(first, max_frame_size) if shared else UNIXRPC


def check_shared(max_frame_size: int) -> None:
    """Check that both wires can share a socket under *max_frame_size*.

    Raises:
        ValueError: a unixrpc frame under the limit may begin with ``{``.
    """
    if max_frame_size >= _AMBIGUOUS_FROM:
        raise ValueError(
            f"with max_frame_size={max_frame_size} (2 GiB or more) a unixrpc frame can begin with '{{', "
            "like a varlink message: serve varlink on a listener of its own, or pass varlink=False"
        )


class MessageFraming(AbstractFramedPacketSerializer[RawFrame, RawFrame]):
    """Varlink messages as frames of the raw layer: the bytes up to a NUL,
    as :class:`~.._core.wire.RawFrame` bodies (their descriptors are counted
    by :class:`ReadFds`, not here). Receiving only: replies are framed by
    the codec. One instance serves every connection (no state)."""

    __slots__ = ("max_frame_size",)

    def __init__(self, max_frame_size: int) -> None:
        self.max_frame_size = max_frame_size

    def serialize_frame(self, packet: RawFrame) -> bytes:
        if len(packet.body) > self.max_frame_size:
            raise FrameTooLargeError(len(packet.body), self.max_frame_size)
        return packet.body + b"\0"

    def locate_frame(
        self, buffer: bytes | bytearray, start: int, end: int, searched: int
    ) -> FrameLocation | None:
        nul = buffer.find(b"\0", searched, end)
        if nul < 0 or nul - start > self.max_frame_size:
            if (end if nul < 0 else nul) - start > self.max_frame_size:
                raise OversizedFrameError(
                    f"a varlink message of more than {self.max_frame_size} bytes is over the limit",
                    next_frame_at=None,
                )
            return None
        return start, nul, nul + 1

    def max_frame_extent(self) -> int | None:
        return self.max_frame_size + 1

    def resync(self, buffer: bytes | bytearray, start: int, end: int) -> int | None:
        """Never: the NUL ending an oversized message may be inside its data."""
        raise OversizedFrameError(
            f"a varlink message of more than {self.max_frame_size} bytes is over the limit",
            next_frame_at=None,
        )

    def split_frames(self, buffer: bytes | bytearray, start: int, end: int) -> tuple[list[RawFrame], int]:
        frames: list[RawFrame] = []
        limit = self.max_frame_size
        find = buffer.find
        while start < end:
            nul = find(b"\0", start, end)
            if nul < 0 or nul - start > limit:
                break  # incomplete, or refused by locate_frame
            frames.append(RawFrame(bytes(buffer[start:nul])))
            start = nul + 1
        return frames, start

    def parse_frame_body(self, body: bytes | bytearray | memoryview) -> RawFrame:
        return RawFrame(bytes(body))


class ReadFds:
    """Which varlink message each read's descriptors belong to (see the
    module docstring): :meth:`took` counts the descriptors of a read,
    :meth:`assign` gives them to one of the frames that read completed (or
    to the message still in progress, whose frame comes later)."""

    __slots__ = ("_fresh", "_partial", "_tail")

    def __init__(self) -> None:
        self._fresh = 0  # descriptors of the read not yet assigned
        self._partial = False  # a message had begun and not ended before the read
        self._tail = 0  # descriptors of the message in progress

    def took(self, count: int) -> None:
        """A read brought *count* descriptors."""
        self._fresh += count

    def assign(self, frames: list[RawFrame], partial: bool) -> list[RawFrame]:
        """*frames*: every message a read completed, in order; *partial*: a
        message has begun and not ended after it. The frames with their
        descriptor counts."""
        fresh, carried = self._fresh, self._tail  # carried: the message in progress before the read
        began_before = self._partial
        self._fresh = 0
        self._partial = partial
        if carried and frames:  # the first frame completed is the message that was in progress
            frames[0] = RawFrame(frames[0].body, frames[0].nfds + carried)
            carried = 0
        if fresh:
            # the last message that starts in this read: the one in progress after it, if
            # one began in it; else the last frame, unless that frame began before the read
            if partial and (frames or not began_before):
                carried = fresh
            elif len(frames) > (1 if began_before else 0):
                frames[-1] = RawFrame(frames[-1].body, frames[-1].nfds + fresh)
            elif frames:  # only the message in progress ended in this read
                frames[0] = RawFrame(frames[0].body, frames[0].nfds + fresh)
            else:  # only bytes of the message in progress came
                carried += fresh
        self._tail = carried
        return frames
