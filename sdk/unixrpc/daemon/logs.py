"""Logging for daemons: whole records in the journal, with their levels and
fields, and floods it never sees.

Owns three things:

* the choice of how records reach journald. Under systemd, stderr is a
  stream into journald (``JOURNAL_STREAM`` holds its ``device:inode``,
  systemd.exec(5)) that splits at newlines: a traceback would be one entry
  per line, and no field but the priority gets through. So, when stderr is
  that stream and the journal's socket exists, records go over the native
  protocol instead (:class:`~unixrpc.daemon.journal.JournalHandler`: one
  entry per record, with fields). Without the socket,
  :class:`JournalFormatter` writes each line of a record with ``<N>``
  (sd-daemon(3)), the record's syslog priority. No timestamp either way:
  journald stamps entries itself.
* :class:`RateLimitFilter`: at most ``burst`` records per ``interval``
  seconds per key (by default: logger, level and message template, so one
  warning raised by many peers is one key), then one ``suppressed K
  messages`` line when the window is over; memory is bounded.
* :func:`install_daemon_logging`: the default handler for a daemon, chosen
  as above, guarded by a rate limiter.

The module is called ``logs`` so that it does not shadow the stdlib's
``logging``. Imports only the stdlib.
"""

from __future__ import annotations

import logging
import os
import stat
import sys
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Final, Literal, TextIO

from .journal import MESSAGE_FORMAT, JournalHandler, journal_socket_path, prefix_lines, syslog_priority

__all__ = [
    "JournalFormatter",
    "RateLimitFilter",
    "install_daemon_logging",
    "journal_socket_exists",
    "stream_is_journal",
    "syslog_priority",
]

#: what a daemon's lines look like outside journald
PLAIN_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: and inside (journald adds the time, the unit and the pid)
JOURNAL_FORMAT: Final = MESSAGE_FORMAT

_INSTALLED: Final = "_unixrpc_daemon_handler"
_SUMMARY: Final = "_unixrpc_ratelimit_summary"


def stream_is_journal(stream: TextIO | int | None = None) -> bool:
    """True if *stream* (default ``sys.stderr``; a file object or an fd) is the
    journal stream systemd set up: ``JOURNAL_STREAM`` is set and names its
    device and inode. A stream redirected elsewhere (``2>file``) or inherited
    by a child whose stderr differs is not. Never raises."""
    value = os.environ.get("JOURNAL_STREAM")
    if not value:
        return False
    device, colon, inode = value.partition(":")
    try:
        expected = (int(device), int(inode)) if colon else None
        target = sys.stderr if stream is None else stream
        fd = target if isinstance(target, int) else target.fileno()
        st = os.fstat(fd)
    except (ValueError, OSError, AttributeError):
        return False
    return expected == (st.st_dev, st.st_ino)


def journal_socket_exists(path: str | None = None) -> bool:
    """True if *path* (default :func:`~unixrpc.daemon.journal.journal_socket_path`:
    ``/run/systemd/journal/socket``, or ``$UNIXRPC_JOURNAL_SOCKET`` in tests)
    is a socket, so the native journal protocol can be used. Never raises."""
    try:
        return stat.S_ISSOCK(os.stat(path if path is not None else journal_socket_path()).st_mode)
    except (OSError, ValueError):
        return False


class JournalFormatter(logging.Formatter):
    """Formats records for journald's stream protocol: every line, the
    traceback's included, starts with ``<N>``, the record's syslog priority.

    Takes the arguments of :class:`logging.Formatter`; the default format is
    ``"%(name)s: %(message)s"`` (no timestamp: journald adds it).
    """

    def __init__(
        self,
        fmt: str | None = JOURNAL_FORMAT,
        datefmt: str | None = None,
        style: Literal["%", "{", "$"] = "%",
        validate: bool = True,
    ) -> None:
        super().__init__(fmt, datefmt, style, validate)

    def format(self, record: logging.LogRecord) -> str:
        return prefix_lines(super().format(record), syslog_priority(record.levelno))


@dataclass
class _Window:
    start: float
    passed: int
    suppressed: int
    name: str  # logger and level of the records suppressed, for the summary
    levelno: int
    sample: str


