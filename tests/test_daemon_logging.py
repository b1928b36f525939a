"""Daemon logging: the native journal protocol (a real datagram socket stands in
for journald's: one entry per record, traceback included, with its fields; a
memfd for a big one; stderr while the journal is away), syslog priority
prefixes when stderr is the journal stream but no journal socket is there (a
child process whose stderr is a real file that JOURNAL_STREAM names), the
rate limiter (a fake clock, real loggers and handlers), and the installer."""

from __future__ import annotations

import array
import fcntl
import inspect
import io
import logging
import os
import socket
import struct
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest

from unixrpc import Client, InternalError, Method, Server
from unixrpc.daemon import (
    JournalFormatter,
    JournalHandler,
    RateLimitFilter,
    install_daemon_logging,
    stream_is_journal,
)
from unixrpc.daemon.journal import encode_entry, field_name
from unixrpc.daemon.logs import syslog_priority


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.levelname} {record.name}: {record.getMessage()}")


@pytest.fixture
def limited() -> Iterator[tuple[logging.Logger, Lines, RateLimitFilter, Clock]]:
    clock = Clock()
    handler = Lines()
    limiter = RateLimitFilter(burst=3, interval=10.0, clock=clock)
    handler.addFilter(limiter)
    parent = logging.getLogger("ratelimit-test")
    parent.propagate = False
    parent.setLevel(logging.DEBUG)
    parent.addHandler(handler)
    try:
        yield logging.getLogger("ratelimit-test.server"), handler, limiter, clock
    finally:
        parent.removeHandler(handler)
        parent.propagate = True


# -- priorities and the journal stream -----------------------------------------------------------


def test_syslog_priorities() -> None:
    assert [syslog_priority(level) for level in (50, 40, 30, 25, 20, 15, 10, 0)] == [2, 3, 4, 5, 6, 7, 7, 7]


def test_journal_formatter_prefixes_every_line() -> None:
    formatter = JournalFormatter()
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        record = logging.LogRecord(
            "unixrpc.server", logging.ERROR, __file__, 1, "handler %s failed", ("x",), None
        )
        record.exc_info = sys.exc_info()
    lines = formatter.format(record).split("\n")
    assert lines[0] == "<3>unixrpc.server: handler x failed"
    assert lines[1] == "<3>Traceback (most recent call last):"
    assert lines[-1] == "<3>RuntimeError: boom"
    assert all(line.startswith("<3>") for line in lines)
    warning = logging.LogRecord("app", logging.WARNING, __file__, 1, "two\nlines", None, None)
    assert formatter.format(warning) == "<4>app: two\n<4>lines"


