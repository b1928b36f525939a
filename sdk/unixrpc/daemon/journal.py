"""The journal's native protocol: one log record, one journal entry, with fields.

Owns systemd's native journal protocol (the "Native Journal Protocol"
document, systemd.journal-fields(7)): an entry is one ``AF_UNIX``
``SOCK_DGRAM`` datagram to ``/run/systemd/journal/socket`` holding fields,
each ``NAME=value\\n``, or, for a value with a newline in it, ``NAME\\n``,
the value's length as 64-bit little-endian, the value and ``\\n``. An entry
too big for a datagram (``EMSGSIZE``) is written to a sealed memfd, passed
with ``SCM_RIGHTS`` in an empty datagram.

Why: under systemd, stderr is a stream that journald splits at newlines, so
a traceback becomes one entry per line and no field but the priority gets
through. :class:`JournalHandler` sends each record as one entry (traceback
included) with its priority, its source, its logger and the structured
fields the record carries (attributes ``unixrpc_*`` become ``UNIXRPC_*``).
When the journal cannot be reached it writes the record to stderr with
``<N>`` priority prefixes instead, so nothing is lost.

Also owns the syslog priority of a ``logging`` level, which both ways of
reaching the journal use. Imports only the stdlib.
"""

from __future__ import annotations

import array
import errno
import fcntl
import logging
import os
import re
import socket
import struct
import sys
from collections.abc import Iterable, Sequence
from typing import Final, TextIO

__all__ = [
    "DEFAULT_SOCKET",
    "JournalHandler",
    "encode_entry",
    "journal_socket_path",
    "prefix_lines",
    "syslog_priority",
]

#: where journald listens for native entries (systemd-journald.service(8))
DEFAULT_SOCKET: Final = "/run/systemd/journal/socket"
#: test hook: when set, the journal socket to use instead of DEFAULT_SOCKET
SOCKET_ENV: Final = "UNIXRPC_JOURNAL_SOCKET"
#: what MESSAGE holds (the traceback follows it; journald adds time, unit and pid)
MESSAGE_FORMAT: Final = "%(name)s: %(message)s"
#: record attributes with these prefixes are sent as fields (upper-cased)
FIELD_PREFIXES: Final = ("unixrpc_",)

#: syslog priorities (sd-daemon(3): SD_EMERG "<0>" ... SD_DEBUG "<7>").
LOG_CRIT: Final = 2
LOG_ERR: Final = 3
LOG_WARNING: Final = 4
LOG_NOTICE: Final = 5
LOG_INFO: Final = 6
LOG_DEBUG: Final = 7

_SEND_TIMEOUT: Final = 1.0
_FIELD_NAME: Final = re.compile(r"[A-Z][A-Z0-9_]{0,63}\Z")
_NOT_NAME: Final = re.compile(r"[^A-Z0-9_]")
_SEALS: Final = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL


def syslog_priority(levelno: int) -> int:
    """The syslog priority for a ``logging`` level: CRITICAL 2, ERROR 3,
    WARNING 4, INFO 6, DEBUG 7; levels in between take the next more severe
    (a custom level 25 between INFO and WARNING is NOTICE, 5). Never raises."""
    if levelno >= logging.CRITICAL:
        return LOG_CRIT
    if levelno >= logging.ERROR:
        return LOG_ERR
    if levelno >= logging.WARNING:
        return LOG_WARNING
    if levelno > logging.INFO:
        return LOG_NOTICE
    if levelno >= logging.INFO:
        return LOG_INFO
    return LOG_DEBUG


def prefix_lines(text: str, priority: int) -> str:
    """*text* with ``<priority>`` at the start of every line: journald's
    stream protocol (sd-daemon(3)) stores each line at that priority."""
    prefix = f"<{priority}>"
    return "\n".join(prefix + line for line in text.split("\n"))


