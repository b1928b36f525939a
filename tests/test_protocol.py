"""Sans-IO tests of StreamProtocol and PacketReceiver: bytes in, packets out, no sockets."""

from __future__ import annotations

import io
from collections.abc import Generator, Iterator
from typing import Any

import pytest

from unixrpc import (
    AbstractIncrementalPacketSerializer,
    AbstractPacketSerializer,
    DeserializeError,
    FrameTooLargeError,
    IncrementalDeserializeError,
    JSONSerializer,
    LengthPrefixedSerializer,
    OversizedFrameError,
    PydanticSerializer,
    SerializeError,
    StreamProtocol,
    StreamProtocolParseError,
)
from unixrpc.protocol import DEFAULT_MAX_RECV_SIZE, NEED_DATA, NeedData, PacketReceiver


class Utf8Serializer(AbstractPacketSerializer[str, str]):
    """A one-shot serializer: knows no framing."""

    __slots__ = ()

    def serialize(self, packet: str) -> bytes:
        return packet.encode()

    def deserialize(self, data: bytes) -> str:
        try:
            return bytes(data).decode()
        except UnicodeDecodeError as exc:
            raise DeserializeError(f"not UTF-8: {exc}", error_info={"start": exc.start}) from exc


class NetstringSerializer(AbstractIncrementalPacketSerializer[bytes, bytes]):
    """Netstring framing (``b"5:hello,"``) written with the generator API only."""

    __slots__ = ()

    def incremental_serialize(self, packet: bytes) -> Iterator[bytes]:
        yield str(len(packet)).encode()
        yield b":"
        yield packet
        yield b","

    def incremental_deserialize(self) -> Generator[None, bytes, tuple[bytes, bytes]]:
        buffer = b""
        while b":" not in buffer:
            buffer += yield
        length, _, buffer = buffer.partition(b":")
        size = int(length)
        while len(buffer) <= size:
            buffer += yield
        body, terminator, rest = buffer[:size], buffer[size : size + 1], buffer[size + 1 :]
        if terminator != b",":
            raise IncrementalDeserializeError(
                f"expected b',' after {size} bytes, got {terminator!r}", rest, error_info={"got": terminator}
            )
        return body, rest


class HalfWayFailingSerializer(NetstringSerializer):
    """Yields the header of a frame, then fails on the body."""

    __slots__ = ("produced",)

    def __init__(self) -> None:
        self.produced: list[bytes] = []

    def incremental_serialize(self, packet: bytes) -> Iterator[bytes]:
        for chunk in (str(len(packet)).encode(), b":"):
            self.produced.append(chunk)
            yield chunk
        raise SerializeError("cannot encode the body")


def json_protocol(**kwargs: Any) -> StreamProtocol[Any, Any]:
    return StreamProtocol(JSONSerializer(**kwargs))


def lp_protocol(**kwargs: Any) -> StreamProtocol[Any, Any]:
    return StreamProtocol(LengthPrefixedSerializer(JSONSerializer(), **kwargs))


def drain(receiver: PacketReceiver[Any]) -> list[Any]:
    packets = []
    while (packet := receiver.next_packet()) is not NEED_DATA:
        packets.append(packet)
    return packets


# -- StreamProtocol -------------------------------------------------------------------------------


def test_one_shot_serializer_must_be_wrapped() -> None:
    with pytest.raises(
        TypeError, match="Utf8Serializer is a one-shot serializer and cannot frame packets"
    ) as info:
        StreamProtocol(Utf8Serializer())  # type: ignore[arg-type]
    assert "StreamProtocol(LengthPrefixedSerializer(serializer))" in str(info.value)
    wrapped = LengthPrefixedSerializer(Utf8Serializer())
    assert StreamProtocol(wrapped).serializer is wrapped


@pytest.mark.parametrize("not_a_serializer", [object(), "json", JSONSerializer, None])
def test_non_serializer_is_rejected(not_a_serializer: object) -> None:
    with pytest.raises(TypeError, match="expected an incremental serializer, got"):
        StreamProtocol(not_a_serializer)  # type: ignore[arg-type]


def test_serialize_framed() -> None:
    assert json_protocol().serialize({"a": [1, "\n"]}) == b'{"a":[1,"\\n"]}\n'
    assert lp_protocol().serialize({"a": 1}) == b'\x00\x00\x00\x07{"a":1}'
    assert StreamProtocol(PydanticSerializer(list[int])).serialize([1, 2]) == b"[1,2]\n"