def test_stream_is_journal_compares_device_and_inode(
    tmp_path: os.PathLike[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    journal_path = os.path.join(tmp_path, "journal")
    other_path = os.path.join(tmp_path, "other")
    with open(journal_path, "w") as journal, open(other_path, "w") as other:
        st = os.fstat(journal.fileno())
        monkeypatch.delenv("JOURNAL_STREAM", raising=False)
        assert not stream_is_journal(journal)
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        assert stream_is_journal(journal)
        assert stream_is_journal(journal.fileno())
        assert not stream_is_journal(other)
        assert not stream_is_journal(io.StringIO())  # no fileno: not the journal, no error
        for bad in ("", "12", "a:b", f"{st.st_dev}:{st.st_ino}:1"):
            monkeypatch.setenv("JOURNAL_STREAM", bad)
            assert not stream_is_journal(journal)


CHILD = """
import logging
from unixrpc.daemon import install_daemon_logging
install_daemon_logging()
log = logging.getLogger("unixrpc.server")
log.debug("not shown at INFO")
log.info("serving on %s", "/run/kv.sock")
log.warning("protocol violation from pid %d", 42)
try:
    1 / 0
except ZeroDivisionError:
    log.exception("handler failed")
logging.getLogger("kv").critical("disk gone")
"""


def run_child_with_stderr_in(
    path: str, journal_stream_of: str | None, journal_socket: str | None = None
) -> str:
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    # never the real journal: a socket of the test's, or none (the stream, with <N>)
    env["UNIXRPC_JOURNAL_SOCKET"] = journal_socket or os.path.join(os.path.dirname(path), "no-journal-socket")
    with open(path, "w") as stderr:
        if journal_stream_of is not None:
            st = os.stat(journal_stream_of)
            env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
        subprocess.run(
            [sys.executable, "-c", textwrap.dedent(CHILD)], stderr=stderr, env=env, timeout=30, check=True
        )
    with open(path) as file:
        return file.read()


def test_under_journald_lines_carry_priorities(tmp_path: os.PathLike[str]) -> None:
    path = os.path.join(tmp_path, "stderr")
    open(path, "w").close()
    out = run_child_with_stderr_in(path, journal_stream_of=path).splitlines()
    assert out[:3] == [
        "<6>unixrpc.server: serving on /run/kv.sock",
        "<4>unixrpc.server: protocol violation from pid 42",
        "<3>unixrpc.server: handler failed",
    ]
    assert out[3] == "<3>Traceback (most recent call last):"
    assert out[-2] == "<3>ZeroDivisionError: division by zero"
    assert out[-1] == "<2>kv: disk gone"
    assert all(line[:3] in ("<2>", "<3>", "<4>", "<6>") for line in out)


def test_elsewhere_lines_are_plain(tmp_path: os.PathLike[str]) -> None:
    path = os.path.join(tmp_path, "stderr")
    elsewhere = os.path.join(tmp_path, "elsewhere")
    open(elsewhere, "w").close()
    # JOURNAL_STREAM inherited from a parent whose stderr was the journal: ours is not
    out = run_child_with_stderr_in(path, journal_stream_of=elsewhere).splitlines()
    assert not any(line.startswith("<") for line in out)
    assert out[0].endswith(" INFO unixrpc.server: serving on /run/kv.sock")
    assert out[0][:4].isdigit(), "a timestamp first"
    assert " WARNING unixrpc.server: protocol violation from pid 42" in out[1]


# -- the rate limiter ----------------------------------------------------------------------------


def test_a_flood_is_cut_to_burst_then_summarized(
    limited: tuple[logging.Logger, Lines, RateLimitFilter, Clock],
) -> None:
    log, handler, _, clock = limited
    for pid in range(100):
        log.warning("protocol violation from pid %d", pid)
    assert handler.lines == [
        f"WARNING ratelimit-test.server: protocol violation from pid {pid}" for pid in range(3)
    ]
    clock.now += 10
    log.warning("protocol violation from pid %d", 7)
    assert handler.lines[3:] == [
        "WARNING ratelimit-test.server: suppressed 97 messages like 'protocol violation from pid %d' "
        "(more than 3 in 10s)",
        "WARNING ratelimit-test.server: protocol violation from pid 7",
    ]


def test_keys_are_independent_and_lower_levels_pass(
    limited: tuple[logging.Logger, Lines, RateLimitFilter, Clock],
) -> None:
    log, handler, _, _ = limited
    for _ in range(5):
        log.warning("a")
        log.error("a")  # another level: another key
        log.warning("b")
        log.info("call %s", "Add")  # below WARNING: never limited
        log.debug("call %s", "Add")
        log.warning("by uid", extra={"ratelimit_key": ("uid", 1000)})
        log.warning("by uid", extra={"ratelimit_key": ("uid", 0)})
    assert handler.lines.count("WARNING ratelimit-test.server: a") == 3
    assert handler.lines.count("ERROR ratelimit-test.server: a") == 3
    assert handler.lines.count("WARNING ratelimit-test.server: b") == 3
    assert handler.lines.count("INFO ratelimit-test.server: call Add") == 5
    assert handler.lines.count("DEBUG ratelimit-test.server: call Add") == 5
    assert handler.lines.count("WARNING ratelimit-test.server: by uid") == 6


def test_a_flood_that_stops_is_reported_by_the_next_record(
    limited: tuple[logging.Logger, Lines, RateLimitFilter, Clock],
) -> None:
    log, handler, _, clock = limited
    for _ in range(5):
        log.warning("flood")
    clock.now += 11
    logging.getLogger("ratelimit-test.other").info("unrelated")
    assert handler.lines[-2:] == [
        "WARNING ratelimit-test.server: suppressed 2 messages like 'flood' (more than 3 in 10s)",
        "INFO ratelimit-test.other: unrelated",
    ]


def test_flush_reports_open_windows(limited: tuple[logging.Logger, Lines, RateLimitFilter, Clock]) -> None:
    log, handler, limiter, _ = limited
    for _ in range(4):
        log.warning("x")
    for _ in range(2):
        log.warning("y")  # nothing suppressed: nothing to report
    limiter.flush()
    assert (
        handler.lines[-1]
        == "WARNING ratelimit-test.server: suppressed 1 messages like 'x' (more than 3 in 10s)"
    )
    assert handler.lines.count("WARNING ratelimit-test.server: y") == 2
    limiter.flush()
    log.warning("x")
    assert handler.lines[-1] == "WARNING ratelimit-test.server: x", "a flush starts afresh"


def test_keys_are_bounded() -> None:
    clock = Clock()
    limiter = RateLimitFilter(burst=1, interval=60.0, max_keys=4, clock=clock)
    handler = Lines()
    handler.addFilter(limiter)
    log = logging.getLogger("ratelimit-bounded")
    log.propagate = False
    log.addHandler(handler)
    try:
        log.warning("first")
        log.warning("first")  # suppressed
        for n in range(1000):
            log.warning(f"distinct {n}")  # distinct templates on purpose
        assert len(limiter._windows) <= 4
        assert (
            "WARNING ratelimit-bounded: suppressed 1 messages like 'first' (more than 1 in 60s)"
            in handler.lines
        )
    finally:
        log.removeHandler(handler)


def test_bad_limits_are_refused() -> None:
    for kwargs in ({"burst": 0}, {"interval": 0}, {"max_keys": 0}):
        with pytest.raises(ValueError, match="burst and max_keys must be at least 1"):
            RateLimitFilter(**kwargs)  # type: ignore[arg-type]


# -- the installer -------------------------------------------------------------------------------


def test_install_daemon_logging_limits_a_flood(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    monkeypatch.setenv("UNIXRPC_JOURNAL_SOCKET", "/nonexistent/journal.socket")  # the <N> stream
    target = logging.getLogger("install-test")
    target.propagate = False
    out = io.StringIO()
    try:
        first = install_daemon_logging(logging.DEBUG, logger="install-test", stream=out)
        handler = install_daemon_logging(logging.DEBUG, logger=target, stream=out, journal=True)
        assert target.handlers == [handler], "installing again replaces the handler"
        assert first not in target.handlers
        assert target.level == logging.DEBUG
        for n in range(10_000):
            target.warning("violation %d", n)
        target.debug("a debug line")
        lines = out.getvalue().splitlines()
        assert lines[:10] == [f"<4>install-test: violation {n}" for n in range(10)]
        assert lines[10:] == ["<7>install-test: a debug line"]
    finally:
        for h in list(target.handlers):
            target.removeHandler(h)
        target.propagate = True
        target.setLevel(logging.NOTSET)


def test_install_daemon_logging_plain(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    target = logging.getLogger("install-plain")
    target.propagate = False
    out = io.StringIO()
    try:
        install_daemon_logging(logger=target, stream=out)
        target.debug("hidden at INFO")
        target.info("shown")
        [line] = out.getvalue().splitlines()
        assert line.endswith(" INFO install-plain: shown")
    finally:
        for h in list(target.handlers):
            target.removeHandler(h)
        target.propagate = True
        target.setLevel(logging.NOTSET)
    with pytest.raises(TypeError, match=r"logger must be a logging\.Logger or a name"):
        install_daemon_logging(logger=42)  # type: ignore[arg-type]


# -- the native journal protocol -----------------------------------------------------------------
#
# A real AF_UNIX datagram socket stands in for /run/systemd/journal/socket (the handler's
# socket_path=, or UNIXRPC_JOURNAL_SOCKET for a child); entries are parsed here, independently of
# the library, as the "Native Journal Protocol" document describes them.


def parse_entry(data: bytes) -> list[tuple[str, bytes]]:
    """The (name, value) pairs of one native entry, in order."""
    fields: list[tuple[str, bytes]] = []
    pos = 0
    while pos < len(data):
        end = data.index(b"\n", pos)
        line = data[pos:end]
        if b"=" in line:
            name, _, value = line.partition(b"=")
            pos = end + 1
        else:
            name = line
            (size,) = struct.unpack_from("<Q", data, end + 1)
            start = end + 9
            value = data[start : start + size]
            assert data[start + size : start + size + 1] == b"\n", "a binary value ends with a newline"
            pos = start + size + 1
        fields.append((name.decode("ascii"), value))
    return fields


class Journal:
    """The journal's end: a bound datagram socket that reads entries, from the
    datagram itself or from a memfd passed with it."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.memfds = 0

    def raw(self, timeout: float = 5.0) -> tuple[bytes, list[int]]:
        self.sock.settimeout(timeout)
        data, ancdata, flags, _ = self.sock.recvmsg(1 << 20, socket.CMSG_SPACE(4 * 4))
        assert not flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC)
        fds: list[int] = []
        for level, kind, payload in ancdata:
            if (level, kind) == (socket.SOL_SOCKET, socket.SCM_RIGHTS):
                fds.extend(array.array("i", payload[: len(payload) - len(payload) % 4]))
        return data, fds

    def entry(self, timeout: float = 5.0) -> dict[str, str]:
        """The next entry, its fields as text (each name once)."""
        data, fds = self.raw(timeout)
        if fds:
            [fd] = fds
            try:
                assert data == b"", "a memfd comes in an empty datagram"
                seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
                wanted = fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW
                assert seals & wanted == wanted, "journald takes sealed memfds"
                size = os.fstat(fd).st_size
                data = os.pread(fd, size, 0)
                self.memfds += 1
            finally:
                os.close(fd)
        fields = parse_entry(data)
        names = [name for name, _ in fields]
        assert len(names) == len(set(names)), f"a field sent twice: {names}"
        return {name: value.decode() for name, value in fields}

    def nothing_pending(self) -> bool:
        self.sock.setblocking(False)
        try:
            self.sock.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            return True
        return False

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def journal(sock_dir: str) -> Iterator[Journal]:
    receiver = Journal(os.path.join(sock_dir, "journal.socket"))
    try:
        yield receiver
    finally:
        receiver.close()


@pytest.fixture
def journal_logger(journal: Journal) -> Iterator[tuple[logging.Logger, JournalHandler]]:
    handler = JournalHandler(socket_path=journal.path, identifier="kvstore")
    target = logging.getLogger("journal-test")
    target.propagate = False
    target.setLevel(logging.DEBUG)
    target.addHandler(handler)
    try:
        yield target, handler
    finally:
        target.removeHandler(handler)
        handler.close()
        target.propagate = True
        target.setLevel(logging.NOTSET)


def test_encode_entry_is_the_native_protocol() -> None:
    assert encode_entry([("MESSAGE", "hello"), ("PRIORITY", "6")]) == b"MESSAGE=hello\nPRIORITY=6\n"
    two_lines = encode_entry([("MESSAGE", "a\nb"), ("X", b"\xff")])
    assert two_lines == b"MESSAGE\n" + (3).to_bytes(8, "little") + b"a\nb\n" + b"X=\xff\n"
    assert encode_entry([("EMPTY", "")]) == b"EMPTY=\n"
    assert encode_entry([("PATH", "/tmp/\udcff"), ("ODD", "\ud800")]) == b"PATH=/tmp/\xff\nODD=\\ud800\n"
    for bad in ("message", "_PID", "1ST", "", "A" * 65, "A-B"):
        with pytest.raises(ValueError, match="is not a journal field name"):
            encode_entry([(bad, "x")])


def test_record_attributes_become_field_names() -> None:
    assert field_name("unixrpc_method") == "UNIXRPC_METHOD"
    assert field_name("kv_key-name") == "KV_KEY_NAME"
    assert field_name("_private") is None
    assert field_name("9lives") is None
    assert field_name("x" * 100) == "X" * 64


def test_a_record_is_one_entry_with_its_fields(
    journal: Journal, journal_logger: tuple[logging.Logger, JournalHandler]
) -> None:
    target, _ = journal_logger
    fields = {
        "unixrpc_method": "kv.Get",
        "unixrpc_peer_pid": 4242,
        "unixrpc_peer_uid": 1000,
        "unixrpc_call_id": None,  # a notification has no id: left out
        "unixrpc_outcome": "ok",
        "other": "not a unixrpc_ attribute: not sent",
    }
    line = inspect.currentframe().f_lineno + 1  # type: ignore[union-attr]
    target.info("call %s from pid %d", "kv.Get", 4242, extra=fields)
    assert journal.entry() == {
        "MESSAGE": "journal-test: call kv.Get from pid 4242",
        "PRIORITY": "6",
        "SYSLOG_IDENTIFIER": "kvstore",
        "LOGGER": "journal-test",
        "THREAD_NAME": "MainThread",
        "CODE_FILE": __file__,
        "CODE_LINE": str(line),
        "CODE_FUNC": "test_a_record_is_one_entry_with_its_fields",
        "UNIXRPC_METHOD": "kv.Get",
        "UNIXRPC_PEER_PID": "4242",
        "UNIXRPC_PEER_UID": "1000",
        "UNIXRPC_OUTCOME": "ok",
    }
    target.debug("debug")
    target.log(25, "notice")
    target.critical("critical")
    assert [journal.entry()["PRIORITY"] for _ in range(3)] == ["7", "5", "2"]
    assert journal.nothing_pending()


def test_a_traceback_is_one_entry(
    journal: Journal, journal_logger: tuple[logging.Logger, JournalHandler]
) -> None:
    target, _ = journal_logger
    try:
        raise ZeroDivisionError("division by zero")
    except ZeroDivisionError:
        target.exception("handler of %s raised", "kv.Get", extra={"unixrpc_method": "kv.Get"})
    data, fds = journal.raw()
    assert not fds
    assert data.startswith(b"MESSAGE\n"), "a message with newlines takes the length-prefixed form"
    entry = {name: value.decode() for name, value in parse_entry(data)}
    lines = entry["MESSAGE"].split("\n")
    assert lines[0] == "journal-test: handler of kv.Get raised"
    assert lines[1] == "Traceback (most recent call last):"
    assert lines[-1] == "ZeroDivisionError: division by zero"
    assert (entry["PRIORITY"], entry["UNIXRPC_METHOD"]) == ("3", "kv.Get")
    assert journal.nothing_pending(), "the whole traceback is in that one entry"


def test_a_big_entry_goes_in_a_sealed_memfd(
    no_fd_leak: None, journal: Journal, journal_logger: tuple[logging.Logger, JournalHandler]
) -> None:
    target, _ = journal_logger
    big = "".join(f"line {n}: " + "x" * 100 + "\n" for n in range(40_000))  # about 4 MiB
    target.warning("%s", big)
    entry = journal.entry()
    assert journal.memfds == 1
    assert entry["MESSAGE"] == "journal-test: " + big
    assert entry["PRIORITY"] == "4"
    target.warning("small again")
    assert journal.entry()["MESSAGE"] == "journal-test: small again"
    assert journal.memfds == 1, "a datagram when it fits"


def test_records_go_to_stderr_while_the_journal_is_away(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "journal.socket")
    fallback = io.StringIO()
    handler = JournalHandler(socket_path=path, fallback=fallback)
    target = logging.getLogger("journal-away")
    target.propagate = False
    target.addHandler(handler)
    try:
        target.error("first\nsecond")
        target.warning("again")
        assert fallback.getvalue().splitlines() == [
            f"<4>unixrpc.daemon: cannot send to the journal at {path}: [Errno 2] No such file or "
            "directory; writing records to stderr until it works again",
            "<3>journal-away: first",
            "<3>second",
            "<4>journal-away: again",
        ]
        journal = Journal(path)
        try:
            target.warning("back")
            assert journal.entry()["MESSAGE"] == "journal-away: back"
        finally:
            journal.close()
        fallback.seek(0)
        fallback.truncate()
        target.warning("gone again")
        lines = fallback.getvalue().splitlines()
        assert lines[0].startswith("<4>unixrpc.daemon: cannot send to the journal at"), "said again"
        assert lines[1:] == ["<4>journal-away: gone again"]
    finally:
        target.removeHandler(handler)
        handler.close()
        target.propagate = True


def test_field_prefixes_are_checked_and_extend_the_fields(journal: Journal) -> None:
    for bad in ("", "_kv", "9x"):
        with pytest.raises(ValueError, match="cannot start journal field names"):
            JournalHandler(socket_path=journal.path, field_prefixes=("unixrpc_", bad))
    handler = JournalHandler(socket_path=journal.path, field_prefixes=("unixrpc_", "kv_"))
    try:
        record = logging.LogRecord("kv", logging.INFO, __file__, 7, "stored", None, None)
        record.kv_key = "greeting"
        record.unixrpc_outcome = "ok"
        handler.handle(record)
        entry = journal.entry()
        assert (entry["KV_KEY"], entry["UNIXRPC_OUTCOME"]) == ("greeting", "ok")
    finally:
        handler.close()


def test_install_uses_the_journal_under_journald(
    journal: Journal, tmp_path: os.PathLike[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("UNIXRPC_JOURNAL_SOCKET", journal.path)
    target = logging.getLogger("install-journal")
    target.propagate = False
    with open(os.path.join(tmp_path, "stderr"), "w") as stderr:
        st = os.fstat(stderr.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        try:
            handler = install_daemon_logging(logger=target, stream=stderr)
            assert isinstance(handler, JournalHandler)
            assert handler.fallback is stderr
            for n in range(20):
                target.warning("violation %d", n)
            assert [journal.entry()["MESSAGE"] for _ in range(10)] == [
                f"install-journal: violation {n}" for n in range(10)
            ]
            assert journal.nothing_pending(), "the rate limiter guards it too"
            monkeypatch.setenv("UNIXRPC_JOURNAL_SOCKET", os.path.join(tmp_path, "no-socket"))
            stream_handler = install_daemon_logging(logger=target, stream=stderr)
            assert not isinstance(stream_handler, JournalHandler), "no socket: the stream, with <N>"
            assert isinstance(stream_handler.formatter, JournalFormatter)
            assert target.handlers == [stream_handler]
        finally:
            for h in list(target.handlers):
                target.removeHandler(h)
            target.propagate = True
            target.setLevel(logging.NOTSET)


def test_a_daemon_under_journald_sends_entries_not_lines(
    journal: Journal, tmp_path: os.PathLike[str]
) -> None:
    path = os.path.join(tmp_path, "stderr")
    open(path, "w").close()
    run_child_with_stderr_in(path, journal_stream_of=path, journal_socket=journal.path)
    with open(path) as file:
        assert file.read() == "", "nothing on the stream"
    entries = [journal.entry() for _ in range(4)]
    assert journal.nothing_pending()
    assert [(e["PRIORITY"], e["MESSAGE"].split("\n")[0]) for e in entries] == [
        ("6", "unixrpc.server: serving on /run/kv.sock"),
        ("4", "unixrpc.server: protocol violation from pid 42"),
        ("3", "unixrpc.server: handler failed"),
        ("2", "kv: disk gone"),
    ]
    assert entries[2]["MESSAGE"].endswith("\nZeroDivisionError: division by zero")
    [identifier] = {e["SYSLOG_IDENTIFIER"] for e in entries}
    assert identifier.startswith("python"), "python -c: the process name"


class Add(Method[int]):
    a: int
    b: int


class Boom(Method[int]):
    pass


@pytest.mark.server
def test_a_servers_records_reach_the_journal_with_the_call_fields(
    journal: Journal, sock_dir: str, server_backend: str
) -> None:
    server = Server()

    @server.method(Add)
    def add(request: Add) -> int:
        return request.a + request.b

    @server.method(Boom)
    def boom(request: Boom) -> int:
        raise RuntimeError("kaboom")

    handler = JournalHandler(socket_path=journal.path)
    target = logging.getLogger("unixrpc.server")
    target.addHandler(handler)
    previous_level = target.level
    target.setLevel(logging.DEBUG)
    path = os.path.join(sock_dir, "kv.sock")
    try:
        with server.serve_in_thread(path, backend=server_backend), Client(path, timeout=10) as client:
            assert client.call(Add(a=1, b=2)) == 3
            with pytest.raises(InternalError):
                client.call(Boom())
    finally:
        target.removeHandler(handler)
        target.setLevel(previous_level)
        handler.close()
    entries = []
    while not journal.nothing_pending():
        entries.append(journal.entry())
    [added] = [e for e in entries if e.get("UNIXRPC_METHOD") == "Add" and e["PRIORITY"] == "7"]
    assert {name: added[name] for name in ("UNIXRPC_PEER_PID", "UNIXRPC_PEER_UID", "UNIXRPC_OUTCOME")} == {
        "UNIXRPC_PEER_PID": str(os.getpid()),
        "UNIXRPC_PEER_UID": str(os.getuid()),
        "UNIXRPC_OUTCOME": "ok",
    }
    assert added["UNIXRPC_CALL_ID"].isdigit()
    assert "UNIXRPC_DURATION_MS" in added
    assert added["LOGGER"] == "unixrpc.server"
    assert added["MESSAGE"].startswith("unixrpc.server: call Add id=")
    [raised] = [e for e in entries if e["PRIORITY"] == "3"]
    assert raised["MESSAGE"].startswith("unixrpc.server: handler of Boom raised")
    assert raised["MESSAGE"].endswith("\nRuntimeError: kaboom"), "the traceback in the same entry"
    assert any(e["MESSAGE"] == f"unixrpc.server: serving 2 methods on {path}" for e in entries)
