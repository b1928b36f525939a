"""The event-loop thread that ``async def`` handlers run on under the threads
engine: one asyncio loop per server, started with it when it has async
handlers.

A call hands its coroutine over with one ``call_soon_threadsafe`` (one
task, one :class:`concurrent.futures.Future` the connection's thread waits
on, one lock held until the task is over): about 40 µs a round trip on one CPU,
where an anyio blocking portal (a task group spawn and its wrappers on
every call) took about 95 µs. Handlers still run in a real asyncio loop,
so anyio's functions and cancel scopes work in them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import Future, InvalidStateError
from typing import Any, Final

import anyio

__all__ = ["THREAD_NAME", "LoopThread"]

logger = logging.getLogger("unixrpc.server")

#: the loop thread's name (what a thread listing shows)
THREAD_NAME: Final = "unixrpc-async-handlers"
#: how long close() waits for cancelled handlers to finish their cleanup
_CLOSE_WAIT: Final = 5.0


class LoopThread:
    """The event-loop thread ``async def`` handlers run on under the threads
    engine (a daemon thread running one asyncio loop)."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._closed = False
        self._running: set[_Running] = set()  # the calls on the loop (touched there only)
        self._thread = threading.Thread(target=self._run, name=THREAD_NAME, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        loop = self._loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()

    def start(self, function: Callable[..., Awaitable[Any]], *args: Any) -> Future[Any]:
        """Start ``function(*args)`` on the loop; cancel it with the future
        (the task is cancelled there; its cleanup runs after the future says
        cancelled).

        Raises:
            RuntimeError: the loop thread has stopped.
        """
        if self._closed:
            raise RuntimeError("the threads engine's event-loop thread has stopped")
        awaitable = function(*args)  # a coroutine's body runs on the loop, not here
        if not asyncio.iscoroutine(awaitable):
            awaitable = _wrapped(awaitable)
        return asyncio.run_coroutine_threadsafe(awaitable, self._loop)

    def start_call(self, make: Callable[[], Awaitable[Any]]) -> tuple[Future[Any], threading.Lock]:
        """Run ``await make()`` on the loop for a call: the future to wait on
        (cancelling it cancels the call there, through an anyio cancel
        scope, so the handler's shielded scopes are honoured as on the anyio
        engine), and a lock held until the task is over, its cleanup after a
        cancel included (also when it was cancelled before it began: then
        nothing ran).

        Raises:
            RuntimeError: the loop thread has stopped.
        """
        if self._closed:
            raise RuntimeError("the threads engine's event-loop thread has stopped")
        future: Future[Any] = Future()
        ended = threading.Lock()
        ended.acquire()
        loop, running = self._loop, self._running

        def begin() -> None:  # on the loop
            if future.cancelled():  # before it began: nothing runs
                ended.release()
                return
            run = _Running()
            run.task = loop.create_task(_call(make, future, run))
            running.add(run)

            def task_done(task: asyncio.Task[Any]) -> None:
                running.discard(run)
                ended.release()
                if not future.done():  # cancelled before its first step (a close): nothing ran
                    future.cancel()

            def cancelled(done: Future[Any]) -> None:  # on the thread that cancelled it
                if done.cancelled():
                    with contextlib.suppress(RuntimeError):  # the loop is closed: nothing runs there
                        loop.call_soon_threadsafe(run.cancel)

            run.task.add_done_callback(task_done)
            future.add_done_callback(cancelled)

        loop.call_soon_threadsafe(begin)
        return future, ended

    def close(self) -> None:
        """Cancel what still runs on the loop, wait for it (at most 5 s: a
        handler that ignores its cancellation is left behind, and logged),
        then stop the loop and its thread. Idempotent; a loop that already
        stopped is let be."""
        if self._closed:
            return
        self._closed = True
        loop = self._loop
        cancel_all = _cancel_all(self._running)
        try:
            done = asyncio.run_coroutine_threadsafe(cancel_all, loop)
        except RuntimeError:  # the loop is closed already
            cancel_all.close()
            return
        try:
            done.result(_CLOSE_WAIT)
        except TimeoutError:
            logger.warning("an async handler still runs %ss after it was cancelled; left behind", _CLOSE_WAIT)
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(loop.stop)
        self._thread.join(_CLOSE_WAIT)


class _Running:
    """A call running on the loop: its task, and the cancel scope its
    handler runs in (None until the task's first step)."""

    __slots__ = ("scope", "task")

    def __init__(self) -> None:
        self.task: asyncio.Task[Any] | None = None
        self.scope: anyio.CancelScope | None = None

    def cancel(self) -> None:  # on the loop
        if self.scope is not None:
            self.scope.cancel()  # shielded scopes inside the handler hold
        elif self.task is not None:
            self.task.cancel()  # before its first step: nothing ran


async def _wrapped(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


async def _call(make: Callable[[], Awaitable[Any]], future: Future[Any], run: _Running) -> None:
    """A call's task: its outcome goes to *future* in the task's own step
    (the waiting thread wakes a loop turn before the task's callbacks run).
    A handler's BaseException (SystemExit, KeyboardInterrupt) is its call's
    outcome, raised in the connection's thread as a plain ``def`` handler's
    would be: it never stops the loop the other async calls run on."""
    scope = run.scope = anyio.CancelScope()
    result: Any = _CANCELLED
    try:
        with scope:
            result = await make()
    except BaseException as exc:
        with contextlib.suppress(InvalidStateError):  # the caller cancelled it
            if isinstance(exc, asyncio.CancelledError):
                future.cancel()
            else:
                future.set_exception(exc)
        if isinstance(exc, asyncio.CancelledError):
            raise
        return
    with contextlib.suppress(InvalidStateError):
        if result is _CANCELLED:  # the scope was cancelled: by the future, or close()
            future.cancel()
        else:
            future.set_result(result)


_CANCELLED: Final = object()


async def _cancel_all(running: set[_Running]) -> None:
    for run in list(running):
        run.cancel()
    this = asyncio.current_task()
    tasks = [task for task in asyncio.all_tasks() if task is not this]
    for task in tasks:
        if not any(run.task is task for run in running):
            task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
