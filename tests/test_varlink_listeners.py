"""Varlink at the edges of a server (issue 17), on every engine, real
sockets: connections refused at accept (server busy, per-uid limit) in each
wire's words (a varlink peer sees the connection closed, as sd-varlink's
peers do; a unixrpc one reads ``ServerBusyError``); listeners that speak
varlink alone (``serve(varlink=...)``, a handed-over socket, an activated
socket named ``varlink`` under the real ``systemd-socket-activate``); and a
4 MiB message through python-varlink's client and ours."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from unixrpc import Client, Method, Server, ServerBusyError, StreamMethod
from unixrpc.exceptions import ConnectionBrokenError, Error
from unixrpc.varlink.client import VarlinkClient

varlink = pytest.importorskip("varlink", reason="python-varlink is not installed (pip install varlink)")

IFACE = "org.example.edges"
SOCKET_ACTIVATE = "/usr/bin/systemd-socket-activate"


class Add(Method[int], name="edges.Add"):
    a: int
    b: int


class Echo(Method[str], name="edges.Echo"):
    text: str


class Count(StreamMethod[int], name="edges.Count"):
    n: int


def as_varlink(cls: Any) -> Any:
    return type(cls.__name__, (cls,), {}, name=f"{IFACE}.{cls.__name__}")


VAdd, VEcho = as_varlink(Add), as_varlink(Echo)


def make_server(**options: Any) -> Server:
    server = Server(name=IFACE, version="1.0", **options)
    server.add_method(Add, lambda request: request.a + request.b)
    server.add_method(Echo, lambda request: request.text)

    @server.method(Count)
    def count(request: Count) -> Iterator[int]:
        yield from range(request.n)

    return server


def raw(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(path)
    return sock


def everything(sock: socket.socket) -> bytes:
    data = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            data += chunk
    return data


def add_message(a: int, b: int) -> bytes:
    return json.dumps({"method": f"{IFACE}.Add", "parameters": {"a": a, "b": b}}).encode() + b"\0"


# -- refused at accept ------------------------------------------------------------------------


@pytest.mark.server
@pytest.mark.parametrize("limit", ["max_connections", "max_connections_per_uid"])
def test_a_refused_varlink_client_sees_the_connection_closed(
    limit: str, sock_dir: str, server_backend: str, no_fd_leak: None
) -> None:
    path = os.path.join(sock_dir, "edges.sock")
    server = make_server(**{limit: 1})
    with server.serve_in_thread(path, backend=server_backend), Client(path) as holder:
        assert holder.call(Add(a=1, b=2)) == 3  # admitted: the one connection allowed
        with raw(path) as sock:  # no reply, no byte: closed, as sd-varlink closes it
            sock.sendall(add_message(1, 2))
            assert everything(sock) == b""
        with VarlinkClient(path, timeout=10) as ours, pytest.raises(ConnectionBrokenError):
            ours.call(VAdd(a=1, b=2))
        with Client(path) as refused, pytest.raises(ServerBusyError, match="connections"):
            refused.call(Add(a=1, b=2))  # a unixrpc peer still reads why
        assert holder.call(Add(a=2, b=2)) == 4
    with (
        server.serve_in_thread(path, backend=server_backend),  # (nothing was left lingering)
        VarlinkClient(path, timeout=10) as ours,
    ):
        assert ours.call(VAdd(a=1, b=2)) == 3


# -- listeners that speak varlink alone -------------------------------------------------------


@pytest.mark.server
def test_a_listener_of_varlink_alone_beside_one_of_both(
    sock_dir: str, server_backend: str, no_fd_leak: None
) -> None:
    path, only = os.path.join(sock_dir, "both.sock"), os.path.join(sock_dir, "varlink.sock")
    server = make_server()
    with server.serve_in_thread(path, varlink=only, backend=server_backend):
        assert sorted(str(address) for address in server.addresses) == sorted([path, only])
        with varlink.Client(address="unix:" + only) as client, client.open(IFACE) as edges:
            assert edges.Add(a=1, b=2) == {"result": 3}
            assert list(edges.Count(2, _more=True)) == [{"item": 0}, {"item": 1}, {}]
        for where in (path, only):
            with VarlinkClient(where, timeout=10) as ours:
                assert ours.call(VAdd(a=20, b=22)) == 42
        with Client(path) as client:
            assert client.call(Add(a=1, b=1)) == 2
        with Client(only, timeout=10) as client, pytest.raises(Error):
            client.call(Add(a=1, b=1))  # its frame is read as a varlink message
    assert not os.path.exists(only)  # a socket file it bound is removed like the other


@pytest.mark.server
def test_varlink_off_keeps_listeners_of_varlink_alone(
    sock_dir: str, server_backend: str, no_fd_leak: None
) -> None:
    path = os.path.join(sock_dir, "rpc.sock")
    handed = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    handed.bind(os.path.join(sock_dir, "handed.sock"))
    handed.listen()
    server = make_server(varlink=False)  # the shared socket: unixrpc only
    with server.serve_in_thread(path, varlink=handed, backend=server_backend):
        with raw(path) as sock:
            sock.sendall(add_message(1, 2))
            assert b"unixrpc.ProtocolError" in everything(sock)  # a unixrpc frame, then the end
        with VarlinkClient(handed.getsockname(), timeout=10) as ours:
            assert ours.call(VAdd(a=1, b=2)) == 3
        with Client(path) as client:
            assert client.call(Add(a=1, b=1)) == 2
    assert handed.fileno() == -1  # taken over: closed when the server stopped


def test_a_listener_of_varlink_alone_needs_varlink_names(sock_dir: str) -> None:
    class GetA(Method[int], name="a.Get"):
        pass

    class GetB(Method[int], name="b.Get"):
        pass

    server = Server(name=IFACE, varlink=False)
    server.add_method(GetA, lambda request: 1)
    server.add_method(GetB, lambda request: 2)  # both map to org.example.edges.Get
    with pytest.raises(ValueError, match=r"cannot serve varlink on .*do not map to varlink names"):
        server.serve_forever(os.path.join(sock_dir, "a.sock"), varlink=os.path.join(sock_dir, "v.sock"))
    assert os.listdir(sock_dir) == []


DAEMON = """
import logging, sys
sys.path[:0] = {path!r}
from test_varlink_listeners import make_server
logging.basicConfig(level=logging.WARNING)
make_server().serve_forever(backend={backend!r})
"""


@pytest.mark.skipif(not os.path.exists(SOCKET_ACTIVATE), reason="systemd-socket-activate is not installed")
@pytest.mark.parametrize("backend", ["asyncio", "threads"])
def test_an_activated_socket_named_varlink_speaks_varlink_alone(sock_dir: str, backend: str) -> None:
    api, only = os.path.join(sock_dir, "api.sock"), os.path.join(sock_dir, "varlink.sock")
    env = {k: v for k, v in os.environ.items() if not k.startswith("LISTEN_")}
    script = DAEMON.format(path=[os.path.dirname(__file__), *sys.path], backend=backend)
    proc = subprocess.Popen(
        [SOCKET_ACTIVATE, "-l", api, "-l", only, "--fdname=api:varlink", sys.executable, "-c", script],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while not (os.path.exists(api) and os.path.exists(only)):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "systemd-socket-activate did not listen"
            time.sleep(0.02)
        with Client(api, timeout=20) as client:  # (starts the daemon)
            assert client.call(Add(a=1, b=2)) == 3
        with VarlinkClient(only, timeout=20) as ours:
            assert ours.call(VAdd(a=1, b=2)) == 3
        with VarlinkClient(api, timeout=20) as ours:  # the other one speaks both
            assert ours.call(VAdd(a=2, b=2)) == 4
        with Client(only, timeout=20) as client, pytest.raises(Error):
            client.call(Add(a=1, b=1))
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
        _, stderr = proc.communicate()
    assert proc.returncode == 0, stderr
    assert os.path.exists(only), "the socket file belongs to systemd: never unlinked"


# -- a 4 MiB message ----------------------------------------------------------------------------


@pytest.mark.server
def test_a_4_mib_message_through_python_varlink_and_ours(
    sock_dir: str, server_backend: str, no_fd_leak: None
) -> None:
    path = os.path.join(sock_dir, "edges.sock")
    text = "x" * (4 << 20)
    with make_server().serve_in_thread(path, backend=server_backend):
        with varlink.Client(address="unix:" + path) as client, client.open(IFACE) as edges:
            assert edges.Echo(text=text)["result"] == text  # (it reads 8 KiB at a time)
        with VarlinkClient(path, timeout=30) as ours:
            assert ours.call(VEcho(text=text)) == text
