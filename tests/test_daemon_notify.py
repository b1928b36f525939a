"""sd_notify over real datagrams: a test binds an AF_UNIX SOCK_DGRAM socket (a
path or an abstract name), points NOTIFY_SOCKET at it, and reads what
notify() and Notifier send, with the sender's credentials as systemd sees
them; and what a server says (READY=1 and STATUS= counting methods as the log
does, back to the serving status after a reload), on every engine."""

from __future__ import annotations

import itertools
import logging
import os
import re
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import pytest

from daemon_support import Manager, bind_manager
from unixrpc import Client, Method, Server, UnixSocketAddress, notify
from unixrpc.daemon import Notifier
from unixrpc.server.lifecycle import Lifecycle

_names = itertools.count()


@pytest.fixture(params=["path", "abstract"])
def manager(
    request: pytest.FixtureRequest, sock_dir: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Manager]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if request.param == "path":
        notify_socket = os.path.join(sock_dir, "notify")
        sock.bind(notify_socket)
    else:
        name = f"unixrpc-notify-{os.getpid()}-{next(_names)}"
        sock.bind(b"\0" + name.encode())
        notify_socket = "@" + name
    monkeypatch.setenv("NOTIFY_SOCKET", notify_socket)
    for name in ("WATCHDOG_USEC", "WATCHDOG_PID"):
        monkeypatch.delenv(name, raising=False)
    with sock:
        yield Manager(sock, notify_socket)


# -- notify() -----------------------------------------------------------------------------------


def test_notify_sends_one_datagram(manager: Manager, no_fd_leak: None) -> None:
    assert notify("READY=1") is True
    assert manager.receive()[:2] == (b"READY=1", os.getpid())
    assert notify(ready=True, status="serving 3 methods") is True
    assert manager.receive()[0] == b"READY=1\nSTATUS=serving 3 methods"
    assert notify("STATUS=reloading", "RELOADING=1", monotonic_usec=12, errno=5) is True
    assert manager.receive()[0] == b"STATUS=reloading\nRELOADING=1\nMONOTONIC_USEC=12\nERRNO=5"
    assert manager.nothing_pending()


def test_notify_passes_descriptors(manager: Manager, no_fd_leak: None) -> None:
    read_end, write_end = os.pipe()
    try:
        assert notify("FDSTORE=1", fdname="cache", fds=[write_end]) is True
        data, pid, fds = manager.receive()
        assert (data, pid) == (b"FDSTORE=1\nFDNAME=cache", os.getpid())
        [received] = fds
        os.write(received, b"kept by the manager")
        os.close(received)
        assert os.read(read_end, 100) == b"kept by the manager"
    finally:
        os.close(read_end)
        os.close(write_end)


def test_notify_without_a_manager_is_a_no_op(monkeypatch: pytest.MonkeyPatch, no_fd_leak: None) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert notify("READY=1") is False
    monkeypatch.setenv("NOTIFY_SOCKET", "")
    assert notify(stopping=True) is False


@pytest.mark.parametrize(
    ("states", "fields", "message"),
    [
        ((), {}, "nothing to notify: give states such as 'READY=1' or fields such as ready=True"),
        (("READY",), {}, "'READY' is not a NAME=value assignment (for example 'READY=1')"),
        (("ready=1",), {}, "'ready=1' is not a NAME=value assignment"),
        (("STATUS=a\nREADY=1",), {}, "contains a newline; send several states instead"),
        ((), {"status": "a\nb"}, "the value of STATUS contains a newline"),
        ((), {"ready": False}, "ready=False is not a state: leave it out"),
        ((), {"not-a-name": 1}, "'not-a-name' is not a notification field name"),
    ],
)
def test_malformed_notifications_raise(
    manager: Manager, states: tuple[str, ...], fields: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        notify(*states, **fields)  # type: ignore[arg-type]
    assert manager.nothing_pending()


def test_send_failures_are_logged_not_raised(
    sock_dir: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, no_fd_leak: None
) -> None:
    caplog.set_level(logging.DEBUG, logger="unixrpc.daemon")
    missing = os.path.join(sock_dir, "gone")
    for value, error in [
        (missing, "No such file or directory"),
        ("relative/notify", "is neither an absolute path nor an @abstract name"),
        ("/" + "x" * 200, "AF_UNIX path too long"),
        ("@unixrpc-nobody-listens-here", "Connection refused"),
    ]:
        monkeypatch.setenv("NOTIFY_SOCKET", value)
        caplog.clear()
        assert notify("READY=1") is False
        [record] = caplog.records
        assert record.levelno == logging.WARNING
        assert record.getMessage().startswith(f"cannot notify the service manager at {value}: ")
        assert error in record.getMessage()


def test_a_full_manager_queue_does_not_block_for_long(manager: Manager, no_fd_leak: None) -> None:
    manager.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)  # the smallest queue allowed
    for _ in range(10_000):
        if not notify(status="x" * 1000):
            break
    else:
        pytest.fail("the queue never filled")


