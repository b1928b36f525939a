"""How an :class:`~unixrpc.AsyncClient` with ``reconnect=`` on lives across
connections: the twin of ``_sync_session.py`` with anyio's waiting (a lock
for the reconnect role, cancel scopes for deadlines). What to do after a
loss is the session core's (``_core/client/session.py``); everything on one
connection ``_async_io.py``'s. Each connection's writer tasks run in one
task group of the client, which outlives them.
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Callable
from typing import Any, TypeVar

import anyio
from anyio.abc import TaskGroup

from .._core import wire
from .._core.client import DEFAULT, CallSlot, Timeout
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
from ._async_io import AsyncConnection
from ._fds import outgoing_fds

__all__ = ["AsyncSession", "NoConnection"]

_log = logging.getLogger("unixrpc.client")
_ITEM, _ERROR = wire.ITEM, wire.ERROR
_CONNECTED, _RECONNECTING = ConnectionState.CONNECTED, ConnectionState.RECONNECTING
_DISCONNECTED, _CLOSED = ConnectionState.DISCONNECTED, ConnectionState.CLOSED

ItemT = TypeVar("ItemT")


class NoConnection(Exception):
    """No connection came within the caller's deadline, or the episode gave up."""


def _task_id() -> int:
    return anyio.get_current_task().id