def test_serialize_framed_errors_propagate() -> None:
    with pytest.raises(SerializeError, match="Type is not JSON serializable: set"):
        json_protocol().serialize({1})
    with pytest.raises(FrameTooLargeError) as info:
        lp_protocol(max_frame_size=3).serialize("abcd")
    assert (info.value.size, info.value.limit) == (6, 3)


def test_serialize_custom_generator_joins_chunks() -> None:
    protocol = StreamProtocol(NetstringSerializer())
    assert protocol.serialize(b"hello") == b"5:hello,"
    assert protocol.serialize(b"") == b"0:,"


def test_serialize_error_half_way_propagates() -> None:
    serializer = HalfWayFailingSerializer()
    protocol = StreamProtocol(serializer)
    result = None
    with pytest.raises(SerializeError, match="cannot encode the body"):
        result = protocol.serialize(b"hello")
    assert result is None
    assert serializer.produced == [b"5", b":"]  # it did fail half-way


# -- PacketReceiver: feed / next_packet ---------------------------------------------------------


@pytest.mark.parametrize("size", [1, 10, DEFAULT_MAX_RECV_SIZE])
def test_get_buffer_is_max_recv_size_or_at_least_half_of_it(size: int) -> None:
    receiver = json_protocol().receiver(size)
    assert receiver.max_recv_size == size
    view = receiver.get_buffer()
    assert isinstance(view, memoryview)
    assert not view.readonly
    assert len(view) == size
    del view
    receiver.feed(b"[1,2")  # pending bytes: at least half a read after them
    view = receiver.get_buffer()
    assert max(size // 2, 1) <= len(view) <= size
    del view


def test_default_max_recv_size() -> None:
    assert DEFAULT_MAX_RECV_SIZE == 64 * 1024
    receiver = json_protocol().receiver()
    assert receiver.max_recv_size == DEFAULT_MAX_RECV_SIZE
    assert len(receiver.get_buffer()) == DEFAULT_MAX_RECV_SIZE


@pytest.mark.parametrize("size", [0, -1])
def test_max_recv_size_must_be_positive(size: int) -> None:
    with pytest.raises(ValueError, match=f"max_recv_size must be positive, got {size}"):
        json_protocol().receiver(size)


@pytest.mark.parametrize("make_protocol", [json_protocol, lp_protocol])
def test_feed_and_next_packet(make_protocol: Any) -> None:
    protocol = make_protocol()
    receiver = protocol.receiver()
    assert receiver.next_packet() is NEED_DATA
    assert NEED_DATA is NeedData.NEED_DATA
    frame = protocol.serialize({"id": 1, "text": "a\nb"})
    receiver.feed(frame[:-1])
    assert receiver.next_packet() is NEED_DATA
    assert receiver.buffered_size() == len(frame) - 1
    receiver.feed(frame[-1:])
    assert receiver.next_packet() == {"id": 1, "text": "a\nb"}
    assert receiver.buffered_size() == 0
    assert receiver.next_packet() is NEED_DATA


@pytest.mark.parametrize("make_protocol", [json_protocol, lp_protocol])
def test_several_packets_in_one_feed_and_extraneous_bytes(make_protocol: Any) -> None:
    protocol = make_protocol()
    receiver = protocol.receiver()
    frames = [protocol.serialize(i) for i in range(3)]
    last = protocol.serialize("last")
    receiver.feed(b"".join(frames) + last[:3])
    assert receiver.next_packet() == 0
    assert receiver.buffered_size() == len(frames[1]) + len(frames[2]) + 3
    assert receiver.next_packet() == 1
    assert receiver.next_packet() == 2
    assert receiver.next_packet() is NEED_DATA
    assert receiver.buffered_size() == 3  # the start of the next frame is kept
    receiver.feed(last[3:])
    assert receiver.next_packet() == "last"
    assert receiver.next_packet() is NEED_DATA


def test_feed_byte_by_byte() -> None:
    protocol = lp_protocol()
    receiver = protocol.receiver(1)
    stream = b"".join(protocol.serialize([i, "x" * i]) for i in range(5))
    received = []
    for i in range(len(stream)):
        receiver.feed(stream[i : i + 1])
        received.extend(drain(receiver))
    assert received == [[i, "x" * i] for i in range(5)]


@pytest.mark.parametrize(
    ("make_protocol", "bad_frame"),
    [(json_protocol, b"{bad}\n"), (lp_protocol, b"\x00\x00\x00\x05{bad}")],
    ids=["json", "length-prefixed"],
)
def test_invalid_frame_then_next_good_packet(make_protocol: Any, bad_frame: bytes) -> None:
    protocol = make_protocol()
    receiver = protocol.receiver()
    receiver.feed(bad_frame + protocol.serialize({"ok": True}))
    with pytest.raises(StreamProtocolParseError, match=r"^invalid packet: invalid JSON: ") as info:
        receiver.next_packet()
    assert type(info.value.error) is DeserializeError
    assert info.value.error_info == {"position": 1}
    assert info.value.error_info is info.value.error.error_info
    assert receiver.next_packet() == {"ok": True}
    assert receiver.next_packet() is NEED_DATA


def test_invalid_pydantic_packet_carries_error_list() -> None:
    protocol = StreamProtocol(PydanticSerializer(list[int]))
    receiver = protocol.receiver()
    receiver.feed(b'[1,"x"]\n[2]\n')
    with pytest.raises(StreamProtocolParseError, match="packet failed validation") as info:
        receiver.next_packet()
    assert isinstance(info.value.error, DeserializeError)
    [error] = info.value.error_info
    assert (error["loc"], error["type"]) == ((1,), "int_parsing")
    assert receiver.next_packet() == [2]


def test_oversized_length_prefixed_frame_is_discarded_without_buffering() -> None:
    recv_size = 64 * 1024
    protocol = lp_protocol(max_frame_size=1024)
    receiver = protocol.receiver(recv_size)
    receiver.feed(protocol.serialize("before") + (2**30).to_bytes(4, "big"))
    assert receiver.next_packet() == "before"
    # only the header is in: refused at once
    with pytest.raises(
        StreamProtocolParseError, match="frame of 1073741824 bytes is over the limit of 1024"
    ) as info:
        receiver.next_packet()
    assert isinstance(info.value.error, OversizedFrameError)
    assert info.value.error.next_frame_at is not None
    assert receiver.buffered_size() == 0

    chunk = b"\xff" * recv_size
    to_skip = 2**30
    while to_skip > recv_size:
        receiver.feed(chunk)
        assert receiver.next_packet() is NEED_DATA
        assert receiver.buffered_size() == 0
        assert len(receiver._buf) <= 2 * recv_size
        to_skip -= recv_size
    following = protocol.serialize({"after": 1})
    receiver.feed(chunk[:to_skip] + following)  # the body's end and the next frame together
    assert receiver.next_packet() == {"after": 1}
    assert receiver.next_packet() is NEED_DATA
    assert len(receiver._buf) <= 2 * recv_size


def test_oversized_length_prefixed_frame_whole_in_buffer() -> None:
    protocol = lp_protocol(max_frame_size=4)
    receiver = protocol.receiver(8)
    receiver.feed(b"\x00\x00\x00\x05" + b"[1,2]" + protocol.serialize([3]))
    with pytest.raises(StreamProtocolParseError, match="frame of 5 bytes is over the limit of 4"):
        receiver.next_packet()
    assert receiver.next_packet() == [3]


def test_over_long_json_line_is_discarded_without_buffering() -> None:
    recv_size = 64 * 1024
    protocol = json_protocol(max_frame_size=100)
    receiver = protocol.receiver(recv_size)
    receiver.feed(b'"' + b"x" * 99)  # 100 bytes, no newline: could still be valid
    assert receiver.next_packet() is NEED_DATA
    receiver.feed(b"x")  # 101 bytes: over the limit before the newline is seen
    with pytest.raises(StreamProtocolParseError, match="line is longer than the frame limit of 100") as info:
        receiver.next_packet()
    assert isinstance(info.value.error, OversizedFrameError)
    assert info.value.error.next_frame_at is None
    assert receiver.buffered_size() == 0

    chunk = b"x" * recv_size
    for _ in range(100):
        receiver.feed(chunk)
        assert receiver.next_packet() is NEED_DATA
        assert receiver.buffered_size() == 0
        assert len(receiver._buf) <= 2 * recv_size
    receiver.feed(b'xx"\n{"after":1}\n[2')  # resync after the next newline
    assert receiver.next_packet() == {"after": 1}
    assert receiver.next_packet() is NEED_DATA
    assert receiver.buffered_size() == 2
    receiver.feed(b"]\n")
    assert receiver.next_packet() == [2]


def test_over_long_json_line_with_its_newline_in_buffer() -> None:
    protocol = json_protocol(max_frame_size=10)
    receiver = protocol.receiver(4)
    receiver.feed(b"[1]\n" + b'"' + b"y" * 20 + b'"\n' + b"[2]\n")
    assert receiver.next_packet() == [1]
    with pytest.raises(
        StreamProtocolParseError, match="line of 22 bytes is over the frame limit of 10"
    ) as info:
        receiver.next_packet()
    assert info.value.error.next_frame_at is not None
    assert receiver.next_packet() == [2]


def test_json_line_at_the_limit_is_accepted() -> None:
    protocol = json_protocol(max_frame_size=10)
    receiver = protocol.receiver(3)
    frame = protocol.serialize("abcdefgh")
    assert len(frame) == 11
    for i in range(len(frame)):
        receiver.feed(frame[i : i + 1])
        if i < len(frame) - 1:
            assert receiver.next_packet() is NEED_DATA
    assert receiver.next_packet() == "abcdefgh"


def test_feed_larger_than_max_recv_size() -> None:
    protocol = lp_protocol()
    receiver = protocol.receiver(8)
    big = "z" * 1000
    stream = b"".join(protocol.serialize(i) for i in range(50)) + protocol.serialize(big)
    receiver.feed(stream)
    assert receiver.buffered_size() == len(stream)
    assert drain(receiver) == [*range(50), big]
    assert receiver.buffered_size() == 0
    receiver.feed(memoryview(protocol.serialize([1]) * 3))
    assert drain(receiver) == [[1]] * 3


# -- custom generator-based serializer through the receiver -----------------------------------------


def test_netstring_through_receiver() -> None:
    protocol = StreamProtocol(NetstringSerializer())
    receiver = protocol.receiver(4)
    receiver.feed(b"5:hello,0:,3:abc;2:ok,1:")
    assert receiver.next_packet() == b"hello"
    assert receiver.next_packet() == b""
    with pytest.raises(StreamProtocolParseError, match="expected b',' after 3 bytes, got b';'") as info:
        receiver.next_packet()
    assert isinstance(info.value.error, IncrementalDeserializeError)
    assert info.value.error.remaining_data == b"2:ok,1:"
    assert info.value.error_info == {"got": b";"}
    assert receiver.next_packet() == b"ok"  # the remaining data was kept
    assert receiver.next_packet() is NEED_DATA
    receiver.feed(b"!,")
    assert receiver.next_packet() == b"!"
    assert receiver.next_packet() is NEED_DATA


def test_netstring_byte_by_byte_with_invalid_frame() -> None:
    protocol = StreamProtocol(NetstringSerializer())
    receiver = protocol.receiver(1)
    stream = b"5:hello,3:abc;" + protocol.serialize(b"x" * 20)
    results: list[object] = []
    for i in range(len(stream)):
        receiver.feed(stream[i : i + 1])
        try:
            results.extend(drain(receiver))
        except StreamProtocolParseError as exc:
            results.append(type(exc.error))
    assert results == [b"hello", IncrementalDeserializeError, b"x" * 20]
    assert receiver.buffered_size() == 0


def test_generator_plain_deserialize_error_is_reported() -> None:
    class Strict(NetstringSerializer):
        __slots__ = ()

        def incremental_deserialize(self) -> Generator[None, bytes, tuple[bytes, bytes]]:
            data = yield
            raise DeserializeError(f"refused {data!r}", error_info="nope")

    receiver = StreamProtocol(Strict()).receiver()
    receiver.feed(b"abc")
    with pytest.raises(StreamProtocolParseError, match="refused b'abc'") as info:
        receiver.next_packet()
    assert info.value.error_info == "nope"


# -- get_buffer() / buffer_updated(): reading into the receiver's own memory ---------------------


def recv_into_loop(
    receiver: PacketReceiver[Any], stream: bytes, read_sizes: list[int], peak: list[int] | None = None
) -> list[Any]:
    """Read *stream* into the receiver as a socket's ``recv_into`` would, in reads of
    varying sizes, taking packets out after each read; the largest buffer seen
    is appended to *peak*."""
    source = io.BytesIO(stream)
    received = []
    largest = 0
    for i in range(len(stream) * 2):
        view = receiver.get_buffer()
        assert 1 <= len(view) <= receiver.max_recv_size
        largest = max(largest, receiver.allocated_size())
        nbytes = source.readinto(view[: read_sizes[i % len(read_sizes)]])
        del view
        if not nbytes:
            break
        receiver.buffer_updated(nbytes)
        received.extend(drain(receiver))
    if peak is not None:
        peak.append(largest)
    return received


PROTOCOLS = [
    pytest.param(json_protocol, id="json"),
    pytest.param(lp_protocol, id="length-prefixed"),
    pytest.param(lambda: StreamProtocol(PydanticSerializer(list[str])), id="pydantic"),
]


@pytest.mark.parametrize("make_protocol", PROTOCOLS)
def test_get_buffer_many_small_packets(make_protocol: Any) -> None:
    """Frames straddle reads, so pending bytes get moved to the front of the buffer."""
    recv_size = 32
    protocol = make_protocol()
    packets = [[f"p{i}", "\n" * (i % 3)] for i in range(300)]
    stream = b"".join(protocol.serialize(packet) for packet in packets)
    receiver = protocol.receiver(recv_size)
    peak: list[int] = []
    assert recv_into_loop(receiver, stream, [1, 7, 32, 13, 5, 32, 2], peak) == packets
    assert receiver.buffered_size() == 0
    assert peak[0] <= 2 * recv_size  # compacted, not grown without bound
    assert receiver.allocated_size() == recv_size


@pytest.mark.parametrize("make_protocol", PROTOCOLS)
def test_get_buffer_with_a_packet_larger_than_max_recv_size(make_protocol: Any) -> None:
    recv_size = 32
    protocol = make_protocol()
    big = ["B" * 5000, "\n"]
    packets = [[str(i)] for i in range(20)] + [big] + [[str(i)] for i in range(20)]
    stream = b"".join(protocol.serialize(packet) for packet in packets)
    big_frame_size = len(protocol.serialize(big))
    assert big_frame_size > 100 * recv_size
    receiver = protocol.receiver(recv_size)
    peak: list[int] = []
    assert recv_into_loop(receiver, stream, [32, 3, 32, 17], peak) == packets
    assert receiver.buffered_size() == 0
    if isinstance(protocol.serializer, LengthPrefixedSerializer):
        assert peak[0] == big_frame_size  # sized to the frame its header declares
    else:  # a line's size is unknown until its newline: doubling, from what arrived
        assert big_frame_size < peak[0] <= 2 * big_frame_size
    assert receiver.allocated_size() == recv_size  # released once the frame was taken


def test_get_buffer_netstring_generator_path() -> None:
    protocol = StreamProtocol(NetstringSerializer())
    packets = [bytes([i]) * i for i in range(60)] + [b"L" * 3000, b"end"]
    stream = b"".join(protocol.serialize(packet) for packet in packets)
    receiver = protocol.receiver(16)
    assert recv_into_loop(receiver, stream, [16, 1, 9]) == packets
    assert receiver.buffered_size() == 0


def test_keep_large_buffer_rule() -> None:
    """keep_large: a grown buffer is kept for the next large frame (no new
    buffer while frames of at least half its size come), replaced by one of
    exactly the frame's size for a larger frame, not given back while bytes
    are pending in it, and given back by release_kept() or a run of
    KEEP_SMALL_RUN small frames."""
    from unixrpc._core.framing import FrameSerializer
    from unixrpc.protocol import KEEP_SMALL_RUN

    recv_size = 64
    serializer = FrameSerializer()
    receiver = StreamProtocol(serializer).receiver(recv_size, keep_large=True)

    def take(body: bytes) -> None:
        receiver.feed(serializer.frame_bytes(body))
        assert [p.body for p in receiver.next_packets()] == [body]

    take(b"a" * 1000)
    kept = receiver._buf
    assert receiver.kept
    assert receiver.allocated_size() == 1006
    take(b"b" * 600)  # at least half: kept, the same buffer
    assert receiver._buf is kept
    assert receiver.kept
    take(b"c" * 2000)  # larger: a buffer of exactly its size
    assert receiver.allocated_size() == 2006
    assert receiver.kept
    receiver.feed(serializer.frame_bytes(b"d" * 10)[:3])  # pending bytes: not given back
    receiver.release_kept()
    assert receiver.allocated_size() == 2006
    receiver.feed(serializer.frame_bytes(b"d" * 10)[3:])
    assert [p.body for p in receiver.next_packets()] == [b"d" * 10]
    receiver.release_kept()
    assert not receiver.kept
    assert receiver.allocated_size() == recv_size
    take(b"e" * 1000)
    for i in range(KEEP_SMALL_RUN):
        assert receiver.kept, i
        take(b"f" * 10)
    assert not receiver.kept
    assert receiver.allocated_size() == recv_size
