"""The socket I/O of one accepted connection, written once for every
engine (:class:`ServerSocket`): reading into the protocol's receive buffer
with room for descriptors, writing a frame with its descriptors on its first
byte, waiting (a thread with a deadline, a task through anyio), and a close
that never frees a descriptor number while a thread or task still uses it.

The engines use this instead of the public client transports
(:mod:`..transport`): a server needs none of their locks, protocol layer or
error bookkeeping, only the facts the core's ``read_failed`` expects. It
decides nothing: what a read means is the core's call.

Rules:

* reads never wait (``MSG_DONTWAIT``), always with room for control data and
  ``MSG_CMSG_CLOEXEC``; descriptors that arrived are collected in
  :attr:`ServerSocket.fds` for the engine to hand to the core, even when the
  read raises. ``MSG_CTRUNC`` raises :class:`AncillaryDataTruncatedError`
  after closing every descriptor that did arrive (none is ever lost
  silently); an end of stream or a reset raises
  :class:`ConnectionBrokenError`.
* a frame's descriptors ride on the ``sendmsg`` of its first byte; once a
  frame is cut (a send failed or timed out in its middle), nothing more is
  sent: later sends raise :class:`ConnectionBrokenError`.
* :meth:`ServerSocket.close` shuts the socket down at once (a waiting reader
  or writer wakes), and the descriptor is closed when the last user is done:
  every wait and every syscall on it counts as a use.

Imports neither engine, nor :class:`~unixrpc.Server`, nor the transports.
"""

from __future__ import annotations

import array
import contextlib
import errno
import select
import socket
import threading
import time
from typing import Any, Final

import anyio

from .._core import wire
from .._readwatch import ReadWatch, read_watch
from ..ancillary import SCMRights, close_fds_in, parse_cmsgs
from ..exceptions import AncillaryDataTruncatedError, ClientClosedError, ConnectionBrokenError
from ..protocol import PacketReceiver, StreamProtocol

__all__ = ["LoopServerSocket", "ServerSocket"]

_RECV_FLAGS: Final = int(socket.MSG_DONTWAIT) | int(getattr(socket, "MSG_CMSG_CLOEXEC", 0))
_SEND_FLAGS: Final = int(socket.MSG_DONTWAIT)
_MSG_CTRUNC: Final = int(socket.MSG_CTRUNC)
_RIGHTS: Final = (socket.SOL_SOCKET, socket.SCM_RIGHTS)
#: send errors that mean the peer is gone
_GONE: Final = frozenset({errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.ESHUTDOWN})
#: a send that failed with these wrote nothing (a bad descriptor in the control data)
_NOTHING_SENT: Final = frozenset({errno.EBADF, errno.EINVAL, errno.ETOOMANYREFS})

Cmsgs = list[tuple[int, int, bytes]]


