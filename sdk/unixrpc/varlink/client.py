"""Typed clients of any varlink service: :class:`VarlinkClient` (plain
blocking socket, threads) and :class:`AsyncVarlinkClient` (anyio: asyncio
and trio), thin shells over one sans-IO protocol object (:class:`_Protocol`).

Rules (docs/varlink.md):

* Calls are sent in order, each message whole, its descriptors on the
  ``sendmsg`` that carries its first byte; replies come back in the order
  of the calls (varlink has no ids), so every call not ``oneway`` queues a
  pending entry and each reply goes to the oldest one. Calls from several
  threads or tasks pipeline on one connection; whoever waits reads and
  files what it reads (no reader thread or task).
* A ``more`` call's replies with ``continues: true`` are its items; the
  last reply (without it) ends the stream and is an item too, unless its
  parameters are empty (how a unixrpc server ends a stream).
* Descriptors arrive with a message's first byte. While a pending call may
  receive descriptors (its result type holds FD fields, or
  ``call_by_name(..., fds=True)``), the client reads one message per
  ``recvmsg`` after a ``MSG_PEEK``, so no read holds two messages' first
  bytes (systemd issue 43823).
* Varlink has no cancel: a timeout, a cancelled caller, or a stream left
  before its end closes the connection, and every call queued behind it
  fails with :class:`~unixrpc.ConnectionBrokenError` saying why. Open
  another client to go on (no pool: the caller decides).
* Errors arrive by qualified name: a class registered for that code (a
  generated ``RPCError`` subclass, ``code="io.systemd.UserDatabase.NoRecordFound"``)
  is raised with its fields; ``org.varlink.service`` errors as unixrpc's
  (``MethodNotFoundError``, ``InvalidParamsError``, ``PermissionDeniedError``)
  or an :class:`~unixrpc.RPCError` with the name as code; anything else
  as an :class:`~unixrpc.RPCError` carrying the name and parameters.
"""

from __future__ import annotations

import array
import collections
import contextlib
import os
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from types import EllipsisType
from typing import Any, NamedTuple, TypeVar

import anyio
import orjson
from pydantic import BaseModel

from .._core.server.varlink import wrap_field
from .._core.varlink import (
    DEFAULT_MAX_MESSAGE_SIZE,
    SERVICE,
    UNIXRPC_INTERFACE,
    MessageSplitter,
    message_length,
)
from ..exceptions import (
    AncillaryDataTruncatedError,
    ClientClosedError,
    ConnectionBrokenError,
    InvalidParamsError,
    MethodNotFoundError,
    PermissionDeniedError,
    RPCError,
)
from ..fds import FdContext, FileDescriptor, serialize
from ..methods import Method, StreamMethod, method_spec

__all__ = ["AsyncVarlinkClient", "VarlinkClient", "VarlinkReply"]

T = TypeVar("T")

_MSG_CMSG_CLOEXEC = int(getattr(socket, "MSG_CMSG_CLOEXEC", 0))
_READ_SIZE = 256 * 1024
_FOREVER = 365 * 86400.0  # a socket timeout that never expires (None would make the socket blocking)
_MAX_FDS = 253
_ANCILLARY = socket.CMSG_SPACE(_MAX_FDS * 4)

_STANDARD_ERRORS: dict[str, type[RPCError]] = {
    f"{SERVICE}.MethodNotFound": MethodNotFoundError,
    f"{SERVICE}.InvalidParameter": InvalidParamsError,
    f"{SERVICE}.PermissionDenied": PermissionDeniedError,
}


class VarlinkReply(NamedTuple):
    """An untyped reply: its parameters (descriptor fields hold indexes into
    *fds*) and the descriptors that came with it (yours to close)."""

    parameters: dict[str, Any]
    fds: list[FileDescriptor]


