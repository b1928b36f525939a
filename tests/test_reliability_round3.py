"""Reliability round 3 (issue 21): what a hostile local peer or a fault
still broke, each with a regression test against a server in its own
process (tests/reliability_support.py), on every engine: the anyio engine
on asyncio and on trio, and the threads engine. Assertions are on outcomes,
resident memory, descriptor and thread counts; timeouts are safety nets.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time

import pytest

from reliability_support import (
    HEADER,
    ServerProcess,
    add_request,
    encode,
    frame,
    raw_connect,
    recv_envelope,
    send_with_fds,
    wait_for,
    wait_served,
)
from unixrpc import Client, ServerBusyError

MiB = 1024 * 1024


@pytest.fixture
def path(sock_dir: str) -> str:
    return os.path.join(sock_dir, "r.sock")


def hold_request(call_id: int, window: int) -> bytes:
    return frame(encode(id=call_id, method="Hold", params={}, stream=window))


def rss_growth(server: ServerProcess, base: int, samples: int = 20) -> int:
    """The largest RSS growth over *base* seen in *samples* reads, while a
    client is served between reads (the loop must stay responsive)."""
    peak = 0
    for _ in range(samples):
        wait_served(server.path)
        peak = max(peak, server.rss() - base)
        time.sleep(0.05)
    return peak


# -- item 1: one write froze an asyncio or trio daemon ---------------------------------------------


@pytest.mark.server
def test_a_stream_window_over_the_server_limit_is_refused(path: str, server_backend: str) -> None:
    """A stream asked with a window of 2**62, and a second frame in the same
    write, against a producer that never awaits: before, the asyncio and trio
    loops never ran anything else again (every client timed out, memory grew
    21-35 MiB/s), and on threads memory grew 47 MiB/s. Now the window is
    over ``max_stream_window`` (1,024): the call is refused with a message
    that names the limit, the call behind it is answered, and other clients
    are served."""
    with ServerProcess(path, server_backend) as server:
        wait_served(path)
        base = server.rss()
        with raw_connect(path) as attacker:
            attacker.sendall(hold_request(1, 2**62) + add_request(2, 2, 3))
            replies = {}
            for _ in range(2):
                reply = recv_envelope(attacker)
                assert reply is not None
                replies[reply["id"]] = reply
            assert replies[2] == {"id": 2, "result": 5}
            error = replies[1]["error"]
            assert error["code"] == "unixrpc.ProtocolError"
            assert "over this server's limit of 1024" in error["message"]
            assert rss_growth(server, base, samples=5) < 32 * MiB
        assert server.alive()


@pytest.mark.server
def test_a_producer_that_never_awaits_cannot_hold_the_loop_or_grow_memory(
    path: str, server_backend: str
) -> None:
    """The largest window allowed, credit sent far beyond it, a producer that
    never awaits, and a peer that never reads: items are produced only while
    the connection's output has room, the engine yields between items, and
    other clients are served all along with the server's memory bounded."""
    with ServerProcess(path, server_backend) as server:
        wait_served(path)
        base = server.rss()
        with raw_connect(path) as attacker:
            attacker.setblocking(False)
            credit = b"".join(frame(encode(credit=1, n=2**62)) for _ in range(64))
            with contextlib.suppress(BlockingIOError):  # the server stopped reading this peer
                attacker.sendall(hold_request(1, 1024) + add_request(2, 2, 3) + credit)
            growth = rss_growth(server, base)
            assert growth < 48 * MiB, f"RSS grew by {growth / MiB:.1f} MiB"
            with Client(path, timeout=30) as client:
                items = []
                with client.stream(_hold()) as stream:
                    for item in stream:
                        items.append(item)
                        if len(items) == 100:
                            break
                assert items == list(range(100))
        assert server.alive()


def _hold():  # type: ignore[no-untyped-def]
    from reliability_support import Hold

    return Hold()


