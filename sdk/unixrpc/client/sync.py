"""Client: the blocking RPC client. Plain sockets, no event loop, no thread.

A shell over the sans-IO core (``_core/client.py``), which owns the
protocol: ids, routing, descriptors, stream credit, the broken state. This
module owns how threads share one connection: any number of calls may be
in flight; a caller that needs a message takes the reader role, reads
frames and hands them to the core, waking the callers they belong to; when
its own message is in, it hands the role to a waiting caller. One lock
guards the core; no reader thread.
"""

from __future__ import annotations

import contextlib
import enum
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import Any, Final, Generic, Self, TypeVar

from .._core import wire
from .._core.calls import close_fds
from .._core.client import CallSlot, ClientConnection, Message
from .._core.codec import encode_params, final_value, item_value, spec_of, stream_end
from .._core.framing import FrameSerializer
from ..address import UnixAddressLike
from ..ancillary import SocketAncillary, UnixCredentials
from ..exceptions import (
    ClientClosedError,
    ConnectionBrokenError,
    RPCError,
    StreamProtocolParseError,
)
from ..methods import Method, MethodSpec, StreamMethod
from ..protocol import StreamProtocol
from ..transport.sync_client import UnixStreamClient
from ..untyped import JSONReply, untyped_call, untyped_stream
from ._calls import outgoing_fds

__all__ = ["DEFAULT", "Client", "StreamCall"]

ResultT = TypeVar("ResultT")
ItemT = TypeVar("ItemT")

_CANCEL_SEND_LIMIT = 1.0  # seconds a given-up call may spend telling the server


class _Default(enum.Enum):
    DEFAULT = "DEFAULT"


#: "Use the client's default timeout".
DEFAULT: Final = _Default.DEFAULT

DEFAULT_STREAM_WINDOW: Final = 16


