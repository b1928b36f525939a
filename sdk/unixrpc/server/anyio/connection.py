"""The anyio engine's side of one connection: it waits and moves bytes for
the connection's protocol object (:class:`.._core.server.ServerConnection`),
which decides everything else. This class holds the connection's state, the
reader's loop and its pool of tasks; composed parts work on that state:
reading (:mod:`.intake`), running calls (:mod:`.calls`), writing (:mod:`.output`).

How calls run: the task that reads a request runs it at once, in place. A
call that completes without waiting (most do) costs no task switch. A call
that waits hands the reading on to another task of the connection's pool
(leader/follower) and is finished by the task that started it, so a slow
call never holds back the next request; the hand-over happens at the call's
first suspension, observed by stepping its coroutine once, so cancel scopes
and anything else bound to the task stay valid. Plain ``def`` handlers run
in the server's :class:`.handler_threads.HandlerThreads`.

How replies leave: the core queues them; while the reader still has
requests in hand it lets them pile up (one ``send`` for a batch), otherwise
whoever produced output writes it at once. A short write is finished by the
task that began it, shielded (a frame is never cut in half), and that task
also writes what was queued meanwhile, so frames keep their order.
"""

from __future__ import annotations

import logging
import math
import socket
from collections import deque
from collections.abc import Awaitable
from typing import Any

import anyio
import anyio.lowlevel

from ..._core import wire
from ..._core.server import Cancel, Close, Grant, ServerCall, ServerConnection
from ..._wakeup import Wakeup, wakeup_factory
from ...peer import Peer
from ..config import ServerConfig
from ..kit import peer_hung_up
from ..sockio import LoopServerSocket
from .calls import CallRunner
from .handler_threads import outcome_waiter
from .intake import Intake, loop_clock
from .output import Output
from .tasks import READER_BUDGET, Worker

__all__ = ["Connection"]

logger = logging.getLogger("unixrpc.server")
#: seconds between looks for a hang-up once the read side has ended with calls in flight
_HANG_UP_POLL = 0.2


