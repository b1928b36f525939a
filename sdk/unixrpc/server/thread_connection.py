"""One connection under the blocking threads engine (:mod:`.thread_engine`).

Plain sockets and threads, no event loop. It waits and moves bytes for
each connection's protocol object (:class:`.._core.server.ServerConnection`,
called under the connection's lock), which decides everything else.

How calls run (leader/follower): one thread of a connection, the leader,
reads. When it reads a request it makes another thread of the connection
the leader (an idle one, or a new one) and runs the call itself, on the
thread that read it, with no hand-off on the way; when the call is
answered the thread goes back to the pool and waits to lead or run again.
A slow call never holds back a fast one, and calls of one connection run
concurrently, up to ``max_threads_per_connection`` at once; beyond that,
calls wait for a thread of their connection while the leader goes on
reading (so cancels and credit always get through).

A plain ``def`` handler cannot be interrupted: on a cancel (the client's,
its peer leaving, or shutdown) its reply is ``Cancelled`` at once, it learns
it from ``CallContext.cancelled``, and what it returns is discarded. An
``async def`` handler (or async generator) runs on one shared event-loop
thread (asyncio), started when the first one is called, and is cancelled
the usual way there.
"""

from __future__ import annotations

import array
import contextlib
import logging
import select
import socket
import threading
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import CancelledError as FutureCancelledError
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from .._core import wire
from .._core.server import Cancel, Chunk, Close, FdFrame, Grant, ServerCall, ServerConnection
from ..ancillary import SocketAncillary
from ..exceptions import (
    AncillaryDataTruncatedError,
    ClientClosedError,
    ConnectionBrokenError,
    StreamProtocolParseError,
)
from ..transport.sync_client import UnixStreamClient
from .context import CallContext

if TYPE_CHECKING:
    from .server import Server

__all__ = ["LoopThread", "ThreadConnection"]

logger = logging.getLogger("unixrpc.server")
_RIGHTS = (socket.SOL_SOCKET, socket.SCM_RIGHTS)


class _Stop(Exception):
    """The call was cancelled: stop the stream."""


class LoopThread:
    """The event-loop thread ``async def`` handlers run on under the threads
    engine (an anyio blocking portal on asyncio)."""

    def __init__(self) -> None:
        from anyio.from_thread import start_blocking_portal

        self._manager = start_blocking_portal("asyncio")
        self._portal = self._manager.__enter__()

    def start(self, function: Callable[..., Awaitable[Any]], *args: Any) -> Future[Any]:
        """Start ``function(*args)`` on the loop; cancel it with the future.

        Raises:
            RuntimeError: the loop thread has stopped.
        """
        return self._portal.start_task_soon(function, *args)

    def close(self) -> None:
        """Stop the loop, after cancelling what still runs there."""
        self._portal.call(self._portal.stop, True)
        with contextlib.suppress(Exception):
            self._manager.__exit__(None, None, None)


