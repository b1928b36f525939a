"""Client: the blocking RPC client. Plain sockets, no event loop, no thread.

The public face: what a call is (encode, send, wait, decode) in the
blocking style. How threads share the connection is ``_sync_io.py``; every
protocol rule is the core's (``_core/client/``, through ``ClientCore``).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any, Generic, Self, TypeVar

from .._core import wire
from .._core.client import DEFAULT, DEFAULT_STREAM_WINDOW, CallSlot, ClientConnection, Timeout
from .._core.codec import encode_params, final_value, item_value, spec_of, stream_end
from .._core.framing import FrameSerializer
from ..address import UnixAddressLike
from ..ancillary import UnixCredentials
from ..methods import Method, StreamMethod
from ..protocol import StreamProtocol
from ..transport.sync_client import UnixStreamClient
from ..untyped import JSONReply, untyped_call, untyped_stream
from ._fds import outgoing_fds
from ._sync_io import SyncConnection, refuse_event_loop

__all__ = ["DEFAULT", "Client", "StreamCall"]

ResultT = TypeVar("ResultT")
ItemT = TypeVar("ItemT")
_ITEM = wire.ITEM


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
        # raises ValueError for the window
        core = ClientConnection(framing, stream_window, timeout=timeout, clock=time.monotonic)
        self._raw: UnixStreamClient[wire.RawFrame, wire.RawFrame] = UnixStreamClient(
            address, StreamProtocol(framing), connect_timeout=connect_timeout, max_recv_size=wire.RECV_SIZE
        )
        self._conn = SyncConnection(self._raw, core, framing.ancillary_bufsize)

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

    def call(self, method: Method[ResultT], *, timeout: Timeout = DEFAULT) -> ResultT:
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
            RuntimeError: this thread is running an event loop (use
                AsyncClient there, or call from a worker thread).
        """
        spec = spec_of(method, streaming=False)
        refuse_event_loop("call")
        conn = self._conn
        slot = conn.start(spec, method, timeout)
        conn.wait(slot)
        (kind, envelope, fds), cancel = conn.take(slot)
        if cancel is not None:  # an item for this unary call: the server erred, the call is given up
            conn.send_cancel(cancel)
        return final_value(spec, kind, envelope, fds)  # type: ignore[no-any-return]

    def notify(self, method: Method[Any]) -> None:
        """Send *method* as a one-way notification: no reply, no error back.

        Raises:
            TypeError: *method* is not a method instance, or is a StreamMethod.
            ClientClosedError, ConnectionBrokenError: the connection is gone.
            RuntimeError: this thread is running an event loop.
        """
        spec = spec_of(method, streaming=False, api="notify")
        refuse_event_loop("notify")
        conn = self._conn
        conn.core.check_usable()
        params, fd_context = encode_params(method, spec)
        try:
            cmsgs, nfds = outgoing_fds(fd_context)
            conn.send(conn.core.notification(spec, params, nfds), cmsgs, None)
        finally:
            if fd_context is not None:
                fd_context.sent()

    def stream(self, method: StreamMethod[ItemT], *, timeout: Timeout = DEFAULT) -> StreamCall[ItemT]:
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
            RuntimeError: this thread is running an event loop.
            (while iterating) RPCError, TimeoutError, InvalidResultError.
        """
        spec = spec_of(method, streaming=True)
        refuse_event_loop("stream")
        return StreamCall(self._conn, self._conn.start(spec, method, timeout))

    def call_by_name(
        self,
        method: str,
        params: Mapping[str, Any] | None = None,
        *,
        fds: Iterable[Any] = (),
        timeout: Timeout = DEFAULT,
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
        timeout: Timeout = DEFAULT,
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

    def close(self) -> None:
        """Close the connection. Calls in flight in other threads raise
        ClientClosedError. Idempotent."""
        self._conn.close()


class StreamCall(Generic[ItemT]):
    """The items of a streaming call, as an iterator. Close it (or leave its
    ``with`` block, or break out of the loop) to cancel the call.

    Iterating raises RPCError (the stream ended with an error), TimeoutError
    (no item within the timeout), InvalidResultError, ClientClosedError or
    ConnectionBrokenError, and RuntimeError when the thread runs an event loop.
    """

    def __init__(self, conn: SyncConnection, slot: CallSlot) -> None:
        self._conn = conn
        self._slot = slot
        self._done = False

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> ItemT:
        if self._done:
            raise StopIteration
        conn, slot = self._conn, self._slot
        try:
            refuse_event_loop("stream")
            conn.core.ask_item(slot)
            conn.wait(slot)
            message, credit = conn.take(slot)
        except BaseException:
            self._done = True
            raise
        if credit is not None:  # the item is lost if this fails, and its descriptors closed
            conn.send(credit, None, slot.deadline, slot, "credit", message)
        kind, envelope, fds = message
        if kind is _ITEM:
            return item_value(slot.spec, envelope, fds)  # type: ignore[no-any-return]
        self._done = True
        stream_end(kind, envelope, fds)
        raise StopIteration

    def close(self) -> None:
        """Stop the stream; the server cancels its handler. Idempotent."""
        if not self._done:
            self._done = True
            self._conn.give_up(self._slot)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __del__(self) -> None:
        if not getattr(self, "_done", True):
            self.close()
