"""How tasks share one connection of the async client: the waiting, the
parking and the write batching, and nothing else (the protocol is the
core's: ``ClientCore``).

There is no reader task: a caller that needs a message and finds no one
reading reads for everyone, filing each frame under its call id and waking
the task it belongs to; when its own message is in, it wakes one parked
waiter to take over (as httpcore's HTTP/2 connection does; one, not all:
with many calls in flight, waking every waiter on each reply costs more
than the calls). A canceller task sends the cancels of calls abandoned from
places that cannot await (a stream dropped without ``aclose``).

Requests are coalesced: a request made while other calls are in flight is
not written at once but queued, and a flusher task writes everything queued
in one ``send`` once the tasks that are ready have run (measured: one write
per request costs a 64-in-flight load about a fifth of its throughput). A
lone call is written at once, so sequential latency does not pay for the
extra turn. A queued request whose caller gives up before it is written is
dropped from the queue, and the server never hears of it.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Awaitable, Callable, Iterable
from typing import NoReturn

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .._core import wire
from .._core.client import CallSlot, ClientCore, Message, Timeout
from .._wakeup import Wakeup, wakeup_factory
from ..ancillary import SocketAncillary
from ..exceptions import ClientClosedError, RPCError, StreamProtocolParseError
from ..fds import FdContext
from ..methods import MethodSpec
from ..transport.async_client import AsyncUnixStreamClient
from ._fds import outgoing_fds

__all__ = ["AsyncConnection"]

_NO_TIMEOUT = contextlib.nullcontext()


class AsyncConnection:
    """One connection of an :class:`~unixrpc.AsyncClient`: *raw* moves the
    bytes, *core* decides; this waits, parks and batches."""

    def __init__(
        self,
        raw: AsyncUnixStreamClient[wire.RawFrame, wire.RawFrame],
        core: ClientCore,
        ancillary_bufsize: int,
    ) -> None:
        self.raw = raw
        self.core = core
        self._ancillary_bufsize = ancillary_bufsize
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

    async def enter(self) -> None:
        """Connect and start the canceller and flusher tasks.

        Raises: RuntimeError (entered twice) and what connecting raises."""
        if self._task_group is not None:
            raise RuntimeError("this AsyncClient was already entered")
        try:
            await self.raw.wait_connected()
        except BaseException:
            await self.raw.aclose()
            raise
        self._cancel_send, self._cancel_receive = anyio.create_memory_object_stream[bytes](math.inf)
        self._new_wakeup = wakeup_factory()
        self._flush_wakeup = self._new_wakeup()
        task_group = anyio.create_task_group()
        await task_group.__aenter__()
        self._task_group = task_group
        task_group.start_soon(self._canceller)
        task_group.start_soon(self._flusher)

    async def aclose(self) -> None:
        """Close the connection; calls in flight raise ClientClosedError. Idempotent."""
        self._fail(self.core.fail, ClientClosedError("client is closed"))
        await self.raw.aclose()
        task_group, self._task_group = self._task_group, None
        if task_group is not None:
            task_group.cancel_scope.cancel()
            await task_group.__aexit__(None, None, None)

    def check_usable(self) -> None:
        self.core.check_usable()
        if self._task_group is None:
            raise RuntimeError("use the client as `async with AsyncClient(...) as client:`")

    async def start(
        self, spec: MethodSpec, params: bytes, fd_context: FdContext | None, timeout: Timeout
    ) -> CallSlot:
        """Open a call and write its request within its deadline."""
        try:
            if fd_context is None or not fd_context.outgoing:
                slot, unfinished = self.request_nowait(spec, params, timeout)
                if unfinished is not None:
                    await unfinished
                return slot
            self.check_usable()  # descriptors: never corked, written at once
            cmsgs, nfds = outgoing_fds(fd_context)
            slot, data = self.core.request(spec, params, nfds, timeout)
            try:
                sent = self.raw.try_send(data, cmsgs)
            except BaseException as exc:
                self._request_failed(slot, exc)
            if sent != len(data):
                await self._finish_request(slot, data, sent, cmsgs)
            return slot
        finally:
            if fd_context is not None:
                fd_context.sent()

    def request_nowait(
        self, spec: MethodSpec, params: bytes, timeout: Timeout
    ) -> tuple[CallSlot, Awaitable[None] | None]:
        """Open a call and write its request (no descriptors): at once, as
        far as the socket takes it now, if no other call is in flight; else
        queued for the flusher. The slot, and what finishes the write within
        its deadline (await it before anything else) or None."""
        if self._task_group is None:
            self.check_usable()  # raises the right error
        core, corked = self.core, self._corked
        slot, data = core.request(spec, params, 0, timeout)
        if corked or len(core) > 1:  # others are in flight: write this with theirs
            if not corked:
                assert self._flush_wakeup is not None
                self._flush_wakeup.set()
            corked[slot.call_id] = data
            return slot, None
        try:
            sent = self.raw.try_send(data)
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
        self.core.give_up(slot, request_sent=False)
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
            await self.raw.finish_send(data, sent, cmsgs)
            return
        with anyio.CancelScope(deadline=deadline) as scope:
            await self.raw.finish_send(data, sent, cmsgs)
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
        core = self.core
        if core.wants_farewell(exc):
            self._read_farewell()
        error, woken = core.send_failed(exc, cut=self.raw.is_send_broken(), slot=slot, what=what, lost=lost)
        if woken is not None:
            self._wake_all(woken)
            self._broken()
        return error

    def _read_farewell(self) -> None:
        """Hand the core what the server left in the receive buffer before it
        hung up (read without waiting; skipped if another task is reading)."""
        raw, core, ancillary = self.raw, self.core, self._ancillary
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

    async def write(
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
            sent = self.raw.try_send(data, cmsgs)
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
            await self.write(cancel, deadline=self.core.cancel_deadline())

    def cancel_later(self, cancel: bytes) -> None:
        """Have the canceller task send *cancel* (for callers that cannot await)."""
        if self._cancel_send is not None:
            with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
                self._cancel_send.send_nowait(cancel)

    async def wait(self, slot: CallSlot) -> None:
        """Wait for a message of *slot*, until its deadline. If no task is
        reading, read for everyone (no reader task: the caller reads its own
        reply); else wait to be handed a message, or the reader role.
        Cancelled or timed out, the call is given up and the server told
        (one coroutine, not two: this is on every call's path)."""
        core = self.core
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
            cancel = self.give_up(slot, send_cancel=False)
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

    def give_up(self, slot: CallSlot, *, send_cancel: bool = True) -> bytes | None:
        """The caller no longer wants *slot*: drop what came. Returns the
        framed cancel to send when the server should be told; with
        *send_cancel* the canceller task sends it (for callers that cannot
        await) and None is returned."""
        written = self._corked.pop(slot.call_id, None) is None  # queued: the server knows nothing of it
        cancel = self.core.give_up(slot, request_sent=written)
        if cancel is not None and send_cancel:
            self.cancel_later(cancel)
            return None
        return cancel

    async def _flusher(self) -> None:
        """Write the queued requests, all that have gathered in one send.
        A failed write breaks the connection: every call in flight fails."""
        raw, corked = self.raw, self._corked
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
                self._fail(self.core.fail, exc)
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
        raw, core, parked = self.raw, self.core, self._parked
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
