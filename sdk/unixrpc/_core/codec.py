"""What an RPC client does between method objects and envelopes: params
out, results, items and errors in. No I/O and no waiting.

Rules this module owns:

* A method is called as an instance of a concrete ``Method`` (``call``,
  ``notify``) or ``StreamMethod`` (``stream``) subclass; the class itself,
  or the wrong kind, is a ``TypeError`` that says what to write instead.
* A final message is a result (validated as the method's type) or an error
  (the registered ``RPCError`` subclass for its code); a stream item for a
  unary call is the server's mistake (``InvalidResultError``).
* Every descriptor of a received message ends up in exactly one place: a
  field that took it, or closed (validation failed, no field took it, the
  message was not a result).

Imports the typed layer (``methods``, ``fds``) and pydantic; never socket,
anyio, trio, asyncio or threading.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticSerializationError

from ..exceptions import InvalidResultError, RPCError, SerializeError
from ..fds import NO_FDS, FdContext, serialize
from ..methods import MethodSpec, method_spec
from .calls import close_fds
from .wire import ERROR, RESULT

__all__ = [
    "encode_params",
    "error_from_envelope",
    "final_value",
    "item_value",
    "spec_of",
    "stream_end",
]


def spec_of(method: Any, *, streaming: bool, api: str = "") -> MethodSpec:
    """The spec of a method instance, checking it is used the right way
    (*api*: the client method called, for the messages; ``call`` or
    ``stream`` by default).

    Raises:
        TypeError: not a method instance (the class itself, say), or a stream
            used with call() or the reverse.
    """
    spec = getattr(type(method), "__rpc_spec__", None)
    if spec is None or spec.method_class is not type(method):
        if isinstance(method, type):
            spec = getattr(method, "__rpc_spec__", None)
            if spec is not None and spec.method_class is method:
                api = api or ("stream" if streaming else "call")
                raise TypeError(
                    f"{api}() takes a method instance, not the class {method.__name__}: "
                    f"write client.{api}({method.__name__}(...))"
                )
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


def final_value(spec: MethodSpec, kind: str, envelope: dict[str, Any], fds: list[int]) -> Any:
    """The result carried by the final message of a unary call.

    Raises:
        RPCError: the server answered with an error (the registered subclass
            for its code).
        InvalidResultError: the result does not validate as the method's
            type, or the message is a stream item.
    """
    if kind == RESULT and not fds:  # the common case, without the descriptor bookkeeping
        codec = spec.codec or spec.result_codec()
        try:
            return codec.validator.validate_python(envelope["result"], context=NO_FDS)
        except ValidationError:
            pass  # _validated says why
    if kind == ERROR:
        raise error_from_envelope(envelope, fds)
    if kind != RESULT:
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
    if kind == ERROR:
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
