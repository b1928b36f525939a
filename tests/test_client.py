"""The raw Unix stream clients over real sockets: connecting, packets, EOF,
timeouts, the socket proxy, errors. Each shared test runs on the sync client
and on the async client under asyncio and trio."""

from __future__ import annotations

import os
import pathlib
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator

import anyio
import pytest

from drivers import connect, lp_frame, lp_json, read_lp_frames
from unixrpc import (
    AsyncUnixStreamClient,
    ClientClosedError,
    ConnectionBrokenError,
    FrameTooLargeError,
    JSONSerializer,
    LengthPrefixedSerializer,
    SerializeError,
    StreamProtocol,
    StreamProtocolParseError,
    UnixCredentials,
    UnixSocketAddress,
    UnixStreamClient,
)

pytestmark = pytest.mark.anyio


@pytest.fixture
def listener(sock_dir: str) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(os.path.join(sock_dir, "l.sock"))
    sock.listen(16)
    with sock:
        yield sock


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """(client end, peer end) of a connected socketpair; the test closes the
    client end through the client."""
    client_end, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with peer:
        yield client_end, peer
    client_end.close()


# -- connecting ------------------------------------------------------------------


@pytest.mark.parametrize("form", ["str", "bytes", "pathlike", "address"])
async def test_connect_by_path(client_kind: str, listener: socket.socket, form: str) -> None:
    path: str = listener.getsockname()
    address = {
        "str": path,
        "bytes": os.fsencode(path),
        "pathlike": pathlib.Path(path),
        "address": UnixSocketAddress.from_pathname(path),
    }[form]
    client = await connect(client_kind, address)
    conn, _ = listener.accept()
    with conn:
        assert client.client.get_peer_name() == UnixSocketAddress.from_pathname(path)
        assert str(client.client.get_peer_name()) == path
        assert client.client.get_local_name().is_unnamed()
        await client.send({"hello": form})
        assert read_lp_frames(conn, 1) == [{"hello": form}]
        await client.close()


async def test_connect_by_abstract_name(client_kind: str) -> None:
    name = f"urpc-test-{os.getpid()}-{client_kind}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as srv:
        srv.bind(b"\0" + name.encode())
        srv.listen(1)
        for address in (b"\0" + name.encode(), UnixSocketAddress.from_abstract_name(name)):
            client = await connect(client_kind, address)
            peer_name = client.client.get_peer_name()
            assert peer_name.is_abstract()
            assert peer_name.as_abstract_name() == name.encode()
            assert str(peer_name) == f"@{name}"
            srv.accept()[0].close()
            await client.close()


async def test_connect_to_missing_path(client_kind: str, sock_dir: str) -> None:
    with pytest.raises(FileNotFoundError):
        await connect(client_kind, os.path.join(sock_dir, "nobody.sock"))


