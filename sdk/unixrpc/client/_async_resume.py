"""AsyncSessionStreamCall: a stream of a reconnecting async client, opened
again on the next connection when its own is lost (the twin of
``_sync_resume.py``)."""

from __future__ import annotations

from types import TracebackType
from typing import Any, Self, TypeVar

import anyio

from .._core import wire
from .._core.client.session import connection_lost, ends_stream_for_restart
from .._core.codec import encode_params, error_from_envelope, item_value, stream_end
from ..exceptions import ConnectionBrokenError, RPCError
from ..fds import FdContext
from ..methods import MethodSpec
from ._async_io import AsyncConnection
from ._async_session import AsyncSession, NoConnection
from ._async_stream import AsyncStreamCall

__all__ = ["AsyncSessionStreamCall"]

ItemT = TypeVar("ItemT")
_ITEM, _ERROR = wire.ITEM, wire.ERROR


class AsyncSessionStreamCall(AsyncStreamCall[ItemT]):
    """The items of a stream of a reconnecting :class:`~unixrpc.AsyncClient`
    (see ``SessionStreamCall``, its twin): with a resume policy it goes on
    across a lost connection. ``resumes`` and ``gaps`` count the reopenings
    and those that may have missed or repeated items."""

    def __init__(
        self, owner: AsyncSession, spec: MethodSpec, method: Any, timeout: float | None, resume: Any
    ) -> None:
        super().__init__(owner.current, spec, method, timeout)
        self._owner = owner
        self._item_timeout = timeout
        self._resume = resume
        self._link: AsyncConnection | None = None
        self._fd_context: FdContext | None = None
        self._after = 0
        self._last: Any = None
        self._failed_opens = 0
        self._opened = False
        self.resumes = 0
        self.gaps = 0

    async def _open(self, deadline: float | None) -> None:
        owner = self._owner
        method = self._method
        if self._resume is not True and self._resume is not None and self._last is not None:
            method = self._resume(self._last)
        params, fd_context = encode_params(method, self._spec)
        self._release_fds()
        self._fd_context = fd_context
        while True:
            try:
                conn = await owner.connection(self._after, deadline)
            except NoConnection:
                lost = self._no_connection()
                raise lost from lost.__cause__
            try:
                self._slot = await conn.writer.start_call(
                    self._spec, params, fd_context, self._timeout, release_fds=False
                )
                self._link = conn
                return
            except (ConnectionError, RPCError):
                if self._resume is None or not connection_lost(conn.core.broken):
                    raise
                self._after = conn.generation

    def _no_connection(self) -> Exception:
        error = self._owner.session.no_connection(self._spec, request_sent=self._after > 0, ran=None)
        stream_error = ConnectionBrokenError(
            f"the stream {self._spec.name} could not be opened again: {error}"
        )
        stream_error.__cause__ = error.__cause__
        return stream_error

    async def __anext__(self) -> ItemT:
        while True:
            if self._done:
                raise StopAsyncIteration
            timeout = self._item_timeout
            deadline = None if timeout is None else anyio.current_time() + timeout
            try:
                if self._slot is None:
                    if not self._opened:
                        self._owner.arrive()
                    await self._open(deadline)
                    if self._opened:
                        self.resumes += 1
                        if self._resume is True:
                            self.gaps += 1
                    self._opened = True
                conn, slot = self._link, self._slot
                assert conn is not None
                assert slot is not None
                try:
                    conn.core.ask_item(slot)
                    if not slot.messages:
                        await conn.wait(slot)
                    message, credit = conn.core.take(slot)
                except (ConnectionError, RPCError):
                    if self._resume is None or not connection_lost(conn.core.broken):
                        raise
                    self._interrupted(conn)
                    continue
                if credit is not None:
                    try:
                        await conn.writer.write(
                            credit, deadline=slot.deadline, slot=slot, what="credit", lost=message
                        )
                    except (ConnectionError, RPCError):
                        if self._resume is None or not connection_lost(conn.core.broken):
                            raise
                        self._interrupted(conn)
                        continue
            except BaseException:
                self._finish()
                raise
            kind, envelope, fds = message
            if kind is _ITEM:
                try:
                    value = item_value(self._spec, envelope, fds)
                except BaseException:
                    self._finish()
                    raise
                self._last = value
                self._failed_opens = 0
                return value  # type: ignore[no-any-return]
            if kind is _ERROR and self._resume is not None and ends_stream_for_restart(envelope):
                error_from_envelope(envelope, fds)  # closes its descriptors
                self._owner.lost(conn)
                self._interrupted(conn)
                continue
            self._finish()
            stream_end(kind, envelope, fds)
            raise StopAsyncIteration

    def _interrupted(self, conn: AsyncConnection) -> None:
        if self._slot is not None:
            conn.give_up(self._slot)
        self._slot = None
        self._after = conn.generation
        self._failed_opens += 1
        if self._failed_opens > self._owner.session.policy.max_retries:
            raise ConnectionBrokenError(
                f"the stream {self._spec.name} was lost {self._failed_opens} times in a row without an item"
            )

    def _release_fds(self) -> None:
        fd_context, self._fd_context = self._fd_context, None
        if fd_context is not None:
            fd_context.sent()

    def _finish(self) -> None:
        self._done = True
        if self._slot is not None and self._link is not None:
            self._link.give_up(self._slot)
        self._slot = None
        self._release_fds()

    def _close(self) -> None:
        if not self._done:
            self._finish()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._close()

    async def __aenter__(self) -> Self:
        return self
