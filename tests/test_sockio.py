"""The engines' own socket I/O (``server/sockio.py``) and the shutdown drain
rule (``server/kit.py``), on socket pairs and fakes: the facts a read gives
the core, descriptors on a frame's first byte, nothing sent after a cut
frame, and a close that waits for the descriptor's last user."""

from __future__ import annotations

import array
import os
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from conftest import open_fds
from unixrpc._core import wire
from unixrpc._core.framing import FrameSerializer
from unixrpc.exceptions import AncillaryDataTruncatedError, ConnectionBrokenError
from unixrpc.protocol import StreamProtocol
from unixrpc.server.kit import DRAIN_POLL, Shutdown, drain
from unixrpc.server.sockio import ServerSocket


@pytest.fixture
def pair() -> Iterator[tuple[ServerSocket, socket.socket]]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    io = ServerSocket(
        ours, StreamProtocol(FrameSerializer(max_frame_size=1 << 20, max_fds=253)), socket.CMSG_SPACE(4 * 4)
    )
    yield io, theirs
    io.close()
    theirs.close()


def _frame(body: bytes) -> bytes:
    return wire.frame(body)


def test_frames_and_descriptors_come_in(pair: tuple[ServerSocket, socket.socket]) -> None:
    io, peer = pair
    assert io.receive() == []  # nothing yet: no wait
    r, w = os.pipe()
    try:
        peer.sendmsg(
            [_frame(b'{"id":1}')], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [r]).tobytes())]
        )
        frames = io.receive()
        assert len(frames) == 1
        assert len(io.fds) == 1
        received = io.fds.pop()
        assert os.get_inheritable(received) is False  # MSG_CMSG_CLOEXEC
        os.close(received)
    finally:
        os.close(r)
        os.close(w)


def test_truncated_control_data_is_fatal_and_closes_what_came(
    pair: tuple[ServerSocket, socket.socket],
) -> None:
    io, peer = pair
    before = open_fds()
    pipes = [os.pipe() for _ in range(8)]
    fds = [fd for p in pipes for fd in p]
    try:
        rights = array.array("i", fds).tobytes()
        peer.sendmsg([_frame(b"{}")], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, rights)])
        with pytest.raises(AncillaryDataTruncatedError, match="truncated"):
            io.receive()
        assert io.fds == []
    finally:
        for fd in fds:
            os.close(fd)
    assert open_fds() == before


def test_end_of_stream_and_reset_are_connection_broken(pair: tuple[ServerSocket, socket.socket]) -> None:
    io, peer = pair
    peer.shutdown(socket.SHUT_WR)
    with pytest.raises(ConnectionBrokenError, match="closed"):
        io.receive()


def test_a_reset_is_connection_broken(pair: tuple[ServerSocket, socket.socket]) -> None:
    io, peer = pair
    io.send(b"unread", 0, None)
    peer.close()  # with our bytes unread: a reset
    with pytest.raises(ConnectionBrokenError, match="reset"):
        io.receive()


def test_nothing_is_sent_after_a_cut_frame(pair: tuple[ServerSocket, socket.socket]) -> None:
    io, _ = pair
    assert io.send(b"abc", 0, None) == 3
    io.cut("half a frame went out")
    with pytest.raises(ConnectionBrokenError, match="half a frame"):
        io.send(b"def", 0, None)


def test_close_waits_for_a_blocked_writer_and_frees_the_descriptor_once(
    pair: tuple[ServerSocket, socket.socket],
) -> None:
    io, _ = pair
    fd = io.sock.fileno()
    outcome: list[BaseException] = []

    def write() -> None:
        try:
            io.send_within(b"x" * (8 << 20), None, 30.0)  # the peer never reads: it waits for room
        except BaseException as exc:
            outcome.append(exc)

    writer = threading.Thread(target=write)
    writer.start()
    time.sleep(0.2)
    assert io.sock.fileno() == fd  # in use: not closed under the writer
    io.close(wait=True)  # shut down: the writer fails at once and, the last user, closes it
    writer.join(5)
    assert not writer.is_alive()
    assert isinstance(outcome[0], ConnectionBrokenError)
    assert io.sock.fileno() == -1


def test_send_within_times_out(pair: tuple[ServerSocket, socket.socket]) -> None:
    io, _ = pair
    with pytest.raises(TimeoutError, match="middle of a frame"):
        io.send_within(b"x" * (8 << 20), None, 0.1)
    with pytest.raises(ConnectionBrokenError):
        io.send(b"more", 0, None)


class _Conn:
    def __init__(self, busy: bool) -> None:
        self._busy = busy
        self.streams_ended = 0

    def busy(self) -> bool:
        return self._busy

    def describe_calls(self) -> list[str]:
        return ["Slow (id 1)"] if self._busy else []

    def end_streams(self) -> None:
        self.streams_ended += 1


def test_the_drain_waits_while_busy_within_the_grace(caplog: pytest.LogCaptureFixture) -> None:
    assert drain(0.0, 0.5, 1.0, [_Conn(False)]) is None  # nothing busy: over
    assert drain(0.0, 0.5, 1.0, [_Conn(False), _Conn(True)]) == DRAIN_POLL
    assert drain(0.0, 0.995, 1.0, [_Conn(True)]) == pytest.approx(0.005)
    assert not caplog.records
    assert drain(0.0, 1.0, 1.0, [_Conn(True)]) is None  # the grace passed: over, and said
    assert "cancelling 1 calls: Slow (id 1)" in caplog.text
    assert drain(0.0, 0.0, 0.0, [_Conn(True)]) is None  # no grace: over at once


def test_the_shutdown_sequence_grace_hurried_streams_ended_once() -> None:
    """kit.Shutdown, what both engines run: the first request starts it, a
    shorter grace hurries it, a longer one is ignored, no grace means the
    server's; begin() ends each stream once and starts the grace's clock."""
    shutdown = Shutdown(default_grace=10.0)
    assert not shutdown.requested
    assert shutdown.request(5.0) is True
    assert shutdown.request(8.0) is False
    assert shutdown.grace == 5.0
    assert shutdown.request(2.0) is False
    assert shutdown.grace == 2.0
    busy, idle = _Conn(True), _Conn(False)
    shutdown.begin(100.0, [busy, idle])
    assert (busy.streams_ended, idle.streams_ended) == (1, 1)
    assert shutdown.pause(101.0, [busy, idle]) == DRAIN_POLL
    assert shutdown.pause(102.0, [busy, idle]) is None  # 2 s of grace from 100.0
    assert shutdown.pause(100.5, [idle]) is None  # nothing busy: over at once
    assert Shutdown(3.0).request() is True


def test_a_shutdown_not_asked_a_grace_takes_the_servers() -> None:
    shutdown = Shutdown(default_grace=3.0)
    shutdown.request()
    assert shutdown.grace == 3.0
    shutdown.begin(0.0, [])
    assert shutdown.pause(2.9, [_Conn(True)]) == DRAIN_POLL
    assert shutdown.pause(3.0, [_Conn(True)]) is None