async def test_connect_refused_when_nobody_listens(client_kind: str, sock_dir: str) -> None:
    path = os.path.join(sock_dir, "stale.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stale:
        stale.bind(path)  # a socket file with no listener behind it
        with pytest.raises(ConnectionRefusedError):
            await connect(client_kind, path)


async def test_connect_rejects_bad_addresses(client_kind: str) -> None:
    with pytest.raises(ValueError, match="empty address"):
        await connect(client_kind, "")
    with pytest.raises(ValueError, match="longer than"):
        await connect(client_kind, "/tmp/" + "x" * 200)
    with pytest.raises(TypeError, match="expected a socket path"):
        await connect(client_kind, 1234)


async def test_connected_socket_is_taken_over(
    client_kind: str, pair: tuple[socket.socket, socket.socket]
) -> None:
    client_end, peer = pair
    client = await connect(client_kind, client_end)
    peer.sendall(lp_frame([1, 2, 3]))
    assert await client.recv() == [1, 2, 3]
    await client.close()
    assert client_end.fileno() == -1, "closing the client closes the socket it was given"


async def test_given_socket_must_be_connected_unix_stream(client_kind: str) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as unconnected:
        with pytest.raises(OSError, match="not connected") as info:
            await connect(client_kind, unconnected)
        assert info.type is OSError or issubclass(info.type, OSError)
        assert unconnected.fileno() != -1, "a rejected socket stays open and belongs to the caller"
    with (
        socket.socket(socket.AF_INET, socket.SOCK_STREAM) as inet,
        pytest.raises(ValueError, match="AF_UNIX"),
    ):
        await connect(client_kind, inet)
    with (
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as dgram,
        pytest.raises(ValueError, match="SOCK_STREAM"),
    ):
        await connect(client_kind, dgram)


def _fill_backlog(path: str) -> tuple[socket.socket, list[socket.socket]]:
    """A listener whose backlog is full: the next connect() has to wait."""
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(0)
    fillers = []
    while True:
        filler = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        filler.setblocking(False)
        try:
            filler.connect(path)
        except BlockingIOError:
            filler.close()
            break
        fillers.append(filler)
    return srv, fillers


def test_sync_connect_timeout(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "busy.sock")
    srv, fillers = _fill_backlog(path)
    try:
        with pytest.raises(TimeoutError, match=r"within 0\.2 seconds"):
            UnixStreamClient(path, lp_json(), connect_timeout=0.2)
        # once there is room, the same call connects
        srv.accept()[0].close()
        with UnixStreamClient(path, lp_json(), connect_timeout=1) as client:
            assert str(client.get_peer_name()) == path
    finally:
        for sock in fillers:
            sock.close()
        srv.close()


@pytest.mark.parametrize("scope", ["anyio", "native"])
async def test_async_connect_timeout_with_framework_scopes(
    anyio_backend: str, sock_dir: str, scope: str, no_fd_leak: None
) -> None:
    path = os.path.join(sock_dir, "busy.sock")
    srv, fillers = _fill_backlog(path)
    try:
        client = AsyncUnixStreamClient(path, lp_json())
        if scope == "anyio":
            with pytest.raises(TimeoutError):
                with anyio.fail_after(0.1):
                    await client.wait_connected()
        elif anyio_backend == "asyncio":
            import asyncio

            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.1):
                    await client.wait_connected()
        else:
            import trio

            with pytest.raises(trio.TooSlowError):
                with trio.fail_after(0.1):
                    await client.wait_connected()
        assert not client.is_connected()
        srv.accept()[0].close()
        async with client:  # room now: the same client connects
            assert client.is_connected()
            assert str(client.get_peer_name()) == path
    finally:
        for sock in fillers:
            sock.close()
        srv.close()


async def test_async_client_needs_wait_connected_for_socket_info(
    anyio_backend: str, pair: tuple[socket.socket, socket.socket]
) -> None:
    client = AsyncUnixStreamClient(pair[0], lp_json())
    with pytest.raises(RuntimeError, match="wait_connected"):
        client.get_peer_credentials()
    with pytest.raises(RuntimeError, match="wait_connected"):
        _ = client.socket
    await client.wait_connected()
    await client.wait_connected()  # a no-op the second time
    assert client.get_peer_credentials() == UnixCredentials.of_this_process()
    await client.aclose()


async def test_sync_with_does_nothing_on_enter(pair: tuple[socket.socket, socket.socket]) -> None:
    client = UnixStreamClient(pair[0], lp_json())
    pair[1].sendall(lp_frame("early"))
    assert client.recv_packet() == "early"  # usable before entering ``with``
    with client as entered:
        assert entered is client
    assert client.is_closed()


