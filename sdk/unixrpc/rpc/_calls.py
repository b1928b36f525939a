"""What both RPC clients do between the wire and the caller: build request
frames from method objects, decode received frames, and turn final messages
into results or exceptions. No I/O and no waiting.
"""

from __future__ import annotations

from typing import Any

import orjson
from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticSerializationError

from .._core import wire
from .._core.calls import FdQueue, close_fds
from ..ancillary import SocketAncillary
from ..exceptions import (
    ClientClosedError,
    ConnectionBrokenError,
    InvalidResultError,
    RemoteProtocolError,
    RPCError,
    SerializeError,
)
from ..fds import FdContext, serialize
from ..methods import MethodSpec, method_spec

__all__ = [
    "broken_error",
    "connection_error",
    "decode_frame",
    "encode_params",
    "error_from_envelope",
    "final_value",
    "item_value",
    "outgoing",
    "spec_of",
    "stream_end",
]


def broken_error(broken: BaseException | None) -> Exception:
    """A fresh exception to raise in a caller because the connection failed
    with *broken* (each caller gets its own, chained to the cause)."""
    if isinstance(broken, ClientClosedError):
        return ClientClosedError("client is closed")
    if isinstance(broken, RPCError):
        return RPCError.from_wire(broken.code, broken.message, broken.data)
    error = ConnectionBrokenError(f"connection is broken: {broken}")
    error.__cause__ = broken
    return error


def connection_error(envelope: dict[str, Any]) -> RPCError:
    """The error of an envelope with ``"id": null``: about the connection as a whole."""
    error = envelope["error"]
    return RPCError.from_wire(error["code"], str(error.get("message", "")), error.get("data"))


def spec_of(method: BaseModel, *, streaming: bool) -> MethodSpec:
    """The spec of a method instance, checking it is used the right way.

    Raises:
        TypeError: not a method instance, or a stream used with call() or the
            reverse.
    """
    spec = getattr(type(method), "__rpc_spec__", None)
    if spec is None or spec.method_class is not type(method):
        spec = method_spec(type(method))
    if spec.streaming != streaming:
        if streaming:
            raise TypeError(f"{type(method).__name__} is not a StreamMethod: use call() or notify()")
        raise TypeError(f"{type(method).__name__} is a StreamMethod: iterate over client.stream() instead")
    return spec


def encode_params(method: BaseModel, spec: MethodSpec) -> tuple[bytes, FdContext | None]:
    """The JSON of a method's params, and the descriptors of its FD fields
    (None when it has none).

    Raises:
        SerializeError: a field cannot be encoded (e.g. a closed FileDescriptor).
    """
    try:
        return serialize(method.__pydantic_serializer__, method, has_fds=spec.params_have_fds)
    except (PydanticSerializationError, ValueError) as exc:
        raise SerializeError(f"cannot encode {type(method).__name__}: {exc}") from None


def outgoing(body: bytes, fd_context: FdContext | None) -> tuple[wire.RawFrame, SocketAncillary | None]:
    """The frame for *body* and the ancillary data carrying its descriptors."""
    if fd_context is None or not fd_context.outgoing:
        return wire.RawFrame(body), None
    ancillary = SocketAncillary()
    ancillary.add_fds(handle.fileno() for handle in fd_context.outgoing)
    return wire.RawFrame(body, len(fd_context.outgoing)), ancillary


def decode_frame(frame: wire.RawFrame, fd_queue: FdQueue) -> tuple[str, dict[str, Any], list[int]]:
    """Decode a received frame: its kind, envelope and descriptors (owned by
    the caller from now on).

    Raises:
        RemoteProtocolError: the frame is not a valid envelope, or declares
            descriptors that never arrived.
    """
    try:
        fds = fd_queue.take(frame.nfds)
    except ValueError as exc:
        raise RemoteProtocolError(f"peer broke the protocol: {exc}") from None
    try:
        envelope = orjson.loads(frame.body)
        kind = wire.classify(envelope)
    except (orjson.JSONDecodeError, ValueError) as exc:
        close_fds(fds)
        raise RemoteProtocolError(f"peer sent an invalid envelope: {exc}") from None
    return kind, envelope, fds


def final_value(spec: MethodSpec, kind: str, envelope: dict[str, Any], fds: list[int]) -> Any:
    """The result carried by a final message.

    Raises:
        RPCError: the server answered with an error (the registered subclass
            for its code).
        InvalidResultError: the result does not validate as the method's type.
    """
    if kind == wire.ERROR:
        raise error_from_envelope(envelope, fds)
    if kind != wire.RESULT:
        close_fds(fds)
        raise InvalidResultError(f"server sent a stream item in reply to {spec.name}, which is not a stream")
    return _validated(spec, envelope["result"], fds, "result")


def error_from_envelope(envelope: dict[str, Any], fds: list[int]) -> RPCError:
    """The exception for an error envelope; FD fields of a typed error take
    their descriptors, the others are closed."""
    error = envelope["error"]
    fd_context = FdContext(fds)
    result = RPCError.from_wire(
        error["code"], str(error.get("message", "")), error.get("data"), context=fd_context.pydantic_context
    )
    if type(result).__rpc_data_model__ is None:
        fd_context.abort()  # no typed fields took them (or the data did not fit the class)
    else:
        fd_context.finish()
    return result


def stream_end(kind: str, envelope: dict[str, Any], fds: list[int]) -> None:
    """Check the final message of a stream (its result is null).

    Raises:
        RPCError: the stream ended with an error.
    """
    if kind == wire.ERROR:
        raise error_from_envelope(envelope, fds)
    close_fds(fds)


def item_value(spec: MethodSpec, envelope: dict[str, Any], fds: list[int]) -> Any:
    """The item carried by a stream item message.

    Raises:
        InvalidResultError: the item does not validate as the stream's type.
    """
    return _validated(spec, envelope["item"], fds, "item")


def _validated(spec: MethodSpec, value: Any, fds: list[int], what: str) -> Any:
    fd_context = FdContext.receiving(fds)
    try:
        result = spec.result_adapter.validator.validate_python(value, context=fd_context.pydantic_context)
    except ValidationError as exc:
        fd_context.abort()
        raise InvalidResultError(
            f"server sent an invalid {what} for {spec.name}: {exc}", error_info=exc.errors(include_url=False)
        ) from None
    fd_context.finish()
    return result
