"""Property-based fuzz of the core's frame and envelope decoding (hypothesis).

Framing: a stream of frames (valid ones, oversized ones, ones declaring too
many descriptors, garbage, a partial frame at the end) is fed to a
``PacketReceiver`` over ``FrameSerializer`` in arbitrary chunks, as a
transport reads it. Whatever the chunking, the frames and errors are those
of a reference decoder written from docs/protocol.md; an oversized frame is
refused from its header, and no buffer is ever larger than the read size or
the frame being received.

Envelopes: ``wire.classify`` on arbitrary JSON values (and on whatever
arbitrary bytes decode to) returns a kind or raises ValueError, nothing
else; every envelope it accepts, re-encoded with the ``wire.encode_*``
functions, decodes to the same kind and the same fields.

Bytes in, events out: no sockets. ``make test`` runs a bounded number of
examples; ``make stress`` (HYPOTHESIS_PROFILE=stress) runs many more.
"""

from __future__ import annotations

import itertools
import struct
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from unixrpc import StreamProtocolParseError
from unixrpc._core import wire
from unixrpc._core.framing import FrameSerializer
from unixrpc.protocol import NEED_DATA, PacketReceiver, StreamProtocol

pytestmark = pytest.mark.fuzz

HEADER = struct.Struct(">IH")  # written out again from the spec, not taken from the code under test


# -- framing --------------------------------------------------------------------------------------


def reference_decode(stream: bytes, max_size: int, max_fds: int) -> list[tuple[Any, ...]]:
    """The events a receiver must report for *stream*: ("frame", body, nfds)
    or ("error", message), in order. A frame over a limit is reported as soon
    as its header is in, and its declared body is skipped."""
    events: list[tuple[Any, ...]] = []
    pos = 0
    while len(stream) - pos >= HEADER.size:
        size, nfds = HEADER.unpack_from(stream, pos)
        body_start = pos + HEADER.size
        if size > max_size:
            events.append(("error", f"frame of {size} bytes is over the limit of {max_size} bytes"))
        elif nfds > max_fds:
            events.append(("error", f"frame declares {nfds} file descriptors, over the limit of {max_fds}"))
        elif body_start + size <= len(stream):
            events.append(("frame", stream[body_start : body_start + size], nfds))
        else:
            break  # a partial frame: nothing yet
        pos = body_start + size
    return events


def pending_frame_extent(stream: bytes, consumed_events: int, max_size: int, max_fds: int) -> int | None:
    """Size (header included) of the frame being received after the first
    *consumed_events* events of *stream*, if its header is in and it is
    within the limits; None otherwise."""
    pos = 0
    seen = 0
    while len(stream) - pos >= HEADER.size:
        size, nfds = HEADER.unpack_from(stream, pos)
        if seen == consumed_events:
            if size > max_size or nfds > max_fds:
                return None
            return HEADER.size + size
        seen += 1
        pos += HEADER.size + size
    return None


def frames_strategy(max_size: int, max_fds: int) -> st.SearchStrategy[bytes]:
    body = st.binary(max_size=max_size)
    valid = st.builds(
        lambda b, n: HEADER.pack(len(b), n) + b, body, st.integers(min_value=0, max_value=max_fds)
    )
    oversized = st.builds(
        lambda b: HEADER.pack(len(b), 0) + b, st.binary(min_size=max_size + 1, max_size=2 * max_size + 8)
    )
    too_many_fds = st.builds(
        lambda b, n: HEADER.pack(len(b), n) + b,
        body,
        st.integers(min_value=max_fds + 1, max_value=max_fds + 3),
    )
    garbage = st.binary(min_size=1, max_size=16)  # may declare up to 4 GiB: refused, never buffered
    piece = st.one_of(valid, valid, valid, oversized, too_many_fds, garbage)
    return st.lists(piece, max_size=12).map(b"".join)


@st.composite
def framing_cases(draw: st.DrawFn) -> tuple[bytes, int, int, int, list[int]]:
    max_size = draw(st.integers(min_value=1, max_value=300))
    max_fds = draw(st.integers(min_value=0, max_value=4))
    stream = draw(frames_strategy(max_size, max_fds))
    tail = draw(st.integers(min_value=0, max_value=len(stream)))  # the stream may stop anywhere
    stream = stream[:tail] if draw(st.booleans()) else stream
    recv_size = draw(st.sampled_from([1, 2, 7, 16, 64, 256, 4096]))
    cuts = sorted(draw(st.lists(st.integers(min_value=0, max_value=len(stream)), max_size=20)))
    return stream, max_size, max_fds, recv_size, cuts


def chunks(stream: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *cuts, len(stream)]
    return [stream[a:b] for a, b in itertools.pairwise(bounds) if b > a]