def journal_socket_path() -> str:
    """The journal's socket: ``$UNIXRPC_JOURNAL_SOCKET`` when set (a hook for
    tests, which bind a datagram socket of their own), else
    ``/run/systemd/journal/socket``."""
    return os.environ.get(SOCKET_ENV) or DEFAULT_SOCKET


def field_name(name: str) -> str | None:
    """*name* as a journal field name (upper case, ``A-Z0-9_``, other
    characters as ``_``, at most 64, starting with a letter), or None when it
    cannot be one (it would start with ``_``, which journald reserves for the
    fields it sets itself, or a digit)."""
    candidate = _NOT_NAME.sub("_", name.upper())[:64]
    return candidate if _FIELD_NAME.match(candidate) else None


def encode_entry(fields: Iterable[tuple[str, str | bytes]]) -> bytes:
    """One entry of the native protocol from (name, value) pairs, in order.

    Text is encoded as UTF-8 (bytes that ``surrogateescape`` decoding kept
    are sent as they were, other lone surrogates as ``\\udXXX``); a value
    with a newline takes the length-prefixed form.

    Raises:
        ValueError: a name that is not a journal field name (upper case
            letters, digits and ``_``, starting with a letter, at most 64).
    """
    out = bytearray()
    for name, value in fields:
        if not _FIELD_NAME.match(name):
            raise ValueError(
                f"{name!r} is not a journal field name (A-Z, 0-9 and _, starting with a letter, at most 64)"
            )
        data = _utf8(value) if isinstance(value, str) else value
        key = name.encode("ascii")
        if b"\n" in data:
            out += key + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
        else:
            out += key + b"=" + data + b"\n"
    return bytes(out)


def _utf8(text: str) -> bytes:
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace")


def default_identifier() -> str:
    """``SYSLOG_IDENTIFIER`` when none is given: the program's file name
    (``kvstore.py``; the package for ``python -m kvstore``), else the process
    name (``/proc/self/comm``). Never raises."""
    argv0 = sys.argv[0] if sys.argv else ""
    name = os.path.basename(argv0)
    if name == "__main__.py":
        name = os.path.basename(os.path.dirname(argv0))
    if name and name not in ("-c", "-m"):
        return name
    try:
        with open("/proc/self/comm") as comm:
            return comm.read().strip() or "python"
    except OSError:
        return "python"


