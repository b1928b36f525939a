"""Support for tests/test_reliability.py: a server with methods that block,
hold a stream open and count what waits, run as a separate process, and
what a test reads of that process in /proc; raw peers that speak the wire
format by hand (u32 body length | u16 fd count | JSON).

Run as a script, it is the server process:
``python tests/reliability_support.py PATH BACKEND KWARGS_JSON`` serves on
PATH (backend ``asyncio``, ``trio`` or ``threads``) with ``Server(**KWARGS)``,
prints ``ready`` once listening, and stops when its stdin is closed.
"""

from __future__ import annotations

import array
import contextlib
import itertools
import json
import os
import select
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from unixrpc import Method, Server, StreamMethod

HEADER = struct.Struct(">IH")


class Add(Method[int]):
    a: int
    b: int


class Block(Method[str]):
    """A plain ``def`` handler that blocks until its tag is released (or *seconds* pass)."""

    tag: str
    seconds: float = 60.0


class Release(Method[int]):
    """Let every ``Block`` of *tag* return (now and later): how many were blocked."""

    tag: str


class Pending(Method[int]):
    """How many ``Block`` handlers of *tag* are blocked right now."""

    tag: str


class Big(Method[str]):
    """A reply of *size* bytes."""

    size: int


class BigAfter(Method[str]):
    """A reply of *size* bytes, once *tag* is released (see ``Release``)."""

    tag: str
    size: int


class Hold(StreamMethod[int]):
    """A stream that never ends: 0, 1, 2, ... as far as its credit goes."""


class Chunks(StreamMethod[str]):
    """A stream that never ends: items of *size* bytes, as far as its credit goes."""

    size: int


class Ticks(StreamMethod[int]):
    """A plain ``def`` generator: 0, 1, 2, ... as far as its credit goes;
    ``Pending(tag)`` counts the generators not yet closed."""

    tag: str


def make_server(backend: str = "asyncio", **kwargs: Any) -> Server:
    """The reliability server (what the server process serves). ``Add`` is
    an ``async def`` on an event loop and a plain ``def`` on the threads
    backend: the fast path of each."""
    kwargs.setdefault("shutdown_grace", 0.5)
    server = Server(**kwargs)
    gates: defaultdict[str, threading.Event] = defaultdict(threading.Event)
    pending: defaultdict[str, int] = defaultdict(int)
    lock = threading.Lock()

    if backend == "threads":

        @server.method(Add)
        def add(req: Add) -> int:
            return req.a + req.b

    else:

        @server.method(Add)
        async def add_async(req: Add) -> int:
            return req.a + req.b

    @server.method(Block)
    def block(req: Block) -> str:
        with lock:
            gate = gates[req.tag]
            pending[req.tag] += 1
        try:
            gate.wait(req.seconds)
        finally:
            with lock:
                pending[req.tag] -= 1
        return req.tag

    # async: never queued behind blocked handlers in the anyio engine's thread pool
    @server.method(Release)
    async def release(req: Release) -> int:
        with lock:
            gates[req.tag].set()
            return pending[req.tag]

    @server.method(Pending)
    async def pending_of(req: Pending) -> int:
        with lock:
            return pending[req.tag]

    @server.method(Big)
    async def big(req: Big) -> str:
        return "x" * req.size

    @server.method(BigAfter)
    def big_after(req: BigAfter) -> str:
        with lock:
            gate = gates[req.tag]
            pending[req.tag] += 1
        try:
            gate.wait(60)
        finally:
            with lock:
                pending[req.tag] -= 1
        return "x" * req.size

    @server.method(Ticks)
    def ticks(req: Ticks) -> Iterator[int]:
        with lock:
            pending[req.tag] += 1
        try:
            yield from itertools.count()
        finally:
            with lock:
                pending[req.tag] -= 1

    @server.method(Chunks)
    async def chunks(req: Chunks) -> AsyncIterator[str]:
        while True:
            yield "x" * req.size

    @server.method(Hold)
    async def hold(req: Hold) -> AsyncIterator[int]:
        i = 0
        while True:
            yield i
            i += 1

    return server


# -- the server process --------------------------------------------------------------------------


