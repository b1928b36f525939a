"""The server under systemd, end to end: the daemon building blocks
(unixrpc.daemon) as Server.serve() / serve_forever() / serve_in_thread()
use them (docs/daemon.md).

* ``serve(address=None, *, listener=None, listen_name=None, task_status=...)``
  and ``serve_forever(address=None, *, listener=None, listen_name=None,
  backend=...)``. With nothing given, every socket systemd passed
  (``inherited_listeners()``); ``listen_name="api"`` the passed sockets of
  that name; ``listener=sock`` a socket the caller bound (``adopt_listener``);
  an address binds it, unless systemd passed a socket listening there
  (``inherited_listener_at``), which is then served instead. Sources combine:
  ``serve(path, listen_name="api")`` serves both.
* ``Server(on_reload=callable, idle_timeout=seconds)``.
* Under ``NOTIFY_SOCKET``: ``READY=1`` (with ``STATUS=``) once every listener
  accepts, ``STOPPING=1`` when shutdown starts, ``WATCHDOG=1`` from the
  serving loop every ``Notifier.watchdog_interval()``, SIGHUP with an
  ``on_reload`` hook: ``RELOADING=1`` + ``MONOTONIC_USEC=``, the hook, ``READY=1``.

Real inherited fds (the launcher of daemon_support, and the real
systemd-socket-activate), real datagrams, real signals, in a daemon process
on every backend; the tests in this process run on every engine (marker
``server``).
"""

from __future__ import annotations

import functools
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

from daemon_support import Manager, bind_manager, spawn_activated, unix_listener
from rpc_support import Add, make_server
from unixrpc import AsyncClient, Client, Method, Server, SocketActivationError, UnixSocketAddress

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(ROOT, "examples", "systemd")
SOCKET_ACTIVATE = "/usr/bin/systemd-socket-activate"

DAEMON = """
import time
from unixrpc import Method, Server

class Add(Method[int]):
    a: int
    b: int

class Block(Method[None]):
    seconds: float

def on_reload() -> None:
    print("reloaded", flush=True)

server = Server(on_reload=on_reload, shutdown_grace=5)

@server.method(Add)
def add(request: Add) -> int:
    return request.a + request.b

backend, how = sys.argv[1], sys.argv[2]
if backend != "threads":
    @server.method(Block)
    async def block(request: Block) -> None:
        time.sleep(request.seconds)  # wedges the serving loop: the watchdog pings must stop

if how == "no-address":
    server.serve_forever(backend=backend)
elif how.startswith("name="):
    server.serve_forever(listen_name=how[5:], backend=backend)
elif how.startswith("path="):
    server.serve_forever(how[5:], backend=backend)
elif how.startswith("path+name="):
    path, name = how[10:].split(",")
    server.serve_forever(path, listen_name=name, backend=backend)
print("exited cleanly", flush=True)
"""


class Block(Method[None]):
    """Blocks the daemon's event loop for *seconds* (the daemon's Block)."""

    seconds: float


@pytest.fixture
def manager(sock_dir: str) -> Iterator[Manager]:
    notify = bind_manager(os.path.join(sock_dir, "notify"))
    with notify.sock:
        yield notify


