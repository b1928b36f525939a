"""How threads share one connection of the blocking client: the waiting and
the locking, and nothing else (the protocol is the core's: ``ClientCore``).

Any number of calls may be in flight; a caller that needs a message takes
the reader role, reads frames and hands them to the core, waking the callers
they belong to; when its own message is in, it hands the role to a waiting
caller. One lock guards the core; no reader thread. A thread that runs an
event loop is refused (:func:`refuse_event_loop`).
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from .._core import wire
from .._core.client import CallSlot, ClientCore, Message, Timeout
from .._core.codec import encode_params
from ..ancillary import SocketAncillary
from ..exceptions import ClientClosedError, ConnectionBrokenError, RPCError, StreamProtocolParseError
from ..fds import FdContext
from ..methods import MethodSpec
from ..transport.sync_client import UnixStreamClient
from ._fds import outgoing_fds

__all__ = ["SyncConnection", "refuse_event_loop"]


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
        # trio names itself in sniffio's thread-local while it runs (cheaper
        # than trio.lowlevel.in_trio_run(), which raises inside when it is not)
        sniffio = sys.modules.get("sniffio")
        if sniffio is not None and sniffio.thread_local.name == "trio":
            running = "trio"
    if running is not None:
        raise RuntimeError(
            f"Client.{api}() blocks, and this thread is running an event loop ({running}): it would stop "
            "the loop, for ever if the server runs on it. Use AsyncClient in async code, or call Client "
            "from a worker thread (anyio.to_thread.run_sync, asyncio.to_thread, trio.to_thread.run_sync)"
        )


class SyncConnection:
    """One connection of a :class:`~unixrpc.Client`: *raw* moves the bytes,
    *core* decides; this waits and locks."""

    def __init__(
        self, raw: UnixStreamClient[wire.RawFrame, wire.RawFrame], core: ClientCore, ancillary_bufsize: int
    ) -> None:
        self.raw = raw
        self.core = core
        self._ancillary_bufsize = ancillary_bufsize
        self._lock = threading.Lock()  # guards the core
        self._ancillary = SocketAncillary()  # used by the reader only
        self._reader_lock = threading.Lock()
        self._cond = threading.Condition(threading.Lock())
        self._waiting = 0
        #: which connection of a reconnecting client this is (1: the first)
        self.generation = 1

    def take(self, slot: CallSlot) -> tuple[Message, bytes | None]:
        """The next message of *slot* (it has one), and the frame to send first."""
        with self._lock:
            return self.core.take(slot)

    def start(self, spec: MethodSpec, method: Any, timeout: Timeout) -> CallSlot:
        """Open a call and write its request, within its deadline."""
        params, fd_context = encode_params(method, spec)
        try:
            return self.start_encoded(spec, params, fd_context, timeout)
        finally:
            if fd_context is not None:
                fd_context.sent()

    def start_encoded(
        self, spec: MethodSpec, params: bytes, fd_context: FdContext | None, timeout: Timeout
    ) -> CallSlot:
        """Open a call of encoded *params* and write its request, within its
        deadline. The descriptors of *fd_context* stay open (the caller
        releases them: a reconnecting client may send them again)."""
        cmsgs, nfds = outgoing_fds(fd_context)
        with self._lock:
            slot, data = self.core.request(spec, params, nfds, timeout)
        try:
            self.send(data, cmsgs, slot.deadline, slot)
        except BaseException:
            with self._lock:
                self.core.give_up(slot, request_sent=False)
            raise
        return slot

    def send(
        self,
        data: bytes,
        cmsgs: list[tuple[int, int, bytes]] | None,
        deadline: float | None,
        slot: CallSlot | None = None,
        what: str = "request",
        lost: Message | None = None,
    ) -> None:
        """Write a frame (*slot*'s *what*) within *deadline*; the core says
        what a failure means (see ``ClientConnection.send_failed``).

        Raises: as the transport's ``send_data``, or what the core chose
            instead (the server's parting error, a timeout naming the call).
        """
        raw = self.raw
        try:
            if deadline is None:
                raw.send_data(data, cmsgs)
            else:
                raw.send_data(data, cmsgs, timeout=deadline - time.monotonic())
        except BaseException as exc:
            core = self.core
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
        core = self.core
        try:
            while core.broken is None:
                try:
                    frame = self.raw.recv_packet(
                        timeout=0, ancillary_data=self._ancillary, ancillary_bufsize=self._ancillary_bufsize
                    )
                except (TimeoutError, ConnectionError, StreamProtocolParseError):
                    return
                finally:
                    self._take_fds()
                with self._lock:
                    core.receive_frames((frame,), self.raw.buffered_size())
            self.raw.close()
        finally:
            self._reader_lock.release()
            if self._waiting:  # a caller may be waiting for the reader role, or was filed a message
                with self._cond:
                    self._cond.notify_all()

    def give_up(self, slot: CallSlot) -> None:
        """The caller no longer wants *slot*: drop what came, cancel the rest."""
        with self._lock:
            cancel = self.core.give_up(slot)
        if cancel is not None:
            self.send_cancel(cancel)

    def send_cancel(self, cancel: bytes) -> None:
        """Tell the server, within the core's limit (best effort)."""
        with contextlib.suppress(OSError, RPCError):
            self.send(cancel, None, self.core.cancel_deadline())

    def wait(self, slot: CallSlot) -> None:
        """Wait until *slot* has a message, reading for everyone if no one
        else is. Timed out or interrupted, the call is given up."""
        core = self.core
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
            self.give_up(slot)
            if slot.timeout is None:
                raise
            raise core.timed_out(slot) from None
        except BaseException:
            self.give_up(slot)
            raise

    def _wait_for_reader(self, slot: CallSlot, deadline: float | None) -> None:
        core = self.core
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
        raw, core, lock = self.raw, self.core, self._lock
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
                self.core.receive_fds(ancillary.iter_fds())
            ancillary.clear()

    def _break(self, how: Callable[[BaseException], object], error: BaseException) -> None:
        """End the connection through the core's *how* (fail, read_failed)."""
        with self._lock:
            how(error)
        self._shut()

    def _shut(self) -> None:
        """The core is broken: close the socket, wake every waiting caller."""
        self.raw.close()
        with self._cond:
            self._cond.notify_all()

    def retire(self) -> None:
        """A reconnecting client moved to a new connection: close this one as
        lost (a call that raced to it sees it broken, and goes to the new one)."""
        self._break(self.core.fail, ConnectionBrokenError("the client moved to a new connection"))

    def close(self) -> None:
        """Close the connection: calls in flight in other threads raise
        ClientClosedError. Idempotent."""
        self._break(self.core.fail, ClientClosedError("client is closed"))


def _others(woken: Iterable[CallSlot], slot: CallSlot) -> bool:
    return any(target is not slot for target in woken)
