"""The event-loop thread that ``async def`` handlers run on under the
threads engine: one asyncio loop per server, started with it when it has
async handlers (an anyio blocking portal)."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from typing import Any

__all__ = ["LoopThread"]


class LoopThread:
    """The event-loop thread ``async def`` handlers run on under the threads
    engine (an anyio blocking portal on asyncio)."""

    def __init__(self) -> None:
        from anyio.from_thread import start_blocking_portal

        self._manager = start_blocking_portal("asyncio")
        self._portal = self._manager.__enter__()

    def start(self, function: Callable[..., Awaitable[Any]], *args: Any) -> Future[Any]:
        """Start ``function(*args)`` on the loop; cancel it with the future.

        Raises:
            RuntimeError: the loop thread has stopped.
        """
        return self._portal.start_task_soon(function, *args)

    def close(self) -> None:
        """Stop the loop, after cancelling what still runs there."""
        self._portal.call(self._portal.stop, True)
        with contextlib.suppress(Exception):
            self._manager.__exit__(None, None, None)
