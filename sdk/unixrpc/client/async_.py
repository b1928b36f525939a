"""AsyncClient: the RPC client for asyncio and trio (via anyio).

A shell over the sans-IO core (``_core/client/``, through its narrow
``ClientCore`` face), which owns the protocol: ids, routing, descriptors,
stream credit, timeouts, what a failed write means, the broken state. This
module owns the async side of sharing one connection. There is no reader task: a
caller that needs a message and finds no one reading reads for everyone,
filing each frame under its call id and waking the task it belongs to; when
its own message is in, it wakes one parked waiter to take over (as
httpcore's HTTP/2 connection does; one, not all: with many calls in flight,
waking every waiter on each reply costs more than the calls). A canceller task in the client's
task group sends the cancel requests of calls abandoned from places that
cannot await (a stream dropped without ``aclose``).

Requests are coalesced: a request made while other calls are in flight is
not written at once but queued, and a flusher task in the client's task
group writes everything queued in one ``send`` once the tasks that are
ready have run (measured: one write per request costs a 64-in-flight load
about a fifth of its throughput). A lone call is written at once, so
sequential latency does not pay for the extra turn. A queued request whose
caller gives up before it is written is dropped from the queue, and the
server never hears of it.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Awaitable, Callable, Iterable, Mapping
from types import TracebackType
from typing import Any, Generic, NoReturn, Self, TypeVar

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .._core import wire
from .._core.client import (
    DEFAULT,
    DEFAULT_STREAM_WINDOW,
    CallSlot,
    ClientConnection,
    ClientCore,
    Message,
    Timeout,
)
from .._core.codec import encode_params, final_value, item_value, spec_of, stream_end
from .._core.framing import FrameSerializer
from .._wakeup import Wakeup, wakeup_factory
from ..address import UnixAddressLike
from ..ancillary import SocketAncillary, UnixCredentials
from ..exceptions import ClientClosedError, RPCError, StreamProtocolParseError
from ..fds import FdContext
from ..methods import Method, MethodSpec, StreamMethod
from ..protocol import StreamProtocol
from ..transport.async_client import AsyncUnixStreamClient
from ..untyped import JSONReply, untyped_call, untyped_stream
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
        self._core: ClientCore = ClientConnection(
            framing, stream_window, timeout=timeout, clock=anyio.current_time
        )
        self._ancillary_bufsize = framing.ancillary_bufsize
        self._raw: AsyncUnixStreamClient[wire.RawFrame, wire.RawFrame] = AsyncUnixStreamClient(
            address, StreamProtocol(framing), max_recv_size=wire.RECV_SIZE
        )
        self._task_group: TaskGroup | None = None
        # framed cancels of calls given up where no one can await (made on
        # entering: a stream never closed would warn when collected)
        self._cancel_send: MemoryObjectSendStream[bytes] | None = None
        self._cancel_receive: MemoryObjectReceiveStream[bytes] | None = None
        self._reading = False  # a caller is reading for everyone
        self._parked: dict[CallSlot, None] = {}  # callers waiting for a message, oldest first
        self._new_wakeup: Callable[[], Wakeup] = anyio.Event  # the backend's own, once entered
        self._ancillary = SocketAncillary()  # used by the reading caller only
        # framed requests waiting for the flusher, by call id, in order
        self._corked: dict[int, bytes] = {}
        self._flush_wakeup: Wakeup | None = None  # set to make the flusher write

    async def __aenter__(self) -> Self:
        if self._task_group is not None:
            raise RuntimeError("this AsyncClient was already entered")
        try:
            await self._raw.wait_connected()
        except BaseException:
            await self._raw.aclose()
            raise
        self._cancel_send, self._cancel_receive = anyio.create_memory_object_stream[bytes](math.inf)
        self._new_wakeup = wakeup_factory()
        self._flush_wakeup = self._new_wakeup()
        task_group = anyio.create_task_group()
        await task_group.__aenter__()
        self._task_group = task_group
        task_group.start_soon(self._canceller)
        task_group.start_soon(self._flusher)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection; calls in flight raise ClientClosedError. Idempotent."""
        self._fail(self._core.fail, ClientClosedError("client is closed"))
        await self._raw.aclose()
        task_group, self._task_group = self._task_group, None
        if task_group is not None:
            task_group.cancel_scope.cancel()
            await task_group.__aexit__(None, None, None)

    def __repr__(self) -> str:
        return f"<AsyncClient {'broken' if self._core.broken else 'open'}>"

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
        if fd_context is None:  # the common case, in this coroutine
            slot, unfinished = self._request_nowait(spec, params, timeout)
            if unfinished is not None:
                await unfinished
        else:
            slot = await self._start(spec, params, fd_context, timeout)
        if not slot.messages:
            await self._wait(slot)
        (kind, envelope, fds), cancel = self._core.take(slot)
        if cancel is not None:  # an item for this unary call: the server erred, the call is given up
            self._cancel_later(cancel)
        return final_value(spec, kind, envelope, fds)  # type: ignore[no-any-return]

    async def notify(self, method: Method[Any]) -> None:
        """Send *method* as a one-way notification: no reply, no error back.

        Raises:
            TypeError: *method* is not a method instance, or is a StreamMethod.
            ClientClosedError, ConnectionBrokenError: the connection is gone.
        """
        spec = spec_of(method, streaming=False, api="notify")
        self._check_usable()
        params, fd_context = encode_params(method, spec)
        try:
            cmsgs, nfds = outgoing_fds(fd_context)
            await self._write(self._core.notification(spec, params, nfds), cmsgs)
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
        return AsyncStreamCall(self, spec, method, timeout)

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

    # -- internals ------------------------------------------------------------

    def _check_usable(self) -> None:
        self._core.check_usable()
        if self._task_group is None:
            raise RuntimeError("use the client as `async with AsyncClient(...) as client:`")

    async def _start(
        self, spec: MethodSpec, params: bytes, fd_context: FdContext | None, timeout: Timeout
    ) -> CallSlot:
        """Open a call and write its request within its deadline."""
        try:
            if fd_context is None or not fd_context.outgoing:
                slot, unfinished = self._request_nowait(spec, params, timeout)
                if unfinished is not None:
                    await unfinished
                return slot
            self._check_usable()  # descriptors: never corked, written at once
            cmsgs, nfds = outgoing_fds(fd_context)
            slot, data = self._core.request(spec, params, nfds, timeout)
            try:
                sent = self._raw.try_send(data, cmsgs)
            except BaseException as exc:
                self._request_failed(slot, exc)
            if sent != len(data):
                await self._finish_request(slot, data, sent, cmsgs)
            return slot
        finally:
            if fd_context is not None:
                fd_context.sent()

    def _request_nowait(
        self, spec: MethodSpec, params: bytes, timeout: Timeout
    ) -> tuple[CallSlot, Awaitable[None] | None]:
        """Open a call and write its request (no descriptors): at once, as
        far as the socket takes it now, if no other call is in flight; else
        queued for the flusher. The slot, and what finishes the write within
        its deadline (await it before anything else) or None."""
        if self._task_group is None:
            self._check_usable()  # raises the right error
        core, corked = self._core, self._corked
        slot, data = core.request(spec, params, 0, timeout)
        if corked or len(core) > 1:  # others are in flight: write this with theirs
            if not corked:
                assert self._flush_wakeup is not None
                self._flush_wakeup.set()
            corked[slot.call_id] = data
            return slot, None
        try:
            sent = self._raw.try_send(data)
        except BaseException as exc:
            self._request_failed(slot, exc)
        if sent == len(data):
            return slot, None
        return slot, self._finish_request(slot, data, sent, None)

    async def _finish_request(
        self, slot: CallSlot, data: bytes, sent: int | None, cmsgs: list[tuple[int, int, bytes]] | None
    ) -> None:
        """Write the rest of *slot*'s request within its deadline."""
        try:
            await self._finish_send(data, sent, cmsgs, slot.deadline)
        except BaseException as exc:
            self._request_failed(slot, exc)

    def _request_failed(self, slot: CallSlot, exc: BaseException) -> NoReturn:
        """Writing *slot*'s request raised *exc*: the call never started (no
        cancel), and the core says what to raise."""
        self._core.give_up(slot, request_sent=False)
        error = self._send_failed(exc, slot)
        if error is exc:
            raise exc
        raise error from None

    async def _finish_send(
        self,
        data: bytes,
        sent: int | None,
        cmsgs: list[tuple[int, int, bytes]] | None,
        deadline: float | None,
    ) -> None:
        """Write the rest of a frame; raises TimeoutError at *deadline*."""
        if deadline is None:
            await self._raw.finish_send(data, sent, cmsgs)
            return
        with anyio.CancelScope(deadline=deadline) as scope:
            await self._raw.finish_send(data, sent, cmsgs)
        if scope.cancelled_caught:
            raise TimeoutError

    def _send_failed(
        self,
        exc: BaseException,
        slot: CallSlot | None = None,
        what: str = "request",
        lost: Message | None = None,
    ) -> BaseException:
        """A write raised *exc*: the core decides whether that broke the
        connection and what the caller raises (after reading, without
        waiting, what the server left if it hung up)."""
        core = self._core
        if core.wants_farewell(exc):
            self._read_farewell()
        error, woken = core.send_failed(exc, cut=self._raw.is_send_broken(), slot=slot, what=what, lost=lost)
        if woken is not None:
            self._wake_all(woken)
            self._broken()
        return error

    def _read_farewell(self) -> None:
        """Hand the core what the server left in the receive buffer before it
        hung up (read without waiting; skipped if another task is reading)."""
        raw, core, ancillary = self._raw, self._core, self._ancillary
        if self._reading:
            return
        try:
            while core.broken is None:
                try:
                    frames = raw.recv_packets_nowait(ancillary, self._ancillary_bufsize)
                finally:
                    if ancillary:
                        core.receive_fds(ancillary.iter_fds())
                        ancillary.clear()
                if not frames:
                    return
                self._wake_all(core.receive_frames(frames, raw.buffered_size()))
        except (StreamProtocolParseError, ConnectionError):
            return

    async def _write(
        self,
        data: bytes,
        cmsgs: list[tuple[int, int, bytes]] | None = None,
        *,
        deadline: float | None = None,
        slot: CallSlot | None = None,
        what: str = "request",
        lost: Message | None = None,
    ) -> None:
        """Write one frame (a notification, a cancel, a credit: *slot*'s
        *what*) within *deadline*."""
        try:
            sent = self._raw.try_send(data, cmsgs)
            if sent != len(data):
                await self._finish_send(data, sent, cmsgs, deadline)
        except BaseException as exc:
            error = self._send_failed(exc, slot, what, lost)
            if error is exc:
                raise
            raise error from None

    async def _send_cancel(self, cancel: bytes) -> None:
        """Tell the server, within the core's limit (best effort)."""
        with contextlib.suppress(OSError, RPCError, TimeoutError):
            await self._write(cancel, deadline=self._core.cancel_deadline())

    def _cancel_later(self, cancel: bytes) -> None:
        """Have the canceller task send *cancel* (for callers that cannot await)."""
        if self._cancel_send is not None:
            with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
                self._cancel_send.send_nowait(cancel)

    async def _wait(self, slot: CallSlot) -> None:
        """Wait for a message of *slot*, until its deadline. If no task is
        reading, read for everyone (no reader task: the caller reads its own
        reply); else wait to be handed a message, or the reader role.
        Cancelled or timed out, the call is given up and the server told
        (one coroutine, not two: this is on every call's path)."""
        core = self._core
        deadline = slot.deadline
        try:
            with _NO_TIMEOUT if deadline is None else anyio.CancelScope(deadline=deadline) as scope:
                while not slot.messages:
                    if core.broken is not None:
                        raise core.broken_error()
                    if not self._reading:
                        self._reading = True
                        try:
                            await self._read_until(slot)
                        finally:
                            self._reading = False
                            self._pass_reading()
                    else:
                        event = slot.waiter = self._new_wakeup()
                        self._parked[slot] = None
                        try:
                            await event.wait()
                        except BaseException:
                            if slot.waiter is event:
                                slot.waiter = None
                                del self._parked[slot]
                            if not self._reading:  # we may have been picked to read next
                                self._pass_reading()
                            raise
            if scope is not None and scope.cancelled_caught:
                raise TimeoutError
        except BaseException as exc:
            cancel = self._give_up(slot, send_cancel=False)
            if cancel is not None:
                # tell the server now, even though we are being cancelled
                with anyio.CancelScope(shield=True):
                    await self._send_cancel(cancel)
            if isinstance(exc, TimeoutError) and slot.timeout is not None:
                raise core.timed_out(slot) from None
            raise

    def _pass_reading(self) -> None:
        """Wake the longest-parked caller: it becomes the reader."""
        for other in self._parked:
            del self._parked[other]
            self._wake(other)
            return

    def _wake(self, slot: CallSlot) -> None:
        """Wake *slot*'s parked caller (its entry is already out of ``_parked``)."""
        waiter = slot.waiter
        if waiter is not None:
            slot.waiter = None
            waiter.set()

    def _wake_all(self, slots: Iterable[CallSlot]) -> None:
        """Wake the parked callers of *slots*."""
        parked = self._parked
        for slot in slots:
            waiter = slot.waiter
            if waiter is not None:
                del parked[slot]
                slot.waiter = None
                waiter.set()

    def _give_up(self, slot: CallSlot, *, send_cancel: bool = True) -> bytes | None:
        """The caller no longer wants *slot*: drop what came. Returns the
        framed cancel to send when the server should be told; with
        *send_cancel* the canceller task sends it (for callers that cannot
        await) and None is returned."""
        written = self._corked.pop(slot.call_id, None) is None  # queued: the server knows nothing of it
        cancel = self._core.give_up(slot, request_sent=written)
        if cancel is not None and send_cancel:
            self._cancel_later(cancel)
            return None
        return cancel

    async def _flusher(self) -> None:
        """Write the queued requests, all that have gathered in one send.
        A failed write breaks the connection: every call in flight fails."""
        raw, corked = self._raw, self._corked
        while True:
            assert self._flush_wakeup is not None
            await self._flush_wakeup.wait()
            self._flush_wakeup = self._new_wakeup()
            if not corked:
                continue
            data = b"".join(corked.values())
            corked.clear()
            try:
                sent = raw.try_send(data)
                if sent != len(data):
                    await raw.finish_send(data, sent)
            except (OSError, RPCError) as exc:
                self._fail(self._core.fail, exc)
                return

    async def _canceller(self) -> None:
        assert self._cancel_receive is not None
        async with self._cancel_receive:
            async for cancel in self._cancel_receive:
                await self._send_cancel(cancel)

    async def _read_until(self, slot: CallSlot) -> None:
        """Read frames and hand them to the core until *slot* has one, then
        the frames already in hand too (without waiting): each one left
        would cost another caller a turn at reading. Cancelling it loses
        nothing; a broken stream fails every call."""
        raw, core, parked = self._raw, self._core, self._parked
        ancillary, bufsize = self._ancillary, self._ancillary_bufsize
        try:
            while True:
                try:
                    frames = raw.recv_packets_nowait(ancillary, bufsize)
                    if not frames:
                        if slot.messages:
                            return
                        frames = [await raw.recv_packet_after_empty(ancillary, bufsize)]
                finally:
                    if ancillary:
                        core.receive_fds(ancillary.iter_fds())
                        ancillary.clear()
                buffered = raw.buffered_size()
                for target in core.receive_frames(frames, buffered):
                    waiter = target.waiter
                    if waiter is not None:
                        del parked[target]
                        target.waiter = None
                        waiter.set()
                if core.broken is not None:
                    self._fail(core.fail, core.broken)
                    return
                if slot.messages and not buffered:
                    return
        except (StreamProtocolParseError, ConnectionError) as exc:
            self._fail(core.read_failed, exc)

    def _fail(self, how: Callable[[BaseException], list[CallSlot]], error: BaseException) -> None:
        """End the connection through the core's *how* (fail, read_failed):
        every call in flight fails, their callers are woken."""
        self._wake_all(how(error))
        self._broken()

    def _broken(self) -> None:
        """The core is broken: nothing more is written."""
        self._corked.clear()
        if self._cancel_send is not None:
            self._cancel_send.close()


class AsyncStreamCall(Generic[ItemT]):
    """The items of a streaming call, as an async iterator. Iterating raises
    RPCError (the stream ended with an error), TimeoutError (no item within
    the timeout), InvalidResultError, ClientClosedError or
    ConnectionBrokenError."""

    def __init__(self, client: AsyncClient, spec: MethodSpec, method: Any, timeout: Timeout) -> None:
        self._client = client
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
        client = self._client
        core = client._core
        try:
            slot = self._slot
            if slot is None:
                params, fd_context = encode_params(self._method, self._spec)
                slot = self._slot = await client._start(self._spec, params, fd_context, self._timeout)
            core.ask_item(slot)
            if not slot.messages:
                await client._wait(slot)
            message, credit = core.take(slot)
        except BaseException:
            self._done = True
            raise
        if credit is not None:  # the item is lost if this fails, and its descriptors closed
            await client._write(credit, deadline=slot.deadline, slot=slot, what="credit", lost=message)
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
                self._client._give_up(self._slot)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._close()

    def __del__(self) -> None:
        if not getattr(self, "_done", True):
            self._close()
