"""How the threads engine runs calls (composed into
:class:`.connection.ThreadConnection`): a plain ``def`` handler on the
thread that took it, an ``async def`` one on the server's loop thread
(:mod:`.loop_thread`), authorization and streams through the core's
``authorized`` and ``stream_step``. The core decides what every outcome
means; this only runs and waits.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import CancelledError as FutureCancelledError
from typing import TYPE_CHECKING, Any

from ..._core.server import ITEM, NO_CREDIT, STOP, ServerCall
from ..context import CallContext, context_of

if TYPE_CHECKING:
    from .connection import ThreadConnection

__all__ = ["CallRunner", "Parked"]

logger = logging.getLogger("unixrpc.server")
#: how long a cancelled async handler's cleanup is waited for before its descriptors go
_CLEANUP_WAIT = 30.0
#: what _run_slow returns when the core answered the call itself (authorization refused it)
_ANSWERED = object()
#: what _run_slow returns when a stream waits for credit with no thread
_PARKED = object()


class Parked:
    """``call.engine`` of a stream waiting for credit: its generator, and
    whether a Grant or cancel queued it to go on already."""

    __slots__ = ("items", "queued")

    def __init__(self, items: Any) -> None:
        self.items = items
        self.queued = False


class CallRunner:
    """Runs the calls of one connection (see the module docstring)."""

    __slots__ = ("_conn",)

    def __init__(self, connection: ThreadConnection) -> None:
        self._conn = connection

    def _context(self, call: ServerCall) -> CallContext:
        return context_of(call, self._conn.peer, self._conn.connection_id, self._conn._config.rules)

    def run(self, call: ServerCall) -> None:
        """Run *call* on this thread, and answer it (or go on with a stream
        that was parked waiting for credit)."""
        handler, core, lock = call.handler, self._conn.core, self._conn._lock
        parked = call.engine
        if type(parked) is Parked:  # credit came, or a cancel: the stream goes on (or ends) here
            call.engine = True
            if self._stream(call, parked.items) is not _PARKED:
                self._answer(call, True, None)
            return
        if call.cancel_requested:  # answered before a thread was free: it never runs
            with lock:
                core.stop(call)
            self._conn._writer.flush()
            return
        ok = True
        try:
            if handler.is_async or handler.spec.streaming or self._conn._config.authorize is not None:
                result = self._run_slow(call)
            elif handler.wants_context:
                result = handler.function(call.request, self._context(call))
            else:
                result = handler.function(call.request)
        except FutureCancelledError:  # an async handler, cancelled on the loop
            with lock:
                core.stop(call)
            self._conn._writer.flush()
            return
        except Exception as exc:
            ok, result = False, exc
        if result is _ANSWERED:
            self._conn._writer.flush()
            return
        if result is _PARKED:  # a stream waits for credit, with no thread: a Grant or cancel resumes it
            return
        self._answer(call, ok, result)

    def _run_slow(self, call: ServerCall) -> Any:
        """What :meth:`_run` does for authorization, async handlers and streams."""
        handler = call.handler
        hook = self._conn._config.authorize
        if hook is not None:
            verdict: object
            pending: Awaitable[Any] | None = None
            try:
                verdict = hook(self._context(call), call.request)
                if isinstance(verdict, Awaitable):
                    pending = verdict
                    verdict = self._await(call, lambda: pending)
            except FutureCancelledError:
                # cancelled before the loop began it: close the coroutine the hook made
                # (never awaited, it would warn when collected, and hold what it refers to)
                coroutine = pending if inspect.iscoroutine(pending) else None
                if coroutine is not None and inspect.getcoroutinestate(coroutine) == inspect.CORO_CREATED:
                    coroutine.close()
                raise
            except Exception as exc:
                verdict = exc
            with self._conn._lock:
                if not self._conn.core.authorized(call, verdict):  # denied, or the hook failed: answered
                    return _ANSWERED
        args = (call.request, self._context(call)) if handler.wants_context else (call.request,)
        if handler.spec.streaming:
            return self._stream(call, handler.function(*args))
        if handler.is_async:
            return self._await(call, lambda: handler.function(*args))
        return handler.function(*args)

    def _answer(self, call: ServerCall, ok: bool, value: Any) -> None:
        """Hand *call*'s outcome to the core and write what it queued: in one
        locked step when no other thread is writing (the common case)."""
        core, lock = self._conn.core, self._conn._lock
        with lock:
            if ok:
                core.finish(call, value)
            else:
                core.finish(call, raised=value)  # (logged there, with its traceback)
                # its traceback holds the frames it went through, whose locals hold it
                # (run's result, the futures of _await and _call): no cycle keeps the call
                value.__traceback__ = None
            if self._conn._writing or not core.has_output():
                return
            self._conn._writing = True
            chunks = core.take_output()
        self._conn._writer.write(chunks)

    def _await(self, call: ServerCall, make: Callable[[], Awaitable[Any]]) -> Any:
        """Run an awaitable on the loop thread and wait for it here; a cancel
        of *call* cancels it there.

        Raises:
            concurrent.futures.CancelledError: it was cancelled.
        """
        loop = self._conn._engine.loop_thread()
        with self._conn._lock:
            if call.cancel_requested:
                raise FutureCancelledError
            future, ended = loop.start_call(make)
            call.engine = future
        try:
            return future.result()
        except FutureCancelledError:
            # the future says cancelled at once; the coroutine may still run its
            # cleanup on the loop, with the request's descriptors: wait for it
            if not ended.acquire(timeout=_CLEANUP_WAIT):
                logger.warning("a cancelled handler of %s still runs after %ss", call.method, _CLEANUP_WAIT)
            raise
        finally:
            with self._conn._lock:
                call.engine = True

    def _stream(self, call: ServerCall, items: Any) -> object:
        """Produce the items of the stream *call* from its generator *items*
        while the core says so: None once it ended or must stop (the
        generator closed), or :data:`_PARKED` when it waits for credit: the
        generator is kept in ``call.engine`` and the thread goes back to its
        connection (a stream waiting for its client holds no thread); a
        Grant or a cancel queues the call again (:meth:`.ThreadConnection.resume`)."""
        is_async = call.handler.is_async
        done = object()

        async def next_item() -> Any:
            return await anext(items, done)

        parked = False
        try:
            while True:
                room = self._room_for_item(call, items)
                if room is _PARKED:
                    parked = True
                    return _PARKED
                if not room:
                    return None
                item = self._await(call, next_item) if is_async else next(items, done)
                if item is done:
                    return None
                self._send_item(call, item)
        finally:
            if not parked:
                self._close_items(items, is_async)

    def close_parked(self, call: ServerCall) -> None:
        """The connection ends with *call* parked: close its generator."""
        parked = call.engine
        if type(parked) is Parked:
            call.engine = True
            self._close_items(parked.items, call.handler.is_async)

    def _close_items(self, items: Any, is_async: bool) -> None:
        if is_async:
            try:  # bounded: the caller may hold the connection's lock
                self._conn._engine.loop_thread().start(items.aclose).result(_CLEANUP_WAIT)
            except TimeoutError:
                logger.warning("an async stream still closes after %ss; left behind", _CLEANUP_WAIT)
            except Exception:  # its own error on closing, or the loop thread has stopped
                pass
        else:
            items.close()

    def _room_for_item(self, call: ServerCall, items: Any) -> bool | object:
        """Whether the stream *call* may produce its next item (the core's
        ``stream_step``): True; False once it must stop; :data:`_PARKED` when
        it waits for credit: then *items* is parked in ``call.engine``, in
        the same locked step (a Grant that comes next finds it there).
        Waiting for the peer to read (bounded by ``write_timeout``) is done
        here, the thread's slot going to a queued call meanwhile."""
        core, lock = self._conn.core, self._conn._lock
        while True:
            with lock:
                step = core.stream_step(call)
                if step == ITEM:
                    return True
                if step == STOP:
                    return False
                if step == NO_CREDIT:
                    self._conn.park(call, Parked(items))
                    return _PARKED
                if self._conn._writing:
                    self._conn._running -= 1
                    self._conn._pool.dispatch(0)
                    try:
                        self._conn._wait()  # the writer done, or a cancel
                    finally:
                        self._conn._running += 1
                    continue
            self._conn._writer.flush()  # no room and nobody writes: write it here (until the peer reads)

    def _send_item(self, call: ServerCall, item: Any) -> None:
        with self._conn._lock:
            self._conn.core.item(call, item)  # InternalError: the stream fails with it
        self._conn._writer.flush()
