"""Sans-IO tests of the built-in serializers: one-shot encode/decode, frame location,
the generator API derived from the framed fast path, and a round-trip property
through a PacketReceiver. No sockets: bytes in, packets out."""

from __future__ import annotations

import json
from collections.abc import Generator, Iterable
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, Field, TypeAdapter

from unixrpc import (
    AbstractFramedPacketSerializer,
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
)
from unixrpc.protocol import NEED_DATA


class Point(BaseModel):
    x: int
    y: int
    label: str = ""


class Record(BaseModel):
    name: str
    count: int
    tags: list[str] = []
    ratio: float | None = None
    extra: dict[str, int] = {}


class Utf8Serializer(AbstractPacketSerializer[str, str]):
    """A minimal one-shot serializer, as a user would write one."""

    __slots__ = ()

    def serialize(self, packet: str) -> bytes:
        return packet.encode()

    def deserialize(self, data: bytes) -> str:
        try:
            return bytes(data).decode()
        except UnicodeDecodeError as exc:
            raise DeserializeError(f"not UTF-8: {exc}", error_info={"start": exc.start}) from exc


def header(size: int) -> bytes:
    return size.to_bytes(4, "big")


def drive(
    generator: Generator[None, bytes, tuple[Any, bytes]], chunks: Iterable[bytes]
) -> tuple[tuple[Any, bytes], int]:
    """Prime *generator*, send *chunks* one by one until it returns; return its value
    and how many chunks it took. Fails if the chunks run out first."""
    next(generator)
    sent = 0
    for chunk in chunks:
        sent += 1
        try:
            generator.send(chunk)
        except StopIteration as stop:
            return stop.value, sent
    pytest.fail(f"generator still wants data after {sent} chunks")


