"""File descriptors and credentials over the raw clients (SCM_RIGHTS,
SCM_CREDENTIALS), with the count of open descriptors checked around each test."""

from __future__ import annotations

import array
import fcntl
import os
import socket
import tempfile
import threading
from collections.abc import Iterator

import pytest

from drivers import connect, lp_frame, read_lp_frames
from unixrpc import (
    AncillaryDataTruncatedError,
    ConnectionBrokenError,
    SCMCredentials,
    SCMRights,
    SocketAncillary,
    UnixCredentials,
)

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("no_fd_leak")]


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    client_end, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with peer:
        yield client_end, peer
    client_end.close()


def peer_send_with_fds(peer: socket.socket, data: bytes, fds: list[int]) -> None:
    sent = peer.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
    peer.sendall(data[sent:])


def peer_recv_fds(peer: socket.socket, nbytes: int, max_fds: int = 16) -> tuple[bytes, list[int]]:
    """Read exactly *nbytes*, collecting every descriptor that comes along."""
    data = b""
    fds: list[int] = []
    while len(data) < nbytes:
        chunk, ancdata, flags, _ = peer.recvmsg(nbytes - len(data), socket.CMSG_SPACE(4 * max_fds))
        assert chunk, "unexpected EOF"
        assert not flags & socket.MSG_CTRUNC
        data += chunk
        for level, kind, payload in ancdata:
            assert (level, kind) == (socket.SOL_SOCKET, socket.SCM_RIGHTS)
            fds.extend(array.array("i", payload[: len(payload) - len(payload) % 4]))
    return data, fds


def read_fd(fd: int) -> bytes:
    os.lseek(fd, 0, os.SEEK_SET)
    return os.read(fd, 1000)


def temp_file(content: bytes) -> int:
    fd, path = tempfile.mkstemp()
    os.unlink(path)
    os.write(fd, content)
    return fd


async def test_send_fds_of_every_kind(client_kind: str, pair: tuple[socket.socket, socket.socket]) -> None:
    client = await connect(client_kind, pair[0])
    raw_fd = temp_file(b"from an int")
    sa, sb = socket.socketpair()
    with tempfile.TemporaryFile() as fobj, sa, sb:
        fobj.write(b"from a file object")
        fobj.flush()
        ancillary = SocketAncillary()
        ancillary.add_fds([raw_fd, fobj, sa])
        await client.send({"with": "fds"}, ancillary)
        frame = lp_frame({"with": "fds"})
        data, fds = peer_recv_fds(pair[1], len(frame))
        assert data == frame
        assert len(fds) == 3
        assert read_fd(fds[0]) == b"from an int"
        assert read_fd(fds[1]) == b"from a file object"
        with socket.socket(fileno=fds[2]) as received_sock:
            received_sock.sendall(b"ping")
            assert sb.recv(4) == b"ping"
        os.close(fds[0])
        os.close(fds[1])
        # the sender's descriptors are untouched by sending
        assert read_fd(raw_fd) == b"from an int"
        assert fobj.fileno() >= 0
        assert sa.fileno() >= 0
    os.close(raw_fd)
    await client.close()


async def test_receive_fds_close_on_exec(client_kind: str, pair: tuple[socket.socket, socket.socket]) -> None:
    client = await connect(client_kind, pair[0])
    fds = [temp_file(b"one"), temp_file(b"two")]
    peer_send_with_fds(pair[1], lp_frame("here are two"), fds)
    for fd in fds:
        os.close(fd)
    ancillary = SocketAncillary()
    assert await client.recv(ancillary) == "here are two"
    messages = list(ancillary.messages())
    assert len(messages) == 1
    match messages[0]:
        case SCMRights(received):
            assert len(received) == 2
        case _:
            pytest.fail(f"unexpected message {messages[0]!r}")
    received = list(ancillary.iter_fds())
    assert [read_fd(fd) for fd in received] == [b"one", b"two"]
    for fd in received:
        assert fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC, "received fds must be close-on-exec"
        assert not os.get_inheritable(fd)
        os.close(fd)
    await client.close()


async def test_large_packet_with_fds_spans_reads(
    client_kind: str, pair: tuple[socket.socket, socket.socket]
) -> None:
    """A 2 MiB packet cannot arrive in one read; its fds ride on the first byte."""
    client = await connect(client_kind, pair[0], max_recv_size=4096)
    blob = "b" * (2 * 1024 * 1024)
    fd = temp_file(b"big one")

    writer = threading.Thread(target=peer_send_with_fds, args=(pair[1], lp_frame({"blob": blob}), [fd]))
    writer.start()
    ancillary = SocketAncillary()
    assert await client.recv(ancillary) == {"blob": blob}
    writer.join()
    os.close(fd)
    (received,) = ancillary.iter_fds()
    assert read_fd(received) == b"big one"
    os.close(received)

    # and the other way: the client sends 2 MiB with an fd, the peer gets the fd
    # with the first bytes of the frame
    fd = temp_file(b"upload")
    ancillary = SocketAncillary()
    ancillary.add_fds([fd])
    frame = lp_frame({"blob": blob})
    result: list[tuple[bytes, list[int]]] = []

    def peer_reader() -> None:
        first, ancdata, _, _ = pair[1].recvmsg(64, socket.CMSG_SPACE(4))
        assert ancdata, "fds must come with the first bytes of the frame"
        rest, more = peer_recv_fds(pair[1], len(frame) - len(first))
        result.append((first + rest, list(array.array("i", ancdata[0][2])) + more))

    reader = threading.Thread(target=peer_reader)
    reader.start()
    await client.send({"blob": blob}, ancillary)
    reader.join()
    data, fds = result[0]
    assert data == frame
    assert len(fds) == 1
    assert read_fd(fds[0]) == b"upload"
    os.close(fds[0])
    os.close(fd)
    await client.close()


