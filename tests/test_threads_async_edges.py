"""The threads engine's async handlers at their edges, each defect found in
review shown with real sockets, threads and the real asyncio loop: a cancel
honours the handler's shielded scopes, a handler's SystemExit ends its own
call only, no loop thread is started after shutdown, a failed handler
leaves no reference cycle holding its request."""

from __future__ import annotations

import contextlib
import gc
import inspect
import logging
import os
import threading
import time
from collections.abc import AsyncIterator

import pytest

from conftest import open_fds
from unixrpc import Client, InternalError, Method, Server, StreamMethod
from unixrpc.server.threads.loop_thread import THREAD_NAME


class Hold(Method[str]):
    tag: str


class Ticks(StreamMethod[int]):
    pass


def _loop_threads() -> int:
    return [thread.name for thread in threading.enumerate()].count(THREAD_NAME)


def test_the_loop_thread_is_not_started_again_after_the_shutdown_closed_it(sock_dir: str) -> None:
    """The engine forgets its loop thread at shutdown (``_loop_thread = None``)
    while connection threads may still run (a plain handler that outlives
    the 0.25 s join is left behind). When such a connection then ends, it
    closes the async generator of a stream it still holds through
    ``engine.loop_thread()``, which starts a new event-loop thread that
    nothing ever closes: a thread and its loop's descriptors leak for good."""
    server = Server(shutdown_grace=0, max_threads_per_connection=1)
    in_slow, generator_closed = threading.Event(), threading.Event()

    @server.method(Ticks)
    async def ticks(request: Ticks) -> AsyncIterator[int]:
        try:
            for n in range(1000):
                yield n
        finally:
            generator_closed.set()

    @server.method(Hold)
    def hold(request: Hold) -> str:
        in_slow.set()
        time.sleep(1.0)  # returns after the shutdown's 0.25 s join
        return request.tag

    path = os.path.join(sock_dir, "s")
    before_fds = open_fds()
    serving = server.serve_in_thread(path, backend="threads")
    serving.__enter__()
    client = Client(path, timeout=5, stream_window=1)
    try:
        stream = client.stream(Ticks())
        items = iter(stream)  # (kept: a dropped iterator cancels the stream)
        assert next(items) == 0
        time.sleep(0.2)  # the stream parks, waiting for credit

        def slow() -> None:
            with contextlib.suppress(Exception):  # the shutdown's cancel, or the end
                client.call(Hold(tag="x"))

        caller = threading.Thread(target=slow)
        caller.start()
        assert in_slow.wait(10)
    finally:
        serving.__exit__(None, None, None)
    assert _loop_threads() == 0
    caller.join(10)
    assert generator_closed.wait(10)
    time.sleep(1.5)  # the plain handler returns, its connection ends
    del items, stream
    client.close()
    leaked_threads = _loop_threads()
    leaked_fds = open_fds() - before_fds
    assert leaked_threads == 0, "an event-loop thread was started after the shutdown, and never ends"
    assert not leaked_fds, f"leaked descriptors: {sorted(leaked_fds)}"


class Big(Method[str]):
    blob: str


def _big_requests_in_cycles() -> list[str]:
    """Collect garbage and name what of the 4 MB request was found in cycles."""
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
        found = []
        for obj in gc.garbage:
            if isinstance(obj, Big) and len(obj.blob) > 1_000_000:
                found.append("Big")
            elif type(obj).__name__ == "ServerCall" and isinstance(getattr(obj, "request", None), Big):
                found.append("ServerCall")
        return sorted(found)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.collect()


