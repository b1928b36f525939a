"""Errors that say what to do: the common base, connect failures that name
the path and the cause, typed errors that print their fields, a failing
authorize hook, and the server's InvalidParams / MethodNotFound wording
over real sockets."""

from __future__ import annotations

import errno
import os
import socket
from typing import Any

import pytest

import unixrpc
from conftest import open_fds
from rpc_support import Add, Driver, make_server, serving, serving_in_thread
from unixrpc import (
    AsyncClient,
    Client,
    ConnectError,
    ConnectTimeoutError,
    InternalError,
    InvalidParamsError,
    Method,
    MethodNotFoundError,
    PermissionDeniedError,
    RPCError,
    SocketNotFoundError,
    SocketPermissionError,
    SocketRefusedError,
)
from unixrpc.transport._common import connect_error

pytestmark = pytest.mark.anyio


def test_everything_raised_is_a_unixrpc_error_and_keeps_its_standard_base() -> None:
    expected_bases = {
        "ClientClosedError": ConnectionError,
        "ConnectionBrokenError": ConnectionError,
        "RemoteProtocolError": ConnectionError,
        "AncillaryDataTruncatedError": ConnectionError,
        "SerializeError": TypeError,
        "FrameTooLargeError": ValueError,
        "InvalidResultError": ValueError,
        "SocketNotFoundError": FileNotFoundError,
        "SocketRefusedError": ConnectionRefusedError,
        "SocketPermissionError": PermissionError,
        "ConnectTimeoutError": TimeoutError,
        "ConnectError": OSError,
    }
    for name in unixrpc.__all__:
        obj = getattr(unixrpc, name)
        if isinstance(obj, type) and issubclass(obj, BaseException):
            assert issubclass(obj, unixrpc.Error), name
            if name in expected_bases:
                assert issubclass(obj, expected_bases[name]), name


