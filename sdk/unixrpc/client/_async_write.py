"""The write side of one async client connection: requests coalesced into
one ``send``, and the canceller. Waiting and batching only; what a failed
write means is the core's (``ClientCore.send_failed``), reached through the
connection's *failed* callback.

Requests are coalesced: a request made while other calls are in flight is
not written at once but queued, and a flusher task writes everything queued
in one ``send`` once the tasks that are ready have run (measured: one write
per request costs a 64-in-flight load about a fifth of its throughput). A
lone call is written at once, so sequential latency does not pay for the
extra turn. A queued request whose caller gives up before it is written is
dropped from the queue, and the server never hears of it. A canceller task
sends the cancels of calls abandoned from places that cannot await (a stream
dropped without ``aclose``).
"""

from __future__ import annotations

import contextlib
import math
import weakref
from collections.abc import Awaitable, Callable
from typing import NoReturn, Protocol

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .._core import wire
from .._core.client import CallSlot, ClientCore, Message, Timeout
from .._wakeup import Wakeup
from ..exceptions import RPCError
from ..fds import FdContext
from ..methods import MethodSpec
from ..transport.async_client import AsyncUnixStreamClient
from ._fds import outgoing_fds

__all__ = ["AsyncWriter", "Owner"]


class Owner(Protocol):
    """The connection a writer writes for."""

    def write_failed(
        self, exc: BaseException, slot: CallSlot | None, what: str, lost: Message | None
    ) -> BaseException:
        """A write raised *exc*: ask the core, wake whom it must; the error to raise."""

    def flush_failed(self, exc: BaseException) -> None:
        """The flusher's write failed: the connection is over."""


class AsyncWriter:
    """Writes for one connection, its *owner* (held weakly: no cycle keeps
    a dropped client alive)."""

    def __init__(
        self, raw: AsyncUnixStreamClient[wire.RawFrame, wire.RawFrame], core: ClientCore, owner: Owner
    ) -> None:
        self._raw = raw
        self._core = core
        self._owner = weakref.ref(owner)
        # framed requests waiting for the flusher, by call id, in order
        self._corked: dict[int, bytes] = {}
        self._flush_wakeup: Wakeup | None = None  # set to make the flusher write; None until started
        self._new_wakeup: Callable[[], Wakeup] = anyio.Event
        # framed cancels of calls given up where no one can await (made when
        # started: a stream never closed would warn when collected)
        self._cancel_send: MemoryObjectSendStream[bytes] | None = None
        self._cancel_receive: MemoryObjectReceiveStream[bytes] | None = None
        # ids of the requests still queued when the connection ended: never written
        self._unsent: frozenset[int] = frozenset()

    def start(self, task_group: TaskGroup, new_wakeup: Callable[[], Wakeup]) -> None:
        """Start the flusher and the canceller in *task_group*."""
        self._cancel_send, self._cancel_receive = anyio.create_memory_object_stream[bytes](math.inf)
        self._new_wakeup = new_wakeup
        self._flush_wakeup = new_wakeup()
        task_group.start_soon(self._canceller)
        task_group.start_soon(self._flusher)

    def stop(self) -> None:
        """The connection is over: nothing more is written."""
        if self._corked:
            self._unsent = frozenset(self._corked)
            self._corked.clear()
        if self._cancel_send is not None:
            self._cancel_send.close()

    def check_usable(self) -> None:
        """Raises: the broken error; RuntimeError when the client was not entered."""
        self._core.check_usable()
        if self._flush_wakeup is None:
            raise RuntimeError("use the client as `async with AsyncClient(...) as client:`")

    def was_written(self, slot: CallSlot) -> bool:
        """Whether *slot*'s request was written (or started to be), for a
        call whose connection ended: a request still queued then was not."""
        return slot.call_id not in self._unsent and slot.call_id not in self._corked

    async def start_call(
        self,
        spec: MethodSpec,
        params: bytes,
        fd_context: FdContext | None,
        timeout: Timeout,
        *,
        release_fds: bool = True,
    ) -> CallSlot:
        """Open a call and write its request within its deadline; then
        release the descriptors of *fd_context* unless told not to (a
        reconnecting client may send them again)."""
        try:
            if fd_context is None or not fd_context.outgoing:
                slot, unfinished = self.request_nowait(spec, params, timeout)
                if unfinished is not None:
                    await unfinished
                return slot
            self.check_usable()  # descriptors: never corked, written at once
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
            if fd_context is not None and release_fds:
                fd_context.sent()

    def request_nowait(
        self, spec: MethodSpec, params: bytes, timeout: Timeout
    ) -> tuple[CallSlot, Awaitable[None] | None]:
        """Open a call and write its request (no descriptors): at once, as
        far as the socket takes it now, if no other call is in flight; else
        queued for the flusher. The slot, and what finishes the write within
        its deadline (await it before anything else) or None."""
        if self._flush_wakeup is None:
            self.check_usable()  # raises the right error
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

    def forget(self, slot: CallSlot) -> bool:
        """*slot* is given up: drop its request if it is still queued.
        Returns whether it was written (or started to be)."""
        return self._corked.pop(slot.call_id, None) is None

    def _failed(
        self, exc: BaseException, slot: CallSlot | None, what: str, lost: Message | None
    ) -> BaseException:
        owner = self._owner()
        return exc if owner is None else owner.write_failed(exc, slot, what, lost)

    async def _finish_request(
        self, slot: CallSlot, data: bytes, sent: int | None, cmsgs: list[tuple[int, int, bytes]] | None
    ) -> None:
        try:
            await self._finish_send(data, sent, cmsgs, slot.deadline)
        except BaseException as exc:
            self._request_failed(slot, exc)

    def _request_failed(self, slot: CallSlot, exc: BaseException) -> NoReturn:
        """Writing *slot*'s request raised *exc*: the call never started (no
        cancel), and the core says what to raise."""
        self._core.give_up(slot, request_sent=False)
        error = self._failed(exc, slot, "request", None)
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
        *what*) within *deadline*.

        Raises: what the core chose (see ``ClientCore.send_failed``)."""
        try:
            sent = self._raw.try_send(data, cmsgs)
            if sent != len(data):
                await self._finish_send(data, sent, cmsgs, deadline)
        except BaseException as exc:
            error = self._failed(exc, slot, what, lost)
            if error is exc:
                raise
            raise error from None

    async def send_cancel(self, cancel: bytes) -> None:
        """Tell the server, within the core's limit (best effort)."""
        with contextlib.suppress(OSError, RPCError, TimeoutError):
            await self.write(cancel, deadline=self._core.cancel_deadline())

    def cancel_later(self, cancel: bytes) -> None:
        """Have the canceller task send *cancel* (for callers that cannot await)."""
        if self._cancel_send is not None:
            with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
                self._cancel_send.send_nowait(cancel)

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
                owner = self._owner()
                if owner is not None:
                    owner.flush_failed(exc)
                return

    async def _canceller(self) -> None:
        assert self._cancel_receive is not None
        async with self._cancel_receive:
            async for cancel in self._cancel_receive:
                await self.send_cancel(cancel)
