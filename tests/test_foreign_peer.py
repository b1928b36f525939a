"""The wire protocol of docs/protocol.md, proven with a peer that knows nothing
of unixrpc: a client and a server written with the standard library only
(``socket``, ``struct``, ``json``; ``os``, ``sys``, ``time``, ``select`` for
plumbing), run in a subprocess started with ``python -I -S`` so that not
even site-packages is importable.

(a) the stdlib client calls a unixrpc Server; (b) unixrpc's Client and
AsyncClient call the stdlib server; (c) descriptors from the stdlib server.
The tests in section (a') pin down sdk bugs found on the way (now fixed).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import Any

import anyio
import pytest
from pydantic import BaseModel

import rpc_support
from rpc_support import Add, Count, Events, Sleep, make_server, serving_in_thread
from unixrpc import (
    FD,
    AsyncClient,
    Client,
    ConnectionBrokenError,
    FileDescriptor,
    InvalidResultError,
    Method,
    RemoteProtocolError,
    RPCError,
    Server,
    ServerBusyError,
    StreamMethod,
)

pytestmark = pytest.mark.server  # every test here runs on every engine

# -- the foreign peer: standard library only ------------------------------------------------

PEER = r'''
import json
import os
import select
import socket
import struct
import sys
import time

HEADER = struct.Struct(">IH")  # u32 body length, u16 fd count, both big-endian
MAX_FDS = 253  # SCM_MAX_FD
CMSG_BUFSIZE = socket.CMSG_SPACE(4 * MAX_FDS)


def frame(envelope, nfds=0):
    body = envelope if isinstance(envelope, bytes) else json.dumps(envelope).encode()
    return HEADER.pack(len(body), nfds) + body


class Conn:
    """One connection: frames out; frames in, with descriptors assigned by count."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = bytearray()
        self.fds = []  # received but not yet assigned to a frame, in arrival order
        self.eof = False

    def send(self, envelope, fds=(), nfds=None):
        data = frame(envelope, len(fds) if nfds is None else nfds)
        self.sock.settimeout(10)
        if fds:  # descriptors ride on the sendmsg that carries the frame's first byte
            rights = struct.pack(f"{len(fds)}i", *fds)
            sent = self.sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, rights)])
            data = data[sent:]
        if data:
            self.sock.sendall(data)

    def recv(self, timeout=5.0):
        """The next frame as [envelope, fds]; None at end of stream."""
        deadline = time.monotonic() + timeout
        while True:
            if len(self.buf) >= HEADER.size:
                size, nfds = HEADER.unpack_from(self.buf)
                end = HEADER.size + size
                if len(self.buf) >= end:
                    body = bytes(self.buf[HEADER.size:end])
                    del self.buf[:end]
                    if nfds > len(self.fds):
                        raise RuntimeError("a frame declares descriptors that never came")
                    fds, self.fds = self.fds[:nfds], self.fds[nfds:]
                    return [json.loads(body), fds]
            if self.eof:
                return None
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            self.sock.settimeout(remaining)
            try:
                data, ancdata, flags, _ = self.sock.recvmsg(1 << 16, CMSG_BUFSIZE)
            except ConnectionResetError:
                data, ancdata, flags = b"", [], 0
            for level, kind, payload in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    count = len(payload) // 4
                    self.fds.extend(struct.unpack(f"{count}i", payload[:4 * count]))
            if flags & socket.MSG_CTRUNC:
                raise RuntimeError("MSG_CTRUNC: descriptors were lost")
            self.eof = not data
            self.buf += data

    def next(self, timeout=5.0):
        """The next envelope (its fds closed), or "<eof>", or "<timeout>"."""
        try:
            got = self.recv(timeout)
        except TimeoutError:
            return "<timeout>"
        if got is None:
            return "<eof>"
        for fd in got[1]:
            os.close(fd)
        return got[0]

    def call(self, call_id, method, params, timeout=5.0):
        self.send({"id": call_id, "method": method, "params": params})
        return self.next(timeout)

    def close(self):
        self.sock.close()
        for fd in self.fds:
            os.close(fd)


