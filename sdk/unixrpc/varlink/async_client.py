"""The anyio (asyncio and trio) varlink client, :class:`AsyncVarlinkClient`;
its rules are :mod:`.client`'s, its protocol object :mod:`._protocol`'s."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator, Mapping
from types import EllipsisType
from typing import Any

import anyio
import orjson
from pydantic import BaseModel

from .._core.varlink import DEFAULT_MAX_MESSAGE_SIZE
from ..exceptions import ClientClosedError, ConnectionBrokenError
from ..fds import FdContext
from ..methods import Method, StreamMethod, method_spec
from ._protocol import (
    _READ_SIZE,
    CANCELLED,
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

__all__ = ["AsyncVarlinkClient"]


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
        try:
            data, outgoing = _Protocol.prepare(name, params, fds, more=more, oneway=oneway)
            sock = self._socket()
            async with self._send_lock:
                pending = self._protocol.expect(
                    self._closed, more=more, oneway=oneway, expects_fds=expects_fds
                )
                try:
                    await self._send(sock, data, outgoing)
                except BaseException as exc:
                    if not isinstance(exc, OSError):  # cancelled mid-message: the stream is unusable
                        self._break(ConnectionBrokenError("a varlink call was cancelled while it was sent"))
                        raise
                    self._break(send_failed(exc))
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
                    reply = self._protocol.next_reply(pending)
                    if reply is not None:
                        return reply
                    async with self._read_lock:
                        if pending.replies or pending.done:
                            continue
                        await self._read()
        except TimeoutError:
            self._break(ConnectionBrokenError(TIMED_OUT))
            raise TimeoutError("the varlink call timed out; its connection was closed") from None
        except anyio.get_cancelled_exc_class():
            if not pending.done:
                self._break(ConnectionBrokenError(CANCELLED))
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
                self._break(read_failed(exc))
                return
            broken = protocol.read_done(data, fds)
            if broken is not None:
                self._break(broken)
            return

    async def _items(
        self, pending: _Pending, timeout: float | EllipsisType | None
    ) -> AsyncIterator[tuple[Any, list[int]]]:
        finished = False
        try:
            while True:
                reply, error, received = await self._next(pending, self._timeout(timeout))
                finished = True  # (until it is an item)
                kind = _Protocol.stream_reply(pending, reply, error, received)
                if kind == END:
                    return
                finished = kind == LAST_ITEM
                yield reply, received
                if finished:
                    return
        finally:
            if not finished and not pending.done:
                self._break(ConnectionBrokenError(STREAM_LEFT))
