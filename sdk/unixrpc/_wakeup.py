"""One-shot wake-ups between tasks, at the lowest cost each backend offers.

The RPC hot paths need one wake-up per call: a server worker picking up a
call, a client caller handed its reply. ``anyio.Event`` costs about fifteen
Python calls to create, set and wait on (it dispatches to the backend, then
wraps the backend's own event); here it is an asyncio future, or on trio
the task parked and rescheduled directly (``trio.Event`` keeps a set of
waiting tasks and an attrs instance for the one waiter there is).

A wake-up usually has one waiter (a caller and its reply); several may
wait on one (the server's tasks waiting for a short write to end), and
``set()`` wakes them all. Cancellation behaves as with ``anyio.Event``: the
waiting task raises the backend's cancellation exception, and a later
``set()`` is harmless. Used by the async shells only, never by ``_core``.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import anyio

__all__ = ["Wakeup", "wakeup_factory"]


class Wakeup(Protocol):
    """What the shells use: ``set()`` from any task, ``await wait()`` in one."""

    def set(self) -> None: ...

    def wait(self) -> Awaitable[Any]: ...


_Future = asyncio.Future


class _FutureWakeup:
    """asyncio: a future the first waiter awaits directly; any further
    waiter gets a future of its own, since a task cancelled while it awaits
    a future cancels that future, which would raise in every other waiter."""

    __slots__ = ("_awaited", "_future", "_loop", "_more", "_set")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        # the C future's constructor, where loop.create_future() is a Python frame around it
        self._future: asyncio.Future[None] = _Future(loop=loop)
        self._awaited = False
        self._set = False
        self._more: list[asyncio.Future[None]] | None = None

    def set(self) -> None:
        if self._set:
            return
        self._set = True
        future = self._future
        if future.done():  # its waiter was cancelled: later waits find this one
            future = self._future = _Future(loop=self._loop)
        future.set_result(None)
        if self._more:
            for extra in self._more:
                if not extra.done():
                    extra.set_result(None)
            self._more = None

    def wait(self) -> Awaitable[None]:
        future = self._future
        if self._set:
            return future
        if future.done():  # the waiter it had was cancelled
            future = self._future = _Future(loop=self._loop)
        elif self._awaited:
            future = _Future(loop=self._loop)
            if self._more is None:
                self._more = []
            self._more.append(future)
            return future
        self._awaited = True
        return future


class _TrioWakeup:
    """trio: the waiting task parked with ``wait_task_rescheduled`` and
    rescheduled by ``set()``; a wait after ``set()`` is a checkpoint, as
    ``trio.Event.wait``. The first waiter is held in a slot, any further
    ones in a list made only for them."""

    __slots__ = ("_flag", "_more", "_task")

    def __init__(self) -> None:
        self._flag = False
        self._task: Any = None
        self._more: list[Any] | None = None

    def set(self) -> None:
        if not self._flag:
            self._flag = True
            task, more = self._task, self._more
            self._task = self._more = None
            if task is not None:
                _trio_lowlevel.reschedule(task)
            if more:
                for task in more:
                    _trio_lowlevel.reschedule(task)

    async def wait(self) -> None:
        if self._flag:
            await _trio_lowlevel.checkpoint()
            return
        task = _trio_lowlevel.current_task()
        if self._task is None:
            self._task = task
            await _trio_lowlevel.wait_task_rescheduled(self._abort)
            return
        if self._more is None:
            self._more = []
        self._more.append(task)

        def abort(raise_cancel: object) -> Any:
            if self._more is not None:
                self._more.remove(task)
            return _trio_lowlevel.Abort.SUCCEEDED

        await _trio_lowlevel.wait_task_rescheduled(abort)

    def _abort(self, raise_cancel: object) -> Any:
        self._task = None
        return _trio_lowlevel.Abort.SUCCEEDED


_trio_lowlevel: Any = None  # trio.lowlevel, once a trio wake-up factory is asked for


def wakeup_factory() -> Callable[[], Wakeup]:
    """A constructor of wake-ups for the event loop running this task (call
    it inside the loop, and use what it returns in that loop only)."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        loop = None
    if loop is not None:
        return functools.partial(_FutureWakeup, loop)  # a C call, where a lambda is a Python frame
    try:
        import trio
    except ImportError:  # pragma: no cover - anyio runs on asyncio or trio
        return anyio.Event
    try:
        trio.lowlevel.current_task()
    except RuntimeError:  # pragma: no cover - neither asyncio nor trio
        return anyio.Event
    global _trio_lowlevel
    _trio_lowlevel = trio.lowlevel
    return _TrioWakeup
