"""The varlink wire as the server connection sees it (docs/varlink.md): a
message's JSON body (without its NUL) decoded into one message of
:mod:`.codec`, and replies encoded as varlink replies. Implements
:class:`.codec.WireCodec`.

Rules this module owns:

* A call is ``{"method", "parameters", "oneway", "more", "upgrade"}``.
  Varlink has no ids: the codec numbers the calls of its connection itself
  (1, 2, ...); a ``oneway`` call is a notification (no id, no reply). A
  ``more`` call of a stream method opens a stream with ``window`` (no
  credit: streams are paced by the socket); ``more`` on a unary method is
  a plain call (it is answered once, as the spec allows); a stream method
  called without ``more`` is answered ``org.varlink.service.ExpectedMore``.
* Omitted, ``null`` and ``{}`` parameters are the same. Unknown top-level
  keys, ``oneway`` with ``more``, ``upgrade``, a method name that is not a
  qualified varlink name, JSON that is not an object: ``INVALID``,
  answered (in order) with ``org.unixrpc.ProtocolError``.
* Replies: a result is ``{"parameters": {...}}`` (a model result's fields;
  any other result wrapped as ``{"result": value}``); a stream item
  ``{"parameters": {...}, "continues": true}`` (a non-model item wrapped as
  ``{"item": value}``); the end of a stream ``{"parameters": {}}``; an
  error ``{"error": "<qualified name>", "parameters": {...}}``.
* Error names: unixrpc's built-in errors map to the standard
  ``org.varlink.service`` ones where there is one (MethodNotFound or
  InterfaceNotFound, InvalidParameter, PermissionDenied, ExpectedMore),
  the others to ``org.unixrpc.<Name>(message, ...)``; an application
  error's code maps as a method name does (:func:`.._core.varlink.qualified_name`).
* An error about the connection itself (no call id) is not sent: varlink
  has no such reply, and one would be taken for the answer to the next
  call. The peer sees the connection close, as sd-varlink does.

No I/O; orjson only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import orjson
from pydantic import BaseModel

from ...exceptions import RPCError
from ..varlink import SERVICE, UNIXRPC_INTERFACE, qualified_name, split_qualified
from .codec import INVALID, REQUEST, Message
from .rules import DEFAULT_MAX_STREAM_WINDOW, Handler

__all__ = ["RESULT_FIELD", "ITEM_FIELD", "VarlinkCodec", "VarlinkMethod", "VarlinkNames"]

#: the parameter a non-model result is wrapped in
RESULT_FIELD: Final = "result"
#: the parameter a non-model stream item is wrapped in
ITEM_FIELD: Final = "item"

_CALL_KEYS: Final = frozenset({"method", "parameters", "oneway", "more", "upgrade"})
_NO_PARAMS: Final[dict[str, Any]] = {}

#: unixrpc's built-in error codes and their varlink names (None: decided per call)
_BUILTIN: Final[dict[str, str | None]] = {
    "unixrpc.MethodNotFound": None,  # MethodNotFound or InterfaceNotFound
    "unixrpc.InvalidParams": f"{SERVICE}.InvalidParameter",
    "unixrpc.PermissionDenied": f"{SERVICE}.PermissionDenied",
}


@dataclass(frozen=True, slots=True)
class VarlinkMethod:
    """A served method as varlink sees it."""

    #: the key of its handler in ``ServerRules.handlers`` (the unixrpc name)
    handler: str
    #: the qualified varlink name
    name: str
    streaming: bool
    #: the parameter a result or item is wrapped in (None: a model, whose fields are the parameters)
    wrap: str | None


@dataclass(frozen=True, slots=True)
class VarlinkNames:
    """The name tables of one server's varlink face, built once
    (:meth:`build`) and shared by the codecs of all its connections."""

    #: qualified varlink method name → method
    methods: dict[str, VarlinkMethod]
    #: the interfaces served (for InterfaceNotFound)
    interfaces: frozenset[str]
    #: the interface that unqualified error codes map into
    interface: str
    #: unixrpc error code → qualified varlink error name (those known ahead)
    errors: dict[str, str] = field(default_factory=dict)

    @classmethod
    def build(
        cls,
        handlers: Mapping[str, Handler],
        interface: str,
        *,
        method_names: Mapping[str, str] | None = None,
        errors: Iterable[type[RPCError]] = (),
        error_names: Mapping[str, str] | None = None,
    ) -> VarlinkNames:
        """The tables for *handlers* (``ServerRules.handlers``) served under
        *interface* (``org.example.calc``). *method_names* overrides the
        varlink name of a method (unixrpc name → qualified name);
        *error_names* that of an error code; *errors* are error classes to
        know ahead beside those the methods declare.

        Raises:
            ValueError: *interface* or a name is no varlink name, or two
                methods (or two errors) map to the same varlink name.
        """
        overrides = dict(method_names or {})
        methods: dict[str, VarlinkMethod] = {}
        error_classes: list[type[RPCError]] = list(errors)
        for key, handler in handlers.items():
            spec = handler.spec
            name = overrides.get(key) or qualified_name(spec.name, interface)
            if split_qualified(name) is None:
                raise ValueError(f"{name!r} (the varlink name of {key!r}) is not a qualified varlink name")
            if name in methods:
                raise ValueError(
                    f"methods {methods[name].handler!r} and {key!r} both map to the varlink name "
                    f"{name!r}: give one a qualified name (name='org.example.Other')"
                )
            methods[name] = VarlinkMethod(
                key, name, spec.streaming, wrap_field(spec.result_type, spec.streaming)
            )
            error_classes.extend(spec.errors)
        table: dict[str, str] = {}
        reverse: dict[str, str] = {}
        for error in error_classes:
            code = error.code
            name = (error_names or {}).get(code) or error_name(code, interface)
            if reverse.get(name, code) != code:
                raise ValueError(
                    f"errors {reverse[name]!r} and {code!r} both map to the varlink name {name!r}"
                )
            table[code], reverse[name] = name, code
        for code, name in (error_names or {}).items():
            table[code] = name
        interfaces = frozenset(name.rpartition(".")[0] for name in methods)
        return cls(methods, interfaces, interface, table)

    def error_name(self, code: str) -> str:
        """The qualified varlink name of an application error *code*."""
        name = self.errors.get(code)
        if name is None:
            try:
                name = error_name(code, self.interface)
            except ValueError:
                name = f"{UNIXRPC_INTERFACE}.Error"
        return name


def error_name(code: str, interface: str) -> str:
    """The varlink name of a unixrpc error code: unixrpc's own
    (``unixrpc.Busy``) in :data:`UNIXRPC_INTERFACE`, the standard ones by
    their ``org.varlink.service`` name, an application's as a method name
    maps (:func:`qualified_name`)."""
    builtin = _BUILTIN.get(code)
    if builtin is not None:
        return builtin
    if code == "unixrpc.MethodNotFound":
        return f"{SERVICE}.MethodNotFound"
    if code.startswith("unixrpc."):
        return f"{UNIXRPC_INTERFACE}.{code.partition('.')[2]}"
    return qualified_name(code, interface)


def wrap_field(result_type: Any, streaming: bool) -> str | None:
    """The field a result (or item) of this type is wrapped in: None for a
    pydantic model (its fields are the reply's parameters), else
    :data:`RESULT_FIELD` (:data:`ITEM_FIELD` for a stream item)."""
    if isinstance(result_type, type) and issubclass(result_type, BaseModel):
        return None
    return ITEM_FIELD if streaming else RESULT_FIELD


class _Call:
    __slots__ = ("method", "more", "name", "wrap")

    def __init__(self, name: str, method: VarlinkMethod | None, wrap: str | None, more: bool) -> None:
        self.name = name  # the varlink method name the client called
        self.method = method
        self.wrap = wrap
        self.more = more


_INVALID_CALL: Final = _Call("", None, None, False)


class VarlinkCodec:
    """The varlink wire for one connection (see the module docstring): it
    numbers the calls itself, so each connection needs its own codec.

    *names*: the server's tables (:meth:`VarlinkNames.build`, once per
    server); *window*: the stream window a ``more`` call opens with (at
    most the rules' ``max_stream_window``; varlink has no credit, so it
    only bounds what is queued ahead)."""

    __slots__ = ("_calls", "_names", "_next_id", "window")

    #: the wire's name, for the log
    name = "varlink"
    #: replies go in the order the calls were received
    ordered = True
    #: no credit: a stream is paced by the socket only
    credit = False

    def __init__(self, names: VarlinkNames, *, window: int = DEFAULT_MAX_STREAM_WINDOW) -> None:
        self._names = names
        self.window = window
        self._next_id = 0
        self._calls: dict[int, _Call] = {}  # calls not yet given their final reply

    @property
    def calls_waiting(self) -> int:
        """Calls (not oneway) that have not had their final reply."""
        return len(self._calls)

    def _new_id(self, call: _Call) -> int:
        self._next_id += 1
        self._calls[self._next_id] = call
        return self._next_id

    def decode(self, body: bytes) -> Message:
        """The message in a varlink call's *body* (never raises)."""
        try:
            call: Any = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            return (INVALID, self._new_id(_INVALID_CALL), f"invalid message: {exc}")
        if type(call) is not dict:
            return (INVALID, self._new_id(_INVALID_CALL), "invalid message: not a JSON object")
        oneway = call.get("oneway") is True
        problem = _call_problem(call)
        if problem is not None:
            return (INVALID, None if oneway and "more" not in call else self._new_id(_INVALID_CALL), problem)
        name: str = call["method"]
        method = self._names.methods.get(name)
        params = call.get("parameters")
        if params is None:
            params = _NO_PARAMS
        more = call.get("more") is True
        window = self.window if more and method is not None and method.streaming else None
        handler = method.handler if method is not None else name
        if oneway:
            return (REQUEST, None, handler, params, None)
        wrap = method.wrap if method is not None else None
        return (REQUEST, self._new_id(_Call(name, method, wrap, more)), handler, params, window)

    def result(self, call_id: int, encoded: bytes) -> bytes:
        call = self._calls.pop(call_id, _INVALID_CALL)
        if call.method is not None and call.method.streaming:
            return b'{"parameters":{}}'  # the end of a stream (its own result is null)
        return _reply(call.wrap, encoded)

    def item(self, call_id: int, encoded: bytes) -> bytes:
        call = self._calls.get(call_id, _INVALID_CALL)
        if call.wrap is None:
            return b'{"parameters":' + encoded + b',"continues":true}'
        return b'{"parameters":{"' + call.wrap.encode() + b'":' + encoded + b'},"continues":true}'

    def error(self, call_id: int | None, code: str, message: str, data: Any = None) -> bytes:
        if call_id is None:
            return b""  # no varlink reply is about the connection (see the module docstring)
        call = self._calls.pop(call_id, _INVALID_CALL)
        name, params = self._error(call, code, message, data)
        return orjson.dumps({"error": name, "parameters": params})

    def _error(self, call: _Call, code: str, message: str, data: Any) -> tuple[str, dict[str, Any]]:
        if code == "unixrpc.MethodNotFound":
            interface = call.name.rpartition(".")[0]
            if interface not in self._names.interfaces and interface != SERVICE:
                return f"{SERVICE}.InterfaceNotFound", {"interface": interface}
            return f"{SERVICE}.MethodNotFound", {"method": call.name}
        if code == "unixrpc.InvalidParams":
            return f"{SERVICE}.InvalidParameter", {"parameter": _invalid_parameter(data)}
        if code == "unixrpc.PermissionDenied":
            return f"{SERVICE}.PermissionDenied", {}
        streaming = call.method is not None and call.method.streaming
        if code == "unixrpc.ProtocolError" and streaming and not call.more:
            # the one refusal of a valid call to a stream method: no window
            return f"{SERVICE}.ExpectedMore", {}
        if code.startswith("unixrpc."):
            params: dict[str, Any] = {"message": message}
            if type(data) is dict:
                params.update(data)
            return f"{UNIXRPC_INTERFACE}.{code.partition('.')[2]}", params
        params = data if type(data) is dict else ({} if data is None else {"data": data})
        return self._names.error_name(code), params

    @staticmethod
    def frame(body: bytes, nfds: int = 0) -> bytes:
        """*body* and its NUL (an empty body is nothing to send)."""
        return body + b"\0" if body else b""