class RateLimitFilter(logging.Filter):
    """Let at most *burst* records per key through in any *interval* seconds;
    count the rest and say so once: ``suppressed K messages like '...'``.

    Records below *level* always pass. A record's key is its
    ``ratelimit_key`` attribute when set (``logger.warning(...,
    extra={"ratelimit_key": ("violation", uid)})``), else its logger name,
    level and message template (``record.msg``, before ``%`` formatting: a
    message logged for every peer is one key). The summary is logged, through
    the logger of the suppressed records, at their level, when the next record
    arrives after the window is over (of any key: a flood that stops is
    reported too), or by :meth:`flush`. At most *max_keys* keys are tracked;
    the oldest window is reported and dropped first.

    Attach it to a handler (``handler.addFilter``): a logger's filters do not
    see records propagated from its children.

    Raises:
        ValueError: *burst* < 1, *interval* <= 0 or *max_keys* < 1.
    """

    def __init__(
        self,
        burst: int = 10,
        interval: float = 30.0,
        *,
        level: int = logging.WARNING,
        max_keys: int = 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if burst < 1 or interval <= 0 or max_keys < 1:
            raise ValueError(
                f"burst and max_keys must be at least 1 and interval positive, got "
                f"burst={burst}, interval={interval}, max_keys={max_keys}"
            )
        super().__init__()
        self.burst = burst
        self.interval = interval
        self.level = level
        self.max_keys = max_keys
        self._clock = clock
        self._windows: dict[Hashable, _Window] = {}
        self._lock = threading.Lock()
        self._next_sweep = 0.0

    def filter(self, record: logging.LogRecord) -> bool:
        """True to let *record* through (and log summaries of ended windows)."""
        if getattr(record, _SUMMARY, False):
            return True
        ended: list[_Window] = []
        now = self._clock()
        if now >= self._next_sweep:  # report floods that stopped, at most once a second
            with self._lock:
                self._next_sweep = now + min(1.0, self.interval)
                ended = self._take_ended(now)
        if record.levelno < self.level:
            self._report(ended)
            return True
        key: Hashable = getattr(record, "ratelimit_key", None) or (
            record.name,
            record.levelno,
            str(record.msg),
        )
        with self._lock:
            window = self._windows.get(key)
            if window is not None and now - window.start >= self.interval:
                if window.suppressed:
                    ended.append(window)
                del self._windows[key]
                window = None
            if window is None:
                if len(self._windows) >= self.max_keys:
                    ended.extend(self._take_ended(now))
                    if len(self._windows) >= self.max_keys:
                        oldest = next(iter(self._windows))
                        ended.append(self._windows.pop(oldest))
                self._windows[key] = _Window(now, 1, 0, record.name, record.levelno, str(record.msg))
                allowed = True
            elif window.passed < self.burst:
                window.passed += 1
                allowed = True
            else:
                window.suppressed += 1
                allowed = False
        self._report(ended)
        return allowed

    def flush(self) -> None:
        """Log the summary of every window that suppressed something, ended or
        not (for example at shutdown), and start afresh."""
        with self._lock:
            windows = list(self._windows.values())
            self._windows.clear()
        self._report(windows)

    def _take_ended(self, now: float) -> list[_Window]:
        ended = [key for key, w in self._windows.items() if now - w.start >= self.interval]
        return [w for w in (self._windows.pop(key) for key in ended) if w.suppressed]

    def _report(self, windows: list[_Window]) -> None:
        for window in windows:
            if not window.suppressed:
                continue
            target = logging.getLogger(window.name)
            summary = target.makeRecord(
                window.name,
                window.levelno,
                __file__,
                0,
                "suppressed %d messages like %r (more than %d in %gs)",
                (window.suppressed, window.sample, self.burst, self.interval),
                None,
                extra={_SUMMARY: True},
            )
            target.handle(summary)


def install_daemon_logging(
    level: int = logging.INFO,
    *,
    logger: logging.Logger | str | None = None,
    stream: TextIO | None = None,
    journal: bool | None = None,
    rate_limit: RateLimitFilter | None = None,
) -> logging.Handler:
    """Install the default handler for a daemon and return it.

    The handler is added to *logger* (default the root logger, so the
    daemon's own records go the same way), whose level is set to *level*.
    Which handler:

    * under journald (*journal* None: *stream*, default ``sys.stderr``, is
      the journal stream, :func:`stream_is_journal`; *journal* True: assume
      it is) and the journal's socket exists (:func:`journal_socket_exists`):
      a :class:`~unixrpc.daemon.journal.JournalHandler`, one entry per
      record, traceback included, with fields (``PRIORITY``, ``CODE_*``,
      ``LOGGER``, ``UNIXRPC_*`` from the record's ``unixrpc_*`` attributes);
      it falls back to *stream* with ``<N>`` prefixes when sending fails;
    * under journald without the socket: a :class:`logging.StreamHandler` on
      *stream* with :class:`JournalFormatter` (each line ``<N>``-prefixed);
    * elsewhere (or *journal* False): a :class:`logging.StreamHandler` on
      *stream*, ``time LEVEL logger: message``.

    A :class:`RateLimitFilter` (default: 10 per 30 s per key, WARNING and
    above) guards the handler. Calling it again replaces the handler it
    installed before on that logger.

    Raises:
        TypeError: *logger* is not a logger or a logger name.
    """
    if logger is None or isinstance(logger, str):
        target = logging.getLogger(logger)
    elif isinstance(logger, logging.Logger):
        target = logger
    else:
        raise TypeError(f"logger must be a logging.Logger or a name, got {logger!r}")
    out = sys.stderr if stream is None else stream
    under_journal = stream_is_journal(out) if journal is None else journal
    handler: logging.Handler
    if under_journal and journal_socket_exists():
        handler = JournalHandler(fallback=stream)
    else:
        handler = logging.StreamHandler(out)
        handler.setFormatter(JournalFormatter() if under_journal else logging.Formatter(PLAIN_FORMAT))
    handler.addFilter(rate_limit if rate_limit is not None else RateLimitFilter())
    setattr(handler, _INSTALLED, True)
    for previous in [h for h in target.handlers if getattr(h, _INSTALLED, False)]:
        target.removeHandler(previous)
        previous.close()
    target.addHandler(handler)
    target.setLevel(level)
    return handler
