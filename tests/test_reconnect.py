"""Clients that outlive the daemon (issue 20): reconnect with backoff, calls
sent again when that is safe, the documented error when it is not, streams
that resume, descriptors kept until a call is answered.

The rules of the session core are tested without sockets; the rest against
real daemons in subprocesses (tests/reconnect_daemon.py), killed with -9 or
stopped with SIGTERM under load and started again under the same path or
under systemd-socket-activate, on every server engine, with the blocking
client (from threads) and the async one (on asyncio and trio).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import pytest

from conftest import open_fds
from reconnect_daemon import Bump, Event, Get, Pid, ReadFd, Watch
from unixrpc import (
    AsyncClient,
    CallInterruptedError,
    CallNotRunError,
    CallOutcomeUnknownError,
    Client,
    ConnectionBrokenError,
    FileDescriptor,
    Method,
    ReconnectPolicy,
    SocketNotFoundError,
    SocketPermissionError,
    SocketRefusedError,
)
from unixrpc._core.client.session import (
    ConnectionState,
    Session,
    ends_stream_for_restart,
    refused_before_running,
)
from unixrpc.interface import openrpc_document
from unixrpc.methods import method_spec

TESTS = os.path.dirname(os.path.abspath(__file__))
SDK = os.path.join(os.path.dirname(TESTS), "sdk")
DAEMON = os.path.join(TESTS, "reconnect_daemon.py")
SOCKET_ACTIVATE = "/usr/bin/systemd-socket-activate"
pytestmark = pytest.mark.anyio

#: short backoff: the tests wait for restarts, not for the policy
FAST = ReconnectPolicy(initial_delay=0.005, max_delay=0.05, deadline=20.0)


# -- the session core, without sockets ---------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_backoff_grows_by_the_multiplier_within_the_jitter_up_to_the_cap() -> None:
    policy = ReconnectPolicy(initial_delay=0.1, multiplier=2.0, max_delay=1.0, jitter=0.2)
    assert [policy.delay(n, 0.5) for n in (1, 2, 3, 4, 5, 6)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
    assert policy.delay(1, 0.0) == pytest.approx(0.08)
    assert policy.delay(1, 0.999999) == pytest.approx(0.12)
    assert policy.delay(4, 0.999999) == pytest.approx(0.96)
    assert policy.delay(5, 0.999999) == 1.0  # the cap holds with the jitter
    assert policy.delay(1000, 0.5) == 1.0


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("initial_delay", -1),
        ("multiplier", 0.5),
        ("max_delay", 0.001),
        ("jitter", 2),
        ("deadline", 0),
        ("max_retries", -1),
    ],
)
def test_policy_values_out_of_range_are_refused(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        ReconnectPolicy(**{field: value})


def test_reconnect_argument() -> None:
    assert ReconnectPolicy.of(False) is None
    assert ReconnectPolicy.of(True) == ReconnectPolicy()
    with pytest.raises(TypeError, match="reconnect= takes"):
        ReconnectPolicy.of(1)  # type: ignore[arg-type]


def test_an_episode_tries_at_once_backs_off_and_gives_up_at_its_deadline() -> None:
    clock = Clock()
    session = Session(ReconnectPolicy(initial_delay=1.0, max_delay=4.0, jitter=0.0, deadline=10.0), clock)
    assert not session.lost(7)  # not the current connection
    assert session.lost(1)
    assert not session.lost(1)  # once
    assert session.state is ConnectionState.RECONNECTING
    attempts = []
    while (at := session.next_attempt()) is not None:
        clock.now = at
        attempts.append(at - 100.0)
        session.connect_failed(SocketRefusedError(111, "refused", "/x"))
    assert attempts == [0.0, 1.0, 3.0, 7.0]  # 1, 2, 4 s apart; the next (11 s) is past the deadline
    assert session.state is ConnectionState.DISCONNECTED
    session.call_arrives()  # a new call tries again
    assert session.state is ConnectionState.RECONNECTING
    assert session.next_attempt() == clock.now
    assert session.connected() == 2
    assert (session.state, session.reconnects, session.last_error) == (ConnectionState.CONNECTED, 1, None)


def test_a_connect_that_waiting_cannot_fix_ends_the_episode_at_once() -> None:
    session = Session(ReconnectPolicy(), Clock())
    session.lost(1)
    session.connect_failed(SocketPermissionError(13, "denied", "/x"))
    assert session.next_attempt() is None
    assert session.state is ConnectionState.DISCONNECTED


def test_what_a_lost_call_does() -> None:
    session = Session(ReconnectPolicy(max_retries=2), Clock())
    get, bump = method_spec(Get), method_spec(Bump)
    cause = ConnectionBrokenError("reset")
    # never ran: sent again, whatever the method
    assert session.after_loss(bump, request_sent=False, ran=False, retries=0, cause=cause) is None
    assert session.after_loss(bump, request_sent=True, ran=False, retries=1, cause=cause) is None
    # sent, outcome unknown: only an idempotent method
    assert session.after_loss(get, request_sent=True, ran=None, retries=1, cause=cause) is None
    error = session.after_loss(bump, request_sent=True, ran=None, retries=0, cause=cause)
    assert isinstance(error, CallOutcomeUnknownError)
    assert (error.method, error.request_sent, error.__cause__) == ("t.Bump", True, cause)
    assert "may or may not have run it; its method is not idempotent" in str(error)
    # at most max_retries times again
    error = session.after_loss(get, request_sent=True, ran=None, retries=2, cause=cause)
    assert isinstance(error, CallOutcomeUnknownError)
    assert "sent again 2 times" in str(error)
    error = session.after_loss(bump, request_sent=True, ran=False, retries=2, cause=cause)
    assert isinstance(error, CallNotRunError)
    assert "the daemon refused it before running it" in str(error)
    assert isinstance(error, CallInterruptedError)
    assert isinstance(error, ConnectionBrokenError)  # old handlers keep catching it


def test_shutting_down_before_the_handler_ran_is_told_apart() -> None:
    refusal = {"id": 3, "error": {"code": "unixrpc.ShuttingDown", "message": "server is shutting down"}}
    ended = {
        "id": 3,
        "error": {"code": "unixrpc.ShuttingDown", "message": "server is shutting down: the stream was ended"},
    }
    other = {"id": 3, "error": {"code": "unixrpc.Busy", "message": "too many calls"}}
    assert refused_before_running(refusal)
    assert not refused_before_running(ended)
    assert not refused_before_running(other)
    assert ends_stream_for_restart(refusal)
    assert ends_stream_for_restart(ended)
    assert not ends_stream_for_restart(other)


def test_idempotent_is_a_class_keyword_inherited_and_shown_in_the_document() -> None:
    assert method_spec(Get).idempotent
    assert not method_spec(Bump).idempotent

    class Child(Get):
        pass

    class NotAgain(Get, idempotent=False):
        pass

    assert method_spec(Child).idempotent
    assert not method_spec(NotAgain).idempotent
    with pytest.raises(TypeError, match="idempotent= takes True or False"):

        class Wrong(Method[int], idempotent="yes"):  # type: ignore[call-arg]
            pass

    document = openrpc_document([method_spec(Get), method_spec(Bump)], title="t", version="1")
    entries = {entry["name"]: entry for entry in document["methods"]}
    assert entries["t.Get"]["x-unixrpc-idempotent"] is True
    assert "x-unixrpc-idempotent" not in entries["t.Bump"]


def test_reconnect_needs_an_address_and_resume_needs_reconnect(sock_dir: str) -> None:
    import socket

    left, right = socket.socketpair(socket.AF_UNIX)
    with left, right:
        with pytest.raises(ValueError, match="reconnect needs an address"):
            Client(left, reconnect=True)
        with pytest.raises(ValueError, match="reconnect needs an address"):
            AsyncClient(left, reconnect=True)
        with Client(left) as client:
            with pytest.raises(ValueError, match="resume= opens the stream again"):
                client.stream(Watch(), resume=True)
            with pytest.raises(ValueError, match="on_connect is called on reconnections"):
                Client(left, on_connect=print)


# -- daemons in subprocesses -------------------------------------------------------------------


class Daemon:
    """tests/reconnect_daemon.py in its own process, on *backend*, at *path*
    (or under systemd-socket-activate listening there)."""

    def __init__(self, path: str, backend: str, *, activate: bool = False) -> None:
        self.path = path
        self.backend = backend
        self.activate = activate
        self.proc: subprocess.Popen[bytes] | None = None
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - closed by close()

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LISTEN_", "NOTIFY_"))}
        env["PYTHONPATH"] = os.pathsep.join([SDK, TESTS])  # this tree, not the venv's install
        argv = [sys.executable, DAEMON, self.path, self.backend]
        if self.activate:
            argv = [
                SOCKET_ACTIVATE,
                "-l",
                self.path,
                "-E",
                "PYTHONPATH",
                sys.executable,
                DAEMON,
                "-",
                self.backend,
            ]
        self.proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=self._log)

    def wait_serving(self) -> int:
        """Wait until a call succeeds; the daemon's pid."""
        deadline = time.monotonic() + 30
        while True:
            assert self.proc is not None
            assert self.proc.poll() is None, self.log()
            try:
                with Client(self.path, timeout=10) as client:
                    return client.call(Pid())
            except (SocketNotFoundError, SocketRefusedError, ConnectionBrokenError):
                assert time.monotonic() < deadline, "the daemon did not start"
                time.sleep(0.01)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def terminate(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)

    def log(self) -> str:
        self._log.seek(0)
        return self._log.read().decode(errors="replace")[-3000:]

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.kill()
        self._log.close()