def make_listener(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    return sock


CONNECT_CASES = ["missing", "missing-dir", "stale", "file", "directory", "abstract"]


def prepare(case: str, sock_dir: str) -> tuple[Any, str, type[OSError], str]:
    """(address, shown address, error class, expected fragment of the message)."""
    path = os.path.join(sock_dir, "app.sock")
    if case == "missing":
        return path, path, SocketNotFoundError, "nothing exists at that path (is the daemon running"
    if case == "missing-dir":
        path = os.path.join(sock_dir, "nodir", "app.sock")
        return path, path, SocketNotFoundError, f"the directory {sock_dir}/nodir does not exist"
    if case == "stale":
        make_listener(path).close()  # bound, never listening, closed: a socket file left behind
        return path, path, SocketRefusedError, "a socket file is there but no process listens on it"
    if case == "file":
        open(path, "w").close()
        return path, path, SocketRefusedError, "it is a regular file, not a socket"
    if case == "directory":
        os.mkdir(path)
        return path, path, SocketRefusedError, "it is a directory, not a socket"
    name = f"unixrpc-test-{os.getpid()}-nothing"
    return b"\0" + name.encode(), "@" + name, SocketRefusedError, "nothing listens on the abstract name"


async def connect_once(kind: str, address: Any) -> None:
    if kind == "sync":
        Client(address).close()
    else:
        async with AsyncClient(address):
            pass


@pytest.mark.parametrize("case", CONNECT_CASES)
async def test_connect_errors_name_the_path_and_the_cause(client_kind: str, sock_dir: str, case: str) -> None:
    address, shown, error_class, fragment = prepare(case, sock_dir)
    before = open_fds()
    with pytest.raises(error_class) as info:
        await connect_once(client_kind, address)
    assert isinstance(info.value, ConnectError)
    assert fragment in str(info.value)
    assert shown in str(info.value)
    assert info.value.address == shown
    assert info.value.errno in (errno.ENOENT, errno.ECONNREFUSED)
    assert open_fds() == before


def test_permission_error_names_the_mode_and_socket_mode(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "app.sock")
    listener = make_listener(path)
    try:
        os.chmod(path, 0o600)
        error = connect_error(PermissionError(errno.EACCES, "Permission denied"), path)
        assert isinstance(error, SocketPermissionError)
        assert isinstance(error, PermissionError)
        assert str(error).startswith(
            f"permission denied connecting to {path}: the socket is mode 0600, owner uid "
        )
        assert "socket_mode= and socket_group=" in str(error)
        hidden = connect_error(PermissionError(errno.EACCES, "x"), os.path.join(sock_dir, "no", "such"))
        assert "a directory on the path does not let this user through" in str(hidden)
    finally:
        listener.close()


def test_connect_timeout_names_the_path(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "full.sock")
    listener = make_listener(path)
    listener.listen(0)
    fillers = []
    try:

        def fill() -> None:
            for _ in range(64):  # fill the backlog until a connect waits
                fillers.append(Client(path, connect_timeout=0.05))

        with pytest.raises(ConnectTimeoutError) as info:
            fill()
        assert isinstance(info.value, TimeoutError)
        assert str(info.value).startswith(f"could not connect to {path} within 0.05 seconds")
    finally:
        for client in fillers:
            client.close()
        listener.close()


class NoDoc(RPCError, code="test.NoDoc"):
    uid: int
    name: str = "x"


class WithDoc(RPCError, code="test.WithDoc"):
    """Something precise went wrong."""

    path: str


def test_rpc_error_without_docstring_prints_its_fields() -> None:
    assert str(NoDoc(uid=7)) == "test.NoDoc (uid=7, name='x')"
    assert str(WithDoc(path="/a")) == "Something precise went wrong. [test.WithDoc] (path='/a')"
    assert str(RPCError("plain")) == "plain [unixrpc.Error]"
    received = RPCError.from_wire("test.NoDoc", "test.NoDoc", {"uid": 3})
    assert isinstance(received, NoDoc)
    assert str(received) == "test.NoDoc (uid=3, name='x')"


def failing_authorize(context: Any, request: Any) -> bool:
    raise KeyError("missing table")


def refusing_authorize(context: Any, request: Any) -> bool:
    if context.method == "Add":
        raise PermissionDeniedError("only on Tuesdays")
    return True


async def run_client(kind: str, path: str, server: Any, body: Any) -> None:
    if kind == "sync":
        with serving_in_thread(server, path), Client(path, timeout=10) as client:
            await body(Driver(kind, client))
    else:
        async with serving(server, path), AsyncClient(path, timeout=10) as client:
            await body(Driver(kind, client))


@pytest.mark.server
async def test_authorize_hook_that_raises_is_reported_as_the_hooks_failure(
    client_kind: str, sock_dir: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def body(client: Driver) -> None:
        with pytest.raises(InternalError) as info:
            await client.call(Add(a=1, b=2))
        assert info.value.message == (
            "the server's authorize hook raised KeyError while checking a call of Add; "
            "the handler did not run (the hook should return True or False)"
        )

    await run_client(
        client_kind, os.path.join(sock_dir, "s.sock"), make_server(authorize=failing_authorize), body
    )
    assert any("authorize hook raised" in record.getMessage() for record in caplog.records)


@pytest.mark.server
async def test_authorize_hook_may_raise_a_typed_error_itself(client_kind: str, sock_dir: str) -> None:
    async def body(client: Driver) -> None:
        with pytest.raises(PermissionDeniedError, match="only on Tuesdays"):
            await client.call(Add(a=1, b=2))

    await run_client(
        client_kind, os.path.join(sock_dir, "s.sock"), make_server(authorize=refusing_authorize), body
    )


class AddTyped(Method[int], name="Add"):
    a: str
    b: list[int]


class Sub(Method[int], name="add"):
    pass


@pytest.mark.server
async def test_server_messages_over_the_wire(client_kind: str, sock_dir: str) -> None:
    async def body(client: Driver) -> None:
        with pytest.raises(InvalidParamsError) as info:
            await client.call(AddTyped(a="one", b=[1]))
        assert info.value.message == (
            "invalid params for Add: a: input should be a valid integer, unable to parse string as an "
            "integer (got 'one'); b: input should be a valid integer (got [1])"
        )
        assert [error["loc"] for error in info.value.data] == [["a"], ["b"]]
        with pytest.raises(MethodNotFoundError) as missing:
            await client.call(Sub())
        assert missing.value.message.startswith(
            "no method named 'add'; did you mean 'Add'? (`unixrpc describe SOCKET`"
        )

    await run_client(client_kind, os.path.join(sock_dir, "s.sock"), make_server(), body)
