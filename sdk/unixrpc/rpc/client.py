"""Client: the blocking RPC client. Plain sockets, no event loop, no thread.

Owns how threads share one connection: any number of calls may be in
flight; a caller that needs a message takes the reader role, reads frames
and files each under its call id, waking the callers they belong to; when
its own message is in, it hands the role to a waiting caller. The protocol
decisions (ids, fd assignment, late replies) belong to ``_core``.
"""

from __future__ import annotations

import contextlib
import enum
import threading
import time
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any, Final, Generic, Self, TypeVar

from .._core import wire
from .._core.calls import CallSlot, CallTable, FdQueue, close_fds
from .._core.framing import FrameSerializer
from ..address import UnixAddressLike
from ..ancillary import SocketAncillary, UnixCredentials
from ..exceptions import (
    ClientClosedError,
    ConnectionBrokenError,
    RemoteProtocolError,
    RPCError,
    StreamProtocolParseError,
)
from ..fds import FdContext
from ..methods import Method, StreamMethod
from ..protocol import StreamProtocol
from ..transport.sync_client import UnixStreamClient
from ..untyped import JSONReply, untyped_call, untyped_stream
from ._calls import (
    broken_error,
    connection_error,
    decode_frame,
    encode_params,
    final_value,
    item_value,
    outgoing,
    spec_of,
    stream_end,
)

__all__ = ["DEFAULT", "Client", "StreamCall"]

