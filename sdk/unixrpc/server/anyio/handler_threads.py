"""HandlerThreads: the threads that run plain ``def`` handlers for the anyio
engine, and the wait that brings their outcome back into the event loop.

``anyio.to_thread.run_sync`` costs about 100 us per call on one CPU (a
capacity limiter, a worker lookup, a queue, a cancel scope, and a hop back).
Here a handler is put on one ``SimpleQueue`` that long-lived threads block
on, and its outcome comes back with one ``call_soon_threadsafe`` (asyncio)
or ``run_sync_soon`` (trio) that settles what the call's task awaits.

Bounded: at most ``max_threads`` threads exist, started on demand; more
jobs wait in the queue (their number is bounded by the calls in flight the
server allows). A call cancelled while its handler runs does not free its
thread: the thread stays busy until the handler returns, so abandoned
handlers never add threads beyond the bound. Threads end when the pool is
closed (after their job) and are daemon threads, so a wedged handler never
blocks interpreter exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

from ..._ratelog import RateLimitedLog
from ...exceptions import ServerBusyError

__all__ = ["HandlerThreads", "ThreadOutcome", "outcome_waiter"]

_NO_THREAD = "the server could not start a thread to run this call; try again later"
_thread_start_failed = RateLimitedLog(
    logging.getLogger("unixrpc.server"), logging.ERROR, "failed thread starts"
)

#: (True, value) for a return, (False, exception) for a raise
ThreadOutcome = tuple[bool, Any]
_STOP = None


class _NeverRan(Exception):
    """The outcome of a job the pool dropped at close."""


class HandlerThreads:
    """A bounded pool of long-lived threads (see the module docstring).

    Args:
        max_threads: the most threads it starts.

    Raises:
        ValueError: *max_threads* is below 1.
    """

    def __init__(self, max_threads: int, name: str = "unixrpc-handler") -> None:
        if max_threads < 1:
            raise ValueError(f"max_threads must be at least 1, got {max_threads}")
        self.max_threads = max_threads
        self._name = name
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = 0
        self._idle = 0
        self._closed = False

    @property
    def threads(self) -> int:
        """Threads started and not yet ended."""
        return self._threads

    def submit(
        self, function: Callable[..., Any], args: tuple[Any, ...], settle: Callable[[ThreadOutcome], None]
    ) -> None:
        """Run ``function(*args)`` in a pool thread, then ``settle(outcome)``
        in that thread (it must be thread-safe).

        Raises:
            RuntimeError: the pool is closed.
        """
        with self._lock:
            if self._closed:
                raise RuntimeError("the handler thread pool is closed")
            start = False
            if self._idle:
                self._idle -= 1  # an idle thread takes it
            elif self._threads < self.max_threads:
                self._threads += 1
                start = True
            # else: it waits for a busy thread
        if start:
            thread = threading.Thread(target=self._run, name=f"{self._name}-{self._threads}", daemon=True)
            try:
                thread.start()
            except RuntimeError as exc:  # "can't start new thread": RLIMIT_NPROC, pids.max, TasksMax=
                with self._lock:
                    self._threads -= 1
                    alone = self._threads == 0
                _thread_start_failed("could not start a thread for the handler pool: %s", exc)
                if alone:  # no thread would ever run it: refused now
                    busy = ServerBusyError(
                        "the server could not start a thread to run this call; try again later"
                    )
                    settle((False, busy))
                    return
        self._jobs.put((function, args, settle))

    def _run(self) -> None:
        jobs = self._jobs
        job = jobs.get()
        while job is not _STOP:
            function, args, settle = job
            try:
                outcome: ThreadOutcome = (True, function(*args))
            except BaseException as exc:  # handed to the loop, which answers the call with it
                outcome = (False, exc)
            del job, function, args
            with contextlib.suppress(RuntimeError):  # the event loop is gone: nobody waits any more
                settle(outcome)
            del outcome, settle
            with self._lock:
                if self._closed:
                    break
                self._idle += 1
            job = jobs.get()
        with self._lock:
            self._threads -= 1

    def close(self) -> None:
        """Let every thread end once it has finished its job (it does not
        wait); jobs still queued never run: each is settled as cancelled, so
        whoever owns what they hold can release it."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            idle, self._idle = self._idle, 0
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not _STOP:
                with contextlib.suppress(RuntimeError):
                    job[2]((False, _NeverRan("the server stopped before a thread was free")))
        for _ in range(max(idle, 0)):
            self._jobs.put(_STOP)


class _AsyncioWaiter:
    """asyncio: a future settled from the thread with one call_soon_threadsafe."""

    __slots__ = ("_call_soon", "future", "late")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.future: asyncio.Future[ThreadOutcome] = loop.create_future()
        self._call_soon = loop.call_soon_threadsafe
        #: run in the loop with the outcome when nobody awaits it any more
        self.late: Callable[[ThreadOutcome], None] | None = None

    def settle_threadsafe(self, outcome: ThreadOutcome) -> None:
        try:
            self._call_soon(self._settle, outcome)
        except RuntimeError:  # the loop is closed: nobody waits, and nothing else runs there
            if self.late is not None:
                self.late(outcome)

    def _settle(self, outcome: ThreadOutcome) -> None:
        future = self.future
        if future.cancelled():
            if self.late is not None:
                self.late(outcome)
        elif not future.done():
            future.set_result(outcome)

    async def wait(self) -> ThreadOutcome:
        future = self.future
        try:
            return await future
        except BaseException:
            if future.done() and not future.cancelled() and self.late is not None:
                self.late(future.result())  # settled as the wait was cancelled
            raise


class _TrioWaiter:
    """trio: an event set from the thread through the loop's token."""

    __slots__ = ("_event", "_outcome", "_run_sync_soon", "abandoned", "late")

    def __init__(self) -> None:
        import trio

        self._event = trio.Event()
        self._run_sync_soon = trio.lowlevel.current_trio_token().run_sync_soon
        self._outcome: ThreadOutcome | None = None
        self.abandoned = False
        self.late: Callable[[ThreadOutcome], None] | None = None

    def settle_threadsafe(self, outcome: ThreadOutcome) -> None:
        try:
            self._run_sync_soon(self._settle, outcome)
        except RuntimeError:  # the run is over (RunFinishedError): nobody waits
            if self.late is not None:
                self.late(outcome)

    def _settle(self, outcome: ThreadOutcome) -> None:
        if self.abandoned:
            if self.late is not None:
                self.late(outcome)
            return
        self._outcome = outcome
        self._event.set()

    async def wait(self) -> ThreadOutcome:
        try:
            await self._event.wait()
        except BaseException:
            if self._outcome is None:
                self.abandoned = True
            else:  # settled as the wait was cancelled: the late hook gets it all the same
                if self.late is not None:
                    self.late(self._outcome)
            raise
        assert self._outcome is not None
        return self._outcome


def outcome_waiter() -> Callable[[], _AsyncioWaiter | _TrioWaiter]:
    """A constructor of waiters for the event loop running this task (call
    it inside the loop; use its waiters in that loop only)."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return _TrioWaiter
    return lambda: _AsyncioWaiter(loop)
