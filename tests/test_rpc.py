"""The typed RPC layer end to end: Client (threads) and AsyncClient (tasks,
asyncio and trio) against a real Server on a real socket. Shared cases run
on every client kind."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

from conftest import open_fds
from rpc_support import (
    Add,
    Count,
    Driver,
    Echo,
    Events,
    Fail,
    GetUser,
    Log,
    Sleep,
    User,
    UserNotFound,
    WhoAmI,
    make_server,
    serving,
    serving_in_thread,
)
from unixrpc import (
    AsyncClient,
    CallCancelledError,
    Client,
    ClientClosedError,
    ConnectionBrokenError,
    InternalError,
    InvalidParamsError,
    InvalidResultError,
    Method,
    MethodNotFoundError,
    RPCError,
    StreamMethod,
    UnixCredentials,
)

pytestmark = [pytest.mark.anyio, pytest.mark.server]  # every test here runs on every engine


class Missing(Method[int]):
    """Not served by the test server."""


class MissingStream(StreamMethod[int]):
    pass


class AddLoose(Method[int], name="Add"):
    """Same wire name as Add, but params the server rejects."""

    a: str
    b: str


class AddAsList(Method[list[str]], name="Add"):
    """Same wire name as Add, but a result type the server does not produce."""

    a: int
    b: int


@asynccontextmanager
async def rpc(
    kind: str, sock_dir: str, events: Events | None = None, **client_kwargs: Any
) -> AsyncIterator[Driver]:
    """A server with the test methods and a connected client of *kind*."""
    server = make_server(events)
    path = os.path.join(sock_dir, "rpc.sock")
    if kind == "sync":
        with serving_in_thread(server, path), Client(path, **client_kwargs) as client:
            yield Driver(kind, client)
    else:
        async with serving(server, path), AsyncClient(path, **client_kwargs) as client:
            yield Driver(kind, client)


async def wait_until(predicate: Any, seconds: float = 5.0) -> None:
    with anyio.fail_after(seconds):
        while not predicate():
            await anyio.sleep(0.005)


# -- results and errors -------------------------------------------------------------


async def test_call_returns_typed_results(client_kind: str, sock_dir: str) -> None:
    async with rpc(client_kind, sock_dir) as client:
        assert await client.call(Add(a=1, b=2)) == 3
        user = await client.call(GetUser(uid=0))
        assert user == User(uid=0, name="root")
        assert isinstance(user, User)
        assert await client.call(Echo(payload={"x": [1, "two", None]})) == {"x": [1, "two", None]}
        assert await client.call(WhoAmI()) == [os.getpid(), os.getuid(), os.getgid()]
        assert client.client.get_peer_credentials() == UnixCredentials.of_this_process()


async def test_typed_application_error(client_kind: str, sock_dir: str) -> None:
    async with rpc(client_kind, sock_dir) as client:
        with pytest.raises(UserNotFound) as info:
            await client.call(GetUser(uid=42))
        assert info.value.uid == 42
        assert info.value.code == "users.NotFound"
        assert info.value.data == {"uid": 42}


async def test_builtin_errors(client_kind: str, sock_dir: str) -> None:
    async with rpc(client_kind, sock_dir) as client:
        with pytest.raises(MethodNotFoundError, match="no method named 'Missing'"):
            await client.call(Missing())
        with pytest.raises(InvalidParamsError, match="invalid params for Add") as info:
            await client.call(AddLoose(a="x", b="y"))
        assert [error["loc"] for error in info.value.data] == [["a"], ["b"]]
        with pytest.raises(InternalError, match="handler of Fail raised ValueError") as internal:
            await client.call(Fail(kind="value"))
        assert "secret" not in str(internal.value)
        assert internal.value.data is None
        with pytest.raises(RPCError, match="plain rpc error") as plain:
            await client.call(Fail(kind="rpc"))
        assert type(plain.value) is RPCError
        assert plain.value.data == {"k": 1}
        with pytest.raises(InternalError, match="invalid result"):
            await client.call(Fail(kind="bad-result"))
        with pytest.raises(InvalidResultError, match="invalid result for Add") as bad:
            await client.call(AddAsList(a=1, b=2))
        assert bad.value.error_info[0]["type"] == "list_type"
        assert await client.call(Add(a=2, b=2)) == 4, "the connection survives every error"


async def test_wrong_kind_of_method(client_kind: str, sock_dir: str) -> None:
    async with rpc(client_kind, sock_dir) as client:
        with pytest.raises(TypeError, match="is a StreamMethod"):
            await client.call(Count(n=1))
        with pytest.raises(TypeError, match="is not a StreamMethod"):
            await client.stream(Add(a=1, b=2))
        with pytest.raises(TypeError, match="expected a concrete Method"):
            await client.call(object())


# -- concurrency and correlation ---------------------------------------------------------------


def test_sync_calls_from_many_threads(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "rpc.sock")
    errors: list[BaseException] = []
    with serving_in_thread(make_server(), path), Client(path) as client:

        def worker(w: int) -> None:
            try:
                for i in range(60):
                    if i % 10 == 0:
                        tag = f"{w}-{i}"
                        assert client.call(Sleep(seconds=0.001 * (w % 3), tag=tag)) == tag
                    else:
                        assert client.call(Add(a=w, b=i)) == w + i
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(w,)) for w in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    assert not errors, errors[:3]


def test_sync_slow_call_does_not_hold_back_fast_ones(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "rpc.sock")
    finished: list[str] = []
    with serving_in_thread(make_server(), path), Client(path) as client:

        def slow() -> None:
            finished.append(client.call(Sleep(seconds=0.5, tag="slow")))

        thread = threading.Thread(target=slow)
        thread.start()
        time.sleep(0.05)  # the slow call is in flight and its thread is the reader
        for i in range(20):
            assert client.call(Add(a=i, b=1)) == i + 1
        finished.append("fast")
        thread.join(timeout=10)
    assert finished == ["fast", "slow"], "the fast calls were answered while the slow one was pending"


async def test_async_calls_from_many_tasks_out_of_order(anyio_backend: str, sock_dir: str) -> None:
    finished: list[str] = []
    async with rpc("async", sock_dir) as client:

        async def call(tag: str, seconds: float) -> None:
            assert await client.call(Sleep(seconds=seconds, tag=tag)) == tag
            finished.append(tag)

        async def adds(w: int) -> None:
            for i in range(50):
                assert await client.call(Add(a=w, b=i)) == w + i

        async with anyio.create_task_group() as tg:
            tg.start_soon(call, "slow", 0.3)
            tg.start_soon(call, "medium", 0.15)
            tg.start_soon(call, "fast", 0.0)
            for w in range(16):
                tg.start_soon(adds, w)
    assert finished == ["fast", "medium", "slow"]


# -- timeouts and cancellation ------------------------------------------------------------------


async def test_timeout_cancels_on_server_and_late_reply_is_dropped(client_kind: str, sock_dir: str) -> None:
    events = Events()
    async with rpc(client_kind, sock_dir, events) as client:
        with pytest.raises(TimeoutError):
            await client.call(Sleep(seconds=5, tag="too slow"), timeout=0.1)
        await wait_until(lambda: events.cancelled == ["too slow"])
        # a reply that comes after its caller gave up goes to no one else
        with pytest.raises(TimeoutError):
            await client.call(Sleep(seconds=0.15, tag="late"), timeout=0.05)
        deadline = time.monotonic() + 0.4
        while time.monotonic() < deadline:
            assert await client.call(Add(a=1, b=1)) == 2


async def test_client_default_timeout(client_kind: str, sock_dir: str) -> None:
    async with rpc(client_kind, sock_dir, timeout=0.1) as client:
        with pytest.raises(TimeoutError):
            await client.call(Sleep(seconds=5))
        assert await client.call(Sleep(seconds=0.5, tag="ok"), timeout=None) == "ok"


async def test_async_cancel_scope_reaches_server(anyio_backend: str, sock_dir: str) -> None:
    # each deadline passes once the handler runs (_once_started), not after a fixed
    # time: on the threads engine a cancel that comes before a thread started the call
    # answers it with no handler to tell (as under pytest -n on a loaded machine)
    events = Events()
    async with rpc("async", sock_dir, events) as client, anyio.create_task_group() as tg:
        with anyio.move_on_after(30) as scope:
            tg.start_soon(_once_started, events, "scoped", lambda: _pass_deadline(scope))
            await client.call(Sleep(seconds=5, tag="scoped"))
        assert scope.cancelled_caught
        await wait_until(lambda: events.cancelled == ["scoped"])
        if anyio_backend == "asyncio":
            import asyncio

            loop = asyncio.get_running_loop()
            timeout = asyncio.timeout(30)
            tg.start_soon(_once_started, events, "asyncio", lambda: timeout.reschedule(loop.time()))
            with pytest.raises(TimeoutError):
                async with timeout:
                    await client.call(Sleep(seconds=5, tag="asyncio"))
        else:
            import trio

            with trio.move_on_after(30) as trio_scope:
                tg.start_soon(_once_started, events, "trio", lambda: _pass_deadline(trio_scope))
                await client.call(Sleep(seconds=5, tag="trio"))
            assert trio_scope.cancelled_caught
        await wait_until(lambda: len(events.cancelled) == 2)
        assert await client.call(Add(a=3, b=4)) == 7


async def _once_started(events: Events, tag: str, then: Callable[[], object]) -> None:
    await wait_until(lambda: tag in events.started)
    then()


def _pass_deadline(scope: Any) -> None:
    """Let the deadline of an anyio or trio cancel scope pass now."""
    scope.deadline -= 1_000  # was 30 s ahead


async def test_cancelled_error_code_exists() -> None:
    error = RPCError.from_wire("unixrpc.Cancelled", "call cancelled by the client", None)
    assert isinstance(error, CallCancelledError)


# -- notifications and streams --------------------------------------------------------------------


async def test_notification(client_kind: str, sock_dir: str) -> None:
    events = Events()
    async with rpc(client_kind, sock_dir, events) as client:
        await client.notify(Log(line="one"))
        await client.notify(Log(line="two"))
        assert await client.call(Add(a=1, b=1)) == 2
        await wait_until(lambda: sorted(events.logged) == ["one", "two"])
        await client.notify(Missing())  # no reply, no error back: the server only logs it
        assert await client.call(Add(a=1, b=2)) == 3


async def test_stream_items(client_kind: str, sock_dir: str) -> None:
    async with rpc(client_kind, sock_dir) as client:
        assert await client.stream(Count(n=100)) == list(range(100))
        assert await client.stream(Count(n=0)) == []
        with pytest.raises(MethodNotFoundError):
            await client.stream(MissingStream())


async def test_stream_break_cancels_and_backpressure(client_kind: str, sock_dir: str) -> None:
    events = Events()
    async with rpc(client_kind, sock_dir, events, stream_window=4) as client:
        if client.kind == "sync":

            def first_two() -> Any:
                stream = client.client.stream(Count(n=1000))
                assert [next(stream), next(stream)] == [0, 1]
                return stream

            stream = await anyio.to_thread.run_sync(first_two)
            time.sleep(0.2)
        else:
            stream = client.client.stream(Count(n=1000))
            assert [await stream.__anext__(), await stream.__anext__()] == [0, 1]
            await anyio.sleep(0.2)
        # 2 consumed (and credited) + a window of 4 in flight; the generator may
        # have produced one more item that waits for credit
        assert 6 <= events.produced <= 7
        if client.kind == "sync":
            stream.close()
        else:
            await stream.aclose()
        await wait_until(lambda: events.stream_closed == 1)
        assert events.produced <= 7
        assert await client.stream(Count(n=3), limit=2) == [0, 1]  # break out of the loop
        await wait_until(lambda: events.stream_closed == 2)
        assert await client.call(Add(a=1, b=1)) == 2


# -- the connection ------------------------------------------------------------------------------


async def test_server_going_away_fails_calls_in_flight(anyio_backend: str, sock_dir: str) -> None:
    path = os.path.join(sock_dir, "rpc.sock")
    async with anyio.create_task_group() as tg:
        server_scope = anyio.CancelScope()

        async def run_server(*, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
            with server_scope:
                await make_server().serve(path, task_status=task_status)

        await tg.start(run_server)
        async with AsyncClient(path) as client:
            errors: list[BaseException] = []

            async def pending() -> None:
                try:
                    await client.call(Sleep(seconds=30))
                except ConnectionBrokenError as exc:
                    errors.append(exc)

            async with anyio.create_task_group() as calls:
                calls.start_soon(pending)
                await anyio.sleep(0.05)
                server_scope.cancel()
            assert len(errors) == 1
            assert "peer closed the connection" in str(errors[0])
            with pytest.raises(ConnectionBrokenError):
                await client.call(Add(a=1, b=2))


def test_sync_close_wakes_waiting_threads(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "rpc.sock")
    errors: list[BaseException] = []
    with serving_in_thread(make_server(), path):
        client = Client(path)

        def waiter(tag: str) -> None:
            try:
                client.call(Sleep(seconds=30, tag=tag))
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=waiter, args=(str(i),)) for i in range(3)]
        for t in threads:
            t.start()
        time.sleep(0.1)
        client.close()
        for t in threads:
            t.join(timeout=5)
        assert not any(t.is_alive() for t in threads)
        assert [type(e) for e in errors] == [ClientClosedError] * 3
        with pytest.raises(ClientClosedError):
            client.call(Add(a=1, b=2))


async def test_raw_layer_is_reachable(client_kind: str, sock_dir: str) -> None:
    async with rpc(client_kind, sock_dir) as client:
        raw = client.client.raw
        assert raw.socket.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE) == socket.SOCK_STREAM
        assert str(raw.get_peer_name()).endswith("rpc.sock")


async def test_no_descriptor_leak_across_many_calls(client_kind: str, sock_dir: str) -> None:
    before = open_fds()
    async with rpc(client_kind, sock_dir) as client:
        for i in range(300):
            if i % 3 == 0:
                assert await client.call(Add(a=i, b=1)) == i + 1
            elif i % 3 == 1:
                with pytest.raises(UserNotFound):
                    await client.call(GetUser(uid=i))
            else:
                with pytest.raises(TimeoutError):  # (a wide margin: a loaded machine may stall 50 ms)
                    await client.call(Sleep(seconds=5.0), timeout=0.001)
    await anyio.sleep(0.05)
    assert open_fds() <= before, f"leaked: {sorted(open_fds() - before)}"


def _raw_request(sock: socket.socket, body: bytes) -> None:
    sock.sendall(len(body).to_bytes(4, "big") + b"\0\0" + body)


def _raw_reply(sock: socket.socket) -> bytes:
    data = b""
    while len(data) < 6 or len(data) < 6 + int.from_bytes(data[:4], "big"):
        chunk = sock.recv(65536)
        assert chunk, "server closed the connection"
        data += chunk
    return data[6:]


async def test_half_closed_peer_still_gets_its_replies(anyio_backend: str, sock_dir: str) -> None:
    events = Events()
    path = os.path.join(sock_dir, "rpc.sock")
    async with serving(make_server(events), path):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(path)
            _raw_request(sock, b'{"id":1,"method":"Sleep","params":{"seconds":0.1,"tag":"half"}}')
            sock.shutdown(socket.SHUT_WR)
            reply = await anyio.to_thread.run_sync(_raw_reply, sock)
        assert reply == b'{"id":1,"result":"half"}'
        assert events.cancelled == []


async def test_closed_peer_cancels_its_calls_but_not_notifications(anyio_backend: str, sock_dir: str) -> None:
    events = Events()
    path = os.path.join(sock_dir, "rpc.sock")
    async with serving(make_server(events), path):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(path)
            _raw_request(sock, b'{"id":1,"method":"Sleep","params":{"seconds":30,"tag":"orphan"}}')
            _raw_request(sock, b'{"method":"Log","params":{"line":"last words"}}')
            await wait_until(lambda: events.started == ["orphan"])
        await wait_until(lambda: events.cancelled == ["orphan"])
        await wait_until(lambda: events.logged == ["last words"])


async def test_async_client_keeps_no_trace_of_waiters_it_woke(anyio_backend: str, sock_dir: str) -> None:
    # while one long call reads for everyone, thousands of short calls are
    # handed their replies: none of them stays parked in the client
    path = os.path.join(sock_dir, "s.sock")
    with anyio.fail_after(30):
        async with serving(make_server(), path), AsyncClient(path) as client, anyio.create_task_group() as tg:
            tg.start_soon(client.call, Sleep(seconds=30))  # becomes the reader and stays it
            await anyio.sleep(0.1)

            async def short(i: int) -> None:
                assert await client.call(Add(a=i, b=1)) == i + 1

            for start in range(0, 2000, 100):
                async with anyio.create_task_group() as calls:
                    for i in range(start, start + 100):
                        calls.start_soon(short, i)
            assert len(client._conn._parked) <= 1
            tg.cancel_scope.cancel()