# -- item 2: a thread that could not be started stopped the threads engine -------------------------


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping to another uid under RLIMIT_NPROC needs root")
@pytest.mark.server
def test_a_thread_that_cannot_be_started_refuses_work_and_the_daemon_goes_on(
    path: str, server_backend: str
) -> None:
    """Under ``RLIMIT_NPROC`` (as ``TasksMax=``, a container's ``pids.max``
    or a full pid space), thread starts fail. Before, the threads engine's
    ``serve_forever`` raised ``RuntimeError: can't start new thread``,
    answered ``ShuttingDown`` to everyone, removed its socket and exited.
    Now the call or connection that needed the thread is refused
    ``ServerBusyError`` (saying why), the failure is logged at a bounded
    rate, and once threads end the daemon serves again. The anyio engine's
    handler pool no longer counts a thread it failed to start."""
    os.chmod(os.path.dirname(path), 0o755)  # the server drops to a uid of its own after binding
    with ServerProcess(path, server_backend, _spare_threads=3) as server:
        blockers: list[socket.socket] = []
        answers: list[object] = []
        try:
            # the first call alone, answered before the others connect: it has the threads it
            # needs (on the threads engine, its connection's and one to read on while it runs).
            # Sent with the others, the server could admit three connections before any of
            # them read its call, and then none could start its second thread (as happened
            # under pytest -n on a loaded machine).
            for _ in range(6):
                sock = raw_connect(path, timeout=30)
                blockers.append(sock)
                sock.sendall(frame(encode(id=1, method="Block", params={"tag": "t", "seconds": 0.3})))
                if len(blockers) == 1:
                    first = recv_envelope(sock)
                    assert first == {"id": 1, "result": "t"}, first
                    answers.append("ran")
            for sock in blockers[1:]:
                reply = recv_envelope(sock)  # each answered: run once a thread was free, or refused
                assert reply is not None
                if "error" in reply:
                    assert reply["error"]["code"] == ServerBusyError.code, reply
                    assert "could not start a thread" in reply["error"]["message"], reply
                    answers.append("busy")
                else:
                    assert reply == {"id": 1, "result": "t"}
                    answers.append("ran")
            assert server.alive()
            assert os.path.exists(path)
        finally:
            for sock in blockers:
                sock.close()
        if server_backend == "threads":  # a connection or call without a thread is refused
            assert "busy" in answers
        # (the anyio engine's handler pool queues a call behind its busy threads instead)
        assert "ran" in answers
        wait_for(lambda: _served(path), 30, "a new client served after the threads ended")
        assert server.alive()
        assert "could not start a thread" in server.log()


def _served(path: str) -> bool:
    with raw_connect(path) as sock:
        try:
            sock.sendall(add_request(1, 2, 3))
            return recv_envelope(sock) == {"id": 1, "result": 5}
        except OSError:
            return False


# -- item 3: unsent output ignored the budget -------------------------------------------------------


@pytest.mark.server
def test_a_peer_that_pipelines_large_replies_and_never_reads_is_not_read_further(
    path: str, server_backend: str
) -> None:
    """300 pipelined calls returning 1 MiB each, never read: before, +1,131
    MiB on asyncio from 67 KB of requests (the frames already read were all
    run, whatever the output). Now no further frame is taken, from the
    socket or from what was already read, while more than ``max_unsent`` of
    the connection's output waits: the server's memory stays bounded, other
    clients are served, and every reply arrives once the peer reads."""
    with ServerProcess(path, server_backend) as server:
        wait_served(path)
        base = server.rss()
        with raw_connect(path) as greedy:
            greedy.sendall(
                b"".join(frame(encode(id=i, method="Big", params={"size": MiB})) for i in range(300))
            )
            growth = rss_growth(server, base, samples=10)
            # (16 handler threads on the threads engine each hold a reply being encoded)
            assert growth < 128 * MiB, f"RSS grew by {growth / MiB:.1f} MiB"
            greedy.settimeout(30)
            ids = sorted(recv_envelope(greedy)["id"] for _ in range(300))  # type: ignore[index]
            assert ids == list(range(300))
        assert server.alive()


