"""Socket activation with real inherited descriptors: a child process gets
listening sockets at fd 3, 4, ... and the LISTEN_* variables (set by a small
launcher that dup2()s them into place and exec()s, or by the real
systemd-socket-activate), and reports what unixrpc.daemon.activation made of
them. Handed-over sockets (adopt_listener) and the binding's refusal to probe
its own listener are tested in this process."""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from conftest import open_fds
from daemon_support import PRELUDE, run_activated, unix_listener
from unixrpc import SocketActivationError, listen_fds
from unixrpc.daemon import adopt_listener
from unixrpc.server.binding import bind_listener

SOCKET_ACTIVATE = "/usr/bin/systemd-socket-activate"


@pytest.fixture
def listener(sock_dir: str) -> Iterator[socket.socket]:
    with unix_listener(os.path.join(sock_dir, "kv.sock")) as sock:
        yield sock


# -- the variables -------------------------------------------------------------------------------


def test_one_passed_socket_is_served_as_is(sock_dir: str, listener: socket.socket) -> None:
    path = listener.getsockname()
    os.chmod(path, 0o640)
    inode = os.stat(path).st_ino
    # a client that connected before the daemon started: systemd queued it
    with socket.socket(socket.AF_UNIX) as early:
        early.connect(path)
        report = run_activated(
            """
            passed = listen_fds()
            cloexec = bool(fcntl.fcntl(3, fcntl.F_GETFD) & fcntl.FD_CLOEXEC)
            env_after = sorted(k for k in os.environ if k.startswith("LISTEN_"))
            [listener] = inherited_listeners()
            conn, _ = listener.socket.accept()
            conn.sendall(b"served by the inherited socket")
            conn.close()
            listener.close()
            listener.close()
            report(
                passed=passed, cloexec=cloexec, env_after=env_after, child_env=listen_env_of_a_child(),
                address=str(listener.address), adopted=listener.adopted, name=listener.name,
                again=listen_fds(), closed=not os.path.exists("/proc/self/fd/3"),
            )
            """,
            [listener.fileno()],
        )
        assert early.recv(100) == b"served by the inherited socket"
    assert report["passed"] == [[3, "unknown"]]
    assert report["cloexec"] is True
    assert report["env_after"] == [], "LISTEN_* are removed once read"
    assert report["child_env"] == "[]", "child processes do not inherit them"
    assert report["again"] == [[3, "unknown"]], "a second read sees the same sockets"
    assert report["address"] == path
    assert report["adopted"] is True
    assert report["name"] == "unknown"
    assert report["closed"] is True
    # never unlinked, never chmod-ed
    st = os.stat(path)
    assert stat.S_ISSOCK(st.st_mode)
    assert (st.st_ino, stat.S_IMODE(st.st_mode)) == (inode, 0o640)


def test_sockets_are_selected_by_name(sock_dir: str) -> None:
    with (
        unix_listener(os.path.join(sock_dir, "api.sock")) as api,
        unix_listener(os.path.join(sock_dir, "admin.sock")) as admin,
        unix_listener(os.path.join(sock_dir, "api2.sock")) as api2,
    ):
        report = run_activated(
            """
            admin = inherited_listeners("admin")
            again = error_of(inherited_listeners, "admin")
            missing = error_of(inherited_listeners, "metrics")
            apis = inherited_listeners("api")
            left = error_of(inherited_listeners)
            report(
                admin=[(l.socket.fileno(), l.name, str(l.address)) for l in admin],
                apis=[(l.socket.fileno(), l.name, str(l.address)) for l in apis],
                again=again, missing=missing, left=left,
            )
            """,
            [api.fileno(), admin.fileno(), api2.fileno()],
            names="api:admin:api",
        )
    assert report["admin"] == [[4, "admin", admin_path(sock_dir)]]
    # two ListenStream= lines in one unit: two sockets with one name
    assert report["apis"] == [
        [3, "api", os.path.join(sock_dir, "api.sock")],
        [5, "api", os.path.join(sock_dir, "api2.sock")],
    ]
    assert report["again"] == "the passed sockets (fd 4) are already served in this process"
    assert report["missing"] == (
        "no socket named 'metrics' was passed (LISTEN_FDNAMES has: admin, api); set "
        "FileDescriptorName=metrics in the .socket unit (--fdname with systemd-socket-activate)"
    )
    assert report["left"] == "the passed sockets (fd 3, 4, 5) are already served in this process"


def admin_path(sock_dir: str) -> str:
    return os.path.join(sock_dir, "admin.sock")