def test_a_child_process_notifies_with_its_own_pid(manager: Manager) -> None:
    child = subprocess.run(
        [sys.executable, "-c", "import os, unixrpc; print(os.getpid(), unixrpc.notify(ready=True))"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    pid, sent = child.stdout.split()
    assert sent == "True"
    assert manager.receive()[:2] == (b"READY=1", int(pid))


# -- Notifier -----------------------------------------------------------------------------------


def test_notifier_states(manager: Manager, no_fd_leak: None) -> None:
    notifier = Notifier()
    assert notifier.enabled
    assert notifier.socket_path == manager.notify_socket
    assert notifier.ready() is True
    assert manager.receive()[0] == b"READY=1"
    assert notifier.ready("serving on /run/kv.sock")
    assert manager.receive()[0] == b"READY=1\nSTATUS=serving on /run/kv.sock"
    assert notifier.status("3 connections,\n2 calls")
    assert manager.receive()[0] == b"STATUS=3 connections, 2 calls"
    assert notifier.stopping("stopping: 2 calls in flight")
    assert manager.receive()[0] == b"STOPPING=1\nSTATUS=stopping: 2 calls in flight"
    assert notifier.watchdog()
    assert manager.receive()[0] == b"WATCHDOG=1"
    assert notifier.extend_timeout(2.5)
    assert manager.receive()[0] == b"EXTEND_TIMEOUT_USEC=2500000"
    assert notifier.send("CUSTOM=1", mainpid=os.getpid())
    assert manager.receive()[0] == f"CUSTOM=1\nMAINPID={os.getpid()}".encode()


def test_notifier_reloading_carries_the_monotonic_time(manager: Manager) -> None:
    notifier = Notifier()
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert notifier.reloading("reloading the configuration")
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    lines = manager.receive()[0].decode().split("\n")
    assert lines[0] == "RELOADING=1"
    assert lines[2] == "STATUS=reloading the configuration"
    name, _, usec = lines[1].partition("=")
    assert name == "MONOTONIC_USEC"
    assert before <= int(usec) <= after


def test_notifier_reads_the_environment_once(manager: Manager, monkeypatch: pytest.MonkeyPatch) -> None:
    notifier = Notifier()
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert notifier.ready(), "made while NOTIFY_SOCKET was set: keeps notifying"
    assert manager.receive()[0] == b"READY=1"
    disabled = Notifier()
    assert not disabled.enabled
    assert disabled.ready() is False
    assert disabled.watchdog() is False
    assert disabled.watchdog_interval() is None
    from_mapping = Notifier({"NOTIFY_SOCKET": manager.notify_socket})
    assert from_mapping.stopping()
    assert manager.receive()[0] == b"STOPPING=1"


def test_notifier_can_unset_the_environment(manager: Manager, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    notifier = Notifier(unset_environment=True)
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        assert name not in os.environ
    assert notifier.watchdog_interval() == 0.5
    assert notifier.watchdog()
    assert manager.receive()[0] == b"WATCHDOG=1"
    assert notify("READY=1") is False, "children (and notify()) no longer see it"


@pytest.mark.parametrize(
    ("usec", "pid", "interval"),
    [
        ("5000000", None, 2.5),
        ("5000000", "self", 2.5),
        ("30000000", "1", None),  # WatchdogSec= for another process
        (None, None, None),
        ("0", None, None),
        ("soon", None, None),
        ("5000000", "me", None),
    ],
)
def test_watchdog_interval_is_half_of_watchdog_usec(
    manager: Manager,
    monkeypatch: pytest.MonkeyPatch,
    usec: str | None,
    pid: str | None,
    interval: float | None,
) -> None:
    if usec is not None:
        monkeypatch.setenv("WATCHDOG_USEC", usec)
    if pid is not None:
        monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()) if pid == "self" else pid)
    assert Notifier().watchdog_interval() == interval


def test_watchdog_pid_is_checked_at_call_time(manager: Manager, monkeypatch: pytest.MonkeyPatch) -> None:
    """A forked child inherits the notifier but is not the process systemd watches."""
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    notifier = Notifier()
    read_end, write_end = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: fork with threads alive
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.write(write_end, repr(notifier.watchdog_interval()).encode())
        os._exit(0)
    os.close(write_end)
    try:
        assert os.read(read_end, 100) == b"None"
    finally:
        os.close(read_end)
        os.waitpid(pid, 0)
    assert notifier.watchdog_interval() == 1.0


def test_notifier_logs_a_failing_manager_once(
    sock_dir: str, caplog: pytest.LogCaptureFixture, no_fd_leak: None
) -> None:
    caplog.set_level(logging.DEBUG, logger="unixrpc.daemon")
    path = os.path.join(sock_dir, "notify")
    notifier = Notifier({"NOTIFY_SOCKET": path})
    for _ in range(3):
        assert notifier.watchdog() is False
    assert [r.levelno for r in caplog.records] == [logging.WARNING, logging.DEBUG, logging.DEBUG]
    caplog.clear()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        assert notifier.watchdog() is True
        assert sock.recv(100) == b"WATCHDOG=1"
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.INFO, f"notifying the service manager at {path} works again")
    ]