def error_from_reply(name: str, parameters: Any, fds: list[int]) -> RPCError:
    """The exception for a varlink error reply *name* with *parameters*."""
    params = parameters if isinstance(parameters, dict) else {}
    context = FdContext(list(fds)) if fds else None
    try:
        standard = _STANDARD_ERRORS.get(name)
        if standard is not None:
            detail = ", ".join(f"{key}={value!r}" for key, value in params.items())
            return standard(f"{name}({detail})" if detail else name, data=params)
        if name.startswith(UNIXRPC_INTERFACE + "."):
            code = "unixrpc." + name.rpartition(".")[2]
            message = str(params.get("message", code))
            data = {key: value for key, value in params.items() if key != "message"} or None
            return RPCError.from_wire(code, message, data)
        pydantic_context = context.pydantic_context if context is not None else None
        return RPCError.from_wire(name, name, params, context=pydantic_context)
    finally:
        if context is not None:
            context.finish()


class _Pending:
    """A call waiting for its replies: each is ``(parameters, error, fds)``."""

    __slots__ = ("done", "expects_fds", "final", "replies", "streaming")

    def __init__(self, streaming: bool, expects_fds: bool) -> None:
        self.streaming = streaming
        self.expects_fds = expects_fds
        self.replies: collections.deque[tuple[Any, str | None, list[int]]] = collections.deque()
        self.done = False  # nothing more will come (its final reply, or the connection broke)
        self.final = False  # its final reply came

    @property
    def last_taken(self) -> bool:
        """The reply just taken was its final one."""
        return self.final and not self.replies


class _Protocol:
    """The client side of one varlink connection, sans-IO (see the module
    docstring). Not thread-safe: the shells lock around it."""

    def __init__(self, max_message_size: int) -> None:
        self.pending: collections.deque[_Pending] = collections.deque()
        self.splitter = MessageSplitter(max_message_size)
        self.broken: BaseException | None = None

    @staticmethod
    def encode(name: str, params: bytes, *, more: bool = False, oneway: bool = False) -> bytes:
        flags = b',"more":true' if more else (b',"oneway":true' if oneway else b"")
        return b'{"method":' + orjson.dumps(name) + b',"parameters":' + params + flags + b"}\0"

    @property
    def peek_mode(self) -> bool:
        """Read one message per recvmsg: a pending call may receive descriptors."""
        return any(pending.expects_fds for pending in self.pending)

    def received(self, data: bytes, fds: list[int]) -> None:
        """A read brought *data* and *fds*: file the replies it completes.

        Raises:
            ConnectionBrokenError: the peer broke the protocol (the caller breaks the connection).
        """
        try:
            messages = self.splitter.feed(data, len(fds))
        except ValueError as exc:
            _close(fds)
            raise ConnectionBrokenError(f"varlink peer sent {exc}") from None
        taken = 0
        for body, count in messages:
            mine, taken = fds[taken : taken + count], taken + count
            self._reply(body, mine)
        if taken < len(fds) and not self.splitter.partial:
            _close(fds[taken:])

    def _reply(self, body: bytes, fds: list[int]) -> None:
        try:
            reply = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            _close(fds)
            raise ConnectionBrokenError(f"varlink peer sent invalid JSON: {exc}") from None
        if type(reply) is not dict or not self.pending:
            _close(fds)
            what = "a reply nobody waits for" if type(reply) is dict else "a message that is no object"
            raise ConnectionBrokenError(f"varlink peer sent {what}")
        head = self.pending[0]
        error = reply.get("error")
        params = reply.get("parameters")
        if error is None and reply.get("continues") is True:
            if not head.streaming:
                _close(fds)
                raise ConnectionBrokenError("varlink peer sent continues to a call without more")
            head.replies.append((params, None, fds))
            return
        head.replies.append((params, str(error) if error is not None else None, fds))
        head.done = head.final = True
        self.pending.popleft()

    def break_with(self, error: BaseException) -> None:
        """The connection is broken: every pending call fails with *error*."""
        if self.broken is None:
            self.broken = error
        for pending in self.pending:
            pending.done = True
        self.pending.clear()