def start(
    manager: Manager,
    fds: list[int],
    backend: str,
    how: str,
    *,
    names: str | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.Popen[str]:
    return spawn_activated(
        DAEMON,
        fds,
        names=names,
        env={"NOTIFY_SOCKET": manager.notify_socket, **(env or {})},
        args=[backend, how],
    )


def stop(proc: subprocess.Popen[str], manager: Manager) -> str:
    proc.send_signal(signal.SIGTERM)
    manager.wait_for(b"STOPPING=1")
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "exited cleanly" in out
    return out


def reap(proc: subprocess.Popen[str]) -> None:
    """Kill the daemon if a failed test left it running, and close its pipes."""
    if proc.poll() is None:
        proc.kill()
    proc.communicate()


def call_add(path: str, a: int = 1, b: int = 2, timeout: float = 10) -> int:
    with Client(path, timeout=timeout) as client:
        return client.call(Add(a=a, b=b))


@pytest.mark.server
def test_no_address_serves_the_socket_systemd_passed(
    sock_dir: str, manager: Manager, server_backend: str
) -> None:
    path = os.path.join(sock_dir, "kv.sock")
    with unix_listener(path) as listener:
        os.chmod(path, 0o640)
        inode = os.stat(path).st_ino
        proc = start(manager, [listener.fileno()], server_backend, "no-address")
    try:
        lines, pid = manager.wait_for(b"READY=1")
        assert pid == proc.pid
        assert any(line.startswith(b"STATUS=") for line in lines)
        assert call_add(path) == 3
        stop(proc, manager)
    finally:
        reap(proc)
    st = os.stat(path)
    assert (st.st_ino, stat.S_IMODE(st.st_mode)) == (inode, 0o640), "never unlinked, never chmod-ed"


@pytest.mark.server
def test_every_passed_socket_is_served(sock_dir: str, manager: Manager, server_backend: str) -> None:
    paths = [os.path.join(sock_dir, name) for name in ("a.sock", "b.sock")]
    with unix_listener(paths[0]) as first, unix_listener(paths[1]) as second:
        proc = start(manager, [first.fileno(), second.fileno()], server_backend, "no-address")
    try:
        manager.wait_for(b"READY=1")
        assert [call_add(path, 2, n) for n, path in enumerate(paths)] == [2, 3]
        stop(proc, manager)
    finally:
        reap(proc)


@pytest.mark.server
def test_listen_name_selects_the_socket(sock_dir: str, manager: Manager, server_backend: str) -> None:
    api, admin = os.path.join(sock_dir, "api.sock"), os.path.join(sock_dir, "admin.sock")
    with unix_listener(api) as api_sock, unix_listener(admin) as admin_sock:
        proc = start(
            manager, [api_sock.fileno(), admin_sock.fileno()], server_backend, "name=admin", names="api:admin"
        )
    try:
        manager.wait_for(b"READY=1")
        assert call_add(admin) == 3
        with pytest.raises(TimeoutError):
            call_add(api, timeout=0.5)  # queued in the backlog, never served
        stop(proc, manager)
    finally:
        reap(proc)


@pytest.mark.server
def test_the_address_systemd_passed_is_served_not_bound_again(
    sock_dir: str, manager: Manager, server_backend: str
) -> None:
    """Issue 12: serve_forever(path) under systemd-socket-activate -l path."""
    path = os.path.join(sock_dir, "kv.sock")
    with unix_listener(path) as listener:
        inode = os.stat(path).st_ino
        proc = start(manager, [listener.fileno()], server_backend, f"path={path}")
    try:
        manager.wait_for(b"READY=1")
        assert call_add(path) == 3
        stop(proc, manager)
    finally:
        reap(proc)
    assert os.stat(path).st_ino == inode


@pytest.mark.server
def test_a_path_and_an_inherited_socket_on_one_server(
    sock_dir: str, manager: Manager, server_backend: str
) -> None:
    inherited, bound = os.path.join(sock_dir, "api.sock"), os.path.join(sock_dir, "own.sock")
    with unix_listener(inherited) as listener:
        proc = start(manager, [listener.fileno()], server_backend, f"path+name={bound},api", names="api")
    try:
        manager.wait_for(b"READY=1")
        assert call_add(inherited) == 3
        assert call_add(bound) == 3
        stop(proc, manager)
    finally:
        reap(proc)
    assert os.path.exists(inherited), "systemd's socket stays"
    assert not os.path.exists(bound), "our own socket file is removed"


@pytest.mark.server
def test_ready_is_sent_once_listening(sock_dir: str, manager: Manager, server_backend: str) -> None:
    path = os.path.join(sock_dir, "own.sock")
    proc = start(manager, [], server_backend, f"path={path}")  # not socket-activated: binds the path
    try:
        manager.wait_for(b"READY=1")
        # no sleep, no retry: READY means a client can connect now
        assert call_add(path) == 3
        stop(proc, manager)
    finally:
        reap(proc)
    assert not os.path.exists(path)


@pytest.mark.server
@pytest.mark.anyio_engine_only  # the threads engine has no event loop a handler could wedge
def test_watchdog_pings_from_the_serving_loop_and_stop_when_it_wedges(
    sock_dir: str, manager: Manager, server_backend: str
) -> None:
    path = os.path.join(sock_dir, "kv.sock")
    with unix_listener(path) as listener:
        proc = start(
            manager, [listener.fileno()], server_backend, "no-address", env={"WATCHDOG_USEC": "400000"}
        )
    try:
        manager.wait_for(b"READY=1")
        for _ in range(3):
            assert manager.wait_for(b"WATCHDOG=1", timeout=5)[1] == proc.pid

        def wedge() -> None:
            with Client(path, timeout=20) as client:
                client.call(Block(seconds=2))  # answered once the loop is free again

        thread = threading.Thread(target=wedge)
        thread.start()
        time.sleep(0.4)
        manager.drain()
        time.sleep(1.0)  # the loop is blocked for 2 s: five ping intervals here
        assert b"WATCHDOG=1" not in manager.drain(), "a wedged server must stop pinging"
        thread.join(timeout=20)
        assert manager.wait_for(b"WATCHDOG=1", timeout=5)[1] == proc.pid, "pings resume"
        stop(proc, manager)
    finally:
        reap(proc)


@pytest.mark.server
def test_no_watchdog_pings_for_another_pid(sock_dir: str, manager: Manager, server_backend: str) -> None:
    path = os.path.join(sock_dir, "kv.sock")
    with unix_listener(path) as listener:
        proc = start(
            manager,
            [listener.fileno()],
            server_backend,
            "no-address",
            env={"WATCHDOG_USEC": "200000", "WATCHDOG_PID": "1"},
        )
    try:
        manager.wait_for(b"READY=1")
        assert call_add(path) == 3
        time.sleep(0.5)
        assert b"WATCHDOG=1" not in manager.drain()
        stop(proc, manager)
    finally:
        reap(proc)


@pytest.mark.server
def test_sighup_reloads_the_way_notify_reload_wants(
    sock_dir: str, manager: Manager, server_backend: str
) -> None:
    path = os.path.join(sock_dir, "kv.sock")
    with unix_listener(path) as listener:
        proc = start(manager, [listener.fileno()], server_backend, "no-address")
    try:
        manager.wait_for(b"READY=1")
        before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        proc.send_signal(signal.SIGHUP)
        lines, pid = manager.wait_for(b"RELOADING=1")
        assert pid == proc.pid
        [usec] = [line for line in lines if line.startswith(b"MONOTONIC_USEC=")]
        assert int(usec.split(b"=")[1]) >= before
        manager.wait_for(b"READY=1")
        assert call_add(path) == 3, "still serving after the reload"
        out = stop(proc, manager)
    finally:
        reap(proc)
    assert out.count("reloaded") == 1


# -- in this process -----------------------------------------------------------------------------


@asynccontextmanager
async def served(server: Server, engine: str, **where: Any) -> AsyncIterator[UnixSocketAddress]:
    """Serve *server* for the block on the test's engine (*where* as for
    ``serve``): in this event loop on the anyio engine, in a thread on the
    threads engine. Yields the first listener's address."""
    if engine == "threads":
        with server.serve_in_thread(backend="threads", **where) as address:
            yield address
        return
    async with anyio.create_task_group() as task_group:
        yield await task_group.start(functools.partial(server.serve, **where))
        server.shutdown()


async def serve_once(server: Server, engine: str, **where: Any) -> None:
    """Start serving on the test's engine, for what fails before it listens."""
    if engine == "threads":
        with server.serve_in_thread(backend="threads", **where):
            pytest.fail("serving started")
    else:
        await server.serve(**where)


@pytest.mark.anyio
@pytest.mark.server
async def test_serve_a_handed_over_listener(sock_dir: str, server_engine: str) -> None:
    path = os.path.join(sock_dir, "given.sock")
    sock = unix_listener(path)
    os.chmod(path, 0o644)
    async with served(make_server(), server_engine, listener=sock) as address:
        assert str(address) == path
        async with AsyncClient(path) as client:
            assert await client.call(Add(a=2, b=3)) == 5
    assert sock.fileno() == -1, "the server took the socket over and closed it"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644, "never chmod-ed, never unlinked"


@pytest.mark.anyio
@pytest.mark.server
async def test_serve_refuses_a_socket_it_cannot_serve(server_engine: str) -> None:
    with (
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as dgram,
        pytest.raises(SocketActivationError, match="is a SOCK_DGRAM socket, not SOCK_STREAM"),
    ):
        await serve_once(make_server(), server_engine, listener=dgram)


@pytest.mark.anyio
@pytest.mark.server
async def test_no_address_without_activation_raises_the_error_itself(server_engine: str) -> None:
    with pytest.raises(SocketActivationError, match=r"^no socket to serve: LISTEN_FDS is not set"):
        await serve_once(make_server(), server_engine)


# -- the example, under the real systemd-socket-activate -----------------------------------------


@pytest.mark.skipif(not os.path.exists(SOCKET_ACTIVATE), reason="systemd-socket-activate is not installed")
def test_example_under_systemd_socket_activate(sock_dir: str, manager: Manager) -> None:
    path = os.path.join(sock_dir, "kv.sock")
    state = os.path.join(sock_dir, "state")
    os.mkdir(state)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LISTEN_", "NOTIFY_", "WATCHDOG_"))}
    env |= {"NOTIFY_SOCKET": manager.notify_socket, "STATE_DIRECTORY": state, "WATCHDOG_USEC": "2000000"}
    proc = subprocess.Popen(
        [
            SOCKET_ACTIVATE,
            "-l",
            path,
            *("-E", "NOTIFY_SOCKET", "-E", "STATE_DIRECTORY", "-E", "WATCHDOG_USEC", "-E", "PATH"),
            sys.executable,
            os.path.join(EXAMPLE, "kvstore.py"),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )

    def kvctl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, os.path.join(EXAMPLE, "kvctl.py"), path, *args],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    try:
        deadline = time.monotonic() + 20
        while not os.path.exists(path):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "systemd-socket-activate did not listen"
            time.sleep(0.02)
        stored = kvctl("set", "greeting", "hello")  # the first connection starts the daemon
        assert (stored.returncode, stored.stdout) == (0, "null\n"), stored.stderr
        _, pid = manager.wait_for(b"READY=1")
        assert pid == proc.pid, "systemd-socket-activate execs the daemon in its own process"
        assert manager.wait_for(b"WATCHDOG=1", timeout=5)[1] == pid
        assert kvctl("get", "greeting").stdout == '"hello"\n'
        missing = kvctl("get", "nothing")
        assert (missing.returncode, missing.stderr) == (1, "no such key: nothing\n")
        proc.send_signal(signal.SIGTERM)
        manager.wait_for(b"STOPPING=1")
        _, err = proc.communicate(timeout=30)
    finally:
        reap(proc)
    assert proc.returncode == 0, err
    assert os.path.exists(path), "the socket belongs to systemd-socket-activate"
    with open(os.path.join(state, "kv.json")) as file:
        assert file.read() == '{"greeting": "hello"}'