def one_byte_at_a_time(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


# -- JSONSerializer -------------------------------------------------------------------------------


def test_json_serialize_frame_is_compact_json_plus_newline() -> None:
    packet = {"b": [1, 2, None], "a": "x", "t": True, "f": 1.5}
    frame = JSONSerializer().serialize_frame(packet)
    assert frame == b'{"b":[1,2,null],"a":"x","t":true,"f":1.5}\n'
    assert JSONSerializer().serialize(packet) == frame[:-1]
    # NDJSON interop: the line is standard JSON for the stdlib, both ways.
    assert json.loads(frame) == packet
    assert json.loads(frame.decode().rstrip("\n")) == packet
    stdlib_line = (json.dumps(packet) + "\n").encode()
    receiver = StreamProtocol(JSONSerializer()).receiver()
    crlf_line = (json.dumps(["é"], indent=None) + "\r\n").encode()  # a peer ending lines with CRLF
    receiver.feed(stdlib_line * 2 + crlf_line)
    assert receiver.next_packet() == packet
    assert receiver.next_packet() == packet
    assert receiver.next_packet() == ["é"]
    assert receiver.next_packet() is NEED_DATA


def test_json_newlines_in_strings_are_escaped() -> None:
    packet = {"text": "line 1\nline 2\r\n", "k\ney": ["\n"]}
    frame = JSONSerializer().serialize_frame(packet)
    assert frame.count(b"\n") == 1
    assert frame.endswith(b"\n")
    assert frame == b'{"text":"line 1\\nline 2\\r\\n","k\\ney":["\\n"]}\n'
    assert JSONSerializer().deserialize(frame[:-1]) == packet


@pytest.mark.parametrize(
    ("packet", "fragment"),
    [
        ({1, 2}, "Type is not JSON serializable: set"),
        (object(), "Type is not JSON serializable: object"),
        ({1: "non-str key"}, "Dict key must be str"),
        (2**64, "Integer exceeds 64-bit range"),
    ],
)
@pytest.mark.parametrize("method", ["serialize", "serialize_frame"])
def test_json_unencodable_packet_raises_serialize_error(packet: object, fragment: str, method: str) -> None:
    serializer = JSONSerializer()
    with pytest.raises(SerializeError, match="cannot encode packet as JSON") as info:
        getattr(serializer, method)(packet)
    assert isinstance(info.value, TypeError)
    assert fragment in str(info.value)
    assert isinstance(info.value.__cause__, orjson.JSONEncodeError)


@pytest.mark.parametrize(
    ("data", "position"),
    [(b'{"a":', 5), (b"{bad}", 1), (b"", 0), (b"\xff", 0), (b"[1] [2]", 4)],
)
def test_json_deserialize_bad_json_raises_deserialize_error(data: bytes, position: int) -> None:
    with pytest.raises(DeserializeError, match=r"^invalid JSON: ") as info:
        JSONSerializer().deserialize(data)
    assert info.value.error_info == {"position": position}
    assert isinstance(info.value.__cause__, orjson.JSONDecodeError)


def test_json_deserialize_accepts_bytes_like() -> None:
    serializer = JSONSerializer()
    for data in (b"[1,2]", bytearray(b"[1,2]"), memoryview(b"[1,2]")):
        assert serializer.deserialize(data) == [1, 2]


def test_json_serialize_frame_over_max_frame_size() -> None:
    serializer = JSONSerializer(max_frame_size=5)
    assert serializer.max_frame_size == 5
    assert serializer.serialize_frame("abc") == b'"abc"\n'  # 5 bytes: exactly at the limit
    with pytest.raises(FrameTooLargeError, match="6 bytes, over the frame limit of 5 bytes") as info:
        serializer.serialize_frame("abcd")
    assert isinstance(info.value, ValueError)
    assert (info.value.size, info.value.limit) == (6, 5)


@pytest.mark.parametrize("factory", [JSONSerializer, lambda **kw: PydanticSerializer(int, **kw)])
@pytest.mark.parametrize("size", [0, -1])
def test_line_serializer_max_frame_size_must_be_positive(factory: Any, size: int) -> None:
    with pytest.raises(ValueError, match=f"max_frame_size must be positive, got {size}"):
        factory(max_frame_size=size)


def test_json_default_is_honoured() -> None:
    def default(obj: object) -> object:
        if isinstance(obj, set):
            return sorted(obj)
        raise TypeError(f"no way to encode {type(obj).__name__}")

    serializer = JSONSerializer(default=default)
    assert serializer.serialize({3, 1, 2}) == b"[1,2,3]"
    assert serializer.serialize_frame({"s": {"b", "a"}}) == b'{"s":["a","b"]}\n'
    with pytest.raises(SerializeError, match="cannot encode packet as JSON"):
        serializer.serialize_frame(object())


def test_json_option_is_honoured() -> None:
    serializer = JSONSerializer(option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
    assert serializer.serialize({"b": 2, "a": 1, 3: 0}) == b'{"3":0,"a":1,"b":2}'
    assert serializer.serialize_frame({"b": 2, "a": 1}) == b'{"a":1,"b":2}\n'
    # without the option, the same packet is in insertion order / refused
    assert JSONSerializer().serialize_frame({"b": 2, "a": 1}) == b'{"b":2,"a":1}\n'


def test_json_option_cannot_break_line_framing() -> None:
    serializer = JSONSerializer(option=orjson.OPT_INDENT_2)
    frame = serializer.serialize_frame({"a": 1})
    assert frame.count(b"\n") == 1


def test_json_locate_frame() -> None:
    serializer = JSONSerializer(max_frame_size=8)
    buffer = b'[1]\n{"a":2}\n[3'
    assert serializer.locate_frame(buffer, 0, len(buffer), 0) == (0, 3, 4)
    assert serializer.locate_frame(buffer, 4, len(buffer), 4) == (4, 11, 12)
    assert serializer.locate_frame(buffer, 12, len(buffer), 12) is None
    assert serializer.locate_frame(buffer, 4, 11, 4) is None  # newline not received yet
    # `searched` lets the scan resume after what was already looked at
    assert serializer.locate_frame(buffer, 4, len(buffer), 8) == (4, 11, 12)
    assert serializer.parse_frame_body(bytearray(buffer[4:11])) == {"a": 2}


def test_json_locate_frame_oversized_line() -> None:
    serializer = JSONSerializer(max_frame_size=8)
    # 8 bytes and no newline yet: could still be a valid line
    assert serializer.locate_frame(b"x" * 8, 0, 8, 0) is None
    with pytest.raises(OversizedFrameError, match="longer than the frame limit of 8 bytes") as info:
        serializer.locate_frame(b"x" * 9, 0, 9, 0)
    assert info.value.next_frame_at is None
    buffer = b"[1]\n" + b"y" * 9 + b"\n[2]\n"
    with pytest.raises(OversizedFrameError, match="line of 9 bytes is over the frame limit of 8") as info:
        serializer.locate_frame(buffer, 4, len(buffer), 4)
    assert info.value.next_frame_at == 14
    assert serializer.resync(buffer, 4, len(buffer)) == 14
    assert serializer.resync(buffer, 4, 13) is None


# -- LengthPrefixedSerializer ---------------------------------------------------------------------


def test_length_prefixed_frame_is_big_endian_length_plus_body() -> None:
    serializer = LengthPrefixedSerializer(JSONSerializer())
    assert serializer.serialize_frame({"a": 1}) == b"\x00\x00\x00\x07" + b'{"a":1}'
    assert list(serializer.incremental_serialize({"a": 1})) == [b'\x00\x00\x00\x07{"a":1}']
    body = "é" * 200  # 400 bytes of UTF-8: the length is in bytes, big-endian
    frame = LengthPrefixedSerializer(Utf8Serializer()).serialize_frame(body)
    assert frame[:4] == b"\x00\x00\x01\x90"
    assert frame[4:] == body.encode()
    assert LengthPrefixedSerializer(Utf8Serializer()).serialize_frame("") == b"\x00\x00\x00\x00"


def test_length_prefixed_wraps_a_one_shot_serializer() -> None:
    inner = Utf8Serializer()
    serializer = LengthPrefixedSerializer(inner, max_frame_size=10)
    assert serializer.serializer is inner
    assert serializer.max_frame_size == 10
    assert serializer.parse_frame_body(bytearray(b"abc")) == "abc"
    with pytest.raises(DeserializeError, match="not UTF-8") as info:
        serializer.parse_frame_body(bytearray(b"a\xffc"))
    assert info.value.error_info == {"start": 1}


def test_length_prefixed_over_limit_send() -> None:
    serializer = LengthPrefixedSerializer(JSONSerializer(), max_frame_size=5)
    assert serializer.serialize_frame("abc") == b'\x00\x00\x00\x05"abc"'  # exactly at the limit
    with pytest.raises(FrameTooLargeError, match="6 bytes, over the frame limit of 5 bytes") as info:
        serializer.serialize_frame("abcd")
    assert (info.value.size, info.value.limit) == (6, 5)
    # the limit is the wrapper's, not the inner serializer's
    inner = JSONSerializer(max_frame_size=1)
    assert LengthPrefixedSerializer(inner).serialize_frame([1, 2]) == b"\x00\x00\x00\x05[1,2]"


def test_length_prefixed_propagates_serialize_error() -> None:
    with pytest.raises(SerializeError, match="Type is not JSON serializable: set"):
        LengthPrefixedSerializer(JSONSerializer()).serialize_frame({1})


@pytest.mark.parametrize(
    "not_one_shot",
    [LengthPrefixedSerializer(JSONSerializer()), object(), JSONSerializer, json],
    ids=["length-prefixed", "object", "class", "module"],
)
def test_length_prefixed_rejects_non_one_shot(not_one_shot: object) -> None:
    with pytest.raises(TypeError, match="expected a one-shot AbstractPacketSerializer, got"):
        LengthPrefixedSerializer(not_one_shot)  # type: ignore[arg-type]


@pytest.mark.parametrize("size", [0, -1, 2**32])
def test_length_prefixed_max_frame_size_out_of_range(size: int) -> None:
    with pytest.raises(ValueError, match=rf"max_frame_size must be in 1\.\.4294967295, got {size}"):
        LengthPrefixedSerializer(JSONSerializer(), max_frame_size=size)


def test_length_prefixed_max_frame_size_bounds_accepted() -> None:
    assert LengthPrefixedSerializer(JSONSerializer(), max_frame_size=1).max_frame_size == 1
    assert LengthPrefixedSerializer(JSONSerializer(), max_frame_size=2**32 - 1).max_frame_size == 2**32 - 1
    assert LengthPrefixedSerializer(JSONSerializer()).max_frame_size == 16 * 1024 * 1024


def test_length_prefixed_locate_frame() -> None:
    serializer = LengthPrefixedSerializer(Utf8Serializer(), max_frame_size=8)
    buffer = b"junk" + header(3) + b"abc" + header(0) + header(5) + b"hel"
    # partial header
    for end in range(4, 8):
        assert serializer.locate_frame(buffer, 4, end, 4) is None
    # header, partial body
    assert serializer.locate_frame(buffer, 4, 10, 4) is None
    assert serializer.locate_frame(buffer, 4, 11, 4) == (8, 11, 11)
    assert serializer.locate_frame(buffer, 4, len(buffer), 4) == (8, 11, 11)
    assert serializer.locate_frame(buffer, 11, len(buffer), 11) == (15, 15, 15)  # empty body
    assert serializer.locate_frame(buffer, 15, len(buffer), 15) is None  # 3 of 5 body bytes
    assert serializer.locate_frame(buffer + b"lo", 15, len(buffer) + 2, 15) == (19, 24, 24)


def test_length_prefixed_locate_frame_oversized_header() -> None:
    serializer = LengthPrefixedSerializer(Utf8Serializer(), max_frame_size=8)
    assert serializer.locate_frame(header(8), 0, 4, 0) is None  # at the limit: fine, body to come
    buffer = b"ab" + header(2**30)
    with pytest.raises(OversizedFrameError, match="frame of 1073741824 bytes is over the limit of 8") as info:
        serializer.locate_frame(buffer, 2, 6, 2)
    assert info.value.next_frame_at == 2 + 4 + 2**30
    assert isinstance(info.value, DeserializeError)


# -- PydanticSerializer ---------------------------------------------------------------------------


def test_pydantic_model_round_trip() -> None:
    serializer = PydanticSerializer(Point)
    point = Point(x=1, y=-2, label="a\nb")
    assert serializer.serialize(point) == b'{"x":1,"y":-2,"label":"a\\nb"}'
    frame = serializer.serialize_frame(point)
    assert frame == b'{"x":1,"y":-2,"label":"a\\nb"}\n'
    decoded = serializer.deserialize(frame[:-1])
    assert isinstance(decoded, Point)
    assert decoded == point
    assert serializer.deserialize(bytearray(b'{"x":3,"y":4}')) == Point(x=3, y=4)
    wrapped = LengthPrefixedSerializer(serializer)
    assert wrapped.parse_frame_body(bytearray(wrapped.serialize_frame(point)[4:])) == point


def test_pydantic_type_adapter_round_trip() -> None:
    serializer = PydanticSerializer(list[int])
    assert isinstance(serializer.type_adapter, TypeAdapter)
    assert serializer.serialize([1, 2, 3]) == b"[1,2,3]"
    assert serializer.serialize_frame([]) == b"[]\n"
    assert serializer.deserialize(b"[1,2,3]") == [1, 2, 3]
    assert serializer.deserialize(b'[1,"2"]') == [1, 2]  # lax mode by default


def test_pydantic_invalid_model_packet() -> None:
    serializer = PydanticSerializer(Point)
    with pytest.raises(DeserializeError, match="packet failed validation") as info:
        serializer.deserialize(b'{"x":"abc"}')
    errors = info.value.error_info
    assert isinstance(errors, list)
    assert [(error["loc"], error["type"]) for error in errors] == [
        (("x",), "int_parsing"),
        (("y",), "missing"),
    ]
    assert all("url" not in error for error in errors)


def test_pydantic_invalid_type_adapter_packet() -> None:
    serializer = PydanticSerializer(list[int])
    with pytest.raises(DeserializeError) as info:
        serializer.deserialize(b'[1,"a"]')
    [error] = info.value.error_info
    assert error["loc"] == (1,)
    assert error["type"] == "int_parsing"
    assert error["input"] == "a"
    with pytest.raises(DeserializeError) as info:
        serializer.deserialize(b"[1,")
    [error] = info.value.error_info
    assert (error["loc"], error["type"]) == ((), "json_invalid")


def test_pydantic_strict_rejects_string_for_int() -> None:
    assert PydanticSerializer(list[int]).deserialize(b'["1"]') == [1]
    with pytest.raises(DeserializeError) as info:
        PydanticSerializer(list[int], strict=True).deserialize(b'["1"]')
    [error] = info.value.error_info
    assert (error["loc"], error["type"]) == ((0,), "int_type")
    with pytest.raises(DeserializeError) as info:
        PydanticSerializer(Point, strict=True).deserialize(b'{"x":"1","y":2}')
    [error] = info.value.error_info
    assert (error["loc"], error["type"]) == (("x",), "int_type")
    assert PydanticSerializer(Point, strict=True).deserialize(b'{"x":1,"y":2}') == Point(x=1, y=2)


def test_pydantic_serialize_frame_over_limit() -> None:
    serializer = PydanticSerializer(list[int], max_frame_size=5)
    assert serializer.serialize_frame([1, 2]) == b"[1,2]\n"
    with pytest.raises(FrameTooLargeError) as info:
        serializer.serialize_frame([10, 2])
    assert (info.value.size, info.value.limit) == (6, 5)


def test_pydantic_unencodable_packet_raises_serialize_error() -> None:
    class Holder(BaseModel):
        value: Any

    with pytest.raises(SerializeError, match=r"cannot encode packet: .*Unable to serialize unknown type"):
        PydanticSerializer(Holder).serialize_frame(Holder(value=object()))


class Aliased(BaseModel):
    user_id: int = Field(alias="userId")


def test_pydantic_round_trip_with_field_alias() -> None:
    serializer = PydanticSerializer(Aliased)
    packet = Aliased(userId=7)
    assert serializer.deserialize(serializer.serialize(packet)) == packet


# -- generator API (incremental_serialize / incremental_deserialize) ------------------------------

FRAMED_CASES = [
    pytest.param(JSONSerializer(), id="json"),
    pytest.param(LengthPrefixedSerializer(JSONSerializer()), id="length-prefixed"),
]


@pytest.mark.parametrize("serializer", FRAMED_CASES)
def test_incremental_serialize_yields_the_frame(serializer: AbstractFramedPacketSerializer[Any, Any]) -> None:
    assert b"".join(serializer.incremental_serialize({"k": [1]})) == serializer.serialize_frame({"k": [1]})


@pytest.mark.parametrize("serializer", FRAMED_CASES)
def test_incremental_deserialize_byte_by_byte(serializer: AbstractFramedPacketSerializer[Any, Any]) -> None:
    frame = serializer.serialize_frame({"a": [1, "x\n"]})
    (packet, remaining), sent = drive(serializer.incremental_deserialize(), one_byte_at_a_time(frame))
    assert packet == {"a": [1, "x\n"]}
    assert remaining == b""
    assert sent == len(frame)  # returns on the frame's very last byte, not before


@pytest.mark.parametrize("serializer", FRAMED_CASES)
def test_incremental_deserialize_returns_remaining(
    serializer: AbstractFramedPacketSerializer[Any, Any],
) -> None:
    first, second = serializer.serialize_frame([1]), serializer.serialize_frame([2])
    data = first + second + second[:3]
    (packet, remaining), sent = drive(serializer.incremental_deserialize(), [data])
    assert (packet, remaining, sent) == ([1], second + second[:3], 1)
    # the frame split across chunks, with the next one's bytes in the last chunk
    chunks = [first[:2], first[2:-1], first[-1:] + second[:2]]
    (packet, remaining), sent = drive(serializer.incremental_deserialize(), chunks)
    assert (packet, remaining, sent) == ([1], second[:2], 3)


@pytest.mark.parametrize(
    ("serializer", "bad_frame", "error_info"),
    [
        pytest.param(JSONSerializer(), b"{bad}\n", {"position": 1}, id="json"),
        pytest.param(
            LengthPrefixedSerializer(JSONSerializer()), header(5) + b"{bad}", {"position": 1}, id="lp"
        ),
        pytest.param(PydanticSerializer(Point), b'{"x":1}\n', [("y",)], id="pydantic"),
    ],
)
def test_incremental_deserialize_invalid_frame(
    serializer: AbstractFramedPacketSerializer[Any, Any], bad_frame: bytes, error_info: object
) -> None:
    following = serializer.serialize_frame(
        Point(x=5, y=6) if isinstance(serializer, PydanticSerializer) else 5
    )
    generator = serializer.incremental_deserialize()
    next(generator)
    with pytest.raises(IncrementalDeserializeError) as info:
        generator.send(bad_frame + following + b"tail")
    assert info.value.remaining_data == following + b"tail"
    assert isinstance(info.value.__cause__, DeserializeError)
    if isinstance(error_info, dict):
        assert info.value.error_info == error_info
    else:
        assert [error["loc"] for error in info.value.error_info] == error_info
        assert info.value.error_info[0]["type"] == "missing"

    # byte by byte: the error comes with the bad frame's last byte, nothing after it
    generator = serializer.incremental_deserialize()
    next(generator)
    for byte in one_byte_at_a_time(bad_frame[:-1]):
        assert generator.send(byte) is None
    with pytest.raises(IncrementalDeserializeError) as info:
        generator.send(bad_frame[-1:])
    assert info.value.remaining_data == b""


def test_incremental_deserialize_oversized_length_prefixed_frame() -> None:
    serializer = LengthPrefixedSerializer(JSONSerializer(), max_frame_size=8)
    following = serializer.serialize_frame([7])
    generator = serializer.incremental_deserialize()
    next(generator)
    # the header alone is enough to know; the body is discarded as it comes
    assert generator.send(header(100)) is None
    assert generator.send(b"x" * 60) is None
    assert generator.send(b"x" * 39) is None
    with pytest.raises(
        IncrementalDeserializeError, match="frame of 100 bytes is over the limit of 8"
    ) as info:
        generator.send(b"x" + following)
    assert info.value.remaining_data == following
    assert isinstance(info.value.__cause__, OversizedFrameError)

    # body ending exactly at a chunk boundary
    generator = serializer.incremental_deserialize()
    next(generator)
    assert generator.send(header(100)[:3]) is None
    assert generator.send(header(100)[3:] + b"x" * 50) is None
    with pytest.raises(IncrementalDeserializeError) as info:
        generator.send(b"x" * 50)
    assert info.value.remaining_data == b""

    # all in one chunk
    generator = serializer.incremental_deserialize()
    next(generator)
    with pytest.raises(IncrementalDeserializeError) as info:
        generator.send(header(9) + b"x" * 9 + following + following)
    assert info.value.remaining_data == following + following


def test_incremental_deserialize_oversized_json_line() -> None:
    serializer = JSONSerializer(max_frame_size=8)
    generator = serializer.incremental_deserialize()
    next(generator)
    assert generator.send(b"[1,2,3,") is None  # 7 bytes: may still be valid
    assert generator.send(b"4,") is None  # 9 bytes, no newline: over, skipping until a newline
    assert generator.send(b"5" * 1000) is None
    with pytest.raises(IncrementalDeserializeError, match="longer than the frame limit of 8 bytes") as info:
        generator.send(b"6]\n[1]\n")
    assert info.value.remaining_data == b"[1]\n"

    # the newline already in the chunk: discarded at once
    generator = serializer.incremental_deserialize()
    next(generator)
    with pytest.raises(
        IncrementalDeserializeError, match="line of 12 bytes is over the frame limit of 8"
    ) as info:
        generator.send(b'"0123456789"\n[2]\n')
    assert info.value.remaining_data == b"[2]\n"

    # a line of exactly the limit is fine
    (packet, remaining), _ = drive(serializer.incremental_deserialize(), one_byte_at_a_time(b'"abcdef"\n'))
    assert (packet, remaining) == ("abcdef", b"")


# -- property: serialize, concatenate, split anywhere, receive ------------------------------------

texts = st.text(st.characters(codec="utf-8"), max_size=20) | st.sampled_from(["\n", "\r\n", '"\\', "\x00"])
finite_floats = st.floats(allow_nan=False, allow_infinity=False)
int64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
json_values = st.recursive(
    st.none() | st.booleans() | int64 | finite_floats | texts,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(texts, children, max_size=5),
    max_leaves=20,
)
records = st.builds(
    Record,
    name=texts,
    count=int64,
    tags=st.lists(texts, max_size=4),
    ratio=st.none() | finite_floats,
    extra=st.dictionaries(texts, int64, max_size=4),
)
PROPERTY_CASES: dict[str, tuple[AbstractIncrementalPacketSerializer[Any, Any], st.SearchStrategy[Any]]] = {
    "json": (JSONSerializer(), json_values),
    "length-prefixed": (LengthPrefixedSerializer(JSONSerializer()), json_values),
    "pydantic": (PydanticSerializer(Record), records),
}


@pytest.mark.parametrize("case", list(PROPERTY_CASES))
@settings(max_examples=100, deadline=None, database=None)
@given(data=st.data())
def test_packets_survive_any_split(case: str, data: st.DataObject) -> None:
    serializer, packets_strategy = PROPERTY_CASES[case]
    protocol = StreamProtocol(serializer)
    packets = data.draw(st.lists(packets_strategy, max_size=8), label="packets")
    stream = b"".join(protocol.serialize(packet) for packet in packets)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10), label="cuts"))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    receiver = protocol.receiver(data.draw(st.sampled_from([1, 3, 16, 65536]), label="max_recv_size"))

    received = []
    for chunk in chunks:
        receiver.feed(chunk)
        while (packet := receiver.next_packet()) is not NEED_DATA:
            received.append(packet)
    assert received == packets
    assert receiver.buffered_size() == 0
    assert receiver.next_packet() is NEED_DATA