def _close(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            socket.close(fd)


def _encode_params(method: BaseModel) -> tuple[bytes, FdContext | None]:
    """A method's parameters as JSON, with fields that are None left out:
    varlink makes an omitted optional field and a null one the same, and
    sd-varlink (systemd 252) refuses null for some of them."""
    serializer = type(method).__pydantic_serializer__
    spec = method_spec(type(method))
    data, fds = serialize(serializer, method, has_fds=spec.params_have_fds)
    if b"null" in data:
        data = orjson.dumps(_without_nulls(orjson.loads(data)))
    return data, fds


def _without_nulls(value: Any) -> Any:
    if type(value) is dict:
        return {key: _without_nulls(item) for key, item in value.items() if item is not None}
    if type(value) is list:
        return [_without_nulls(item) for item in value]
    return value


def _decode(method: type[BaseModel], params: Any, fds: list[int], streaming: bool) -> Any:
    spec = method_spec(method)
    params = params if isinstance(params, dict) else {}
    wrap = wrap_field(spec.result_type, streaming)
    value = params if wrap is None else params.get(wrap)
    context = FdContext(list(fds)) if fds else None
    try:
        kwargs = {"context": context.pydantic_context} if context is not None else {}
        return spec.result_validator.validate_python(value, **kwargs)
    finally:
        if context is not None:
            context.finish()


def _is_end(params: Any) -> bool:
    """A final reply of a stream that carries no item (unixrpc's end of stream)."""
    return params is None or params == {}


def _untyped(params: Any, fds: list[int]) -> VarlinkReply:
    return VarlinkReply(params if isinstance(params, dict) else {}, [FileDescriptor(fd) for fd in fds])


def _recv(sock: socket.socket, peek: bool, size: int) -> tuple[bytes, list[int]]:
    """One read (one message at most if *peek*); raises BlockingIOError if nothing waits."""
    if peek:
        peeked = sock.recv(size, socket.MSG_PEEK)
        if not peeked:
            return b"", []
        size = message_length(peeked) or len(peeked)
    data, ancdata, flags, _ = sock.recvmsg(size, _ANCILLARY, _MSG_CMSG_CLOEXEC)
    fds: list[int] = []
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            received = array.array("i")
            received.frombytes(payload[: len(payload) - (len(payload) % received.itemsize)])
            fds.extend(received)
    if flags & socket.MSG_CTRUNC:
        _close(fds)
        raise AncillaryDataTruncatedError(
            "control data was truncated: a varlink message carried more descriptors than fit",
            bufsize=_ANCILLARY,
            closed_fds=len(fds),
        )
    return data, fds


def _fds_cmsg(fds: list[int]) -> list[tuple[int, int, bytes]]:
    return [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())] if fds else []


def _check_fds(fds: list[int]) -> None:
    if len(fds) > _MAX_FDS:
        raise ValueError(f"a varlink message carries at most {_MAX_FDS} descriptors, got {len(fds)}")


# -- sync ----------------------------------------------------------------------------------