class ServerSocket:
    """One accepted connection's socket (see the module docstring).

    Args:
        sock: the accepted socket; ownership passes to this object.
        protocol: the framing of what is read (servers give back a buffer
            grown for a large frame as soon as the frame is taken).
        ancillary_bufsize: room for one read's control data.
    """

    __slots__ = (
        "_ancbufsize",
        "_broken",
        "_closed",
        "_lock",
        "_receiver",
        "_unused",
        "_users",
        "_watch",
        "fds",
        "sock",
    )

    def __init__(
        self, sock: socket.socket, protocol: StreamProtocol[Any, Any], ancillary_bufsize: int
    ) -> None:
        self.sock = sock
        self._receiver = protocol.receiver(wire.SERVER_RECV_SIZE, keep_large=False)
        self._ancbufsize = ancillary_bufsize
        #: descriptors read and not yet handed to the core (the engine takes them)
        self.fds: list[int] = []
        self._broken: str | None = None  # why nothing more may be sent (a frame was cut)
        self._closed = False
        self._users = 0  # waits and syscalls on the descriptor in progress
        self._lock = threading.Lock()  # guards the two above (a C-level lock: the hot path takes it)
        self._unused = threading.Condition(self._lock)  # close(wait=True) waits on it
        self._watch: ReadWatch | None = None  # anyio: made by the first wait for data

    # -- reading ------------------------------------------------------------------

    def switch_protocol(self, protocol: StreamProtocol[Any, Any]) -> None:
        """Split what is read from now on with *protocol* (the core chose the
        wire from the first byte, peeked, before anything was read)."""
        assert not self._receiver.buffered_size()
        self._receiver = protocol.receiver(wire.SERVER_RECV_SIZE, keep_large=False)

    def buffered_size(self) -> int:
        """Bytes read but not yet returned as frames."""
        return self._receiver.buffered_size()

    def receive_buffer_size(self) -> int:
        """Bytes of receive buffer held now (the read size between frames, up
        to a large frame's size while it arrives)."""
        return self._receiver.allocated_size()

    def buffered_frames(self) -> list[Any]:
        """Every whole frame already buffered, without reading.

        Raises:
            StreamProtocolParseError: the next frame is invalid (consumed).
        """
        return self._receiver.next_packets()

    def receive(self) -> list[Any]:
        """Every whole frame buffered, after one read that does not wait if
        none was; empty if nothing came. Descriptors read go to :attr:`fds`.

        Raises:
            StreamProtocolParseError: the next frame is invalid (the good ones
                before it were returned by an earlier call).
            AncillaryDataTruncatedError: ``MSG_CTRUNC``; the descriptors that
                arrived were closed (the connection cannot go on).
            ConnectionBrokenError: the peer closed or reset the connection.
            OSError: another failure of the read (this side closed it: ``EBADF``).
        """
        receiver = self._receiver
        frames = receiver.next_packets()
        if frames:
            return frames
        with self._lock:
            if self._closed:
                raise ClientClosedError("the connection was closed")
            self._users += 1
        try:
            return self._read(receiver)
        finally:
            self._leave()

    def _read(self, receiver: PacketReceiver[Any]) -> list[Any]:
        """One read that does not wait into *receiver*'s buffer, and the
        frames it completed (the caller counts itself a user)."""
        buffer = receiver.get_buffer()
        try:
            nbytes, ancdata, flags, _ = self.sock.recvmsg_into([buffer], self._ancbufsize, _RECV_FLAGS)
        except BlockingIOError:
            return []
        except ConnectionResetError:
            raise ConnectionBrokenError("peer reset the connection") from None
        finally:
            del buffer
        if ancdata or flags & _MSG_CTRUNC:
            self._ancillary(ancdata, flags)
        if not nbytes:
            raise ConnectionBrokenError("peer closed the connection")
        receiver.buffer_updated(nbytes)
        return receiver.next_packets()

    def _ancillary(self, ancdata: Cmsgs, flags: int) -> None:
        messages = parse_cmsgs(ancdata) if ancdata else []
        if flags & _MSG_CTRUNC:
            closed = close_fds_in(messages)
            raise AncillaryDataTruncatedError(
                f"control data was truncated (MSG_CTRUNC): the ancillary buffer of {self._ancbufsize} "
                f"bytes is too small and file descriptors were lost; {closed} that arrived were closed",
                bufsize=self._ancbufsize,
                closed_fds=closed,
            )
        for message in messages:
            if isinstance(message, SCMRights):
                self.fds.extend(message.fds)

    # -- writing ------------------------------------------------------------------

    def send(self, data: bytes, sent: int, fds: list[int] | None) -> int:
        """Write what the socket takes now of *data* from offset *sent* on,
        *fds* with the frame's first byte: the offset reached (*sent* if the
        socket buffer is full).

        Raises:
            ConnectionBrokenError: the peer is gone, or a frame was cut before.
            OSError: another failure; if part of the frame was written the
                connection is broken.
        """
        with self._lock:
            self._users += 1
        try:
            return self._send_now(data, sent, fds)
        finally:
            self._leave()

    def _send_now(self, data: bytes, sent: int, fds: list[int] | None) -> int:
        """:meth:`send` without counting itself a user (the caller does, or
        cannot overlap a close)."""
        if self._broken is not None:
            raise ConnectionBrokenError(f"connection is broken: {self._broken}")
        try:
            if sent:
                return sent + self.sock.send(memoryview(data)[sent:], _SEND_FLAGS)
            if fds:
                return self.sock.sendmsg([data], [(*_RIGHTS, _fd_bytes(fds))], _SEND_FLAGS)
            return self.sock.send(data, _SEND_FLAGS)
        except BlockingIOError:
            return sent
        except OSError as exc:
            if sent or exc.errno not in _NOTHING_SENT or not fds:
                self._broken = f"send failed: {exc}"
            if exc.errno in _GONE:
                raise ConnectionBrokenError(f"peer closed the connection ({exc.strerror})") from None
            raise

    def cut(self, why: str) -> None:
        """A frame was left half written (its writer gave up): nothing more is sent."""
        self._broken = why

    def send_within(self, data: bytes, fds: list[int] | None, timeout: float | None) -> None:
        """A thread: write the whole frame *data*, *fds* on its first byte,
        waiting for room up to *timeout* seconds in all (None: for ever).

        Raises:
            TimeoutError: *timeout* passed (if part of the frame was written,
                the connection is broken).
            ConnectionBrokenError, OSError: as :meth:`send`.
        """
        sent = self.send(data, 0, fds)
        if sent < len(data):
            self._send_rest(data, sent, fds, None if timeout is None else time.monotonic() + timeout)

    def _send_rest(self, data: bytes, sent: int, fds: list[int] | None, deadline: float | None) -> None:
        """send_within once the socket buffer was full: wait for room with
        poll() (the descriptor in use all along), write, until done."""
        with self._lock:
            self._users += 1
        try:
            poller = select.poll()
            poller.register(self.sock.fileno(), select.POLLOUT)
            while sent < len(data):
                if deadline is None:
                    poller.poll()
                else:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or not poller.poll(remaining * 1000.0):
                        if sent:
                            self._broken = "a send timed out in the middle of a frame"
                            raise TimeoutError("timed out in the middle of a frame: the connection is broken")
                        raise TimeoutError("timed out before the frame could be sent")
                sent = self.send(data, sent, fds)
        finally:
            self._leave()

    # -- the end --------------------------------------------------------------------

    def shutdown(self, how: int = socket.SHUT_RDWR) -> None:
        """Shut the socket down (*how*), if it still is open; waiting readers
        and writers wake."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(how)

    def close(self, *, wait: bool = False) -> None:
        """Shut the socket down and close it once no one uses it: now, or
        when the last wait or syscall in progress ends (*wait*: this thread
        waits for that; never from the event loop's thread). Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self.shutdown()
            if not self._users:
                self._close_now()
                return
            while wait and self._users:  # the last user closes it
                self._unused.wait()

    def _leave(self) -> None:
        with self._lock:
            self._users -= 1
            if self._closed and not self._users:
                self._last_user_left()

    def _last_user_left(self) -> None:  # (lock held)
        self._close_now()
        self._unused.notify_all()

    def _close_now(self) -> None:
        watch, self._watch = self._watch, None
        if watch is not None:
            watch.stop()  # (the selector never holds a closed descriptor)
        self.sock.close()


def _fd_bytes(fds: list[int]) -> bytes:
    return array.array("i", fds).tobytes()


class LoopServerSocket(ServerSocket):
    """A :class:`ServerSocket` used from one event loop's thread only (the
    anyio engine): a read or a send cannot overlap a close there, so they
    take no lock (the waits still count as uses)."""

    __slots__ = ()

    def receive(self) -> list[Any]:
        receiver = self._receiver
        frames = receiver.next_packets()
        if frames:
            return frames
        if self._closed:
            raise ClientClosedError("the connection was closed")
        return self._read(receiver)

    send = ServerSocket._send_now

    async def wait_readable(self) -> None:
        """Wait until the socket has something to read (or an end); at once
        if it was closed. On asyncio the socket stays registered with the
        loop between waits (:mod:`.._readwatch`)."""
        watch = self._watch
        if watch is None:
            watch = self._watch = read_watch(self.sock)
        if self._closed:
            return
        self._users += 1
        try:
            await watch.wait()
        finally:
            self._leave_loop()

    async def wait_writable(self) -> None:
        """Wait until the socket takes more (or fails); at once if closed."""
        if self._closed:
            return
        self._users += 1
        try:
            await anyio.wait_writable(self.sock)
        finally:
            self._leave_loop()

    def _leave_loop(self) -> None:
        self._users -= 1
        if self._closed and not self._users:
            self._close_now()
