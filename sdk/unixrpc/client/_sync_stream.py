"""StreamCall: the items of a stream of the blocking client, as an
iterator (the one-connection kind; a reconnecting client's resuming kind is
``_sync_session.SessionStreamCall``, a subclass)."""

from __future__ import annotations

from types import TracebackType
from typing import Generic, Self, TypeVar

from .._core import wire
from .._core.client import CallSlot
from .._core.codec import item_value, stream_end
from ._sync_io import SyncConnection, refuse_event_loop

__all__ = ["StreamCall"]

ItemT = TypeVar("ItemT")
_ITEM = wire.ITEM


class StreamCall(Generic[ItemT]):
    """The items of a streaming call, as an iterator. Close it (or leave its
    ``with`` block, or break out of the loop) to cancel the call.

    Iterating raises RPCError (the stream ended with an error), TimeoutError
    (no item within the timeout), InvalidResultError, ClientClosedError or
    ConnectionBrokenError, and RuntimeError when the thread runs an event loop.

    Attributes:
        resumes: how many times the stream was opened again on a new
            connection (``resume=`` of a reconnecting client; else 0).
        gaps: how many of those may have missed or repeated items (see
            ``Client.stream``).
    """

    resumes: int = 0
    gaps: int = 0

    def __init__(self, conn: SyncConnection, slot: CallSlot) -> None:
        self._conn = conn
        self._slot = slot
        self._done = False

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> ItemT:
        if self._done:
            raise StopIteration
        conn, slot = self._conn, self._slot
        try:
            refuse_event_loop("stream")
            conn.core.ask_item(slot)
            conn.wait(slot)
            message, credit = conn.take(slot)
        except BaseException:
            self._done = True
            raise
        if credit is not None:  # the item is lost if this fails, and its descriptors closed
            conn.send(credit, None, slot.deadline, slot, "credit", message)
        kind, envelope, fds = message
        if kind is _ITEM:
            return item_value(slot.spec, envelope, fds)  # type: ignore[no-any-return]
        self._done = True
        stream_end(kind, envelope, fds)
        raise StopIteration

    def close(self) -> None:
        """Stop the stream; the server cancels its handler. Idempotent."""
        if not self._done:
            self._done = True
            self._conn.give_up(self._slot)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __del__(self) -> None:
        if not getattr(self, "_done", True):
            self.close()
