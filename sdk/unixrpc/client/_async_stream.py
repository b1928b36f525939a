"""AsyncStreamCall: the items of a stream of the async client, as an async
iterator (the one-connection kind; a reconnecting client's resuming kind is
``_async_session.AsyncSessionStreamCall``, a subclass)."""

from __future__ import annotations

from types import TracebackType
from typing import Any, Generic, Self, TypeVar

from .._core import wire
from .._core.client import CallSlot, Timeout
from .._core.codec import encode_params, item_value, stream_end
from ..methods import MethodSpec
from ._async_io import AsyncConnection

__all__ = ["AsyncStreamCall"]

ItemT = TypeVar("ItemT")
_ITEM = wire.ITEM


class AsyncStreamCall(Generic[ItemT]):
    """The items of a streaming call, as an async iterator. Iterating raises
    RPCError (the stream ended with an error), TimeoutError (no item within
    the timeout), InvalidResultError, ClientClosedError or
    ConnectionBrokenError.

    Attributes:
        resumes, gaps: as for :class:`~unixrpc.StreamCall` (0 unless the
            client reconnects and the stream was opened with ``resume=``).
    """

    resumes: int = 0
    gaps: int = 0

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
