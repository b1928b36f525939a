"""How the anyio engine writes what the core queued (composed into
:class:`.connection.Connection`, which it tells when its deadline may have
moved): while the reader still has requests in
hand replies pile up (one ``send`` for a batch); otherwise whoever produced
output writes it at once. A short write is finished by the task that began
it, shielded (a frame is never cut in half), and that task also writes what
was queued meanwhile, so frames keep their order.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from typing import TYPE_CHECKING

import anyio

from ..._core.server import Chunk, FdFrame
from ..._wakeup import Wakeup

if TYPE_CHECKING:
    from .connection import Connection

__all__ = ["Output"]

logger = logging.getLogger("unixrpc.server")


class Output:
    """Writing: empties the core's outbox of one connection (see the module docstring)."""

    __slots__ = ("_conn", "_core", "_io", "_new_wakeup", "_write_done", "writing")

    def __init__(self, connection: Connection) -> None:
        self._conn = connection
        self._core = connection.core
        self._io = connection._io
        self._new_wakeup = connection._new_wakeup
        #: a task is finishing a short write (and writes what follows)
        self.writing = False
        self._write_done: Wakeup | None = None  # set when it is done

    async def flush(self) -> None:
        """Write what the core has queued, waiting for room if need be (and
        for a task finishing a short write to be done)."""
        if self.writing:
            done = self._write_done
            if done is None:
                done = self._write_done = self._new_wakeup()
            await done.wait()
        pending = self.flush_nowait()
        if pending is not None:
            await pending

    async def wait_idle(self) -> None:
        """Wait for a task finishing a short write to be done (it gives up
        at once on a closed socket)."""
        if self.writing:
            done = self._write_done
            if done is None:
                done = self._write_done = self._new_wakeup()
            await done.wait()

    def flush_nowait(self) -> Awaitable[None] | None:
        """Write what the core has queued as far as the socket takes it now:
        None when all of it went (or a task finishing a short write will
        write it), else what finishes the write (await it before this task
        writes anything else)."""
        if self.writing:
            return None
        core, io = self._core, self._io
        chunks = core.take_output()
        for index, chunk in enumerate(chunks):
            try:
                data, fds = _wire(chunk)
                sent = io.send(data, 0, fds)
            except (ConnectionError, OSError, ValueError) as exc:  # ValueError: a closed FileDescriptor
                self._give_up(chunks[index:], exc)
                return None
            if sent != len(data):
                self.writing = True
                return self._finish_writes(chunks[index:], sent)
            core.written(chunk)
        if chunks:
            conn = self._conn
            if conn._wait_scope is not None or conn._waiting_plain:
                conn.deadline_changed()
        return None

    async def _finish_writes(self, chunks: list[Chunk], sent: int) -> None:
        """Write *chunks*, the first begun with *sent* bytes, then whatever
        the core queued meanwhile (shielded: a frame is never cut)."""
        core, io = self._core, self._io
        limit = core.write_timeout
        try:
            with anyio.CancelScope(shield=True):
                while chunks:
                    for index, chunk in enumerate(chunks):
                        try:
                            data, fds = _wire(chunk)
                            total = len(data)
                            # (shielded from the call's cancellation, not from the peer that does not read)
                            with anyio.CancelScope(deadline=anyio.current_time() + limit) as timer:
                                while True:
                                    sent = io.send(data, sent, fds)
                                    if sent >= total:
                                        break
                                    await io.wait_writable()
                            if timer.cancelled_caught:  # the peer does not read: it goes as if it hung up
                                if sent:
                                    io.cut("a send timed out in the middle of a frame")
                                reason = core.write_timed_out().reason
                                io.shutdown()
                                raise TimeoutError(reason)
                        except (ConnectionError, OSError, ValueError) as exc:
                            self._give_up(chunks[index:], exc)
                            return
                        sent = 0
                        core.written(chunk)
                    chunks = core.take_output()
        finally:
            self.writing = False
            done, self._write_done = self._write_done, None
            if done is not None:
                done.set()
            conn = self._conn
            if conn._wait_scope is not None or conn._waiting_plain:
                conn.deadline_changed()

    def _give_up(self, chunks: list[Chunk], exc: BaseException) -> None:
        logger.debug("connection %d: replies not sent: %s", self._conn.connection_id, exc)
        for chunk in chunks:
            self._core.written(chunk, ok=False)


def _wire(chunk: Chunk) -> tuple[bytes, list[int] | None]:
    """The bytes of *chunk* and the descriptors that go with its first byte.

    Raises:
        ValueError: a descriptor of the frame was closed before it was sent.
    """
    if type(chunk) is bytes:
        return chunk, None
    assert isinstance(chunk, FdFrame)
    return chunk.data, chunk.fileno_list()
