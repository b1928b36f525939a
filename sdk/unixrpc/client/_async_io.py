"""How tasks share one connection of the async client: the reader role
and the parking; the writes are ``_async_write.py``. Waiting only: the
protocol is the core's (``ClientCore``).

There is no reader task: a caller that needs a message and finds no one
reading reads for everyone, filing each frame under its call id and waking
the task it belongs to; when its own message is in, it wakes one parked
waiter to take over (as httpcore's HTTP/2 connection does; one, not all:
with many calls in flight, waking every waiter on each reply costs more
than the calls).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable

import anyio
import anyio.abc
from anyio.abc import TaskGroup

from .._core import wire
from .._core.client import CallSlot, ClientCore, Message
from .._wakeup import Wakeup, wakeup_factory
from ..ancillary import SocketAncillary
from ..exceptions import ClientClosedError, ConnectionBrokenError, StreamProtocolParseError
from ..transport.async_client import AsyncUnixStreamClient
from ._async_write import AsyncWriter

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
        self._reading = False  # a caller is reading for everyone
        self._parked: dict[CallSlot, None] = {}  # callers waiting for a message, oldest first
        self._new_wakeup: Callable[[], Wakeup] = anyio.Event  # the backend's own, once entered
        self._ancillary = SocketAncillary()  # used by the reading caller only
        self.writer = AsyncWriter(raw, core, self)
        self._serve_scope: anyio.CancelScope | None = None  # in a reconnecting client's task group
        #: which connection of a reconnecting client this is (1: the first)
        self.generation = 1

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
        self._new_wakeup = wakeup_factory()
        task_group = anyio.create_task_group()
        await task_group.__aenter__()
        self._task_group = task_group
        self.writer.start(task_group, self._new_wakeup)

    async def enter_in(self, task_group: TaskGroup) -> None:
        """Connect, and run the writer's tasks in a task of *task_group* (a
        reconnecting client's, which outlives this connection) until
        :meth:`aclose`.

        Raises: what connecting raises."""
        try:
            await self.raw.wait_connected()
        except BaseException:
            await self.raw.aclose()
            raise
        self._new_wakeup = wakeup_factory()
        await task_group.start(self._serve)

    async def _serve(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        with anyio.CancelScope() as scope:
            self._serve_scope = scope
            async with anyio.create_task_group() as task_group:
                self.writer.start(task_group, self._new_wakeup)
                task_status.started()

    async def retire(self) -> None:
        """A reconnecting client moved to a new connection: close this one as
        lost (a call that raced to it sees it broken, and goes to the new one)."""
        self._fail(self.core.fail, ConnectionBrokenError("the client moved to a new connection"))
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection; calls in flight raise ClientClosedError. Idempotent."""
        self._fail(self.core.fail, ClientClosedError("client is closed"))
        await self.raw.aclose()
        if self._serve_scope is not None:
            self._serve_scope.cancel()
            return
        task_group, self._task_group = self._task_group, None
        if task_group is not None:
            task_group.cancel_scope.cancel()
            await task_group.__aexit__(None, None, None)

    def flush_failed(self, exc: BaseException) -> None:
        """The writer's batched write failed: every call in flight fails."""
        self._fail(self.core.fail, exc)

    def write_failed(
        self, exc: BaseException, slot: CallSlot | None, what: str, lost: Message | None
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

    async def wait(self, slot: CallSlot, *, lone: bool = False) -> None:
        """Wait for a message of *slot*, until its deadline. If no task is
        reading, read for everyone (no reader task: the caller reads its own
        reply); else wait to be handed a message, or the reader role.
        Cancelled or timed out, the call is given up and the server told
        (one coroutine, not two: this is on every call's path).

        *lone*: *slot*'s request was just written with no other call in
        flight, so its reply cannot be in yet: the first read waits for the
        socket to be readable instead of trying first (a read that finds
        nothing is a syscall and an exception; the wait returns at once if
        the reply is in after all)."""
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
                            await self._read_until(slot, lone)
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
                    await self.writer.send_cancel(cancel)
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
        written = self.writer.forget(slot)  # still queued: the server knows nothing of it
        cancel = self.core.give_up(slot, request_sent=written)
        if cancel is not None and send_cancel:
            self.writer.cancel_later(cancel)
            return None
        return cancel

    async def _read_until(self, slot: CallSlot, lone: bool = False) -> None:
        """Read frames and hand them to the core until *slot* has one, then
        the frames already in hand too (without waiting): each one left
        would cost another caller a turn at reading. Cancelling it loses
        nothing; a broken stream fails every call."""
        raw, core, parked = self.raw, self.core, self._parked
        ancillary, bufsize = self._ancillary, self._ancillary_bufsize
        try:
            while True:
                try:
                    if lone and not raw.buffered_size():  # nothing to read yet: wait first
                        lone = False
                        frames = await raw.recv_packets_after_wait(ancillary, bufsize)
                    else:
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
        self.writer.stop()
