"""UnixStreamClient: the blocking Unix stream client. Plain sockets, no event
loop, no thread.

Owns the locking rules of the sync raw layer: one ``threading.Lock`` for
sends, another for receives; ``close()`` never waits for a blocked receive
(it shuts the socket down, which wakes the reader, and the descriptor is
released by whoever holds the receive lock last). Framing belongs to
:mod:`unixrpc.protocol`; this module only moves bytes and descriptors.
"""

from __future__ import annotations

import contextlib
import errno
import select
import socket
import threading
import time
from collections.abc import Iterator
from types import TracebackType
from typing import Generic, Self, TypeVar

from ..address import UnixAddressLike, UnixSocketAddress
from ..ancillary import SocketAncillary, UnixCredentials
from ..exceptions import ClientClosedError, ConnectionBrokenError
from ..protocol import DEFAULT_MAX_RECV_SIZE, KEEP_IDLE_SECONDS, NEED_DATA, StreamProtocol
from ._common import (
    MSG_CMSG_CLOEXEC,
    SocketProxy,
    check_connected_socket,
    connect_address,
    connect_error,
    connect_timeout_error,
    copy_error,
    eof_error,
    handle_ancillary,
    make_cmsgs,
    map_recv_error,
    map_send_error,
    peer_credentials,
    resolve_ancillary_bufsize,
    send_error_is_mapped,
    set_connect_timeout,
)

_Socket = socket.socket
_MSG_CTRUNC = int(socket.MSG_CTRUNC)
_RECV_NOWAIT = int(socket.MSG_DONTWAIT) | int(MSG_CMSG_CLOEXEC)

__all__ = ["UnixStreamClient"]

SentT = TypeVar("SentT")
ReceivedT = TypeVar("ReceivedT")