class ThreadConnection:
    """One accepted connection under the threads engine (see the module docstring)."""

    def __init__(self, server: Server, engine: Any, sock: socket.socket, connection_id: int) -> None:
        self._server = server
        self._engine = engine
        self._transport: UnixStreamClient[wire.RawFrame, wire.RawFrame] = UnixStreamClient(
            sock, server._protocol, max_recv_size=wire.RECV_SIZE
        )
        self.connection_id = connection_id
        self.peer = self._transport.get_peer_credentials()
        self.core = ServerConnection(server._rules, connection_id)
        self._lock = threading.Lock()  # guards the core and everything below
        self._cond = threading.Condition(self._lock)
        self._runq: deque[ServerCall] = deque()
        self._leading = False  # a thread leads (reads) now
        self._reading_over = False
        self._writing = False  # a thread is writing (and writes what is queued meanwhile)
        self._idle = 0
        self._threads = 0
        self._running = 0  # threads running a call
        self._max_running = server.max_threads_per_connection
        self._ancillary = SocketAncillary()
        self._bufsize = server._framing.ancillary_bufsize
        self.finished = threading.Event()

    def start(self) -> None:
        """Start the connection's first thread (its first leader)."""
        with self._lock:
            self._spawn()

    # -- the pool -----------------------------------------------------------------

    def _spawn(self) -> None:  # lock held
        self._threads += 1
        name = f"unixrpc-conn{self.connection_id}-{self._threads}"
        threading.Thread(target=self._thread_main, name=name, daemon=True).start()

    def _thread_main(self) -> None:
        cond = self._cond
        try:
            while True:
                with cond:
                    while True:
                        if self._runq and self._running < self._max_running:
                            call: ServerCall | None = self._runq.popleft()
                            self._running += 1
                            break
                        if self._reading_over:
                            return
                        if not self._leading:
                            self._leading = True
                            call = None
                            break
                        self._idle += 1
                        cond.wait()
                        self._idle -= 1
                if call is None:
                    call = self._lead()
                    if call is None:
                        continue
                try:
                    self._run(call)
                finally:
                    with cond:
                        self._running -= 1
                        if self._runq:
                            cond.notify()
        finally:
            self._thread_done()

    def _thread_done(self) -> None:
        with self._cond:
            self._threads -= 1
            last = self._threads == 0
            self._cond.notify_all()
        if last:
            self._close()

    def _lead(self) -> ServerCall | None:
        """Read once, and take in what came: the call this thread is to run
        (another thread leads then), or None."""
        core, transport, ancillary = self.core, self._transport, self._ancillary
        over = False
        frames: list[wire.RawFrame] = []
        try:
            frames = transport.recv_packets(ancillary, self._bufsize)
        except StreamProtocolParseError as exc:  # oversized frame / too many fds: cannot resync
            with self._lock:
                core.fatal(str(exc.error))
            over = True
        except AncillaryDataTruncatedError as exc:
            logger.warning("connection %d: %s", self.connection_id, exc)
            with self._lock:
                core.fatal(str(exc), tell_peer=False)
            over = True
        except (ConnectionBrokenError, ClientClosedError, OSError):
            over = True
        mine: ServerCall | None = None
        with self._cond:
            if ancillary:
                core.receive_fds(ancillary.iter_fds())
                ancillary.clear()
            for frame in frames:
                event = core.receive_frame(frame)
                if event is None:
                    continue
                if type(event) is ServerCall:
                    self._runq.append(event)
                elif type(event) is Cancel:
                    self._cancel(event.call)
                elif type(event) is Grant:
                    self._cond.notify_all()
                else:
                    assert type(event) is Close
                    over = True
                    break
            if not over and core.stray_fds(transport.buffered_size() > 0) is not None:
                over = True
            while not over and not core.wants_input() and not self._reading_over:
                self._cond.wait()  # the peer does not read: wait for the output to drain
            if over:
                self._end_reading()
            elif self._runq and self._running < self._max_running:
                mine = self._runq.popleft()
                self._running += 1
                self._leading = False  # someone else leads: an idle thread, or a new one
                if self._idle:
                    self._cond.notify()
                else:
                    self._spawn()
                if self._runq:
                    self._cond.notify(len(self._runq))
            else:
                self._leading = False
                self._cond.notify()
        self._flush()
        return mine

    def _end_reading(self) -> None:  # lock held
        """The reading is over: if the peer is gone, its calls are cancelled;
        if it only shut down its write side, they finish and are answered,
        unless it hangs up meanwhile (a watcher thread looks)."""
        self._reading_over = True
        self._leading = False
        self._cond.notify_all()
        if _peer_hung_up(self._transport):
            for call in self.core.hang_up():
                self._cancel(call)
        elif len(self.core):
            self._threads += 1
            name = f"unixrpc-conn{self.connection_id}-hangup"
            threading.Thread(target=self._watch_hang_up, name=name, daemon=True).start()

    def _watch_hang_up(self) -> None:
        """After the reading ended with calls in flight: cancel them if the
        peer closes the connection before they are answered."""
        try:
            while True:
                with self._lock:
                    if not len(self.core):
                        return
                if _peer_hung_up(self._transport, wait=0.2):
                    with self._lock:
                        for call in self.core.hang_up():
                            self._cancel(call)
                    self._flush()
                    return
        finally:
            self._thread_done()

    def _cancel(self, call: ServerCall) -> None:  # lock held
        """Stop *call*: an async one is cancelled on the loop; a plain one is
        answered now and told through its context."""
        context = call.context
        if context is not None:
            context._set_cancelled()
        future = call.engine
        if isinstance(future, Future):  # awaited on the loop thread: cancelled there
            future.cancel()
        else:  # not started (None), or running on its thread (True): answered now
            self.core.cancelled(call, still_running=future is not None)
        self._cond.notify_all()  # a stream waiting for credit stops

    # -- running calls --------------------------------------------------------------

    def _context(self, call: ServerCall) -> CallContext:
        context: CallContext | None = call.context
        if context is None:
            context = CallContext(self.peer, call.handler.spec.name, call.call_id, self.connection_id)
            call.context = context
        return context

    def _run(self, call: ServerCall) -> None:
        """Run *call* on this thread, and answer it."""
        handler, core, lock = call.handler, self.core, self._lock
        try:
            with lock:
                if call.cancel_requested:
                    core.cancelled(call)
                    return
                call.engine = True  # running: a cancel answers it at once
            hook = self._server.authorize
            if hook is not None:
                allowed = hook(self._context(call), call.request)
                if isinstance(allowed, Awaitable):
                    pending = allowed
                    allowed = self._await(call, lambda: pending)
                if not allowed:
                    with lock:
                        core.deny(call, self.peer.uid, self.peer.pid)
                    return
            args = (call.request, self._context(call)) if handler.wants_context else (call.request,)
            if handler.spec.streaming:
                self._run_stream(call, args)
                result = None
            elif handler.is_async:
                result = self._await(call, lambda: handler.function(*args))
            else:
                result = handler.function(*args)
        except (_Stop, FutureCancelledError):
            with lock:
                core.cancelled(call)
                core.release(call)
        except Exception as exc:
            with lock:
                core.fail(call, exc)
        else:
            with lock:
                core.complete(call, result)
        finally:
            self._flush()

    def _await(self, call: ServerCall, make: Callable[[], Awaitable[Any]]) -> Any:
        """Run an awaitable on the loop thread and wait for it here; a cancel
        of *call* cancels it there.

        Raises:
            concurrent.futures.CancelledError: it was cancelled.
        """
        loop = self._engine.loop_thread()

        async def run() -> Any:
            return await make()

        with self._lock:
            if call.cancel_requested:
                raise FutureCancelledError
            future = call.engine = loop.start(run)
        try:
            return future.result()
        finally:
            with self._lock:
                call.engine = True

    def _run_stream(self, call: ServerCall, args: tuple[Any, ...]) -> None:
        items = call.handler.function(*args)
        if call.handler.is_async:
            done = object()

            async def next_item() -> Any:
                return await anext(items, done)

            try:
                while True:
                    item = self._await(call, next_item)
                    if item is done:
                        return
                    self._send_item(call, item)
            finally:
                with contextlib.suppress(Exception):
                    self._engine.loop_thread().start(items.aclose).result()
        try:
            for item in items:
                self._send_item(call, item)
        finally:
            items.close()

    def _send_item(self, call: ServerCall, item: Any) -> None:
        core, cond = self.core, self._cond
        with cond:
            while not call.cancel_requested and not core.take_credit(call):
                cond.wait()
            if call.cancel_requested:
                raise _Stop
            core.item(call, item)  # InternalError: the stream fails with it
        self._flush()

    # -- writing --------------------------------------------------------------------

    def _flush(self) -> None:
        """Write what the core has queued, unless another thread is writing
        (it writes what was queued meanwhile before it stops)."""
        core, lock, transport = self.core, self._lock, self._transport
        while True:
            with lock:
                if self._writing or not core.has_output():
                    return
                self._writing = True
                chunks = core.take_output()
            try:
                for index, chunk in enumerate(chunks):
                    try:
                        if type(chunk) is bytes:
                            transport.send_data(chunk)
                        else:
                            assert isinstance(chunk, FdFrame)
                            fds = array.array("i", chunk.fileno_list()).tobytes()
                            transport.send_data(chunk.data, [(*_RIGHTS, fds)])
                    except (ConnectionError, OSError) as exc:
                        self._give_up(chunks[index:], exc)
                        break
                    with lock:
                        core.written(chunk)
            finally:
                with self._cond:
                    self._writing = False
                    self._cond.notify_all()

    def _give_up(self, chunks: list[Chunk], exc: BaseException) -> None:
        logger.debug("connection %d: replies not sent: %s", self.connection_id, exc)
        with self._lock:
            for chunk in chunks:
                self.core.written(chunk, ok=False)

    # -- the server's view --------------------------------------------------------------

    def busy(self) -> bool:
        """Calls in flight, or replies not yet written: a graceful shutdown waits."""
        with self._lock:
            return self.core.busy() or self._writing

    def calls_in_flight(self) -> int:
        with self._lock:
            return len(self.core)

    def abort(self) -> None:
        """Cut the connection now (the server is going away): blocked reads
        and writes fail, calls in flight are cancelled."""
        with self._cond:
            for call in self.core.hang_up():
                self._cancel(call)
            self._reading_over = True
            self._cond.notify_all()
        self._transport.close()

    def _close(self) -> None:
        self._transport.close()
        with self._lock:
            self.core.close()
        self._engine.connection_done(self)
        self.finished.set()


def _peer_hung_up(transport: UnixStreamClient[Any, Any], wait: float = 0.0) -> bool:
    """True when the peer closed both directions (not a mere send_eof)."""
    try:
        poller = select.poll()
        poller.register(transport.socket.fileno(), select.POLLHUP)
        return any(events & (select.POLLHUP | select.POLLERR) for _, events in poller.poll(wait * 1000))
    except (OSError, ValueError, ClientClosedError):
        return True