async def test_peer_credentials_of_another_process(client_kind: str, sock_dir: str) -> None:
    path = os.path.join(sock_dir, "creds.sock")
    code = (
        "import socket,sys;s=socket.socket(socket.AF_UNIX);s.bind(sys.argv[1]);s.listen(1);"
        "print('ready',flush=True);c,_=s.accept();c.recv(1)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, path], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        client = await connect(client_kind, path)
        creds = client.client.get_peer_credentials()
        assert creds == UnixCredentials(proc.pid, os.getuid(), os.getgid())
        assert (creds.pid, creds.uid, creds.gid) == (proc.pid, os.getuid(), os.getgid())
        await client.close()
    finally:
        proc.kill()
        proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()


# -- packets -------------------------------------------------------------------


async def test_round_trip_and_extraneous_bytes_kept(
    client_kind: str, pair: tuple[socket.socket, socket.socket]
) -> None:
    client = await connect(client_kind, pair[0])
    peer = pair[1]
    await client.send({"data": 42})
    assert read_lp_frames(peer, 1) == [{"data": 42}]
    # three packets and half of a fourth in one write
    fourth = lp_frame({"n": 4})
    peer.sendall(lp_frame({"n": 1}) + lp_frame({"n": 2}) + lp_frame({"n": 3}) + fourth[:3])
    assert [await client.recv() for _ in range(3)] == [{"n": 1}, {"n": 2}, {"n": 3}]
    peer.sendall(fourth[3:])
    assert await client.recv() == {"n": 4}
    await client.close()


async def test_bad_packet_then_next_good_packet(
    client_kind: str, pair: tuple[socket.socket, socket.socket]
) -> None:
    client = await connect(client_kind, pair[0])
    bad = b"{not json"
    pair[1].sendall(len(bad).to_bytes(4, "big") + bad + lp_frame("good"))
    with pytest.raises(StreamProtocolParseError, match="invalid JSON"):
        await client.recv()
    assert await client.recv() == "good"
    await client.close()


async def test_json_lines_protocol_with_ndjson_peer(
    client_kind: str, pair: tuple[socket.socket, socket.socket]
) -> None:
    import json

    client = await connect(client_kind, pair[0], StreamProtocol(JSONSerializer()))
    await client.send({"a": [1, "x\ny"]})
    line = pair[1].recv(1024)
    assert line.count(b"\n") == 1
    assert line.endswith(b"\n")
    assert json.loads(line) == {"a": [1, "x\ny"]}
    pair[1].sendall(json.dumps({"b": 2}).encode() + b"\n" + json.dumps([3]).encode() + b"\n")
    assert await client.recv() == {"b": 2}
    assert await client.recv() == [3]
    await client.close()


async def test_large_packet_with_small_max_recv_size(
    client_kind: str, pair: tuple[socket.socket, socket.socket]
) -> None:
    client = await connect(client_kind, pair[0], max_recv_size=1024)
    big = {"blob": "z" * 300_000}
    writer = threading.Thread(target=pair[1].sendall, args=(lp_frame(big) * 2,))
    writer.start()
    assert await client.recv() == big
    assert await client.recv() == big
    writer.join()
    assert client.client.protocol is not None
    await client.close()


async def test_recv_timeout(client_kind: str, pair: tuple[socket.socket, socket.socket]) -> None:
    client = await connect(client_kind, pair[0])
    with pytest.raises(TimeoutError):
        await client.recv_within(0.05)
    pair[1].sendall(lp_frame("late"))
    assert await client.recv_within(5) == "late"
    await client.close()


async def test_recv_timeout_keeps_partial_packet(
    client_kind: str, pair: tuple[socket.socket, socket.socket]
) -> None:
    client = await connect(client_kind, pair[0])
    frame = lp_frame({"k": "v" * 100})
    pair[1].sendall(frame[:10])
    with pytest.raises(TimeoutError):
        await client.recv_within(0.05)
    pair[1].sendall(frame[10:])
    assert await client.recv_within(5) == {"k": "v" * 100}
    await client.close()


async def test_async_recv_timeout_with_native_scopes(
    anyio_backend: str, pair: tuple[socket.socket, socket.socket]
) -> None:
    async with AsyncUnixStreamClient(pair[0], lp_json()) as client:
        if anyio_backend == "asyncio":
            import asyncio

            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.05):
                    await client.recv_packet()
        else:
            import trio

            with pytest.raises(trio.TooSlowError):
                with trio.fail_after(0.05):
                    await client.recv_packet()
        pair[1].sendall(lp_frame("after the timeout"))
        assert await client.recv_packet() == "after the timeout"


async def test_iter_received_packets(client_kind: str, pair: tuple[socket.socket, socket.socket]) -> None:
    client = await connect(client_kind, pair[0])
    assert await client.iter_packets() == []
    pair[1].sendall(b"".join(lp_frame(i) for i in range(5)))
    assert await client.iter_packets() == [0, 1, 2, 3, 4]
    assert await client.iter_packets(timeout=0.02) == []
    pair[1].sendall(lp_frame("x") + lp_frame("y"))
    assert await client.iter_packets(timeout=1) == ["x", "y"]
    await client.close()


async def test_peer_eof(client_kind: str, pair: tuple[socket.socket, socket.socket]) -> None:
    client = await connect(client_kind, pair[0])
    pair[1].sendall(lp_frame("last"))
    pair[1].shutdown(socket.SHUT_WR)
    assert await client.recv() == "last"
    with pytest.raises(ConnectionBrokenError, match=r"peer closed the connection$"):
        await client.recv()
    with pytest.raises(ConnectionBrokenError):  # and stays so
        await client.recv()
    await client.close()