def drain(receiver: PacketReceiver[wire.RawFrame], events: list[tuple[Any, ...]], batch: bool) -> None:
    while True:
        try:
            if batch:
                packets = receiver.next_packets()
                if not packets:
                    return
                events.extend(("frame", p.body, p.nfds) for p in packets)
                continue
            packet = receiver.next_packet()
        except StreamProtocolParseError as exc:
            events.append(("error", str(exc.error)))
            continue
        if packet is NEED_DATA:
            return
        events.append(("frame", packet.body, packet.nfds))


def bound(recv_size: int, extent: int | None) -> int:
    """The largest buffer allowed: a read, or the frame being received. (With
    a read size under two headers, a few more bytes while a header is still
    incomplete: the frame's size is not known yet.)"""
    if recv_size < 2 * HEADER.size:
        recv_size = max(recv_size + HEADER.size - 1, 2 * HEADER.size)
    return max(recv_size, extent or 0)


def receive(
    stream: bytes,
    pieces: list[bytes],
    max_size: int,
    max_fds: int,
    recv_size: int,
    batch: bool,
    keep: bool = False,
) -> list[tuple[Any, ...]]:
    """Feed *pieces* as a transport reads them (into get_buffer views, taking
    packets after each read), checking the buffer's bounds all along. With
    *keep* (``keep_large``), a buffer grown for an earlier frame may be kept:
    never larger than the largest frame received so far."""
    serializer = FrameSerializer(max_frame_size=max_size, max_fds=max_fds)
    receiver = StreamProtocol(serializer).receiver(recv_size, keep_large=keep)
    events: list[tuple[Any, ...]] = []
    largest = 0  # the largest frame begun so far (what a kept buffer may be)
    for piece in pieces:
        offset = 0
        while offset < len(piece):
            view = receiver.get_buffer()
            assert 1 <= len(view) <= recv_size
            extent = pending_frame_extent(stream, len(events), max_size, max_fds)
            largest = max(largest, extent or 0) if keep else 0
            assert receiver.allocated_size() <= max(bound(recv_size, extent), largest), (
                "larger than a read and the frame"
            )
            count = min(len(view), len(piece) - offset)
            view[:count] = piece[offset : offset + count]
            del view
            receiver.buffer_updated(count)
            offset += count
            drain(receiver, events, batch)
            extent = pending_frame_extent(stream, len(events), max_size, max_fds)
            largest = max(largest, extent or 0) if keep else 0
            assert receiver.allocated_size() <= max(bound(recv_size, extent), largest)
            # what is kept is never more than the frame being received
            assert receiver.buffered_size() <= max(extent or 0, HEADER.size - 1)
    return events


@given(framing_cases(), st.booleans(), st.booleans())
def test_any_chunking_gives_the_reference_frames_and_errors(
    case: tuple[bytes, int, int, int, list[int]], batch: bool, keep: bool
) -> None:
    stream, max_size, max_fds, recv_size, cuts = case
    expected = reference_decode(stream, max_size, max_fds)
    assert receive(stream, chunks(stream, cuts), max_size, max_fds, recv_size, batch, keep) == expected
    assert receive(stream, [stream], max_size, max_fds, recv_size, batch, keep) == expected
    one_by_one = [stream[i : i + 1] for i in range(min(len(stream), 1500))]
    assert receive(stream, one_by_one, max_size, max_fds, recv_size, batch, keep) == reference_decode(
        stream[:1500], max_size, max_fds
    )


@given(
    st.integers(min_value=2**23, max_value=2**32 - 1),  # more than the 64 reads below
    st.integers(min_value=0, max_value=2**16 - 1),
    st.sampled_from([1, 64, 65536]),
)
def test_an_oversized_header_is_refused_before_its_body_is_buffered(
    size: int, nfds: int, recv_size: int
) -> None:
    receiver = StreamProtocol(FrameSerializer(max_frame_size=2**20)).receiver(recv_size)
    receiver.feed(HEADER.pack(size, nfds))
    with pytest.raises(StreamProtocolParseError, match=f"frame of {size} bytes is over the limit"):
        receiver.next_packet()
    for _ in range(64):  # its body, as it arrives (read by read), is dropped: nothing kept or grown
        view = receiver.get_buffer()
        view[:] = b"\xff" * len(view)
        receiver.buffer_updated(len(view))
        del view
        assert receiver.next_packet() is NEED_DATA
        assert receiver.buffered_size() == 0
        assert receiver.allocated_size() == recv_size