async def test_truncated_control_data_is_never_silent(
    client_kind: str, pair: tuple[socket.socket, socket.socket]
) -> None:
    client = await connect(client_kind, pair[0])
    fds = [temp_file(b"x") for _ in range(16)]
    peer_send_with_fds(pair[1], lp_frame("too many fds"), fds)
    for fd in fds:
        os.close(fd)
    ancillary = SocketAncillary()
    small = socket.CMSG_SPACE(4 * 2)
    with pytest.raises(
        AncillaryDataTruncatedError, match=rf"ancillary buffer of {small} bytes is too small"
    ) as info:
        await client.recv(ancillary, bufsize=small)
    assert info.value.bufsize == small
    assert info.value.closed_fds >= 1, "the fds that did arrive were counted and closed"
    assert "ancillary_bufsize" in str(info.value)
    assert list(ancillary.iter_fds()) == [], "nothing half-delivered"
    with pytest.raises(ConnectionBrokenError, match="truncated"):
        await client.recv()
    await client.close()


async def test_fds_without_ancillary_data_are_not_leaked(
    client_kind: str, pair: tuple[socket.socket, socket.socket]
) -> None:
    client = await connect(client_kind, pair[0])
    fd = temp_file(b"unwanted")
    peer_send_with_fds(pair[1], lp_frame("ignored fds"), [fd])
    os.close(fd)
    assert await client.recv() == "ignored fds"  # the kernel drops fds nobody asked for
    await client.close()


async def test_pass_credentials(client_kind: str, pair: tuple[socket.socket, socket.socket]) -> None:
    client = await connect(client_kind, pair[0], pass_credentials=True)
    pair[1].sendall(lp_frame("who am i"))
    ancillary = SocketAncillary()
    assert await client.recv(ancillary) == "who am i"
    creds = [m for m in ancillary.messages() if isinstance(m, SCMCredentials)]
    assert creds, "SO_PASSCRED makes the kernel attach the sender's credentials"
    match creds[0]:
        case SCMCredentials(credentials):
            assert credentials[0] == UnixCredentials.of_this_process()
    assert list(ancillary.iter_fds()) == []
    await client.close()


async def test_send_credentials(client_kind: str, pair: tuple[socket.socket, socket.socket]) -> None:
    pair[1].setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    client = await connect(client_kind, pair[0])
    ancillary = SocketAncillary()
    ancillary.add_creds([UnixCredentials.of_this_process()])
    await client.send("signed", ancillary)
    data, ancdata, _, _ = pair[1].recvmsg(100, socket.CMSG_SPACE(12))
    assert data == lp_frame("signed")
    ((level, kind, payload),) = ancdata
    assert (level, kind) == (socket.SOL_SOCKET, socket.SCM_CREDENTIALS)
    assert UnixCredentials(*array.array("i", payload[:12])) == UnixCredentials.of_this_process()
    await client.close()


async def test_bad_fd_fails_cleanly(client_kind: str, pair: tuple[socket.socket, socket.socket]) -> None:
    client = await connect(client_kind, pair[0])
    fd = temp_file(b"")
    os.close(fd)  # now a closed descriptor number
    ancillary = SocketAncillary()
    ancillary.add_fds([fd])
    with pytest.raises(OSError, match="Bad file descriptor"):
        await client.send("never sent", ancillary)
    await client.send("next")  # nothing was written: the stream is intact
    assert read_lp_frames(pair[1], 1) == ["next"]
    await client.close()


async def test_ancillary_argument_errors(client_kind: str, pair: tuple[socket.socket, socket.socket]) -> None:
    client = await connect(client_kind, pair[0])
    with pytest.raises(ValueError, match="without ancillary_data"):
        await client.recv(None, bufsize=1024)
    with pytest.raises(ValueError, match="at least"):
        await client.recv(SocketAncillary(), bufsize=1)
    await client.close()


def test_socket_ancillary_api() -> None:
    ancillary = SocketAncillary()
    assert not ancillary
    with pytest.raises(TypeError, match="expected a file descriptor"):
        ancillary.add_fds(["nope"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="invalid file descriptor"):
        ancillary.add_fds([-1])
    with tempfile.TemporaryFile() as f:
        ancillary.add_fds([0, f])
        ancillary.add_creds([(1, 2, 3)])  # type: ignore[list-item]
        assert list(ancillary.messages()) == [
            SCMRights((0, f.fileno())),
            SCMCredentials((UnixCredentials(1, 2, 3),)),
        ]
        assert list(ancillary.iter_fds()) == [0, f.fileno()]
    ancillary.clear()
    assert list(ancillary.messages()) == []
