"""SessionStreamCall: a stream of a reconnecting blocking client, opened
again on the next connection when its own is lost (the ``resume=`` policy;
what counts as lost and as a gap is the session core's)."""

from __future__ import annotations

import time
from types import TracebackType
from typing import Any, Self, TypeVar

from .._core import wire
from .._core.client import CallSlot
from .._core.client.session import connection_lost, ends_stream_for_restart
from .._core.codec import encode_params, error_from_envelope, item_value, stream_end
from ..exceptions import ConnectionBrokenError, RPCError
from ..fds import FdContext
from ..methods import MethodSpec
from ._sync_io import SyncConnection, refuse_event_loop
from ._sync_session import NoConnection, SyncSession
from ._sync_stream import StreamCall

__all__ = ["SessionStreamCall"]

ItemT = TypeVar("ItemT")
_ITEM, _ERROR = wire.ITEM, wire.ERROR


class SessionStreamCall(StreamCall[ItemT]):
    """The items of a stream of a reconnecting :class:`~unixrpc.Client`.

    Like :class:`~unixrpc.StreamCall`; with a resume policy it goes on across
    a lost connection (or a daemon that ended it while shutting down): it
    is opened again on the next connection, with the request the policy
    derives from the last item (or the first request).

    Attributes:
        resumes: how many times the stream was opened again.
        gaps: how many of those may have skipped or repeated items: every
            reopening with ``resume=True`` (the same request, no cursor);
            never with a resume function (it derives the cursor).
    """

    def __init__(
        self, owner: SyncSession, spec: MethodSpec, method: Any, timeout: float | None, resume: Any
    ) -> None:
        self._owner = owner
        self._spec = spec
        self._first = method
        self._timeout = timeout
        self._resume = resume
        self._link: SyncConnection | None = None
        self._current: CallSlot | None = None
        self._fd_context: FdContext | None = None
        self._after = 0
        self._last: Any = None
        self._items = 0  # items consumed since the stream was (re)opened
        self._failed_opens = 0
        self._done = False
        self.resumes = 0
        self.gaps = 0
        owner.arrive()
        self._open(None if timeout is None else time.monotonic() + timeout)

    def _open(self, deadline: float | None) -> None:
        owner = self._owner
        method = self._first
        if self._resume is not True and self._resume is not None and self._last is not None:
            method = self._resume(self._last)
        params, fd_context = encode_params(method, self._spec)
        self._release_fds()
        self._fd_context = fd_context
        while True:
            try:
                conn = owner.connection(self._after, deadline)
            except NoConnection:
                lost = self._no_connection()
                raise lost from lost.__cause__
            try:
                self._current = conn.start_encoded(self._spec, params, fd_context, self._timeout)
                self._link = conn
                return
            except (ConnectionError, RPCError):
                if self._resume is None or not connection_lost(conn.core.broken):
                    raise
                self._after = conn.generation

    def _no_connection(self) -> Exception:
        session = self._owner.session
        error = session.no_connection(self._spec, request_sent=self._after > 0, ran=None)
        message = f"the stream {self._spec.name} could not be opened again: {error}"
        stream_error = ConnectionBrokenError(message)
        stream_error.__cause__ = error.__cause__
        return stream_error

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> ItemT:
        while True:
            if self._done:
                raise StopIteration
            deadline = None if self._timeout is None else time.monotonic() + self._timeout
            try:
                if self._current is None:
                    self._reopen(deadline)
                conn, slot = self._link, self._current
                assert conn is not None
                assert slot is not None
                refuse_event_loop("stream")
                try:
                    conn.core.ask_item(slot)
                    conn.wait(slot)
                    message, credit = conn.take(slot)
                except (ConnectionError, RPCError):
                    if self._resume is None or not connection_lost(conn.core.broken):
                        raise
                    self._interrupted(conn)
                    continue
                if credit is not None:
                    try:
                        conn.send(credit, None, slot.deadline, slot, "credit", message)
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
                self._items += 1
                self._failed_opens = 0
                return value  # type: ignore[no-any-return]
            if kind is _ERROR and self._resume is not None and ends_stream_for_restart(envelope):
                error_from_envelope(envelope, fds)  # closes its descriptors
                self._owner.lost(conn)
                self._interrupted(conn)
                continue
            self._finish()
            stream_end(kind, envelope, fds)
            raise StopIteration

    def _interrupted(self, conn: SyncConnection) -> None:
        if self._current is not None:
            conn.give_up(self._current)
        self._current = None
        self._after = conn.generation
        self._failed_opens += 1
        if self._failed_opens > self._owner.session.policy.max_retries:
            raise ConnectionBrokenError(
                f"the stream {self._spec.name} was lost {self._failed_opens} times in a row without an item"
            )

    def _reopen(self, deadline: float | None) -> None:
        self._open(deadline)
        self.resumes += 1
        if self._resume is True:  # no cursor: items may be missed (or repeated)
            self.gaps += 1
        self._items = 0

    def _release_fds(self) -> None:
        fd_context, self._fd_context = self._fd_context, None
        if fd_context is not None:
            fd_context.sent()

    def _finish(self) -> None:
        self._done = True
        if self._current is not None and self._link is not None:
            self._link.give_up(self._current)
        self._current = None
        self._release_fds()

    def close(self) -> None:
        """Stop the stream; the server cancels its handler. Idempotent."""
        if not self._done:
            self._finish()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __del__(self) -> None:
        if not getattr(self, "_done", True):
            self.close()