class AsyncSession:
    """The connections of one reconnecting AsyncClient, one after the other
    (see ``SyncSession``, its twin)."""

    def __init__(
        self,
        first: AsyncConnection,
        connect: Callable[[], AsyncConnection],
        policy: ReconnectPolicy,
        timeout: float | None,
        on_connect: Callable[[], object] | None,
    ) -> None:
        self.session = Session(policy, anyio.current_time)
        self.current = first
        self._connect = connect
        self._timeout = timeout
        self._on_connect = on_connect
        self._reconnecting: anyio.Lock | None = None
        self._retired: list[AsyncConnection] = []
        self._hook_task: int | None = None
        self._task_group: TaskGroup | None = None

    async def enter(self) -> None:
        """Connect the first connection; start the client's task group."""
        if self._task_group is not None:
            raise RuntimeError("this AsyncClient was already entered")
        task_group = anyio.create_task_group()
        await task_group.__aenter__()
        self._task_group = task_group
        self._reconnecting = anyio.Lock()
        try:
            await self.current.enter_in(task_group)
        except BaseException as exc:
            self._task_group = None
            task_group.cancel_scope.cancel()
            await task_group.__aexit__(type(exc), exc, exc.__traceback__)
            raise

    async def aclose(self) -> None:
        self.session.close()
        conns = [self.current, *self._retired]
        self._retired = []
        for conn in conns:
            await conn.aclose()
        task_group, self._task_group = self._task_group, None
        if task_group is not None:
            task_group.cancel_scope.cancel()
            await task_group.__aexit__(None, None, None)

    # -- connections -----------------------------------------------------------------

    async def connection(self, after: int, deadline: float | None) -> AsyncConnection:
        """The current connection, if it is not number *after*; else
        reconnect, or wait for the task that does, until *deadline*.

        Raises: ClientClosedError; NoConnection; RuntimeError (not entered)."""
        session = self.session
        while True:
            conn = self.current
            state = session.state
            if state is _CONNECTED and conn.generation != after and conn.core.broken is None:
                return conn
            if state is _CONNECTED:
                session.lost(conn.generation)
                continue
            if state is _CLOSED:
                raise ClientClosedError("client is closed")
            if state is _DISCONNECTED:
                raise NoConnection
            if self._hook_task is not None and self._hook_task == _task_id() and conn.generation != after:
                return conn  # the on_connect hook's own calls
            lock = self._reconnecting
            if lock is None:
                raise RuntimeError("use the client as `async with AsyncClient(...) as client:`")
            with anyio.CancelScope(deadline=math.inf if deadline is None else deadline) as scope:
                await lock.acquire()
            if scope.cancelled_caught:
                raise NoConnection  # the deadline came first
            try:
                if session.state is _RECONNECTING:
                    await self._reconnect(deadline)
                    if session.state is _RECONNECTING:
                        raise NoConnection
            finally:
                lock.release()

    def lost(self, conn: AsyncConnection) -> None:
        self.session.lost(conn.generation)

    def arrive(self) -> None:
        if self.session.state is _DISCONNECTED:
            self.session.call_arrives()

    async def _reconnect(self, deadline: float | None) -> None:
        session = self.session
        while True:
            at = session.next_attempt()
            if at is None:
                return
            now = anyio.current_time()
            if at > now:
                if deadline is not None and at > deadline:
                    await anyio.sleep(max(0.0, deadline - now))
                    return
                await anyio.sleep(at - now)
            conn = self._connect()
            assert self._task_group is not None
            try:
                await conn.enter_in(self._task_group)
            except Exception as exc:
                session.connect_failed(exc)
                continue
            await self._install(conn)
            return

    async def _install(self, conn: AsyncConnection) -> None:
        if self.session.state is _CLOSED:
            await conn.aclose()
            return
        conn.generation = self.session.generation + 1
        old, self.current = self.current, conn
        self._retired.append(old)
        idle = [c for c in self._retired if c.core.broken is not None or not len(c.core)]
        self._retired = [c for c in self._retired if c not in idle]
        with anyio.CancelScope(shield=True):
            for done in idle:
                await done.retire()
        if self._on_connect is not None:
            self._hook_task = _task_id()
            try:
                result = self._on_connect()
                if inspect.isawaitable(result):
                    await result
            except Exception:
                _log.exception("the on_connect hook of a reconnecting client raised")
            finally:
                self._hook_task = None
        if self.session.state is _RECONNECTING:
            self.session.connected()

    # -- calls -----------------------------------------------------------------------

    async def call(self, spec: MethodSpec, method: Any, timeout: Timeout) -> Any:
        """A unary call, sent again on the next connection when the session
        says so; its descriptors stay open until it is answered or finally fails."""
        params, fd_context = encode_params(method, spec)
        try:
            return await self._call(spec, params, fd_context, timeout)
        finally:
            if fd_context is not None:
                fd_context.sent()

    async def _call(
        self, spec: MethodSpec, params: bytes, fd_context: FdContext | None, timeout: Timeout
    ) -> Any:
        session = self.session
        self.arrive()
        seconds = self._timeout if timeout is DEFAULT else timeout
        deadline = None if seconds is None else anyio.current_time() + seconds
        after = retries = 0
        request_sent = False
        ran: bool | None = False
        while True:
            try:
                conn = await self.connection(after, deadline)
            except NoConnection:
                lost = session.no_connection(spec, request_sent=request_sent, ran=ran)
                raise lost from lost.__cause__
            attempt_timeout: Timeout = timeout
            if after and deadline is not None:
                attempt_timeout = deadline - anyio.current_time()
                if attempt_timeout <= 0:
                    raise timeout_error(spec, seconds or 0.0)
            slot: CallSlot | None = None
            try:
                slot = await conn.writer.start_call(
                    spec, params, fd_context, attempt_timeout, release_fds=False
                )
                if not slot.messages:
                    await conn.wait(slot)
            except (ConnectionError, RPCError) as exc:
                if not connection_lost(conn.core.broken):
                    raise
                cause: BaseException = exc
                sent = slot is not None and conn.writer.was_written(slot)
                this_ran: bool | None = None if sent else False
            else:
                (kind, envelope, fds), cancel = conn.core.take(slot)
                if cancel is not None:
                    conn.writer.cancel_later(cancel)
                if kind is not _ERROR or not ends_stream_for_restart(envelope):
                    return final_value(spec, kind, envelope, fds)
                sent = True
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

    async def notify(self, spec: MethodSpec, method: Any) -> None:
        params, fd_context = encode_params(method, spec)
        try:
            self.arrive()
            after = 0
            deadline = None if self._timeout is None else anyio.current_time() + self._timeout
            while True:
                try:
                    conn = await self.connection(after, deadline)
                except NoConnection:
                    lost = self.session.no_connection(spec, request_sent=False, ran=False)
                    raise lost from lost.__cause__
                cmsgs, nfds = outgoing_fds(fd_context)
                try:
                    await conn.writer.write(conn.core.notification(spec, params, nfds), cmsgs)
                    return
                except (ConnectionError, RPCError):
                    if not connection_lost(conn.core.broken) or conn.raw.is_send_broken():
                        raise
                    after = conn.generation
        finally:
            if fd_context is not None:
                fd_context.sent()
