"""AsyncClient: the RPC client for asyncio and trio (via anyio).

The public face: what a call is (encode, send, wait, decode) in the async
style. How tasks share the connection (no reader task, coalesced writes) is
``_async_io.py``; every protocol rule is the core's (``_core/client/``,
through ``ClientCore``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any, Generic, Self, TypeVar

import anyio

from .._core import wire
from .._core.client import (
    DEFAULT,
    DEFAULT_STREAM_WINDOW,
    CallSlot,
    ClientConnection,
    Timeout,
)
from .._core.codec import encode_params, final_value, item_value, spec_of, stream_end
from .._core.framing import FrameSerializer
from ..address import UnixAddressLike
from ..ancillary import UnixCredentials
from ..methods import Method, MethodSpec, StreamMethod
from ..protocol import StreamProtocol
from ..transport.async_client import AsyncUnixStreamClient
from ..untyped import JSONReply, untyped_call, untyped_stream
from ._async_io import AsyncConnection
from ._fds import outgoing_fds

__all__ = ["AsyncClient", "AsyncStreamCall"]

_NO_TIMEOUT = contextlib.nullcontext()
_ITEM = wire.ITEM

ResultT = TypeVar("ResultT")
ItemT = TypeVar("ItemT")


class AsyncClient:
    """An asynchronous connection to a unixrpc server, under asyncio or trio.

    Use it as ``async with AsyncClient(path) as client:``; entering connects
    and starts its canceller task. Any number of tasks may call at once;
    their calls share the connection and are answered in any order.

    Args:
        address: the server's socket path, abstract name (leading NUL), or a
            connected ``socket.socket`` (ownership passes to the client).
        timeout: default per-call timeout in seconds (None: wait forever).
            The framework's own scopes (``anyio.fail_after``,
            ``asyncio.timeout``, ``trio.move_on_after``) work as well.
        max_frame_size, max_fds_per_frame, stream_window: as for :class:`Client`.

    Raises:
        ValueError: an argument is out of range.
        (on entering) SocketNotFoundError, SocketRefusedError,
            SocketPermissionError, ConnectError (``OSError`` subclasses).
    """

    def __init__(
        self,
        address: UnixAddressLike | Any,
        *,
        timeout: float | None = None,
        max_frame_size: int = wire.DEFAULT_MAX_FRAME_SIZE,
        max_fds_per_frame: int = wire.DEFAULT_MAX_FDS_PER_FRAME,
        stream_window: int = DEFAULT_STREAM_WINDOW,
    ) -> None:
        framing = FrameSerializer(max_frame_size=max_frame_size, max_fds=max_fds_per_frame)
        # raises ValueError for the window; the clock is read only in calls, in the loop
        core = ClientConnection(framing, stream_window, timeout=timeout, clock=anyio.current_time)
        self._raw: AsyncUnixStreamClient[wire.RawFrame, wire.RawFrame] = AsyncUnixStreamClient(
            address, StreamProtocol(framing), max_recv_size=wire.RECV_SIZE
        )
        self._conn = AsyncConnection(self._raw, core, framing.ancillary_bufsize)

    async def __aenter__(self) -> Self:
        await self._conn.enter()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection; calls in flight raise ClientClosedError. Idempotent."""
        await self._conn.aclose()

    def __repr__(self) -> str:
        return f"<AsyncClient {'broken' if self._conn.core.broken else 'open'}>"

    @property
    def raw(self) -> AsyncUnixStreamClient[wire.RawFrame, wire.RawFrame]:
        """The raw packet client underneath (packets are RPC frames), for
        socket options and peer information; do not read or write on it."""
        return self._raw

    def get_peer_credentials(self) -> UnixCredentials:
        """The server process's pid, uid and gid.

        Raises:
            RuntimeError: not connected yet.
        """
        return self._raw.get_peer_credentials()

    # -- calls --------------------------------------------------------------

    async def call(self, method: Method[ResultT], *, timeout: Timeout = DEFAULT) -> ResultT:
        """Call *method* on the server and return its validated result.

        Cancelling the awaiting task (or a timeout) cancels the call on the
        server; a reply that comes later is dropped.

        Args:
            timeout: seconds for the whole call, sending the request included
                (default: the client's).

        Raises:
            RPCError: the server answered with an error (typed subclasses
                re-raise as their own class).
            TimeoutError: no result within *timeout* (the message names the
                method). A request cut in the middle of its frame by the
                timeout leaves the connection broken; one not started, usable.
            InvalidResultError: the result does not match the method's type.
            TypeError: *method* is not a method instance (the class, say), or
                is a StreamMethod.
            ClientClosedError, ConnectionBrokenError: the connection is gone
                (``RemoteProtocolError``: the server broke the protocol).
            RuntimeError: the client was not entered with ``async with``.
        """
        spec = getattr(type(method), "__rpc_spec__", None)
        if spec is None or spec.method_class is not type(method) or spec.streaming:
            spec = spec_of(method, streaming=False)  # raises the right TypeError
        params, fd_context = encode_params(method, spec)
        conn = self._conn
        if fd_context is None:  # the common case, in this coroutine
            slot, unfinished = conn.writer.request_nowait(spec, params, timeout)
            if unfinished is not None:
                await unfinished
        else:
            slot = await conn.writer.start_call(spec, params, fd_context, timeout)
        if not slot.messages:
            await conn.wait(slot)
        (kind, envelope, fds), cancel = conn.core.take(slot)
        if cancel is not None:  # an item for this unary call: the server erred, the call is given up
            conn.writer.cancel_later(cancel)
        return final_value(spec, kind, envelope, fds)  # type: ignore[no-any-return]

    async def notify(self, method: Method[Any]) -> None:
        """Send *method* as a one-way notification: no reply, no error back.

        Raises:
            TypeError: *method* is not a method instance, or is a StreamMethod.
            ClientClosedError, ConnectionBrokenError: the connection is gone.
        """
        spec = spec_of(method, streaming=False, api="notify")
        conn = self._conn
        conn.writer.check_usable()
        params, fd_context = encode_params(method, spec)
        try:
            cmsgs, nfds = outgoing_fds(fd_context)
            await conn.writer.write(conn.core.notification(spec, params, nfds), cmsgs)
        finally:
            if fd_context is not None:
                fd_context.sent()

    def stream(self, method: StreamMethod[ItemT], *, timeout: Timeout = DEFAULT) -> AsyncStreamCall[ItemT]:
        """A streaming call: ``async for item in client.stream(Watch()):``.

        The request is sent when iteration starts. Breaking out of the loop
        cancels the call on the server (at once with ``async with
        client.stream(...) as items``, else when the iterator is dropped).

        Args:
            timeout: seconds to wait for each item, and for sending the
                request (default: the client's; None waits for ever).

        Raises:
            TypeError: *method* is not a StreamMethod instance.
            (while iterating) RPCError, TimeoutError, InvalidResultError,
            ClientClosedError, ConnectionBrokenError.
        """
        spec = spec_of(method, streaming=True)
        return AsyncStreamCall(self._conn, spec, method, timeout)

    async def call_by_name(
        self,
        method: str,
        params: Mapping[str, Any] | None = None,
        *,
        fds: Iterable[Any] = (),
        timeout: Timeout = DEFAULT,
    ) -> JSONReply:
        """Call a method known only by its wire name: *params* as a JSON
        object, the result as plain JSON (see :meth:`Client.call_by_name`).

        Returns:
            a :class:`~unixrpc.JSONReply` (``.value``, and ``.fds`` to close).

        Raises:
            RPCError, TimeoutError, ClientClosedError, ConnectionBrokenError,
                RuntimeError: as for :meth:`call`.
            TypeError, SerializeError: as for :meth:`Client.call_by_name`.
        """
        return await self.call(untyped_call(method, params, fds), timeout=timeout)

    def stream_by_name(
        self,
        method: str,
        params: Mapping[str, Any] | None = None,
        *,
        fds: Iterable[Any] = (),
        timeout: Timeout = DEFAULT,
    ) -> AsyncStreamCall[JSONReply]:
        """A stream known only by its wire name: ``async for item in
        client.stream_by_name("Countdown", {"start": 3}):`` (each item a
        :class:`~unixrpc.JSONReply`).

        Raises:
            TypeError: as for :meth:`Client.call_by_name`.
            (while iterating) RPCError, TimeoutError, SerializeError,
            ClientClosedError, ConnectionBrokenError.
        """
        return self.stream(untyped_stream(method, params, fds), timeout=timeout)


