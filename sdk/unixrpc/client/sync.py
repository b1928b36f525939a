"""Client: the blocking RPC client. Plain sockets, no event loop, no thread.

The public face: what a call is (encode, send, wait, decode) in the
blocking style. How threads share the connection is ``_sync_io.py``; every
protocol rule is the core's (``_core/client/``, through ``ClientCore``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import Any, Self, TypeVar

from .._core import wire
from .._core.client import DEFAULT, DEFAULT_STREAM_WINDOW, ClientConnection, Timeout
from .._core.client.session import ConnectionState, ReconnectPolicy
from .._core.codec import encode_params, final_value, spec_of
from .._core.framing import FrameSerializer
from ..address import UnixAddressLike
from ..ancillary import UnixCredentials
from ..exceptions import ClientClosedError
from ..methods import Method, StreamMethod
from ..protocol import StreamProtocol
from ..transport.sync_client import UnixStreamClient
from ..untyped import JSONReply, untyped_call, untyped_stream
from ._fds import outgoing_fds
from ._sync_io import SyncConnection, refuse_event_loop
from ._sync_resume import SessionStreamCall
from ._sync_session import SyncSession
from ._sync_stream import StreamCall

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
        reconnect: ``True`` or a :class:`~unixrpc.ReconnectPolicy`: when the
            connection is lost (the daemon restarted), connect again with
            backoff; calls made meanwhile wait (within their timeout); calls
            in flight are sent again if they never ran or are idempotent,
            else raise :class:`~unixrpc.CallOutcomeUnknownError`; streams
            opened with ``resume=`` go on. The first connection is made here,
            without retrying. See docs/rpc.md, "When the daemon restarts".
        on_connect: with ``reconnect``, called with the client after each
            reconnection, before the calls waiting for it go on (its own
            calls go through: re-authenticate there). An exception it
            raises is logged and ignored.

    Raises:
        SocketNotFoundError, SocketRefusedError, SocketPermissionError: no
            server listens there, or this user may not connect (subclasses of
            ``FileNotFoundError``, ``ConnectionRefusedError``, ``PermissionError``).
        ConnectTimeoutError: ``connect_timeout`` elapsed (a ``TimeoutError``).
        ValueError: an argument is out of range, or ``reconnect`` was asked
            for a connected socket (there is no address to connect to again).
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
        reconnect: bool | ReconnectPolicy = False,
        on_connect: Callable[[Client], object] | None = None,
    ) -> None:
        policy = ReconnectPolicy.of(reconnect)
        if policy is not None and not isinstance(address, (str, bytes)) and hasattr(address, "fileno"):
            raise ValueError("reconnect needs an address to connect to again, not a connected socket")
        if on_connect is not None and policy is None:
            raise ValueError("on_connect is called on reconnections: it needs reconnect=True")
        framing = FrameSerializer(max_frame_size=max_frame_size, max_fds=max_fds_per_frame)

        def connect() -> SyncConnection:
            # raises ValueError for the window
            core = ClientConnection(framing, stream_window, timeout=timeout, clock=time.monotonic)
            raw: UnixStreamClient[wire.RawFrame, wire.RawFrame] = UnixStreamClient(
                address,
                StreamProtocol(framing),
                connect_timeout=connect_timeout,
                max_recv_size=wire.RECV_SIZE,
            )
            return SyncConnection(raw, core, framing.ancillary_bufsize)

        self._timeout = timeout
        self._conn = connect()
        self._raw = self._conn.raw
        self._session: SyncSession | None = None
        if policy is not None:
            hook = None if on_connect is None else (lambda: on_connect(self))
            self._session = SyncSession(self._conn, connect, policy, timeout, hook)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        raw = self.raw
        return f"<Client of {raw.get_peer_name()} {self.state.value}>"

    @property
    def raw(self) -> UnixStreamClient[wire.RawFrame, wire.RawFrame]:
        """The raw packet client underneath (packets are RPC frames); with
        ``reconnect``, the current connection's. For ``socket`` options and
        the peer's name; reading or writing frames on it yourself would
        confuse the calls in flight."""
        session = self._session
        return self._raw if session is None else session.current.raw

    @property
    def state(self) -> ConnectionState:
        """``CONNECTED``, ``RECONNECTING``, ``DISCONNECTED`` (reconnecting gave
        up, or, without ``reconnect``, the connection broke) or ``CLOSED``."""
        session = self._session
        if session is not None:
            return session.session.state
        broken = self._conn.core.broken
        if broken is None:
            return ConnectionState.CONNECTED
        return (
            ConnectionState.CLOSED if isinstance(broken, ClientClosedError) else ConnectionState.DISCONNECTED
        )

    @property
    def reconnects(self) -> int:
        """How many times the client connected again (0 without ``reconnect``)."""
        session = self._session
        return 0 if session is None else session.session.reconnects

    def get_peer_credentials(self) -> UnixCredentials:
        """The server process's pid, uid and gid.

        Raises:
            ClientClosedError: the client is closed.
        """
        return self.raw.get_peer_credentials()

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
            CallNotRunError, CallOutcomeUnknownError: (with ``reconnect``)
                the connection was lost before the reply and the call was
                not sent again; they say whether the daemon may have run it.
        """
        spec = spec_of(method, streaming=False)
        refuse_event_loop("call")
        if self._session is not None:
            return self._session.call(spec, method, timeout)  # type: ignore[no-any-return]
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
        if self._session is not None:
            self._session.notify(spec, method)
            return
        conn = self._conn
        conn.core.check_usable()
        params, fd_context = encode_params(method, spec)
        try:
            cmsgs, nfds = outgoing_fds(fd_context)
            conn.send(conn.core.notification(spec, params, nfds), cmsgs, None)
        finally:
            if fd_context is not None:
                fd_context.sent()

    def stream(
        self,
        method: StreamMethod[ItemT],
        *,
        timeout: Timeout = DEFAULT,
        resume: bool | Callable[[ItemT], StreamMethod[ItemT]] = False,
    ) -> StreamCall[ItemT]:
        """Start a streaming call; iterate over the result to get its items.

        Leaving the loop early (``break``, an exception, ``close()``) cancels
        the call on the server. The server sends at most ``stream_window``
        items ahead of what you have consumed.

        Args:
            timeout: seconds to wait for each item, and for sending the
                request (default: the client's; None waits for ever).
            resume: (with ``reconnect``) open the stream again on the next
                connection when its connection is lost or the daemon ends it
                while shutting down, and go on iterating: ``True`` with the
                same request (items may be missed or repeated: counted in
                ``.gaps``), or a function of the last item consumed that
                returns the request to resume with, e.g. ``lambda last:
                Watch(since=last.seq)`` (the first request if no item came).

        Raises:
            TypeError: *method* is not a StreamMethod instance.
            ValueError: ``resume`` without ``reconnect``.
            TimeoutError: the request could not be sent within *timeout*.
            ClientClosedError, ConnectionBrokenError: the connection is gone.
            RuntimeError: this thread is running an event loop.
            (while iterating) RPCError, TimeoutError, InvalidResultError.
        """
        spec = spec_of(method, streaming=True)
        refuse_event_loop("stream")
        session = self._session
        if session is not None:
            seconds = self._timeout if timeout is DEFAULT else timeout
            return SessionStreamCall(session, spec, method, seconds, resume or None)
        if resume is not False:
            raise ValueError("resume= opens the stream again on a new connection: it needs reconnect=True")
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
        if self._session is not None:
            self._session.close()
        else:
            self._conn.close()
