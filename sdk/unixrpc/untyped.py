"""Untyped calls: a method named at run time, JSON params in, JSON out.

For tools and scripts that know a method only by its wire name (the
``unixrpc`` command, a test poking a daemon). Owns :class:`JSONReply` and
the method classes made on the fly for a wire name (cached per name), which
the clients send like any other method: the clients need nothing of their
own for it. No I/O.

Descriptors: the caller passes the ones to send in ``fds=`` and refers to
them in the params by index (0 is the first), as the wire does; the
descriptors that come back are in :attr:`JSONReply.fds`, and the JSON holds
their indices where the method's schema has ``FD`` fields.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, GetCoreSchemaHandler, ValidationInfo, model_serializer
from pydantic_core import core_schema

from .exceptions import LocalProtocolError
from .fds import FD, FdContext, FileDescriptor
from .methods import Method, StreamMethod

__all__ = ["JSONReply", "untyped_call", "untyped_stream"]

_CACHED_NAMES = 256


class JSONReply:
    """The result (or one stream item) of an untyped call: plain JSON, and
    the file descriptors that came with it.

    Attributes:
        value: the result or item as the server sent it (dicts, lists, str,
            int, float, bool, None). Where the method's schema has an ``FD``
            field, the value is an index into :attr:`fds`.
        fds: the descriptors that came with the reply, in order, each a
            :class:`~unixrpc.FileDescriptor` you own: close them (or leave
            the reply's ``with`` block, which closes those you did not
            ``detach()``).
    """

    __slots__ = ("fds", "value")

    def __init__(self, value: Any, fds: list[FileDescriptor] | None = None) -> None:
        self.value = value
        self.fds: list[FileDescriptor] = fds if fds is not None else []

    def close(self) -> None:
        """Close every descriptor of the reply (those still owned). Idempotent."""
        for handle in self.fds:
            handle.close()

    def __enter__(self) -> JSONReply:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, JSONReply) and other.value == self.value and other.fds == self.fds

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        if self.fds:
            return f"JSONReply({self.value!r}, fds={[h.fileno() for h in self.fds]!r})"
        return f"JSONReply({self.value!r})"


def _as_reply(value: Any, info: ValidationInfo) -> JSONReply:
    """The validator of an untyped result: the JSON as it came, and every
    descriptor of the frame (taken from the frame's FdContext)."""
    if isinstance(value, JSONReply):
        return value
    context = info.context.get("unixrpc.fds") if isinstance(info.context, dict) else None
    fds = context.take_all() if isinstance(context, FdContext) else []
    return JSONReply(value, fds)


def _reply_core_schema(source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
    return core_schema.with_info_plain_validator_function(_as_reply)


JSONReply.__get_pydantic_core_schema__ = staticmethod(_reply_core_schema)  # type: ignore[attr-defined]
_Reply = JSONReply


class _UntypedParams(BaseModel):
    """What an untyped call sends: its params as given, and the descriptors
    (the serializer writes only the params; the descriptors are collected
    by the FD fields, which the frame carries)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    params: dict[str, Any]
    fds: list[FD] = []

    @model_serializer(mode="wrap")
    def _wire_form(self, handler: Any) -> Any:
        encoded = handler(self)
        return encoded["params"]


class _UntypedMethod(_UntypedParams, Method[_Reply]):
    """An untyped call (made per wire name by :func:`_method_class`)."""


class _UntypedStreamMethod(_UntypedParams, StreamMethod[_Reply]):
    """An untyped stream (made per wire name by :func:`_method_class`)."""


@functools.lru_cache(maxsize=_CACHED_NAMES)
def _method_class(name: str, streaming: bool) -> type[Any]:
    base = _UntypedStreamMethod if streaming else _UntypedMethod
    namespace = {"__module__": __name__, "__qualname__": f"untyped[{name!r}]"}
    cls = types.new_class(f"untyped[{name!r}]", (base,), {"name": name}, lambda ns: ns.update(namespace))
    return cls


def _instance(name: str, params: Mapping[str, Any] | None, fds: Iterable[Any], streaming: bool) -> Any:
    if not isinstance(name, str) or not name:
        raise TypeError(f"the method name must be a non-empty string, got {name!r}")
    if params is None:
        params = {}
    if not isinstance(params, Mapping):
        raise TypeError(f"params must be a JSON object (a dict), got {type(params).__name__}")
    handles = list(fds)
    for handle in handles:
        if isinstance(handle, FileDescriptor) and handle.closed:
            raise LocalProtocolError("a FileDescriptor given in fds= is closed")
    return _method_class(name, streaming).model_construct(
        params=dict(params),
        fds=[h if isinstance(h, FileDescriptor) else FileDescriptor.borrow(h) for h in handles],
    )


def untyped_call(
    name: str, params: Mapping[str, Any] | None = None, fds: Iterable[Any] = ()
) -> Method[JSONReply]:
    """A method object for a call of *name* with *params*, for
    ``client.call()`` (which returns a :class:`JSONReply`). What
    ``call_by_name`` uses.

    Raises:
        TypeError: *name* is not a non-empty string, *params* not a mapping,
            or an element of *fds* is not a descriptor (an int, an object
            with ``fileno()``, a FileDescriptor).
        LocalProtocolError: a FileDescriptor in *fds* is closed.
    """
    return _instance(name, params, fds, False)  # type: ignore[no-any-return]


def untyped_stream(
    name: str, params: Mapping[str, Any] | None = None, fds: Iterable[Any] = ()
) -> StreamMethod[JSONReply]:
    """As :func:`untyped_call`, for ``client.stream()`` (whose items are
    :class:`JSONReply` objects).

    Raises:
        TypeError, LocalProtocolError: as for :func:`untyped_call`.
    """
    return _instance(name, params, fds, True)  # type: ignore[no-any-return]
