"""The anyio engine's side of one connection: it waits and moves bytes for
the connection's protocol object (:class:`.._core.server.ServerConnection`),
which decides everything else.

How calls run: the task that reads a request runs it at once, in place. A
call that completes without waiting (most do) costs no task switch. A call
that waits hands the reading on to another task of the connection's pool
(leader/follower) and is finished by the task that started it, so a slow
call never holds back the next request; the hand-over happens at the call's
first suspension, observed by stepping its coroutine once, so cancel scopes
and anything else bound to the task stay valid. Plain ``def`` handlers run
in the server's :class:`.threadpool.HandlerThreads`.

How replies leave: the core queues them; while the reader still has
requests in hand it lets them pile up (one ``send`` for a batch), otherwise
whoever produced output writes it at once. A short write is finished by the
task that began it, shielded (a frame is never cut in half), and that task
also writes what was queued meanwhile, so frames keep their order.
"""

from __future__ import annotations

import logging
import select
import socket
import threading
from collections import deque
from collections.abc import Awaitable, Coroutine
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel

from .._core import wire
from .._core.server import Cancel, Chunk, Close, FdFrame, Grant, ServerCall, ServerConnection
from .._wakeup import Wakeup, wakeup_factory
from ..ancillary import SocketAncillary, UnixCredentials
from ..exceptions import (
    AncillaryDataTruncatedError,
    CallCancelledError,
    ClientClosedError,
    ConnectionBrokenError,
    StreamProtocolParseError,
)
from ..transport.async_client import AsyncUnixStreamClient
from .context import CallContext
from .tasks import READER_BUDGET, Worker, resume
from .threadpool import outcome_waiter

if TYPE_CHECKING:
    from .server import Server

__all__ = ["Connection"]

logger = logging.getLogger("unixrpc.server")
_RIGHTS = (socket.SOL_SOCKET, socket.SCM_RIGHTS)
#: seconds between looks for a hang-up once the read side has ended with calls in flight
_HANG_UP_POLL = 0.2


