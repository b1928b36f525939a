"""Waiting for a socket to become readable, at the lowest cost each backend offers.

``anyio.wait_readable`` registers the socket with the event loop's selector
before each wait and unregisters it after: on asyncio that is two
``epoll_ctl`` calls and about a dozen Python calls per wait, and a reader
that waits once per message (a sequential caller, a server answering one
request at a time) pays it on every message. On asyncio, a :class:`ReadWatch`
keeps the socket registered while it is being read instead (the way
asyncio's own transports do). The selector is level-triggered, so a
readable socket nobody waits on would wake the loop on every turn: the watch
tolerates one such turn (the reader was woken and is about to read) and
unregisters on the second (the reader is busy elsewhere); the next wait
registers again. On trio, ``trio.lowlevel.wait_readable`` is already what
trio offers: it is called directly (anyio's call looks the backend up on
every wait first), with anyio's exceptions as anyio raises them.

Rules: one task waits at a time (the async transport's receive lock, or the
server engine's single reader, sees to it);
:meth:`ReadWatch.stop` runs before the socket is closed, so the selector never
holds a closed descriptor. Never imports the RPC layers.
"""

from __future__ import annotations

import asyncio
import socket

import anyio

__all__ = ["ReadWatch", "read_watch"]


_Future = asyncio.Future


class ReadWatch:
    """Waits for one socket to become readable (the anyio fallback; trio)."""

    __slots__ = ("_sock",)

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    async def wait(self) -> None:
        """Return once the socket is readable (or has an error or EOF).

        Raises:
            the backend's cancellation exception when cancelled.
        """
        await anyio.wait_readable(self._sock)

    def stop(self) -> None:
        """Stop watching (before the socket is closed). Idempotent."""


class _AsyncioReadWatch(ReadWatch):
    """asyncio: the socket stays registered between waits."""

    __slots__ = ("_fd", "_idle_turns", "_loop", "_waiter")

    def __init__(self, sock: socket.socket, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(sock)  # held, so the descriptor outlives its registration
        self._fd = sock.fileno()
        self._loop = loop
        self._waiter: asyncio.Future[None] | None = None
        self._idle_turns = -1  # -1: not registered

    def _readable(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            self._idle_turns = 0
            if not waiter.done():  # done: its waiter was cancelled
                waiter.set_result(None)
            return
        self._idle_turns += 1
        if self._idle_turns >= 2:  # no one has read for a whole turn: stop spinning
            self.stop()

    async def wait(self) -> None:
        if self._idle_turns < 0:
            self._loop.add_reader(self._fd, self._readable)
        self._idle_turns = 0
        waiter = self._waiter = _Future(loop=self._loop)  # loop.create_future() is a Python frame around it
        try:
            await waiter
        finally:
            if self._waiter is waiter:  # cancelled: no one waits any more
                self._waiter = None

    def stop(self) -> None:
        if self._idle_turns >= 0:
            self._idle_turns = -1
            self._loop.remove_reader(self._fd)


class _TrioReadWatch(ReadWatch):
    """trio: ``trio.lowlevel.wait_readable`` without anyio's dispatch (made
    inside trio only)."""

    __slots__ = ("_trio",)

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(sock)
        import trio

        self._trio = trio

    async def wait(self) -> None:
        trio = self._trio
        try:
            await trio.lowlevel.wait_readable(self._sock)
        except trio.ClosedResourceError as exc:
            raise anyio.ClosedResourceError().with_traceback(exc.__traceback__) from None
        except trio.BusyResourceError:
            raise anyio.BusyResourceError("reading from") from None


def read_watch(sock: socket.socket) -> ReadWatch:
    """The watch for *sock* under the running event loop (call it in the
    loop that will wait on it)."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        return _AsyncioReadWatch(sock, loop)
    try:
        import trio

        trio.lowlevel.current_task()
    except (ImportError, RuntimeError):  # pragma: no cover - anyio runs on asyncio or trio
        return ReadWatch(sock)
    return _TrioReadWatch(sock)