def _proc_status(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def wait_for(predicate: Callable[[], bool], seconds: float = 10.0, what: str = "condition") -> None:
    """Wait until *predicate* holds (the timeout is only a safety net)."""
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached within {seconds} s")
        time.sleep(0.01)


class ServerProcess:
    """The reliability server in its own process (see the module docstring)."""

    def __init__(self, path: str, backend: str, **kwargs: Any) -> None:
        Server(**{k: v for k, v in kwargs.items() if not k.startswith("_")})  # an unknown limit: TypeError
        self.path = path
        self.backend = backend
        # not a pipe: a chatty server never blocks on it (closed by stop())
        self._log = tempfile.TemporaryFile()  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, __file__, path, backend, json.dumps(kwargs)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if line != b"ready\n":
            self.proc.kill()
            self.proc.wait()
            log = self.log()
            self.stop()
            raise AssertionError(f"the server process did not start: {line!r}\n{log}")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def fds(self) -> int:
        """Descriptors open in the server process."""
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def fd_targets(self) -> list[str]:
        targets = []
        for name in os.listdir(f"/proc/{self.pid}/fd"):
            with contextlib.suppress(OSError):
                targets.append(os.readlink(f"/proc/{self.pid}/fd/{name}"))
        return sorted(targets)

    def threads(self) -> int:
        """Threads of the server process."""
        return _proc_status(self.pid, "Threads")

    def rss(self) -> int:
        """Resident memory of the server process, in bytes."""
        return _proc_status(self.pid, "VmRSS") * 1024

    def wait_fds(self, at_most: int, seconds: float = 10.0) -> None:
        """Wait until the server holds at most *at_most* descriptors."""
        try:
            wait_for(lambda: self.fds() <= at_most, seconds, f"server fds back to {at_most}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {self.fds()} open: {self.fd_targets()}") from None

    def log(self) -> str:
        self._log.seek(0)
        return self._log.read().decode(errors="replace")[-4000:]

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()

    def stop(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log.close()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


# -- raw peers -----------------------------------------------------------------------------------


def frame(body: bytes, nfds: int = 0) -> bytes:
    return HEADER.pack(len(body), nfds) + body


def encode(**fields: Any) -> bytes:
    return json.dumps(fields, separators=(",", ":")).encode()


def add_request(call_id: int, a: int, b: int) -> bytes:
    return frame(encode(id=call_id, method="Add", params={"a": a, "b": b}))


def raw_connect(path: str, timeout: float = 10.0) -> socket.socket:
    """A connection to *path* (waiting, up to *timeout*, while its listen
    backlog is full: a connect with a timeout then fails with EAGAIN)."""
    deadline = time.monotonic() + timeout
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect(path)
        except BlockingIOError:
            sock.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)
            continue
        except BaseException:
            sock.close()
            raise
        return sock


def send_with_fds(sock: socket.socket, data: bytes, count: int) -> None:
    """Send *data* with *count* real descriptors (of /dev/null) on its first
    byte; our copies are closed after."""
    fds = [os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC) for _ in range(count)]
    try:
        rights = array.array("i", fds).tobytes()
        sent = sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, rights)] if fds else [])
        if sent < len(data):
            sock.sendall(data[sent:])
    finally:
        for fd in fds:
            os.close(fd)


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


def recv_envelope(sock: socket.socket) -> dict[str, Any] | None:
    """The next envelope, or None at end of stream (or a reset)."""
    try:
        header = recv_exactly(sock, HEADER.size)
    except ConnectionResetError:
        return None
    if not header:
        return None
    assert len(header) == HEADER.size, f"connection closed in a header: {header!r}"
    size, nfds = HEADER.unpack(header)
    assert nfds == 0, "the server sent descriptors"
    body = recv_exactly(sock, size)
    assert len(body) == size, "connection closed in the middle of a frame"
    return json.loads(body)  # type: ignore[no-any-return]


def ask(sock: socket.socket, data: bytes) -> dict[str, Any] | None:
    sock.sendall(data)
    return recv_envelope(sock)


def try_add(path: str, a: int = 2, b: int = 3) -> dict[str, Any] | None:
    """One Add on a new connection: the reply (a result, or the refusal),
    None if the connection was closed first."""
    with raw_connect(path) as sock:
        try:
            return ask(sock, add_request(1, a, b))
        except (BrokenPipeError, ConnectionResetError):
            return None


