"""Reliability: one local peer must not be able to exhaust the daemon (issue 11).

Regression tests for the defects found by probing, and the stress suite:
floods, stalls, hang-ups, kills and a socket-level fuzz of a live server,
each asserting on descriptor counts (/proc/PID/fd), thread counts and
resident memory (/proc/PID/status) and on outcomes, never on durations
(timeouts here are only safety nets). The servers run in their own process
(tests/reliability_support.py), on every engine: the anyio engine (on
asyncio, and on trio where the loop matters) and the threads engine. The
short versions run in ``make test``; the long ones (marker ``stress``) in
``make stress``.
"""

from __future__ import annotations

import inspect
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from typing import Any

import anyio
import pytest

import reliability_support as rs
import rpc_support
from conftest import open_fds
from reliability_support import (
    HEADER,
    Block,
    Release,
    ServerProcess,
    add_request,
    ask,
    encode,
    frame,
    raw_connect,
    recv_envelope,
    send_with_fds,
    try_add,
    wait_closed,
    wait_for,
    wait_served,
)
from unixrpc import AsyncClient, Client, ConnectionBrokenError, Server, ServerBusyError

pytestmark = pytest.mark.server  # every test here runs on every engine

MiB = 1024 * 1024


def backend_of(engine: str, loop: str = "asyncio") -> str:
    """The server process's backend for *engine* (the anyio engine on *loop*)."""
    return "threads" if engine == "threads" else loop


@pytest.fixture
def path(sock_dir: str) -> str:
    return os.path.join(sock_dir, "r.sock")


def block(call_id: int, tag: str, seconds: float = 60.0) -> bytes:
    return frame(encode(id=call_id, method="Block", params={"tag": tag, "seconds": seconds}))


def pending(probe: socket.socket, tag: str) -> int:
    reply = ask(probe, frame(encode(id=1, method="Pending", params={"tag": tag})))
    assert reply is not None
    return int(reply["result"])


def release(server_path: str, tag: str) -> None:
    with Client(server_path, timeout=10) as client:
        client.call(Release(tag=tag))


# -- defect 1: a client that pipelines requests and never reads ------------------------------------


def _requests(limit: int) -> Iterator[bytes]:
    """Pipelined Add requests, about 64 KiB at a time, *limit* bytes in all."""
    call_id, total = 0, 0
    while total < limit:
        chunk = b"".join(add_request(call_id + i, call_id + i, 1) for i in range(1400))
        call_id += 1400
        total += len(chunk)
        yield chunk


def flood_until_stalled(sock: socket.socket, limit: int) -> int:
    """Write pipelined requests and never read, until *limit* bytes went or
    the server stops taking them (no room for a second): the bytes sent."""
    sock.setblocking(False)
    sent = 0
    for chunk in _requests(limit):
        view = memoryview(chunk)
        while view:
            try:
                n = sock.send(view)
            except BlockingIOError:
                if not select.select([], [sock], [], 1.0)[1]:
                    return sent  # the server stopped reading this connection
                continue
            sent += n
            view = view[n:]
    return sent