class Client:
    """A blocking connection to a unixrpc server.

    Thread-safe: many threads may call at once over the one connection; their
    calls are in flight together and answered in any order.

    Args:
        address: the server's socket path, abstract name (leading NUL), or a
            connected ``socket.socket`` (ownership passes to the client).
        timeout: default per-call timeout in seconds (None: wait forever).
        connect_timeout: seconds to wait for room in the server's backlog.
        max_frame_size: the largest frame body sent or accepted.
        max_fds_per_frame: the most descriptors a frame may carry (<= 253).
        stream_window: how many stream items the server may send ahead of
            what has been consumed (backpressure).

    Raises:
        SocketNotFoundError, SocketRefusedError, SocketPermissionError: no
            server listens there, or this user may not connect (subclasses of
            ``FileNotFoundError``, ``ConnectionRefusedError``, ``PermissionError``).
        ConnectTimeoutError: ``connect_timeout`` elapsed (a ``TimeoutError``).
        ValueError: an argument is out of range.
    """

    def __init__(
        self,
        address: UnixAddressLike | Any,
        *,
        timeout: float | None = None,
        connect_timeout: float | None = None,
        max_frame_size: int = wire.DEFAULT_MAX_FRAME_SIZE,
        max_fds_per_frame: int = wire.DEFAULT_MAX_FDS_PER_FRAME,
        stream_window: int = DEFAULT_STREAM_WINDOW,
    ) -> None:
        framing = FrameSerializer(max_frame_size=max_frame_size, max_fds=max_fds_per_frame)
        self._core = ClientConnection(framing, stream_window)  # raises ValueError for the window
        self._ancillary_bufsize = framing.ancillary_bufsize
        self._raw: UnixStreamClient[wire.RawFrame, wire.RawFrame] = UnixStreamClient(
            address, StreamProtocol(framing), connect_timeout=connect_timeout, max_recv_size=wire.RECV_SIZE
        )
        self._timeout = timeout
        self._lock = threading.Lock()  # guards the core
        self._ancillary = SocketAncillary()  # used by the reader only
        self._reader_lock = threading.Lock()
        self._cond = threading.Condition(threading.Lock())
        self._waiting = 0

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Client of {self._raw.get_peer_name()} {'closed' if self._raw.is_closed() else 'open'}>"

    @property
    def raw(self) -> UnixStreamClient[wire.RawFrame, wire.RawFrame]:
        """The raw packet client underneath (packets are RPC frames). For
        ``socket`` options and the peer's name; reading or writing frames on
        it yourself would confuse the calls in flight."""
        return self._raw

    def get_peer_credentials(self) -> UnixCredentials:
        """The server process's pid, uid and gid.

        Raises:
            ClientClosedError: the client is closed.
        """
        return self._raw.get_peer_credentials()

    # -- calls --------------------------------------------------------------

    def call(self, method: Method[ResultT], *, timeout: float | _Default | None = DEFAULT) -> ResultT:
        """Call *method* on the server and return its validated result.

        Args:
            method: an instance of a ``Method[Result]`` subclass.
            timeout: seconds for the whole call, sending the request included
                (default: the client's). On timeout the server is told to
                cancel the call.

        Raises:
            RPCError: the server answered with an error; a typed application
                error arrives as its own class (``MethodNotFoundError``,
                ``InvalidParamsError``, ``PermissionDeniedError``, ...).
            TimeoutError: no result within *timeout* (the message names the
                method). A request cut in the middle of its frame by the
                timeout leaves the connection broken; one not started, usable.
            InvalidResultError: the result does not match the method's type.
            TypeError: *method* is not a method instance (the class, say), or
                is a StreamMethod.
            ClientClosedError, ConnectionBrokenError: the connection is gone
                (``RemoteProtocolError``: the server broke the protocol).
        """
        spec = spec_of(method, streaming=False)
        if timeout is DEFAULT:
            timeout = self._timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        slot = self._start(spec, method, deadline, timeout)
        kind, envelope, fds = self._next_message(slot, deadline, timeout)
        if kind == wire.ITEM:  # a misbehaving server: this call is not a stream
            self._give_up(slot)
        return final_value(spec, kind, envelope, fds)  # type: ignore[no-any-return]

    def notify(self, method: Method[Any]) -> None:
        """Send *method* as a one-way notification: no reply, no error back.

        Raises:
            TypeError: *method* is not a method instance, or is a StreamMethod.
            ClientClosedError, ConnectionBrokenError: the connection is gone.
        """
        spec = spec_of(method, streaming=False, api="notify")
        self._core.check_usable()
        params, fd_context = encode_params(method, spec)
        try:
            cmsgs, nfds = outgoing_fds(fd_context)
            self._send(self._core.notification(spec, params, nfds), cmsgs, None)
        finally:
            if fd_context is not None:
                fd_context.sent()

    def stream(
        self, method: StreamMethod[ItemT], *, timeout: float | _Default | None = DEFAULT
    ) -> StreamCall[ItemT]:
        """Start a streaming call; iterate over the result to get its items.

        Leaving the loop early (``break``, an exception, ``close()``) cancels
        the call on the server. The server sends at most ``stream_window``
        items ahead of what you have consumed.

        Args:
            timeout: seconds to wait for each item, and for sending the
                request (default: the client's; None waits for ever).

        Raises:
            TypeError: *method* is not a StreamMethod instance.
            TimeoutError: the request could not be sent within *timeout*.
            ClientClosedError, ConnectionBrokenError: the connection is gone.
            (while iterating) RPCError, TimeoutError, InvalidResultError.
        """
        spec = spec_of(method, streaming=True)
        if timeout is DEFAULT:
            timeout = self._timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        slot = self._start(spec, method, deadline, timeout)
        return StreamCall(self, slot, timeout)

    def call_by_name(
        self,
        method: str,
        params: Mapping[str, Any] | None = None,
        *,
        fds: Iterable[Any] = (),
        timeout: float | _Default | None = DEFAULT,
    ) -> JSONReply:
        """Call a method known only by its wire name: *params* as a JSON
        object, the result as plain JSON (no method class needed; for tools
        and scripts).

        Args:
            method: the wire name, e.g. ``"users.Get"``.
            params: the params as the wire carries them (JSON-able values).
            fds: descriptors to send with the call (ints, files, sockets,
                FileDescriptors; borrowed, not closed); the params refer to
                them by index, 0 for the first.
            timeout: as for :meth:`call`.

        Returns:
            a :class:`~unixrpc.JSONReply`: ``.value`` is the result as sent,
            ``.fds`` the descriptors that came with it (yours to close).

        Raises:
            RPCError, TimeoutError, ClientClosedError, ConnectionBrokenError:
                as for :meth:`call` (``MethodNotFoundError`` for a name the
                server does not serve, ``InvalidParamsError`` for params it
                rejects).
            TypeError: *method* is not a string, *params* not a mapping, or
                an element of *fds* is not a descriptor.
            SerializeError: *params* holds something that is not JSON.
        """
        return self.call(untyped_call(method, params, fds), timeout=timeout)

    def stream_by_name(
        self,
        method: str,
        params: Mapping[str, Any] | None = None,
        *,
        fds: Iterable[Any] = (),
        timeout: float | _Default | None = DEFAULT,
    ) -> StreamCall[JSONReply]:
        """Start a stream known only by its wire name (see
        :meth:`call_by_name`); each item is a :class:`~unixrpc.JSONReply`.
        Closing the StreamCall cancels the stream on the server.

        Raises:
            TypeError, SerializeError: as for :meth:`call_by_name`.
            ClientClosedError, ConnectionBrokenError: the connection is gone.
            (while iterating) RPCError, TimeoutError.
        """
        return self.stream(untyped_stream(method, params, fds), timeout=timeout)

    # -- internals shared with StreamCall --------------------------------------

    def _start(
        self, spec: MethodSpec, method: Any, deadline: float | None, timeout: float | None
    ) -> CallSlot:
        """Open a call and write its request, within *deadline*."""
        params, fd_context = encode_params(method, spec)
        try:
            cmsgs, nfds = outgoing_fds(fd_context)
            with self._lock:
                slot, data = self._core.request(spec, params, nfds)
            try:
                self._send(data, cmsgs, deadline)
            except BaseException as exc:
                with self._lock:
                    self._core.give_up(slot, request_sent=False)
                if isinstance(exc, TimeoutError) and timeout is not None:
                    raise self._core.send_timeout_error(
                        spec, timeout, cut=self._raw.is_send_broken()
                    ) from None
                raise
        finally:
            if fd_context is not None:
                fd_context.sent()
        return slot

    def _send(self, data: bytes, cmsgs: list[tuple[int, int, bytes]] | None, deadline: float | None) -> None:
        """Write a frame within *deadline*. A write that failed or was cut in
        the middle of its frame breaks the connection.

        Raises: as the transport's ``send_data``; the server's farewell error
            instead when it hung up after saying why (e.g. ServerBusyError).
        """
        raw = self._raw
        try:
            if deadline is None:
                raw.send_data(data, cmsgs)
            else:
                raw.send_data(data, cmsgs, timeout=deadline - time.monotonic())
        except BaseException as exc:
            # the server may have said why before it hung up (e.g. too many
            # connections): that is the better error
            reason = self._farewell() if isinstance(exc, ConnectionBrokenError) else None
            with self._lock:
                woken = self._core.send_failed(exc, cut=raw.is_send_broken())
            if woken is not None:
                self._shut()
            if reason is not None:
                raise reason from None
            raise

    def _farewell(self) -> Exception | None:
        """The connection-level error the server left in the receive buffer
        before closing, if any (read without blocking)."""
        if not self._reader_lock.acquire(blocking=False):
            return None
        core = self._core
        try:
            while core.broken is None:
                try:
                    frame = self._raw.recv_packet(
                        timeout=0, ancillary_data=self._ancillary, ancillary_bufsize=self._ancillary_bufsize
                    )
                except (TimeoutError, ConnectionError, StreamProtocolParseError):
                    return None
                finally:
                    self._take_fds()
                with self._lock:
                    core.receive_frames((frame,), self._raw.buffered_size())
            self._raw.close()
            return core.broken_error() if isinstance(core.broken, RPCError) else None
        finally:
            self._reader_lock.release()
            if self._waiting:  # a caller may be waiting for the reader role, or was filed a message
                with self._cond:
                    self._cond.notify_all()

    def _give_up(self, slot: CallSlot) -> None:
        """The caller no longer wants *slot*: drop what came, cancel the rest
        (a bounded write: a server that does not read cannot hold us up)."""
        with self._lock:
            cancel = self._core.give_up(slot)
        if cancel is not None:
            with contextlib.suppress(OSError, RPCError):
                self._send(cancel, None, time.monotonic() + _CANCEL_SEND_LIMIT)

    def _send_credit(
        self, slot: CallSlot, credit: bytes, deadline: float | None, timeout: float | None
    ) -> None:
        try:
            self._send(credit, None, deadline)
        except TimeoutError:
            if timeout is None:
                raise
            raise self._core.send_timeout_error(
                slot.spec, timeout, cut=self._raw.is_send_broken(), what="credit"
            ) from None

    def _next_message(self, slot: CallSlot, deadline: float | None, timeout: float | None) -> Message:
        """Wait for the next message of *slot*, reading for everyone if no one else is."""
        core = self._core
        try:
            while True:
                if slot.messages:
                    return slot.messages.popleft()
                if core.broken is not None:
                    raise core.broken_error()
                if self._reader_lock.acquire(blocking=False):
                    try:
                        self._read_until(slot, deadline)
                    finally:
                        self._reader_lock.release()
                        if self._waiting:
                            with self._cond:
                                self._cond.notify_all()
                else:
                    self._wait_for_reader(slot, deadline)
        except TimeoutError:
            self._give_up(slot)
            if timeout is None:
                raise
            raise core.timeout_error(slot, timeout) from None
        except BaseException:
            self._give_up(slot)
            raise

    def _wait_for_reader(self, slot: CallSlot, deadline: float | None) -> None:
        core = self._core
        with self._cond:
            self._waiting += 1
            try:
                while not slot.messages and core.broken is None and self._reader_lock.locked():
                    if deadline is None:
                        self._cond.wait()
                        continue
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise TimeoutError
                    self._cond.wait(remaining)
            finally:
                self._waiting -= 1

    def _read_until(self, slot: CallSlot, deadline: float | None) -> None:
        """Read frames and hand them to the core until *slot* has a message
        or the connection is over. Raises TimeoutError at *deadline*."""
        raw, core, lock = self._raw, self._core, self._lock
        ancillary, bufsize = self._ancillary, self._ancillary_bufsize
        while not slot.messages and core.broken is None:
            timeout = None
            if deadline is not None:
                timeout = deadline - time.monotonic()
                if timeout <= 0:
                    raise TimeoutError
            try:
                frame = raw.recv_packet(timeout=timeout, ancillary_data=ancillary, ancillary_bufsize=bufsize)
            except (StreamProtocolParseError, ConnectionError) as exc:
                self._break(core.read_failed, exc)
                return
            finally:
                if ancillary:  # however the read ended: the core owns them now
                    self._take_fds()
            with lock:
                woken = core.receive_frames((frame,), raw.buffered_size())
            if core.broken is not None:
                self._shut()
            elif self._waiting and _others(woken, slot):
                with self._cond:
                    self._cond.notify_all()

    def _take_fds(self) -> None:
        """Hand the descriptors of the last read to the core."""
        ancillary = self._ancillary
        if ancillary:
            with self._lock:
                self._core.receive_fds(ancillary.iter_fds())
            ancillary.clear()

    def _break(self, how: Callable[[BaseException], object], error: BaseException) -> None:
        """End the connection through the core's *how* (fail, read_failed)."""
        with self._lock:
            how(error)
        self._shut()

    def _shut(self) -> None:
        """The core is broken: close the socket, wake every waiting caller."""
        self._raw.close()
        with self._cond:
            self._cond.notify_all()

    def close(self) -> None:
        """Close the connection. Calls in flight in other threads raise
        ClientClosedError. Idempotent."""
        self._break(self._core.fail, ClientClosedError("client is closed"))


