"""The ``unixrpc`` command as a subprocess, against the example daemons and
against test servers whose side of the story the test can see (a cancel
that arrived, a descriptor that was read)."""

from __future__ import annotations

import json
import os
import shutil
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
        assert result.stderr == (
            "unixrpc: timeout: no reply to Sleep within 0.5 seconds "
            "(--timeout 0.5; raise it to wait longer)\n"
        )
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


BAD_TIMEOUTS = ["0", "-1", "-0.5", "nan", "inf", "soon"]


def _timeout_args(path: str) -> Iterator[list[str]]:
    for command in ("call", "stream", "describe"):
        for form in (["--timeout", "{}"], ["--timeout={}"]):
            yield [command, path, *(["M"] if command != "describe" else []), *form]


def _timeout_refused(value: str) -> str:
    return (
        f"argument --timeout: expected a number of seconds above 0, got {value!r} "
        "(leave --timeout out for the default)"
    )


@pytest.mark.parametrize("value", BAD_TIMEOUTS)
def test_timeout_must_be_a_positive_number(
    value: str, sock_dir: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every command and form, parsed in this process (unixrpc.cli.main, as
    ``python -m unixrpc`` runs it); one of them as the command itself."""
    from unixrpc.cli import main

    path = os.path.join(sock_dir, "never.sock")  # parsing fails before any connect
    for args in _timeout_args(path):
        args = [arg.format(value) for arg in args]
        with pytest.raises(SystemExit) as exited:
            main(args)
        stderr = capsys.readouterr().err
        assert exited.value.code == 2, (args, stderr)
        assert _timeout_refused(value) in stderr
    args = [arg.format(value) for arg in next(_timeout_args(path))]
    result = unixrpc(*args)
    assert result.returncode == 2, (args, result.stderr)
    assert _timeout_refused(value) in result.stderr


@pytest.mark.stress
@pytest.mark.parametrize("value", BAD_TIMEOUTS)
def test_timeout_must_be_a_positive_number_for_the_command(value: str, sock_dir: str) -> None:
    """The same, every command and form as ``python -m unixrpc`` (36 processes)."""
    path = os.path.join(sock_dir, "never.sock")
    for args in _timeout_args(path):
        args = [arg.format(value) for arg in args]
        result = unixrpc(*args)
        assert result.returncode == 2, (args, result.stderr)
        assert _timeout_refused(value) in result.stderr


def test_stream_timeout_names_the_option(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "s.sock")
    with serving_in_thread(make_server(), path):
        result = unixrpc("stream", path, "Count", "n=5", "delay=30", "--timeout", "0.5")
    assert (result.returncode, result.stdout) == (6, "0\n")
    assert result.stderr == (
        "unixrpc: timeout: no item from Count within 0.5 s (--timeout applies to each item; "
        "leave it out to wait for ever)\n"
    )


def test_save_fd_without_a_descriptor_fails(rpc_daemon: str, sock_dir: str) -> None:
    target = os.path.join(sock_dir, "never.txt")
    none = unixrpc("call", rpc_daemon, "Add", "a=1", "b=2", "--save-fd", target)
    assert (none.returncode, none.stdout) == (7, "3\n")  # the result is still printed
    assert none.stderr == (
        f"unixrpc: --save-fd {target}: the reply carried 0 descriptors, so this file was not written\n"
    )
    assert not os.path.exists(target)
    first, second = os.path.join(sock_dir, "first.txt"), os.path.join(sock_dir, "second.txt")
    one = unixrpc("call", rpc_daemon, "OpenScratch", "note=hi", "--save-fd", first, "--save-fd", second)
    assert one.returncode == 7
    assert one.stderr == (
        f"unixrpc: --save-fd {second}: the reply carried 1 descriptor, so this file was not written\n"
    )
    with open(first) as saved:
        assert saved.read() == "hi"
    assert not os.path.exists(second)
    streamed = unixrpc("stream", rpc_daemon, "Countdown", "start=1", "--save-fd", target, "--save-fd", second)
    assert (streamed.returncode, streamed.stdout) == (7, "1\n0\n")
    assert streamed.stderr == (
        f"unixrpc: --save-fd {target}, {second}: the stream's items carried 0 descriptors, "
        "so these files were not written\n"
    )


def test_push_fd_is_checked_against_the_schema(rpc_daemon: str, sock_dir: str) -> None:
    data = os.path.join(sock_dir, "data.txt")
    with open(data, "w") as out:
        out.write("pushed")
    takes_none = unixrpc("call", rpc_daemon, "Add", "a=1", "b=2", "--push-fd", data)
    assert (takes_none.returncode, takes_none.stderr) == (
        2,
        "unixrpc: Add takes no file descriptors (none of its params is an FD), but --push-fd gave "
        "1 descriptor: leave --push-fd out\n",
    )
    streamed = unixrpc("stream", rpc_daemon, "Countdown", "start=1", "--push-fd", data, "--push-fd", data)
    assert streamed.returncode == 2
    assert "Countdown takes no file descriptors" in streamed.stderr
    assert "--push-fd gave 2 descriptors" in streamed.stderr

    server = make_server()

    @server.method(ReadFd)
    def read(request: ReadFd) -> str:
        with request.fd.open("r") as source:
            return source.read()

    path = os.path.join(sock_dir, "s.sock")
    with serving_in_thread(server, path):
        beyond = unixrpc("call", path, "files.Read", "fd=1", "--push-fd", data)
        assert (beyond.returncode, beyond.stderr) == (
            2,
            "unixrpc: param fd refers to descriptor 1, but --push-fd gave 1 descriptor "
            "(indexes start at 0)\n",
        )
        spare = unixrpc("call", path, "files.Read", "fd=0", "--push-fd", data, "--push-fd", data)
        assert (spare.returncode, spare.stdout) == (0, '"pushed"\n')
        assert spare.stderr == (
            f"unixrpc: warning: descriptor 1 (--push-fd {data}) is not referred to by any param of "
            "files.Read (its FD params: fd); the daemon closes it\n"
        )


def test_push_fd_to_a_daemon_that_does_not_describe_itself(sock_dir: str) -> None:
    server = make_server(introspection=False)

    @server.method(ReadFd)
    def read(request: ReadFd) -> str:
        with request.fd.open("r") as source:
            return source.read()

    data = os.path.join(sock_dir, "data.txt")
    with open(data, "w") as out:
        out.write("pushed")
    path = os.path.join(sock_dir, "s.sock")
    with serving_in_thread(server, path):
        beyond = unixrpc("call", path, "files.Read", "fd=1", "--push-fd", data)  # no schema: the daemon says
    assert beyond.returncode == 5
    assert "fd index 1 out of range: the frame carries 1 descriptor" in error_of(beyond)["message"]


DROP_DAC = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None,
    reason="needs root and setpriv(1) to drop CAP_DAC_OVERRIDE",
)
def test_a_directory_that_does_not_let_the_user_through_is_named(sock_dir: str) -> None:
    locked = os.path.join(sock_dir, "locked")
    os.mkdir(locked, 0o700)
    path = os.path.join(locked, "inner", "s.sock")
    os.chmod(locked, 0o000)
    try:
        # root without the capabilities that bypass file permissions
        result = subprocess.run(
            [*DROP_DAC, sys.executable, "-m", "unixrpc", "call", path, "Add"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        os.chmod(locked, 0o700)
    assert result.returncode == 3, result.stderr
    assert result.stderr == (
        f"unixrpc: permission denied connecting to {path}: the directory {locked} does not let this "
        "user through (mode 0000, owner uid 0 gid 0; this process is uid 0 gid 0 and needs search (x) "
        "permission there)\n"
    )


RPC_TARGET = os.path.join(EXAMPLES, "rpc_daemon.py") + ":server"
RPC_DOCUMENT = os.path.join(SCHEMAS, "rpc_daemon.openrpc.json")


def without_whoami(sock_dir: str) -> str:
    with open(RPC_DOCUMENT) as source:
        document = json.load(source)
    document["methods"] = [entry for entry in document["methods"] if entry["name"] != "WhoAmI"]
    path = os.path.join(sock_dir, "old.json")
    with open(path, "w") as out:
        json.dump(document, out, indent=2)
        out.write("\n")
    return path


def test_schema_check(sock_dir: str) -> None:
    current = unixrpc("schema", RPC_TARGET, "-o", RPC_DOCUMENT, "--check")
    assert (current.returncode, current.stdout, current.stderr) == (0, "", "")

    stale = without_whoami(sock_dir)
    with open(stale) as before:
        kept = before.read()
    result = unixrpc("schema", RPC_TARGET, "-o", stale, "--check")
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == (
        f"unixrpc: {stale} is stale: it differs from the document of the code (from the file to the code):\n"
        "  ok       WhoAmI: new method\n"
        f"regenerate it: unixrpc schema {RPC_TARGET} -o {stale}\n"
    )
    with open(stale) as after:
        assert after.read() == kept  # --check writes nothing

    with open(RPC_DOCUMENT) as source:
        compact = os.path.join(sock_dir, "compact.json")
        with open(compact, "w") as out:
            json.dump(json.load(source), out)
    reformatted = unixrpc("schema", RPC_TARGET, "-o", compact, "--check")
    assert reformatted.returncode == 1
    assert "  (the same interface, written differently)\n" in reformatted.stderr

    absent = os.path.join(sock_dir, "absent.json")
    missing = unixrpc("schema", RPC_TARGET, "-o", absent, "--check")
    assert missing.returncode == 1
    assert missing.stderr.startswith(
        f"unixrpc: {absent} is stale: cannot read it (No such file or directory)\n"
    )
    assert not os.path.exists(absent)

    garbage = os.path.join(sock_dir, "garbage.json")
    with open(garbage, "w") as out:
        out.write("not json")
    assert (
        "is stale: it is not an interface document\n"
        in unixrpc("schema", RPC_TARGET, "-o", garbage, "--check").stderr
    )

    no_file = unixrpc("schema", RPC_TARGET, "--check")
    assert (no_file.returncode, no_file.stderr) == (
        2,
        "unixrpc: --check compares with the file given by -o FILE: give it\n",
    )


def test_compat_against_a_running_daemon_and_code(rpc_daemon: str, sock_dir: str) -> None:
    same = unixrpc("compat", RPC_DOCUMENT, rpc_daemon)
    assert (same.returncode, same.stdout) == (0, "no breaking changes (0 compatible)\n"), same.stderr
    old = without_whoami(sock_dir)
    added = unixrpc("compat", old, rpc_daemon)
    assert (added.returncode, added.stdout) == (
        0,
        "ok       WhoAmI: new method\nno breaking changes (1 compatible)\n",
    )
    removed = unixrpc("compat", rpc_daemon, old)
    assert removed.returncode == 1
    assert "BREAKING WhoAmI: method removed" in removed.stdout
    from_code = unixrpc("compat", old, RPC_TARGET)
    assert (from_code.returncode, from_code.stdout) == (0, added.stdout), from_code.stderr
    assert unixrpc("compat", rpc_daemon, RPC_TARGET).returncode == 0

    no_module = unixrpc("compat", old, "no_such_module_here:server")
    assert no_module.returncode == 2
    assert "No module named 'no_such_module_here'" in no_module.stderr
    nowhere = unixrpc("compat", old, os.path.join(sock_dir, "nothing-here"))
    assert (nowhere.returncode, nowhere.stderr) == (
        2,
        f"unixrpc: cannot read {sock_dir}/nothing-here: No such file or directory (give an interface "
        "document, a daemon's socket, or MODULE:ATTR)\n",
    )
    quiet = os.path.join(sock_dir, "quiet.sock")
    with serving_in_thread(make_server(introspection=False), quiet):
        undescribed = unixrpc("compat", old, quiet)
    assert undescribed.returncode == 4
    assert "does not describe itself" in undescribed.stderr
    assert unixrpc("compat", old, "@unixrpc-cli-nobody-listens").returncode == 3


DAEMON = """
from models import User

from unixrpc import Method, Server


class GetUser(Method[User], name="users.Get"):
    uid: int


server = Server(name="users", version="{version}")


@server.method(GetUser)
def get_user(request: GetUser) -> User:
    return User(uid=request.uid)
"""


def test_compat_between_two_versions_of_one_module(sock_dir: str) -> None:
    # the same module and sibling names in both: each is imported in a process of its own
    models = {"v1": "uid: int", "v2": 'uid: int\n    email: str = ""'}
    for version, fields in models.items():
        os.mkdir(os.path.join(sock_dir, version))
        with open(os.path.join(sock_dir, version, "daemon.py"), "w") as out:
            out.write(DAEMON.format(version=version))
        with open(os.path.join(sock_dir, version, "models.py"), "w") as out:
            out.write(f"from pydantic import BaseModel\n\n\nclass User(BaseModel):\n    {fields}\n")
    v1 = os.path.join(sock_dir, "v1", "daemon.py:server")
    v2 = os.path.join(sock_dir, "v2", "daemon.py:server")
    forward = unixrpc("compat", v1, v2)
    assert (forward.returncode, forward.stdout) == (
        0,
        'ok       users.Get result.email: new field: old clients ignore it; new clients get its default ("") '
        "from older daemons, which do not send it\nno breaking changes (1 compatible)\n",
    ), forward.stderr
    backward = unixrpc("compat", v2, v1)
    assert backward.returncode == 1
    assert backward.stdout.startswith(
        "BREAKING users.Get result.email: old clients may not accept what the daemon now sends: "
        "required field is absent\n"
    )