def test_sockets_for_another_process_are_not_used(listener: socket.socket) -> None:
    report = run_activated(
        """
        passed = listen_fds()
        env_after = sorted(k for k in os.environ if k.startswith("LISTEN_"))
        report(passed=passed, env_after=env_after, error=error_of(inherited_listeners),
               fd3_untouched=not (fcntl.fcntl(3, fcntl.F_GETFD) & fcntl.FD_CLOEXEC))
        """,
        [listener.fileno()],
        listen_pid="1",
    )
    assert report["passed"] == []
    assert report["env_after"] == [], "removed even when they were not for us (as sd_listen_fds does)"
    assert report["error"].startswith("no socket to serve: LISTEN_PID=1 is not this process (")
    assert "the sockets were passed to another process" in report["error"]
    assert report["fd3_untouched"] is True


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"listen_pid": None}, "no socket to serve: LISTEN_FDS is set but LISTEN_PID is not; "),
        ({"listen_fds_value": "0"}, "no socket to serve: LISTEN_FDS=0: no socket was passed; "),
        ({"listen_fds_value": "one"}, "LISTEN_FDS='one' is not a number of descriptors"),
        ({"listen_fds_value": "-1"}, "LISTEN_FDS=-1 is negative"),
        ({"listen_pid": "me"}, "LISTEN_PID='me' is not a process id"),
        ({"names": "api:admin"}, "LISTEN_FDNAMES='api:admin' names 2 descriptors but LISTEN_FDS=1"),
        ({"listen_fds_value": "3"}, "LISTEN_FDS=3 but fd 4 is not open: the variables do not describe"),
    ],
)
def test_bad_variables_say_what_is_wrong(
    listener: socket.socket, variables: dict[str, str | None], message: str
) -> None:
    report = run_activated(
        """
        first = error_of(inherited_listeners)
        env_after = sorted(k for k in os.environ if k.startswith("LISTEN_"))
        report(first=first, env_after=env_after, second=error_of(inherited_listeners))
        """,
        [listener.fileno()],
        **variables,  # type: ignore[arg-type]
    )
    assert report["first"].startswith(message), report["first"]
    assert report["env_after"] == []
    assert report["second"].startswith("no socket to serve: "), "read once: later calls say why"
    if not message.startswith("no socket to serve: "):
        assert report["second"].startswith("no socket to serve: " + message)


def test_nothing_passed() -> None:
    report = run_activated("report(passed=listen_fds(), error=error_of(inherited_listeners))", [])
    assert report["passed"] == []
    assert report["error"] == (
        "no socket to serve: LISTEN_FDS=0: no socket was passed; start the daemon from a .socket unit "
        "(systemd.socket(5)) or under `systemd-socket-activate -l PATH`, or give an address to bind"
    )


def test_no_variables_at_all() -> None:
    code = PRELUDE + "report(passed=listen_fds(), error=error_of(inherited_listeners))"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LISTEN_")}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=30, check=True
    ).stdout
    report = json.loads(out)
    assert report["passed"] == []
    assert report["error"].startswith("no socket to serve: LISTEN_FDS is not set: no socket was passed; ")


# -- the kind of socket --------------------------------------------------------------------------


WRONG = "fd 3 (name 'api') passed by systemd "


def test_wrong_kinds_of_descriptor_are_refused_with_a_hint(sock_dir: str) -> None:
    dgram = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    dgram.bind(os.path.join(sock_dir, "dgram.sock"))
    inet = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    inet.bind(("127.0.0.1", 0))
    inet.listen(1)
    idle = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    idle.bind(os.path.join(sock_dir, "idle.sock"))  # bound, never listening
    read_end, write_end = os.pipe()
    cases = [
        (dgram.fileno(), "is a SOCK_DGRAM socket, not SOCK_STREAM; use ListenStream=, not ListenDatagram="),
        (inet.fileno(), "is an AF_INET socket, not AF_UNIX: unixrpc serves Unix sockets; use ListenStream="),
        (idle.fileno(), "is not a listening socket; with Accept=yes systemd passes one connection"),
    ]
    try:
        for fd, message in cases:
            report = run_activated(
                """
                error = error_of(inherited_listeners)
                st = os.fstat(3)  # the descriptor is left open, as it was
                report(error=error, still_open=stat.S_ISSOCK(st.st_mode))
                """,
                [fd],
                names="api",
            )
            assert report["error"].startswith(WRONG + message), report["error"]
            assert report["still_open"] is True
        report = run_activated("report(error=error_of(inherited_listeners))", [read_end], names="api")
        assert report["error"] == (
            WRONG.replace(" passed by systemd ", " ") + "passed by systemd is a FIFO, not a socket; "
            "select the sockets to serve with listen_name="
        )
    finally:
        for sock in (dgram, inet, idle):
            sock.close()
        os.close(read_end)
        os.close(write_end)


