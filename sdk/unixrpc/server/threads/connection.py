"""One connection under the blocking threads engine (:mod:`.thread_engine`).

Plain sockets and threads, no event loop. It waits and moves bytes for
each connection's protocol object (:class:`.._core.server.ServerConnection`,
called under the connection's lock), which decides everything else.

How calls run (leader/follower): the idle threads of a connection wait
in one epoll, where the socket is registered one-shot, so new data wakes
exactly one of them, the leader: it reads, re-arms the socket (the next
data wakes another waiting thread, which leads in turn), and runs the call
it read itself, on the thread that read it, with no hand-off on the way.
When no other thread waits, it starts one before running the call, so a
slow call never holds back a fast one; calls queued behind the first of a
read wake further threads through an eventfd. Calls of one connection run
concurrently, up to ``max_threads_per_connection`` at once; beyond that,
they wait for a thread of their connection while reading goes on (so
cancels and credit always get through). A sequential caller thus costs one
wake-up per call, as a thread-per-connection server does.

A plain ``def`` handler cannot be interrupted: on a cancel (the client's,
its peer leaving, or shutdown) its reply is ``Cancelled`` at once, it learns
it from ``CallContext.cancelled``, and what it returns is discarded. An
``async def`` handler (or async generator) runs on one shared event-loop
thread (asyncio), started with the server when it has any, and is
cancelled the usual way there.
"""

from __future__ import annotations

import array
import contextlib
import itertools
import logging
import os
import select
import socket
import threading
import time
from collections import deque
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from ..._core import wire
from ..._core.server import (
    Cancel,
    Chunk,
    Close,
    FdFrame,
    Grant,
    ServerCall,
    ServerConnection,
)
from ..._core.server.wires import VARLINK
from ..._ratelog import RateLimitedLog
from ...ancillary import SocketAncillary
from ...exceptions import (
    AncillaryDataTruncatedError,
    ClientClosedError,
    ConnectionBrokenError,
    ServerBusyError,
    StreamProtocolParseError,
)
from ...peer import Peer
from ...transport.sync_client import UnixStreamClient
from ..config import ServerConfig
from ..kit import NO_BYTE, first_byte, peer_hung_up
from .calls import CallRunner, Parked
from .loop_thread import LoopThread

if TYPE_CHECKING:
    pass

__all__ = ["LoopThread", "ThreadConnection"]

logger = logging.getLogger("unixrpc.server")
_RIGHTS = (socket.SOL_SOCKET, socket.SCM_RIGHTS)
_READ_ONCE = select.EPOLLIN | select.EPOLLONESHOT
#: a thread idle this long ends if another one waits; the last one then leaves the
#: connection to the engine's idle watch (an idle connection holds no thread)
_IDLE_SECONDS = 2.0


