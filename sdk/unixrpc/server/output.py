"""FrameWriter: the write side of one server connection.

Owns how frames leave: a frame without descriptors is written straight to
the socket when it takes it (no packet layer); one with descriptors goes
through the transport's ``send_packet``. While the reader runs requests it
already has in hand, the frames they produce are *corked* and written with
one ``send`` when it runs out; every later write drains the cork first, so
the frames of one call stay in order. A frame is never cut in half by a
cancel once it started (shielded writes), and the reader never waits for a
write: :meth:`flush_nowait` hands back what finishes a short write.

Never reads; knows nothing of calls beyond the id an error reply needs.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable

import anyio

from .._core import wire
from .._core.framing import FrameSerializer
from .._core.wire import HEADER
from ..exceptions import FrameTooLargeError, InternalError, LocalProtocolError
from ..fds import FdContext
from ..rpc._calls import outgoing
from ..transport.async_client import AsyncUnixStreamClient

__all__ = ["FrameWriter"]

logger = logging.getLogger("unixrpc.server")


class FrameWriter:
    """Writes the frames of one connection (see the module docstring)."""

    __slots__ = ("_connection_id", "_cork", "_framing", "_transport", "_unsent", "corking")

    def __init__(
        self,
        transport: AsyncUnixStreamClient[wire.RawFrame, wire.RawFrame],
        framing: FrameSerializer,
        connection_id: int,
    ) -> None:
        self._transport = transport
        self._framing = framing
        self._connection_id = connection_id
        #: set by the reader while it runs a request with more in hand
        self.corking = False
        self._cork: list[bytes] = []
        self._unsent = 0  # corked frames not yet fully written

    def pending(self) -> bool:
        """Frames accepted but not yet fully written."""
        return self._unsent > 0

    def has_cork(self) -> bool:
        return bool(self._cork)

    def send_nowait(self, body: bytes, call_id: int | None = None) -> Awaitable[None] | None:
        """Send a frame without descriptors as far as can be done without
        waiting: corked while the reader has more requests in hand, else
        written with the cork drained first. Returns None when that is all,
        else what finishes the write (shielded: await it before this task
        sends anything else). Errors as :meth:`send`, which it falls back
        on for a frame over the limit."""
        if len(body) > self._framing.max_frame_size:
            return self.send(body, None, call_id, shield=True)  # which answers with an error
        data = HEADER.pack(len(body), 0) + body
        if self.corking:  # the reader has more requests in hand: one write for all
            self._cork.append(data)
            self._unsent += 1
            return None
        corked = len(self._cork)
        if corked:  # what was corked goes first: frames of a call stay in order
            self._cork.append(data)
            data = b"".join(self._cork)
            self._cork.clear()
            self._unsent += 1
            corked += 1
        try:
            sent = self._transport.try_send(data)
        except (ConnectionError, OSError) as exc:
            self._unsent -= corked
            logger.debug("connection %d: reply not sent: %s", self._connection_id, exc)
            return None
        if sent == len(data):
            self._unsent -= corked
            return None
        return self._finish_flush(data, sent, corked)

    async def send(
        self,
        body: bytes,
        fd_context: FdContext | None = None,
        call_id: int | None = None,
        *,
        shield: bool = False,
    ) -> None:
        """Send one frame (its descriptors are closed once sent, or given up).

        With *shield* (frames sent inside a call's cancel scope) a cancel never
        cuts it in half, which would break the stream; shutdown unblocks a
        write stuck on a peer that does not read by closing the transport. A
        reply over the frame limit is replaced by a short InternalError for
        the same call. Errors of a broken connection are logged, not raised.
        """
        transport = self._transport
        try:
            if fd_context is None or not fd_context.outgoing:
                data = self._framing.frame_bytes(body)
                if self.corking:  # the reader has more requests in hand: one write for all
                    self._cork.append(data)
                    self._unsent += 1
                    return
                corked = len(self._cork)
                if corked:  # what was corked goes first: frames of a call stay in order
                    self._cork.append(data)
                    data = b"".join(self._cork)
                    self._cork.clear()
                try:
                    sent = transport.try_send(data)
                    if sent != len(data):
                        if shield or corked:  # never cut a frame, nor lose other calls' replies
                            with anyio.CancelScope(shield=True):
                                await transport.finish_send(data, sent)
                        else:
                            await transport.finish_send(data, sent)
                finally:
                    self._unsent -= corked
                return
            if self._cork:
                await self.flush()
            frame, ancillary = outgoing(body, fd_context)
            if shield:
                with anyio.CancelScope(shield=True):
                    await transport.send_packet(frame, ancillary_data=ancillary)
            else:
                await transport.send_packet(frame, ancillary_data=ancillary)
        except (FrameTooLargeError, LocalProtocolError, ValueError) as exc:
            logger.error("connection %d: reply not sent: %s", self._connection_id, exc)
            if call_id is not None:
                error = InternalError(f"the reply could not be sent: {exc}")
                await self.send(wire.encode_error(call_id, error.code, error.message), shield=shield)
        except (ConnectionError, OSError) as exc:
            logger.debug("connection %d: reply not sent: %s", self._connection_id, exc)
        finally:
            if fd_context is not None:
                fd_context.sent()

    async def flush(self) -> None:
        """Write the corked frames, waiting for room if need be."""
        pending = self.flush_nowait()
        if pending is not None:
            await pending

    def flush_nowait(self) -> Awaitable[None] | None:
        """Write the corked frames as far as the socket takes them now; if it
        takes only part, return what writes the rest (await it before this
        task sends or awaits anything else: it takes the send lock first)."""
        data = b"".join(self._cork)
        corked = len(self._cork)
        self._cork.clear()
        try:
            sent = self._transport.try_send(data)
        except (ConnectionError, OSError) as exc:
            self._unsent -= corked
            logger.debug("connection %d: replies not sent: %s", self._connection_id, exc)
            return None
        if sent == len(data):
            self._unsent -= corked
            return None
        return self._finish_flush(data, sent, corked)

    async def _finish_flush(self, data: bytes, sent: int | None, corked: int) -> None:
        try:
            with anyio.CancelScope(shield=True):
                await self._transport.finish_send(data, sent)
        except (ConnectionError, OSError) as exc:
            logger.debug("connection %d: replies not sent: %s", self._connection_id, exc)
        finally:
            self._unsent -= corked
