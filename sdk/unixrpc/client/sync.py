"""Client: the blocking RPC client. Plain sockets, no event loop, no thread.

A shell over the sans-IO core (``_core/client/``, through its narrow
``ClientCore`` face), which owns the protocol: ids, routing, descriptors,
stream credit, timeouts, what a failed write means, the broken state. This
module owns how threads share one connection: any number of calls may be
in flight; a caller that needs a message takes the reader role, reads
frames and hands them to the core, waking the callers they belong to; when
its own message is in, it hands the role to a waiting caller. One lock
guards the core; no reader thread. It refuses to block a thread that runs
an event loop (:func:`refuse_event_loop`).
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import Any, Generic, Self, TypeVar

from .._core import wire
from .._core.client import DEFAULT, DEFAULT_STREAM_WINDOW, CallSlot, ClientConnection, ClientCore, Timeout
from .._core.codec import encode_params, final_value, item_value, spec_of, stream_end
from .._core.framing import FrameSerializer
from ..address import UnixAddressLike
from ..ancillary import SocketAncillary, UnixCredentials
from ..exceptions import ClientClosedError, RPCError, StreamProtocolParseError
from ..methods import Method, MethodSpec, StreamMethod
from ..protocol import StreamProtocol
from ..transport.sync_client import UnixStreamClient
from ..untyped import JSONReply, untyped_call, untyped_stream
from ._fds import outgoing_fds

__all__ = ["DEFAULT", "Client", "StreamCall"]

ResultT = TypeVar("ResultT")
ItemT = TypeVar("ItemT")
_ITEM = wire.ITEM


def refuse_event_loop(api: str) -> None:
    """A blocking call must not run on a thread that runs an event loop: it
    would stop the loop until it returns, and never return if what it waits
    for (the server, say) runs on that loop.

    Any running loop is refused, not only the server's: the client cannot
    know what the reply depends on, and blocking a loop is a bug either way.

    Raises:
        RuntimeError: the calling thread is running an asyncio or trio loop.
    """
    asyncio = sys.modules.get("asyncio")
    running = None
    if asyncio is not None and asyncio._get_running_loop() is not None:
        running = "asyncio"
    else:
        trio = sys.modules.get("trio")
        if trio is not None and trio.lowlevel.in_trio_run():
            running = "trio"
    if running is not None:
        raise RuntimeError(
            f"Client.{api}() blocks, and this thread is running a {running} event loop: it would stop "
            "the loop, for ever if the server runs on it. Use AsyncClient in async code, or call Client "
            "from a worker thread (anyio.to_thread.run_sync, asyncio.to_thread, trio.to_thread.run_sync)"
        )


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
        self._core: ClientCore = ClientConnection(
            framing, stream_window, timeout=timeout, clock=time.monotonic
        )
        self._ancillary_bufsize = framing.ancillary_bufsize
        self._raw: UnixStreamClient[wire.RawFrame, wire.RawFrame] = UnixStreamClient(
            address, StreamProtocol(framing), connect_timeout=connect_timeout, max_recv_size=wire.RECV_SIZE
        )
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
        slot = self._start(spec, method, timeout)
        self._wait(slot)
        with self._lock:
            (kind, envelope, fds), cancel = self._core.take(slot)
        if cancel is not None:  # an item for this unary call: the server erred, the call is given up
            self._send_cancel(cancel)
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
        self._core.check_usable()
        params, fd_context = encode_params(method, spec)
        try:
            cmsgs, nfds = outgoing_fds(fd_context)
            self._send(self._core.notification(spec, params, nfds), cmsgs, None)
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
        return StreamCall(self, self._start(spec, method, timeout))

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

    # -- internals shared with StreamCall --------------------------------------

    def _start(self, spec: MethodSpec, method: Any, timeout: Timeout) -> CallSlot:
        """Open a call and write its request, within its deadline."""
        params, fd_context = encode_params(method, spec)
        try:
            cmsgs, nfds = outgoing_fds(fd_context)
            with self._lock:
                slot, data = self._core.request(spec, params, nfds, timeout)
            try:
                self._send(data, cmsgs, slot.deadline, slot)
            except BaseException:
                with self._lock:
                    self._core.give_up(slot, request_sent=False)
                raise
        finally:
            if fd_context is not None:
                fd_context.sent()
        return slot

    def _send(
        self,
        data: bytes,
        cmsgs: list[tuple[int, int, bytes]] | None,
        deadline: float | None,
        slot: CallSlot | None = None,
        what: str = "request",
        lost: Any = None,
    ) -> None:
        """Write a frame (*slot*'s *what*) within *deadline*; the core says
        what a failure means (see ``ClientConnection.send_failed``).

        Raises: as the transport's ``send_data``, or what the core chose
            instead (the server's parting error, a timeout naming the call).
        """
        raw = self._raw
        try:
            if deadline is None:
                raw.send_data(data, cmsgs)
            else:
                raw.send_data(data, cmsgs, timeout=deadline - time.monotonic())
        except BaseException as exc:
            core = self._core
            if core.wants_farewell(exc):
                self._read_farewell()
            with self._lock:
                error, woken = core.send_failed(
                    exc, cut=raw.is_send_broken(), slot=slot, what=what, lost=lost
                )
            if woken is not None:
                self._shut()
            if error is exc:
                raise
            raise error from None

    def _read_farewell(self) -> None:
        """Hand the core what the server left in the receive buffer before
        it hung up (read without blocking; skipped if another thread reads)."""
        if not self._reader_lock.acquire(blocking=False):
            return
        core = self._core
        try:
            while core.broken is None:
                try:
                    frame = self._raw.recv_packet(
                        timeout=0, ancillary_data=self._ancillary, ancillary_bufsize=self._ancillary_bufsize
                    )
                except (TimeoutError, ConnectionError, StreamProtocolParseError):
                    return
                finally:
                    self._take_fds()
                with self._lock:
                    core.receive_frames((frame,), self._raw.buffered_size())
            self._raw.close()
        finally:
            self._reader_lock.release()
            if self._waiting:  # a caller may be waiting for the reader role, or was filed a message
                with self._cond:
                    self._cond.notify_all()

    def _give_up(self, slot: CallSlot) -> None:
        """The caller no longer wants *slot*: drop what came, cancel the rest."""
        with self._lock:
            cancel = self._core.give_up(slot)
        if cancel is not None:
            self._send_cancel(cancel)

    def _send_cancel(self, cancel: bytes) -> None:
        """Tell the server, within the core's limit (best effort)."""
        with contextlib.suppress(OSError, RPCError):
            self._send(cancel, None, self._core.cancel_deadline())

    def _wait(self, slot: CallSlot) -> None:
        """Wait until *slot* has a message, reading for everyone if no one
        else is. Timed out or interrupted, the call is given up."""
        core = self._core
        try:
            while not slot.messages:
                if core.broken is not None:
                    raise core.broken_error()
                if self._reader_lock.acquire(blocking=False):
                    try:
                        self._read_until(slot, slot.deadline)
                    finally:
                        self._reader_lock.release()
                        if self._waiting:
                            with self._cond:
                                self._cond.notify_all()
                else:
                    self._wait_for_reader(slot, slot.deadline)
        except TimeoutError:
            self._give_up(slot)
            if slot.timeout is None:
                raise
            raise core.timed_out(slot) from None
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
    ``with`` block, or break out of the loop) to cancel the call.

    Iterating raises RPCError (the stream ended with an error), TimeoutError
    (no item within the timeout), InvalidResultError, ClientClosedError or
    ConnectionBrokenError, and RuntimeError when the thread runs an event loop.
    """

    def __init__(self, client: Client, slot: CallSlot) -> None:
        self._client = client
        self._slot = slot
        self._done = False

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> ItemT:
        if self._done:
            raise StopIteration
        client, slot = self._client, self._slot
        try:
            refuse_event_loop("stream")
            client._core.ask_item(slot)
            client._wait(slot)
            with client._lock:
                message, credit = client._core.take(slot)
        except BaseException:
            self._done = True
            raise
        if credit is not None:  # the item is lost if this fails, and its descriptors closed
            client._send(credit, None, slot.deadline, slot, "credit", message)
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
