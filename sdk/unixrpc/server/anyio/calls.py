"""How the anyio engine runs calls (composed into
:class:`.connection.Connection`; writes through its :class:`.output.Output`).

A plain async handler is stepped in place by the task that read its
request; a call that waits is finished by that task after the reading is
handed on. Authorization, streams and plain ``def`` handlers (on the
server's :class:`.handler_threads.HandlerThreads`) take :meth:`CallRunner._run_call`.
The core decides what every outcome means; this only runs and waits.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Coroutine
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel

from ..._core.server import ITEM, NO_ROOM, STOP, ServerCall, ServerConnection
from ...exceptions import CallCancelledError
from ..context import CallContext, context_of
from .tasks import Worker, resume

if TYPE_CHECKING:
    from .connection import Connection

__all__ = ["CallRunner"]

_DONE = object()  # a generator stream has no more items


class CallRunner:
    """Running calls: the part of a connection between reading and writing."""

    __slots__ = ("_config", "_conn", "_core", "_new_waiter", "_new_wakeup", "_output")

    def __init__(self, connection: Connection) -> None:
        self._conn = connection
        self._core = connection.core
        self._config = connection._config
        self._output = connection._output
        self._new_wakeup = connection._new_wakeup
        self._new_waiter = connection._new_waiter

    def _context(self, call: ServerCall) -> CallContext:
        """What a handler or the authorization hook is told about *call*."""
        conn = self._conn
        return context_of(call, conn.peer, conn.connection_id, self._config.rules)

    def step(self, call: ServerCall) -> Awaitable[None] | None:
        """Run *call* in place until it is answered or first waits: None once
        it is answered, else what finishes it, to await in this task.

        A plain async handler is stepped directly (the common case: most
        answer without waiting, and then no coroutine of ours is made);
        streams, threaded handlers and authorization take :meth:`_run_call`.
        """
        handler = call.handler
        if not handler.is_async or handler.spec.streaming or self._config.authorize is not None:
            coro = self._run_call(call)
            try:
                yielded = coro.send(None)
            except StopIteration:
                return None
            return resume(coro, yielded)
        coro = handler.function(
            *((call.request, self._context(call)) if handler.wants_context else (call.request,))
        )
        try:
            yielded = coro.send(None)
        except StopIteration as stop:
            self._core.finish(call, stop.value)
        except Exception as exc:
            self._core.finish(call, raised=exc)
        else:
            return self._finish_call(call, coro, yielded)
        return None if self._conn._corking else self._output.flush_nowait()

    async def _finish_call(self, call: ServerCall, coro: Coroutine[Any, Any, Any], yielded: Any) -> None:
        """Finish a handler :meth:`step` left waiting, and answer it."""
        try:
            result = await resume(coro, yielded)
        except Exception as exc:
            self._core.finish(call, raised=exc)
        else:
            self._core.finish(call, result)
        await self._output.flush()

    async def _run_call(self, call: ServerCall) -> None:
        """Run one call inside its worker's scope: authorization, streams and
        threaded handlers included. A cancel propagates out of here (the
        worker answers it); anything else is answered here."""
        handler, core = call.handler, self._core
        try:
            hook = self._config.authorize
            if hook is not None:
                verdict: object
                try:
                    verdict = hook(self._context(call), call.request)
                    if isinstance(verdict, Awaitable):
                        verdict = await verdict
                except Exception as exc:
                    verdict = exc
                if not core.authorized(call, verdict):  # answered: denied, or the hook failed
                    await self._output.flush()
                    return
            args = (call.request, self._context(call)) if handler.wants_context else (call.request,)
            if handler.spec.streaming:
                await self._run_stream(call, args)
                result = None
            elif handler.is_async:
                result = await handler.function(*args)
            else:
                result = await self._in_thread(call, handler.function, args)
        except Exception as exc:
            core.finish(call, raised=exc)
        else:
            core.finish(call, result)
        if not self._conn._corking:
            await self._output.flush()

    async def _in_thread(
        self, call: ServerCall, function: Any, args: tuple[Any, ...], *, always: bool = False
    ) -> Any:
        """Run a plain function in the server's handler threads. A cancel
        abandons it (it runs on; its outcome then only releases the call's
        request descriptors, which stay open while it may use them); a call
        cancelled while it waits for a free thread never runs, unless
        *always* (cleanup)."""
        waiter = self._new_waiter()
        core = self._core
        waiter.late = lambda outcome: _finish_late(core, call, outcome)  # an abandoned call's outcome
        job, job_args = (function, args) if always else (_unless_answered, (call, function, args))
        self._config.handler_threads().submit(job, job_args, waiter.settle_threadsafe)
        worker: Worker = call.engine
        worker.in_thread = True
        try:
            ok, value = await waiter.wait()
        except BaseException:
            core.stop(call, running=True)  # answered now; its outcome (late) only releases
            raise
        worker.in_thread = False
        if not ok:
            raise value
        return value

    async def _run_stream(self, call: ServerCall, args: tuple[Any, ...]) -> None:
        handler = call.handler
        items = handler.function(*args)
        if handler.is_async:
            try:
                while await self._room_for_item(call):
                    try:
                        item = await anext(items)
                    except StopAsyncIteration:
                        break
                    self._send_item(call, item)
                    if not self._conn._corking:
                        await self._output.flush()
            finally:
                with anyio.CancelScope(shield=True):
                    await items.aclose()
            return
        stepper = _GeneratorStepper(items)
        try:
            while await self._room_for_item(call):
                item = await self._in_thread(call, stepper.step, ())
                if item is _DONE:
                    break
                self._send_item(call, item)
                if not self._conn._corking:
                    await self._output.flush()
        finally:
            if not stepper.close_later():  # else a step still runs: its thread closes it
                with anyio.CancelScope(shield=True):
                    await self._in_thread(call, stepper.close, (), always=True)

    async def _room_for_item(self, call: ServerCall) -> bool:
        """Wait until the stream *call* may produce its next item (the core's
        :meth:`~ServerConnection.stream_step`: credit and room in the output);
        False once it must stop. The loop runs between items even when the
        producer never awaits."""
        await anyio.lowlevel.checkpoint()  # a cancel between items stops the stream
        core = self._core
        worker: Worker = call.engine
        while True:
            step = core.stream_step(call)
            if step == ITEM:
                return True
            if step == STOP:
                return False
            if step == NO_ROOM:
                await self._output.flush()  # the peer reads, or the write fails
                continue
            wake = worker.credit = self._new_wakeup()
            try:
                await wake.wait()
            finally:
                worker.credit = None

    def _send_item(self, call: ServerCall, item: Any) -> None:
        self._core.item(call, item)  # InternalError: the stream fails with it


def _finish_late(core: ServerConnection, call: ServerCall, outcome: tuple[bool, Any]) -> None:
    ok, value = outcome
    if ok:
        core.finish(call, value)
    else:
        core.finish(call, raised=value)


def _unless_answered(call: ServerCall, function: Any, args: tuple[Any, ...]) -> Any:
    """Run in a handler thread: *function*, unless its call was answered
    (cancelled) while it waited for a free thread."""
    if call.answered:
        raise CallCancelledError("call cancelled before a thread was free to run it")
    return function(*args)


class _GeneratorStepper:
    """Steps a plain generator in handler threads; if the stream is cancelled
    while a step runs, the thread running it closes the generator when the
    step returns (a generator cannot be closed from another thread while it
    runs)."""

    def __init__(self, items: Any) -> None:
        self._items = items
        self._lock = threading.Lock()
        self._running = False
        self._close_after = False

    def step(self) -> Any:
        with self._lock:
            self._running = True
        try:
            return next(self._items, _DONE)
        finally:
            with self._lock:
                self._running = False
                close = self._close_after
            if close:
                self._items.close()

    def close_later(self) -> bool:
        """True if a step runs now (it closes the generator when done); else
        the caller closes it with :meth:`close`."""
        with self._lock:
            if self._running:
                self._close_after = True
                return True
            return False

    def close(self) -> None:
        self._items.close()