@pytest.fixture
def daemon(sock_dir: str, server_backend: str) -> Any:
    made = Daemon(os.path.join(sock_dir, "d.sock"), server_backend)
    made.start()
    made.wait_serving()
    try:
        yield made
    finally:
        made.close()


class Side:
    """One async face for a reconnecting Client (driven from threads) and
    AsyncClient: what the load tests need."""

    def __init__(self, kind: str, client: Any) -> None:
        self.kind = kind
        self.client = client
        self.limiter = anyio.CapacityLimiter(128)

    async def call(self, method: Any) -> Any:
        if self.kind == "sync":
            box: list[Any] = []
            await anyio.to_thread.run_sync(lambda: box.append(self.client.call(method)), limiter=self.limiter)
            return box.pop()
        return await self.client.call(method)

    async def items(self, method: Any, count: int, resume: Any, seen: list[int]) -> tuple[int, int]:
        """Consume *count* items into *seen*; (resumes, gaps) of the stream.
        Raises EndedEarly when the stream ends before."""
        if self.kind == "sync":

            def run() -> tuple[int, int]:
                with self.client.stream(method, resume=resume) as stream:
                    for item in stream:
                        seen.append(item.seq)
                        if len(seen) == count:
                            return stream.resumes, stream.gaps
                raise EndedEarly

            return await anyio.to_thread.run_sync(run, limiter=self.limiter)
        async with self.client.stream(method, resume=resume) as stream:
            async for item in stream:
                seen.append(item.seq)
                if len(seen) == count:
                    return stream.resumes, stream.gaps
        raise EndedEarly