def connect(path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    return Conn(sock)


def report(**out):
    print(json.dumps(out))


# -- a server for one connection; prints every envelope it received at the end --

def reply(conn, call_id, fds=(), nfds=None, **member):
    envelope = {"id": call_id}
    envelope.update(member)
    conn.send(envelope, fds, nfds)


def pipe_with(text):
    """The read end of a pipe holding *text*."""
    r, w = os.pipe()
    os.write(w, text.encode())
    os.close(w)
    return r


def pump(conn, call_id, streams):
    state = streams[call_id]  # [next item, item count, credit]
    while state[0] < state[1] and state[2] > 0:
        reply(conn, call_id, item=state[0])
        state[0] += 1
        state[2] -= 1
    if state[0] == state[1]:
        del streams[call_id]
        reply(conn, call_id, result=None)


def handle(conn, request, held, streams):
    call_id, method, params = request["id"], request["method"], request.get("params", {})
    if method == "Add":
        reply(conn, call_id, result=params["a"] + params["b"])
    elif method == "Brew":
        data = {"temperature": params["temperature"]}
        reply(conn, call_id, error={"code": "foreign.Teapot", "message": "I'm a teapot", "data": data})
    elif method == "Sleep":
        held.append(request)  # answered when cancelled
    elif method in ("Pair", "FdPair"):
        held.append(request)
        pair = [r for r in held if r["method"] == method]
        if len(pair) == 2:
            first, second = pair
            held.remove(first)
            held.remove(second)
            if method == "Pair":  # in the reverse order
                reply(conn, second["id"], result=second["params"]["x"])
                reply(conn, first["id"], result=first["params"]["x"])
            else:  # back to back; the second's fd may come with the first's bytes
                reply(conn, first["id"], result={"x": first["params"]["x"]})
                fd = pipe_with(f"pipe {second['params']['x']}")
                try:
                    reply(conn, second["id"], fds=[fd], result={"x": second["params"]["x"], "fd": 0})
                finally:
                    os.close(fd)
    elif method == "Pipe":
        fd = pipe_with(f"pipe {params['x']}")
        try:
            reply(conn, call_id, fds=[fd], result=0)
        finally:
            os.close(fd)
    elif method == "Fd":
        fd = os.open(os.devnull, os.O_RDONLY)
        try:
            reply(conn, call_id, fds=[fd], result=1)
        finally:
            os.close(fd)
    elif method == "LieFds":
        reply(conn, call_id, nfds=1, result=1)
    elif method == "ItemForCall":
        reply(conn, call_id, item=1)
        reply(conn, call_id, result=2)
    elif method == "Break":
        reply(conn, None, error={"code": "unixrpc.Busy", "message": "too many connections (limit 1)"})
    elif method == "Count" and request.get("stream"):
        streams[call_id] = [0, params["n"], request["stream"]]
        pump(conn, call_id, streams)
    else:
        message = f"no method named {method!r}"
        reply(conn, call_id, error={"code": "unixrpc.MethodNotFound", "message": message})


def serve(path):
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    print("ready", flush=True)
    sock, _ = listener.accept()
    listener.close()
    conn = Conn(sock)
    received, held, streams = [], [], {}
    try:
        while True:
            got = conn.recv(timeout=30)
            if got is None:
                break
            envelope, fds = got
            for fd in fds:
                os.close(fd)
            received.append(envelope)
            if "method" in envelope and "id" in envelope:
                handle(conn, envelope, held, streams)
            elif "cancel" in envelope:
                for request in [r for r in held if r["id"] == envelope["cancel"]]:
                    held.remove(request)
                    error = {"code": "unixrpc.Cancelled", "message": "call cancelled by the client"}
                    reply(conn, request["id"], error=error)
            elif "credit" in envelope and envelope["credit"] in streams:
                streams[envelope["credit"]][2] += envelope["n"]
                pump(conn, envelope["credit"], streams)
    except (BrokenPipeError, ConnectionResetError):
        pass
    conn.close()
    print(json.dumps(received))


if len(sys.argv) > 2 and sys.argv[1] == "serve":
    serve(sys.argv[2])
'''

PYTHON = [sys.executable, "-I", "-S"]  # isolated, and no site-packages: the standard library only


def run_peer(script: str, path: str, timeout: float = 20) -> dict[str, Any]:
    """Run *script* after PEER in a stdlib-only subprocess (``sys.argv[1]`` is
    *path*); return what it ``report()``-ed."""
    source = PEER + "\n" + textwrap.dedent(script)
    done = subprocess.run([*PYTHON, "-c", source, path], capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        pytest.fail(f"peer failed ({done.returncode}):\n{done.stderr}")
    result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return result


class ForeignServer:
    """PEER's stdlib-only server in a subprocess, for one connection.
    ``received`` holds every envelope it got, once the block is left."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.received: list[Any] = []
        self._proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> ForeignServer:
        proc = self._proc = subprocess.Popen(
            [*PYTHON, "-c", PEER, "serve", self.path],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        if proc.stdout.readline() != "ready\n":
            proc.kill()
            _, err = proc.communicate()
            pytest.fail(f"foreign server did not start:\n{err}")
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._proc is not None
        try:
            out, err = self._proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.communicate()
            raise
        if exc_type is None:
            assert self._proc.returncode == 0, err
            self.received = json.loads(out.splitlines()[-1])


@pytest.fixture
def events() -> Events:
    return Events()


@pytest.fixture
def server_path(sock_dir: str, events: Events) -> Iterator[str]:
    """A unixrpc Server (rpc_support's methods) running in a thread."""
    with serving_in_thread(make_server(events), os.path.join(sock_dir, "rpc.sock")) as path:
        yield path


def wait_for(predicate: Any, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def error(call_id: int | None, code: str, message: str | None = None) -> dict[str, Any]:
    return {"id": call_id, "error": {"code": code, "message": message}}


def without_message(envelope: Any) -> Any:
    """*envelope* with its error message set to None (messages are for people)."""
    if isinstance(envelope, dict) and "error" in envelope:
        return {**envelope, "error": {**envelope["error"], "message": None}}
    return envelope


# -- (a) a stdlib client against a unixrpc Server ------------------------------------------


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_stdlib_client_call(sock_dir: str, backend: str) -> None:
    with serving_in_thread(make_server(), os.path.join(sock_dir, "s"), backend) as path:
        out = run_peer(
            """
            conn = connect(sys.argv[1])
            conn.send({"id": 1, "method": "Add", "params": {"a": 1, "b": 2}})
            raw = conn.recv()
            conn.close()
            report(raw=raw)
            """,
            path,
        )
    assert out["raw"] == [{"id": 1, "result": 3}, []]  # the envelope, and no descriptors


def test_stdlib_client_errors(server_path: str) -> None:
    out = run_peer(
        """
        conn = connect(sys.argv[1])
        report(
            unknown=conn.call(1, "Nope", {}),
            invalid=conn.call(2, "Add", {"a": 1, "b": "two"}),
            extra_field=conn.call(3, "Add", {"a": 1, "b": 2, "c": 3}),
            typed=conn.call(4, "users.Get", {"uid": 5}),
            class_name_is_not_the_wire_name=conn.call(5, "GetUser", {"uid": 0}),
            ok=conn.call(6, "users.Get", {"uid": 0}),
            internal=conn.call(7, "Fail", {"kind": "value"}),
            plain=conn.call(8, "Fail", {"kind": "rpc"}),
        )
        """,
        server_path,
    )
    assert without_message(out["unknown"]) == without_message(error(1, "unixrpc.MethodNotFound", ""))
    assert out["unknown"]["error"]["message"].startswith("no method named 'Nope'")
    invalid = out["invalid"]
    assert without_message(invalid) == {
        "id": 2,
        "error": {"code": "unixrpc.InvalidParams", "message": None, "data": invalid["error"]["data"]},
    }
    assert [entry["loc"] for entry in invalid["error"]["data"]] == [["b"]]  # pydantic's error list
    assert out["extra_field"] == {"id": 3, "result": 3}  # a param the method does not know is ignored
    assert out["typed"] == {
        "id": 4,
        "error": {"code": "users.NotFound", "message": "users.NotFound", "data": {"uid": 5}},
    }
    assert out["class_name_is_not_the_wire_name"]["error"]["code"] == "unixrpc.MethodNotFound"
    assert out["ok"] == {"id": 6, "result": {"uid": 0, "name": "root"}}
    assert out["internal"] == error(7, "unixrpc.InternalError", "handler of Fail raised ValueError")
    assert out["plain"] == {
        "id": 8,
        "error": {"code": "unixrpc.Error", "message": "plain rpc error", "data": {"k": 1}},
    }


def test_stdlib_client_notification(server_path: str, events: Events) -> None:
    out = run_peer(
        """
        conn = connect(sys.argv[1])
        conn.send({"method": "Log", "params": {"line": "hello"}})
        conn.send({"method": "Nope", "params": {}})  # refused: no reply either
        conn.send({"method": "Log", "params": {"line": 5}})  # invalid params: no reply
        report(result=conn.call(1, "Add", {"a": 1, "b": 2}), after=conn.next(0.3))
        """,
        server_path,
    )
    assert out == {"result": {"id": 1, "result": 3}, "after": "<timeout>"}
    # notifications run concurrently with later calls: their effect is not ordered with replies
    wait_for(lambda: events.logged == ["hello"])


def test_stdlib_client_stream_with_credit_by_hand(server_path: str) -> None:
    out = run_peer(
        """
        conn = connect(sys.argv[1])
        conn.send({"id": 1, "method": "Count", "params": {"n": 5}, "stream": 2})
        got = [conn.next(), conn.next()]
        stalled = conn.next(0.3)  # the window of 2 is used up
        conn.send({"credit": 1, "n": 1})
        got.append(conn.next())
        stalled_again = conn.next(0.3)
        conn.send({"credit": 1, "n": 10})  # more than needed is fine
        got += [conn.next(), conn.next()]
        report(got=got, stalled=stalled, stalled_again=stalled_again, end=conn.next(), after=conn.next(0.2))
        """,
        server_path,
    )
    assert out["got"] == [{"id": 1, "item": i} for i in range(5)]
    assert out["stalled"] == out["stalled_again"] == "<timeout>"
    assert out["end"] == {"id": 1, "result": None}
    assert out["after"] == "<timeout>"


def test_stdlib_client_stream_ends_with_error_and_cancel(server_path: str, events: Events) -> None:
    out = run_peer(
        """
        conn = connect(sys.argv[1])
        conn.send({"id": 1, "method": "Count", "params": {"n": 100}, "stream": 1})
        first = conn.next()
        conn.send({"cancel": 1})
        report(first=first, end=conn.next(), after=conn.next(0.2))
        """,
        server_path,
    )
    assert out["first"] == {"id": 1, "item": 0}
    assert out["end"] == error(1, "unixrpc.Cancelled", "call cancelled by the client")
    assert out["after"] == "<timeout>"
    wait_for(lambda: events.stream_closed == 1)


def test_stdlib_client_cancel(server_path: str, events: Events) -> None:
    out = run_peer(
        """
        conn = connect(sys.argv[1])
        conn.send({"id": 1, "method": "Sleep", "params": {"seconds": 30, "tag": "slow"}})
        added = conn.call(2, "Add", {"a": 1, "b": 1})  # the Sleep call is in flight by now
        start = time.monotonic()
        conn.send({"cancel": 1})
        cancelled = conn.next()
        elapsed = time.monotonic() - start
        conn.send({"cancel": 1})  # already finished: ignored, no reply
        conn.send({"cancel": 12345})  # never existed: ignored, no reply
        report(added=added, cancelled=cancelled, elapsed=elapsed, after=conn.next(0.3))
        """,
        server_path,
    )
    assert out["added"] == {"id": 2, "result": 2}
    assert out["cancelled"] == error(1, "unixrpc.Cancelled", "call cancelled by the client")
    assert out["elapsed"] < 5
    assert out["after"] == "<timeout>"
    if rpc_support.ENGINE == "anyio":
        assert events.cancelled == ["slow"]  # the handler saw it before the reply was sent
    else:
        # the threads engine answers a cancel at once and tells the handler after it, or
        # not at all when no thread had started the call yet (seen on a loaded machine)
        wait_for(lambda: events.cancelled == [tag for tag in events.started if tag == "slow"])


def test_stdlib_client_cancels_leave_the_workers_usable(server_path: str, events: Events) -> None:
    # the server's workers run calls in a long-lived cancel scope, replaced
    # after each cancel: every round gets exactly one Cancelled for the slow
    # call and a result for the others, on the same connection
    out = run_peer(
        """
        conn = connect(sys.argv[1])
        rounds = []
        for r in range(15):
            slow, fast, short = 3 * r + 1, 3 * r + 2, 3 * r + 3
            conn.send({"id": slow, "method": "Sleep", "params": {"seconds": 30, "tag": f"slow{r}"}})
            conn.send({"id": short, "method": "Sleep", "params": {"seconds": 0.01, "tag": f"short{r}"}})
            conn.send({"id": fast, "method": "Add", "params": {"a": r, "b": 1}})
            conn.send({"cancel": slow})  # the slow call may have started or only be assigned
            rounds.append(sorted((conn.next(), conn.next(), conn.next()), key=lambda m: m["id"]))
        report(rounds=rounds, after=conn.next(0.3))
        """,
        server_path,
    )
    for r, (cancelled, added, short) in enumerate(out["rounds"]):
        assert cancelled == error(3 * r + 1, "unixrpc.Cancelled", "call cancelled by the client")
        assert added == {"id": 3 * r + 2, "result": r + 1}
        assert short["id"] == 3 * r + 3
        assert "result" in short
    assert out["after"] == "<timeout>"
    slow_ones = {f"slow{r}" for r in range(15)}
    if rpc_support.ENGINE == "anyio":
        # the reader runs each call's first step before it reads the next frame,
        # so every cancel reaches a handler that has started
        assert sorted(events.cancelled) == sorted(slow_ones)
    else:  # a cancel may answer a call before a thread started it: no handler to tell
        assert set(events.cancelled) <= slow_ones
        assert set(events.started) & slow_ones == set(events.cancelled)


def test_stdlib_client_batch_replies_survive_a_half_close(server_path: str, events: Events) -> None:
    # requests that arrive together are answered together (the server writes
    # the replies of a batch at once); a batch that ends with a notification
    # and a half-close still gets every reply
    out = run_peer(
        """
        conn = connect(sys.argv[1])
        batch = [{"id": i, "method": "Add", "params": {"a": i, "b": 1}} for i in range(1, 40)]
        batch.append({"method": "Log", "params": {"line": "last"}})
        conn.sock.sendall(b"".join(frame(envelope) for envelope in batch))
        conn.sock.shutdown(socket.SHUT_WR)
        replies = [conn.next() for _ in range(39)]
        report(replies=replies, after=conn.next(2))
        """,
        server_path,
    )
    assert sorted(out["replies"], key=lambda m: m["id"]) == [{"id": i, "result": i + 1} for i in range(1, 40)]
    assert out["after"] == "<eof>"
    assert events.logged == ["last"]


def test_stdlib_client_batched_stream_frames_stay_in_order(server_path: str) -> None:
    # a stream call in the middle of a pipelined batch: its items and its end
    # arrive in order, whatever the server corks and writes together
    out = run_peer(
        """
        conn = connect(sys.argv[1])
        batch = [{"id": 1, "method": "Add", "params": {"a": 1, "b": 1}}]
        batch.append({"id": 2, "method": "Count", "params": {"n": 5}, "stream": 100})
        batch += [{"id": i, "method": "Add", "params": {"a": i, "b": 1}} for i in range(3, 30)]
        conn.sock.sendall(b"".join(frame(envelope) for envelope in batch))
        got = [conn.next() for _ in range(1 + 6 + 27)]
        report(got=got)
        """,
        server_path,
    )
    stream = [m for m in out["got"] if m["id"] == 2]
    assert stream == [{"id": 2, "item": i} for i in range(5)] + [{"id": 2, "result": None}]
    others = sorted((m for m in out["got"] if m["id"] != 2), key=lambda m: m["id"])
    assert others == [{"id": i, "result": i + 1} for i in [1, *range(3, 30)]]


def test_stdlib_client_pipelined_calls_answered_by_id(server_path: str) -> None:
    out = run_peer(
        """
        conn = connect(sys.argv[1])
        conn.sock.sendall(
            frame({"id": 10, "method": "Sleep", "params": {"seconds": 0.3, "tag": "late"}})
            + frame({"id": 11, "method": "Add", "params": {"a": 20, "b": 22}})
        )
        report(replies=[conn.next(), conn.next()])
        """,
        server_path,
    )
    assert out["replies"] == [{"id": 11, "result": 42}, {"id": 10, "result": "late"}]


def test_stdlib_client_ids_are_the_clients_choice(server_path: str) -> None:
    out = run_peer(
        """
        conn = connect(sys.argv[1])
        report(
            zero=conn.call(0, "Add", {"a": 0, "b": 0}),
            largest=conn.call(2**63 - 1, "Add", {"a": 1, "b": 1}),
            reused_after_reply=conn.call(0, "Add", {"a": 2, "b": 2}),
        )
        """,
        server_path,
    )
    assert out == {
        "zero": {"id": 0, "result": 0},
        "largest": {"id": 2**63 - 1, "result": 2},
        "reused_after_reply": {"id": 0, "result": 4},
    }


def test_stdlib_client_peer_credentials(server_path: str) -> None:
    out = run_peer(
        """
        conn = connect(sys.argv[1])
        report(mine=[os.getpid(), os.getuid(), os.getgid()], seen=conn.call(1, "WhoAmI", {}))
        """,
        server_path,
    )
    assert out["seen"] == {"id": 1, "result": out["mine"]}  # SO_PEERCRED, checked by the kernel


def test_stdlib_client_recoverable_protocol_errors(server_path: str) -> None:
    out = run_peer(
        """
        conn = connect(sys.argv[1])
        def ask(envelope, wait=2.0):
            conn.send(envelope)
            return conn.next(wait)
        out = {
            "not_json": ask(b"{not json"),
            "not_utf8": ask(b'{"id": 1, "method": "\\xff"}'),
            "empty_body": ask(b""),
            "not_an_object": ask([1, 2]),
            "bad_method_with_id": ask({"id": 3, "method": 5, "params": {}}),
            "result_from_client": ask({"id": 4, "result": 1}),
            "error_from_client": ask({"id": None, "error": {"code": "x.Y", "message": "m"}}),
            "stream_without_window": ask({"id": 5, "method": "Count", "params": {"n": 1}}),
            "window_on_unary": ask({"id": 6, "method": "Add", "params": {"a": 1, "b": 2}, "stream": 4}),
            "unknown_credit": ask({"credit": 99, "n": 1}, 0.2),
            "unknown_member": ask({"id": 7, "method": "Add", "params": {"a": 1, "b": 2}, "x": 0}),
            "no_params": ask({"id": 8, "method": "WhoAmI"}),
            "null_window": ask({"id": 9, "method": "Add", "params": {"a": 1, "b": 1}, "stream": None}),
        }
        conn.send({"id": 20, "method": "Sleep", "params": {"seconds": 0.3, "tag": "first"}})
        out["duplicate_id"] = ask({"id": 20, "method": "Add", "params": {"a": 1, "b": 2}})
        out["original"] = conn.next()
        out["still_works"] = conn.call(21, "Add", {"a": 2, "b": 3})
        report(**out)
        """,
        server_path,
    )
    protocol_error = "unixrpc.ProtocolError"
    for key in ("not_json", "not_utf8", "empty_body", "not_an_object", "result_from_client"):
        assert without_message(out[key]) == error(None, protocol_error), key
    assert without_message(out["error_from_client"]) == error(None, protocol_error)
    assert out["result_from_client"]["error"]["message"] == "a client may not send result messages"
    assert out["bad_method_with_id"] == error(
        3, protocol_error, 'invalid envelope: "method" must be a string'
    )
    assert out["stream_without_window"] == error(
        5, protocol_error, 'Count is a stream method: send a "stream" window'
    )
    assert out["window_on_unary"] == error(6, protocol_error, "Add is not a stream method")
    assert out["unknown_credit"] == "<timeout>"
    assert out["unknown_member"] == {"id": 7, "result": 3}
    assert out["no_params"]["id"] == 8
    assert "result" in out["no_params"]  # params default to {}
    assert out["null_window"] == {"id": 9, "result": 2}
    assert out["duplicate_id"] == error(20, protocol_error, "call id 20 is already in flight")
    assert out["original"] == {"id": 20, "result": "first"}
    assert out["still_works"] == {"id": 21, "result": 5}


FATAL = {
    # name: (server options, what the peer sends)
    "body over max_frame_size": ({"max_frame_size": 1024}, "conn.send({'pad': 'x' * 2000})"),
    "fd count over max_fds_per_frame": (
        {},
        "conn.sock.sendall(frame({'id': 2, 'method': 'Add', 'params': {'a': 1, 'b': 1}}, nfds=254))",
    ),
    "fds that never came": (
        {},
        "conn.sock.sendall(frame({'id': 2, 'method': 'Add', 'params': {'a': 1, 'b': 1}}, nfds=1))",
    ),
}


@pytest.mark.parametrize("case", list(FATAL))
def test_stdlib_client_fatal_protocol_errors_close_the_connection(sock_dir: str, case: str) -> None:
    options, bad = FATAL[case]
    with serving_in_thread(make_server(**options), os.path.join(sock_dir, "s")) as path:
        out = run_peer(
            f"""
            conn = connect(sys.argv[1])
            {bad}
            report(frames=[conn.next(), conn.next()])
            """,
            path,
        )
    protocol_error, closed = out["frames"]
    assert without_message(protocol_error) == error(None, "unixrpc.ProtocolError")
    assert closed == "<eof>"


def test_stdlib_client_truncated_control_data_closes_without_reply(sock_dir: str) -> None:
    # the server reads with room for max_fds_per_frame descriptors; more in one sendmsg: MSG_CTRUNC
    with serving_in_thread(make_server(max_fds_per_frame=1), os.path.join(sock_dir, "s")) as path:
        out = run_peer(
            """
            conn = connect(sys.argv[1])
            fds = [os.open(os.devnull, os.O_RDONLY) for _ in range(3)]
            conn.send({"id": 1, "method": "Add", "params": {"a": 1, "b": 1}}, fds=fds, nfds=1)
            for fd in fds:
                os.close(fd)
            report(next=conn.next())
            """,
            path,
        )
    assert out["next"] == "<eof>"


def test_stdlib_client_request_descriptors_are_closed_by_the_server(server_path: str) -> None:
    out = run_peer(
        """
        conn = connect(sys.argv[1])
        r, w = os.pipe()
        conn.send({"id": 1, "method": "Add", "params": {"a": 1, "b": 2}}, fds=[w])
        result = conn.next()
        os.close(w)
        # every copy of the write end is closed once the reader sees end of file
        readable, _, _ = select.select([r], [], [], 3)
        report(result=result, eof=bool(readable) and os.read(r, 1) == b"")
        """,
        server_path,
    )
    assert out == {"result": {"id": 1, "result": 3}, "eof": True}


def test_stdlib_client_too_many_connections(sock_dir: str) -> None:
    with serving_in_thread(make_server(max_connections=1), os.path.join(sock_dir, "s")) as path:
        out = run_peer(
            """
            first = connect(sys.argv[1])
            ok = first.call(1, "Add", {"a": 1, "b": 1})
            second = connect(sys.argv[1])
            refused = [second.next(), second.next()]
            report(ok=ok, refused=refused, first=first.call(2, "Add", {"a": 2, "b": 2}))
            """,
            path,
        )
    assert out["ok"] == {"id": 1, "result": 2}
    assert out["refused"] == [error(None, "unixrpc.Busy", "too many connections (limit 1)"), "<eof>"]
    assert out["first"] == {"id": 2, "result": 4}


def test_stdlib_client_half_close_still_gets_replies(server_path: str) -> None:
    out = run_peer(
        """
        conn = connect(sys.argv[1])
        conn.send({"id": 1, "method": "Sleep", "params": {"seconds": 0.2, "tag": "half"}})
        conn.sock.shutdown(socket.SHUT_WR)
        report(reply=conn.next())
        """,
        server_path,
    )
    assert out["reply"] == {"id": 1, "result": "half"}  # (the connection is not closed: see below)


def test_stdlib_client_hang_up_cancels_its_calls(server_path: str, events: Events) -> None:
    run_peer(
        """
        conn = connect(sys.argv[1])
        conn.send({"id": 1, "method": "Sleep", "params": {"seconds": 30, "tag": "gone"}})
        conn.call(2, "Add", {"a": 1, "b": 1})
        time.sleep(0.2)  # the threads engine may answer Add before Sleep's handler starts
        conn.close()
        report()
        """,
        server_path,
    )
    wait_for(lambda: events.cancelled == ["gone"])


class ReadTwo(Method[str]):
    first: FD
    second: FD


class OpenPipe(Method[FD]):
    text: str


def test_stdlib_client_fd_fields(sock_dir: str, no_fd_leak: None) -> None:
    server = Server()

    @server.method(ReadTwo)
    def read_two(req: ReadTwo) -> str:
        with req.first.open() as first, req.second.open() as second:
            return first.read() + second.read()

    @server.method(OpenPipe)
    def open_pipe(req: OpenPipe) -> FileDescriptor:
        r, w = os.pipe()
        os.write(w, req.text.encode())
        os.close(w)
        return FileDescriptor.transfer(r)

    with serving_in_thread(server, os.path.join(sock_dir, "s")) as path:
        out = run_peer(
            """
            conn = connect(sys.argv[1])
            pipes = [pipe_with("A"), pipe_with("B")]
            # an FD field is an index into the descriptors of its own frame
            conn.send({"id": 1, "method": "ReadTwo", "params": {"first": 1, "second": 0}}, fds=pipes)
            for fd in pipes:
                os.close(fd)
            read_two = conn.next()
            fd = pipe_with("C")
            conn.send({"id": 2, "method": "ReadTwo", "params": {"first": 0, "second": 1}}, fds=[fd])
            os.close(fd)
            out_of_range = conn.next()
            conn.send({"id": 3, "method": "OpenPipe", "params": {"text": "from the server"}})
            envelope, fds = conn.recv()
            text = os.read(fds[0], 100).decode()
            for fd in fds:
                os.close(fd)
            report(read_two=read_two, out_of_range=out_of_range, opened=[envelope, len(fds), text])
            """,
            path,
        )
    assert out["read_two"] == {"id": 1, "result": "BA"}
    assert out["out_of_range"]["error"]["code"] == "unixrpc.InvalidParams"
    assert out["out_of_range"]["error"]["data"][0]["loc"] == ["second"]
    assert out["opened"] == [{"id": 3, "result": 0}, 1, "from the server"]


# -- (a') regressions: sdk bugs found by the stdlib client ---------------------------------------------------


@pytest.mark.parametrize("case", ["half close", "body over max_frame_size"])
def test_connection_closes_once_calls_in_flight_are_answered(sock_dir: str, case: str) -> None:
    bad = "conn.sock.shutdown(socket.SHUT_WR)" if case == "half close" else "conn.send({'pad': 'x' * 2000})"
    with serving_in_thread(make_server(max_frame_size=1024), os.path.join(sock_dir, "s")) as path:
        out = run_peer(
            f"""
            conn = connect(sys.argv[1])
            conn.send({{"id": 1, "method": "Sleep", "params": {{"seconds": 0.2, "tag": "in flight"}}}})
            {bad}
            frames = [conn.next()]
            while frames[-1] not in ("<eof>", "<timeout>"):
                frames.append(conn.next(1.0))
            report(frames=frames)
            """,
            path,
        )
    *frames, closed = out["frames"]
    # the server stops reading, not answering: the call read before the fault
    # is answered first, then the error about the connection (issue 21 item 11)
    assert frames[0] == {"id": 1, "result": "in flight"}
    if case != "half close":
        assert without_message(frames[1]) == error(None, "unixrpc.ProtocolError")
    assert len(frames) == (1 if case == "half close" else 2)
    assert closed == "<eof>"


def test_hanging_up_with_a_call_in_flight_frees_the_connection(sock_dir: str) -> None:
    with serving_in_thread(make_server(max_connections=1), os.path.join(sock_dir, "s")) as path:
        out = run_peer(
            """
            first = connect(sys.argv[1])
            first.send({"id": 1, "method": "Sleep", "params": {"seconds": 30}})
            first.call(2, "Add", {"a": 1, "b": 1})
            first.close()  # the server cancels the Sleep call
            time.sleep(0.3)
            report(second=connect(sys.argv[1]).call(1, "Add", {"a": 1, "b": 2}))
            """,
            path,
        )
    assert out["second"] == {"id": 1, "result": 3}


@pytest.mark.parametrize("bad_id", [-1, 2**63])
def test_invalid_id_is_answered_with_null_id(server_path: str, bad_id: int) -> None:
    out = run_peer(
        f"""
        conn = connect(sys.argv[1])
        report(reply=conn.call({bad_id}, "Add", {{"a": 1, "b": 2}}))
        """,
        server_path,
    )
    assert without_message(out["reply"]) == error(None, "unixrpc.ProtocolError")


def test_credit_sent_right_after_the_request_is_honoured(server_path: str) -> None:
    out = run_peer(
        """
        conn = connect(sys.argv[1])
        conn.sock.sendall(
            frame({"id": 1, "method": "Count", "params": {"n": 5}, "stream": 1})
            + frame({"credit": 1, "n": 10})
        )
        frames = [conn.next(1.0)]
        while frames[-1] != "<timeout>" and "item" in frames[-1]:
            frames.append(conn.next(1.0))
        report(frames=frames)
        """,
        server_path,
    )
    assert out["frames"] == [{"id": 1, "item": i} for i in range(5)] + [{"id": 1, "result": None}]


class Blobs(StreamMethod[str]):
    n: int
    size: int


def test_cancel_while_an_item_is_half_written(sock_dir: str) -> None:
    server = Server()

    @server.method(Blobs)
    async def blobs(req: Blobs) -> AsyncIterator[str]:
        for _ in range(req.n):
            yield "x" * req.size

    @server.method(Add)
    async def add(req: Add) -> int:
        return req.a + req.b

    with serving_in_thread(server, os.path.join(sock_dir, "s")) as path:
        out = run_peer(
            """
            conn = connect(sys.argv[1])
            conn.send({"id": 1, "method": "Blobs", "params": {"n": 4, "size": 1 << 20}, "stream": 4})
            time.sleep(0.3)  # not reading: the server blocks in the middle of the first item
            conn.send({"cancel": 1})
            frames = []
            while True:
                got = conn.next(1.0)
                if isinstance(got, dict) and "item" in got:
                    frames.append("item")
                    continue
                frames.append(got)
                break
            report(frames=frames, then=conn.call(2, "Add", {"a": 1, "b": 2}, timeout=1.0))
            """,
            path,
        )
    *items, last = out["frames"]
    assert set(items) <= {"item"}
    assert last == error(1, "unixrpc.Cancelled", "call cancelled by the client")
    assert out["then"] == {"id": 2, "result": 3}


def test_reply_over_the_frame_limit_does_not_crash_the_server(sock_dir: str) -> None:
    crash: BaseException | None = None
    out: dict[str, Any] = {}
    try:
        with serving_in_thread(make_server(max_frame_size=256), os.path.join(sock_dir, "s")) as path:
            # the request fits in 256 bytes; the MethodNotFound error, which quotes the name, does not
            out = run_peer(
                """
                conn = connect(sys.argv[1])
                reply = conn.call(1, "m" * 200, {})
                try:
                    again = connect(sys.argv[1]).call(1, "Add", {"a": 1, "b": 2})
                except OSError as exc:
                    again = repr(exc)
                report(reply=reply, again=again)
                """,
                path,
            )
    except Exception as exc:
        crash = exc
    assert crash is None, f"the server crashed: {crash!r}"
    assert out["reply"]["id"] == 1
    assert "error" in out["reply"]  # every request gets exactly one final reply
    assert out["again"] == {"id": 1, "result": 3}


# -- (b) unixrpc clients against the stdlib server -----------------------------------------------


class Teapot(RPCError, code="foreign.Teapot"):
    temperature: int


class Brew(Method[int]):
    temperature: int


class Pair(Method[int]):
    x: int


class PairResult(BaseModel):
    x: int
    fd: FD | None = None


class FdPair(Method[PairResult]):
    x: int


class Pipe(Method[FD]):
    x: int


class Fd(Method[int]):
    pass


class LieFds(Method[int]):
    pass


class ItemForCall(Method[int]):
    pass


class Break(Method[int]):
    pass


def test_sync_client_against_stdlib_server(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "foreign.sock")
    with ForeignServer(path) as server, Client(path, timeout=5) as client:
        assert client.call(Add(a=1, b=2)) == 3
        with pytest.raises(Teapot) as caught:
            client.call(Brew(temperature=97))
        assert (caught.value.code, caught.value.temperature, caught.value.message) == (
            "foreign.Teapot",
            97,
            "I'm a teapot",
        )
        with pytest.raises(TimeoutError):
            client.call(Sleep(seconds=30), timeout=0.2)  # sends a cancel; the late Cancelled is dropped
        assert client.call(Add(a=2, b=3)) == 5
    assert server.received == [
        {"id": 1, "method": "Add", "params": {"a": 1, "b": 2}},
        {"id": 2, "method": "Brew", "params": {"temperature": 97}},
        {"id": 3, "method": "Sleep", "params": {"seconds": 30.0, "tag": ""}},
        {"cancel": 3},
        {"id": 4, "method": "Add", "params": {"a": 2, "b": 3}},
    ]


def test_sync_client_out_of_order_replies(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "foreign.sock")
    with ForeignServer(path), Client(path, timeout=5) as client, ThreadPoolExecutor(2) as pool:
        first = pool.submit(client.call, Pair(x=1))
        second = pool.submit(client.call, Pair(x=2))
        assert (first.result(timeout=10), second.result(timeout=10)) == (1, 2)


def test_sync_client_stream_grants_credit_every_half_window(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "foreign.sock")
    with ForeignServer(path) as server, Client(path, timeout=5, stream_window=4) as client:
        assert list(client.stream(Count(n=6))) == [0, 1, 2, 3, 4, 5]
    request, *credits = server.received
    assert request == {"id": 1, "method": "Count", "params": {"n": 6, "delay": 0.0}, "stream": 4}
    assert credits == [{"credit": 1, "n": 2}] * 3


def test_sync_client_null_id_error_fails_the_connection(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "foreign.sock")
    with ForeignServer(path), Client(path, timeout=5) as client:
        with pytest.raises(ServerBusyError):
            client.call(Break())
        with pytest.raises(ServerBusyError):  # every later call: the connection is done
            client.call(Add(a=1, b=2))


def test_sync_client_item_for_a_unary_call(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "foreign.sock")
    with (
        ForeignServer(path),
        Client(path, timeout=5) as client,
        pytest.raises((RemoteProtocolError, InvalidResultError)),
    ):
        client.call(ItemForCall())


@pytest.mark.anyio
async def test_async_client_against_stdlib_server(anyio_backend: str, sock_dir: str) -> None:
    path = os.path.join(sock_dir, "foreign.sock")
    results: dict[int, int] = {}
    with ForeignServer(path) as server:
        async with AsyncClient(path, timeout=5, stream_window=2) as client:
            assert await client.call(Add(a=1, b=2)) == 3
            with pytest.raises(Teapot) as caught:
                await client.call(Brew(temperature=97))
            assert caught.value.temperature == 97

            async def pair(x: int) -> None:
                results[x] = await client.call(Pair(x=x))

            async with anyio.create_task_group() as tg:  # answered in the reverse order
                tg.start_soon(pair, 1)
                tg.start_soon(pair, 2)
            assert [item async for item in client.stream(Count(n=3))] == [0, 1, 2]
            with pytest.raises(TimeoutError):
                await client.call(Sleep(seconds=30), timeout=0.2)
            assert await client.call(Add(a=2, b=3)) == 5
    assert results == {1: 1, 2: 2}
    requests = {envelope["method"]: envelope for envelope in server.received if "method" in envelope}
    assert requests["Count"]["stream"] == 2
    credits = [envelope for envelope in server.received if "credit" in envelope]
    assert credits == [{"credit": requests["Count"]["id"], "n": 1}] * 3  # window 2: after every item
    assert {"cancel": requests["Sleep"]["id"]} in server.received
    ids = [envelope["id"] for envelope in server.received if "id" in envelope]
    assert ids == sorted(set(ids))  # increasing, never reused


# -- (c) descriptors from a foreign peer ----------------------------------------------------------


def check_pair(results: list[PairResult]) -> None:
    """Of the two FdPair results, exactly one came with a pipe, holding its own x; close it."""
    assert sorted(result.x for result in results) == [1, 2]
    with_fd = [result for result in results if result.fd is not None]
    assert len(with_fd) == 1
    assert with_fd[0].fd is not None
    with with_fd[0].fd.open() as pipe:
        assert pipe.read() == f"pipe {with_fd[0].x}"


def test_sync_client_descriptors_from_stdlib_server(sock_dir: str, no_fd_leak: None) -> None:
    path = os.path.join(sock_dir, "foreign.sock")
    with ForeignServer(path), Client(path, timeout=5) as client:
        assert client.call(Fd()) == 1  # a descriptor no field takes is closed
        with client.call(Pipe(x=7)).open() as pipe:  # an FD result: index 0 of the frame's descriptors
            assert pipe.read() == "pipe 7"
        with ThreadPoolExecutor(2) as pool:  # the second reply's fd may arrive with the first's bytes
            first = pool.submit(client.call, FdPair(x=1))
            second = pool.submit(client.call, FdPair(x=2))
            check_pair([first.result(timeout=10), second.result(timeout=10)])
        assert client.call(Add(a=1, b=2)) == 3


def test_sync_client_descriptors_that_never_came(sock_dir: str, no_fd_leak: None) -> None:
    path = os.path.join(sock_dir, "foreign.sock")
    with ForeignServer(path), Client(path, timeout=5) as client:
        with pytest.raises(ConnectionBrokenError, match="declares 1 file descriptors"):
            client.call(LieFds())
        with pytest.raises(ConnectionBrokenError):
            client.call(Add(a=1, b=2))


@pytest.mark.anyio
async def test_async_client_descriptors_from_stdlib_server(
    anyio_backend: str, sock_dir: str, no_fd_leak: None
) -> None:
    path = os.path.join(sock_dir, "foreign.sock")
    results: list[PairResult] = []
    with ForeignServer(path):
        async with AsyncClient(path, timeout=5) as client:
            assert await client.call(Fd()) == 1
            with (await client.call(Pipe(x=7))).open() as pipe:
                assert pipe.read() == "pipe 7"

            async def fd_pair(x: int) -> None:
                results.append(await client.call(FdPair(x=x)))

            async with anyio.create_task_group() as tg:
                tg.start_soon(fd_pair, 1)
                tg.start_soon(fd_pair, 2)
            assert await client.call(Add(a=1, b=2)) == 3
    check_pair(results)