def test_one_bad_socket_takes_none(sock_dir: str, listener: socket.socket) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as dgram:
        report = run_activated(
            """
            error = error_of(inherited_listeners)
            [good] = inherited_listeners("api")  # still free: nothing was taken
            report(error=error, good=good.socket.fileno())
            """,
            [listener.fileno(), dgram.fileno()],
            names="api:log",
        )
    assert report["error"].startswith("fd 4 (name 'log') passed by systemd is a SOCK_DGRAM socket")
    assert report["good"] == 3


# -- an address that systemd passed --------------------------------------------------------------


def test_inherited_listener_at_an_address(sock_dir: str, listener: socket.socket) -> None:
    path = listener.getsockname()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as abstract:
        abstract.bind(b"\0unixrpc-test-" + str(os.getpid()).encode())
        abstract.listen(1)
        name = "@unixrpc-test-" + str(os.getpid())
        raw_name = abstract.getsockname()
        report = run_activated(
            f"""
            other = inherited_listener_at({os.path.join(sock_dir, "other.sock")!r})
            by_path = inherited_listener_at({path!r})
            # the same file through another spelling of its path
            again = inherited_listener_at({os.path.join(sock_dir, ".", "kv.sock")!r})
            by_name = inherited_listener_at({raw_name!r})
            report(other=other is None, by_path=by_path.socket.fileno(), again=again is None,
                   by_name=by_name.socket.fileno(), name=str(by_name.address),
                   left=error_of(inherited_listeners))
            """,
            [listener.fileno(), abstract.fileno()],
        )
    assert report == {
        "other": True,
        "by_path": 3,
        "again": True,  # taken already
        "by_name": 4,
        "name": name,
        "left": "the passed sockets (fd 3, 4) are already served in this process",
    }


def test_binding_the_path_of_an_inherited_socket_never_probes_it(
    sock_dir: str, listener: socket.socket
) -> None:
    """Issue 12: under systemd-socket-activate, binding the path connected to
    our own fd 3 and failed with 'already listening'. Now the probe is never
    made, and the message says what to do."""
    path = listener.getsockname()
    report = run_activated(
        f"""
        import errno
        from unixrpc.server.binding import bind_listener
        inherited = socket.socket(fileno=3)
        inherited.setblocking(False)
        try:
            bind_listener({path!r})
        except OSError as exc:
            error = (exc.errno, str(exc))
        try:
            inherited.accept()
            probed = True
        except BlockingIOError:
            probed = False
        report(error=error, probed=probed, exists=os.path.exists({path!r}))
        """,
        [listener.fileno()],
    )
    assert report["probed"] is False, "the probe connected to our own listener"
    assert report["exists"] is True
    code, message = report["error"]
    assert code == errno.EADDRINUSE
    assert message.startswith(
        f"[Errno 98] a server is already listening on {path}: this process holds its listening socket (fd 3)"
    )
    assert "serve it with serve() and no address" in message


def test_binding_a_path_this_process_listens_on_is_refused_without_connecting(
    sock_dir: str, listener: socket.socket
) -> None:
    path = listener.getsockname()
    listener.setblocking(False)
    with pytest.raises(OSError, match="already listening") as info:
        bind_listener(path)
    assert info.value.errno == errno.EADDRINUSE
    assert f"(fd {listener.fileno()})" in str(info.value)
    with pytest.raises(BlockingIOError):
        listener.accept()  # nobody connected to it
    assert os.path.exists(path)


# -- a socket handed over ------------------------------------------------------------------------


def test_adopt_listener_serves_and_leaves_the_file(sock_dir: str, no_fd_leak: None) -> None:
    path = os.path.join(sock_dir, "given.sock")
    sock = unix_listener(path)
    os.chmod(path, 0o666)
    os.set_inheritable(sock.fileno(), True)
    adopted = adopt_listener(sock)
    assert adopted.socket is sock
    assert adopted.adopted is True
    assert adopted.name is None
    assert str(adopted.address) == path
    assert sock.getblocking() is False
    assert sock.get_inheritable() is False
    with socket.socket(socket.AF_UNIX) as client:
        client.connect(path)
        conn, _ = sock.accept()
        conn.close()
    adopted.close()
    adopted.close()
    assert sock.fileno() == -1
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o666, "never chmod-ed, never unlinked"


def test_adopt_listener_abstract(no_fd_leak: None) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(b"\0unixrpc-adopt-" + str(os.getpid()).encode())
        sock.listen(1)
        adopted = adopt_listener(sock)
        assert str(adopted.address) == f"@unixrpc-adopt-{os.getpid()}"
        adopted.close()


