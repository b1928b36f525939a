"""The pieces the anyio engine's tasks are made of: a task of a
connection's pool (:class:`Worker`), and :func:`resume`, which finishes a
coroutine in the current task after its first step was taken by hand.

No I/O; anyio only for cancel scopes.
"""

from __future__ import annotations

import types
from collections.abc import Coroutine, Generator
from typing import TYPE_CHECKING, Any

import anyio

from ..._wakeup import Wakeup

if TYPE_CHECKING:
    from ..._core.server import ServerCall

__all__ = ["READER_BUDGET", "Worker", "resume"]


class Worker:
    """A task of the connection's pool. It reads (one task at a time does),
    runs the calls it reads in place, and when one of them waits, passes the
    reading on and finishes that call; then it parks until it is given the
    reading again. Reused: spawning a task per call costs more than the call.

    Its calls run in one long-lived cancel scope (entering and leaving a scope
    per call costs about as much as a small call): the call in progress is
    the only one a cancel can reach, and a cancelled scope is replaced."""

    __slots__ = ("credit", "current", "in_thread", "scope", "wake")

    def __init__(self, scope: anyio.CancelScope, wake: Wakeup) -> None:
        self.current: ServerCall | None = None  # the call being run
        self.scope = scope
        self.wake = wake
        self.credit: Wakeup | None = None  # what a stream waiting for credit waits on
        self.in_thread = False  # its call waits for a handler thread (which a cancel abandons)


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
