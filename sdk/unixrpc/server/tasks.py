"""The pieces a server connection's tasks are made of: a call ready to run
(:class:`Job`), a task of the connection's pool (:class:`Worker`), a
stream's credit (:class:`Credit`), and :func:`resume`, which finishes a
coroutine in the current task after its first step was taken by hand.

No I/O; anyio only for events and cancel scopes.
"""

from __future__ import annotations

import types
from collections.abc import Coroutine, Generator
from typing import TYPE_CHECKING, Any, NamedTuple

import anyio

from .._wakeup import Wakeup
from ..fds import FdContext

if TYPE_CHECKING:
    from .server import _Handler

__all__ = ["READER_BUDGET", "Credit", "Job", "Worker", "resume"]


class Credit:
    """How many more items a stream may send before the client asks for more."""

    __slots__ = ("_event", "available")

    def __init__(self, window: int) -> None:
        self.available = window
        self._event: anyio.Event | None = None

    def grant(self, count: int) -> None:
        self.available += count
        if self._event is not None:
            self._event.set()
            self._event = None

    async def take(self) -> None:
        while self.available <= 0:
            event = self._event = anyio.Event()
            await event.wait()
        self.available -= 1


class Job(NamedTuple):
    """One validated call, ready to run."""

    handler: _Handler
    request: Any
    call_id: int | None  # None for a notification
    key: int | object  # in_flight key: the call id, or a fresh object for a notification
    window: int | None  # a stream's credit window
    request_fds: FdContext


class Worker:
    """A task of the connection's pool. It reads (one task at a time does),
    runs the calls it reads in place, and when one of them waits, passes the
    reading on and finishes that call; then it parks until it is given the
    reading again. Reused: spawning a task per call costs more than the call.

    Its calls run in one long-lived cancel scope (entering and leaving a scope
    per call costs about as much as a small call): the call in progress is
    the only one a cancel can reach, and a cancelled scope is replaced."""

    __slots__ = ("current", "scope", "wake")

    def __init__(self, scope: anyio.CancelScope, wake: Wakeup) -> None:
        self.current: Job | None = None  # the call being run
        self.scope = scope
        self.wake = wake


@types.coroutine
def resume(coro: Coroutine[Any, Any, Any], yielded: Any) -> Generator[Any, Any, Any]:
    """Drive *coro*, whose first step yielded *yielded*, to its end in the
    current task: what ``await coro`` would have done after that step."""
    while True:
        try:
            sent = yield yielded
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as exc:  # cancellation and the like: the coroutine handles it
            try:
                yielded = coro.throw(exc)
            except StopIteration as stop:
                return stop.value
        else:
            try:
                yielded = coro.send(sent)
            except StopIteration as stop:
                return stop.value


#: inline calls a reader runs back to back before it lets other tasks run
READER_BUDGET = 64
