"""AsyncUnixStreamClient: the Unix stream client for asyncio and trio (via anyio).

Owns the async twin of the sync client's rules: separate send and receive
locks, ``aclose()`` never waits for a pending receive, timeouts come from
the framework's cancel scopes. The socket is non-blocking; every operation
tries the syscall first and waits for readiness only when it would block.
Framing belongs to :mod:`unixrpc.protocol`.
"""

from __future__ import annotations

import contextlib
import errno
import socket
from collections import deque
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Generic, Self, TypeVar

import anyio
import anyio.lowlevel

from .._readwatch import ReadWatch, read_watch
from ..address import UnixAddressLike, UnixSocketAddress
from ..ancillary import SocketAncillary, UnixCredentials
from ..exceptions import ClientClosedError, ConnectionBrokenError
from ..protocol import DEFAULT_MAX_RECV_SIZE, KEEP_IDLE_SECONDS, NEED_DATA, NeedData, StreamProtocol
from ._common import (
    MSG_CMSG_CLOEXEC,
    SocketProxy,
    check_connected_socket,
    connect_address,
    connect_error,
    copy_error,
    eof_error,
    handle_ancillary,
    make_cmsgs,
    map_recv_error,
    map_send_error,
    peer_credentials,
    resolve_ancillary_bufsize,
    send_error_is_mapped,
)

_Socket = socket.socket
_MSG_CTRUNC = int(socket.MSG_CTRUNC)

__all__ = ["AsyncUnixStreamClient"]

SentT = TypeVar("SentT")
ReceivedT = TypeVar("ReceivedT")

_CONNECT_RETRY_MAX = 0.05


class _ReceiveLock:
    """The receive lock: ``anyio.Lock(fast_acquire=True)`` as this client
    uses it (first come, first served; taking a free lock is no checkpoint),
    without the owner-task lookup anyio's does on each acquire and release
    (on asyncio before 3.12 each is a ``getpid`` syscall, and a sequential
    caller takes this lock on every reply it waits for). It is released by
    the task that took it; ownership passes straight to the next waiter."""

    __slots__ = ("_held", "_waiters")

    def __init__(self) -> None:
        self._held = False
        self._waiters: deque[anyio.Event] = deque()

    def locked(self) -> bool:
        return self._held

    def acquire_nowait(self) -> None:
        """Raises: anyio.WouldBlock if held."""
        if self._held:
            raise anyio.WouldBlock
        self._held = True

    async def acquire(self) -> None:
        if not self._held:
            self._held = True
            return
        event = anyio.Event()
        self._waiters.append(event)
        try:
            await event.wait()
        except BaseException:
            if event.is_set():  # handed the lock as this task was cancelled: pass it on
                self.release()
            else:
                self._waiters.remove(event)
            raise

    def release(self) -> None:
        waiters = self._waiters
        if waiters:
            waiters.popleft().set()  # stays held, by the waiter now
        else:
            self._held = False

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, *exc_info: object) -> None:
        self.release()


