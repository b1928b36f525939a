"""Reading under the anyio engine (composed into
:class:`.connection.Connection`, working on its state): choosing the wire
from the first byte, one read handed to the core (bytes, descriptors, a
failed read, the time), and the wait for data or for the core's next
deadline. The reader's loop (:meth:`.connection.Connection._read`) takes
what comes in and runs it.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import anyio

from ..._core import wire
from ..._core.server.wires import VARLINK
from ...exceptions import StreamProtocolParseError
from ..kit import NO_BYTE, first_byte

if TYPE_CHECKING:
    from .connection import Connection

__all__ = ["Intake", "loop_clock"]


class Intake:
    """Reads one connection (see the module docstring)."""

    __slots__ = ("_conn", "_core", "_io", "_output")

    def __init__(self, connection: Connection) -> None:
        self._conn = connection
        self._core = connection.core
        self._io = connection._io
        self._output = connection._output

    async def receive(self) -> list[wire.RawFrame] | None:
        """One read: the frames it completed (maybe none); None if the
        reading is over (the core said why)."""
        conn, io, core = self._conn, self._io, self._core
        if conn._choosing and not self.choose_wire():
            return []  # nothing came yet
        try:
            frames = io.receive()
            if conn._varlink and frames and io.buffered_size():
                frames += io.buffered_frames()  # (the core counts a read's frames)
        except (StreamProtocolParseError, OSError) as exc:  # (a bad frame, MSG_CTRUNC, the end)
            core.read_failed(exc)
            await self._output.flush()
            return None
        finally:
            received = io.fds
            if received:
                io.fds = []
                core.receive_fds(received)
        buffered = io.buffered_size()
        conn._partial = buffered > 0
        if conn._varlink:
            frames = core.frames_read(frames, buffered > 0)  # which frame the read's descriptors ride on
        if frames or buffered:  # bytes came (or a frame is still half read)
            excess = max(io.receive_buffer_size() - wire.SERVER_RECV_SIZE, 0)
            now = conn._clock() if buffered or conn._idle_limit else 0.0  # (the time only matters then)
            if core.received(now, partial=buffered > 0, receive_buffer=excess) is not None:
                await self._output.flush()  # over the server's memory budget
                return None
        return frames

    async def wait_for_data(self) -> bool:
        """Wait for the socket, or for the core's next deadline: False if
        the core closed the connection when it passed."""
        conn, core = self._conn, self._core
        if not conn._partial and not conn._idle_limit:  # (the common case: no deadline, no scope)
            conn._waiting_plain = True
            try:
                await self._io.wait_readable()
            finally:
                conn._waiting_plain = False
            return True
        deadline = core.next_deadline(conn._clock())
        with anyio.CancelScope(deadline=math.inf if deadline is None else deadline) as scope:
            conn._wait_scope = scope  # moved by deadline_changed() when a call ends meanwhile
            try:
                await self._io.wait_readable()
            finally:
                conn._wait_scope = None
        if scope.cancelled_caught and core.on_timer(conn._clock()) is not None:
            await self._output.flush()
            return False
        return True

    def choose_wire(self) -> bool:
        """Let the core choose the wire from the first byte (left unread):
        False if none came yet."""
        conn = self._conn
        first = first_byte(self._io.sock)
        if first is None:
            return False
        conn._choosing = False
        if first != NO_BYTE and self._core.choose_wire(first) == VARLINK:
            assert conn._config.varlink_protocol is not None
            self._io.switch_protocol(conn._config.varlink_protocol)
            self._core.watch_turns(conn._turn_came)
            conn._varlink = True
        return True


def loop_clock() -> Callable[[], float]:
    """The running loop's clock, the one anyio's deadlines use
    (``anyio.current_time``), looked up once per connection."""
    try:
        return asyncio.get_running_loop().time
    except RuntimeError:  # not asyncio: trio
        import trio

        return trio.current_time
