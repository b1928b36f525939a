"""How a blocking :class:`~unixrpc.Client` with ``reconnect=`` on lives
across connections: it waits for a connection, takes the reconnect role,
swaps the connection, and loops a call or a stream over connections. Waiting
and locking only: what to do after a loss is the session core's
(``_core/client/session.py``), everything on one connection ``_sync_io.py``'s,
a resuming stream ``_sync_resume.py``'s.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from .._core import wire
from .._core.client import DEFAULT, Timeout
from .._core.client.errors import timeout_error
from .._core.client.session import (
    ConnectionState,
    ReconnectPolicy,
    Session,
    connection_lost,
    ends_stream_for_restart,
    refused_before_running,
)
from .._core.codec import encode_params, error_from_envelope, final_value
from ..exceptions import ClientClosedError, RPCError
from ..fds import FdContext
from ..methods import MethodSpec
from ._fds import outgoing_fds
from ._sync_io import SyncConnection

__all__ = ["NoConnection", "SyncSession"]

_log = logging.getLogger("unixrpc.client")
_ITEM, _ERROR = wire.ITEM, wire.ERROR
_CONNECTED, _RECONNECTING = ConnectionState.CONNECTED, ConnectionState.RECONNECTING
_DISCONNECTED, _CLOSED = ConnectionState.DISCONNECTED, ConnectionState.CLOSED

ItemT = TypeVar("ItemT")


class NoConnection(Exception):
    """No connection came within the caller's deadline, or the episode gave up."""


