"""Typed clients of any varlink service: :class:`VarlinkClient` (plain
blocking socket, threads) and :class:`AsyncVarlinkClient` (anyio: asyncio
and trio, in :mod:`.async_client`), thin shells over one sans-IO protocol
object (:class:`_Protocol`, in :mod:`._protocol`).

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

import contextlib
import os
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from types import EllipsisType
from typing import Any

import orjson
from pydantic import BaseModel

from .._core.varlink import DEFAULT_MAX_MESSAGE_SIZE
from ..exceptions import ClientClosedError, ConnectionBrokenError
from ..fds import FdContext
from ..methods import Method, StreamMethod, method_spec
from ._protocol import (
    _FOREVER,
    _READ_SIZE,
    END,
    LAST_ITEM,
    STREAM_LEFT,
    TIMED_OUT,
    T,
    VarlinkReply,
    _copy,
    _decode,
    _encode_params,
    _fds_cmsg,
    _Pending,
    _Protocol,
    _recv,
    _untyped,
    error_from_reply,
    read_failed,
    send_failed,
)
from .async_client import AsyncVarlinkClient

__all__ = ["AsyncVarlinkClient", "VarlinkClient", "VarlinkReply", "error_from_reply"]


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
        pending = self._submit(name, data, list(fds or ()), oneway=oneway, expects_fds=expect_fds)
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
        pending = self._submit(name, data, [], more=True, expects_fds=expect_fds)
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
    ) -> _Pending | None:
        try:
            data, outgoing = _Protocol.prepare(name, params, fds, more=more, oneway=oneway)
            with self._send_lock:
                pending = self._protocol.expect(
                    self._closed, more=more, oneway=oneway, expects_fds=expects_fds
                )
                try:
                    sent = self._wsock.sendmsg([data], _fds_cmsg(outgoing))
                    if sent < len(data):
                        self._wsock.sendall(data[sent:])
                except OSError as exc:
                    self._break(send_failed(exc))
                    raise _copy(self._protocol.broken) from exc  # type: ignore[arg-type]
            return pending
        finally:
            if isinstance(fds, FdContext):
                fds.sent()

    def _break(self, error: BaseException) -> None:
        self._protocol.break_with(error)
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)

    def _next(self, pending: _Pending, deadline: float | None) -> tuple[Any, str | None, list[int]]:
        """The next reply of *pending*, reading (and filing) what arrives until it comes."""
        while True:
            reply = self._protocol.next_reply(pending)
            if reply is not None:
                return reply
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
        with self._send_lock:
            self._break(ConnectionBrokenError(TIMED_OUT))
        raise TimeoutError("the varlink call timed out; its connection was closed")

    def _read(self, timeout: float | None) -> None:
        protocol = self._protocol
        if protocol.broken is not None:
            return
        if timeout is not None and timeout <= 0:  # (a 0 s socket timeout is non-blocking: no wait at all)
            self._timed_out()
        self._sock.settimeout(_FOREVER if timeout is None else timeout)
        try:
            data, fds = _recv(self._sock, protocol.peek_mode, _READ_SIZE)
        except TimeoutError:
            self._timed_out()
        except OSError as exc:
            with self._send_lock:
                self._break(read_failed(exc))
            return
        broken = protocol.read_done(data, fds)
        if broken is not None:
            with self._send_lock:
                self._break(broken)

    def _items(self, pending: _Pending, timeout: float | EllipsisType | None, decode: Any) -> Iterator[Any]:
        finished = False
        try:
            while True:
                reply, error, received = self._next(pending, self._deadline(timeout))
                finished = True  # (until it is an item)
                kind = _Protocol.stream_reply(pending, reply, error, received)
                if kind == END:
                    return
                finished = kind == LAST_ITEM
                yield decode(reply, received)
                if finished:
                    return
        finally:
            if not finished and not pending.done:
                with self._send_lock:
                    self._break(ConnectionBrokenError(STREAM_LEFT))