@pytest.mark.parametrize("kind", ["plain", "async"])
def test_a_failed_handler_leaves_no_cycle_holding_its_request_on_the_threads_engine(
    sock_dir: str, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The threads engine keeps the exception a handler raised in a local of
    the frame it raised through (``CallRunner.run``'s ``result``; for an async
    handler also ``_await``'s and ``_call``'s ``future``): exception ->
    traceback -> frame -> exception. The cycle holds the ServerCall and the
    request (here 4 MB) until the cyclic GC runs; the anyio engine frees it
    at once (DESIGN: no reference cycles through saved exceptions and
    tracebacks)."""
    server = Server()

    if kind == "plain":

        @server.method(Big)
        def big(request: Big) -> str:
            raise ValueError("bad")

    else:

        @server.method(Big)
        async def big(request: Big) -> str:
            raise ValueError("bad")

    path = os.path.join(sock_dir, "s")
    # pytest's log capture keeps the records (and their exc_info): keep it out of the way
    monkeypatch.setattr(logging.getLogger("unixrpc"), "propagate", False)
    with server.serve_in_thread(path, backend="threads"), Client(path, timeout=5) as client:
        with pytest.raises(InternalError):
            client.call(Big(blob="x"))  # warm up
        gc.collect()
        gc.disable()
        try:
            with pytest.raises(InternalError):
                client.call(Big(blob="y" * 4_000_000))
            time.sleep(0.2)  # (the server thread is past its answer)
            found = _big_requests_in_cycles()
        finally:
            gc.enable()
    assert found == [], f"a failed call's request is kept by a reference cycle: {found}"


_SYSTEM_EXIT_SCRIPT = """
import asyncio, os, sys, threading
from unixrpc import Client, Method, Server

class Hold(Method[str]):
    tag: str

server = Server(shutdown_grace=0.2)
slow_started = threading.Event()

@server.method(Hold)
async def hold(request: Hold) -> str:
    if request.tag == "exit":
        raise SystemExit(3)
    if request.tag == "slow":
        slow_started.set()
        await asyncio.sleep(0.5)
    return request.tag

path = sys.argv[1]
outcome = []

def slow():
    with Client(path, timeout=5) as other:
        try:
            outcome.append(other.call(Hold(tag="slow")))
        except Exception as exc:
            outcome.append(type(exc).__name__)

serving = server.serve_in_thread(path, backend="threads")
serving.__enter__()
caller = threading.Thread(target=slow)
caller.start()
assert slow_started.wait(10)
with Client(path, timeout=5) as client:
    try:
        client.call(Hold(tag="exit"))
    except Exception:
        pass
caller.join(30)
with Client(path, timeout=5) as client:
    try:
        later = client.call(Hold(tag="later"))
    except Exception as exc:
        later = type(exc).__name__ + ": " + str(exc)
try:
    serving.__exit__(None, None, None)
    stopped = "ok"
except BaseException as exc:
    stopped = repr(exc)
print(repr((outcome, later, stopped)))
"""


def test_an_async_handler_raising_system_exit_does_not_take_down_the_other_async_calls(
    sock_dir: str,
) -> None:
    """``sys.exit()`` in one ``async def`` handler (threads engine): ``_call``
    re-raises SystemExit, asyncio lets it out of ``run_forever``, and the
    shared loop thread dies. Then another async call in flight is never
    answered (its client times out), every later async call fails with
    ``RuntimeError: Event loop is closed``, and the server's shutdown raises
    it too (``LoopThread.close`` -> ``run_coroutine_threadsafe`` on a closed
    loop), before the engine closed its wake pipe. (Run in a child process:
    it leaves a dead loop and a stuck connection thread behind.)"""
    import ast
    import subprocess
    import sys

    path = os.path.join(sock_dir, "s")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    done = subprocess.run(
        [sys.executable, "-c", _SYSTEM_EXIT_SCRIPT, path], capture_output=True, text=True, timeout=60, env=env
    )
    assert done.returncode == 0, done.stderr[-2000:]
    outcome, later, stopped = ast.literal_eval(done.stdout.strip().splitlines()[-1])
    assert outcome == ["slow"], f"a call in flight on the shared loop was lost: {outcome}"
    assert later == "later", f"async calls after it fail: {later}"
    assert stopped == "ok", f"the server's shutdown raised {stopped}"


@pytest.mark.parametrize("backend", ["threads", "asyncio", "trio"])
def test_a_cancel_does_not_break_into_an_async_handlers_shielded_scope(sock_dir: str, backend: str) -> None:
    """The threads engine now cancels an ``async def`` handler with a bare
    ``task.cancel()`` (85bdcbb): asyncio delivers it inside an
    ``anyio.CancelScope(shield=True)`` too, so a handler's shielded cleanup
    or critical section is cut short by a client's cancel (or shutdown).
    The anyio engine, and the threads engine before 85bdcbb (the anyio
    portal cancelled through a cancel scope), honour the shield."""
    import anyio

    server = Server()
    inside, finished = threading.Event(), threading.Event()

    @server.method(Hold)
    async def hold(request: Hold) -> str:
        with anyio.CancelScope(shield=True):
            inside.set()
            await anyio.sleep(0.5)  # must not be interrupted
            finished.set()
        return request.tag

    path = os.path.join(sock_dir, "s")
    with server.serve_in_thread(path, backend=backend), Client(path, timeout=0.2) as client:
        with pytest.raises(TimeoutError):
            client.call(Hold(tag="x"))  # gives up: a cancel goes to the server
        assert inside.is_set()
        finished.wait(3)
    assert finished.is_set(), "the cancel broke into the handler's shielded scope"


class Gate(Method[str]):
    pass


class Mark(Method[str]):
    pass


def test_an_async_authorize_hook_cancelled_before_it_began_is_closed(sock_dir: str) -> None:
    """An ``authorize`` hook that returns a coroutine is awaited on the loop
    thread. When its call is cancelled before that began (the cancel came
    while the hook's plain part ran), the coroutine never runs: it must be
    closed, not left to warn "never awaited" when collected (an error under
    ``-W error``) and to hold what it refers to until then."""
    entered, release = threading.Event(), threading.Event()
    made: list[object] = []
    ran: list[str] = []

    async def allowed() -> bool:
        ran.append("hook")
        return True

    def authorize(context: object, request: object) -> object:
        if not isinstance(request, Gate):
            return True
        entered.set()
        assert release.wait(10)
        coroutine = allowed()
        made.append(coroutine)
        return coroutine

    server = Server(authorize=authorize)

    @server.method(Gate)
    def gate(request: Gate) -> str:
        ran.append("handler")
        return "gate"

    @server.method(Mark)
    def mark(request: Mark) -> str:
        return "mark"

    path = os.path.join(sock_dir, "s")
    with server.serve_in_thread(path, backend="threads"), Client(path, timeout=10) as client:
        outcome: list[BaseException] = []

        def gated() -> None:
            try:
                client.call(Gate(), timeout=0.2)  # times out in the hook: the client sends a cancel
            except BaseException as exc:
                outcome.append(exc)

        caller = threading.Thread(target=gated)
        caller.start()
        assert entered.wait(10)
        caller.join(10)
        assert len(outcome) == 1
        assert isinstance(outcome[0], TimeoutError), outcome
        # the server takes a connection's frames in order: once Mark is answered, Gate's
        # cancel was taken in, before the hook returned its coroutine
        assert client.call(Mark()) == "mark"
        release.set()
        for _ in range(1000):  # the call's thread closes the coroutine once the hook returned
            if made and inspect.getcoroutinestate(made[0]) == inspect.CORO_CLOSED:  # type: ignore[arg-type]
                break
            time.sleep(0.01)
    assert made, "the hook never returned its coroutine"
    assert inspect.getcoroutinestate(made[0]) == inspect.CORO_CLOSED  # type: ignore[arg-type]
    assert ran == []  # neither the hook's body nor the handler ran