class EndedEarly(Exception):
    """A stream ended (a normal end) before the items the test wanted."""


@contextlib.asynccontextmanager
async def reconnecting(kind: str, path: str, **kwargs: Any) -> AsyncIterator[Side]:
    kwargs.setdefault("reconnect", FAST)
    kwargs.setdefault("timeout", 30.0)
    if kind == "sync":
        client = Client(path, **kwargs)
        try:
            yield Side(kind, client)
        finally:
            client.close()
    else:
        async with AsyncClient(path, **kwargs) as async_client:
            yield Side(kind, async_client)


def cursor(last: Event) -> Watch:
    return Watch(since=last.seq)


async def wait_until(predicate: Callable[[], bool]) -> None:
    with anyio.fail_after(30):
        while not predicate():
            await anyio.sleep(0.005)


@pytest.mark.server
@pytest.mark.parametrize("stop", ["kill-9", "sigterm"])
async def test_restart_under_load(client_kind: str, daemon: Daemon, stop: str, no_fd_leak: None) -> None:
    """64 calls in flight and 8 open streams when the daemon is killed (or
    stopped) and started again under the same path: every idempotent call
    returns its result, every other one returns or raises the documented
    error, the streams go on with every item once, descriptors sent with
    calls survive until answered, and nothing leaks."""
    results: dict[int, Any] = {}
    streams: list[list[int]] = [[] for _ in range(8)]
    counts: list[tuple[int, int]] = []
    ended_early: list[int] = []
    note = b"a note for the daemon"
    async with reconnecting(client_kind, daemon.path) as side:

        async def one(i: int) -> None:
            method: Any
            if i % 8 == 0:  # a descriptor handed over: closed only when the call is done
                memfd = os.memfd_create("note")
                os.write(memfd, note)
                method = ReadFd(fd=FileDescriptor.transfer(memfd), delay=0.2)
            elif i % 2:
                method = Get(n=i, delay=0.2)
            else:
                method = Bump(n=i, delay=0.2)
            try:
                results[i] = await side.call(method)
            except CallInterruptedError as exc:
                results[i] = exc

        async def consume(k: int) -> None:
            try:
                counts.append(await side.items(Watch(pace=0.003), 150, cursor, streams[k]))
            except EndedEarly:
                ended_early.append(k)

        async with anyio.create_task_group() as tg:
            for k in range(8):
                tg.start_soon(consume, k)
            for i in range(64):
                tg.start_soon(one, i)
            await wait_until(lambda: all(len(seen) >= 5 for seen in streams))
            if stop == "kill-9":
                daemon.kill()
            else:
                await anyio.to_thread.run_sync(daemon.terminate)
            daemon.start()
    assert len(results) == 64
    for i, result in sorted(results.items()):
        if i % 8 == 0:
            assert result == note.decode(), (i, result)
        elif i % 2:
            assert result == 2 * i, (i, result)
        else:
            assert result == i + 1 or isinstance(result, CallOutcomeUnknownError | CallNotRunError), (
                i,
                result,
            )
    assert not ended_early
    for seen in streams:
        assert seen == list(range(1, 151))
    assert all(gaps == 0 for _, gaps in counts)
    assert sum(resumes for resumes, _ in counts) >= 1


