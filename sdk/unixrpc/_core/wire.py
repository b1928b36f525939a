"""The unixrpc wire format: frame header and envelopes (see docs/protocol.md).

Rules this module owns:

* A frame is ``u32 body length | u16 fd count`` (big-endian) + body. The fd
  count says how many descriptors, sent as ``SCM_RIGHTS`` with the frame's
  first byte, belong to the frame.
* The body is one JSON object, the envelope, of one of these kinds:
  request ``{"id", "method", "params"[, "stream"]}``, notification
  ``{"method", "params"}``, result ``{"id", "result"}``, error ``{"id",
  "error": {"code", "message"[, "data"]}}``, stream item ``{"id", "item"}``,
  cancel ``{"cancel": id}``, credit ``{"credit": id, "n"}``.
* Encoding uses orjson; params, results and items arrive already encoded
  (pydantic-core JSON) and are spliced in without re-parsing.

No I/O here, and no socket, anyio, trio, asyncio or threading imports.
"""

from __future__ import annotations

import struct
from typing import Any, Final, NamedTuple

import orjson

__all__ = [
    "DEFAULT_MAX_FDS_PER_FRAME",
    "DEFAULT_MAX_FRAME_SIZE",
    "HEADER",
    "frame",
    "HEADER_SIZE",
    "KERNEL_MAX_FDS",
    "RawFrame",
    "classify",
    "ID_LIMIT",
    "is_call_id",
    "encode_cancel",
    "encode_credit",
    "encode_error",
    "encode_item",
    "encode_notification",
    "encode_request",
    "encode_result",
]

HEADER: Final = struct.Struct(">IH")
HEADER_SIZE: Final = HEADER.size
_pack = HEADER.pack


def frame(body: bytes, nfds: int = 0) -> bytes:
    """The frame of *body*, declaring *nfds* descriptors: the one place a
    header is packed (the client's and server's cores, refusals)."""
    return _pack(len(body), nfds) + body


DEFAULT_MAX_FRAME_SIZE: Final = 16 * 1024 * 1024
#: The kernel's SCM_MAX_FD: the most descriptors one sendmsg can carry.
KERNEL_MAX_FDS: Final = 253
DEFAULT_MAX_FDS_PER_FRAME: Final = KERNEL_MAX_FDS
#: Bytes per read for RPC clients: large frames arrive in fewer syscalls.
RECV_SIZE: Final = 256 * 1024
#: Bytes per read for server connections: also the receive buffer every
#: connection keeps between frames (4,096 connections x 64 KiB = 256 MiB).
SERVER_RECV_SIZE: Final = 64 * 1024

#: Envelope kinds returned by :func:`classify`.
REQUEST: Final = "request"
NOTIFICATION: Final = "notification"
RESULT: Final = "result"
ERROR: Final = "error"
ITEM: Final = "item"
CANCEL: Final = "cancel"
CREDIT: Final = "credit"


class RawFrame(NamedTuple):
    """One frame: its JSON body and how many descriptors belong to it."""

    body: bytes
    nfds: int = 0


def _id(call_id: int | None) -> bytes:
    return b"null" if call_id is None else str(call_id).encode()


def encode_request(call_id: int, method: bytes, params: bytes, stream_window: int | None = None) -> bytes:
    """A request envelope; *method* is the JSON-encoded name, *params* JSON."""
    if stream_window is None:
        return b'{"id":%d,"method":%b,"params":%b}' % (call_id, method, params)
    return b'{"id":%d,"method":%b,"params":%b,"stream":%d}' % (call_id, method, params, stream_window)


def encode_notification(method: bytes, params: bytes) -> bytes:
    """A notification envelope (no id: no reply)."""
    return b'{"method":%b,"params":%b}' % (method, params)


def encode_result(call_id: int, result: bytes) -> bytes:
    """A result envelope; *result* is JSON."""
    return b'{"id":%d,"result":%b}' % (call_id, result)


def encode_item(call_id: int, item: bytes) -> bytes:
    """A stream item envelope; *item* is JSON."""
    return b'{"id":%d,"item":%b}' % (call_id, item)


def encode_error(call_id: int | None, code: str, message: str, data: Any = None) -> bytes:
    """An error envelope (``call_id`` None for errors about no call in particular).

    Data that orjson cannot encode is replaced by its ``repr``."""
    error: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    try:
        encoded = orjson.dumps(error)
    except TypeError:
        error["data"] = repr(data)
        encoded = orjson.dumps(error)
    return b'{"id":' + _id(call_id) + b',"error":' + encoded + b"}"


def encode_cancel(call_id: int) -> bytes:
    """Ask the server to cancel call *call_id*."""
    return b'{"cancel":%d}' % call_id


def encode_credit(call_id: int, count: int) -> bytes:
    """Allow the server *count* more items on stream *call_id*."""
    return b'{"credit":%d,"n":%d}' % (call_id, count)


#: call ids are integers in 0..ID_LIMIT-1
ID_LIMIT: Final = 2**63


def is_call_id(value: object) -> bool:
    """True for a valid call id: an integer in 0..2**63-1 (not a bool)."""
    return type(value) is int and 0 <= value < ID_LIMIT


def classify(envelope: object) -> str:
    """Return the kind of a decoded envelope.

    Raises:
        ValueError: it is not a valid envelope (the message says why).
    """
    if type(envelope) is not dict:
        raise ValueError(f"envelope must be a JSON object, got {type(envelope).__name__}")
    if "method" in envelope:
        if type(envelope["method"]) is not str:
            raise ValueError('"method" must be a string')
        if "id" not in envelope:
            return NOTIFICATION
        call_id = envelope["id"]
        if type(call_id) is not int or not 0 <= call_id < ID_LIMIT:  # is_call_id, inline: every request
            raise ValueError('"id" must be an integer in 0..2**63-1')
        stream = envelope.get("stream")
        if stream is not None and (not is_call_id(stream) or stream == 0):
            raise ValueError('"stream" must be a positive integer window')
        return REQUEST
    if "cancel" in envelope:
        if not is_call_id(envelope["cancel"]):
            raise ValueError('"cancel" must be a call id')
        return CANCEL
    if "credit" in envelope:
        if not is_call_id(envelope["credit"]) or not is_call_id(envelope.get("n")):
            raise ValueError('"credit" needs a call id and a count "n"')
        return CREDIT
    if "id" not in envelope:
        raise ValueError("envelope has none of method, id, cancel, credit")
    call_id = envelope["id"]
    if "result" in envelope:
        kind = RESULT
    elif "item" in envelope:
        kind = ITEM
    elif "error" in envelope:
        error = envelope["error"]
        if type(error) is not dict or type(error.get("code")) is not str:
            raise ValueError('"error" must be an object with a string "code"')
        kind = ERROR
        if call_id is None:
            return kind
    else:
        raise ValueError("envelope with an id has none of result, item, error")
    if type(call_id) is not int or not 0 <= call_id < ID_LIMIT:  # is_call_id, inline: every reply
        raise ValueError('"id" must be an integer in 0..2**63-1')
    return kind