class UnixStreamClient(Generic[SentT, ReceivedT]):
    """A connection to a Unix stream socket that sends and receives packets.

    Everything happens on construction: the client is connected when the
    constructor returns; ``with`` only closes it on exit.

    Args:
        address: the peer's socket path (``str``, ``bytes``, ``PathLike``), an
            abstract name (leading NUL, or ``UnixSocketAddress.from_abstract_name``),
            or an already-connected ``socket.socket``, whose ownership passes to
            the client.
        protocol: the :class:`~unixrpc.StreamProtocol` that frames packets.
        connect_timeout: seconds to wait for room in the listener's backlog.
        max_recv_size: bytes read per ``recv`` call (default 64 KiB); also the
            receive buffer's growth step.
        pass_credentials: turn on ``SO_PASSCRED``, so every receive with
            ``ancillary_data`` gets the sender's ``SCMCredentials``.
        keep_large_buffers: keep a receive buffer grown for a large frame
            for the next one (given back after a run of small frames, or
            after the connection was idle ``KEEP_IDLE_SECONDS``; see
            :class:`~unixrpc.protocol.PacketReceiver`). False: give it back
            as soon as the frame is taken.

    Raises:
        ConnectTimeoutError: ``connect_timeout`` elapsed (a ``TimeoutError``).
        SocketNotFoundError, SocketRefusedError, SocketPermissionError: nothing
            listens there, or this user may not connect (``FileNotFoundError``,
            ``ConnectionRefusedError``, ``PermissionError``; the message names
            the path and the likely cause).
        ValueError: the given socket is not ``AF_UNIX``/``SOCK_STREAM``, or the
            address or ``max_recv_size`` is invalid.
        OSError: the given socket is not connected (it is left open and yours).

    All methods are thread-safe. ``send_packet`` and ``recv_packet`` use two
    different locks, so one thread may send while another receives.
    """

    __slots__ = (
        "__weakref__",
        "_closed",
        "_eof_sent",
        "_local_name",
        "_peer_creds",
        "_peer_name",
        "_poller",
        "_protocol",
        "_proxy",
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
        connect_timeout: float | None = None,
        max_recv_size: int | None = None,
        pass_credentials: bool = False,
        keep_large_buffers: bool = True,
    ) -> None:
        if not isinstance(protocol, StreamProtocol):
            raise TypeError(f"expected a StreamProtocol, got {protocol!r}")
        receiver = protocol.receiver(
            DEFAULT_MAX_RECV_SIZE if max_recv_size is None else max_recv_size, keep_large=keep_large_buffers
        )
        if isinstance(address, socket.socket):
            check_connected_socket(address)
            sock = address
        else:
            sock = self._connect(connect_address(address), connect_timeout)
        try:
            sock.settimeout(None)
            if pass_credentials:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            self._peer_name = UnixSocketAddress.from_raw(sock.getpeername())
            self._local_name = UnixSocketAddress.from_raw(sock.getsockname())
        except BaseException:
            if sock is not address:
                sock.close()
            raise
        self._sock = sock
        self._protocol = protocol
        self._receiver = receiver
        self._send_lock = threading.Lock()
        self._recv_lock = threading.Lock()
        self._closed = False
        self._eof_sent = False
        self._send_broken: ConnectionBrokenError | None = None
        self._recv_broken: ConnectionError | None = None
        self._poller: select.poll | None = None
        self._proxy = SocketProxy(sock, self._send_lock)
        self._peer_creds: UnixCredentials | None = None

    @staticmethod
    def _connect(raw: str | bytes, timeout: float | None) -> _Socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            if timeout is not None:
                set_connect_timeout(sock, timeout)
            try:
                sock.connect(raw)
            except BlockingIOError as exc:
                if timeout is None:
                    raise
                raise connect_timeout_error(raw, timeout) from exc
            except OSError as exc:
                raise connect_error(exc, raw) from None
            if timeout is not None:
                set_connect_timeout(sock, None)
        except BaseException:
            sock.close()
            raise
        return sock

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<UnixStreamClient {state} peer={str(self._peer_name)!r}>"

    # -- information --------------------------------------------------------

    @property
    def socket(self) -> SocketProxy:
        """The socket, for ``getsockopt``/``setsockopt``; calls hold the send lock."""
        return self._proxy

    @property
    def protocol(self) -> StreamProtocol[SentT, ReceivedT]:
        """The protocol given at construction."""
        return self._protocol

    def is_closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed

    def buffered_size(self) -> int:
        """Bytes received but not yet returned as packets."""
        return self._receiver.buffered_size()

    def get_peer_name(self) -> UnixSocketAddress:
        """The address the client is connected to."""
        return self._peer_name

    def get_local_name(self) -> UnixSocketAddress:
        """The client's own address (usually unnamed)."""
        return self._local_name

    def get_peer_credentials(self) -> UnixCredentials:
        """The pid, uid and gid of the peer process, as of connect time.

        Raises:
            ClientClosedError: the client is closed.
            OSError: the platform cannot tell.
        """
        if self._peer_creds is None:
            with self._send_lock:
                if self._closed:
                    raise ClientClosedError("client is closed")
                self._peer_creds = peer_credentials(self._sock)
        return self._peer_creds

    # -- sending ------------------------------------------------------------

    def send_packet(self, packet: SentT, *, ancillary_data: SocketAncillary | None = None) -> None:
        """Send *packet*, with the control messages of *ancillary_data*
        (``SCM_RIGHTS`` descriptors ride on the first byte of the frame).

        Blocks until the whole frame is written.

        Raises:
            SerializeError, FrameTooLargeError: *packet* cannot be sent; nothing
                was written.
            ClientClosedError: the client was closed, or ``send_eof()`` called.
            ConnectionBrokenError: the peer is gone, or an earlier send was
                interrupted in the middle of a frame.
            OSError: the kernel refused the send (e.g. ``EBADF`` for a bad fd
                in *ancillary_data*); nothing was written.
        """
        self.send_data(self._protocol.serialize(packet), make_cmsgs(ancillary_data))

    def send_data(
        self, data: bytes, cmsgs: list[tuple[int, int, bytes]] | None = None, *, timeout: float | None = None
    ) -> None:
        """Driver interface: write one serialized frame (send_packet without
        the protocol; for the RPC client's hot path), the descriptors of
        *cmsgs* on its first byte.

        Args:
            timeout: seconds for the whole frame, waiting for the send lock
                included (None: wait for ever).

        Raises:
            TimeoutError: *timeout* elapsed. If part of the frame was written,
                the connection is broken (:meth:`is_send_broken`; later sends
                raise ConnectionBrokenError); else nothing was written.
            ClientClosedError, ConnectionBrokenError, OSError: as send_packet.
        """
        if timeout is not None:
            self._send_within(data, cmsgs, time.monotonic() + max(timeout, 0.0))
            return
        with self._send_lock:
            self._check_can_send()
            sent = 0
            try:
                if cmsgs:
                    sent = self._sock.sendmsg([data], cmsgs)
                    if sent < len(data):
                        self._sock.sendall(memoryview(data)[sent:])
                else:
                    self._sock.sendall(data)
            except OSError as exc:
                # ``sendall`` does not say how much it wrote: assume the worst
                # unless a first ``sendmsg`` provably wrote nothing.
                if sent or not cmsgs or exc.errno not in (errno.EBADF, errno.EINVAL, errno.ETOOMANYREFS):
                    self._send_broken = ConnectionBrokenError(f"send failed mid-frame: {exc}")
                if not send_error_is_mapped(exc, self._closed):
                    raise
                raise map_send_error(exc, self._closed) from exc
            except BaseException:
                self._send_broken = ConnectionBrokenError("a send was interrupted in the middle of a frame")
                raise

    def _send_within(self, data: bytes, cmsgs: list[tuple[int, int, bytes]] | None, deadline: float) -> None:
        """send_data with a deadline: non-blocking writes, waiting for room with poll()."""
        if not self._send_lock.acquire(timeout=max(deadline - time.monotonic(), 0.0)):
            raise TimeoutError("timed out waiting for another thread's send")
        try:
            self._check_can_send()
            sock, total, sent = self._sock, len(data), 0
            poller: select.poll | None = None
            try:
                while True:
                    try:
                        if not sent:
                            if cmsgs:
                                sent = sock.sendmsg([data], cmsgs, socket.MSG_DONTWAIT)
                            else:
                                sent = sock.send(data, socket.MSG_DONTWAIT)
                        else:
                            sent += sock.send(memoryview(data)[sent:], socket.MSG_DONTWAIT)
                    except BlockingIOError:
                        pass
                    if sent >= total:
                        return
                    if poller is None:
                        poller = select.poll()
                        poller.register(sock.fileno(), select.POLLOUT)
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or not poller.poll(remaining * 1000.0):
                        if sent:
                            self._send_broken = ConnectionBrokenError(
                                "a send timed out in the middle of a frame"
                            )
                            raise TimeoutError("timed out in the middle of a frame: the connection is broken")
                        raise TimeoutError("timed out before the frame could be sent")
            except OSError as exc:
                if isinstance(exc, TimeoutError):
                    raise
                if sent or not cmsgs or exc.errno not in (errno.EBADF, errno.EINVAL, errno.ETOOMANYREFS):
                    self._send_broken = ConnectionBrokenError(f"send failed mid-frame: {exc}")
                raise map_send_error(exc, self._closed) from exc
            except BaseException:
                if sent:
                    self._send_broken = ConnectionBrokenError(
                        "a send was interrupted in the middle of a frame"
                    )
                raise
        finally:
            self._send_lock.release()

    def is_send_broken(self) -> bool:
        """Driver interface: True once a send failed or was cut in the middle
        of a frame (nothing more can be sent on this connection)."""
        return self._send_broken is not None

    def _check_can_send(self) -> None:
        if self._closed:
            raise ClientClosedError("client is closed")
        if self._eof_sent:
            raise ClientClosedError("can't send packets after send_eof()")
        if self._send_broken is not None:
            raise ConnectionBrokenError(f"connection is broken: {self._send_broken}")

    def send_eof(self) -> None:
        """Shut down the write side, after any send in progress has finished.
        The peer reads end-of-stream; receiving still works. Idempotent.

        Raises:
            ClientClosedError: the client is closed.
        """
        with self._send_lock:
            if self._closed:
                raise ClientClosedError("client is closed")
            if self._eof_sent:
                return
            self._eof_sent = True
            try:
                self._sock.shutdown(socket.SHUT_WR)
            except OSError as exc:
                if exc.errno != errno.ENOTCONN:
                    raise

    # -- receiving ----------------------------------------------------------

    def recv_packet(
        self,
        *,
        timeout: float | None = None,
        ancillary_data: SocketAncillary | None = None,
        ancillary_bufsize: int | None = None,
    ) -> ReceivedT:
        """Return the next packet. Extra bytes received are kept for the next call.

        Args:
            timeout: seconds to wait (``None``: forever; ``0``: only what has
                already arrived).
            ancillary_data: receives the control messages that arrived with the
                bytes read by this call (descriptors are close-on-exec and yours).
            ancillary_bufsize: control buffer size (default about 8 KiB).

        Raises:
            TimeoutError: *timeout* elapsed.
            StreamProtocolParseError: the next frame is invalid; it was consumed,
                call again for the next packet.
            ClientClosedError: the client was closed (also raised at once in a
                thread blocked here when another thread closes the client).
            ConnectionBrokenError: the peer closed the connection, or reset it
                (closed it with data of ours unread).
            AncillaryDataTruncatedError: the control buffer was too small; the
                descriptors that arrived were closed and the connection is broken.
        """
        bufsize = resolve_ancillary_bufsize(ancillary_data, ancillary_bufsize)
        deadline = None if timeout is None else time.monotonic() + max(timeout, 0.0)
        acquired = (
            self._recv_lock.acquire()
            if timeout is None
            else self._recv_lock.acquire(timeout=max(timeout, 0.0))
        )
        if not acquired:
            raise TimeoutError("timed out waiting for another thread's recv_packet()")
        try:
            return self._recv_locked(deadline, ancillary_data, bufsize)
        finally:
            self._recv_lock.release()
            if self._closed:
                self._close_socket_if_idle()

    def _recv_locked(
        self, deadline: float | None, ancillary: SocketAncillary | None, bufsize: int
    ) -> ReceivedT:
        receiver = self._receiver
        sock = self._sock
        while True:
            if self._closed:
                raise ClientClosedError("client is closed")
            packet = receiver.next_packet()
            if packet is not NEED_DATA:
                return packet
            if self._recv_broken is not None:
                raise copy_error(self._recv_broken)
            flags = 0
            if receiver.kept and not receiver.buffered_size():
                self._release_when_idle(deadline)
            if deadline is not None:
                self._wait_readable(deadline)
                flags = socket.MSG_DONTWAIT
            buffer = receiver.get_buffer()
            try:
                if ancillary is None:
                    nbytes = sock.recv_into(buffer, 0, flags)
                else:
                    nbytes, ancdata, msg_flags, _ = sock.recvmsg_into(
                        [buffer], bufsize, flags | MSG_CMSG_CLOEXEC
                    )
                    if ancdata or msg_flags & _MSG_CTRUNC:
                        try:
                            handle_ancillary(ancdata, msg_flags, bufsize, ancillary)
                        except ConnectionBrokenError as exc:
                            self._recv_broken = copy_error(exc)  # kept unraised: see copy_error
                            raise
            except BlockingIOError:
                continue
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

    def recv_packets_nowait(self, ancillary: SocketAncillary | None, bufsize: int) -> list[ReceivedT]:
        """Driver interface (the threads engine's reader, which waits for
        readability itself): every whole packet buffered, after one read that
        does not wait if none was; empty if nothing came. Errors as
        :meth:`recv_packet` (a bad frame is raised once the good ones before
        it have been returned).

        Raises:
            TimeoutError: another thread is receiving.
        """
        if not self._recv_lock.acquire(blocking=False):
            raise TimeoutError("another thread is receiving")
        try:
            receiver = self._receiver
            packets = receiver.next_packets()
            if not packets and self._recv_broken is None:
                self._read_once(ancillary, bufsize)
                packets = receiver.next_packets()
            if not packets and self._recv_broken is not None:
                raise self._recv_broken
            return packets
        finally:
            self._recv_lock.release()
            if self._closed:
                self._close_socket_if_idle()

    def _read_once(self, ancillary: SocketAncillary | None, bufsize: int) -> None:
        """One read that does not wait, into the receive buffer (lock held)."""
        receiver = self._receiver
        buffer = receiver.get_buffer()
        try:
            nbytes, ancdata, msg_flags, _ = self._sock.recvmsg_into(
                [buffer], bufsize if ancillary is not None else 0, _RECV_NOWAIT
            )
            if ancdata or msg_flags & _MSG_CTRUNC:
                try:
                    handle_ancillary(
                        ancdata, msg_flags, bufsize, ancillary if ancillary is not None else SocketAncillary()
                    )
                except ConnectionBrokenError as exc:
                    self._recv_broken = exc
                    raise
        except BlockingIOError:
            return
        except OSError as exc:
            error = map_recv_error(exc, self._closed, receiver.buffered_size())
            if isinstance(error, ConnectionBrokenError):
                self._recv_broken = error
            if error is exc:
                raise
            raise error from exc
        finally:
            del buffer
        if nbytes == 0:
            if self._closed:
                raise ClientClosedError("client is closed")
            self._recv_broken = eof_error(receiver.buffered_size())
            return
        receiver.buffer_updated(nbytes)

    def _release_when_idle(self, deadline: float | None) -> None:
        """A buffer grown for a large frame is kept: wait up to
        KEEP_IDLE_SECONDS for the next bytes, and give it back if none came."""
        idle = KEEP_IDLE_SECONDS if deadline is None else min(KEEP_IDLE_SECONDS, deadline - time.monotonic())
        if idle >= KEEP_IDLE_SECONDS and not self._poll_readable(idle):
            self._receiver.release_kept()

    def _poll_readable(self, seconds: float) -> bool:
        poller = self._poller
        if poller is None:
            poller = self._poller = select.poll()
            poller.register(self._sock.fileno(), select.POLLIN)
        return bool(poller.poll(max(seconds, 0.0) * 1000.0))

    def _wait_readable(self, deadline: float) -> None:
        poller = self._poller
        if poller is None:
            poller = self._poller = select.poll()
            poller.register(self._sock.fileno(), select.POLLIN)
        remaining = deadline - time.monotonic()
        if not poller.poll(max(remaining, 0.0) * 1000.0):
            raise TimeoutError("timed out waiting for a packet")

    def iter_received_packets(self, *, timeout: float | None = 0) -> Iterator[ReceivedT]:
        """Yield packets until one takes longer than *timeout* seconds to arrive.

        With the default ``timeout=0``, yields the packets already received
        (buffered or waiting in the socket) and stops. ``None`` waits forever.

        Raises:
            The errors of :meth:`recv_packet`, except ``TimeoutError``, which
            ends the iteration.
        """
        while True:
            try:
                packet = self.recv_packet(timeout=timeout)
            except TimeoutError:
                return
            yield packet

    # -- closing ------------------------------------------------------------

    def close(self) -> None:
        """Close the connection. Idempotent.

        Waits for a send in progress to give up, not for a blocked
        ``recv_packet()``: that one raises :class:`ClientClosedError` at once,
        and the descriptor is released when it returns.
        """
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        with self._send_lock:
            pass
        self._close_socket_if_idle()

    def _close_socket_if_idle(self) -> None:
        # Whoever finds the receive lock free closes: a reader blocked in recv()
        # must never see its descriptor number reused under it.
        if self._recv_lock.acquire(blocking=False):
            try:
                self._sock.close()
            finally:
                self._recv_lock.release()