async def test_peer_eof_mid_packet(client_kind: str, pair: tuple[socket.socket, socket.socket]) -> None:
    client = await connect(client_kind, pair[0])
    pair[1].sendall(lp_frame("cut short")[:7])
    pair[1].shutdown(socket.SHUT_WR)
    with pytest.raises(ConnectionBrokenError, match=r"in the middle of a packet \(7 bytes pending\)"):
        await client.recv()
    await client.close()


async def test_peer_reset_is_the_end_of_the_connection(
    client_kind: str, pair: tuple[socket.socket, socket.socket]
) -> None:
    # the peer closes with our data unread: the kernel resets the connection,
    # and the next receive fails with ECONNRESET instead of reading EOF
    client = await connect(client_kind, pair[0])
    await client.send("never read")
    pair[1].close()
    with pytest.raises(ConnectionBrokenError, match=r"peer reset the connection$"):
        await client.recv()
    with pytest.raises(ConnectionBrokenError):  # and stays so
        await client.recv()
    await client.close()


async def test_send_to_closed_peer(client_kind: str, pair: tuple[socket.socket, socket.socket]) -> None:
    client = await connect(client_kind, pair[0])
    pair[1].close()
    with pytest.raises(ConnectionBrokenError, match="peer closed the connection"):
        await client.send("nobody listens")
    await client.close()


async def test_send_eof(client_kind: str, pair: tuple[socket.socket, socket.socket]) -> None:
    client = await connect(client_kind, pair[0])
    await client.send("one")
    await client.send_eof()
    await client.send_eof()  # idempotent
    assert read_lp_frames(pair[1], 1) == ["one"]
    assert pair[1].recv(10) == b"", "peer sees end of stream"
    with pytest.raises(ClientClosedError, match="after send_eof"):
        await client.send("two")
    pair[1].sendall(lp_frame("still receiving"))
    assert await client.recv() == "still receiving"
    await client.close()


async def test_serialize_errors_send_nothing(
    client_kind: str, pair: tuple[socket.socket, socket.socket]
) -> None:
    protocol = StreamProtocol(LengthPrefixedSerializer(JSONSerializer(), max_frame_size=100))
    client = await connect(client_kind, pair[0], protocol)
    with pytest.raises(SerializeError, match="cannot encode packet as JSON"):
        await client.send({"a set": {1, 2}})
    with pytest.raises(FrameTooLargeError, match="over the frame limit of 100 bytes"):
        await client.send("x" * 200)
    await client.send("fine")
    assert read_lp_frames(pair[1], 1) == ["fine"]
    await client.close()


async def test_socket_proxy(client_kind: str, pair: tuple[socket.socket, socket.socket]) -> None:
    client = await connect(client_kind, pair[0])
    proxy = client.client.socket
    assert proxy.family == socket.AF_UNIX
    assert proxy.type == socket.SOCK_STREAM
    assert proxy.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE) == socket.SOCK_STREAM
    proxy.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
    assert proxy.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) >= 65536
    assert proxy.fileno() == pair[0].fileno()
    assert not hasattr(proxy, "close")
    assert not hasattr(proxy, "recv")
    await client.close()


async def test_close_is_idempotent_and_final(
    client_kind: str, pair: tuple[socket.socket, socket.socket]
) -> None:
    client = await connect(client_kind, pair[0])
    await client.close()
    await client.close()
    with pytest.raises(ClientClosedError):
        await client.send("x")
    with pytest.raises(ClientClosedError):
        await client.recv()
    assert pair[1].recv(10) == b""


def test_public_api() -> None:
    import unixrpc

    assert set(unixrpc.__all__) >= {
        "UnixStreamClient",
        "AsyncUnixStreamClient",
        "StreamProtocol",
        "JSONSerializer",
        "LengthPrefixedSerializer",
        "PydanticSerializer",
        "SocketAncillary",
        "SCMRights",
        "SCMCredentials",
        "UnixCredentials",
        "UnixSocketAddress",
        "ClientClosedError",
        "StreamProtocolParseError",
        "AbstractIncrementalPacketSerializer",
        "AbstractPacketSerializer",
    }
    for name in unixrpc.__all__:
        obj = getattr(unixrpc, name)
        assert obj.__doc__, f"{name} has no docstring"
