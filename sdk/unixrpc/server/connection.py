"""One client connection on the server: read frames, dispatch calls
concurrently, send replies.

Owns the per-connection rules: calls run concurrently, each under a cancel
scope a cancel request can reach and that reaches no other call; every
request gets exactly one final reply (result or error, ``Cancelled``
included); a bad frame gets a protocol error and the connection goes on, unless
the stream itself cannot be trusted any more (oversized frame, descriptors
that never came), in which case the connection is closed. The descriptors
of every dropped frame are closed.

How calls run: the task that reads a request runs it at once, in place. A
call that completes without waiting (most do) costs no task switch at all.
A call that waits hands the reading on to another task of the connection's
pool (leader/follower) and is finished by the task that started it, so a
slow call never holds back the next request. The hand-over happens at the
call's first suspension, observed by stepping its coroutine once; the call
then continues in the same task, so cancel scopes and anything else bound
to the task stay valid. Writing frames (and corking the replies of a batch)
belongs to :mod:`.output`; the task pieces to :mod:`.tasks`.
"""

from __future__ import annotations

import logging
import select
import traceback
from collections import deque
from collections.abc import Awaitable, Coroutine
from typing import TYPE_CHECKING, Any, Literal

import anyio
import anyio.lowlevel
import orjson
from pydantic import ValidationError
from pydantic_core import PydanticSerializationError

from .._core import messages, wire
from .._core.calls import FdQueue, close_fds
from .._wakeup import wakeup_factory
from ..ancillary import SocketAncillary, UnixCredentials
from ..exceptions import (
    AncillaryDataTruncatedError,
    CallCancelledError,
    ClientClosedError,
    ConnectionBrokenError,
    InternalError,
    InvalidParamsError,
    MethodNotFoundError,
    PermissionDeniedError,
    ProtocolViolationError,
    RPCError,
    ServerBusyError,
    StreamProtocolParseError,
)
from ..fds import EMPTY_FDS, NO_FDS, FdContext, serialize
from ..transport.async_client import AsyncUnixStreamClient
from .context import CallContext
from .output import FrameWriter
from .tasks import READER_BUDGET, Credit, Job, Worker, resume

if TYPE_CHECKING:
    from .server import Server, _Handler

__all__ = ["Connection"]

logger = logging.getLogger("unixrpc.server")