class JournalHandler(logging.Handler):
    """Sends each record to journald as one entry, over the native protocol.

    The fields of an entry, in order: ``MESSAGE`` (the formatted record,
    ``logger: message``, with its traceback: one entry, however many lines),
    ``PRIORITY`` (:func:`syslog_priority`), ``SYSLOG_IDENTIFIER``,
    ``LOGGER``, ``THREAD_NAME``, ``CODE_FILE``, ``CODE_LINE``, ``CODE_FUNC``,
    then every record attribute whose name starts with one of
    *field_prefixes* (``extra={"unixrpc_method": "kv.Get"}`` is sent as
    ``UNIXRPC_METHOD=kv.Get``; None values are left out, others sent as
    ``str()``). An entry too big for one datagram goes in a sealed memfd.

    When sending fails (journald stopped, its queue full for a second, the
    socket gone) the record is written to *fallback* (default: ``sys.stderr``
    at that moment) with ``<N>`` priority prefixes, and the first failure of
    a run says so there, once.

    Args:
        level: the handler's level.
        socket_path: the journal's socket (default
            :func:`journal_socket_path`, read now).
        identifier: ``SYSLOG_IDENTIFIER`` (default :func:`default_identifier`;
            give the unit's ``SyslogIdentifier=`` to match it).
        field_prefixes: record attributes sent as fields (default
            ``("unixrpc_",)``; add your own, e.g. ``("unixrpc_", "kv_")``).
        fallback: where records go when the journal cannot be reached.

    Raises:
        ValueError: a prefix that would not make field names (empty, or
            starting with ``_`` or a digit).
    """

    def __init__(
        self,
        level: int = logging.NOTSET,
        *,
        socket_path: str | None = None,
        identifier: str | None = None,
        field_prefixes: Sequence[str] = FIELD_PREFIXES,
        fallback: TextIO | None = None,
    ) -> None:
        for prefix in field_prefixes:
            if not prefix or field_name(prefix + "X") is None:
                raise ValueError(
                    f"field prefix {prefix!r} cannot start journal field names: "
                    "use letters, digits and _, starting with a letter"
                )
        super().__init__(level)
        self.socket_path = socket_path if socket_path is not None else journal_socket_path()
        self.identifier = identifier if identifier is not None else default_identifier()
        self.field_prefixes = tuple(field_prefixes)
        self.fallback = fallback
        self._socket: socket.socket | None = None
        self._failing = False
        self.setFormatter(logging.Formatter(MESSAGE_FORMAT))

    def __repr__(self) -> str:
        return f"<JournalHandler {self.socket_path} ({logging.getLevelName(self.level)})>"

    def fields(self, record: logging.LogRecord, message: str) -> list[tuple[str, str]]:
        """The fields of *record*'s entry, *message* being its formatted text."""
        fields = [
            ("MESSAGE", message),
            ("PRIORITY", str(syslog_priority(record.levelno))),
            ("SYSLOG_IDENTIFIER", self.identifier),
            ("LOGGER", record.name),
        ]
        if record.threadName:
            fields.append(("THREAD_NAME", record.threadName))
        fields += [("CODE_FILE", record.pathname), ("CODE_LINE", str(record.lineno))]
        if record.funcName:
            fields.append(("CODE_FUNC", record.funcName))
        for attribute, value in vars(record).items():
            if value is None or not attribute.startswith(self.field_prefixes):
                continue
            name = field_name(attribute)
            if name is not None:
                fields.append((name, value if isinstance(value, str) else str(value)))
        return fields

    def emit(self, record: logging.LogRecord) -> None:
        """Send *record* (never raises: a record that cannot be formatted goes
        to :meth:`logging.Handler.handleError`, as with every handler)."""
        try:
            message = self.format(record)
            entry = encode_entry(self.fields(record, message))
        except Exception:
            self.handleError(record)
            return
        try:
            self._send(entry)
        except OSError as exc:
            self._fall_back(record.levelno, message, exc)
            return
        self._failing = False

    def close(self) -> None:
        """Close the handler's socket (a record sent later opens another)."""
        self.acquire()
        try:
            if self._socket is not None:
                self._socket.close()
                self._socket = None
        finally:
            self.release()
        super().close()

    def _send(self, entry: bytes) -> None:
        sock = self._socket
        if sock is None:
            sock = self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sock.settimeout(_SEND_TIMEOUT)  # a stalled journald must not hold the daemon
        try:
            sock.sendto(entry, self.socket_path)
        except OSError as exc:
            if exc.errno not in (errno.EMSGSIZE, errno.ENOBUFS):
                raise
            self._send_in_memfd(sock, entry)

    def _send_in_memfd(self, sock: socket.socket, entry: bytes) -> None:
        fd = os.memfd_create("journal-entry", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            view = memoryview(entry)
            while view:
                view = view[os.write(fd, view) :]
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)  # journald takes sealed memfds
            rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]).tobytes())]
            sock.sendmsg([], rights, 0, self.socket_path)
        finally:
            os.close(fd)

    def _fall_back(self, levelno: int, message: str, error: OSError) -> None:
        stream = self.fallback if self.fallback is not None else sys.stderr
        lines = []
        if not self._failing:
            self._failing = True
            note = (
                f"unixrpc.daemon: cannot send to the journal at {self.socket_path}: {error}; "
                "writing records to stderr until it works again"
            )
            lines.append(prefix_lines(note, LOG_WARNING))
        lines.append(prefix_lines(message, syslog_priority(levelno)))
        try:
            stream.write("\n".join(lines) + "\n")
            stream.flush()
        except (OSError, ValueError):  # stderr closed too: nowhere left to write
            pass