def _call_problem(call: dict[str, Any]) -> str | None:
    """Why *call* is no varlink call sd-varlink would accept, or None."""
    unknown = call.keys() - _CALL_KEYS
    if unknown:
        return f"invalid call: unknown key {sorted(unknown)[0]!r}"
    name = call.get("method")
    if type(name) is not str:
        return 'invalid call: "method" must be a string'
    if split_qualified(name) is None:
        return f"invalid call: {name!r} is not a qualified varlink method name (interface.Method)"
    for flag in ("oneway", "more", "upgrade"):
        value = call.get(flag, False)
        if value is not None and type(value) is not bool:
            return f'invalid call: "{flag}" must be a boolean'
    if call.get("oneway") and call.get("more"):
        return 'invalid call: "oneway" and "more" together'
    if call.get("upgrade"):
        return 'invalid call: "upgrade" is not supported'
    params = call.get("parameters")
    if params is not None and type(params) is not dict:
        return 'invalid call: "parameters" must be an object'
    return None


def _invalid_parameter(data: Any) -> str:
    """The parameter a validation error list (pydantic's) is about."""
    if type(data) is list and data and type(data[0]) is dict:
        loc = data[0].get("loc") or ()
        if loc:
            return str(loc[0])
    return "parameters"


def _reply(wrap: str | None, encoded: bytes) -> bytes:
    if wrap is None:
        return b'{"parameters":' + encoded + b"}"
    if encoded == b"null":  # Method[None]: no parameters
        return b'{"parameters":{}}'
    return b'{"parameters":{"' + wrap.encode() + b'":' + encoded + b"}}"