class ThreadConnection:
    """One accepted connection under the threads engine (see the module docstring)."""

    def __init__(
        self, config: ServerConfig, engine: Any, sock: socket.socket, connection_id: int, peer: Peer
    ) -> None:
        self._config = config
        self._engine = engine
        self._transport: UnixStreamClient[wire.RawFrame, wire.RawFrame] = UnixStreamClient(
            sock, config.protocol, max_recv_size=wire.SERVER_RECV_SIZE, keep_large_buffers=False
        )
        self.connection_id = connection_id
        self.peer = peer  # (its pidfd is closed with the connection)
        self.core = ServerConnection(
            config.rules, connection_id, self.peer.pid, self.peer.uid, peer=self.peer
        )
        self._lock = threading.Lock()  # guards the core and everything below
        self._cond = threading.Condition(self._lock)
        self._runq: deque[ServerCall] = deque()
        self._inbox: deque[wire.RawFrame] = deque()  # frames read, not yet taken in (no thread free)
        self._unscanned = 0  # frames at the end of the inbox not yet looked at for cancels and credit
        self._reading_over = False
        self._writing = False  # a thread is writing (and writes what is queued meanwhile)
        self._waiting = 0  # threads waiting in epoll for a request (or queued work)
        self._threads = 0
        self._budgeted = 0  # threads taken from the server's budget (beyond the first two)
        self._parked = 0  # streams waiting for credit with no thread (not counted as calls held)
        self._idle = False  # no thread: the engine watches the connection's epoll
        self._spawned = 0
        self._cond_waiters = 0  # threads waiting on the condition (credit, output drain)
        # Threads wait in one epoll: the socket, registered one-shot, wakes
        # exactly one of them per batch of data (re-armed once it is read);
        # an eventfd wakes them for calls queued beyond the first of a read,
        # and at the end.
        self._sock = sock
        self._sock_fd = sock.fileno()
        self._epoll = select.epoll()
        self._work_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self._work_signalled = False
        self._epoll.register(self._work_fd, select.EPOLLIN)
        self._epoll.register(self._sock_fd, _READ_ONCE)
        self._armed = True
        self._running = 0  # threads running a call
        self._max_running = config.max_threads_per_connection
        self._ancillary = SocketAncillary()
        self._bufsize = config.ancillary_bufsize
        self.finished = threading.Event()
        self._fds_closed = False  # epoll and eventfd closed (by _close, or by a shutdown that left a handler)
        self._runner = CallRunner(self)
        self._choosing = config.varlink_protocol is not None  # the wire waits for the first byte
        self._varlink = False  # one call at a time (the core's waiting_turn)

    def start(self) -> bool:
        """Start the connection's first thread (it waits for the first
        request); False if no thread could be started (then :meth:`discard`
        it and refuse the connection)."""
        with self._lock:
            return self._spawn() is True

    def discard(self) -> None:
        """Free what a connection that never started holds, except its
        socket (the engine refuses the connection on it)."""
        with self._lock:
            self.core.close()
        self.release_descriptors()
        self._engine.connection_done(self)
        self.finished.set()

    # -- the pool -----------------------------------------------------------------

    def _spawn(self) -> bool | None:  # lock held
        """Start a thread for the connection: False if the system would not
        (``RLIMIT_NPROC``, a cgroup's ``pids.max``, ``TasksMax=``): logged, at
        a bounded rate, and the daemon goes on. None if the connection has
        its own two threads already and the server's budget of further ones
        (``max_threads``) is spent: its calls wait for the threads it has."""
        budgeted = self._threads >= _OWN_THREADS
        if budgeted:
            if not self._engine.take_thread():
                thread_budget_spent(
                    "connection %d: the server runs max_threads=%d threads beyond its connections' "
                    "first two: its calls wait for its own threads",
                    self.connection_id,
                    self._config.max_threads,
                )
                return None
            self._budgeted += 1
        self._threads += 1
        self._spawned += 1
        name = f"unixrpc-conn{self.connection_id}-{self._spawned}"
        try:
            threading.Thread(target=self._thread_main, name=name, daemon=True).start()
        except RuntimeError as exc:  # "can't start new thread"
            self._threads -= 1
            self._give_back()
            thread_start_failed("connection %d: could not start a thread: %s", self.connection_id, exc)
            return False
        return True

    def _give_back(self) -> None:  # lock held
        """Return to the server's budget what the threads now running no longer use."""
        if self._budgeted > max(self._threads - _OWN_THREADS, 0):
            self._budgeted -= 1
            self._engine.give_thread()

    def _reader_left(self) -> bool:  # lock held
        """Whether, if this thread takes a queued call, a thread still
        reads: one waits, or the reading is over, or one can be started."""
        return bool(self._waiting) or self._reading_over or self._spawn() is True

    def _signal_work(self) -> None:  # lock held
        if not self._work_signalled and not self._fds_closed:
            self._work_signalled = True
            os.eventfd_write(self._work_fd, 1)

    def _clear_work(self) -> None:  # lock held
        if self._work_signalled and not self._reading_over and not self._fds_closed:  # the end wakes all
            self._work_signalled = False
            with contextlib.suppress(BlockingIOError):
                os.eventfd_read(self._work_fd)

    def _arm(self) -> None:  # lock held
        """Let one waiting thread be woken when the socket has data, unless
        the connection must not be read now: its output waits for a peer
        that does not read, or the frames read and not yet taken (calls
        waiting for threads) reach ``_INBOX_BYTES``. Reading goes on while
        calls wait for a thread, so cancels and credit get through."""
        if (
            not self._armed
            and not self._reading_over
            and (not self._inbox or _bytes_of(self._inbox) < _INBOX_BYTES)
            and (not self._inbox or self.core.queued_fds() <= self._config.rules.max_fds)
            and not self._fds_closed
            and self.core.wants_input()
            and not (self._inbox and self._varlink and self.core.waiting_turn())  # one waits its turn
        ):
            self._armed = True
            try:  # (not contextlib.suppress: this runs once a call)  # noqa: SIM105
                self._epoll.modify(self._sock_fd, _READ_ONCE)
            except OSError:
                pass

    def _thread_main(self) -> None:
        lock, sock_fd, epoll = self._lock, self._sock_fd, self._epoll
        call: ServerCall | None = None
        idle = False  # this thread left the connection to the engine's idle watch
        turn = False  # varlink: messages that waited their turn were taken in (refusals to write)
        try:
            while True:
                with lock:
                    if call is not None:
                        self._running -= 1
                        call = None
                        if self._varlink:  # the turn of the messages held back came
                            if self._inbox and self._take_in():
                                self._end_reading()
                            self._arm()
                            turn = self.core.has_output()  # (refusals of what was taken in)
                    runq = self._runq
                    if runq and self._running < self._max_running and self._reader_left():
                        call = runq.popleft()
                        self._running += 1
                        if not runq:
                            self._clear_work()
                        if self._inbox and self._take_in():
                            self._end_reading()
                        if not self._armed:
                            self._arm()
                        if call.engine is None:
                            call.engine = True  # running: a cancel answers it at once
                    elif self._reading_over:
                        return
                    else:
                        self._clear_work()  # (queued calls left wait for a thread that ends one)
                        spare = self._waiting > 0  # another thread waits: this one may retire
                        self._waiting += 1
                        deadline = self._read_deadline()
                if turn:
                    turn = False
                    self._flush()
                if call is None:
                    timeout = _IDLE_SECONDS
                    if deadline is not None:
                        timeout = min(timeout, max(deadline - time.monotonic(), 0.0))
                    try:
                        events = epoll.poll(timeout)
                    except ValueError:  # closed by a shutdown that left a handler behind: the end
                        with lock:
                            self._waiting -= 1
                        return
                    except BaseException:
                        with lock:
                            self._waiting -= 1
                        raise
                    if not events and deadline is not None and time.monotonic() >= deadline:
                        with lock:
                            self._waiting -= 1
                            self._time_out()
                        self._flush()
                        continue
                    if events and any(fd == sock_fd for fd, _ in events):
                        call = self._read()  # counts this thread out of the waiting ones
                        if call is None:
                            continue
                    else:
                        with lock:
                            self._waiting -= 1
                            if not events and self._waiting and not self._runq:
                                return  # idle for a while, and not the last one waiting
                            if not events and not spare and self._go_idle():
                                idle = True
                        if idle:  # the connection holds no thread while it is idle
                            self._engine.idle(self)
                            return
                        continue
                self._runner.run(call)
        finally:
            if call is not None:
                with lock:
                    self._running -= 1
            if not idle:
                self._thread_done()

    def _go_idle(self) -> bool:  # lock held
        """The last thread of a connection with nothing to do (no call, no
        output, no frame begun, nothing held back) leaves it to the engine,
        which watches its epoll with the other idle connections and starts a
        thread for it when it has something (:meth:`wake`)."""
        if (
            self._threads == 1
            and not self._waiting
            and not self._runq
            and not self._inbox
            and not len(self.core)
            and not self._writing
            and not self.core.has_output()
            and self._armed
            and not self._reading_over
            and not self._fds_closed
            and self._transport.buffered_size() == 0
            and self._read_deadline() is None
        ):
            self._threads = 0
            self._idle = True
            return True
        return False

    def idle_fd(self) -> int:
        """What the engine polls for an idle connection: its epoll (readable
        when the socket or the work signal is)."""
        return self._epoll.fileno()

    def wake(self) -> None:
        """The engine saw the idle connection's epoll readable (or shuts
        down): start a thread for it; if the system will not, close it."""
        with self._lock:
            self._idle = False
            started = self._spawn() is True
        if not started:
            self._close()

    def _thread_done(self) -> None:
        with self._cond:
            self._threads -= 1
            self._give_back()
            last = self._threads == 0
            self._cond.notify_all()
        if last:
            self._close()

    def _read(self) -> ServerCall | None:
        """Read what the socket has (this thread was woken for it), take it
        in, and re-arm the socket: the call this thread is to run, if any."""
        core, transport, ancillary = self.core, self._transport, self._ancillary
        if self._choosing and not self._choose_wire():
            with self._lock:  # nothing came yet: wait again
                self._waiting -= 1
                self._armed = False
                self._arm()
            return None
        over = False
        failed: BaseException | None = None  # the read failed: what it means is the core's call
        frames: list[wire.RawFrame] = []
        try:
            frames = transport.recv_packets_nowait(ancillary, self._bufsize)
            if frames and transport.buffered_size() >= wire.HEADER_SIZE:
                frames += transport.buffered_packets()  # a bad frame behind them: raised now
        except (StreamProtocolParseError, AncillaryDataTruncatedError) as exc:
            failed = exc
        except (ConnectionBrokenError, ClientClosedError, OSError, TimeoutError) as exc:
            failed = exc
        mine: ServerCall | None = None
        now = time.monotonic()
        partial = transport.buffered_size() > 0
        excess = max(transport.receive_buffer_size() - wire.SERVER_RECV_SIZE, 0)
        with self._lock:
            self._waiting -= 1
            self._armed = False
            if ancillary:
                core.receive_fds(ancillary.iter_fds())
                ancillary.clear()
            if self._varlink:
                frames = core.frames_read(frames, partial)  # which frame the read's descriptors ride on
            if core.received(now, partial=partial, receive_buffer=excess) is not None and failed is None:
                over = True  # over the server's memory budget
            if core.closing is not None and failed is None:
                over = True  # (the descriptors that came took the server over its fd budget)
            self._inbox.extend(frames)
            self._unscanned += len(frames)
            if failed is not None:  # what came before a bad frame is served first
                self._take_in(everything=True)
                core.read_failed(failed)
                over = True
            if over or self._take_in():
                self._end_reading()
            else:
                runq = self._runq
                if runq and self._running < self._max_running:
                    mine = runq.popleft()  # run here: no hand-off
                    self._running += 1
                    if mine.engine is None:
                        mine.engine = True  # running: a cancel answers it at once
                got = self._dispatch(1 if mine is not None else 0)
                if got is not True and mine is not None and not self._waiting:
                    # no thread would read while this one runs the call
                    self._running -= 1
                    if got is None:  # the budget is spent: it waits for a thread that ends a call
                        runq.appendleft(mine)
                        self._clear_work()
                    else:  # the system refused a thread: refused
                        core.finish(mine, raised=_no_thread())
                    mine = None
                self._arm()  # if it may be read now; else the writer or a thread taking a call does
        if core.has_output():
            self._flush()
        return mine

    def _choose_wire(self) -> bool:
        """Let the core choose the wire from the first byte (left unread):
        False if none came yet."""
        first = first_byte(self._sock)
        if first is None:
            return False
        with self._lock:
            self._choosing = False
            if first != NO_BYTE and self.core.choose_wire(first) == VARLINK:
                assert self._config.varlink_protocol is not None
                self._transport.switch_protocol(self._config.varlink_protocol)
                self._varlink = True
        return True

    def _read_deadline(self) -> float | None:  # lock held
        """When a thread waiting for the socket must look at the core's
        timers (frame and idle timeouts are the core's rules)."""
        if self._reading_over or not self._armed:
            return None
        return self.core.next_deadline(time.monotonic())

    def _time_out(self) -> None:  # lock held
        """A deadline passed: the core decides, with the state as it is now
        (another thread may have read a request meanwhile)."""
        if not self._reading_over and self.core.on_timer(time.monotonic()) is not None:
            self._end_reading()

    def _take_in(self, *, everything: bool = False) -> bool:  # lock held
        """Hand the frames read to the core, in order, while the peer reads
        what is queued for it (else the writer takes the rest in later) and
        the core holds fewer calls than the threads plus ``_QUEUED_CALLS``
        (streams parked waiting for credit not counted):
        the rest wait in the inbox (turned into calls now, they would only
        be refused), except cancels and credit for calls in flight, which
        are taken at once. Or all of them (*everything*: no more will be read). True if
        the reading is over (the stream cannot be trusted any more)."""
        core, inbox = self.core, self._inbox
        most = self._config.rules.max_calls_per_connection
        hold = self._max_running + _QUEUED_CALLS  # calls the core holds, running or waiting for a thread
        taking = everything or most <= hold  # (a small max_calls_per_connection: refused beyond it)
        turn = _TURN
        while (
            inbox
            and (everything or (core.wants_input() and (taking or len(core) - self._parked < hold)))
            and not (self._varlink and core.waiting_turn())  # one call at a time
        ):
            turn -= 1
            if not turn:  # a flood of frames must not hold the GIL from other connections' threads
                turn = _TURN
                time.sleep(0)
            event = core.receive_frame(inbox.popleft())
            if type(event) is ServerCall:
                self._runq.append(event)
            elif event is not None and self._on_event(event):
                return True
        fresh = min(self._unscanned, len(inbox))
        self._unscanned = 0
        if fresh and not everything:  # calls wait for threads: cancels and credit get through
            older = len(inbox) - fresh  # (frames of earlier reads were looked at already)
            kept: deque[wire.RawFrame] = deque(itertools.islice(inbox, older))
            for frame in itertools.islice(inbox, older, None):
                turn -= 1
                if not turn:
                    turn = _TURN
                    time.sleep(0)
                control = core.receive_control(frame)
                if control is False:
                    kept.append(frame)
                    continue
                if self._on_event(control):
                    return True
            self._inbox = kept
        if everything:
            return False
        return not self._inbox and core.stray_fds(self._transport.buffered_size() > 0) is not None

    def _on_event(self, event: object) -> bool:  # lock held
        """Act on what a frame caused: True if the reading is over."""
        if event is None:
            return False
        if type(event) is ServerCall:
            self._runq.append(event)
        elif type(event) is Cancel:
            self._cancel(event.call)
        elif type(event) is Grant:
            self._resume(event.call)
            self._notify_all()
        else:
            assert type(event) is Close
            self._inbox.clear()
            return True
        return False

    def _dispatch(self, taking: int) -> bool | None:  # lock held
        """Get threads for the calls waiting in the queue (waiting ones
        first, then new ones), leaving one waiting for the next request when
        this thread, or one of them, is about to run a call (*taking*).

        False if the system would not start a thread: then the queued calls
        no thread will take are refused ``ServerBusyError``, and the caller
        refuses the call it was about to run unless a thread is left to read.
        None if the server's thread budget is spent: the queued calls wait
        for the connection's threads, and the caller puts the call it was
        about to run back in the queue unless a thread is left to read.
        """
        runq = self._runq
        extra = min(len(runq), self._max_running - self._running)
        if extra and self._waiting:
            self._signal_work()  # each woken thread takes one, and wakes the next
        elif runq and not extra:
            self._clear_work()  # every thread is busy: the first one free takes it
        for started in range(extra + taking - self._waiting):
            spawned = self._spawn()
            if spawned is None:
                return None
            if not spawned:
                free = self._waiting + started  # threads that will take a queued call
                while len(runq) > free:
                    self.core.finish(runq.pop(), raised=_no_thread())
                return False
        return True

    def _end_reading(self) -> None:  # lock held
        """The reading is over: if the peer is gone, its calls are cancelled;
        if it only shut down its write side, they finish and are answered,
        unless it hangs up meanwhile (a watcher thread looks)."""
        self._reading_over = True
        self._signal_work()  # waiting threads end
        self._notify_all()
        if peer_hung_up(self._sock):
            for call in self.core.hang_up():
                self._cancel(call)
        elif len(self.core):
            self._threads += 1
            name = f"unixrpc-conn{self.connection_id}-hangup"
            try:
                threading.Thread(target=self._watch_hang_up, name=name, daemon=True).start()
            except (
                RuntimeError
            ) as exc:  # the calls finish; a hang-up meanwhile is noticed when they are written
                self._threads -= 1
                thread_start_failed("connection %d: could not start a thread: %s", self.connection_id, exc)

    def _watch_hang_up(self) -> None:
        """After the reading ended with calls in flight: cancel them if the
        peer closes the connection before they are answered."""
        try:
            while True:
                with self._lock:
                    if not len(self.core):
                        return
                if peer_hung_up(self._sock, wait=0.2):
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
        else:  # not started (None), running on its thread (True) or parked: answered now
            self.core.stop(call, running=future is not None)
            self._resume(call)  # a parked stream: its generator is closed on a thread
        self._notify_all()  # a stream waiting for the writer stops

    def park(self, call: ServerCall, parked: Parked) -> None:  # lock held
        """The stream *call* waits for credit with no thread: requests held
        back while the core held as many calls as threads can run may come
        in now (a parked stream is not counted)."""
        call.engine = parked
        self._parked += 1
        if self._inbox and not self._reading_over:
            if self._take_in():
                self._end_reading()
            else:
                self._dispatch(0)
                self._arm()

    def _resume(self, call: ServerCall) -> None:  # lock held
        """A stream parked waiting for credit goes on (credit came) or ends
        (cancelled): queued for a thread, once."""
        parked = call.engine
        if type(parked) is Parked and not parked.queued:
            parked.queued = True
            self._parked -= 1
            self._runq.append(call)
            self._dispatch(0)

    # -- writing --------------------------------------------------------------------

    def _flush(self) -> None:
        """Write what the core has queued, unless another thread is writing
        (it writes what was queued meanwhile before it stops)."""
        with self._lock:
            if self._writing or not self.core.has_output():
                return
            self._writing = True
            chunks = self.core.take_output()
        self._write(chunks)

    def _write(self, chunks: list[Chunk]) -> None:
        """Write *chunks* (this thread set ``_writing``), then what was
        queued meanwhile, until nothing is left."""
        core, lock, transport = self.core, self._lock, self._transport
        limit = self._config.rules.write_timeout  # (each write: then the peer is taken not to read)
        while True:
            done = 0
            try:
                for chunk in chunks:
                    if type(chunk) is bytes:
                        transport.send_data(chunk, timeout=limit)
                    else:
                        assert isinstance(chunk, FdFrame)
                        fds = array.array("i", chunk.fileno_list()).tobytes()
                        transport.send_data(chunk.data, [(*_RIGHTS, fds)], timeout=limit)
                    done += 1
            except TimeoutError:  # the peer does not read: it goes as if it hung up
                with lock:
                    core.write_timed_out()  # (before the shutdown: a reader would take it for the peer's)
                with contextlib.suppress(OSError):
                    self._sock.shutdown(socket.SHUT_RDWR)
            except (ConnectionError, OSError, ValueError) as exc:  # ValueError: a closed FileDescriptor
                logger.debug("connection %d: replies not sent: %s", self.connection_id, exc)
            except BaseException:
                with lock:
                    self._writing = False
                raise
            with lock:
                for index, chunk in enumerate(chunks):
                    core.written(chunk, ok=index < done)
                if not core.has_output() or core.output_failed:
                    self._writing = False
                    if core.closing is not None and not self._reading_over:
                        self._end_reading()  # the core closed it (its output went over the budget)
                    elif self._inbox and core.wants_input():  # frames held back while the peer did not read
                        if self._take_in():
                            self._end_reading()
                        else:
                            self._dispatch(0)
                    self._arm()
                    self._notify_all()
                    return
                chunks = core.take_output()

    def _notify_all(self) -> None:  # lock held
        if self._cond_waiters:
            self._cond.notify_all()

    def _wait(self) -> None:  # lock held
        self._cond_waiters += 1
        try:
            self._cond.wait()
        finally:
            self._cond_waiters -= 1

    # -- the server's view --------------------------------------------------------------

    def busy(self) -> bool:
        """Calls in flight, or replies not yet written: a graceful shutdown waits."""
        with self._lock:
            return self.core.busy() or self._writing

    def calls_in_flight(self) -> int:
        with self._lock:
            return len(self.core)

    def end_streams(self) -> None:
        """Shutdown began: end the streams now (they would never end)."""
        with self._lock:
            for call in self.core.end_streams():
                self._cancel(call)
        self._flush()

    def abort(self) -> None:
        """The grace period is over: answer what is left ``ShuttingDown``
        and tell the peer, as far as the socket takes it without waiting;
        then cut the connection (blocked reads and writes fail) and cancel
        the calls."""
        with self._lock:
            left = self.core.cut_off()
            chunks = [] if self._writing else self.core.take_output()
        with contextlib.suppress(OSError):
            for chunk in chunks:
                if type(chunk) is bytes:
                    self._sock.send(chunk, socket.MSG_DONTWAIT)
        self.peer._close()  # its pidfd, before the socket closes
        self._transport.close()  # no reply gets out any more
        with self._cond:
            for chunk in chunks:
                self.core.written(chunk, ok=False)
            for call in left + self.core.hang_up():
                self._cancel(call)
            self._reading_over = True
            self._signal_work()
            self._cond.notify_all()

    def _close(self) -> None:
        self.peer._close()  # its pidfd, before the socket closes
        self._transport.close()
        with self._lock:
            for call in self._runq:  # never got a thread: nothing uses their descriptors
                self._runner.close_parked(call)
                self.core.stop(call)
            self._runq.clear()
            for call in self.core.calls():  # (a stream parked when the connection ended)
                if type(call.engine) is Parked:
                    self._runner.close_parked(call)
                    self.core.stop(call)
            self.core.close()
        self.release_descriptors()
        self._engine.connection_done(self)
        self.finished.set()

    def release_descriptors(self) -> None:
        """Close the connection's epoll and eventfd (once): when its last
        thread ends, or at shutdown when a handler would not return (its
        thread, when it does, finds them closed and ends)."""
        with self._lock:
            if self._fds_closed:
                return
            self._fds_closed = True
            self._epoll.close()
            os.close(self._work_fd)

    def describe_calls(self) -> list[str]:
        """The calls in flight, for the log (the core's wording)."""
        with self._lock:
            return self.core.describe_calls()


#: the threads a connection always may have (one reads while one runs a call); more come
#: from the server's budget (``max_threads``)
_OWN_THREADS = 2
#: frames taken in between two offers of the GIL to other threads (a 64 KiB read holds about
#: 2,400 cancels: 3-5 ms of Python without one, where CPython switches every 5 ms)
_TURN = 64
#: calls a connection's core holds waiting for a thread, beyond those running
_QUEUED_CALLS = 16
#: the bytes of frames read and not yet taken in over which a connection is not read further
_INBOX_BYTES = 256 * 1024


def _bytes_of(frames: deque[wire.RawFrame]) -> int:
    return sum(len(frame.body) for frame in frames)


#: "could not start a thread", at most 10 lines per 10 s
thread_start_failed = RateLimitedLog(logger, logging.ERROR, "failed thread starts")
#: "the thread budget is spent", at most 10 lines per 10 s
thread_budget_spent = RateLimitedLog(logger, logging.WARNING, "connections short of threads")


def _no_thread() -> ServerBusyError:
    return ServerBusyError("the server could not start a thread to run this call; try again later")
