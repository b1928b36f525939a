"""Turning what a handler produced into reply bodies, and what a handler
raised into the error sent: typed results and items (FD fields with the
frame), typed errors, the ``InternalError`` of an unexpected exception, and
descriptors of values nobody will receive. Pure functions; no I/O.
"""

from __future__ import annotations

import logging
import traceback
from typing import Any, Literal

import orjson
from pydantic_core import PydanticSerializationError

from ...exceptions import InternalError, RPCError
from ...fds import FdContext, serialize
from ...methods import MethodSpec
from .codec import WireCodec

__all__ = ["discard_value", "encode_value", "error_body", "error_of", "log_outcome"]

logger = logging.getLogger("unixrpc.server")


def encode_value(spec: MethodSpec, value: Any, what: str) -> tuple[bytes, FdContext | None]:
    """The JSON of a result or item (*what*) of *spec*, and the descriptors
    it carries.

    Raises:
        InternalError: the value does not fit the method's type.
    """
    try:
        codec = spec.codec or spec.result_codec()
        # A value whose type could mismatch is encoded with warnings as
        # errors, which costs pydantic-core about 1 us per call (the
        # string argument): a value of exactly a plain class is spared.
        warnings: bool | Literal["error"] = False if type(value) is codec.trusted_type else "error"
        return serialize(codec.serializer, value, has_fds=codec.has_fds, warnings=warnings)
    except (PydanticSerializationError, ValueError) as exc:
        raise InternalError(f"handler of {spec.name} returned an invalid {what}: {exc}") from None


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


def error_of(name: str, exc: BaseException, expose_tracebacks: bool) -> RPCError:
    """What a handler's exception is sent as: a typed error as itself, any
    other as an ``InternalError`` (logged; its traceback sent only if the
    server exposes them)."""
    if isinstance(exc, RPCError):
        return exc
    logger.error("handler of %s raised", name, exc_info=exc)
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


def log_outcome(name: str, call_id: int | None, pid: int, uid: int, body: bytes | None, ms: float) -> None:
    """The DEBUG line of a call that ended."""
    if body is None:
        outcome = "no reply"
    elif b',"result":' in body[:40]:
        outcome = "ok"
    else:
        try:
            outcome = str(orjson.loads(body)["error"]["code"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            outcome = "?"
    logger.debug("call %s id=%s from pid %d uid %d: %s in %.2f ms", name, call_id, pid, uid, outcome, ms)
