"""Writing under the threads engine (composed into
:class:`.connection.ThreadConnection`, working on its state under its lock):
one thread writes at a time, and writes what was queued meanwhile before it
stops; a peer that does not read within ``write_timeout`` is taken to have
gone, and frames held back while it did not read are taken in after.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ..._core.server import Chunk, FdFrame

if TYPE_CHECKING:
    from .connection import ThreadConnection

__all__ = ["Writer"]

logger = logging.getLogger("unixrpc.server")


class Writer:
    """Writes the output of one connection (see the module docstring)."""

    __slots__ = ("_conn",)

    def __init__(self, connection: ThreadConnection) -> None:
        self._conn = connection

    def flush(self) -> None:
        """Write what the core has queued, unless another thread is writing
        (it writes what was queued meanwhile before it stops)."""
        conn = self._conn
        with conn._lock:
            if conn._writing or not conn.core.has_output():
                return
            conn._writing = True
            chunks = conn.core.take_output()
        self.write(chunks)

    def write(self, chunks: list[Chunk]) -> None:
        """Write *chunks* (this thread set ``_writing``), then what was
        queued meanwhile, until nothing is left."""
        conn = self._conn
        core, lock, io = conn.core, conn._lock, conn._io
        limit = conn._config.rules.write_timeout  # (each write: then the peer is taken not to read)
        while True:
            done = 0
            try:
                for chunk in chunks:
                    if type(chunk) is bytes:
                        io.send_within(chunk, None, limit)
                    else:
                        assert isinstance(chunk, FdFrame)
                        io.send_within(chunk.data, chunk.fileno_list(), limit)
                    done += 1
            except TimeoutError:  # the peer does not read: it goes as if it hung up
                with lock:
                    core.write_timed_out()  # (before the shutdown: a reader would take it for the peer's)
                io.shutdown()
            except (ConnectionError, OSError, ValueError) as exc:  # ValueError: a closed FileDescriptor
                logger.debug("connection %d: replies not sent: %s", conn.connection_id, exc)
            except BaseException:
                with lock:
                    conn._writing = False
                raise
            with lock:
                for index, chunk in enumerate(chunks):
                    core.written(chunk, ok=index < done)
                if not core.has_output() or core.output_failed:
                    conn._writing = False
                    if core.closing is not None and not conn._reading_over:
                        conn._end_reading()  # the core closed it (its output went over the budget)
                    elif conn._inbox and core.wants_input():  # frames held back while the peer did not read
                        if conn._intake.take_in():
                            conn._end_reading()
                        else:
                            conn._pool.dispatch(0)
                    conn._intake.arm()
                    conn._notify_all()
                    return
                chunks = core.take_output()