def _others(woken: Iterable[CallSlot], slot: CallSlot) -> bool:
    return any(target is not slot for target in woken)


class StreamCall(Generic[ItemT]):
    """The items of a streaming call, as an iterator. Close it (or leave its
    ``with`` block, or break out of the loop) to cancel the call."""

    def __init__(self, client: Client, slot: CallSlot, timeout: float | None) -> None:
        self._client = client
        self._slot = slot
        self._timeout = timeout
        self._done = False

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> ItemT:
        if self._done:
            raise StopIteration
        client, slot, timeout = self._client, self._slot, self._timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            kind, envelope, fds = client._next_message(slot, deadline, timeout)
        except BaseException:
            self._done = True
            raise
        if kind == wire.ITEM:
            credit = client._core.item_consumed(slot)
            if credit is not None:
                try:
                    client._send_credit(slot, credit, deadline, timeout)
                except BaseException:
                    close_fds(fds)  # the item is lost with the connection: so are its fds
                    raise
            return item_value(slot.spec, envelope, fds)  # type: ignore[no-any-return]
        self._done = True
        stream_end(kind, envelope, fds)
        raise StopIteration

    def close(self) -> None:
        """Stop the stream; the server cancels its handler. Idempotent."""
        if not self._done:
            self._done = True
            self._client._give_up(self._slot)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __del__(self) -> None:
        if not getattr(self, "_done", True):
            self.close()