def wait_served(path: str, seconds: float = 10.0) -> None:
    """Wait until a new client gets its Add answered (refusals are retried)."""
    deadline = time.monotonic() + seconds
    last: Any = None
    while time.monotonic() < deadline:
        last = try_add(path)
        if last == {"id": 1, "result": 5}:
            return
        time.sleep(0.02)
    raise AssertionError(f"a new client was not served within {seconds} s (last reply: {last})")


def wait_closed(sock: socket.socket, seconds: float = 10.0) -> list[dict[str, Any]]:
    """Read until the server closes *sock*: the envelopes that came first."""
    sock.settimeout(seconds)
    got = []
    while True:
        try:
            envelope = recv_envelope(sock)
        except TimeoutError:
            raise AssertionError(f"the server did not close the connection within {seconds} s") from None
        if envelope is None:
            return got
        got.append(envelope)


def poll_hung_up(sock: socket.socket) -> bool:
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLHUP)
    return bool(poller.poll(0))


def _tasks_of_uid(uid: int) -> int:
    """Threads of every process whose real uid is *uid* (what RLIMIT_NPROC counts)."""
    total = 0
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/status") as status:
                fields = dict(line.split(":", 1) for line in status if ":" in line)
        except OSError:
            continue
        if int(fields.get("Uid", "-1").split()[0]) == uid:
            total += int(fields.get("Threads", "0"))
    return total


def drop_to_thread_limit(spare: int) -> None:
    """Become a uid of our own (gid 65534) and allow this user *spare* more
    threads than the process has now (``RLIMIT_NPROC``, which root is
    exempt from): the way ``TasksMax=``, a container's ``pids.max`` or a
    full pid space make thread starts fail. Done after the socket is bound,
    as a privsep daemon drops its privileges.

    The limit counts every task of the uid, so the uid is one no other
    process has (100000 + our pid, unique among live processes), not
    65534: a process of that user started meanwhile (``call_as`` children
    of test_identity on another ``pytest -n`` worker, this test in another
    run on the machine) would take the spare threads, and every call
    would be refused."""
    import resource

    uid = 100_000 + os.getpid()
    os.setgroups([])
    os.setresgid(65534, 65534, 65534)
    os.setresuid(uid, uid, uid)
    limit = _tasks_of_uid(uid) + spare  # (the limit counts every task of the user, not only ours)
    resource.setrlimit(resource.RLIMIT_NPROC, (limit, limit))


def main() -> None:
    import faulthandler
    import logging
    import signal

    # RELIABILITY_DEBUG=1: every call in the server's log (server.log())
    logging.basicConfig(level=logging.DEBUG if os.environ.get("RELIABILITY_DEBUG") else logging.WARNING)
    faulthandler.register(signal.SIGUSR1)  # a stuck server process can be asked where it is
    path, backend, kwargs = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    spare = kwargs.pop("_spare_threads", None)
    server = make_server(backend, **kwargs)
    with server.serve_in_thread(path, backend=backend):
        if spare is not None:
            drop_to_thread_limit(spare)
        print("ready", flush=True)
        sys.stdin.read()  # until the test closes it


if __name__ == "__main__":
    main()


# -- a fuzzing peer ------------------------------------------------------------------------------

PROTOCOL_ERROR = "unixrpc.ProtocolError"
#: what a reply is expected to be: (id, "result", value) or (id, "error", code); id None: about the connection
Expected = tuple[int | None, str, Any]

_NOT_ENVELOPES = [b"[1,2]", b"5", b"null", b'"x"', b"{}", b'{"foo":1}', b"true", b"[]", b"1.5"]


