"""The threads engine's event-loop thread (``server/threads/loop_thread.py``):
how an ``async def`` handler's coroutine is handed over, cancelled and
waited for, with real threads and a real asyncio loop."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator
from concurrent.futures import CancelledError

import anyio
import pytest

from unixrpc import Client, Method, Server
from unixrpc.server.threads.loop_thread import THREAD_NAME, LoopThread


class Hold(Method[str]):
    tag: str


@pytest.fixture
def loop_thread() -> Iterator[LoopThread]:
    loop = LoopThread()
    yield loop
    loop.close()


def _block_the_loop(loop: LoopThread) -> threading.Event:
    """Hold the loop in a callback until the returned event is set."""
    go, blocked = threading.Event(), threading.Event()

    async def hold() -> None:
        blocked.set()
        go.wait(10)  # blocks the loop on purpose

    loop.start(hold)
    assert blocked.wait(10)
    return go


def test_a_result_and_an_exception_come_back(loop_thread: LoopThread) -> None:
    async def add() -> int:
        await asyncio.sleep(0)
        return 3

    async def fail() -> int:
        raise ValueError("bad")

    future, ended = loop_thread.start_call(add)
    assert future.result(10) == 3
    assert ended.acquire(timeout=10)
    future, ended = loop_thread.start_call(fail)
    with pytest.raises(ValueError, match="bad"):
        future.result(10)
    assert ended.acquire(timeout=10)


def test_cancelled_before_it_began_nothing_runs_and_the_end_is_said(loop_thread: LoopThread) -> None:
    ran: list[str] = []

    async def handler() -> None:
        ran.append("ran")

    go = _block_the_loop(loop_thread)
    future, ended = loop_thread.start_call(handler)
    assert future.cancel()
    go.set()
    with pytest.raises(CancelledError):
        future.result(10)
    assert ended.acquire(timeout=10), "a call cancelled before it began must not leave its waiter hanging"
    assert ran == []


def test_a_running_call_cancelled_finishes_its_cleanup_before_the_end(loop_thread: LoopThread) -> None:
    started, steps = threading.Event(), []

    async def handler() -> None:
        started.set()
        try:
            await asyncio.sleep(3600)
        finally:
            # cleanup that awaits: shielded, as anyio's cancellation is level-triggered
            # (an unshielded await in a cancelled scope is cancelled again, as on the anyio engine)
            with anyio.CancelScope(shield=True):
                await asyncio.sleep(0.01)
            steps.append("cleaned up")

    future, ended = loop_thread.start_call(handler)
    assert started.wait(10)
    assert future.cancel()
    with pytest.raises(CancelledError):
        future.result(10)
    assert ended.acquire(timeout=10)
    assert steps == ["cleaned up"]


def test_close_cancels_what_runs_and_ends_the_thread() -> None:
    loop = LoopThread()
    started = threading.Event()

    async def forever() -> None:
        started.set()
        await asyncio.sleep(3600)

    future, ended = loop.start_call(forever)
    assert started.wait(10)
    assert [t.name for t in threading.enumerate()].count(THREAD_NAME) == 1
    loop.close()
    assert ended.acquire(timeout=10)
    assert future.cancelled()
    assert THREAD_NAME not in [t.name for t in threading.enumerate()]
    with pytest.raises(RuntimeError, match="stopped"):
        loop.start_call(forever)
    loop.close()  # idempotent


def test_the_threads_engine_starts_no_event_loop_thread(sock_dir: str) -> None:
    server = Server()  # introspection on: its handlers are plain def

    @server.method(Hold)
    def hold(request: Hold) -> str:
        return request.tag

    path = os.path.join(sock_dir, "s")
    with server.serve_in_thread(path, backend="threads"), Client(path) as client:
        assert client.call(Hold(tag="x")) == "x"
        assert client.call_by_name("unixrpc.Ping", {}).value is not None
        names = [thread.name for thread in threading.enumerate()]
    assert THREAD_NAME not in names, names
    assert not any("portal" in name for name in names), names


def test_async_handlers_on_the_threads_engine_share_one_loop_thread_that_ends_with_the_server(
    sock_dir: str,
) -> None:
    """``async def`` handlers on the threads engine run on one event-loop
    thread, started with the server and gone after it stops, even when a
    handler was still awaiting at shutdown (cancelled there)."""
    server = Server(shutdown_grace=0.2)
    started = threading.Event()

    @server.method(Hold)
    async def hold(request: Hold) -> str:
        import anyio

        if request.tag == "forever":
            started.set()
            await anyio.sleep(3600)
        return request.tag

    path = os.path.join(sock_dir, "s")
    before = threading.active_count()
    outcome: list[BaseException | str] = []

    def call_forever(client: Client) -> None:
        try:
            outcome.append(client.call(Hold(tag="forever")))
        except Exception as exc:  # the shutdown's cancel, or the connection's end
            outcome.append(exc)

    with server.serve_in_thread(path, backend="threads"), Client(path) as client:
        assert [client.call(Hold(tag=str(n))) for n in range(20)] == [str(n) for n in range(20)]
        assert [t.name for t in threading.enumerate()].count(THREAD_NAME) == 1
        caller = threading.Thread(target=call_forever, args=(client,))
        caller.start()
        assert started.wait(10)
        server.shutdown()
        caller.join(30)
        assert not caller.is_alive()
    assert len(outcome) == 1
    assert isinstance(outcome[0], Exception), outcome
    names = [t.name for t in threading.enumerate()]
    assert THREAD_NAME not in names, names
    assert threading.active_count() <= before, names