class VarlinkClient:
    """A varlink client over a plain blocking socket (no event loop, no
    thread of its own); safe to share between threads, whose calls pipeline.

    *timeout*: seconds a call may wait for its reply (None: forever;
    sd-varlink's default is 45); on expiry the connection is closed (see the
    module docstring).

    Raises:
        OSError: the socket cannot be connected.
    """

    def __init__(
        self,
        address: str,
        *,
        timeout: float | None = 45.0,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    ) -> None:
        self.address = address
        self.timeout = timeout
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            self._sock.connect(address)
        except OSError:
            self._sock.close()
            raise
        # a second socket object on the same connection for writing: each has
        # its own timeout (both non-None, so the shared file description stays
        # non-blocking and each waits with poll under its own deadline)
        self._wsock = socket.socket(fileno=os.dup(self._sock.fileno()))
        self._wsock.settimeout(_FOREVER if timeout is None else timeout)
        self._protocol = _Protocol(max_message_size)
        self._send_lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._closed = False

    def __enter__(self) -> VarlinkClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection; pending calls fail with ClientClosedError."""
        with self._send_lock:
            if self._closed:
                return
            self._closed = True
            self._protocol.break_with(ClientClosedError("the varlink client was closed"))
        self._sock.close()
        self._wsock.close()

    # -- typed ------------------------------------------------------------------------

    def call(self, method: Method[T], *, timeout: float | None = ...) -> T:  # type: ignore[assignment]
        """Call *method* (its class's name is the qualified varlink name) and
        return its validated result.

        Raises:
            RPCError: the service answered an error (a registered class by its name).
            ConnectionBrokenError: the connection broke, or closed after a timeout.
            TimeoutError: no reply within the timeout (the connection is closed).
        """
        params, fds = _encode_params(method)
        spec = method_spec(type(method))
        pending = self._submit(spec.name, params, fds, more=False, expects_fds=spec.result_has_fds)
        assert pending is not None
        reply, error, received = self._next(pending, self._deadline(timeout))
        if error is not None:
            raise error_from_reply(error, reply, received)
        return _decode(type(method), reply, received, False)  # type: ignore[no-any-return]

    def stream(
        self,
        method: StreamMethod[T] | Method[T],
        *,
        timeout: float | EllipsisType | None = ...,
    ) -> Iterator[T]:
        """Call *method* with ``more`` and iterate over its replies. Leaving
        the loop before the end closes the connection (varlink has no
        cancel). *timeout* applies to each reply."""
        params, fds = _encode_params(method)
        spec = method_spec(type(method))
        streaming = isinstance(method, StreamMethod)
        pending = self._submit(spec.name, params, fds, more=True, expects_fds=spec.result_has_fds)
        assert pending is not None
        return self._items(
            pending, timeout, lambda reply, received: _decode(type(method), reply, received, streaming)
        )

    def notify(self, method: BaseModel) -> None:
        """Send *method* ``oneway``: no reply, no error comes back."""
        params, fds = _encode_params(method)
        self._submit(method_spec(type(method)).name, params, fds, oneway=True)

    # -- untyped ------------------------------------------------------------------------

    def call_by_name(
        self,
        name: str,
        parameters: Mapping[str, Any] | None = None,
        *,
        fds: list[int] | None = None,
        expect_fds: bool = False,
        oneway: bool = False,
        timeout: float | EllipsisType | None = ...,
    ) -> VarlinkReply | None:
        """Call the method *name* (qualified) with *parameters* and the
        descriptors *fds* (sent, not closed; refer to them by index).
        *expect_fds*: the reply may carry descriptors. None for *oneway*."""
        data = orjson.dumps(parameters or {})
        pending = self._submit(name, data, list(fds or ()), oneway=oneway, expects_fds=expect_fds, raw=True)
        if pending is None:
            return None
        reply, error, received = self._next(pending, self._deadline(timeout))
        if error is not None:
            raise error_from_reply(error, reply, received)
        return _untyped(reply, received)

    def stream_by_name(
        self,
        name: str,
        parameters: Mapping[str, Any] | None = None,
        *,
        expect_fds: bool = False,
        timeout: float | EllipsisType | None = ...,
    ) -> Iterator[VarlinkReply]:
        """Call *name* with ``more``: its replies, untyped."""
        data = orjson.dumps(parameters or {})
        pending = self._submit(name, data, [], more=True, expects_fds=expect_fds, raw=True)
        assert pending is not None
        return self._items(pending, timeout, _untyped)

    def pipeline(self, methods: list[Method[Any]], *, timeout: float | None = ...) -> list[Any]:  # type: ignore[assignment]
        """Send every call of *methods* at once, then take their results in
        order (an error is returned in place of its result, not raised)."""
        pendings = []
        for method in methods:
            params, fds = _encode_params(method)
            spec = method_spec(type(method))
            pendings.append(self._submit(spec.name, params, fds, expects_fds=spec.result_has_fds))
        results: list[Any] = []
        deadline = self._deadline(timeout)
        for method, pending in zip(methods, pendings, strict=True):
            assert pending is not None
            reply, error, received = self._next(pending, deadline)
            if error is not None:
                results.append(error_from_reply(error, reply, received))
            else:
                results.append(_decode(type(method), reply, received, False))
        return results

    # -- machinery ------------------------------------------------------------------------

    def _deadline(self, timeout: float | EllipsisType | None) -> float | None:
        if timeout is ...:
            timeout = self.timeout
        return None if timeout is None else time.monotonic() + timeout

    def _submit(
        self,
        name: str,
        params: bytes,
        fds: FdContext | list[int] | None,
        *,
        more: bool = False,
        oneway: bool = False,
        expects_fds: bool = False,
        raw: bool = False,
    ) -> _Pending | None:
        outgoing = (fds if isinstance(fds, list) else [h.fileno() for h in fds.outgoing]) if fds else []
        try:
            _check_fds(outgoing)
            data = _Protocol.encode(name, params, more=more, oneway=oneway)
            with self._send_lock:
                self._raise_if_broken()
                pending = None if oneway else _Pending(more, expects_fds)
                if pending is not None:
                    self._protocol.pending.append(pending)
                try:
                    sent = self._wsock.sendmsg([data], _fds_cmsg(outgoing))
                    if sent < len(data):
                        self._wsock.sendall(data[sent:])
                except OSError as exc:
                    self._break(ConnectionBrokenError(f"sending to the varlink service failed: {exc}"))
                    raise _copy(self._protocol.broken) from exc  # type: ignore[arg-type]
            return pending
        finally:
            if isinstance(fds, FdContext):
                fds.sent()

    def _raise_if_broken(self) -> None:
        if self._closed:
            raise ClientClosedError("the varlink client is closed")
        if self._protocol.broken is not None:
            raise _copy(self._protocol.broken)

    def _break(self, error: BaseException) -> None:
        self._protocol.break_with(error)
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)

    def _next(self, pending: _Pending, deadline: float | None) -> tuple[Any, str | None, list[int]]:
        """The next reply of *pending*, reading (and filing) what arrives until it comes."""
        while True:
            if pending.replies:
                return pending.replies.popleft()
            if pending.done:
                raise _copy(self._protocol.broken or ConnectionBrokenError("the varlink connection broke"))
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                self._timed_out()
            if not self._read_lock.acquire(timeout=-1 if remaining is None else remaining):
                self._timed_out()
            try:
                if pending.replies or pending.done:
                    continue
                self._read(None if deadline is None else max(deadline - time.monotonic(), 0.0))
            finally:
                self._read_lock.release()

    def _timed_out(self) -> None:
        error = ConnectionBrokenError(
            "a varlink call timed out: the connection was closed (varlink has no cancel), "
            "and the calls queued behind it failed"
        )
        with self._send_lock:
            self._break(error)
        raise TimeoutError("the varlink call timed out; its connection was closed")

    def _read(self, timeout: float | None) -> None:
        protocol = self._protocol
        if protocol.broken is not None:
            return
        self._sock.settimeout(_FOREVER if timeout is None else timeout)
        try:
            data, fds = _recv(self._sock, protocol.peek_mode, _READ_SIZE)
        except TimeoutError:
            self._timed_out()
        except OSError as exc:
            with self._send_lock:
                self._break(ConnectionBrokenError(f"reading from the varlink service failed: {exc}"))
            return
        if not data:
            with self._send_lock:
                self._break(ConnectionBrokenError("the varlink service closed the connection"))
            return
        try:
            protocol.received(data, fds)
        except ConnectionBrokenError as exc:
            with self._send_lock:
                self._break(exc)

    def _items(self, pending: _Pending, timeout: float | EllipsisType | None, decode: Any) -> Iterator[Any]:
        finished = False
        try:
            while True:
                reply, error, received = self._next(pending, self._deadline(timeout))
                if error is not None:
                    finished = True
                    raise error_from_reply(error, reply, received)
                last = pending.last_taken
                if last and _is_end(reply):
                    finished = True
                    _close(received)
                    return
                yield decode(reply, received)
                if last:
                    finished = True
                    return
        finally:
            if not finished and not pending.done:
                with self._send_lock:
                    self._break(
                        ConnectionBrokenError(
                            "a varlink stream was left before its end: the connection was closed "
                            "(varlink has no cancel)"
                        )
                    )


def _copy(error: BaseException) -> BaseException:
    """A fresh exception like *error* (one raised in several places gets several tracebacks)."""
    try:
        return type(error)(*error.args)
    except Exception:
        return ConnectionBrokenError(str(error))


# -- async ---------------------------------------------------------------------------------


class AsyncVarlinkClient:
    """A varlink client for anyio (asyncio and trio); tasks sharing it
    pipeline their calls. Connect with ``async with AsyncVarlinkClient(path)``
    or ``await client.connect()``. Same methods as :class:`VarlinkClient`;
    a cancelled call closes the connection (see the module docstring)."""

    def __init__(
        self,
        address: str,
        *,
        timeout: float | None = 45.0,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    ) -> None:
        self.address = address
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._protocol = _Protocol(max_message_size)
        self._send_lock = anyio.Lock()
        self._read_lock = anyio.Lock()
        self._closed = False

    async def connect(self) -> None:
        """Connect (blocking connect of a Unix socket: it does not wait on a peer)."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.connect(self.address)
        except OSError:
            sock.close()
            raise
        sock.setblocking(False)
        self._sock = sock

    async def __aenter__(self) -> AsyncVarlinkClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._protocol.break_with(ClientClosedError("the varlink client was closed"))
        if self._sock is not None:
            self._sock.close()

    def _socket(self) -> socket.socket:
        if self._sock is None:
            raise RuntimeError("the varlink client is not connected: use async with, or await connect()")
        return self._sock

    # -- typed ------------------------------------------------------------------------

    async def call(self, method: Method[T], *, timeout: float | None = ...) -> T:  # type: ignore[assignment]
        """As :meth:`VarlinkClient.call`."""
        params, fds = _encode_params(method)
        spec = method_spec(type(method))
        pending = await self._submit(spec.name, params, fds, expects_fds=spec.result_has_fds)
        assert pending is not None
        reply, error, received = await self._next(pending, self._timeout(timeout))
        if error is not None:
            raise error_from_reply(error, reply, received)
        return _decode(type(method), reply, received, False)  # type: ignore[no-any-return]

    async def stream(
        self,
        method: StreamMethod[T] | Method[T],
        *,
        timeout: float | EllipsisType | None = ...,
    ) -> AsyncIterator[T]:
        """As :meth:`VarlinkClient.stream` (``async for``)."""
        params, fds = _encode_params(method)
        spec = method_spec(type(method))
        streaming = isinstance(method, StreamMethod)
        pending = await self._submit(spec.name, params, fds, more=True, expects_fds=spec.result_has_fds)
        assert pending is not None
        async for reply, received in self._items(pending, timeout):
            yield _decode(type(method), reply, received, streaming)

    async def notify(self, method: BaseModel) -> None:
        """As :meth:`VarlinkClient.notify`."""
        params, fds = _encode_params(method)
        await self._submit(method_spec(type(method)).name, params, fds, oneway=True)

    async def call_by_name(
        self,
        name: str,
        parameters: Mapping[str, Any] | None = None,
        *,
        fds: list[int] | None = None,
        expect_fds: bool = False,
        oneway: bool = False,
        timeout: float | EllipsisType | None = ...,
    ) -> VarlinkReply | None:
        """As :meth:`VarlinkClient.call_by_name`."""
        data = orjson.dumps(parameters or {})
        pending = await self._submit(name, data, list(fds or ()), oneway=oneway, expects_fds=expect_fds)
        if pending is None:
            return None
        reply, error, received = await self._next(pending, self._timeout(timeout))
        if error is not None:
            raise error_from_reply(error, reply, received)
        return _untyped(reply, received)

    async def stream_by_name(
        self,
        name: str,
        parameters: Mapping[str, Any] | None = None,
        *,
        expect_fds: bool = False,
        timeout: float | EllipsisType | None = ...,
    ) -> AsyncIterator[VarlinkReply]:
        """As :meth:`VarlinkClient.stream_by_name`."""
        data = orjson.dumps(parameters or {})
        pending = await self._submit(name, data, [], more=True, expects_fds=expect_fds)
        assert pending is not None
        async for reply, received in self._items(pending, timeout):
            yield _untyped(reply, received)

    # -- machinery ------------------------------------------------------------------------

    def _timeout(self, timeout: float | EllipsisType | None) -> float | None:
        return self.timeout if timeout is ... else timeout

    def _raise_if_broken(self) -> None:
        if self._closed:
            raise ClientClosedError("the varlink client is closed")
        if self._protocol.broken is not None:
            raise _copy(self._protocol.broken)

    def _break(self, error: BaseException) -> None:
        self._protocol.break_with(error)
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)

    async def _submit(
        self,
        name: str,
        params: bytes,
        fds: FdContext | list[int] | None,
        *,
        more: bool = False,
        oneway: bool = False,
        expects_fds: bool = False,
    ) -> _Pending | None:
        outgoing = (fds if isinstance(fds, list) else [h.fileno() for h in fds.outgoing]) if fds else []
        try:
            _check_fds(outgoing)
            data = _Protocol.encode(name, params, more=more, oneway=oneway)
            sock = self._socket()
            async with self._send_lock:
                self._raise_if_broken()
                pending = None if oneway else _Pending(more, expects_fds)
                if pending is not None:
                    self._protocol.pending.append(pending)
                try:
                    await self._send(sock, data, outgoing)
                except BaseException as exc:
                    if not isinstance(exc, OSError):  # cancelled mid-message: the stream is unusable
                        self._break(ConnectionBrokenError("a varlink call was cancelled while it was sent"))
                        raise
                    self._break(ConnectionBrokenError(f"sending to the varlink service failed: {exc}"))
                    raise _copy(self._protocol.broken) from exc  # type: ignore[arg-type]
            return pending
        finally:
            if isinstance(fds, FdContext):
                fds.sent()

    @staticmethod
    async def _send(sock: socket.socket, data: bytes, fds: list[int]) -> None:
        view = memoryview(data)
        cmsgs = _fds_cmsg(fds)
        while view:
            try:
                sent = sock.sendmsg([view], cmsgs)
            except BlockingIOError:
                await anyio.wait_writable(sock)
                continue
            cmsgs = []  # the descriptors went with the first byte
            view = view[sent:]

    async def _next(self, pending: _Pending, timeout: float | None) -> tuple[Any, str | None, list[int]]:
        try:
            with anyio.fail_after(timeout):
                while True:
                    if pending.replies:
                        return pending.replies.popleft()
                    if pending.done:
                        raise _copy(
                            self._protocol.broken or ConnectionBrokenError("the varlink connection broke")
                        )
                    async with self._read_lock:
                        if pending.replies or pending.done:
                            continue
                        await self._read()
        except TimeoutError:
            self._break(
                ConnectionBrokenError(
                    "a varlink call timed out: the connection was closed (varlink has no cancel), "
                    "and the calls queued behind it failed"
                )
            )
            raise TimeoutError("the varlink call timed out; its connection was closed") from None
        except anyio.get_cancelled_exc_class():
            if not pending.done:
                self._break(
                    ConnectionBrokenError(
                        "a varlink call was cancelled: the connection was closed (varlink has no "
                        "cancel), and the calls queued behind it failed"
                    )
                )
            raise

    async def _read(self) -> None:
        protocol = self._protocol
        sock = self._socket()
        while protocol.broken is None:
            try:
                data, fds = _recv(sock, protocol.peek_mode, _READ_SIZE)
            except BlockingIOError:
                await anyio.wait_readable(sock)
                continue
            except OSError as exc:
                self._break(ConnectionBrokenError(f"reading from the varlink service failed: {exc}"))
                return
            if not data:
                self._break(ConnectionBrokenError("the varlink service closed the connection"))
                return
            try:
                protocol.received(data, fds)
            except ConnectionBrokenError as exc:
                self._break(exc)
            return

    async def _items(
        self, pending: _Pending, timeout: float | EllipsisType | None
    ) -> AsyncIterator[tuple[Any, list[int]]]:
        finished = False
        try:
            while True:
                reply, error, received = await self._next(pending, self._timeout(timeout))
                if error is not None:
                    finished = True
                    raise error_from_reply(error, reply, received)
                last = pending.last_taken
                if last and _is_end(reply):
                    finished = True
                    _close(received)
                    return
                yield reply, received
                if last:
                    finished = True
                    return
        finally:
            if not finished and not pending.done:
                self._break(
                    ConnectionBrokenError(
                        "a varlink stream was left before its end: the connection was closed "
                        "(varlink has no cancel)"
                    )
                )