class FuzzPeer:
    """A raw peer that sends a random mix of well-formed calls and frames
    that are invalid (answered, the connection goes on) or fatal (answered
    with one id-null error, or none, then closed), on one connection after
    another, and checks every reply: each well-formed call gets exactly one
    correct answer, each bad frame exactly the error the protocol says, and
    nothing else arrives. Descriptors it sends are real (``/dev/null``).

    The server must be configured with *max_frame_size* and *max_fds*
    (``max_fds_per_frame``)."""

    def __init__(self, path: str, seed: int, max_frame_size: int, max_fds: int) -> None:
        import random

        self.path = path
        self.seed = seed
        self.rng = random.Random(seed)
        self.max_frame_size = max_frame_size
        self.max_fds = max_fds
        self.sock: socket.socket | None = None
        self.next_id = 1
        self.frames = 0
        self.calls_checked = 0
        self.connections = 0
        self.fds_sent = 0

    # -- one run ---------------------------------------------------------------------------

    def run(self, frames: int) -> None:
        rng = self.rng
        self._connect()
        while self.frames < frames:
            roll = rng.random()
            if roll < 0.05:
                self._fatal()
            elif roll < 0.08:
                self._garbage()
            else:
                self._batch(rng.randint(1, 6))
        self._batch(1, only_calls=True)
        self._close()

    def _connect(self) -> None:
        self.sock = raw_connect(self.path)
        self.connections += 1

    def _close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def _id(self) -> int:
        self.next_id += 1
        return self.next_id

    def _fail(self, message: str) -> None:
        raise AssertionError(f"fuzz seed {self.seed}, frame {self.frames}: {message}")

    # -- frames that the connection survives ----------------------------------------------------

    def _call(self) -> tuple[bytes, int, list[Expected]]:
        call_id, a, b = self._id(), self.rng.randint(-(2**40), 2**40), self.rng.randint(0, 1000)
        nfds = self.rng.choice([0, 0, 0, 1, self.max_fds]) if self.max_fds else 0
        body = encode(id=call_id, method="Add", params={"a": a, "b": b})
        return frame(body, nfds), nfds, [(call_id, "result", a + b)]

    def _recoverable(self) -> tuple[bytes, int, list[Expected]]:
        """One frame (or two sent together) the connection survives, the
        descriptors to attach to its first byte, and the replies it causes."""
        rng, call_id = self.rng, self._id()
        kind = rng.randrange(13)
        if kind <= 3:
            return self._call()
        if kind == 4:  # a later frame's descriptors ride on an earlier frame: assignment by count
            first, _, expected = self._call()
            first = frame(first[HEADER.size :], 0)
            nfds = rng.randint(1, self.max_fds)
            second_id = self._id()
            second = frame(encode(id=second_id, method="Add", params={"a": 1, "b": 1}), nfds)
            return first + second, nfds, [*expected, (second_id, "result", 2)]
        if kind == 5:  # not UTF-8, or empty
            body = b"" if rng.random() < 0.2 else b"\xff" + rng.randbytes(rng.randint(0, 64))
            return frame(body), 0, [(None, "error", PROTOCOL_ERROR)]
        if kind == 6:
            return frame(rng.choice(_NOT_ENVELOPES)), 0, [(None, "error", PROTOCOL_ERROR)]
        if kind == 7:  # what only a server may send
            member = rng.choice(["result", "item"])
            return frame(encode(id=call_id, **{member: 1})), 0, [(None, "error", PROTOCOL_ERROR)]
        if kind == 8:
            body = encode(id=call_id, method=f"No.Such{rng.randint(0, 9)}", params={})
            return frame(body), 0, [(call_id, "error", "unixrpc.MethodNotFound")]
        if kind == 9:
            body = encode(id=call_id, method="Add", params={"a": "one", "b": [2]})
            nfds = rng.choice([0, 0, 1])
            return frame(body, nfds), nfds, [(call_id, "error", "unixrpc.InvalidParams")]
        if kind == 10:  # a window on a unary method; a stream method without one
            if rng.random() < 0.5:
                body = encode(id=call_id, method="Add", params={"a": 1, "b": 2}, stream=4)
            else:
                body = encode(id=call_id, method="Hold", params={})
            return frame(body), 0, [(call_id, "error", PROTOCOL_ERROR)]
        if kind == 11:  # members of the wrong types, with a valid id: answered with it
            body = encode(id=call_id, method=rng.choice([5, None, [], {}]))
            return frame(body), 0, [(call_id, "error", PROTOCOL_ERROR)]
        # no reply at all: cancel or credit for no call, a notification
        choice = rng.randrange(3)
        if choice == 0:
            body = encode(cancel=10**9 + call_id)
        elif choice == 1:
            body = encode(credit=10**9 + call_id, n=rng.randint(0, 5))
        else:
            body = encode(method="Add", params={"a": 1, "b": 2})
        return frame(body), 0, []

    def _batch(self, count: int, *, only_calls: bool = False) -> None:
        sock = self.sock
        assert sock is not None
        expected: list[Expected] = []
        for _ in range(count):
            data, nfds, replies = self._call() if only_calls else self._recoverable()
            if nfds:
                send_with_fds(sock, data, nfds)
                self.fds_sent += nfds
            else:
                sock.sendall(data)
            self.frames += 1
            expected += replies
        got = []
        for _ in expected:
            reply = recv_envelope(sock)
            if reply is None:
                self._fail(f"the connection closed while replies were due: {expected} (got {got})")
            got.append(reply)
        self._check(expected, got)

    def _check(self, expected: list[Expected], got: list[dict[str, Any]]) -> None:
        by_id = {call_id: (what, value) for call_id, what, value in expected if call_id is not None}
        nulls = sorted(value for call_id, _, value in expected if call_id is None)
        seen_nulls = []
        for reply in got:
            call_id = reply.get("id")
            if call_id is None:
                if "error" not in reply:
                    self._fail(f"an id-null reply that is no error: {reply}")
                seen_nulls.append(reply["error"]["code"])
                continue
            if call_id not in by_id:
                self._fail(f"a reply for no call, or a second one: {reply} (expected {expected})")
            what, value = by_id.pop(call_id)
            if what == "result":
                if reply != {"id": call_id, "result": value}:
                    self._fail(f"wrong answer to call {call_id}: {reply}, expected {value}")
                self.calls_checked += 1
            elif "error" not in reply or reply["error"]["code"] != value:
                self._fail(f"call {call_id}: expected error {value}, got {reply}")
        if sorted(seen_nulls) != nulls:
            self._fail(f"id-null errors {seen_nulls}, expected {nulls}")

    # -- frames after which the connection is closed ----------------------------------------------

    def _settle(self) -> None:
        """One answered call first: every frame before it has been read, so
        the fatal frame that follows is read alone. (A call read together
        with a fatal frame can leave the connection open on the threads
        engine: test_a_fatal_frame_read_with_a_call_closes_the_connection.)"""
        self._batch(1, only_calls=True)

    def _fatal(self) -> None:
        self._settle()
        sock = self.sock
        assert sock is not None
        rng = self.rng
        kind = rng.randrange(5)
        errors = 1
        if kind == 0:  # a body over the limit, refused from the header
            sock.sendall(HEADER.pack(rng.randint(self.max_frame_size + 1, 2**32 - 1), 0) + b"{")
        elif kind == 1:  # more descriptors than a frame may carry, refused from the header
            sock.sendall(HEADER.pack(2, rng.randint(self.max_fds + 1, 65535)) + b"{}")
        elif kind == 2:  # declares descriptors that never come
            sock.sendall(frame(encode(method="Add", params={"a": 1, "b": 2}), rng.randint(1, self.max_fds)))
        elif kind == 3:  # descriptors that came with no frame (the frame, a cancel, declares none)
            nfds = rng.randint(1, self.max_fds)
            # (a cancel, not a call: see _settle)
            send_with_fds(sock, frame(encode(cancel=10**9)), nfds)
            self.fds_sent += nfds
        else:  # more descriptors in one sendmsg than the server's control buffer holds: MSG_CTRUNC
            nfds = min(self.max_fds + rng.randint(4, 16), 253)
            send_with_fds(sock, frame(encode(method="Add", params={"a": 1, "b": 2}), nfds), nfds)
            self.fds_sent += nfds
            errors = 0
        self.frames += 1
        try:
            got = wait_closed(sock)
        except AssertionError as exc:
            self._fail(f"fatal frame {kind}: {exc}")
        codes = [reply.get("error", {}).get("code") for reply in got if reply.get("id") is None]
        if len(got) != errors or codes != [PROTOCOL_ERROR] * errors:
            self._fail(f"fatal frame {kind}: expected {errors} id-null protocol error(s), got {got}")
        self._close()
        self._connect()

    def _garbage(self) -> None:
        """Random bytes, then the end of the stream: only errors may come back."""
        self._settle()
        sock = self.sock
        assert sock is not None
        garbage = self.rng.randbytes(self.rng.randint(1, 200))
        sock.sendall(garbage)
        self.frames += 1
        sock.shutdown(socket.SHUT_WR)
        try:
            replies = wait_closed(sock)
        except AssertionError as exc:
            self._fail(f"after garbage {garbage!r}: {exc}")
        for reply in replies:
            if "error" not in reply:
                self._fail(f"garbage was answered with {reply}")
        self._close()
        self._connect()
