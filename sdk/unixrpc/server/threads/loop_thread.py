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
        (cancelling it cancels the task there), and a lock held until the
        task is over, its cleanup after a cancel included (also when it was
        cancelled before it began: then nothing ran).

        Raises:
            RuntimeError: the loop thread has stopped.
        """
        if self._closed:
            raise RuntimeError("the threads engine's event-loop thread has stopped")
        future: Future[Any] = Future()
        ended = threading.Lock()
        ended.acquire()
        loop = self._loop

        def begin() -> None:  # on the loop
            if future.cancelled():  # before it began: nothing runs
                ended.release()
                return
            task = loop.create_task(_call(make, future))

            def task_done(task: asyncio.Task[Any]) -> None:
                ended.release()
                if not future.done():  # cancelled before its first step (a close): nothing ran
                    future.cancel()

            task.add_done_callback(task_done)
            future.add_done_callback(lambda done: done.cancelled() and loop.call_soon_threadsafe(task.cancel))

        loop.call_soon_threadsafe(begin)
        return future, ended

    def close(self) -> None:
        """Cancel what still runs on the loop, wait for it (at most 5 s: a
        handler that ignores its cancellation is left behind, and logged),
        then stop the loop and its thread. Idempotent."""
        if self._closed:
            return
        self._closed = True
        loop = self._loop
        done = asyncio.run_coroutine_threadsafe(_cancel_all(), loop)
        try:
            done.result(_CLOSE_WAIT)
        except TimeoutError:
            logger.warning("an async handler still runs %ss after it was cancelled; left behind", _CLOSE_WAIT)
        loop.call_soon_threadsafe(loop.stop)
        self._thread.join(_CLOSE_WAIT)


async def _wrapped(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


async def _call(make: Callable[[], Awaitable[Any]], future: Future[Any]) -> None:
    """A call's task: its outcome goes to *future* in the task's own step
    (the waiting thread wakes a loop turn before the task's callbacks run)."""
    try:
        result = await make()
    except BaseException as exc:
        with contextlib.suppress(InvalidStateError):  # the caller cancelled it
            if isinstance(exc, asyncio.CancelledError):
                future.cancel()
            else:
                future.set_exception(exc)
        if not isinstance(exc, Exception):
            raise
    else:
        with contextlib.suppress(InvalidStateError):
            future.set_result(result)


async def _cancel_all() -> None:
    this = asyncio.current_task()
    tasks = [task for task in asyncio.all_tasks() if task is not this]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