# -- what the server says: STATUS= on every engine ---------------------------------------------


class Get(Method[str]):
    key: str


class Put(Method[None]):
    key: str
    value: str


class Size(Method[int]):
    pass


class Reload:
    """An on_reload hook, plain or async, that raises when told to."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.fail = False
        self.runs = 0

    def run(self) -> None:
        self.runs += 1
        if self.fail:
            raise RuntimeError("bad configuration")

    def hook(self) -> Callable[[], object]:
        if self.kind == "sync":
            return self.run

        async def hook() -> None:
            await anyio.sleep(0)
            self.run()

        return hook


def kv_server(**kwargs: Any) -> Server:
    server = Server(**kwargs)

    @server.method(Get)
    def get(request: Get) -> str:
        return request.key

    @server.method(Put)
    def put(request: Put) -> None:
        return None

    @server.method(Size)
    def size(request: Size) -> int:
        return 0

    return server


@pytest.fixture
def service_manager(sock_dir: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Manager]:
    """The manager's end of NOTIFY_SOCKET, for a server in this process."""
    manager = bind_manager(os.path.join(sock_dir, "notify"))
    monkeypatch.setenv("NOTIFY_SOCKET", manager.notify_socket)
    for name in ("WATCHDOG_USEC", "WATCHDOG_PID"):
        monkeypatch.delenv(name, raising=False)
    with manager.sock:
        yield manager


def status_of(lines: list[bytes]) -> str:
    [status] = [line for line in lines if line.startswith(b"STATUS=")]
    return status.decode().partition("=")[2]


@pytest.mark.server
@pytest.mark.parametrize("hook_kind", ["sync", "async"])
def test_status_counts_methods_as_the_log_does_and_comes_back_after_a_reload(
    sock_dir: str,
    service_manager: Manager,
    server_backend: str,
    hook_kind: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="unixrpc.server")
    reload = Reload(hook_kind)
    server = kv_server(on_reload=reload.hook())
    assert len(server.methods) > 3, "the library's own unixrpc.* methods are served too"
    path = os.path.join(sock_dir, "kv.sock")
    serving = f"serving 3 methods on {path}"
    with server.serve_in_thread(path, backend=server_backend):
        assert status_of(service_manager.wait_for(b"READY=1")[0]) == serving
        assert [r.getMessage() for r in caplog.records if r.getMessage().startswith("serving")] == [serving]

        server.reload()
        lines, pid = service_manager.wait_for(b"RELOADING=1")
        assert (status_of(lines), pid) == ("reloading", os.getpid())
        assert status_of(service_manager.wait_for(b"READY=1")[0]) == serving, "not 'reloaded' for good"

        reload.fail = True
        server.reload()
        service_manager.wait_for(b"RELOADING=1")
        failed = status_of(service_manager.wait_for(b"READY=1")[0])
        assert failed == serving + " (the last reload failed: see the log)"
        [error] = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert error.getMessage() == "the on_reload hook raised"
        assert error.exc_info is not None
        assert str(error.exc_info[1]) == "bad configuration"

        reload.fail = False
        server.reload()
        service_manager.wait_for(b"RELOADING=1")
        assert status_of(service_manager.wait_for(b"READY=1")[0]) == serving, "a good reload clears it"
        with Client(path, timeout=10) as client:
            assert client.call(Get(key="still serving")) == "still serving"
    assert status_of(service_manager.wait_for(b"STOPPING=1")[0]) == "shutting down"
    assert reload.runs == 3


def test_no_ready_for_a_reload_without_a_hook(service_manager: Manager, sock_dir: str) -> None:
    server = kv_server()
    lifecycle = Lifecycle(server, lambda: None)
    lifecycle.started([UnixSocketAddress.from_pathname(os.path.join(sock_dir, "kv.sock"))])
    assert status_of(service_manager.receive()[0].split(b"\n")) == f"serving 3 methods on {sock_dir}/kv.sock"
    lifecycle.request_reload()
    assert lifecycle.reload() is None
    lifecycle.reloaded()
    assert service_manager.nothing_pending(), "no RELOADING=1 was sent: no READY=1 either"
