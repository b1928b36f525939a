"""The unixrpc wire as the server connection sees it (docs/protocol.md):
a frame's JSON body decoded into one message, and replies encoded into
frame bodies and frames. Implements :class:`.codec.WireCodec`; a second
wire (varlink) implements the same interface with its own ordering rule.

No I/O; orjson only.
"""

from __future__ import annotations

from typing import Any, Final

import orjson

from .. import wire
from .codec import CANCEL, CREDIT, INVALID, REQUEST, Message

__all__ = ["UnixrpcCodec"]

_NO_PARAMS: Final[dict[str, Any]] = {}  # a request without "params" (pydantic never writes to input)


class UnixrpcCodec:
    """The unixrpc envelope: JSON-RPC 2.0's shape plus cancel, credit and
    stream items. Replies may go in any order (they carry ids); streams
    are paced by credit."""

    __slots__ = ()

    #: the wire's name, for the log
    name = "unixrpc"
    #: replies carry ids: a call may be answered before one received earlier
    ordered = False
    #: a stream sends at most its window ahead of the client's credit
    credit = True

    def decode(self, body: bytes) -> Message:
        """The message in a frame's *body* (never raises: a body that is no
        valid envelope is an ``INVALID`` message, with the id to answer if
        one could be read)."""
        envelope: Any = None
        try:
            envelope = orjson.loads(body)
            kind = wire.classify(envelope)
        except (orjson.JSONDecodeError, ValueError) as exc:
            call_id = envelope.get("id") if type(envelope) is dict else None
            return (INVALID, call_id if wire.is_call_id(call_id) else None, f"invalid envelope: {exc}")
        if kind == wire.REQUEST or kind == wire.NOTIFICATION:
            return (
                REQUEST,
                envelope.get("id"),
                envelope["method"],
                envelope.get("params", _NO_PARAMS),
                envelope.get("stream"),
            )
        if kind == wire.CANCEL:
            return (CANCEL, envelope["cancel"])
        if kind == wire.CREDIT:
            return (CREDIT, envelope["credit"], envelope["n"])
        return (INVALID, None, f"a client may not send {kind} messages")

    #: the bodies of replies, and a body as it goes on the socket (the wire's functions)
    result = staticmethod(wire.encode_result)
    item = staticmethod(wire.encode_item)
    error = staticmethod(wire.encode_error)
    frame = staticmethod(wire.frame)
