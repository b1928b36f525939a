"""One-shot wake-ups between tasks, at the lowest cost each backend offers.

The RPC hot paths need one wake-up per call: a server worker picking up a
call, a client caller handed its reply. ``anyio.Event`` costs about fifteen
Python calls to create, set and wait on (it dispatches to the backend, then
wraps the backend's own event); here it is an asyncio future, or on trio
the task parked and rescheduled directly (``trio.Event`` keeps a set of
waiting tasks and an attrs instance for the one waiter there is).

A wake-up has one waiter. Cancellation behaves as with ``anyio.Event``: the
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
    """asyncio: a future the waiter awaits directly."""

    __slots__ = ("_future",)

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        # the C future's constructor, where loop.create_future() is a Python frame around it
        self._future: asyncio.Future[None] = _Future(loop=loop)

    def set(self) -> None:
        future = self._future
        if not future.done():  # done: already set, or the waiter was cancelled
            future.set_result(None)

    def wait(self) -> Awaitable[None]:
        return self._future


class _TrioWakeup:
    """trio: the waiting task parked with ``wait_task_rescheduled`` and
    rescheduled by ``set()``; a wait after ``set()`` is a checkpoint, as
    ``trio.Event.wait``."""

    __slots__ = ("_flag", "_task")

    def __init__(self) -> None:
        self._flag = False
        self._task: Any = None

    def set(self) -> None:
        if not self._flag:
            self._flag = True
            task = self._task
            if task is not None:
                self._task = None
                _trio_lowlevel.reschedule(task)

    async def wait(self) -> None:
        if self._flag:
            await _trio_lowlevel.checkpoint()
            return
        self._task = _trio_lowlevel.current_task()
        await _trio_lowlevel.wait_task_rescheduled(self._abort)

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
