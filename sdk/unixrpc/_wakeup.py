"""One-shot wake-ups between tasks, at the lowest cost each backend offers.

The RPC hot paths need one wake-up per call: a server worker picking up a
call, a client caller handed its reply. ``anyio.Event`` costs about fifteen
Python calls to create, set and wait on (it dispatches to the backend, then
wraps the backend's own event); here it is an asyncio future, or a
``trio.Event``, and nothing else.

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


class _FutureWakeup:
    """asyncio: a future the waiter awaits directly."""

    __slots__ = ("_future",)

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._future: asyncio.Future[None] = loop.create_future()

    def set(self) -> None:
        future = self._future
        if not future.done():  # done: already set, or the waiter was cancelled
            future.set_result(None)

    def wait(self) -> Awaitable[None]:
        return self._future


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
    return trio.Event