@pytest.mark.server
def test_replies_a_peer_does_not_read_are_charged_to_the_budget(path: str, server_backend: str) -> None:
    """16 calls in flight on one connection whose handlers all return 4 MiB
    at once, and a peer that does not read: before, +256-304 MiB per
    connection on threads and trio, and nothing closed it. Now unsent output
    is charged to ``max_buffered_bytes`` (32 MiB here): the connection that
    takes the server over it is told why and closed, its queued replies
    dropped, and other clients are served meanwhile."""
    with ServerProcess(path, server_backend, max_buffered_bytes=32 * MiB) as server:
        wait_served(path)
        with raw_connect(path) as greedy:
            # 16 calls in flight (the threads engine runs 16 per connection), 4 MiB each
            big = {"tag": "big", "size": 4 * MiB}
            greedy.sendall(b"".join(frame(encode(id=i, method="BigAfter", params=big)) for i in range(16)))
            with raw_connect(path) as probe:
                wait_for(lambda: _pending(probe, "big") == 16, 30, "the calls started")
            _release_tag(path, "big")
            greedy.settimeout(30)
            farewell = None
            while True:  # read what it was sent, up to its end
                reply = recv_envelope(greedy)
                if reply is None:
                    break
                if reply["id"] is None:
                    farewell = reply
            assert farewell is not None, "the connection was not told why it was closed"
            assert "budget of 33554432 bytes" in farewell["error"]["message"]
        wait_served(path)
        assert server.alive()


# -- item 7: a peer that never reads its replies was never timed out ---------------------------------


@pytest.mark.server
@pytest.mark.parametrize("attack", ["replies", "stream"])
def test_a_peer_that_never_reads_its_replies_is_closed_after_the_write_timeout(
    path: str, server_backend: str, attack: str
) -> None:
    """Calls whose replies (8 of 1 MiB) or stream items (a window of 64
    items of 64 KiB) the peer never reads: before, neither
    ``frame_timeout`` nor ``connection_idle_timeout`` closed it and its
    unsent output stayed in memory for ever. Now a write the socket cannot
    take waits ``write_timeout`` for the peer, then the connection is closed
    and logged, its calls cancelled: the server is back to the descriptors
    and threads it had, and the peer finds the end of the stream after what
    the socket held."""
    with ServerProcess(path, server_backend, write_timeout=1.0) as server:
        wait_served(path)
        fds, threads = server.fds(), server.threads()
        with raw_connect(path) as greedy:
            greedy.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            if attack == "replies":
                big = b"".join(frame(encode(id=i, method="Big", params={"size": MiB})) for i in range(8))
                greedy.sendall(big)
            else:
                greedy.sendall(frame(encode(id=1, method="Chunks", params={"size": 64 * 1024}, stream=64)))
            wait_for(lambda: "did not read its replies" in server.log(), 30, "the write timeout")
            server.wait_fds(fds, 30)
            wait_for(lambda: server.threads() <= threads, 30, f"server threads back to {threads}")
            greedy.settimeout(30)
            received = 0
            while chunk := greedy.recv(1 << 20):  # what the socket held, then the end
                received += len(chunk)
            assert received < 8 * MiB
        wait_served(path)
        assert server.alive()


def _pending(probe: socket.socket, tag: str) -> int:
    probe.sendall(frame(encode(id=1, method="Pending", params={"tag": tag})))
    reply = recv_envelope(probe)
    assert reply is not None
    return int(reply["result"])


def _release_tag(path: str, tag: str) -> None:
    from reliability_support import Release

    with Client(path, timeout=30) as client:
        client.call(Release(tag=tag))


# -- item 6: at a soft RLIMIT_NOFILE of 1,024 one uid locked everyone out ----------------------------


@pytest.mark.parametrize(
    ("fds_per_connection", "fd_limit", "expected"),
    [(1, 1024, (768, 192)), (3, 1024, (256, 64)), (1, 524288, (4096, 1024)), (3, 20000, (4096, 1024))],
)
def test_connection_limits_are_derived_from_the_descriptor_limit(
    fds_per_connection: int, fd_limit: int, expected: tuple[int, int]
) -> None:
    """Connections may use three quarters of the fd table (as sd-varlink),
    one uid a quarter of those: one local user can never take the table."""
    from unixrpc.server.kit import connection_limits

    assert connection_limits(None, None, fds_per_connection, fd_limit) == expected
    assert connection_limits(10, None, fds_per_connection, fd_limit) == (10, 10)
    assert connection_limits(None, 5, fds_per_connection, fd_limit)[1] == 5