@pytest.mark.server
@pytest.mark.skipif(not os.path.exists(SOCKET_ACTIVATE), reason="systemd-socket-activate is not installed")
async def test_restart_under_systemd_socket_activate(
    client_kind: str, sock_dir: str, server_backend: str
) -> None:
    """Under systemd-socket-activate the path exists between the two
    daemons (connecting is refused), and the socket accepts before the new
    daemon runs: calls in flight and a resumed stream come through."""
    daemon = Daemon(os.path.join(sock_dir, "sa.sock"), server_backend, activate=True)
    daemon.start()
    try:
        first = await anyio.to_thread.run_sync(daemon.wait_serving)
        seen: list[int] = []
        async with reconnecting(client_kind, daemon.path) as side:
            results: list[Any] = []

            async def consume() -> None:
                await side.items(Watch(pace=0.003), 100, cursor, seen)

            async with anyio.create_task_group() as tg:
                tg.start_soon(consume)
                for i in range(8):
                    tg.start_soon(lambda i=i: _append(results, side.call(Get(n=i, delay=0.2))))
                await wait_until(lambda: len(seen) >= 5)
                daemon.kill()
                daemon.start()
            assert sorted(results) == [2 * i for i in range(8)]
            assert seen == list(range(1, 101))
            assert await side.call(Pid()) not in (first, None)
    finally:
        daemon.close()


async def _append(results: list[Any], call: Any) -> None:
    results.append(await call)


async def test_calls_wait_for_the_connection_and_the_hook_runs_first(
    client_kind: str, sock_dir: str, server_backend: str
) -> None:
    """A call made while the daemon is down waits for it (bounded by its
    timeout); the on_connect hook runs once per reconnection, before the
    waiting calls, and its own calls go through."""
    fds_before = len(open_fds())
    daemon = Daemon(os.path.join(sock_dir, "w.sock"), server_backend)
    daemon.start()
    await anyio.to_thread.run_sync(daemon.wait_serving)
    order: list[str] = []
    states: list[ConnectionState] = []
    threads_before: set[threading.Thread] = set()
    threads_after: set[threading.Thread] = set()
    try:
        if client_kind == "sync":

            def hook(client: Client) -> None:
                states.append(client.state)
                order.append(f"hook {client.call(Get(n=1))}")

            def run() -> None:
                with Client(daemon.path, reconnect=FAST, timeout=30, on_connect=hook) as client:
                    assert client.state is ConnectionState.CONNECTED
                    daemon.kill()
                    timer = threading.Timer(0.2, daemon.start)
                    timer.start()
                    order.append(f"call {client.call(Get(n=2))}")
                    timer.join()
                    assert (client.state, client.reconnects) == (ConnectionState.CONNECTED, 1)
                    daemon.kill()
                    with pytest.raises(
                        CallNotRunError, match=r"t\.Get did not run: its request was never sent"
                    ) as info:
                        client.call(Get(n=3), timeout=0.3)
                    assert info.value.request_sent is False
                assert client.state is ConnectionState.CLOSED

            threads_before = set(threading.enumerate())
            worker = threading.Thread(target=run)
            worker.start()
            await anyio.to_thread.run_sync(worker.join)
            threads_after = set(threading.enumerate())
        else:

            async def async_hook(client: AsyncClient) -> None:
                states.append(client.state)
                order.append(f"hook {await client.call(Get(n=1))}")

            async with AsyncClient(daemon.path, reconnect=FAST, timeout=30, on_connect=async_hook) as aclient:
                assert aclient.state is ConnectionState.CONNECTED
                daemon.kill()
                async with anyio.create_task_group() as tg:

                    async def later() -> None:
                        await anyio.sleep(0.2)
                        daemon.start()

                    tg.start_soon(later)
                    order.append(f"call {await aclient.call(Get(n=2))}")
                assert (aclient.state, aclient.reconnects) == (ConnectionState.CONNECTED, 1)
                daemon.kill()
                with pytest.raises(CallNotRunError, match=r"t\.Get did not run: its request was never sent"):
                    await aclient.call(Get(n=3), timeout=0.3)
            assert aclient.state is ConnectionState.CLOSED
    finally:
        daemon.close()
    assert order == ["hook 2", "call 4"]
    assert states == [ConnectionState.RECONNECTING]
    assert len(open_fds()) == fds_before
    # the client starts no thread (the Timer ended); compared by thread, not by count: a
    # thread of an earlier test in this process (an idle worker of a closed event loop's
    # pool) may end meanwhile, which a count would take for one of ours
    assert threads_after - threads_before == set()