ResultT = TypeVar("ResultT")
ItemT = TypeVar("ItemT")


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
        if stream_window < 1:
            raise ValueError(f"stream_window must be at least 1, got {stream_window}")
        framing = self._framing = FrameSerializer(max_frame_size=max_frame_size, max_fds=max_fds_per_frame)
        protocol = StreamProtocol(framing)
        self._ancillary_bufsize = framing.ancillary_bufsize
        self._raw: UnixStreamClient[wire.RawFrame, wire.RawFrame] = UnixStreamClient(
            address, protocol, connect_timeout=connect_timeout, max_recv_size=wire.RECV_SIZE
        )
        self._timeout = timeout
        self._window = stream_window
        self._table = CallTable()
        self._table_lock = threading.Lock()
        self._fd_queue = FdQueue()
        self._ancillary = SocketAncillary()  # used by the reader only
        self._reader_lock = threading.Lock()
        self._cond = threading.Condition(threading.Lock())
        self._waiting = 0
        self._broken: BaseException | None = None

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
            timeout: seconds to wait for the result (default: the client's).
                On timeout the server is told to cancel the call.

        Raises:
            RPCError: the server answered with an error; a typed application
                error arrives as its own class (``MethodNotFoundError``,
                ``InvalidParamsError``, ``PermissionDeniedError``, ...).
            TimeoutError: no result within *timeout*.
            InvalidResultError: the result does not match the method's type.
            TypeError: *method* is not a method instance, or is a StreamMethod.
            ClientClosedError, ConnectionBrokenError: the connection is gone.
        """
        spec = spec_of(method, streaming=False)
        deadline = self._deadline(timeout)
        slot = self._start(spec.name_json, *encode_params(method, spec), None)
        kind, envelope, fds = self._next_message(slot, deadline)
        if kind == wire.ITEM:  # a misbehaving server: this call is not a stream
            self._give_up(slot)
        return final_value(spec, kind, envelope, fds)  # type: ignore[no-any-return]

    def notify(self, method: Method[Any]) -> None:
        """Send *method* as a one-way notification: no reply, no error back.

        Raises:
            TypeError: *method* is not a method instance, or is a StreamMethod.
            ClientClosedError, ConnectionBrokenError: the connection is gone.
        """
        spec = spec_of(method, streaming=False)
        self._check_usable()
        params, fd_context = encode_params(method, spec)
        frame, ancillary = outgoing(wire.encode_notification(spec.name_json, params), fd_context)
        try:
            self._raw.send_packet(frame, ancillary_data=ancillary)
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
            timeout: seconds to wait for each item (default: the client's).

        Raises:
            TypeError: *method* is not a StreamMethod instance.
            ClientClosedError, ConnectionBrokenError: the connection is gone.
            (while iterating) RPCError, TimeoutError, InvalidResultError.
        """
        spec = spec_of(method, streaming=True)
        slot = self._start(spec.name_json, *encode_params(method, spec), self._window)
        return StreamCall(self, spec, slot, timeout)

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

    def _deadline(self, timeout: float | _Default | None) -> float | None:
        if timeout is DEFAULT:
            timeout = self._timeout
        return None if timeout is None else time.monotonic() + timeout

    def _check_usable(self) -> None:
        if self._broken is not None:
            raise self._broken_error()
        if self._raw.is_closed():
            raise ClientClosedError("client is closed")

    def _broken_error(self) -> Exception:
        return broken_error(self._broken)

    def _start(
        self, name_json: bytes, params: bytes, fd_context: FdContext | None, window: int | None
    ) -> CallSlot:
        try:
            self._check_usable()
            with self._table_lock:
                slot = self._table.open()
            request = wire.encode_request(slot.call_id, name_json, params, window)
            try:
                if fd_context is not None and fd_context.outgoing:
                    frame, ancillary = outgoing(request, fd_context)
                    self._raw.send_packet(frame, ancillary_data=ancillary)
                else:  # the common case, without the packet layer
                    self._raw.send_data(self._framing.frame_bytes(request))
            except BaseException as exc:
                with self._table_lock:
                    self._table.abandon(slot)
                if isinstance(exc, ConnectionBrokenError):
                    # the server may have said why before it hung up (e.g. too
                    # many connections): that is the better error
                    reason = self._farewell()
                    if reason is not None:
                        raise reason from None
                raise
        finally:
            if fd_context is not None:
                fd_context.sent()
        return slot

    def _farewell(self) -> Exception | None:
        """The connection-level error the server left in the receive buffer
        before closing, if any (read without blocking)."""
        if not self._reader_lock.acquire(blocking=False):
            return None
        try:
            while True:
                try:
                    try:
                        frame = self._raw.recv_packet(
                            timeout=0,
                            ancillary_data=self._ancillary,
                            ancillary_bufsize=self._ancillary_bufsize,
                        )
                    finally:
                        if self._ancillary:
                            self._fd_queue.push(self._ancillary.iter_fds())
                            self._ancillary.clear()
                    kind, envelope, fds = decode_frame(frame, self._fd_queue)
                except (TimeoutError, ConnectionError, StreamProtocolParseError):
                    return None
                close_fds(fds)
                if kind == wire.ERROR and envelope["id"] is None:
                    self._fail(connection_error(envelope))
                    return self._broken_error()
        finally:
            self._reader_lock.release()
            if self._waiting:  # a caller may be waiting for the reader role
                with self._cond:
                    self._cond.notify_all()

    def _give_up(self, slot: CallSlot) -> None:
        """The caller no longer wants *slot*: drop what came, cancel the rest."""
        with self._table_lock:
            pending = not slot.finished
            self._table.abandon(slot)
        if pending and self._broken is None:
            with contextlib.suppress(OSError, RPCError):
                self._raw.send_packet(wire.RawFrame(wire.encode_cancel(slot.call_id)))

    def _send_credit(self, slot: CallSlot, count: int) -> None:
        self._raw.send_packet(wire.RawFrame(wire.encode_credit(slot.call_id, count)))

    def _next_message(self, slot: CallSlot, deadline: float | None) -> tuple[str, dict[str, Any], list[int]]:
        """Wait for the next message of *slot*, reading for everyone if no one else is."""
        try:
            while True:
                if slot.messages:
                    return slot.messages.popleft()
                if self._broken is not None:
                    raise self._broken_error()
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
        except BaseException:
            self._give_up(slot)
            raise

    def _wait_for_reader(self, slot: CallSlot, deadline: float | None) -> None:
        with self._cond:
            self._waiting += 1
            try:
                while not slot.messages and self._broken is None and self._reader_lock.locked():
                    if deadline is None:
                        self._cond.wait()
                        continue
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise TimeoutError("no reply within the timeout")
                    self._cond.wait(remaining)
            finally:
                self._waiting -= 1

    def _read_until(self, slot: CallSlot, deadline: float | None) -> None:
        raw, ancillary, fd_queue = self._raw, self._ancillary, self._fd_queue
        while not slot.messages:
            timeout = None
            if deadline is not None:
                timeout = deadline - time.monotonic()
                if timeout <= 0:
                    raise TimeoutError("no reply within the timeout")
            try:
                frame = raw.recv_packet(
                    timeout=timeout, ancillary_data=ancillary, ancillary_bufsize=self._ancillary_bufsize
                )
            except TimeoutError:
                raise TimeoutError("no reply within the timeout") from None
            except StreamProtocolParseError as exc:
                self._fail(RemoteProtocolError(f"server broke the protocol: {exc.error}"))
                raise self._broken_error() from None
            except ConnectionError as exc:
                self._fail(exc)
                raise self._broken_error() from None
            finally:
                if ancillary:
                    fd_queue.push(ancillary.iter_fds())
                    ancillary.clear()
            try:
                kind, envelope, fds = decode_frame(frame, fd_queue)
            except RemoteProtocolError as exc:
                self._fail(exc)
                raise self._broken_error() from None
            if kind in (wire.RESULT, wire.ITEM, wire.ERROR):
                if envelope["id"] is None:  # about the connection as a whole
                    close_fds(fds)
                    self._fail(connection_error(envelope))
                    raise self._broken_error()
                with self._table_lock:
                    target = self._table.file(kind, envelope, fds)
                if target is not slot and target is not None and self._waiting:
                    with self._cond:
                        self._cond.notify_all()
            else:
                close_fds(fds)  # requests from a server are not part of the protocol; ignore

    def _fail(self, error: BaseException) -> None:
        """The connection is unusable: fail every call in flight."""
        with self._table_lock:
            if self._broken is None:
                self._broken = error
            slots = self._table.fail_all()
        for slot in slots:
            slot.discard()
        self._fd_queue.close_all()
        self._raw.close()
        with self._cond:
            self._cond.notify_all()

    def close(self) -> None:
        """Close the connection. Calls in flight in other threads raise
        ClientClosedError. Idempotent."""
        if self._broken is None:
            self._fail(ClientClosedError("client is closed"))
        else:
            self._raw.close()


class StreamCall(Generic[ItemT]):
    """The items of a streaming call, as an iterator. Close it (or leave its
    ``with`` block, or break out of the loop) to cancel the call."""

    def __init__(self, client: Client, spec: Any, slot: CallSlot, timeout: float | _Default | None) -> None:
        self._client = client
        self._spec = spec
        self._slot = slot
        self._timeout = timeout
        self._done = False
        self._consumed = 0
        self._credit_every = max(client._window // 2, 1)

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> ItemT:
        if self._done:
            raise StopIteration
        client = self._client
        try:
            kind, envelope, fds = client._next_message(self._slot, client._deadline(self._timeout))
        except BaseException:
            self._done = True
            raise
        if kind == wire.ITEM:
            self._consumed += 1
            if self._consumed >= self._credit_every:
                try:
                    client._send_credit(self._slot, self._consumed)
                except BaseException:
                    close_fds(fds)  # the item is lost with the connection: so are its fds
                    raise
                self._consumed = 0
            return item_value(self._spec, envelope, fds)  # type: ignore[no-any-return]
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