@pytest.mark.server
def test_the_server_raises_its_soft_descriptor_limit_to_the_hard_one(path: str, server_backend: str) -> None:
    """systemd starts services with a soft ``RLIMIT_NOFILE`` of 1,024: the
    server raises it to the hard limit when it starts serving."""
    import resource
    import subprocess

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= 1024:
        pytest.skip(f"the hard RLIMIT_NOFILE here is {hard}: nothing to raise to")
    original = subprocess.Popen.__init__

    def low_soft_limit(self: subprocess.Popen[bytes], *args: object, **kwargs: object) -> None:
        kwargs["preexec_fn"] = lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))
        original(self, *args, **kwargs)  # type: ignore[arg-type]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(subprocess.Popen, "__init__", low_soft_limit)
        server = ServerProcess(path, server_backend)
    with server:
        with open(f"/proc/{server.pid}/limits") as limits:
            line = next(line for line in limits if line.startswith("Max open files"))
        assert int(line.split()[3]) > 1024, line
        wait_served(path)


# -- item 9: threads engine: a connection with more calls queued than threads was not read -----------


@pytest.mark.server
def test_a_cancel_behind_more_calls_than_threads_is_answered_at_once(path: str, server_backend: str) -> None:
    """32 blocking calls on one connection (the threads engine runs 16 at
    once, so 16 wait for a thread), then a cancel of the last one: before, the threads engine read
    nothing more until a thread was free (a cancel answered after 7.5 s, a
    Ping after 15.5 s). Now reading goes on while calls wait for a thread:
    the cancel is answered while the others still block."""
    with ServerProcess(path, server_backend) as server:
        with raw_connect(path, timeout=20) as sock:
            sock.sendall(
                b"".join(frame(encode(id=i, method="Block", params={"tag": "q"})) for i in range(1, 33))
            )
            with raw_connect(path) as probe:
                wait_for(lambda: _pending(probe, "q") >= 16, 30, "the calls started")
            sock.sendall(frame(encode(cancel=32)))
            reply = recv_envelope(sock)  # the first answer is the cancel's: every Block still blocks
            assert reply is not None
            assert reply["id"] == 32
            assert reply["error"]["code"] == "unixrpc.Cancelled"
            _release_tag(path, "q")
            ids = sorted(recv_envelope(sock)["id"] for _ in range(31))  # type: ignore[index]
            assert ids == list(range(1, 32))
        assert server.alive()


# -- item 2, second half: threads server wide ---------------------------------------------------------


@pytest.mark.server
def test_threads_are_bounded_server_wide_and_every_connection_is_still_read(
    path: str, server_backend: str
) -> None:
    """Two connections of 16 blocking plain ``def`` calls each, against
    ``max_threads=4``: before, the threads engine started 16 threads per
    connection whatever the server ran (one uid's connections could ask for
    ~263,000). Now the threads beyond each connection's first two come from
    a server-wide budget (on the anyio engine, ``max_threads`` is its handler
    pool): the server's threads stay within it, calls beyond it wait (none
    is refused), each connection is still read (a cancel of a waiting call
    is answered while the others block), and every call completes once
    released."""
    with ServerProcess(path, server_backend, max_threads=4) as server:
        wait_served(path)
        wait_for(lambda: server.threads() <= 4, 10, "the server's threads settled")  # (engine's own)
        base = server.threads()
        with raw_connect(path, timeout=30) as a, raw_connect(path, timeout=30) as b:
            for sock, tag in ((a, "a"), (b, "b")):
                sock.sendall(
                    b"".join(frame(encode(id=i, method="Block", params={"tag": tag})) for i in range(1, 17))
                )
            # threads engine: one runner of its own per connection, plus the budget's 4
            running = 4 + (2 if server_backend.endswith("threads") else 0)
            with raw_connect(path) as probe:
                wait_for(
                    lambda: _pending(probe, "a") + _pending(probe, "b") == running,
                    30,
                    f"{running} calls running",
                )
                # each connection (the probe's too): a reader and a runner of its own; the budget's 4
                most = base + (3 * 2 + 4 if server_backend.endswith("threads") else 4)
                assert server.threads() <= most, f"{server.threads()} threads, at most {most} expected"
                b.sendall(frame(encode(cancel=16)))
                reply = recv_envelope(b)  # answered while every call of b still blocks or waits
                assert reply is not None
                assert (reply["id"], reply["error"]["code"]) == (16, "unixrpc.Cancelled")
                assert _pending(probe, "a") + _pending(probe, "b") == running
            _release_tag(path, "a")
            _release_tag(path, "b")
            assert sorted(recv_envelope(a)["result"] for _ in range(16)) == ["a"] * 16  # type: ignore[index]
            assert sorted(recv_envelope(b)["result"] for _ in range(15)) == ["b"] * 15  # type: ignore[index]
        if server_backend.endswith("threads"):
            assert "max_threads=4" in server.log()
        assert server.alive()