def check_flood_is_bounded(
    path: str, backend: str, connections: int, rounds: int, limit: int, *, refusals: bool = False
) -> dict[str, int]:
    """Flood; with *refusals*, each connection first fills its calls in
    flight (300 blocking calls against the limit of 256), so that every
    request of the flood is refused with ``ServerBusyError``."""
    with ServerProcess(path, backend) as server:
        base_fds = server.fds()
        wait_served(path)
        base_rss = server.rss()
        peak = 0
        for _ in range(rounds):
            socks = [raw_connect(path) for _ in range(connections)]
            try:
                if refusals:
                    for sock in socks:
                        sock.sendall(b"".join(block(10**9 + i, "flood") for i in range(300)))
                sent = [flood_until_stalled(sock, limit) for sock in socks]
                assert all(n < limit for n in sent), f"the server read all {limit} bytes: {sent}"
                peak = max(peak, server.rss())
                wait_served(path)  # the server is not wedged: another client is served meanwhile
            finally:
                if refusals:  # the blocking calls end first (the connections are closed with none queued)
                    release(path, "flood")
                    with raw_connect(path) as probe:
                        wait_for(lambda: pending(probe, "flood") == 0, what="blocking calls returned")
                for sock in socks:
                    sock.close()
            server.wait_fds(base_fds)  # the flooders' connections are gone, descriptors freed
        wait_served(path)
        after = server.rss()
        assert server.alive()
    # 1 MiB of unsent replies per connection, and the objects behind them:
    # before the fix, 11 MB of requests took 1.09 GB
    bound = 48 * MiB + connections * 8 * MiB
    assert peak - base_rss < bound, f"RSS grew by {(peak - base_rss) / MiB:.1f} MiB"
    assert after - base_rss < bound, f"RSS after the flood: +{(after - base_rss) / MiB:.1f} MiB"
    return {"base": base_rss, "peak": peak, "after": after, "sent": max(sent)}


@pytest.mark.parametrize("answers", ["replies", "refusals"])
def test_a_client_that_never_reads_cannot_grow_server_memory(
    path: str, server_engine: str, answers: str
) -> None:
    """Defect 1: a client pipelining requests (up to 20 MB of ``Add``) and
    never reading its answers: results, or (once 256 calls are in flight)
    ``ServerBusyError`` refusals. Before, every reply and every refusal
    beyond 256 waiting was a task holding its reply: 11 MB of requests took
    the server to 1.09 GB, 853 MB still resident after the client left. Now
    the core stops reading a connection while more than ``max_unsent``
    (1 MiB) of its output waits, refusals being queued bytes like any reply,
    so the writer blocks after a few MB; the server's RSS grows by a bounded
    amount, other clients are served meanwhile, and when the flooder closes
    its descriptors are freed."""
    figures = check_flood_is_bounded(
        path,
        backend_of(server_engine),
        connections=1,
        rounds=1,
        limit=20 * MiB,
        refusals=answers == "refusals",
    )
    assert figures["sent"] < 20 * MiB


@pytest.mark.stress
@pytest.mark.timeout(900)
@pytest.mark.parametrize("loop", ["asyncio", "trio"])
def test_stress_many_clients_that_never_read(
    path: str, server_engine: str, loop: str, request: pytest.FixtureRequest
) -> None:
    """Defect 1, long: 8 connections at once flood (200 MB each at most) and
    never read, five rounds, with answers then with refusals; RSS stays
    within 48 MiB + 8 MiB per connection of the idle server, descriptors
    come back each round, and the server keeps serving."""
    if server_engine == "threads" and loop == "trio":
        pytest.skip("the threads engine has no event loop")
    for refusals in (False, True):
        check_flood_is_bounded(
            f"{path}.{int(refusals)}",
            backend_of(server_engine, loop),
            connections=8,
            rounds=5,
            limit=200 * MiB,
            refusals=refusals,
        )


# -- defect 2: a hang-up noticed whenever it happens ------------------------------------------------