class AsyncStreamCall(Generic[ItemT]):
    """The items of a streaming call, as an async iterator. Iterating raises
    RPCError (the stream ended with an error), TimeoutError (no item within
    the timeout), InvalidResultError, ClientClosedError or
    ConnectionBrokenError."""

    def __init__(self, conn: AsyncConnection, spec: MethodSpec, method: Any, timeout: Timeout) -> None:
        self._conn = conn
        self._spec = spec
        self._method = method
        self._timeout = timeout
        self._slot: CallSlot | None = None
        self._done = False

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> ItemT:
        if self._done:
            raise StopAsyncIteration
        conn = self._conn
        core = conn.core
        try:
            slot = self._slot
            if slot is None:
                params, fd_context = encode_params(self._method, self._spec)
                slot = self._slot = await conn.writer.start_call(
                    self._spec, params, fd_context, self._timeout
                )
            core.ask_item(slot)
            if not slot.messages:
                await conn.wait(slot)
            message, credit = core.take(slot)
        except BaseException:
            self._done = True
            raise
        if credit is not None:  # the item is lost if this fails, and its descriptors closed
            await conn.writer.write(credit, deadline=slot.deadline, slot=slot, what="credit", lost=message)
        kind, envelope, fds = message
        if kind is _ITEM:
            return item_value(self._spec, envelope, fds)  # type: ignore[no-any-return]
        self._done = True
        stream_end(kind, envelope, fds)
        raise StopAsyncIteration

    async def aclose(self) -> None:
        """Stop the stream; the server cancels its handler. Idempotent."""
        self._close()

    def _close(self) -> None:
        if not self._done:
            self._done = True
            if self._slot is not None:
                self._conn.give_up(self._slot)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._close()

    def __del__(self) -> None:
        if not getattr(self, "_done", True):
            self._close()