def test_adopt_listener_refuses_what_it_cannot_serve(sock_dir: str, no_fd_leak: None) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as dgram:
        with pytest.raises(SocketActivationError) as info:
            adopt_listener(dgram)
        assert str(info.value) == (
            "the socket handed over is a SOCK_DGRAM socket, not SOCK_STREAM; "
            "create it with socket.SOCK_STREAM"
        )
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as idle:
        idle.bind(os.path.join(sock_dir, "idle.sock"))
        with pytest.raises(SocketActivationError) as info:
            adopt_listener(idle)
        assert str(info.value) == (
            "the socket handed over is not a listening socket; "
            "call bind() and listen() before handing it over"
        )
        assert idle.fileno() >= 0, "a refused socket is left open"
    with socket.socket(socket.AF_INET6 if socket.has_ipv6 else socket.AF_INET, socket.SOCK_STREAM) as inet:
        inet.listen(1)
        with pytest.raises(
            SocketActivationError, match=r"^the socket handed over is an AF_INET6? socket, not"
        ):
            adopt_listener(inet)
    closed = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    closed.close()
    with pytest.raises(OSError, match="the socket handed over is closed") as oserror:
        adopt_listener(closed)
    assert oserror.value.errno == errno.EBADF


def test_listen_fds_in_this_process_without_variables() -> None:
    # pytest was not socket-activated: nothing passed, nothing leaks
    before = open_fds()
    assert "LISTEN_FDS" not in os.environ
    assert listen_fds() == []
    assert open_fds() == before


# -- the real systemd-socket-activate ------------------------------------------------------------

CHILD_UNDER_SYSTEMD = """
passed = listen_fds()
listeners = inherited_listeners("api")
conn, _ = listeners[0].socket.accept()  # the connection that made systemd-socket-activate start us
conn.sendall(json.dumps({
    "pid": os.getpid(), "passed": passed,
    "served": [(l.socket.fileno(), str(l.address), l.name) for l in listeners],
    "admin": [str(l.address) for l in inherited_listeners("admin")],
    "env_after": sorted(k for k in os.environ if k.startswith("LISTEN_")),
}).encode())
conn.close()
"""


@pytest.mark.skipif(not os.path.exists(SOCKET_ACTIVATE), reason="systemd-socket-activate is not installed")
def test_under_real_systemd_socket_activate(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "api.sock")
    abstract = f"@unixrpc-sa-{os.getpid()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LISTEN_")}
    proc = subprocess.Popen(
        [
            SOCKET_ACTIVATE,
            "-l",
            path,
            "-l",
            abstract,
            "--fdname=api:admin",
            "-E",
            "PATH",
            sys.executable,
            "-c",
            PRELUDE + CHILD_UNDER_SYSTEMD,
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while not os.path.exists(path):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "systemd-socket-activate did not listen"
            time.sleep(0.02)
        with socket.socket(socket.AF_UNIX) as client:
            client.settimeout(20)
            client.connect(path)  # starts the daemon
            data = b""
            while chunk := client.recv(4096):
                data += chunk
        report = json.loads(data)
        proc.wait(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
        _, stderr = proc.communicate()
    assert proc.returncode == 0, stderr
    assert report["passed"] == [[3, "api"], [4, "admin"]]
    assert report["served"] == [[3, path, "api"]]
    assert report["admin"] == [abstract]
    assert report["env_after"] == []
    assert os.path.exists(path), "the socket file belongs to systemd: never unlinked"


def test_ci_installs_systemd_socket_activate() -> None:
    ci = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".ci", "run")
    with open(ci) as file:
        script = file.read()
    assert SOCKET_ACTIVATE in script
    assert "apt-get install" in script


# -- the example units ---------------------------------------------------------------------------

EXAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "systemd")


def test_example_units_say_what_the_daemon_needs() -> None:
    with open(os.path.join(EXAMPLE, "kvstore.socket")) as file:
        socket_unit = file.read().splitlines()
    with open(os.path.join(EXAMPLE, "kvstore.service")) as file:
        service_unit = file.read().splitlines()
    for line in (
        "ListenStream=/run/kvstore/kv.sock",
        "Accept=no",
        "SocketMode=0660",
        "FileDescriptorName=api",
    ):
        assert line in socket_unit
    assert any(line.startswith("SocketGroup=") for line in socket_unit)
    for line in ("Type=notify", "NotifyAccess=main", "WatchdogSec=10", "ExecReload=/bin/kill -HUP $MAINPID"):
        assert line in service_unit


@pytest.mark.skipif(not os.path.exists("/usr/bin/systemd-analyze"), reason="systemd-analyze is not installed")
def test_example_units_verify(tmp_path: os.PathLike[str]) -> None:
    for name in ("kvstore.socket", "kvstore.service"):
        shutil.copy(os.path.join(EXAMPLE, name), tmp_path)
    result = subprocess.run(
        ["/usr/bin/systemd-analyze", "verify", "--man=no", "kvstore.socket", "kvstore.service"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