@pytest.mark.server
def test_streams_waiting_for_credit_hold_no_thread(path: str, server_backend: str) -> None:
    """64 plain ``def`` generator streams on one connection, each with a
    window of one item, waiting for credit: before, each held a thread on
    the threads engine (338-477 threads for one connection). Now a stream
    waiting for credit is parked with no thread and goes on when credit
    comes; a cancel or the peer leaving closes its generator. With a
    server-wide budget of 16 threads, all 64 start."""
    with ServerProcess(path, server_backend, max_threads=16) as server:
        wait_served(path)
        base_fds = server.fds()
        with raw_connect(path, timeout=30) as sock, raw_connect(path) as probe:
            sock.sendall(
                b"".join(
                    frame(encode(id=i, method="Ticks", params={"tag": "t"}, stream=1)) for i in range(1, 65)
                )
            )
            firsts = sorted(recv_envelope(sock)["id"] for _ in range(64))  # type: ignore[index]
            assert firsts == list(range(1, 65))
            wait_for(lambda: _pending(probe, "t") == 64, 30, "64 generators open")
            # (main, accept and loop threads; the two connections' own two; the budget of 16): had
            # each waiting stream held a thread, the budget would have left 46 of them unstarted
            most = 3 + 2 * 2 + 16
            assert server.threads() <= most, f"{server.threads()} threads for 64 waiting streams"
            sock.sendall(b"".join(frame(encode(credit=i, n=1)) for i in range(1, 65)))
            seconds = [recv_envelope(sock) for _ in range(64)]
            assert sorted((reply["id"], reply["item"]) for reply in seconds) == [(i, 1) for i in range(1, 65)]  # type: ignore[index]
            sock.sendall(b"".join(frame(encode(cancel=i)) for i in range(1, 33)))
            ended = sorted(recv_envelope(sock)["id"] for _ in range(32))  # type: ignore[index]
            assert ended == list(range(1, 33))
            wait_for(lambda: _pending(probe, "t") == 32, 30, "the cancelled streams' generators closed")
        with raw_connect(path) as probe:
            wait_for(lambda: _pending(probe, "t") == 0, 30, "every generator closed once the peer left")
        server.wait_fds(base_fds, 30)
        assert server.alive()


@pytest.mark.server
@pytest.mark.parametrize("count", [100, pytest.param(600, marks=pytest.mark.stress)])
def test_idle_connections_hold_no_thread(path: str, server_backend: str, count: int) -> None:
    """100 connections that made a call and then wait: before, each held a
    thread (two once a call had run beside the reader) on the threads
    engine, for as long as it stayed open. Now the last thread of an idle
    connection leaves it to the engine, which watches it with the other idle
    ones and gives it a thread again when it has something: the server is
    back to its own threads, and every connection is still served."""
    with ServerProcess(path, server_backend) as server:
        wait_served(path)
        wait_for(lambda: server.threads() <= 4, 30, "the server's threads settled")
        base, base_fds = server.threads(), server.fds()
        socks = [raw_connect(path, timeout=30) for _ in range(count)]
        try:
            for i, sock in enumerate(socks):
                sock.sendall(add_request(1, i, 1))
            assert [recv_envelope(sock)["result"] for sock in socks] == [i + 1 for i in range(count)]  # type: ignore[index]
            wait_for(
                lambda: server.threads() <= base,
                30,
                f"server threads back to {base} with {count} idle connections",
            )
            for i, sock in enumerate(socks):
                sock.sendall(add_request(2, i, 2))
            assert [recv_envelope(sock)["result"] for sock in socks] == [i + 2 for i in range(count)]  # type: ignore[index]
        finally:
            for sock in socks:
                sock.close()
        server.wait_fds(base_fds, 30)
        assert server.alive()


