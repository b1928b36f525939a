"""AsyncClient: the RPC client for asyncio and trio (via anyio).

The public face: what a call is (encode, send, wait, decode) in the async
style. How tasks share the connection (no reader task, coalesced writes) is
``_async_io.py``; every protocol rule is the core's (``_core/client/``,
through ``ClientCore``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import Any, Self, TypeVar

import anyio

from .._core import wire
from .._core.client import DEFAULT, DEFAULT_STREAM_WINDOW, ClientConnection, Timeout
from .._core.client.session import ConnectionState, ReconnectPolicy
from .._core.codec import encode_params, final_value, spec_of
from .._core.framing import FrameSerializer
from ..address import UnixAddressLike
from ..ancillary import UnixCredentials
from ..exceptions import ClientClosedError
from ..methods import Method, StreamMethod
from ..protocol import StreamProtocol
from ..transport.async_client import AsyncUnixStreamClient
from ..untyped import JSONReply, untyped_call, untyped_stream
from ._async_io import AsyncConnection
from ._async_resume import AsyncSessionStreamCall
from ._async_session import AsyncSession
from ._async_stream import AsyncStreamCall
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
        reconnect: as for :class:`Client` (the first connection is made on
            entering, without retrying).
        on_connect: with ``reconnect``, called with the client after each
            reconnection (a plain function or a coroutine function), before
            the calls waiting for it go on; its own calls go through.

    Raises:
        ValueError: an argument is out of range; ``reconnect`` for a
            connected socket, or ``on_connect`` without ``reconnect``.
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
        reconnect: bool | ReconnectPolicy = False,
        on_connect: Callable[[AsyncClient], object] | None = None,
    ) -> None:
        policy = ReconnectPolicy.of(reconnect)
        if policy is not None and not isinstance(address, (str, bytes)) and hasattr(address, "fileno"):
            raise ValueError("reconnect needs an address to connect to again, not a connected socket")
        if on_connect is not None and policy is None:
            raise ValueError("on_connect is called on reconnections: it needs reconnect=True")
        framing = FrameSerializer(max_frame_size=max_frame_size, max_fds=max_fds_per_frame)

        def connect() -> AsyncConnection:
            # raises ValueError for the window; the clock is read only in calls, in the loop
            core = ClientConnection(framing, stream_window, timeout=timeout, clock=anyio.current_time)
            raw: AsyncUnixStreamClient[wire.RawFrame, wire.RawFrame] = AsyncUnixStreamClient(
                address, StreamProtocol(framing), max_recv_size=wire.RECV_SIZE
            )
            return AsyncConnection(raw, core, framing.ancillary_bufsize)

        self._timeout = timeout
        self._conn = connect()
        self._raw = self._conn.raw
        self._session: AsyncSession | None = None
        if policy is not None:
            hook = None if on_connect is None else (lambda: on_connect(self))
            self._session = AsyncSession(self._conn, connect, policy, timeout, hook)

    async def __aenter__(self) -> Self:
        if self._session is not None:
            await self._session.enter()
        else:
            await self._conn.enter()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection; calls in flight raise ClientClosedError. Idempotent."""
        if self._session is not None:
            await self._session.aclose()
        else:
            await self._conn.aclose()

    def __repr__(self) -> str:
        return f"<AsyncClient {self.state.value}>"

    @property
    def raw(self) -> AsyncUnixStreamClient[wire.RawFrame, wire.RawFrame]:
        """The raw packet client underneath (packets are RPC frames), for
        socket options and peer information; with ``reconnect``, the current
        connection's; do not read or write on it."""
        session = self._session
        return self._raw if session is None else session.current.raw

    @property
    def state(self) -> ConnectionState:
        """As for :attr:`Client.state`."""
        session = self._session
        if session is not None:
            return session.session.state
        broken = self._conn.core.broken
        if broken is None:
            return ConnectionState.CONNECTED
        if isinstance(broken, ClientClosedError):
            return ConnectionState.CLOSED
        return ConnectionState.DISCONNECTED

    @property
    def reconnects(self) -> int:
        """How many times the client connected again (0 without ``reconnect``)."""
        session = self._session
        return 0 if session is None else session.session.reconnects

    def get_peer_credentials(self) -> UnixCredentials:
        """The server process's pid, uid and gid.

        Raises:
            RuntimeError: not connected yet.
        """
        return self.raw.get_peer_credentials()

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
            CallNotRunError, CallOutcomeUnknownError: as for :meth:`Client.call`.
        """
        spec = getattr(type(method), "__rpc_spec__", None)
        if spec is None or spec.method_class is not type(method) or spec.streaming:
            spec = spec_of(method, streaming=False)  # raises the right TypeError
        if self._session is not None:
            return await self._session.call(spec, method, timeout)  # type: ignore[no-any-return]
        params, fd_context = encode_params(method, spec)
        conn = self._conn
        if fd_context is None:  # the common case, in this coroutine
            slot, unfinished = conn.writer.request_nowait(spec, params, timeout)
            if unfinished is not None:
                await unfinished
        else:
            slot = await conn.writer.start_call(spec, params, fd_context, timeout)
        if not slot.messages:
            await conn.wait(slot, lone=len(conn.core) == 1)
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
        if self._session is not None:
            await self._session.notify(spec, method)
            return
        conn = self._conn
        conn.writer.check_usable()
        params, fd_context = encode_params(method, spec)
        try:
            cmsgs, nfds = outgoing_fds(fd_context)
            await conn.writer.write(conn.core.notification(spec, params, nfds), cmsgs)
        finally:
            if fd_context is not None:
                fd_context.sent()

    def stream(
        self,
        method: StreamMethod[ItemT],
        *,
        timeout: Timeout = DEFAULT,
        resume: bool | Callable[[ItemT], StreamMethod[ItemT]] = False,
    ) -> AsyncStreamCall[ItemT]:
        """A streaming call: ``async for item in client.stream(Watch()):``.

        The request is sent when iteration starts. Breaking out of the loop
        cancels the call on the server (at once with ``async with
        client.stream(...) as items``, else when the iterator is dropped).

        Args:
            timeout: seconds to wait for each item, and for sending the
                request (default: the client's; None waits for ever).
            resume: as for :meth:`Client.stream` (with ``reconnect``).

        Raises:
            TypeError: *method* is not a StreamMethod instance.
            ValueError: ``resume`` without ``reconnect``.
            (while iterating) RPCError, TimeoutError, InvalidResultError,
            ClientClosedError, ConnectionBrokenError.
        """
        spec = spec_of(method, streaming=True)
        if self._session is not None:
            seconds = self._timeout if timeout is DEFAULT else timeout
            return AsyncSessionStreamCall(self._session, spec, method, seconds, resume or None)
        if resume is not False:
            raise ValueError("resume= opens the stream again on a new connection: it needs reconnect=True")
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
