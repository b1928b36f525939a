"""AsyncClient: the RPC client for asyncio and trio (via anyio).

Owns the async side of sharing one connection. There is no reader task: a
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
from typing import Any, Generic, Self, TypeVar

import anyio
import orjson
from anyio.abc import TaskGroup
from pydantic import ValidationError

from .._core import wire
from .._core.calls import CallSlot, CallTable, FdQueue, close_fds
from .._core.framing import FrameSerializer
from .._wakeup import Wakeup, wakeup_factory
from ..address import UnixAddressLike
from ..ancillary import SocketAncillary, UnixCredentials
from ..exceptions import (
    ClientClosedError,
    RemoteProtocolError,
    RPCError,
    StreamProtocolParseError,
)
from ..fds import NO_FDS, FdContext
from ..methods import Method, StreamMethod
from ..protocol import StreamProtocol
from ..transport.async_client import AsyncUnixStreamClient
from ..untyped import JSONReply, untyped_call, untyped_stream
from ._calls import (
    broken_error,
    connection_error,
    decode_frame,
    encode_params,
    final_value,
    item_value,
    outgoing,
    spec_of,
    stream_end,
)
from .client import DEFAULT, DEFAULT_STREAM_WINDOW, _Default

__all__ = ["AsyncClient", "AsyncStreamCall"]

_CANCEL_SEND_LIMIT = 1.0  # seconds a cancelled call may spend telling the server
_NO_TIMEOUT = contextlib.nullcontext()

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
        if stream_window < 1:
            raise ValueError(f"stream_window must be at least 1, got {stream_window}")
        framing = self._framing = FrameSerializer(max_frame_size=max_frame_size, max_fds=max_fds_per_frame)
        protocol = StreamProtocol(framing)
        self._ancillary_bufsize = framing.ancillary_bufsize
        self._raw: AsyncUnixStreamClient[wire.RawFrame, wire.RawFrame] = AsyncUnixStreamClient(
            address, protocol, max_recv_size=wire.RECV_SIZE
        )
        self._timeout = timeout
        self._window = stream_window
        self._table = CallTable()
        self._fd_queue = FdQueue()
        self._broken: BaseException | None = None
        self._task_group: TaskGroup | None = None
        self._cancel_send, self._cancel_receive = anyio.create_memory_object_stream[int](math.inf)
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
            self._cancel_send.close()
            self._cancel_receive.close()
            raise
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
        self._fail(ClientClosedError("client is closed"))
        await self._raw.aclose()
        task_group, self._task_group = self._task_group, None
        if task_group is not None:
            task_group.cancel_scope.cancel()
            await task_group.__aexit__(None, None, None)

    def __repr__(self) -> str:
        return f"<AsyncClient {'broken' if self._broken else 'open'}>"

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

    async def call(self, method: Method[ResultT], *, timeout: float | _Default | None = DEFAULT) -> ResultT:
        """Call *method* on the server and return its validated result.

        Cancelling the awaiting task (or a timeout) cancels the call on the
        server; a reply that comes later is dropped.

        Raises:
            RPCError: the server answered with an error (typed subclasses
                re-raise as their own class).
            TimeoutError: no result within *timeout*.
            InvalidResultError: the result does not match the method's type.
            TypeError: *method* is not a method instance, or is a StreamMethod.
            ClientClosedError, ConnectionBrokenError: the connection is gone.
            RuntimeError: the client was not entered with ``async with``.
        """
        spec = getattr(type(method), "__rpc_spec__", None)
        if spec is None or spec.method_class is not type(method) or spec.streaming:
            spec = spec_of(method, streaming=False)  # raises the right TypeError
        params, fd_context = encode_params(method, spec)
        if fd_context is None:  # the common case, in this coroutine
            slot, unfinished = self._send_request_nowait(spec.name_json, params, None)
            if unfinished is not None:
                await unfinished
        else:
            slot = await self._start(spec.name_json, params, fd_context, None)
        if not slot.messages:
            await self._wait(slot, self._timeout if timeout is DEFAULT else timeout)
        kind, envelope, fds = slot.messages.popleft()
        if kind == wire.RESULT and not fds:  # the common case, without the general path's checks
            codec = spec.codec or spec.result_codec()
            try:
                return codec.validator.validate_python(envelope["result"], context=NO_FDS)  # type: ignore[no-any-return]
            except ValidationError:
                pass  # final_value raises the error
        if kind == wire.ITEM:  # a misbehaving server: this call is not a stream
            self._give_up(slot)
        return final_value(spec, kind, envelope, fds)  # type: ignore[no-any-return]

    async def notify(self, method: Method[Any]) -> None:
        """Send *method* as a one-way notification: no reply, no error back.

        Raises:
            TypeError: *method* is not a method instance, or is a StreamMethod.
            ClientClosedError, ConnectionBrokenError: the connection is gone.
        """
        spec = spec_of(method, streaming=False)
        self._check_usable()
        params, fd_context = encode_params(method, spec)
        frame, ancillary = outgoing(wire.encode_notification(spec.name_json, params), fd_context)
        try:
            await self._raw.send_packet(frame, ancillary_data=ancillary)
        finally:
            if fd_context is not None:
                fd_context.sent()

    def stream(
        self, method: StreamMethod[ItemT], *, timeout: float | _Default | None = DEFAULT
    ) -> AsyncStreamCall[ItemT]:
        """A streaming call: ``async for item in client.stream(Watch()):``.

        The request is sent when iteration starts. Breaking out of the loop
        cancels the call on the server (at once with ``async with
        client.stream(...) as items``, else when the iterator is dropped).

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
        timeout: float | _Default | None = DEFAULT,
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
        timeout: float | _Default | None = DEFAULT,
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
        if self._broken is not None:
            raise self._broken_error()
        if self._task_group is None:
            raise RuntimeError("use the client as `async with AsyncClient(...) as client:`")

    def _broken_error(self) -> Exception:
        return broken_error(self._broken)

    async def _start(
        self, name_json: bytes, params: bytes, fd_context: FdContext | None, window: int | None
    ) -> CallSlot:
        try:
            if fd_context is None or not fd_context.outgoing:
                slot, unfinished = self._send_request_nowait(name_json, params, window)
                if unfinished is not None:
                    await unfinished
                return slot
            self._check_usable()
            slot = self._table.open()
            request = wire.encode_request(slot.call_id, name_json, params, window)
            frame, ancillary = outgoing(request, fd_context)
            try:
                await self._raw.send_packet(frame, ancillary_data=ancillary)
            except BaseException:
                self._table.abandon(slot)
                raise
            return slot
        finally:
            if fd_context is not None:
                fd_context.sent()

    def _send_request_nowait(
        self, name_json: bytes, params: bytes, window: int | None
    ) -> tuple[CallSlot, Awaitable[None] | None]:
        """Open a call and write its request (no descriptors, without the
        packet layer): at once, as far as the socket takes it now, if no
        other call is in flight; else queued for the flusher. The slot, and
        what finishes the write (await it before anything else) or None."""
        if self._broken is not None or self._task_group is None:
            self._check_usable()  # raises the right error
        table, corked = self._table, self._corked
        slot = table.open()
        try:
            data = self._framing.frame_bytes(wire.encode_request(slot.call_id, name_json, params, window))
            if corked or len(table) > 1:  # others are in flight: write this with theirs
                if not corked:
                    assert self._flush_wakeup is not None
                    self._flush_wakeup.set()
                corked[slot.call_id] = data
                return slot, None
            sent = self._raw.try_send(data)
        except BaseException:
            table.abandon(slot)
            raise
        if sent == len(data):
            return slot, None
        return slot, self._finish_request(slot, data, sent)

    async def _finish_request(self, slot: CallSlot, data: bytes, sent: int | None) -> None:
        try:
            await self._raw.finish_send(data, sent)
        except BaseException:
            self._table.abandon(slot)
            raise

    async def _next_message(
        self, slot: CallSlot, timeout: float | None
    ) -> tuple[str, dict[str, Any], list[int]]:
        """The next message of *slot*, waiting for it if none is in yet."""
        if not slot.messages:
            await self._wait(slot, timeout)
        return slot.messages.popleft()

    async def _send_cancel(self, call_id: int) -> None:
        with contextlib.suppress(OSError, RPCError):
            await self._raw.send_packet(wire.RawFrame(wire.encode_cancel(call_id)))

    async def _wait(self, slot: CallSlot, timeout: float | None) -> None:
        """Wait for a message of *slot*. If no task is reading, read for
        everyone (no reader task: the caller reads its own reply); else wait to
        be handed a message, or the reader role. Cancelled or timed out, the
        call is given up and the server told (one coroutine, not two: this
        is on every call's path)."""
        try:
            with _NO_TIMEOUT if timeout is None else anyio.fail_after(timeout):
                while not slot.messages:
                    if self._broken is not None:
                        raise self._broken_error()
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
        except BaseException as exc:
            if self._give_up(slot, send_cancel=False):
                # tell the server now, even though we are being cancelled (bounded:
                # a server that does not read cannot hold us up)
                with anyio.CancelScope(shield=True), anyio.move_on_after(_CANCEL_SEND_LIMIT):
                    await self._send_cancel(slot.call_id)
            if timeout is not None and type(exc) is TimeoutError:
                raise TimeoutError("no reply within the timeout") from None
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

    def _give_up(self, slot: CallSlot, *, send_cancel: bool = True) -> bool:
        """The caller no longer wants *slot*: drop what came. Returns whether
        the server should be told to cancel the call; with *send_cancel* the
        canceller task tells it (for callers that cannot await)."""
        pending = not slot.finished and self._broken is None
        if self._corked.pop(slot.call_id, None) is not None:
            pending = False  # never written: the server knows nothing of it
        self._table.abandon(slot)
        if pending and send_cancel:
            with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
                self._cancel_send.send_nowait(slot.call_id)
        return pending

    async def _send_credit(self, slot: CallSlot, count: int) -> None:
        await self._raw.send_packet(wire.RawFrame(wire.encode_credit(slot.call_id, count)))

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
                self._fail(exc)
                return

    async def _canceller(self) -> None:
        async with self._cancel_receive:
            async for call_id in self._cancel_receive:
                await self._send_cancel(call_id)

    async def _read_until(self, slot: CallSlot) -> None:
        """Read frames and file them under their calls until *slot* has one,
        then file the frames already in hand too (without waiting): each one
        left would cost another caller a turn at reading. Cancelling it loses
        nothing; a broken stream fails every call."""
        raw, fd_queue, table, parked = self._raw, self._fd_queue, self._table, self._parked
        ancillary, bufsize = self._ancillary, self._ancillary_bufsize
        loads = orjson.loads
        try:
            while True:
                if slot.messages and not raw.buffered_size():
                    return
                try:
                    frames = raw.recv_packets_nowait(ancillary, bufsize)
                    if not frames:
                        if slot.messages:
                            return
                        frames = [await raw.recv_packet_after_empty(ancillary, bufsize)]
                finally:
                    if ancillary:
                        fd_queue.push(ancillary.iter_fds())
                        ancillary.clear()
                for frame in frames:
                    envelope: Any = None
                    fds: list[int]
                    if not frame.nfds:
                        try:  # noqa: SIM105 - suppress() costs about 0.5 us a frame
                            envelope = loads(frame.body)
                        except orjson.JSONDecodeError:
                            pass  # decode_frame says why
                    if type(envelope) is dict and len(envelope) == 2 and "result" in envelope:
                        # the common case, {"id": N, "result": R}, without decode_frame
                        call_id = envelope.get("id")
                        if type(call_id) is not int or not 0 <= call_id < wire.ID_LIMIT:
                            raise RemoteProtocolError('peer sent an invalid envelope: "id" must be a call id')
                        kind, fds = wire.RESULT, []
                    else:
                        kind, envelope, fds = decode_frame(frame, fd_queue)
                        if kind not in (wire.RESULT, wire.ITEM, wire.ERROR):
                            close_fds(fds)  # requests from a server are not part of the protocol
                            continue
                        if envelope["id"] is None:  # an error about the connection as a whole
                            close_fds(fds)
                            self._fail(connection_error(envelope))
                            return
                    target = table.file(kind, envelope, fds)
                    if target is not None:
                        waiter = target.waiter
                        if waiter is not None:
                            del parked[target]
                            target.waiter = None
                            waiter.set()
        except StreamProtocolParseError as exc:
            self._fail(RemoteProtocolError(f"server broke the protocol: {exc.error}"))
        except (ConnectionError, RemoteProtocolError) as exc:
            self._fail(exc)

    def _fail(self, error: BaseException) -> None:
        """The connection is unusable: fail every call in flight."""
        if self._broken is None:
            self._broken = error
        self._corked.clear()
        for slot in self._table.fail_all():
            slot.discard()
            self._parked.pop(slot, None)
            self._wake(slot)
        self._fd_queue.close_all()
        self._cancel_send.close()


class AsyncStreamCall(Generic[ItemT]):
    """The items of a streaming call, as an async iterator."""

    def __init__(self, client: AsyncClient, spec: Any, method: Any, timeout: float | _Default | None) -> None:
        self._client = client
        self._spec = spec
        self._method = method
        self._timeout = client._timeout if timeout is DEFAULT else timeout
        self._slot: CallSlot | None = None
        self._done = False
        self._consumed = 0
        self._credit_every = max(client._window // 2, 1)

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> ItemT:
        if self._done:
            raise StopAsyncIteration
        client = self._client
        try:
            if self._slot is None:
                params, fd_context = encode_params(self._method, self._spec)
                self._slot = await client._start(self._spec.name_json, params, fd_context, client._window)
            kind, envelope, fds = await client._next_message(self._slot, self._timeout)
        except BaseException:
            self._done = True
            raise
        if kind == wire.ITEM:
            self._consumed += 1
            if self._consumed >= self._credit_every:
                try:
                    await client._send_credit(self._slot, self._consumed)
                except BaseException:
                    close_fds(fds)  # the item is lost with the connection: so are its fds
                    raise
                self._consumed = 0
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
