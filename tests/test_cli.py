"""The ``unixrpc`` command as a subprocess, against the example daemons and
against test servers whose side of the story the test can see (a cancel
that arrived, a descriptor that was read)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from rpc_support import Events, make_server, serving_in_thread
from unixrpc import FD, Method

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")
SCHEMAS = os.path.join(ROOT, "schemas")


def unixrpc(
    *args: str, stdin: str | None = None, timeout: float = 60, **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "unixrpc", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        **kwargs,
    )


@contextmanager
def example_daemon(*argv: str, sock: str) -> Iterator[str]:
    proc = subprocess.Popen([sys.executable, *argv], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not os.path.exists(sock):
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "daemon did not start"
            time.sleep(0.02)
        yield sock
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)


@pytest.fixture(scope="module")
def rpc_daemon() -> Iterator[str]:
    directory = tempfile.mkdtemp(prefix="urpc-cli-", dir="/tmp")
    sock = os.path.join(directory, "rpc.sock")
    with example_daemon(os.path.join(EXAMPLES, "rpc_daemon.py"), sock, sock=sock):
        yield sock
    os.rmdir(directory)


def error_of(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    return json.loads(result.stderr)["error"]  # type: ignore[no-any-return]


def test_help_has_examples_and_exit_codes() -> None:
    result = unixrpc("--help")
    assert result.returncode == 0
    assert "unixrpc call /run/app.sock Add a=1 b=2" in result.stdout
    assert "exit codes:" in result.stdout
    assert "4 method not found" in result.stdout
    sub = unixrpc("stream", "--help")
    assert "Ctrl-C" in sub.stdout
    assert "example: unixrpc stream" in sub.stdout
    assert unixrpc().returncode == 2


def test_call(rpc_daemon: str) -> None:
    assert unixrpc("call", rpc_daemon, "Add", '{"a": 1, "b": 2}').stdout == "3\n"
    assert unixrpc("call", rpc_daemon, "Add", "a=40", "b=2").stdout == "42\n"
    result = unixrpc("call", rpc_daemon, "users.Get", "-", stdin='{"uid": 0}')
    assert (result.returncode, result.stdout) == (0, '{"uid":0,"name":"root"}\n')  # one line: not a terminal
    pretty = unixrpc("call", rpc_daemon, "users.Get", "uid=1000", "--pretty")
    assert pretty.stdout == '{\n  "uid": 1000,\n  "name": "alice"\n}\n'
    warned = unixrpc("call", rpc_daemon, "Add", "a=1", "b=2", "c=3")
    assert warned.stdout == "3\n"
    assert "warning: Add has no param 'c' (params: a, b); the daemon ignores it" in warned.stderr


def test_exit_codes(rpc_daemon: str, sock_dir: str) -> None:
    app = unixrpc("call", rpc_daemon, "users.Get", "uid=7")
    assert app.returncode == 1
    assert error_of(app) == {"code": "users.NotFound", "message": "No such user.", "data": {"uid": 7}}
    missing = unixrpc("call", rpc_daemon, "user.Get", "uid=7")
    assert missing.returncode == 4
    assert error_of(missing)["message"].startswith("no method named 'user.Get'; did you mean 'users.Get'?")
    invalid = unixrpc("call", rpc_daemon, "Add", "a=one", "b=2")
    assert invalid.returncode == 5
    assert error_of(invalid)["message"].startswith(
        "invalid params for Add: a: input should be a valid integer"
    )
    assert error_of(invalid)["data"][0]["loc"] == ["a"]
    nowhere = unixrpc("call", os.path.join(sock_dir, "none.sock"), "Add")
    assert nowhere.returncode == 3
    assert nowhere.stderr.startswith(
        f"unixrpc: no socket at {sock_dir}/none.sock: nothing exists at that path"
    )
    usage = unixrpc("call", rpc_daemon, "Add", "not-a-pair")
    assert usage.returncode == 2
    assert "expected key=value (or one JSON object), got 'not-a-pair'" in usage.stderr
    bad_json = unixrpc("call", rpc_daemon, "Add", "{nope")
    assert (bad_json.returncode, bad_json.stderr.startswith("unixrpc: params are not valid JSON")) == (
        2,
        True,
    )


@pytest.mark.server
def test_timeout_cancels_on_the_server(sock_dir: str) -> None:
    events = Events()
    path = os.path.join(sock_dir, "s.sock")
    with serving_in_thread(make_server(events), path):
        result = unixrpc("call", path, "Sleep", "seconds=30", "tag=slow", "--timeout", "0.5")
        assert result.returncode == 6
        assert result.stderr.startswith("unixrpc: timeout: ")
        deadline = time.monotonic() + 10
        while events.cancelled != ["slow"] and time.monotonic() < deadline:
            time.sleep(0.01)
    assert events.cancelled == ["slow"]


def test_describe_list_ping(rpc_daemon: str) -> None:
    summary = unixrpc("describe", rpc_daemon)
    assert summary.returncode == 0
    lines = summary.stdout.splitlines()
    assert lines[0] == "example.rpc 1.0.0"
    assert "users.Get(uid: integer) -> User" in lines
    assert "Countdown(start: integer) -> stream of integer" in lines
    assert "    raises users.NotFound (uid: integer): No such user." in lines
    assert "    file descriptors: result: fd" in lines
    with open(os.path.join(SCHEMAS, "rpc_daemon.openrpc.json")) as source:
        assert json.loads(unixrpc("describe", rpc_daemon, "--json").stdout) == json.load(source)
    one = unixrpc("describe", rpc_daemon, "users.Get")
    assert one.stdout.startswith("users.Get(uid: integer) -> User\n    The user with this uid.\n")
    assert "\nUser: {" in one.stdout
    entry = json.loads(unixrpc("describe", rpc_daemon, "users.Get", "--json").stdout)
    assert entry["name"] == "users.Get"
    unknown = unixrpc("describe", rpc_daemon, "users.Gett")
    assert unknown.returncode == 4
    assert "did you mean 'users.Get'?" in unknown.stderr
    assert unixrpc("list", rpc_daemon).stdout.split() == [
        "Add",
        "Countdown",
        "OpenScratch",
        "WhoAmI",
        "users.Get",
    ]
    ping = json.loads(unixrpc("ping", rpc_daemon).stdout)
    assert ping["name"] == "example.rpc"
    assert ping["version"] == "1.0.0"
    assert ping["uid"] == os.getuid()
    assert ping["ms"] >= 0


def test_stream_to_its_end(rpc_daemon: str) -> None:
    result = unixrpc("stream", rpc_daemon, "Countdown", "start=3")
    assert (result.returncode, result.stdout) == (0, "3\n2\n1\n0\n")
    wrong = unixrpc("call", rpc_daemon, "Countdown", "start=3")
    assert (wrong.returncode, wrong.stderr) == (
        2,
        "unixrpc: Countdown is a stream method: use `unixrpc stream`\n",
    )
    other = unixrpc("stream", rpc_daemon, "Add", "a=1", "b=2")
    assert (other.returncode, other.stderr) == (
        2,
        "unixrpc: Add is not a stream method: use `unixrpc call`\n",
    )


@pytest.mark.server
def test_stream_interrupted_cancels_on_the_server(sock_dir: str) -> None:
    events = Events()
    path = os.path.join(sock_dir, "s.sock")
    with serving_in_thread(make_server(events), path):
        proc = subprocess.Popen(
            [sys.executable, "-m", "unixrpc", "stream", path, "Count", "n=1000000", "delay=0.01"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        try:
            assert [proc.stdout.readline() for _ in range(3)] == ["0\n", "1\n", "2\n"]
            proc.send_signal(signal.SIGINT)
            _, stderr = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        assert proc.returncode == 130
        assert "interrupted; the stream was cancelled" in stderr
        deadline = time.monotonic() + 10
        while events.stream_closed < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert events.stream_closed == 1  # the handler was cancelled, not left running
        assert events.produced < 1000


def test_received_descriptor_is_shown_and_saved(rpc_daemon: str, sock_dir: str) -> None:
    target = os.path.join(sock_dir, "copy.txt")
    result = unixrpc("call", rpc_daemon, "OpenScratch", "note=hello there", "--save-fd", target)
    assert result.returncode == 0, result.stderr
    value = json.loads(result.stdout)
    assert value["fd"]["fd"] == 0
    assert value["fd"]["type"] == "file"
    assert value["fd"]["path"].startswith("/")
    assert value["note"].startswith("11 bytes from pid ")
    with open(target) as copy:
        assert copy.read() == "hello there"


class ReadFd(Method[str], name="files.Read"):
    fd: FD


@pytest.mark.server
def test_push_fd(sock_dir: str) -> None:
    server = make_server()

    @server.method(ReadFd)
    def read(request: ReadFd) -> str:
        with request.fd.open("r") as source:
            return source.read()

    path = os.path.join(sock_dir, "s.sock")
    data = os.path.join(sock_dir, "data.txt")
    with open(data, "w") as out:
        out.write("pushed")
    with serving_in_thread(server, path):
        result = unixrpc("call", path, "files.Read", "fd=0", "--push-fd", data)
        assert (result.returncode, result.stdout) == (0, '"pushed"\n'), result.stderr
        read_end, write_end = os.pipe()
        try:
            os.write(write_end, b"inherited")
            os.close(write_end)
            result = unixrpc(
                "call", path, "files.Read", "fd=0", "--push-fd", str(read_end), pass_fds=[read_end]
            )
        finally:
            os.close(read_end)
        assert (result.returncode, result.stdout) == (0, '"inherited"\n'), result.stderr
        absent = unixrpc("call", path, "files.Read", "fd=0", "--push-fd", os.path.join(sock_dir, "absent"))
        assert absent.returncode == 2
        assert "--push-fd: cannot open" in absent.stderr


@pytest.mark.server
def test_describe_a_daemon_without_introspection(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "s.sock")
    with serving_in_thread(make_server(introspection=False), path):
        result = unixrpc("describe", path)
        assert result.returncode == 4
        assert "does not describe itself" in result.stderr
        # key=value params still work, coerced without a schema
        assert unixrpc("call", path, "Add", "a=1", "b=2").stdout == "3\n"


@pytest.mark.server
def test_abstract_names(sock_dir: str) -> None:
    name = f"unixrpc-cli-{os.getpid()}"
    with serving_in_thread(make_server(), "\0" + name):
        result = unixrpc("call", "@" + name, "Add", "a=2", "b=3")
    assert (result.returncode, result.stdout) == (0, "5\n"), result.stderr


def test_privsep_daemon_refusal_and_fds(sock_dir: str) -> None:
    root = os.path.join(sock_dir, "root")
    os.mkdir(root)
    with open(os.path.join(root, "hello.txt"), "w") as out:
        out.write("hi from the root")
    sock = os.path.join(sock_dir, "privsep.sock")
    script = os.path.join(EXAMPLES, "privsep_daemon.py")
    with example_daemon(script, sock, "--root", root, "--allow-uid", str(os.getuid()), sock=sock):
        copy = os.path.join(sock_dir, "copy.txt")
        result = unixrpc("call", sock, "privsep.Open", "path=hello.txt", "--save-fd", copy)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["fd"]["type"] == "file"
        with open(copy) as saved:
            assert saved.read() == "hi from the root"
        denied = unixrpc("call", sock, "privsep.Open", "path=../etc/passwd")
        assert denied.returncode == 1
        assert error_of(denied)["data"] == {"path": "../etc/passwd", "reason": "outside the shared root"}
    other = os.path.join(sock_dir, "other.sock")
    with example_daemon(script, other, "--root", root, "--allow-uid", str(os.getuid() + 1), sock=other):
        refused = unixrpc("describe", other)  # introspection goes through authorize too
        assert refused.returncode == 1
        assert error_of(refused)["code"] == "unixrpc.PermissionDenied"


def test_schema_and_compat(sock_dir: str) -> None:
    result = unixrpc("schema", os.path.join(EXAMPLES, "rpc_daemon.py") + ":server")
    assert result.returncode == 0, result.stderr
    with open(os.path.join(SCHEMAS, "rpc_daemon.openrpc.json")) as source:
        assert result.stdout == source.read()
    assert unixrpc("schema", "no_such_module_here:server").returncode == 2
    not_a_server = unixrpc("schema", os.path.join(EXAMPLES, "rpc_daemon.py") + ":Add")
    assert (not_a_server.returncode, "not a unixrpc Server" in not_a_server.stderr) == (2, True)

    old = os.path.join(SCHEMAS, "rpc_daemon.openrpc.json")
    with open(old) as source:
        document = json.load(source)
    document["methods"] = [entry for entry in document["methods"] if entry["name"] != "WhoAmI"]
    new = os.path.join(sock_dir, "new.json")
    with open(new, "w") as out:
        json.dump(document, out)
    same = unixrpc("compat", old, old)
    assert (same.returncode, same.stdout) == (0, "no breaking changes (0 compatible)\n")
    broken = unixrpc("compat", old, new)
    assert broken.returncode == 1
    assert broken.stdout.splitlines() == [
        "BREAKING WhoAmI: method removed: old clients calling it get MethodNotFound",
        "1 breaking change(s) (0 compatible)",
    ]
    listed = json.loads(unixrpc("compat", old, new, "--json").stdout)
    assert listed == [
        {
            "method": "WhoAmI",
            "where": "",
            "message": "method removed: old clients calling it get MethodNotFound",
            "breaking": True,
        }
    ]
    added = unixrpc("compat", new, old)
    assert added.returncode == 0
    assert unixrpc("compat", old, os.path.join(sock_dir, "absent.json")).returncode == 2