def test_a_hang_up_after_the_reading_ended_cancels_the_calls_and_frees_the_slot(
    path: str, server_engine: str, request: pytest.FixtureRequest
) -> None:
    """Defect 2: two peers each start a stream (window 1, so it then waits
    for credit for ever) and end the server's reading of their connection,
    one by shutting down its write side, the other by sending a fatal frame
    (a header over the size limit); only later do they close. Before, the
    hang-up was checked once, at the end of reading: with
    ``max_connections`` (2) such connections, already closed by their peers,
    every new client got ``ServerBusyError`` for ever. Now the hang-up is
    noticed when it happens: the streams are cancelled, the connections
    closed, their descriptors freed and a new client served."""
    with ServerProcess(
        path, backend_of(server_engine), max_connections=2, max_connections_per_uid=2
    ) as server:
        base_fds = server.fds()
        socks = []
        try:
            for ending in ("shut-wr", "fatal-frame"):
                sock = raw_connect(path)
                socks.append(sock)
                sock.sendall(frame(encode(id=1, method="Hold", params={}, stream=1)))
                assert recv_envelope(sock) == {"id": 1, "item": 0}  # now it waits for credit
                if ending == "shut-wr":
                    sock.shutdown(socket.SHUT_WR)
                else:
                    sock.sendall(HEADER.pack(2**31, 0))
                    reply = recv_envelope(sock)
                    assert reply is not None
                    assert reply["error"]["code"] == "unixrpc.ProtocolError"
            busy = try_add(path)
            assert busy is not None
            assert busy["error"]["code"] == "unixrpc.Busy", busy
            # let the server read the end of stream before the hang-up (else it
            # sees both at once, which was always handled)
            threading.Event().wait(0.3)
        finally:
            for sock in socks:
                sock.close()
        wait_served(path, seconds=3)
        server.wait_fds(base_fds)
        assert server.alive()


# -- defect 6: descriptors queued for a frame that never completes -------------------------------------


def test_descriptors_queued_for_an_unfinished_frame_are_capped(path: str, server_engine: str) -> None:
    """Defect 6: a peer begins a frame that declares 4 descriptors and
    never finishes it, sending 4 more descriptors with each piece of its
    body. Before, the server queued them all (10 such connections held it at
    its fd limit). Now more descriptors queued than one frame may carry
    (``max_fds_per_frame``) is a protocol violation: the connection is
    closed (after at most one id-null error) and every descriptor freed."""
    limit = 4
    with ServerProcess(path, backend_of(server_engine), max_fds_per_frame=limit) as server:
        base_fds = server.fds()
        pieces = 10
        with raw_connect(path) as sock:
            send_with_fds(sock, HEADER.pack(100_000, limit) + b'{"method"', limit)
            try:
                for _ in range(pieces):
                    send_with_fds(sock, b" " * 10, limit)
            except (BrokenPipeError, ConnectionResetError):
                pass  # closed already
            # either the server closes the connection, or it has queued them all (the defect)
            hoarding = base_fds + 1 + limit * (pieces + 1)
            wait_for(lambda: rs.poll_hung_up(sock) or server.fds() >= hoarding, what="closed or hoarding")
            assert server.fds() < hoarding, (
                f"the server holds {server.fds() - base_fds - 1} queued descriptors"
            )
            got = wait_closed(sock)
            assert len(got) <= 1
            assert all(reply["error"]["code"] == "unixrpc.ProtocolError" for reply in got)
        server.wait_fds(base_fds)
        wait_served(path)


# -- defect 7: threads of abandoned plain-def handlers ------------------------------------------------


def check_abandoned_threads_are_bounded(path: str, engine: str, rounds: int, calls: int) -> dict[str, int]:
    max_threads, per_connection = 4, 2
    with ServerProcess(
        path, backend_of(engine), max_threads=max_threads, max_threads_per_connection=per_connection
    ) as server:
        base_fds = server.fds()
        probe = raw_connect(path)
        pending(probe, "warm-up")
        with_probe = server.fds()
        base = server.threads()
        # the anyio engine: the pool, server wide; the threads engine: per
        # connection, its calls' threads and one reading (and the probe's
        # connection may have started its spare thread after *base* was read)
        bound = max_threads if engine == "anyio" else rounds * (per_connection + 1) + 1
        most = base
        for round_no in range(rounds):
            tag = f"r{round_no}"
            with raw_connect(path) as sock:
                sock.sendall(b"".join(block(i, tag) for i in range(1, calls + 1)))
                if engine == "anyio":  # read in order: once the Add is answered, every Block was started
                    assert ask(sock, add_request(calls + 1, 1, 1)) == {"id": calls + 1, "result": 2}
                else:  # the connection runs per_connection of them at once
                    wait_for(lambda t=tag: pending(probe, t) == per_connection, what="handlers started")
                most = max(most, server.threads())
            # the client left: its handlers are abandoned, still blocked. The anyio engine
            # closes the connection at once; the threads engine when its last thread ends
            if engine == "anyio":
                wait_for(lambda: server.fds() <= with_probe, what="connection closed")
            most = max(most, server.threads())
            assert server.threads() <= base + bound, f"round {round_no}: {server.threads()} threads"
        assert most <= base + bound, f"{most} threads at most (base {base})"
        for round_no in range(rounds):  # the handlers return: their threads end (or go idle in the pool)
            ask(probe, frame(encode(id=2, method="Release", params={"tag": f"r{round_no}"})))
        settled = base + (max_threads if engine == "anyio" else 1)
        wait_for(lambda: server.threads() <= settled, what=f"threads back to {settled}")
        probe.close()
        server.wait_fds(base_fds)
        return {"base": base, "most": most, "bound": base + bound}


