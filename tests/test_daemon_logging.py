"""Daemon logging: syslog priority prefixes when stderr is the journal stream
(a child process whose stderr is a real file that JOURNAL_STREAM names), the
rate limiter (a fake clock, real loggers and handlers), and the installer."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest

from unixrpc.daemon import JournalFormatter, RateLimitFilter, install_daemon_logging, stream_is_journal
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


def run_child_with_stderr_in(path: str, journal_stream_of: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
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
