"""PacketReceiver.next_packets and FrameSerializer.split_frames: every whole
frame of a buffer at once, with the same results and errors as taking them
one by one with next_packet. Bytes in, packets out: no sockets."""

from __future__ import annotations

from typing import Any

import pytest

from unixrpc import StreamProtocolParseError
from unixrpc._core.framing import FrameSerializer
from unixrpc._core.wire import HEADER, RawFrame
from unixrpc.protocol import NEED_DATA, PacketReceiver, StreamProtocol
from unixrpc.serializers import JSONSerializer


def frame(body: bytes, nfds: int = 0) -> bytes:
    return HEADER.pack(len(body), nfds) + body


def receiver(**limits: Any) -> PacketReceiver[RawFrame]:
    return StreamProtocol(FrameSerializer(**limits)).receiver(1024)


def one_by_one(rx: PacketReceiver[RawFrame]) -> list[RawFrame]:
    packets = []
    while (packet := rx.next_packet()) is not NEED_DATA:
        packets.append(packet)
    return packets


def test_split_frames_takes_every_whole_frame_and_stops_at_a_partial_one() -> None:
    data = frame(b'{"id":1}') + frame(b'{"id":2}', 3) + frame(b"{}")[:-1]
    frames, rest = FrameSerializer().split_frames(bytearray(data), 0, len(data))
    assert frames == [RawFrame(b'{"id":1}', 0), RawFrame(b'{"id":2}', 3)]
    assert rest == len(data) - len(frame(b"{}")) + 1
    assert all(type(f.body) is bytes for f in frames)


def test_split_frames_respects_start_and_end() -> None:
    data = b"xx" + frame(b"a") + frame(b"b") + b"garbage"
    end = 2 + 2 * len(frame(b"a"))
    frames, rest = FrameSerializer().split_frames(bytearray(data), 2, end)
    assert frames == [RawFrame(b"a"), RawFrame(b"b")]
    assert rest == end


@pytest.mark.parametrize("chunk", [1, 5, 7, 64])
def test_next_packets_gives_what_next_packet_would(chunk: int) -> None:
    data = b"".join(frame(b'{"n":%d}' % i, i % 3) for i in range(20))
    batched, single = receiver(), receiver()
    got_batched: list[RawFrame] = []
    got_single: list[RawFrame] = []
    for offset in range(0, len(data), chunk):
        batched.feed(data[offset : offset + chunk])
        single.feed(data[offset : offset + chunk])
        got_batched += batched.next_packets()
        got_single += one_by_one(single)
    assert got_batched == got_single
    assert [f.body for f in got_batched] == [b'{"n":%d}' % i for i in range(20)]
    assert batched.buffered_size() == 0
    assert batched.next_packets() == []


@pytest.mark.parametrize(
    ("limits", "bad", "message"),
    [
        ({"max_frame_size": 16}, frame(b"x" * 17), "frame of 17 bytes is over the limit of 16 bytes"),
        ({"max_fds": 2}, frame(b"{}", 3), "frame declares 3 file descriptors, over the limit of 2"),
    ],
)
def test_a_bad_frame_after_good_ones_is_reported_after_them(
    limits: dict[str, int], bad: bytes, message: str
) -> None:
    rx = receiver(**limits)
    rx.feed(frame(b"a") + frame(b"b") + bad + frame(b"c"))
    assert rx.next_packets() == [RawFrame(b"a"), RawFrame(b"b")]
    with pytest.raises(StreamProtocolParseError, match=message):
        rx.next_packets()
    # the bad frame was consumed: the stream goes on after it
    assert rx.next_packets() == [RawFrame(b"c")]


def test_an_oversized_frame_arriving_in_pieces_is_dropped_as_it_arrives() -> None:
    rx = receiver(max_frame_size=8)
    big = frame(b"y" * 40)
    rx.feed(frame(b"a") + big[:10])
    assert rx.next_packets() == [RawFrame(b"a")]
    with pytest.raises(StreamProtocolParseError, match="over the limit"):
        rx.next_packets()
    rx.feed(big[10:25])
    assert rx.next_packets() == []
    rx.feed(big[25:] + frame(b"z"))
    assert rx.next_packets() == [RawFrame(b"z")]


def test_serializers_without_split_frames_go_one_at_a_time() -> None:
    rx = StreamProtocol(JSONSerializer()).receiver(1024)
    rx.feed(b'{"a":1}\n{"b":2}\n{"c"')
    assert rx.next_packets() == [{"a": 1}]
    assert rx.next_packets() == [{"b": 2}]
    assert rx.next_packets() == []
    rx.feed(b":3}\n")
    assert rx.next_packets() == [{"c": 3}]


def test_cmsg_space_matches_the_kernel_macro() -> None:
    import socket

    from unixrpc._core.framing import cmsg_space

    for size in (0, 4, 8, 12, 4 * 253, 4 * 1000):
        assert cmsg_space(size) == socket.CMSG_SPACE(size)