class SyncSession:
    """The connections of one reconnecting Client, one after the other.

    Args:
        first: the first connection (made by the client's constructor).
        connect: makes the next connection (raises what connecting raises).
        policy: the reconnect policy.
        timeout: the client's default call timeout.
        on_connect: called with no argument after each reconnection, before
            calls waiting for it go on (its own calls go through).
    """

    def __init__(
        self,
        first: SyncConnection,
        connect: Callable[[], SyncConnection],
        policy: ReconnectPolicy,
        timeout: float | None,
        on_connect: Callable[[], object] | None,
    ) -> None:
        self.session = Session(policy, time.monotonic)
        self.current = first
        self._connect = connect
        self._timeout = timeout
        self._on_connect = on_connect
        self._lock = threading.Lock()  # guards the session and the current connection
        self._reconnecting = threading.Lock()  # held by the thread that reconnects
        self._retired: list[SyncConnection] = []  # lost, with calls still in flight on them
        self._hook_thread: int | None = None

    # -- connections -----------------------------------------------------------------

    def connection(self, after: int, deadline: float | None) -> SyncConnection:
        """The current connection, if it is not number *after* (whose call
        failed there); else reconnect, or wait for the thread that does,
        until *deadline*.

        Raises: ClientClosedError; NoConnection."""
        session = self.session
        while True:
            conn = self.current
            state = session.state
            if state is _CONNECTED and conn.generation != after and conn.core.broken is None:
                return conn
            if state is _CONNECTED:  # broken, or the caller's attempt failed on it: lost
                self.lost(conn)
                continue
            if state is _CLOSED:
                raise ClientClosedError("client is closed")
            if state is _DISCONNECTED:
                raise NoConnection
            if self._hook_thread == threading.get_ident() and conn.generation != after:
                return conn  # the on_connect hook's own calls
            timeout = -1.0 if deadline is None else max(0.0, deadline - time.monotonic())
            if not self._reconnecting.acquire(timeout=timeout):
                raise NoConnection
            try:
                if session.state is _RECONNECTING:
                    self._reconnect(deadline)
                    if session.state is _RECONNECTING:
                        raise NoConnection  # our deadline passed; another caller goes on
            finally:
                self._reconnecting.release()

    def lost(self, conn: SyncConnection) -> None:
        """*conn* broke, or the daemon is going away behind it."""
        with self._lock:
            self.session.lost(conn.generation)

    def arrive(self) -> None:
        """A new call: if reconnecting gave up, try again."""
        if self.session.state is _DISCONNECTED:
            with self._lock:
                self.session.call_arrives()

    def _reconnect(self, deadline: float | None) -> None:
        """Connect with backoff until connected, the episode gives up, or
        *deadline* (then the session is still reconnecting)."""
        session = self.session
        while True:
            with self._lock:
                at = session.next_attempt()
            if at is None:
                return
            now = time.monotonic()
            if at > now:
                if deadline is not None and at > deadline:
                    time.sleep(max(0.0, deadline - now))
                    return
                time.sleep(at - now)
            try:
                conn = self._connect()
            except Exception as exc:
                with self._lock:
                    session.connect_failed(exc)
                continue
            self._install(conn)
            return

    def _install(self, conn: SyncConnection) -> None:
        with self._lock:
            if self.session.state is _CLOSED:
                conn.close()
                return
            conn.generation = self.session.generation + 1
            old, self.current = self.current, conn
            self._retired.append(old)
            idle = [c for c in self._retired if c.core.broken is not None or not len(c.core)]
            self._retired = [c for c in self._retired if c not in idle]
        for done in idle:
            done.retire()
        if self._on_connect is not None:
            self._hook_thread = threading.get_ident()
            try:
                self._on_connect()
            except Exception:
                _log.exception("the on_connect hook of a reconnecting client raised")
            finally:
                self._hook_thread = None
        with self._lock:
            if self.session.state is _RECONNECTING:
                self.session.connected()

    def close(self) -> None:
        with self._lock:
            self.session.close()
            conns = [self.current, *self._retired]
            self._retired = []
        for conn in conns:
            conn.close()

    # -- calls -----------------------------------------------------------------------

    def call(self, spec: MethodSpec, method: Any, timeout: Timeout) -> Any:
        """A unary call, sent again on the next connection when the session
        says so (see ``Session.after_loss``); its descriptors stay open
        until it is answered or finally fails."""
        params, fd_context = encode_params(method, spec)
        try:
            return self._call(spec, params, fd_context, timeout)
        finally:
            if fd_context is not None:
                fd_context.sent()

    def _call(self, spec: MethodSpec, params: bytes, fd_context: FdContext | None, timeout: Timeout) -> Any:
        session = self.session
        self.arrive()
        seconds = self._timeout if timeout is DEFAULT else timeout
        deadline = None if seconds is None else time.monotonic() + seconds
        after = retries = 0
        request_sent = False
        ran: bool | None = False
        while True:
            try:
                conn = self.connection(after, deadline)
            except NoConnection:
                lost = session.no_connection(spec, request_sent=request_sent, ran=ran)
                raise lost from lost.__cause__
            attempt_timeout: Timeout = timeout
            if after and deadline is not None:  # sent again: what is left of the call's time
                attempt_timeout = deadline - time.monotonic()
                if attempt_timeout <= 0:
                    raise timeout_error(spec, seconds or 0.0)
            sent = False
            try:
                slot = conn.start_encoded(spec, params, fd_context, attempt_timeout)
                sent = True
                conn.wait(slot)
            except (ConnectionError, RPCError) as exc:
                if not connection_lost(conn.core.broken):
                    raise
                cause: BaseException = exc
                this_ran: bool | None = False if not sent else None
            else:
                (kind, envelope, fds), cancel = conn.take(slot)
                if cancel is not None:
                    conn.send_cancel(cancel)
                if kind is not _ERROR or not ends_stream_for_restart(envelope):
                    return final_value(spec, kind, envelope, fds)
                # the daemon is shutting down: this connection is retired
                this_ran = False if refused_before_running(envelope) else None
                cause = error_from_envelope(envelope, fds)
            self.lost(conn)
            after = conn.generation
            request_sent = request_sent or sent
            ran = None if this_ran is None or ran is None else False
            error = session.after_loss(spec, request_sent=request_sent, ran=ran, retries=retries, cause=cause)
            if error is not None:
                raise error
            retries += 1

    def notify(self, spec: MethodSpec, method: Any) -> None:
        """A notification, sent on the next connection if this one is lost
        before it is written."""
        params, fd_context = encode_params(method, spec)
        try:
            self.arrive()
            after = 0
            deadline = None if self._timeout is None else time.monotonic() + self._timeout
            while True:
                try:
                    conn = self.connection(after, deadline)
                except NoConnection:
                    lost = self.session.no_connection(spec, request_sent=False, ran=False)
                    raise lost from lost.__cause__
                cmsgs, nfds = outgoing_fds(fd_context)
                try:
                    conn.send(conn.core.notification(spec, params, nfds), cmsgs, None)
                    return
                except (ConnectionError, RPCError):
                    if not connection_lost(conn.core.broken) or conn.raw.is_send_broken():
                        raise
                    after = conn.generation
        finally:
            if fd_context is not None:
                fd_context.sent()