async def test_a_call_in_flight_when_the_daemon_stays_away(client_kind: str, daemon: Daemon) -> None:
    """The daemon is killed and not started again: an idempotent call in
    flight and a non-idempotent one raise CallOutcomeUnknownError (sent, no
    reply) once the policy's deadline passes; the client is disconnected,
    and a later call tries again (and fails the same way, without hanging)."""
    policy = ReconnectPolicy(initial_delay=0.01, max_delay=0.05, deadline=0.3)
    async with reconnecting(client_kind, daemon.path, reconnect=policy) as side:
        errors: list[CallInterruptedError] = []

        async def one(method: Any) -> None:
            with pytest.raises(CallInterruptedError) as info:
                await side.call(method)
            errors.append(info.value)

        async with anyio.create_task_group() as tg:
            tg.start_soon(one, Get(n=1, delay=5))
            tg.start_soon(one, Bump(n=1, delay=5))
            await anyio.sleep(0.1)
            daemon.kill()
        by_method = {error.method: error for error in errors if isinstance(error, CallOutcomeUnknownError)}
        assert set(by_method) == {"t.Get", "t.Bump"}
        assert all(error.request_sent for error in by_method.values())
        # at once, the connection's end as its cause
        assert "its method is not idempotent" in str(by_method["t.Bump"])
        assert isinstance(by_method["t.Bump"].__cause__, ConnectionBrokenError)
        # once reconnecting gave up, the last connect's error as its cause
        assert "reconnecting gave up" in str(by_method["t.Get"])
        assert isinstance(by_method["t.Get"].__cause__, SocketNotFoundError | SocketRefusedError)
        assert side.client.state is ConnectionState.DISCONNECTED
        with pytest.raises(CallNotRunError, match="reconnecting gave up"):
            await side.call(Get(n=2))


async def test_a_stream_without_a_cursor_resumes_and_counts_the_gap(client_kind: str, daemon: Daemon) -> None:
    seen: list[int] = []
    async with reconnecting(client_kind, daemon.path) as side, anyio.create_task_group() as tg:
        result: list[tuple[int, int]] = []

        async def consume() -> None:
            result.append(await side.items(Watch(pace=0.003), 40, True, seen))

        tg.start_soon(consume)
        await wait_until(lambda: len(seen) >= 5)
        daemon.kill()
        daemon.start()
    ((resumes, gaps),) = result
    assert resumes >= 1  # more when a new connection is lost again while the daemon starts
    assert gaps == resumes  # the same request each time: each reopening may have missed items
    runs: list[list[int]] = []  # each opening starts over from 1, and goes on without a hole
    for seq in seen:
        if seq == 1:
            runs.append([])
        runs[-1].append(seq)
    assert len(runs) >= 2
    assert all(run == list(range(1, len(run) + 1)) for run in runs)


async def test_a_stream_without_resume_ends_with_the_connection(client_kind: str, daemon: Daemon) -> None:
    async with reconnecting(client_kind, daemon.path) as side:
        seen: list[int] = []

        async def consume() -> None:
            with pytest.raises(ConnectionBrokenError):
                await side.items(Watch(pace=0.003), 10_000, None, seen)

        async with anyio.create_task_group() as tg:
            tg.start_soon(consume)
            await wait_until(lambda: len(seen) >= 3)
            daemon.kill()
            daemon.start()
        assert await side.call(Get(n=5)) == 10  # the client itself reconnected