class Connection:
    """Serves one accepted connection until it ends (composed with a
    :class:`.calls.CallRunner` and an :class:`.output.Output`)."""

    def __init__(
        self,
        config: ServerConfig,
        io: LoopServerSocket,
        connection_id: int,
        peer: Peer,
    ) -> None:
        self._config = config
        self._io = io  # the socket: reads, writes, waits, the close
        self.connection_id = connection_id
        self.peer = peer  # (its pidfd is closed with the connection)
        self.core = ServerConnection(
            config.rules, connection_id, self.peer.pid, self.peer.uid, peer=self.peer
        )
        self._idle_workers: list[Worker] = []
        self._reading_done = False
        self._new_wakeup = wakeup_factory()
        self._new_waiter = outcome_waiter()
        self._new_scope: type[anyio.CancelScope] = type(anyio.CancelScope())
        self._task_group: anyio.abc.TaskGroup | None = None
        self._inbox: deque[wire.RawFrame] = deque()  # frames read, not yet taken (whoever reads takes them)
        self._corking = False  # the reader has more requests in hand: let replies pile up
        self._reading_over = anyio.Event()
        self._wait_scope: anyio.CancelScope | None = None  # the reader's wait for data, with a deadline
        self._waiting_plain = False  # the reader waits for data with no deadline
        self._clock = loop_clock()  # anyio.current_time's clock, without its lookups
        self._partial = False  # a frame is half read (as of the last read)
        self._idle_limit = config.rules.connection_idle_timeout is not None
        self._choosing = config.varlink_protocol is not None  # the wire waits for the first byte
        self._varlink = False
        self._turn: Wakeup | None = None  # the reader waits for the call in flight to end (varlink)
        self._output = Output(self)
        self._runner = CallRunner(self)
        self._intake = Intake(self)

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
            self.peer._close()  # its pidfd, before the socket closes
            self.core.close()

    def describe_calls(self) -> list[str]:
        """The calls in flight, for the log (the core's wording)."""
        return self.core.describe_calls()

    def _peer_hung_up(self) -> bool:
        return peer_hung_up(self._io.sock)

    # -- reading --------------------------------------------------------------

    async def _read(self, worker: Worker) -> Awaitable[Any] | None:
        """Read frames and run their calls in place until one of them waits,
        or a write of queued replies would: then pass the reading on and
        return what finishes that call or write, to await in this task. None
        once the reading is over. Every frame taken counts against the
        reader's turn (READER_BUDGET), calls or not, so a flood of cancels,
        credit or junk cannot starve other connections."""
        io, core, inbox = self._io, self.core, self._inbox
        output, step, intake = self._output, self._runner.step, self._intake
        budget = READER_BUDGET
        while True:
            if not inbox or not core.wants_input():
                if not core.wants_input() or core.stray_fds(io.buffered_size() > 0) is not None:
                    await output.flush()  # the peer does not read: wait for it before taking more
                    if core.closing is not None:
                        return None
                    continue
                frames = await intake.receive()
                if frames is None:
                    return None
                if not frames:
                    if core.has_output():  # nothing more in hand: the queued replies go now
                        pending = output.flush_nowait()
                        if pending is not None:  # the peer is slow to read: never stop reading for it
                            self._pass_reading()
                            return pending
                    if not await intake.wait_for_data():
                        return None
                    continue
                inbox.extend(frames)
            if self._varlink and core.waiting_turn():  # one call at a time: wait for it to end
                if not await self._wait_turn():
                    return None
                continue
            budget -= 1
            if not budget:  # a busy connection must not starve the others
                budget = READER_BUDGET
                pending = output.flush_nowait()
                if pending is not None:
                    self._pass_reading()
                    return pending
                await anyio.lowlevel.checkpoint()
            event = core.receive_frame(inbox.popleft())
            if event is None:
                continue
            if type(event) is ServerCall:
                event.engine = worker
                worker.current = event
                self._corking = bool(inbox) or io.buffered_size() > 0
                try:
                    blocked = step(event)
                finally:
                    self._corking = False
                if blocked is not None:
                    self._pass_reading()  # the next reader writes what was queued
                    return blocked
                worker.current = None  # answered without waiting
            elif type(event) is Cancel:
                self._cancel(event.call)
            elif type(event) is Grant:
                waiting = event.call.engine.credit
                if waiting is not None:
                    waiting.set()
            else:
                assert type(event) is Close
                await output.flush()
                return None

    async def _wait_turn(self) -> bool:
        """Wait, reading no further, until the call in flight has ended (a
        varlink connection runs one at a time); looks for a hang-up now and
        then meanwhile: False if the peer is gone (the reading is over)."""
        while self.core.waiting_turn():
            wake = self._turn = self._new_wakeup()
            with anyio.move_on_after(_HANG_UP_POLL):
                await wake.wait()
            self._turn = None
            if self.core.waiting_turn() and self._peer_hung_up():
                return False
        return True

    def _turn_came(self) -> None:
        """The core: the last call in flight has ended."""
        turn = self._turn
        if turn is not None:
            turn.set()

    def deadline_changed(self) -> None:
        """A call ended or output was written: if the reader waits, it waits
        for the core's deadline as it is now (the idle clock starts when the
        connection becomes idle, not when the reader began waiting)."""
        scope = self._wait_scope
        if self._waiting_plain and self.core.closing is not None:
            # the core closed it (its output went over the budget): end the reader's wait
            self._io.shutdown(socket.SHUT_RD)
            return
        if scope is not None:
            if self.core.closing is not None:  # the core closed it: the reader stops waiting
                scope.cancel()
                return
            deadline = self.core.next_deadline(self._clock())
            scope.deadline = math.inf if deadline is None else deadline

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
                    # nothing more goes out (a shielded writer would send it "Cancelled", as
                    # if its client had cancelled it): the peer finds the connection closed
                    self.core.close()
                    self.core.stop(lost, running=worker.in_thread)
                raise
            if not scope.cancel_called:
                return  # the reading is over
            # a cancel ended the call in progress
            call, worker.current = worker.current, None
            worker.scope = self._new_scope()
            worker.credit = None
            in_thread, worker.in_thread = worker.in_thread, False
            if call is not None:
                self.core.stop(call, running=in_thread)  # running: released when the thread returns
                await self._output.flush()
            if self._reading_done:
                return
            await self._park(worker)
            if self._reading_done:
                return

    async def _read_and_run(self, worker: Worker, scope: anyio.CancelScope) -> None:
        while True:
            blocked = await self._read(worker)
            if blocked is None:  # the reading is over: tell run()
                await self._output.flush()
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

    # -- the server's view --------------------------------------------------------

    def busy(self) -> bool:
        """Calls in flight, or replies not yet written: a graceful shutdown waits."""
        return self.core.busy() or self._output.writing

    def end_streams(self) -> None:
        """Shutdown began: end the streams now (they would never end)."""
        for call in self.core.end_streams():
            self._cancel(call)

    async def abort(self) -> None:
        """The grace period is over: answer what is left ``ShuttingDown``
        and tell the peer, as far as the socket takes it without waiting;
        then close the socket (a write blocked on a peer that does not read
        fails; it is let give up) and cancel the calls."""
        left = self.core.cut_off()
        if not self._output.writing:
            self._output.flush_nowait()  # a short write is not finished: the connection closes
        self.peer._close()
        self._io.close()
        await self._output.wait_idle()
        for call in left:
            self._cancel(call)