def test_threads_of_abandoned_plain_def_handlers_are_bounded(path: str, server_engine: str) -> None:
    """Defect 7: rounds of connections whose plain ``def`` handlers block
    (20 calls each), then the client leaves. Before, the limiter slot was
    freed when the call was cancelled while its thread ran on: 40 threads
    were left per closed connection, 401 after ten rounds. Now the anyio
    engine's handler pool (``Server(max_threads=4)``) never exceeds its
    bound, abandoned or not; the threads engine runs at most
    ``max_threads_per_connection`` (2) calls per connection, and their
    threads end when the handlers return."""
    check_abandoned_threads_are_bounded(path, server_engine, rounds=4, calls=20)


@pytest.mark.stress
@pytest.mark.timeout(900)
def test_stress_threads_of_abandoned_handlers(path: str, server_engine: str) -> None:
    """Defect 7, long: 30 rounds of 200 blocking calls each."""
    check_abandoned_threads_are_bounded(path, server_engine, rounds=30, calls=200)


# -- defect 9: a notification of a stream method --------------------------------------------------------


def test_a_notification_of_a_stream_method_runs_and_its_items_are_discarded(
    path: str, server_engine: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Defect 9: a notification of a stream method (no id, no window). Before,
    it hit an ``assert``: 1,000 of them gave 1,000 ``AssertionError``
    tracebacks at ERROR and the handler never ran. Now (protocol.md §4) the
    handler runs to its end, its items are discarded (nothing reaches the
    peer but the reply to a later call), and nothing is logged at WARNING or
    above."""
    caplog.set_level(logging.DEBUG, logger="unixrpc")
    events = rpc_support.Events()
    notifications = 50
    with rpc_support.serving_in_thread(rpc_support.make_server(events), path), raw_connect(path) as sock:
        body = encode(method="Count", params={"n": 3})
        sock.sendall(frame(body) * notifications)
        wait_for(lambda: events.stream_closed == notifications, what="every stream handler finished")
        assert ask(sock, add_request(7, 1, 2)) == {"id": 7, "result": 3}, "an item or an error came first"
        sock.settimeout(0.2)
        with pytest.raises(TimeoutError):
            sock.recv(1)  # nothing more
    assert events.produced == 3 * notifications
    loud = [record for record in caplog.records if record.levelno >= logging.WARNING]
    assert not loud, [record.getMessage() for record in loud]


# -- new limits: per-uid connections, partial-frame and idle timeouts ------------------------------------


def test_limit_defaults() -> None:
    """The defaults a system daemon can ship (sd-varlink's: 1,024
    connections per uid out of 4,096): a half-header stall holds a slot
    for 30 s at most; no idle timeout unless asked."""
    Server(max_connections_per_uid=1024, frame_timeout=30.0, connection_idle_timeout=None)
    parameters = inspect.signature(Server).parameters
    # derived from the descriptor limit when serving starts (tests/test_reliability_round3.py)
    assert parameters["max_connections"].default is None
    assert parameters["max_connections_per_uid"].default is None
    assert parameters["frame_timeout"].default == 30
    assert parameters["connection_idle_timeout"].default is None


def test_connections_per_uid_are_limited(path: str, server_engine: str) -> None:
    """``Server(max_connections_per_uid=2)`` (out of 8): the third connection
    of one uid is refused with ``ServerBusyError`` whose message names the
    per-uid limit, and closed; once one of the two leaves, a new one of that
    uid is served."""
    with ServerProcess(
        path, backend_of(server_engine), max_connections=8, max_connections_per_uid=2
    ) as server:
        base_fds = server.fds()
        first, second = raw_connect(path), raw_connect(path)
        try:
            for sock in (first, second):
                assert ask(sock, add_request(1, 1, 1)) == {"id": 1, "result": 2}
            refused = try_add(path)
            assert refused is not None
            assert refused["id"] is None, refused
            assert refused["error"]["code"] == "unixrpc.Busy"
            message = refused["error"]["message"]
            assert "uid" in message.lower(), message
            assert "2" in message, message
            with pytest.raises(ServerBusyError, match=r"(?i)uid"), Client(path, timeout=10) as client:
                client.call(rpc_support.Add(a=1, b=1))
        finally:
            first.close()
        wait_served(path)
        second.close()
        server.wait_fds(base_fds)


def test_a_connection_that_stalls_in_a_frame_is_closed(path: str, server_engine: str) -> None:
    """Defect 3: connections that send half a frame header and stall.
    Before, 1,023 of them left a fresh client with ``ServerBusyError``,
    still after 30 s. Now ``Server(frame_timeout=0.5)`` closes a connection
    that began a frame and did not finish it in time, freeing its slot; a
    connection idle between frames is left alone (no idle timeout)."""
    with ServerProcess(
        path, backend_of(server_engine), max_connections=3, max_connections_per_uid=3, frame_timeout=0.5
    ) as server:
        base_fds = server.fds()
        with raw_connect(path) as idle:
            assert ask(idle, add_request(1, 1, 1)) == {"id": 1, "result": 2}
            stalled = [raw_connect(path) for _ in range(2)]
            try:
                stalled[0].sendall(b"\x00\x00\x00")  # half a header
                stalled[1].sendall(add_request(1, 1, 1)[:-3])  # a whole header, most of the body
                refused = try_add(path)
                assert refused is not None
                assert refused["error"]["code"] == "unixrpc.Busy", refused
                for sock in stalled:
                    wait_closed(sock)
            finally:
                for sock in stalled:
                    sock.close()
            wait_served(path)
            assert ask(idle, add_request(2, 2, 2)) == {"id": 2, "result": 4}, "the idle one was kept"
        server.wait_fds(base_fds)


def test_an_idle_connection_is_closed_after_the_idle_timeout(path: str, server_engine: str) -> None:
    """``Server(connection_idle_timeout=0.5)``: a connection with no call in
    flight that received nothing for that long is closed (its slot freed);
    one whose call is still running is not, and gets its reply."""
    with ServerProcess(
        path,
        backend_of(server_engine),
        max_connections=2,
        max_connections_per_uid=2,  # every client here has one uid
        connection_idle_timeout=0.5,
    ) as server:
        base_fds = server.fds()
        with raw_connect(path) as idle, raw_connect(path) as busy:
            assert ask(idle, add_request(1, 1, 1)) == {"id": 1, "result": 2}
            busy.sendall(block(1, "idle-test"))
            wait_closed(idle)
            threading.Event().wait(1.0)  # twice the idle timeout, with its call in flight
            assert not rs.poll_hung_up(busy), "a connection with a call in flight was closed"
            release(path, "idle-test")
            assert recv_envelope(busy) == {"id": 1, "result": "idle-test"}
            wait_closed(busy)
        wait_served(path)
        server.wait_fds(base_fds)


# -- kills ------------------------------------------------------------------------------------------------


def _outcome(call: Any) -> BaseException | str:
    try:
        call()
    except BaseException as exc:  # what the call ended with
        return exc
    return "returned"


def _sync_calls(path: str, tag: str, count: int, outcomes: list[Any]) -> None:
    with Client(path, timeout=60) as client:
        threads = [
            threading.Thread(target=lambda: outcomes.append(_outcome(lambda: client.call(Block(tag=tag)))))
            for _ in range(count)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()


def _async_calls(path: str, tag: str, count: int, outcomes: list[Any], loop: str) -> None:
    async def one(client: AsyncClient) -> None:
        try:
            await client.call(Block(tag=tag))
        except Exception as exc:
            outcomes.append(exc)
        else:
            outcomes.append("returned")

    async def main() -> None:
        async with AsyncClient(path, timeout=60) as client, anyio.create_task_group() as task_group:
            for _ in range(count):
                task_group.start_soon(one, client)

    anyio.run(main, backend=loop)


def test_killing_the_server_fails_every_pending_call_and_leaks_nothing(path: str, server_engine: str) -> None:
    """SIGKILL the server while calls wait on a sync client (two threads),
    an asyncio client and a trio client (two tasks each): every pending call
    fails with ``ConnectionBrokenError`` (none hangs, none returns), and the
    client process is left with exactly the descriptors it had."""
    server = ServerProcess(path, backend_of(server_engine))
    try:
        before = open_fds()
        outcomes: dict[str, list[Any]] = {"sync": [], "asyncio": [], "trio": []}
        workers = [
            threading.Thread(target=_sync_calls, args=(path, "k", 2, outcomes["sync"])),
            threading.Thread(target=_async_calls, args=(path, "k", 2, outcomes["asyncio"], "asyncio")),
            threading.Thread(target=_async_calls, args=(path, "k", 2, outcomes["trio"], "trio")),
        ]
        for worker in workers:
            worker.start()
        with raw_connect(path) as probe:
            wait_for(lambda: pending(probe, "k") == 6, what="six calls pending")
        server.kill()
        for worker in workers:
            worker.join(30)
            assert not worker.is_alive(), "a call is still waiting after the server died"
    finally:
        server.kill()
        server.stop()
    for kind, results in outcomes.items():
        assert len(results) == 2, (kind, results)
        assert all(isinstance(r, ConnectionBrokenError) for r in results), (kind, results)
    wait_for(lambda: not open_fds() - before, seconds=5, what="client descriptors back")


KILLED_CLIENT = """
import sys, threading, time
from unixrpc import Client
sys.path.insert(0, sys.argv[2])
from reliability_support import Block, Hold

client = Client(sys.argv[1], timeout=60, stream_window=1)
for _ in range(3):
    threading.Thread(target=client.call, args=(Block(tag="killed"),), daemon=True).start()
stream = iter(client.stream(Hold()))
next(stream)
print("ready", flush=True)
time.sleep(600)
"""


def test_killing_a_client_mid_call_frees_its_connection(path: str, server_engine: str) -> None:
    """SIGKILL a client process while three of its calls wait in plain
    ``def`` handlers and a stream waits for credit: the server notices,
    cancels them, its descriptor count returns to what it was before the
    client came, and a new client is served."""
    with ServerProcess(path, backend_of(server_engine, "trio")) as server:
        base_fds = server.fds()
        client = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(KILLED_CLIENT), path, os.path.dirname(__file__)],
            stdout=subprocess.PIPE,
        )
        try:
            assert client.stdout is not None
            assert client.stdout.readline() == b"ready\n"
            with raw_connect(path) as probe:
                wait_for(lambda: pending(probe, "killed") == 3, what="three calls pending")
            client.send_signal(signal.SIGKILL)
            client.wait()
        finally:
            client.kill()
            client.wait()
            if client.stdout is not None:
                client.stdout.close()
        release(path, "killed")  # the abandoned handlers return
        server.wait_fds(base_fds)
        wait_served(path)
        assert server.alive()


# -- a socket-level fuzz of a live server -------------------------------------------------------------------

FUZZ_LIMITS = {"max_frame_size": 64 * 1024, "max_fds_per_frame": 8}


def fuzz(path: str, engine: str, loop: str, seeds: list[int], frames: int, peers: int) -> list[rs.FuzzPeer]:
    with ServerProcess(path, backend_of(engine, loop), **FUZZ_LIMITS) as server:
        base_fds = server.fds()
        done: list[rs.FuzzPeer] = []
        failures: list[BaseException] = []

        def run(seed: int) -> None:
            peer = rs.FuzzPeer(path, seed, FUZZ_LIMITS["max_frame_size"], FUZZ_LIMITS["max_fds_per_frame"])
            try:
                peer.run(frames)
            except BaseException as exc:
                failures.append(exc)
            finally:
                peer._close()
            done.append(peer)

        for batch in range(0, len(seeds), peers):
            threads = [threading.Thread(target=run, args=(seed,)) for seed in seeds[batch : batch + peers]]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            if failures:
                raise failures[0]
            assert server.alive(), server.log()
        server.wait_fds(base_fds)
        wait_served(path)
        assert server.alive()
    return done


def test_fuzz_a_live_server(path: str, server_engine: str) -> None:
    """A bounded socket-level fuzz: raw peers send a random mix of
    well-formed calls (some with real descriptors, some whose descriptors
    ride on an earlier frame), frames the connection survives (not UTF-8,
    empty, JSON that is no envelope, what only a server sends, unknown
    methods, bad params, wrong member types, windows where none belong,
    cancels and credit for no call, notifications) and fatal ones (headers
    over the limits, descriptors that never came or came with no frame,
    ``MSG_CTRUNC``, random garbage), reconnecting after each fatal one. The
    server never dies; every well-formed call gets exactly one correct
    answer and every bad frame exactly its error; the server's descriptors
    come back to what they were."""
    peers = fuzz(path, server_engine, "asyncio", seeds=[11, 12], frames=1000, peers=2)
    assert sum(peer.calls_checked for peer in peers) > 500
    assert sum(peer.connections for peer in peers) > 10


@pytest.mark.stress
@pytest.mark.timeout(900)
@pytest.mark.parametrize("loop", ["asyncio", "trio"])
def test_stress_fuzz_a_live_server(path: str, server_engine: str, loop: str) -> None:
    """The fuzz, long: 16 seeds, 4 peers at once, 25,000 frames each."""
    if server_engine == "threads" and loop == "trio":
        pytest.skip("the threads engine has no event loop")
    fuzz(path, server_engine, loop, seeds=list(range(100, 116)), frames=25_000, peers=4)


# -- found by the fuzz -------------------------------------------------------------------------------


@pytest.mark.stress
@pytest.mark.timeout(900)
def test_a_fatal_frame_read_with_a_call_closes_the_connection(
    path: str, server_engine: str, request: pytest.FixtureRequest
) -> None:
    """A notification carrying descriptors its header does not declare:
    the call starts and the connection is fatal at once (``N file
    descriptors came with no frame``). The server must answer the error and
    close the connection every time (it did not, about once in 200 on the
    threads engine: a race, hence the many attempts)."""
    with ServerProcess(path, backend_of(server_engine), max_fds_per_frame=8) as server:
        base_fds = server.fds()
        for attempt in range(3000):
            with raw_connect(path) as sock:
                assert ask(sock, add_request(1, 1, 1)) == {"id": 1, "result": 2}
                send_with_fds(sock, frame(encode(method="Add", params={"a": 1, "b": 2})), 3)
                try:
                    got = wait_closed(sock, seconds=5)
                except AssertionError:
                    raise AssertionError(f"attempt {attempt}: the connection was not closed") from None
                assert [reply["error"]["code"] for reply in got] == ["unixrpc.ProtocolError"], got
        server.wait_fds(base_fds)