_NO_PARAMS: dict[
    str, Any
] = {}  # a request without "params" (never changed: pydantic does not write to input)


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
        self._fd_queue = FdQueue()
        # the scope that cancels each call; None once its reply is being sent
        self.in_flight: dict[int | object, anyio.CancelScope | None] = {}
        self._credits: dict[int, Credit] = {}
        self._idle_workers: list[Worker] = []
        self._reading_done = False
        # the backend's own classes, instantiated without anyio's per-call dispatch
        self._new_wakeup = wakeup_factory()
        self._new_scope: type[anyio.CancelScope] = type(anyio.CancelScope())
        self._task_group: anyio.abc.TaskGroup | None = None
        self._framing = server._framing
        self._ancillary = SocketAncillary()  # the reader's
        self._inbox: deque[wire.RawFrame] = deque()  # frames read, not yet run (whoever reads takes them)
        self._writer = FrameWriter(transport, self._framing, connection_id)
        self._send = self._writer.send
        self._reading_over = anyio.Event()

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
                if self._peer_hung_up():
                    for key, scope in list(self.in_flight.items()):
                        if type(key) is int and scope is not None:
                            scope.cancel()
                for worker in self._idle_workers:  # no more work: let the pool end
                    worker.wake.set()
        finally:
            self._fd_queue.close_all()

    def _peer_hung_up(self) -> bool:
        """True when the peer closed both directions (not a mere send_eof)."""
        try:
            poller = select.poll()
            poller.register(self._transport.socket.fileno(), select.POLLHUP)
            return any(events & select.POLLHUP for _, events in poller.poll(0))
        except (OSError, RuntimeError, ClientClosedError):
            return True

    async def _read(self, worker: Worker) -> Awaitable[Any] | None:
        """Read frames and run their calls in place until one of them waits,
        or a write of corked replies would: then pass the reading on and
        return what finishes that call or write, to await in this task. None
        once the reading is over."""
        transport, fd_queue, writer = self._transport, self._fd_queue, self._writer
        ancillary, inbox = self._ancillary, self._inbox
        bufsize = self._framing.ancillary_bufsize
        budget = READER_BUDGET
        while True:
            if not inbox:
                if fd_queue and not transport.buffered_size():
                    # descriptors ride on their frame's first byte: with no frame
                    # pending, these belong to none (the peer declared too few)
                    error = ProtocolViolationError(f"{len(fd_queue)} file descriptors came with no frame")
                    await self._send_error(None, error)
                    return None
                try:
                    frames = transport.recv_packets_nowait(ancillary, bufsize)
                    if not frames:
                        if writer.has_cork():  # nothing more in hand: the corked replies go now
                            pending = writer.flush_nowait()
                            if pending is not None:  # the peer is slow to read: never stop reading for it
                                self._pass_reading()
                                return pending
                        frames = [await transport.recv_packet_after_empty(ancillary, bufsize)]
                except StreamProtocolParseError as exc:  # oversized frame / too many fds: cannot resync
                    await self._send_error(None, ProtocolViolationError(str(exc.error)))
                    return None
                except AncillaryDataTruncatedError as exc:
                    logger.warning("connection %d: %s", self.connection_id, exc)
                    return None
                except (ConnectionBrokenError, ClientClosedError):
                    return None
                finally:
                    if ancillary:
                        fd_queue.push(ancillary.iter_fds())
                        ancillary.clear()
                inbox.extend(frames)
            frame = inbox.popleft()
            fds = []
            if frame.nfds:
                try:
                    fds = fd_queue.take(frame.nfds)
                except ValueError as exc:
                    await self._send_error(None, ProtocolViolationError(str(exc)))
                    return None
            envelope: Any = None
            try:
                envelope = orjson.loads(frame.body)
                kind = wire.classify(envelope)
            except (orjson.JSONDecodeError, ValueError) as exc:
                close_fds(fds)
                call_id = envelope.get("id") if isinstance(envelope, dict) else None
                await self._send_error(
                    call_id if wire.is_call_id(call_id) else None,
                    ProtocolViolationError(f"invalid envelope: {exc}"),
                )
                continue
            if kind == wire.REQUEST or kind == wire.NOTIFICATION:
                job = self._dispatch(worker, envelope, fds)
                if job is not None:
                    worker.current = job
                    writer.corking = bool(inbox) or transport.buffered_size() > 0
                    try:
                        blocked = self._step(job)
                    finally:
                        writer.corking = False
                    if blocked is not None:
                        self._pass_reading()  # the next reader flushes the cork first
                        return blocked
                    worker.current = None  # answered without waiting
                budget -= 1
                if not budget:  # a busy connection must not starve the others
                    budget = READER_BUDGET
                    if writer.has_cork():
                        pending = writer.flush_nowait()
                        if pending is not None:
                            self._pass_reading()
                            return pending
                    await anyio.lowlevel.checkpoint()
            elif kind == wire.CANCEL:
                close_fds(fds)
                scope = self.in_flight.get(envelope["cancel"])
                if scope is not None:
                    scope.cancel()
            elif kind == wire.CREDIT:
                close_fds(fds)
                credit = self._credits.get(envelope["credit"])
                if credit is not None:
                    credit.grant(envelope["n"])
            else:
                close_fds(fds)
                await self._send_error(None, ProtocolViolationError(f"a client may not send {kind} messages"))

    def _dispatch(self, worker: Worker, envelope: dict[str, Any], fds: list[int]) -> Job | None:
        """Check and validate a request; the job to run in *worker*, or None
        if it was refused (the refusal is on its way)."""
        server = self._server
        error: RPCError
        call_id: int | None = envelope.get("id")
        name: str = envelope["method"]
        if server._stopping:
            self._refuse(call_id, name, fds, ServerBusyError("server is shutting down"))
            return None
        if len(self.in_flight) >= server.max_calls_per_connection:
            limit = server.max_calls_per_connection
            error = ServerBusyError(f"too many calls in flight on this connection (limit {limit})")
            self._refuse(call_id, name, fds, error)
            return None
        if call_id is not None and call_id in self.in_flight:
            self._refuse(
                call_id, name, fds, ProtocolViolationError(f"call id {call_id} is already in flight")
            )
            return None
        handler = server._handlers.get(name)
        if handler is None:
            error = MethodNotFoundError(messages.method_not_found(name, server._handlers))
            self._refuse(call_id, name, fds, error)
            return None
        window = envelope.get("stream")
        if window is not None or handler.spec.streaming:
            if handler.spec.streaming and window is None and call_id is not None:
                error = ProtocolViolationError(f'{name} is a stream method: send a "stream" window')
                self._refuse(call_id, name, fds, error)
                return None
            if not handler.spec.streaming and window is not None:
                self._refuse(call_id, name, fds, ProtocolViolationError(f"{name} is not a stream method"))
                return None
        params = envelope.get("params", _NO_PARAMS)
        if fds:
            request_fds = FdContext(fds)
            context = request_fds.pydantic_context
            fds = []  # owned by request_fds from here on
        else:  # the common case: the shared empty context, which nothing changes
            request_fds, context = EMPTY_FDS, NO_FDS
        try:
            validator = handler.spec.method_class.__pydantic_validator__
            request = validator.validate_python(params, context=context, extra=handler.spec.wire_extra)
        except ValidationError as exc:
            request_fds.abort()
            errors = exc.errors(include_url=False, include_context=False)
            error = InvalidParamsError(messages.invalid_params(name, errors), data=errors)
            self._refuse(call_id, name, fds, error)
            return None
        except Exception as exc:  # a validator that raised something else: the call fails, not the server
            request_fds.abort()
            logger.exception("validating the params of %s raised", name)
            error = InternalError(f"validating the params of {name} raised {type(exc).__name__}")
            self._refuse(call_id, name, fds, error)
            return None
        if request_fds is not EMPTY_FDS:
            request_fds.finish()  # descriptors no FD field took are closed
        key: int | object = call_id if call_id is not None else object()
        self.in_flight[key] = worker.scope
        if window is not None and call_id is not None:
            self._credits[call_id] = Credit(window)  # before any credit message can arrive
        return Job(handler, request, call_id, key, window, request_fds)

    def _refuse(self, call_id: int | None, name: str, fds: list[int], error: RPCError) -> None:
        """Turn a request down: its descriptors are closed, its error sent."""
        close_fds(fds)
        if call_id is not None:
            assert self._task_group is not None
            self._task_group.start_soon(self._send_error, call_id, error)
        else:
            logger.info("connection %d: notification %r refused: %s", self.connection_id, name, error)

    def _context(self, job: Job) -> CallContext:
        """What a handler or the authorization hook is told about *job*."""
        return CallContext(self.peer, job.handler.spec.name, job.call_id, self.connection_id)

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
                lost = worker.current
                if lost is not None:
                    worker.current = None
                    self.in_flight.pop(lost.key, None)
                    lost.request_fds.abort()
                raise
            if not scope.cancel_called:
                return  # the reading is over
            # a cancel ended the call in progress
            job, worker.current = worker.current, None
            worker.scope = self._new_scope()
            if job is not None:
                await self._answer_cancelled(job)
            if self._reading_done:
                return
            await self._park(worker)
            if self._reading_done:
                return

    async def _read_and_run(self, worker: Worker, scope: anyio.CancelScope) -> None:
        while True:
            blocked = await self._read(worker)
            if blocked is None:  # the reading is over: tell run()
                if self._writer.has_cork():
                    await self._writer.flush()
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

    async def _answer_cancelled(self, job: Job) -> None:
        call_id = job.call_id
        try:
            if call_id is not None:
                self._credits.pop(call_id, None)
                error = CallCancelledError("call cancelled by the client")
                await self._send(wire.encode_error(call_id, error.code, error.message), shield=True)
        finally:
            self.in_flight.pop(job.key, None)
            job.request_fds.abort()

    def _step(self, job: Job) -> Awaitable[None] | None:
        """Run *job* in place until it is answered or first waits: None once
        it is answered, else what finishes it, to await in this task.

        A plain async handler is stepped directly (the common case: most
        answer without waiting, and then no coroutine of ours is made);
        streams, threaded handlers and authorization take :meth:`_run_call`.
        """
        handler = job.handler
        if not handler.is_async or handler.spec.streaming or self._server.authorize is not None:
            call = self._run_call(job)
            try:
                yielded = call.send(None)
            except StopIteration:
                return None
            return resume(call, yielded)
        coro = handler.function(
            *((job.request, self._context(job)) if handler.wants_context else (job.request,))
        )
        try:
            yielded = coro.send(None)
        except StopIteration as stop:
            body, body_fds = self._reply(job, stop.value)
        except Exception as exc:
            body, body_fds = self._failure(job, exc)
        else:
            return self._finish_call(job, coro, yielded)
        return self._deliver(job, body, body_fds)

    async def _finish_call(self, job: Job, coro: Coroutine[Any, Any, Any], yielded: Any) -> None:
        """Finish a handler :meth:`_step` left waiting, and answer it."""
        try:
            result = await resume(coro, yielded)
        except Exception as exc:
            body, body_fds = self._failure(job, exc)
        else:
            body, body_fds = self._reply(job, result)
        unfinished = self._deliver(job, body, body_fds)
        if unfinished is not None:
            await unfinished

    async def _run_call(self, job: Job) -> None:
        """Run one call inside its worker's scope, authorization, streams
        and threaded handlers included. A cancel propagates out of here (the
        worker answers it); anything else is answered here."""
        handler, request, call_id, _, window, request_fds = job
        try:
            if self._server.authorize is not None:
                await self._authorize(self._context(job), request)
            if handler.spec.streaming:
                assert call_id is not None or window is None
                await self._run_stream(handler, request, job, window or 1)
                body = wire.encode_result(call_id, b"null") if call_id is not None else None
                body_fds = None
            else:
                args = (request, self._context(job)) if handler.wants_context else (request,)
                if handler.is_async:
                    result = await handler.function(*args)
                else:
                    result = await self._in_thread(handler, args, abandon=not request_fds.holds_any())
                body, body_fds = self._reply(job, result)
        except Exception as exc:
            body, body_fds = self._failure(job, exc)
        finally:
            if window is not None and call_id is not None:
                self._credits.pop(call_id, None)
        unfinished = self._deliver(job, body, body_fds)
        if unfinished is not None:
            await unfinished

    def _reply(self, job: Job, result: Any) -> tuple[bytes | None, FdContext | None]:
        """The reply frame's body for a handler's *result*, and its
        descriptors (no reply for a notification)."""
        if job.call_id is None:
            return None, None
        try:
            encoded, body_fds = self._encode(job.handler, result, "result")
        except InternalError as exc:
            return self._error_reply(job.call_id, exc)
        return wire.encode_result(job.call_id, encoded), body_fds

    def _failure(self, job: Job, exc: Exception) -> tuple[bytes | None, FdContext | None]:
        """The reply for a handler that raised *exc*: a typed error as
        itself, anything else as an InternalError (logged, traceback sent
        only if the server exposes them)."""
        if isinstance(exc, RPCError):
            return self._error_reply(job.call_id, exc)
        name = job.handler.spec.name
        logger.error("handler of %s raised", name, exc_info=exc)
        data = (
            {"traceback": "".join(traceback.format_exception(exc))}
            if self._server.expose_tracebacks
            else None
        )
        return self._error_reply(
            job.call_id, InternalError(f"handler of {name} raised {type(exc).__name__}", data=data)
        )

    def _deliver(self, job: Job, body: bytes | None, body_fds: FdContext | None) -> Awaitable[None] | None:
        """Send a call's reply as far as can be done without waiting, and
        retire the call once it is out: None when done, else what finishes it
        (shielded). Past the handler a cancel can no longer reach the call."""
        key = job.key
        self.in_flight[key] = None
        unfinished: Awaitable[None] | None = None
        try:
            if body is not None:
                if body_fds is None:  # the common case: no coroutine unless the write waits
                    unfinished = self._writer.send_nowait(body, job.call_id)
                else:
                    unfinished = self._send(body, body_fds, job.call_id, shield=True)
        finally:
            if unfinished is None:
                self.in_flight.pop(key, None)  # _retire, inline: every call
                if job.request_fds is not EMPTY_FDS:
                    job.request_fds.abort()
        return None if unfinished is None else self._retire_after(job, unfinished)

    async def _retire_after(self, job: Job, unfinished: Awaitable[None]) -> None:
        try:
            await unfinished
        finally:
            self._retire(job)

    def _retire(self, job: Job) -> None:
        # in flight until its reply is out: a graceful shutdown waits for it
        self.in_flight.pop(job.key, None)
        # the request's descriptors live as long as the call, its reply
        # included (a reply may hand one back); detach() keeps one
        request_fds = job.request_fds
        if request_fds is not EMPTY_FDS:
            request_fds.abort()

    async def _authorize(self, context: CallContext, request: Any) -> None:
        hook = self._server.authorize
        assert hook is not None
        try:
            allowed = hook(context, request)
            if isinstance(allowed, Awaitable):
                allowed = await allowed
        except Exception as exc:  # the hook's failure, not the handler's (an RPCError goes as itself)
            if isinstance(exc, RPCError):
                raise
            logger.error("the authorize hook raised on a call of %s", context.method, exc_info=exc)
            raise InternalError(messages.authorize_failed(context.method, exc)) from None
        if not allowed:
            raise PermissionDeniedError(
                f"{context.method} is not allowed for uid {context.peer.uid} (pid {context.peer.pid})"
            )

    @staticmethod
    async def _in_thread(handler: _Handler, args: tuple[Any, ...], *, abandon: bool) -> Any:
        """Run a plain-function handler in a worker thread, which a cancel
        abandons (it runs on, its result unused) unless the request holds
        descriptors: those must stay open while the thread may use them, so
        the cancel then waits for the thread."""
        result = await anyio.to_thread.run_sync(handler.function, *args, abandon_on_cancel=abandon)
        await anyio.lowlevel.checkpoint_if_cancelled()  # a cancel that waited for the thread still counts
        return result

    async def _run_stream(self, handler: _Handler, request: Any, job: Job, window: int) -> None:
        call_id = job.call_id
        credit = self._credits.get(call_id, Credit(window)) if call_id is not None else Credit(window)
        args = (request, self._context(job)) if handler.wants_context else (request,)
        items = handler.function(*args)
        if handler.is_async:
            try:
                async for item in items:
                    await self._send_item(handler, call_id, credit, item)
            finally:
                with anyio.CancelScope(shield=True):
                    await items.aclose()
        else:
            done = object()
            try:
                while True:
                    item = await anyio.to_thread.run_sync(next, items, done)
                    if item is done:
                        break
                    await self._send_item(handler, call_id, credit, item)
            finally:
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(items.close)

    async def _send_item(self, handler: _Handler, call_id: int | None, credit: Credit, item: Any) -> None:
        if call_id is None:
            return
        await anyio.lowlevel.checkpoint_if_cancelled()  # a cancel between items stops the stream
        await credit.take()
        body, item_fds = self._encode(handler, item, "item")
        frame_body = wire.encode_item(call_id, body)
        if len(frame_body) > self._server._framing.max_frame_size:
            if item_fds is not None:
                item_fds.sent()
            raise InternalError(f"a stream item of {len(frame_body)} bytes is over the frame limit")
        await self._send(frame_body, item_fds, shield=True)

    @staticmethod
    def _encode(handler: _Handler, value: Any, what: str) -> tuple[bytes, FdContext | None]:
        spec = handler.spec
        try:
            codec = spec.codec or spec.result_codec()
            # A value whose type could mismatch is encoded with warnings as
            # errors, which costs pydantic-core about 1 us per call (the
            # string argument): a value of exactly a plain class is spared.
            warnings: bool | Literal["error"] = False if type(value) is codec.trusted_type else "error"
            return serialize(codec.serializer, value, has_fds=codec.has_fds, warnings=warnings)
        except (PydanticSerializationError, ValueError) as exc:
            raise InternalError(f"handler of {spec.name} returned an invalid {what}: {exc}") from None

    @staticmethod
    def _error_reply(call_id: int | None, error: RPCError) -> tuple[bytes | None, FdContext | None]:
        """The error frame's body for *error* and its descriptors (none for a
        notification: it gets no reply)."""
        if call_id is None:
            logger.info("notification failed: %r", error)
            return None, None
        fields = getattr(error, "_rpc_fields", None)
        if fields is None:
            return wire.encode_error(call_id, error.code, error.message, error.data), None
        fd_context = FdContext()  # typed fields may hold FDs: encode them with the frame
        data = orjson.loads(
            fields.__pydantic_serializer__.to_json(fields, context=fd_context.pydantic_context)
        )
        return wire.encode_error(call_id, error.code, error.message, data), fd_context

    async def _send_error(self, call_id: int | None, error: RPCError) -> None:
        await self._send(wire.encode_error(call_id, error.code, error.message, error.data))

    def busy(self) -> bool:
        """Calls in flight, or replies not yet written: a graceful shutdown waits."""
        return bool(self.in_flight) or self._writer.pending()

    async def abort(self) -> None:
        """Close the transport now: sends blocked on a peer that does not read
        fail, calls in flight are cut off (the server is going away)."""
        await self._transport.aclose()