class AsyncUnixStreamClient(Generic[SentT, ReceivedT]):
    """An asynchronous connection to a Unix stream socket that sends and
    receives packets, under asyncio or trio.

    Construction does no I/O: ``await client.wait_connected()`` or
    ``async with client:`` connects. Bound the wait with the framework's own
    scopes (``asyncio.timeout``, ``trio.fail_after``, ``anyio.fail_after``).

    Args:
        address: a socket path (``str``, ``bytes``, ``PathLike``), an abstract
            name (leading NUL), or an already-connected ``socket.socket``, whose
            ownership passes to the client.
        protocol: the :class:`~unixrpc.StreamProtocol` that frames packets.
        max_recv_size: bytes read per ``recv`` call (default 64 KiB).
        pass_credentials: turn on ``SO_PASSCRED``.
        keep_large_buffers: keep a receive buffer grown for a large frame
            for the next one (given back after a run of small frames, or
            after the connection was idle ``KEEP_IDLE_SECONDS``; see
            :class:`~unixrpc.protocol.PacketReceiver`). False: give it back
            as soon as the frame is taken.

    Raises:
        ValueError: the given socket is not ``AF_UNIX``/``SOCK_STREAM``, or the
            address or ``max_recv_size`` is invalid.
        OSError: the given socket is not connected (it is left open and yours).

    No external lock is needed: ``send_packet`` and ``recv_packet`` take two
    different locks, so one task may send while another receives.
    """

    __slots__ = (
        "__weakref__",
        "_address",
        "_closed",
        "_connect_lock",
        "_eof_sent",
        "_local_name",
        "_pass_credentials",
        "_peer_creds",
        "_peer_name",
        "_protocol",
        "_proxy",
        "_read_watch",
        "_receiver",
        "_recv_broken",
        "_recv_lock",
        "_send_broken",
        "_send_lock",
        "_sock",
    )

    def __init__(
        self,
        address: UnixAddressLike | socket.socket,
        protocol: StreamProtocol[SentT, ReceivedT],
        *,
        max_recv_size: int | None = None,
        pass_credentials: bool = False,
        keep_large_buffers: bool = True,
    ) -> None:
        if not isinstance(protocol, StreamProtocol):
            raise TypeError(f"expected a StreamProtocol, got {protocol!r}")
        self._receiver = protocol.receiver(
            DEFAULT_MAX_RECV_SIZE if max_recv_size is None else max_recv_size, keep_large=keep_large_buffers
        )
        self._address: str | bytes | socket.socket
        if isinstance(address, socket.socket):
            check_connected_socket(address)
            self._address = address
        else:
            self._address = connect_address(address)
        self._protocol = protocol
        self._pass_credentials = pass_credentials
        self._sock: socket.socket | None = None
        self._connect_lock = anyio.Lock()
        self._send_lock = anyio.Lock(fast_acquire=True)
        self._recv_lock = _ReceiveLock()
        self._closed = False
        self._eof_sent = False
        self._send_broken: ConnectionBrokenError | None = None
        self._recv_broken: ConnectionError | None = None
        self._proxy: SocketProxy | None = None
        self._peer_creds: UnixCredentials | None = None
        self._read_watch: ReadWatch | None = None  # made by the first wait for data

    # -- connecting ---------------------------------------------------------

    async def wait_connected(self) -> None:
        """Connect, if not done yet; a no-op afterwards.

        Raises:
            ClientClosedError: the client was closed.
            SocketNotFoundError, SocketRefusedError, SocketPermissionError: nothing
                listens there, or this user may not connect (subclasses of
                ``FileNotFoundError``, ``ConnectionRefusedError``, ``PermissionError``).
            ConnectError: other connection failures (an ``OSError``).
        """
        if self._sock is not None:
            return
        async with self._connect_lock:
            if self._closed:
                raise ClientClosedError("client is closed")
            if self._sock is not None:
                return
            if isinstance(self._address, socket.socket):
                sock = self._address
            else:
                sock = await self._connect(self._address)
            try:
                if self._closed:
                    raise ClientClosedError("client was closed while connecting")
                sock.setblocking(False)
                if self._pass_credentials:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
                self._peer_name = UnixSocketAddress.from_raw(sock.getpeername())
                self._local_name = UnixSocketAddress.from_raw(sock.getsockname())
            except BaseException:
                sock.close()
                raise
            self._proxy = SocketProxy(sock)
            self._sock = sock

    @staticmethod
    async def _connect(raw: str | bytes) -> _Socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            delay = 0.001
            while True:
                try:
                    sock.connect(raw)
                    break
                except BlockingIOError:
                    # A non-blocking Unix connect fails with EAGAIN while the
                    # listener's backlog is full; there is nothing to poll for.
                    await anyio.sleep(delay)
                    delay = min(delay * 2, _CONNECT_RETRY_MAX)
                except OSError as exc:
                    raise connect_error(exc, raw) from None
            await anyio.lowlevel.checkpoint()
        except BaseException:
            sock.close()
            raise
        return sock

    def is_connected(self) -> bool:
        """True once :meth:`wait_connected` succeeded and until closed."""
        return self._sock is not None and not self._closed

    def _connected_socket(self) -> _Socket:
        if self._closed:
            raise ClientClosedError("client is closed")
        if self._sock is None:
            raise RuntimeError("client is not connected yet: await client.wait_connected() first")
        return self._sock

    async def __aenter__(self) -> Self:
        try:
            await self.wait_connected()
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("connected" if self._sock is not None else "not connected")
        return f"<AsyncUnixStreamClient {state}>"

    # -- information --------------------------------------------------------

    @property
    def socket(self) -> SocketProxy:
        """The socket, for ``getsockopt``/``setsockopt``.

        Raises:
            RuntimeError: not connected yet.
        """
        self._connected_socket()
        assert self._proxy is not None
        return self._proxy

    @property
    def protocol(self) -> StreamProtocol[SentT, ReceivedT]:
        """The protocol given at construction."""
        return self._protocol

    def buffered_size(self) -> int:
        """Bytes received but not yet returned as packets."""
        return self._receiver.buffered_size()

    def is_closing(self) -> bool:
        """True once :meth:`aclose` was called."""
        return self._closed

    def get_peer_name(self) -> UnixSocketAddress:
        """The address the client is connected to.

        Raises:
            RuntimeError: not connected yet.
            ClientClosedError: the client is closed.
        """
        self._connected_socket()
        return self._peer_name

    def get_local_name(self) -> UnixSocketAddress:
        """The client's own address (usually unnamed).

        Raises:
            RuntimeError: not connected yet.
            ClientClosedError: the client is closed.
        """
        self._connected_socket()
        return self._local_name

    def get_peer_credentials(self) -> UnixCredentials:
        """The pid, uid and gid of the peer process, as of connect time.

        Raises:
            RuntimeError: not connected yet.
            ClientClosedError: the client is closed.
        """
        sock = self._connected_socket()
        if self._peer_creds is None:
            self._peer_creds = peer_credentials(sock)
        return self._peer_creds

    # -- sending ------------------------------------------------------------

    async def send_packet(self, packet: SentT, *, ancillary_data: SocketAncillary | None = None) -> None:
        """Send *packet*, with the control messages of *ancillary_data*
        (``SCM_RIGHTS`` descriptors ride on the first byte of the frame).
        Connects first if needed.

        If cancelled before the first byte is written, nothing is sent; if
        cancelled in the middle of the frame, the connection is marked broken.

        Raises:
            SerializeError, FrameTooLargeError: *packet* cannot be sent; nothing
                was written.
            ClientClosedError: the client was closed, or ``send_eof()`` called.
            ConnectionBrokenError: the peer is gone, or an earlier send was
                interrupted in the middle of a frame.
            OSError: the kernel refused the send; nothing was written.
        """
        if self._sock is None:
            await self.wait_connected()
        data = self._protocol.serialize(packet)
        cmsgs = make_cmsgs(ancillary_data) if ancillary_data is not None else None
        sent = self.try_send(data, cmsgs)
        if sent != len(data):
            await self.finish_send(data, sent, cmsgs)

    # -- driver interface: what the RPC client and the server engine build on
    # (serialized frames in, packets out, no protocol layer on the way) --------

    def try_send(self, data: bytes, cmsgs: list[tuple[int, int, bytes]] | None = None) -> int | None:
        """Driver interface. The first write of a serialized frame, when no other task is sending:
        the bytes written (0 if the socket buffer is full). None, with nothing
        written, if another task holds the send lock. Finish a short write
        with :meth:`finish_send` before the next await: nothing else may be
        sent in between. (The lock is only taken to wait, so no task can slip
        in while this runs without awaiting.)

        Raises:
            ClientClosedError, ConnectionBrokenError, OSError: as send_packet.
        """
        if self._send_lock.locked():
            return None
        return self._first_send(self._check_can_send(), data, cmsgs)

    async def finish_send(
        self, data: bytes, sent: int | None, cmsgs: list[tuple[int, int, bytes]] | None = None
    ) -> None:
        """Driver interface. Write the rest of a frame :meth:`try_send` began (all of it if it
        returned None), under the send lock."""
        lock = self._send_lock
        if sent is None:
            await lock.acquire()
            sent = 0
        else:
            lock.acquire_nowait()  # free: no await since try_send
        try:
            await self._send_rest(self._check_can_send(), data, sent, cmsgs)
        finally:
            lock.release()

    def is_send_broken(self) -> bool:
        """Driver interface. True once a send failed or was cancelled in the
        middle of a frame (nothing more can be sent on this connection)."""
        return self._send_broken is not None

    def _first_send(self, sock: _Socket, data: bytes, cmsgs: list[tuple[int, int, bytes]] | None) -> int:
        """Try the first write of a frame; 0 if the socket buffer is full."""
        try:
            return sock.sendmsg([data], cmsgs) if cmsgs else sock.send(data)
        except BlockingIOError:
            return 0
        except OSError as exc:
            if exc.errno in (errno.EPIPE, errno.ECONNRESET):
                self._send_broken = ConnectionBrokenError("peer closed the connection")
            if not send_error_is_mapped(exc, self._closed):
                raise
            raise map_send_error(exc, self._closed) from exc

    async def _send_rest(
        self, sock: _Socket, data: bytes, sent: int, cmsgs: list[tuple[int, int, bytes]] | None
    ) -> None:
        """Write *data* from offset *sent* on, waiting for room (send lock held)."""
        total = len(data)
        try:
            while sent < total:
                try:
                    if not sent:
                        sent = sock.sendmsg([data], cmsgs) if cmsgs else sock.send(data)
                    else:
                        sent += sock.send(memoryview(data)[sent:])
                except BlockingIOError:
                    await anyio.wait_writable(sock)
        except OSError as exc:
            if sent:
                self._send_broken = ConnectionBrokenError(f"send failed mid-frame: {exc}")
            elif exc.errno in (errno.EPIPE, errno.ECONNRESET):
                self._send_broken = ConnectionBrokenError("peer closed the connection")
            if not send_error_is_mapped(exc, self._closed):
                raise
            raise map_send_error(exc, self._closed) from exc
        except BaseException:
            if sent:
                self._send_broken = ConnectionBrokenError("a send was cancelled in the middle of a frame")
            raise

    def _check_can_send(self) -> _Socket:
        sock = self._connected_socket()
        if self._eof_sent:
            raise ClientClosedError("can't send packets after send_eof()")
        if self._send_broken is not None:
            raise ConnectionBrokenError(f"connection is broken: {self._send_broken}")
        return sock

    async def send_eof(self) -> None:
        """Shut down the write side, after any send in progress has finished.
        The peer reads end-of-stream; receiving still works. Idempotent.

        Raises:
            ClientClosedError: the client is closed.
        """
        if self._sock is None:
            await self.wait_connected()
        async with self._send_lock:
            sock = self._connected_socket()
            if self._eof_sent:
                return
            self._eof_sent = True
            try:
                sock.shutdown(socket.SHUT_WR)
            except OSError as exc:
                if exc.errno != errno.ENOTCONN:
                    raise

    # -- receiving ----------------------------------------------------------

    async def recv_packet(
        self,
        *,
        ancillary_data: SocketAncillary | None = None,
        ancillary_bufsize: int | None = None,
    ) -> ReceivedT:
        """Return the next packet. Extra bytes received are kept for the next
        call. Connects first if needed. Cancelling it loses nothing.

        Args:
            ancillary_data: receives the control messages that arrived with the
                bytes read by this call (descriptors are close-on-exec and yours).
            ancillary_bufsize: control buffer size (default about 8 KiB).

        Raises:
            StreamProtocolParseError: the next frame is invalid; it was consumed,
                call again for the next packet.
            ClientClosedError: the client was closed (also raised at once in a
                task waiting here when another task closes the client).
            ConnectionBrokenError: the peer closed the connection, or reset it
                (closed it with data of ours unread).
            AncillaryDataTruncatedError: the control buffer was too small; the
                descriptors that arrived were closed and the connection is broken.
        """
        bufsize = resolve_ancillary_bufsize(ancillary_data, ancillary_bufsize)
        if self._sock is None:
            await self.wait_connected()
        lock = self._recv_lock
        if lock.locked():
            await lock.acquire()
            return await self._recv_holding_lock(ancillary_data, bufsize, found_empty=False)
        # No other reader: take what is already there without the lock; the
        # lock is taken only to wait (aclose() relies on it then).
        packet = self._recv_nowait(ancillary_data, bufsize)
        if packet is not NEED_DATA:
            return packet
        return await self.recv_packet_after_empty(ancillary_data, bufsize)

    async def recv_packet_after_empty(self, ancillary: SocketAncillary | None, bufsize: int) -> ReceivedT:
        """Driver interface. recv_packet() right after :meth:`_recv_nowait` found nothing (no
        await in between): wait for data before reading again."""
        self._recv_lock.acquire_nowait()
        return await self._recv_holding_lock(ancillary, bufsize, found_empty=self._recv_broken is None)

    async def recv_packets_after_wait(
        self, ancillary: SocketAncillary | None, bufsize: int
    ) -> list[ReceivedT]:
        """Driver interface. Wait for the socket to be readable, then read
        once and return every whole packet (at least one: reads and waits on
        until one is whole), for a caller that found nothing buffered and
        knows nothing can be in the socket yet (a lone request was just
        written), with no task receiving. One coroutine: this is each wait
        of a sequential caller. Errors as :meth:`recv_packet`."""
        lock = self._recv_lock
        lock.acquire_nowait()
        try:
            if self._recv_broken is None:
                watch = self._read_watch
                if watch is not None and not self._receiver.kept:
                    self._connected_socket()
                    await watch.wait()
                else:
                    await self._wait_readable(self._connected_socket(), None)
                if self._read_once(self._connected_socket(), ancillary, bufsize):
                    packets = self._receiver.next_packets()
                    if packets:
                        return packets
            return [await self._recv_locked(ancillary, bufsize, None)]
        finally:
            lock.release()
            if self._closed and self._sock is not None:
                self._close_socket(self._sock)

    async def _recv_holding_lock(
        self, ancillary: SocketAncillary | None, bufsize: int, *, found_empty: bool
    ) -> ReceivedT:
        try:
            if found_empty:  # the socket was just found empty: wait before reading again
                await self._wait_readable(self._connected_socket(), None)
            return await self._recv_locked(ancillary, bufsize, None)
        finally:
            self._recv_lock.release()
            if self._closed and self._sock is not None:
                self._close_socket(self._sock)

    def _recv_nowait(self, ancillary: SocketAncillary | None, bufsize: int) -> ReceivedT | NeedData:
        """A buffered packet, or one read without waiting; NEED_DATA if none."""
        sock = self._connected_socket()
        packet = self._receiver.next_packet()
        if packet is NEED_DATA and self._recv_broken is None and self._read_once(sock, ancillary, bufsize):
            packet = self._receiver.next_packet()
        return packet

    def recv_packets_nowait(self, ancillary: SocketAncillary | None, bufsize: int) -> list[ReceivedT]:
        """Driver interface. Every whole packet buffered, after one read without waiting if
        none was; empty if none came. Errors as :meth:`recv_packet`."""
        sock = self._connected_socket()
        receiver = self._receiver
        packets = receiver.next_packets()
        if not packets and self._recv_broken is None and self._read_once(sock, ancillary, bufsize):
            packets = receiver.next_packets()
        return packets

    def _read_once(self, sock: _Socket, ancillary: SocketAncillary | None, bufsize: int) -> bool:
        """One read into the receive buffer; False if nothing was waiting.

        Raises:
            ConnectionBrokenError, ClientClosedError, AncillaryDataTruncatedError, OSError.
        """
        receiver = self._receiver
        buffer = receiver.get_buffer()
        try:
            if ancillary is None:
                nbytes = sock.recv_into(buffer)
            else:
                nbytes, ancdata, msg_flags, _ = sock.recvmsg_into([buffer], bufsize, MSG_CMSG_CLOEXEC)
                if ancdata or msg_flags & _MSG_CTRUNC:
                    try:
                        handle_ancillary(ancdata, msg_flags, bufsize, ancillary)
                    except ConnectionBrokenError as exc:
                        self._recv_broken = copy_error(exc)  # kept unraised: see copy_error
                        raise
        except BlockingIOError:
            return False
        except OSError as exc:
            error = map_recv_error(exc, self._closed, receiver.buffered_size())
            if error is exc:
                del error  # a local holding the raised error would tie it to its own traceback
                raise
            if isinstance(error, ConnectionBrokenError):
                self._recv_broken = error  # kept unraised: only copies are raised
            raise copy_error(error) from exc
        finally:
            del buffer
        if nbytes == 0:
            if self._closed:
                raise ClientClosedError("client is closed")
            self._recv_broken = eof_error(receiver.buffered_size())
            raise copy_error(self._recv_broken)
        receiver.buffer_updated(nbytes)
        return True

    async def _recv_locked(
        self, ancillary: SocketAncillary | None, bufsize: int, timeout: float | None
    ) -> ReceivedT:
        receiver = self._receiver
        while True:
            sock = self._connected_socket()
            packet = receiver.next_packet()
            if packet is not NEED_DATA:
                return packet
            if self._recv_broken is not None:
                raise copy_error(self._recv_broken)
            if not self._read_once(sock, ancillary, bufsize):
                await self._wait_readable(sock, timeout)

    async def _wait_readable(self, sock: _Socket, timeout: float | None) -> None:
        watch = self._read_watch
        if watch is None:
            watch = self._read_watch = read_watch(sock)
        if timeout is None:
            receiver = self._receiver
            if receiver.kept and not receiver.buffered_size():
                # a buffer grown for a large frame is kept: given back after an idle while
                with anyio.move_on_after(KEEP_IDLE_SECONDS):
                    await watch.wait()
                    return
                receiver.release_kept()
            await watch.wait()
            return
        if timeout <= 0:
            raise TimeoutError("no packet has arrived")
        with anyio.move_on_after(timeout) as scope:
            await watch.wait()
        if scope.cancelled_caught:
            raise TimeoutError(f"no packet arrived within {timeout} seconds")

    def _close_socket(self, sock: _Socket) -> None:
        """Close the socket, after taking it out of the event loop's watch."""
        watch, self._read_watch = self._read_watch, None
        if watch is not None:
            watch.stop()
        sock.close()

    async def iter_received_packets(self, *, timeout: float | None = 0) -> AsyncIterator[ReceivedT]:
        """Yield packets until one takes longer than *timeout* seconds to arrive.

        With the default ``timeout=0``, yields the packets already received
        (buffered or waiting in the socket) and stops. ``None`` waits forever.

        Raises:
            The errors of :meth:`recv_packet`.
        """
        if self._sock is None:
            await self.wait_connected()
        while True:
            async with self._recv_lock:
                try:
                    packet = await self._recv_locked(None, 0, timeout)
                except TimeoutError:
                    return
                finally:
                    if self._closed and self._sock is not None:
                        self._close_socket(self._sock)
            yield packet

    # -- closing ------------------------------------------------------------

    async def aclose(self) -> None:
        """Close the connection. Idempotent; a checkpoint.

        Waits for a send in progress to give up, not for a pending
        ``recv_packet()``: that one raises :class:`ClientClosedError`, and the
        descriptor is released when it returns.
        """
        if not self._closed:
            self._closed = True
            sock = self._sock
            if sock is None:
                if isinstance(self._address, socket.socket):
                    self._address.close()
            else:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                with anyio.CancelScope(shield=True):
                    async with self._send_lock:
                        pass
                # A task parked in wait_readable() is woken by the shutdown; the
                # descriptor must outlive its wait, so the reader closes it then.
                if not self._recv_lock.locked():
                    self._close_socket(sock)
        await anyio.lowlevel.checkpoint()