class Connection:
    """Serves one accepted connection until it ends."""

    def __init__(
        self,
        server: Server,
        transport: AsyncUnixStreamClient[wire.RawFrame, wire.RawFrame],
        connection_id: int,
    ) -> None:
        self._server = server
        self._transport = transport
        self.connection_id = connection_id
        self.peer: UnixCredentials = transport.get_peer_credentials()
        self.core = ServerConnection(server._rules, connection_id, self.peer.pid, self.peer.uid)
        self._idle_workers: list[Worker] = []
        self._reading_done = False
        self._new_wakeup = wakeup_factory()
        self._new_waiter = outcome_waiter()
        self._new_scope: type[anyio.CancelScope] = type(anyio.CancelScope())
        self._task_group: anyio.abc.TaskGroup | None = None
        self._ancillary = SocketAncillary()  # the reader's
        self._bufsize = server._framing.ancillary_bufsize
        self._inbox: deque[wire.RawFrame] = deque()  # frames read, not yet taken (whoever reads takes them)
        self._corking = False  # the reader has more requests in hand: let replies pile up
        self._writing = False  # a task is finishing a short write (and writes what follows)
        self._write_done: Wakeup | None = None  # set when it is done
        self._reading_over = anyio.Event()
        self._partial_since = 0.0  # when the frame now half read began to arrive

    async def run(self) -> None:
        """Read and dispatch until the peer leaves or the stream breaks.

        If the peer only shut down its write side, calls in flight finish and
        are answered. If it closed the connection, no answer can reach it:
        calls in flight are cancelled, notifications are let finish."""
        try:
            async with anyio.create_task_group() as task_group:
                self._task_group = task_group
                self._pass_reading()
                await self._reading_over.wait()
                # the read side ended: if the peer is gone (now, or while calls
                # still run), nobody can read their answers: cancel them
                while True:
                    if self._peer_hung_up():
                        for call in self.core.hang_up():
                            self._cancel(call)
                        break
                    if not len(self.core):
                        break
                    await anyio.sleep(_HANG_UP_POLL)
                for worker in self._idle_workers:  # no more work: let the pool end
                    worker.wake.set()
        finally:
            self.core.close()

    def _read_timeout(self) -> tuple[float, str] | None:
        """How long the reader may wait now, and why it closes after: a frame
        begun must be finished within ``frame_timeout``; a connection with
        nothing in flight is closed after ``connection_idle_timeout``."""
        server, now = self._server, anyio.current_time()
        if self._transport.buffered_size():
            if server.frame_timeout is None:
                return None
            if not self._partial_since:
                self._partial_since = now
            left = self._partial_since + server.frame_timeout - now
            return max(left, 0.0), f"a frame was not finished within {server.frame_timeout} s"
        idle = server.connection_idle_timeout
        if idle is not None and not len(self.core) and not self.core.has_output():
            return idle, f"idle for {idle} s"
        return None

    def _peer_hung_up(self) -> bool:
        """True when the peer closed both directions (not a mere send_eof)."""
        try:
            poller = select.poll()
            poller.register(self._transport.socket.fileno(), select.POLLHUP)
            return any(events & select.POLLHUP for _, events in poller.poll(0))
        except (OSError, RuntimeError, ClientClosedError):
            return True

    # -- reading --------------------------------------------------------------

    async def _read(self, worker: Worker) -> Awaitable[Any] | None:
        """Read frames and run their calls in place until one of them waits,
        or a write of queued replies would: then pass the reading on and
        return what finishes that call or write, to await in this task. None
        once the reading is over."""
        transport, core, inbox = self._transport, self.core, self._inbox
        ancillary, bufsize = self._ancillary, self._bufsize
        budget = READER_BUDGET
        while True:
            if not inbox:
                if core.stray_fds(transport.buffered_size() > 0) is not None or not core.wants_input():
                    if core.closing is not None:
                        await self._flush()
                        return None
                    await self._flush()  # the peer does not read: wait for it before reading more
                    continue
                try:
                    frames = transport.recv_packets_nowait(ancillary, bufsize)
                    if not frames:
                        if core.has_output():  # nothing more in hand: the queued replies go now
                            pending = self._flush_nowait()
                            if pending is not None:  # the peer is slow to read: never stop reading for it
                                self._pass_reading()
                                return pending
                        timeout = self._read_timeout()
                        if timeout is None:
                            frames = [await transport.recv_packet_after_empty(ancillary, bufsize)]
                        else:
                            with anyio.move_on_after(timeout[0]):
                                frames = [await transport.recv_packet_after_empty(ancillary, bufsize)]
                            if not frames:  # nothing came in time
                                core.fatal(timeout[1], tell_peer=transport.buffered_size() > 0)
                                await self._flush()
                                return None
                    self._partial_since = 0.0 if not transport.buffered_size() else self._partial_since
                except StreamProtocolParseError as exc:  # oversized frame / too many fds: cannot resync
                    core.fatal(str(exc.error))
                    await self._flush()
                    return None
                except AncillaryDataTruncatedError as exc:
                    logger.warning("connection %d: %s", self.connection_id, exc)
                    core.fatal(str(exc), tell_peer=False)
                    return None
                except (ConnectionBrokenError, ClientClosedError):
                    return None
                finally:
                    if ancillary:
                        core.receive_fds(ancillary.iter_fds())
                        ancillary.clear()
                inbox.extend(frames)
            event = core.receive_frame(inbox.popleft())
            if event is None:
                continue
            if type(event) is ServerCall:
                event.engine = worker
                worker.current = event
                self._corking = bool(inbox) or transport.buffered_size() > 0
                try:
                    blocked = self._step(event)
                finally:
                    self._corking = False
                if blocked is not None:
                    self._pass_reading()  # the next reader writes what was queued
                    return blocked
                worker.current = None  # answered without waiting
                budget -= 1
                if not budget:  # a busy connection must not starve the others
                    budget = READER_BUDGET
                    pending = self._flush_nowait()
                    if pending is not None:
                        self._pass_reading()
                        return pending
                    await anyio.lowlevel.checkpoint()
            elif type(event) is Cancel:
                self._cancel(event.call)
            elif type(event) is Grant:
                waiting = event.call.engine.credit
                if waiting is not None:
                    waiting.set()
            else:
                assert type(event) is Close
                await self._flush()
                return None

    def _cancel(self, call: ServerCall) -> None:
        """Stop *call*: its worker's scope reaches the call and nothing else."""
        if call.context is not None:
            call.context._set_cancelled()
        worker = call.engine
        if worker is not None and worker.current is call:
            worker.scope.cancel()

    def _pass_reading(self) -> None:
        """Give the reading to an idle task of the pool, or to a new one."""
        if self._idle_workers:
            self._idle_workers.pop().wake.set()
            return
        assert self._task_group is not None
        self._task_group.start_soon(self._work, Worker(self._new_scope(), self._new_wakeup()))

    async def _work(self, worker: Worker) -> None:
        """A pool task: read, run, park; until the reading is over."""
        while True:
            scope = worker.scope
            try:
                with scope:
                    await self._read_and_run(worker, scope)
            except BaseException:  # the connection is going away under the call
                lost, worker.current = worker.current, None
                if lost is not None:
                    self.core.cancelled(lost)
                    if not worker.in_thread:
                        self.core.release(lost)
                raise
            if not scope.cancel_called:
                return  # the reading is over
            # a cancel ended the call in progress
            call, worker.current = worker.current, None
            worker.scope = self._new_scope()
            worker.credit = None
            in_thread, worker.in_thread = worker.in_thread, False
            if call is not None:
                self.core.cancelled(call)
                if not in_thread:  # else released when the thread returns
                    self.core.release(call)
                await self._flush()
            if self._reading_done:
                return
            await self._park(worker)
            if self._reading_done:
                return

    async def _read_and_run(self, worker: Worker, scope: anyio.CancelScope) -> None:
        while True:
            blocked = await self._read(worker)
            if blocked is None:  # the reading is over: tell run()
                await self._flush()
                self._reading_done = True
                self._reading_over.set()
                return
            # someone else reads now: finish the call (or write) that waited, here
            await blocked
            worker.current = None
            if self._reading_done or scope.cancel_called:
                return  # no more reading to take over, or this scope is spent
            await self._park(worker)
            if self._reading_done:
                return

    async def _park(self, worker: Worker) -> None:
        """Wait, idle, until given the reading (or told the reading is over)."""
        worker.wake = self._new_wakeup()
        self._idle_workers.append(worker)
        await worker.wake.wait()

    # -- running calls ----------------------------------------------------------

    def _context(self, call: ServerCall) -> CallContext:
        """What a handler or the authorization hook is told about *call*."""
        context: CallContext | None = call.context
        if context is None:
            context = CallContext(
                self.peer,
                call.handler.spec.name,
                call.call_id,
                self.connection_id,
                _rules=self._server._rules,
            )
            call.context = context
        return context

    def _step(self, call: ServerCall) -> Awaitable[None] | None:
        """Run *call* in place until it is answered or first waits: None once
        it is answered, else what finishes it, to await in this task.

        A plain async handler is stepped directly (the common case: most
        answer without waiting, and then no coroutine of ours is made);
        streams, threaded handlers and authorization take :meth:`_run_call`.
        """
        handler = call.handler
        if not handler.is_async or handler.spec.streaming or self._server.authorize is not None:
            coro = self._run_call(call)
            try:
                yielded = coro.send(None)
            except StopIteration:
                return None
            return resume(coro, yielded)
        coro = handler.function(
            *((call.request, self._context(call)) if handler.wants_context else (call.request,))
        )
        try:
            yielded = coro.send(None)
        except StopIteration as stop:
            self.core.complete(call, stop.value)
        except Exception as exc:
            self.core.fail(call, exc)
        else:
            return self._finish_call(call, coro, yielded)
        return None if self._corking else self._flush_nowait()

    async def _finish_call(self, call: ServerCall, coro: Coroutine[Any, Any, Any], yielded: Any) -> None:
        """Finish a handler :meth:`_step` left waiting, and answer it."""
        try:
            result = await resume(coro, yielded)
        except Exception as exc:
            self.core.fail(call, exc)
        else:
            self.core.complete(call, result)
        await self._flush()

    async def _run_call(self, call: ServerCall) -> None:
        """Run one call inside its worker's scope: authorization, streams and
        threaded handlers included. A cancel propagates out of here (the
        worker answers it); anything else is answered here."""
        handler, core = call.handler, self.core
        try:
            hook = self._server.authorize
            if hook is not None:
                try:
                    allowed = hook(self._context(call), call.request)
                    if isinstance(allowed, Awaitable):
                        allowed = await allowed
                except Exception as exc:
                    core.hook_failed(call, exc)
                    await self._flush()
                    return
                if not allowed:
                    core.deny(call, self.peer.uid, self.peer.pid)
                    await self._flush()
                    return
            args = (call.request, self._context(call)) if handler.wants_context else (call.request,)
            if handler.spec.streaming:
                await self._run_stream(call, args)
                result = None
            elif handler.is_async:
                result = await handler.function(*args)
            else:
                result = await self._in_thread(call, handler.function, args)
        except Exception as exc:
            core.fail(call, exc)
        else:
            core.complete(call, result)
        if not self._corking:
            await self._flush()

    async def _in_thread(
        self, call: ServerCall, function: Any, args: tuple[Any, ...], *, always: bool = False
    ) -> Any:
        """Run a plain function in the server's handler threads. A cancel
        abandons it (it runs on; its outcome then only releases the call's
        request descriptors, which stay open while it may use them); a call
        cancelled while it waits for a free thread never runs, unless
        *always* (cleanup)."""
        waiter = self._new_waiter()
        core = self.core
        waiter.late = lambda _: core.release(call)  # the outcome of an abandoned call
        job, job_args = (function, args) if always else (_unless_answered, (call, function, args))
        self._server._threads().submit(job, job_args, waiter.settle_threadsafe)
        worker: Worker = call.engine
        worker.in_thread = True
        try:
            ok, value = await waiter.wait()
        except BaseException:
            core.cancelled(call, still_running=True)  # answered now; its outcome only releases
            raise
        worker.in_thread = False
        if not ok:
            raise value
        return value

    async def _run_stream(self, call: ServerCall, args: tuple[Any, ...]) -> None:
        handler = call.handler
        items = handler.function(*args)
        if handler.is_async:
            try:
                async for item in items:
                    await self._send_item(call, item)
            finally:
                with anyio.CancelScope(shield=True):
                    await items.aclose()
            return
        stepper = _GeneratorStepper(items)
        try:
            while True:
                item = await self._in_thread(call, stepper.step, ())
                if item is _DONE:
                    break
                await self._send_item(call, item)
        finally:
            if not stepper.close_later():  # else a step still runs: its thread closes it
                with anyio.CancelScope(shield=True):
                    await self._in_thread(call, stepper.close, (), always=True)

    async def _send_item(self, call: ServerCall, item: Any) -> None:
        await anyio.lowlevel.checkpoint_if_cancelled()  # a cancel between items stops the stream
        core = self.core
        worker: Worker = call.engine
        while not core.take_credit(call):
            wake = worker.credit = self._new_wakeup()
            try:
                await wake.wait()
            finally:
                worker.credit = None
        core.item(call, item)  # InternalError: the stream fails with it
        if not self._corking:
            await self._flush()

    # -- writing ----------------------------------------------------------------

    async def _flush(self) -> None:
        """Write what the core has queued, waiting for room if need be (and
        for a task finishing a short write to be done)."""
        if self._writing:
            done = self._write_done = self._write_done or self._new_wakeup()
            await done.wait()
        pending = self._flush_nowait()
        if pending is not None:
            await pending

    def _flush_nowait(self) -> Awaitable[None] | None:
        """Write what the core has queued as far as the socket takes it now:
        None when all of it went (or a task finishing a short write will
        write it), else what finishes the write (await it before this task
        writes anything else)."""
        if self._writing:
            return None
        core = self.core
        chunks = core.take_output()
        for index, chunk in enumerate(chunks):
            if type(chunk) is bytes:
                data, cmsgs = chunk, None
            else:
                assert isinstance(chunk, FdFrame)
                data, cmsgs = chunk.data, [(*_RIGHTS, _fd_bytes(chunk.fileno_list()))]
            try:
                sent = self._transport.try_send(data, cmsgs)
            except (ConnectionError, OSError) as exc:
                self._give_up(chunks[index:], exc)
                return None
            if sent != len(data):
                self._writing = True
                return self._finish_writes(chunks[index:], sent)
            core.written(chunk)
        return None

    async def _finish_writes(self, chunks: list[Chunk], sent: int | None) -> None:
        """Write *chunks*, the first begun with *sent* bytes, then whatever
        the core queued meanwhile (shielded: a frame is never cut)."""
        core, transport = self.core, self._transport
        try:
            with anyio.CancelScope(shield=True):
                while chunks:
                    for index, chunk in enumerate(chunks):
                        if type(chunk) is bytes:
                            data, cmsgs = chunk, None
                        else:
                            assert isinstance(chunk, FdFrame)
                            data, cmsgs = chunk.data, [(*_RIGHTS, _fd_bytes(chunk.fileno_list()))]
                        try:
                            await transport.finish_send(data, sent, cmsgs)
                        except (ConnectionError, OSError) as exc:
                            self._give_up(chunks[index:], exc)
                            return
                        sent = 0
                        core.written(chunk)
                    chunks = core.take_output()
        finally:
            self._writing = False
            done, self._write_done = self._write_done, None
            if done is not None:
                done.set()

    def _give_up(self, chunks: list[Chunk], exc: BaseException) -> None:
        logger.debug("connection %d: replies not sent: %s", self.connection_id, exc)
        for chunk in chunks:
            self.core.written(chunk, ok=False)

    # -- the server's view --------------------------------------------------------

    def busy(self) -> bool:
        """Calls in flight, or replies not yet written: a graceful shutdown waits."""
        return self.core.busy() or self._writing

    def end_streams(self) -> None:
        """Shutdown began: end the streams now (they would never end)."""
        for call in self.core.end_streams():
            self._cancel(call)

    async def abort(self) -> None:
        """The grace period is over: answer what is left ``ShuttingDown``
        and tell the peer, as far as the socket takes it without waiting;
        then close the transport (sends blocked on a peer that does not read
        fail) and cancel the calls."""
        left = self.core.cut_off()
        if not self._writing:
            self._flush_nowait()  # a short write is not finished: the connection closes
        await self._transport.aclose()
        for call in left:
            self._cancel(call)


_DONE = object()


def _unless_answered(call: ServerCall, function: Any, args: tuple[Any, ...]) -> Any:
    """Run in a handler thread: *function*, unless its call was answered
    (cancelled) while it waited for a free thread."""
    if call.answered:
        raise CallCancelledError("call cancelled before a thread was free to run it")
    return function(*args)


class _GeneratorStepper:
    """Steps a plain generator in handler threads; if the stream is cancelled
    while a step runs, the thread running it closes the generator when the
    step returns (a generator cannot be closed from another thread while it
    runs)."""

    def __init__(self, items: Any) -> None:
        self._items = items
        self._lock = threading.Lock()
        self._running = False
        self._close_after = False

    def step(self) -> Any:
        with self._lock:
            self._running = True
        try:
            return next(self._items, _DONE)
        finally:
            with self._lock:
                self._running = False
                close = self._close_after
            if close:
                self._items.close()

    def close_later(self) -> bool:
        """True if a step runs now (it closes the generator when done); else
        the caller closes it with :meth:`close`."""
        with self._lock:
            if self._running:
                self._close_after = True
                return True
            return False

    def close(self) -> None:
        self._items.close()


def _fd_bytes(fds: list[int]) -> bytes:
    import array

    return array.array("i", fds).tobytes()