# -- found by the measurements: frames begun, then closed ------------------------------------------


@pytest.mark.server
@pytest.mark.parametrize("count", [40, pytest.param(400, marks=pytest.mark.stress)])
def test_peers_that_begin_large_frames_and_close_cost_what_they_sent(
    path: str, server_backend: str, count: int
) -> None:
    """40 peers each declare a 16 MiB frame, send 80 KiB of it, and close
    at once: before, every engine allocated (and zero-filled) the frame's
    whole buffer for the read that found the end of the stream, outside the
    budget: +1.4-1.6 GiB for 100 such peers, held seconds later. Now a
    server's buffer grows with the frame's bytes (at most 4 times what has
    come), so they cost about what they sent."""
    with ServerProcess(path, server_backend) as server:
        wait_served(path)
        base = server.rss()
        body = b'{"id":2,"method":"Big","params":{"size":1,"pad":"' + b"x" * (80 * 1024)
        socks = []
        for _ in range(count):
            sock = raw_connect(path, timeout=30)
            sock.sendall(HEADER.pack(16 * MiB, 0) + body)
            socks.append(sock)
        wait_served(path)
        for sock in socks:
            sock.close()
        growth = rss_growth(server, base, samples=10)
        most = count * 4 * 80 * 1024 + 48 * MiB  # (4x what each sent, and the allocator's slack)
        assert growth < most, f"RSS grew by {growth / MiB:.1f} MiB ({count} x 16 MiB would be {count * 16})"
        assert server.alive()


# -- item 10: descriptors sent ahead of their frames pinned the fd table ------------------------------


@pytest.mark.server
def test_descriptors_queued_ahead_of_their_frames_are_bounded_server_wide(
    path: str, server_backend: str
) -> None:
    """10 connections each begin a frame declaring 100 descriptors, send
    them, and stall: before, 1,000 descriptors pinned a 1,024-entry table for
    ``frame_timeout`` and a fresh client timed out. Now descriptors queued
    ahead of their frames are bounded server wide (a quarter of the table):
    the connection that goes over is told why and closed, its descriptors
    closed, and a fresh client is served."""
    import resource
    import subprocess

    original = subprocess.Popen.__init__

    def small_table(self: subprocess.Popen[bytes], *args: object, **kwargs: object) -> None:
        kwargs["preexec_fn"] = lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))
        original(self, *args, **kwargs)  # type: ignore[arg-type]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(subprocess.Popen, "__init__", small_table)
        server = ServerProcess(path, server_backend)
    with server:
        wait_served(path)
        socks = []
        refused = 0
        try:
            for _ in range(10):
                sock = raw_connect(path)
                socks.append(sock)
                body = b'{"id":1,"method":"Add","params":{"a":1,"b":2}}'
                send_with_fds(sock, HEADER.pack(len(body), 100), 100)  # the header alone: a frame begun
            for sock in socks:
                sock.settimeout(0.5)
                try:
                    reply = recv_envelope(sock)
                except (TimeoutError, ConnectionResetError):
                    continue
                if reply is not None and reply["id"] is None:
                    assert "descriptors sent ahead of their frames" in reply["error"]["message"], reply
                    refused += 1
            assert refused >= 6, f"only {refused} of 10 connections were refused"
            assert server.fds() < 700, f"the server holds {server.fds()} descriptors"
            wait_served(path)
        finally:
            for sock in socks:
                sock.close()
        assert server.alive()
