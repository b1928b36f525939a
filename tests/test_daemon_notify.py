"""sd_notify over real datagrams: a test binds an AF_UNIX SOCK_DGRAM socket (a
path or an abstract name), points NOTIFY_SOCKET at it, and reads what
notify() and Notifier send, with the sender's credentials as systemd sees
them."""

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
from collections.abc import Iterator

import pytest

from daemon_support import Manager
from unixrpc import notify
from unixrpc.daemon import Notifier

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
