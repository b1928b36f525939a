"""Turning what a handler produced into reply bodies, and what a handler
raised into the error sent: typed results and items (FD fields with the
frame), typed errors, the ``InternalError`` of an unexpected exception, and
descriptors of values nobody will receive. Pure functions; no I/O.
"""

from __future__ import annotations

import logging
import traceback
from typing import Any

import orjson

from ...exceptions import InternalError, RPCError
from ...fds import FdContext, serialize
from ...methods import MethodSpec
from .codec import WireCodec

__all__ = ["discard_value", "error_body", "error_of", "log_call", "log_invalid", "outcome_of"]

logger = logging.getLogger("unixrpc.server")


def log_invalid(exc: InternalError, value: Any) -> None:
    """An invalid result or item, on the server with the detail (the
    client's error, *exc*, names only the kind of value, never the value)."""
    logger.error("%s (a %s: %.200r)", exc.message, type(value).__name__, value)


def discard_value(spec: MethodSpec, value: Any) -> None:
    """*value* was produced for a call nobody will answer with it: the
    descriptors it hands over (``FileDescriptor.transfer``) are closed, as a
    frame that could not be sent closes them."""
    if value is None:
        return
    try:
        codec = spec.codec or spec.result_codec()
        if not codec.has_fds:
            return
        _, fds = serialize(codec.serializer, value, has_fds=True, warnings=False)
    except Exception:  # a value that does not even encode: nothing of ours to close
        return
    if fds is not None:
        fds.sent()


def error_of(
    name: str,
    exc: BaseException,
    expose_tracebacks: bool,
    who: str = "",
    fields: dict[str, Any] | None = None,
) -> RPCError:
    """What a handler's exception is sent as: a typed error as itself, any
    other as an ``InternalError`` (logged with the traceback, and *who*
    called: its traceback sent only if the server exposes them)."""
    if isinstance(exc, RPCError):
        return exc
    logger.error("handler of %s raised%s", name, who, exc_info=exc, extra=fields)
    data = {"traceback": "".join(traceback.format_exception(exc))} if expose_tracebacks else None
    return InternalError(f"handler of {name} raised {type(exc).__name__}", data=data)


def error_body(codec: WireCodec, call_id: int, error: RPCError) -> tuple[bytes, FdContext | None]:
    """The body of *error* for *call_id*, and the descriptors its typed
    fields carry (FD fields go with the frame)."""
    fields = getattr(error, "_rpc_fields", None)
    if fields is None:
        return codec.error(call_id, error.code, error.message, error.data), None
    fds = FdContext()
    data = orjson.loads(fields.__pydantic_serializer__.to_json(fields, context=fds.pydantic_context))
    return codec.error(call_id, error.code, error.message, data), (fds if fds.outgoing else None)


def outcome_of(body: bytes | None) -> str:
    """What a final reply says, for the log: ok, no reply, or the error's code."""
    if body is None:
        return "no reply"
    if b',"result":' in body[:40] or body.startswith(b'{"parameters"'):
        return "ok"
    try:
        error = orjson.loads(body)["error"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return "?"
    return str(error["code"] if isinstance(error, dict) else error)


def log_call(name: str, call_id: int | None, pid: int, uid: int, outcome: str, ms: float | None) -> None:
    """The one DEBUG line of a call that reached the server, refusals
    included, with its fields for structured logs (``extra``:
    ``unixrpc_method``, ``unixrpc_call_id``, ``unixrpc_peer_pid``,
    ``unixrpc_peer_uid``, ``unixrpc_outcome``, ``unixrpc_duration_ms``;
    the journal handler sends them as ``UNIXRPC_METHOD=`` and so on)."""
    fields = {
        "unixrpc_method": name,
        "unixrpc_call_id": call_id,
        "unixrpc_peer_pid": pid,
        "unixrpc_peer_uid": uid,
        "unixrpc_outcome": outcome,
        "unixrpc_duration_ms": ms,
    }
    if ms is None:
        logger.debug("call %s id=%s from pid %d uid %d: %s", name, call_id, pid, uid, outcome, extra=fields)
    else:
        line = "call %s id=%s from pid %d uid %d: %s in %.2f ms"
        logger.debug(line, name, call_id, pid, uid, outcome, ms, extra=fields)