@given(st.integers(min_value=0, max_value=2**20), st.sampled_from([64, 4096, 65536]))
def test_a_frame_is_received_into_a_buffer_of_at_most_its_size(body_size: int, recv_size: int) -> None:
    serializer = FrameSerializer(max_frame_size=2**20)
    receiver = StreamProtocol(serializer).receiver(recv_size)
    frame = serializer.frame_bytes(b"z" * body_size)
    largest = 0
    for offset in range(0, len(frame), recv_size):
        view = receiver.get_buffer()
        largest = max(largest, receiver.allocated_size())
        count = min(len(view), len(frame) - offset)
        view[:count] = frame[offset : offset + count]
        del view
        receiver.buffer_updated(count)
        largest = max(largest, receiver.allocated_size())
    packets = receiver.next_packets()
    assert [len(p.body) for p in packets] == [body_size] or (
        not packets and receiver.next_packet().body == b"z" * body_size  # type: ignore[union-attr]
    )
    assert largest <= max(recv_size, len(frame))
    assert receiver.allocated_size() == recv_size


# -- envelopes ------------------------------------------------------------------------------------

KINDS = {wire.REQUEST, wire.NOTIFICATION, wire.RESULT, wire.ERROR, wire.ITEM, wire.CANCEL, wire.CREDIT}
text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12)
ints = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.sampled_from([0, 1, -1, 2**63 - 1, 2**63, 2**64 - 1]),
)
scalars = st.one_of(st.none(), st.booleans(), ints, st.floats(allow_nan=False, allow_infinity=False), text)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
    max_leaves=12,
)
FIELDS = ["id", "method", "params", "stream", "result", "item", "error", "cancel", "credit", "n"]
error_objects = st.fixed_dictionaries(
    {"code": st.one_of(text, json_values)}, optional={"message": json_values, "data": json_values}
)
envelope_like = st.dictionaries(
    st.sampled_from(FIELDS), st.one_of(json_values, ints, error_objects, text), max_size=5
)


def classify_or_value_error(value: object) -> str | None:
    try:
        kind = wire.classify(value)
    except ValueError:
        return None
    assert kind in KINDS
    return kind


def reencode(kind: str, env: dict[str, Any]) -> bytes:
    dumps = orjson.dumps
    if kind == wire.REQUEST:
        return wire.encode_request(
            env["id"], dumps(env["method"]), dumps(env.get("params")), env.get("stream")
        )
    if kind == wire.NOTIFICATION:
        return wire.encode_notification(dumps(env["method"]), dumps(env.get("params")))
    if kind == wire.RESULT:
        return wire.encode_result(env["id"], dumps(env["result"]))
    if kind == wire.ITEM:
        return wire.encode_item(env["id"], dumps(env["item"]))
    if kind == wire.ERROR:
        error = env["error"]
        return wire.encode_error(env["id"], error["code"], error.get("message"), error.get("data"))
    if kind == wire.CANCEL:
        return wire.encode_cancel(env["cancel"])
    assert kind == wire.CREDIT
    return wire.encode_credit(env["credit"], env["n"])


def fields_of(kind: str, env: dict[str, Any]) -> dict[str, Any]:
    """What an envelope of *kind* means (absent and null params, data and
    stream mean the same)."""
    if kind in (wire.REQUEST, wire.NOTIFICATION):
        meaning = {"method": env["method"], "params": env.get("params")}
        if kind == wire.REQUEST:
            meaning.update(id=env["id"], stream=env.get("stream"))
        return meaning
    if kind == wire.ERROR:
        error = env["error"]
        return {
            "id": env["id"],
            "code": error["code"],
            "message": error.get("message"),
            "data": error.get("data"),
        }
    if kind == wire.CANCEL:
        return {"cancel": env["cancel"]}
    if kind == wire.CREDIT:
        return {"credit": env["credit"], "n": env["n"]}
    field = "result" if kind == wire.RESULT else "item"
    return {"id": env["id"], field: env[field]}


@given(st.one_of(json_values, envelope_like))
def test_classify_gives_a_kind_or_value_error_and_accepted_envelopes_reencode(value: object) -> None:
    kind = classify_or_value_error(value)
    if kind is None:
        return
    assert isinstance(value, dict)
    try:
        data = reencode(kind, value)
    except orjson.JSONEncodeError:
        return  # an int over 64 bits inside params or a result: the sender could not have encoded it
    decoded = orjson.loads(data)
    assert wire.classify(decoded) == kind
    assert fields_of(kind, decoded) == fields_of(kind, value)


@given(st.binary(max_size=64) | envelope_like.map(orjson.dumps))
def test_classify_on_whatever_bytes_decode_to_raises_only_value_error(data: bytes) -> None:
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:  # a ValueError too: the connection reports a protocol error
        return
    classify_or_value_error(value)
