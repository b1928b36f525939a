"""sd_notify: telling the service manager what the daemon is doing.

Owns the notification protocol of sd_notify(3): one ``AF_UNIX``
``SOCK_DGRAM`` datagram per notification, sent to the socket named by
``NOTIFY_SOCKET`` (an absolute path, or ``@name`` for the abstract
namespace), holding newline-separated ``NAME=value`` assignments:
``READY=1``, ``STATUS=...``, ``STOPPING=1``, ``RELOADING=1`` with
``MONOTONIC_USEC=`` (``Type=notify-reload`` in systemd.service(5)),
``WATCHDOG=1``, ``EXTEND_TIMEOUT_USEC=``, ``FDSTORE=1`` with descriptors...
With ``NOTIFY_SOCKET`` unset (not under systemd, or ``Type=simple``) every
call is a no-op returning False.

Also owns the watchdog arithmetic: ``WATCHDOG_USEC`` is the timeout systemd
applies (``WatchdogSec=``); pinging at half of it, as sd_watchdog_enabled(3)
recommends, and only when ``WATCHDOG_PID`` is unset or names this process.

Sending never blocks for long (a one-second send timeout) and errors are
logged on ``unixrpc.daemon``, never raised into the daemon: a service manager
that went away must not take the daemon with it. Imports only the stdlib.
"""

from __future__ import annotations

import array
import logging
import os
import re
import socket
import time
from collections.abc import Mapping, Sequence
from typing import Final

__all__ = ["Notifier", "notify"]

logger = logging.getLogger("unixrpc.daemon")

_NAME: Final = re.compile(r"[A-Z_][A-Z0-9_]*\Z")
_SEND_TIMEOUT: Final = 1.0


def _address(notify_socket: str) -> str | bytes:
    """The address to send to, from the value of ``NOTIFY_SOCKET``.

    Raises:
        ValueError: neither an absolute path nor ``@name``.
    """
    if notify_socket.startswith("@"):
        return b"\0" + notify_socket[1:].encode("utf-8", "surrogateescape")
    if notify_socket.startswith("/"):
        return notify_socket
    raise ValueError(
        f"NOTIFY_SOCKET={notify_socket!r} is neither an absolute path nor an @abstract name "
        "(other kinds, such as vsock:, are not supported)"
    )


def _format_field(name: str, value: str | int | bool) -> str:
    key = name.upper()
    if not _NAME.match(key):
        raise ValueError(f"{name!r} is not a notification field name")
    if value is True:
        text = "1"
    elif value is False:
        raise ValueError(f"{name}=False is not a state: leave it out")
    else:
        text = str(value)
    if "\n" in text:
        raise ValueError(f"the value of {key} contains a newline")
    return f"{key}={text}"


def _message(states: Sequence[str], fields: Mapping[str, str | int | bool]) -> bytes:
    """The datagram for *states* (``"NAME=value"``) and *fields* (``name=value``).

    Raises:
        ValueError: nothing to send, a state that is not ``NAME=value``, or a
            value with a newline in it.
    """
    lines: list[str] = []
    for state in states:
        name, equals, value = state.partition("=")
        if not equals or not _NAME.match(name):
            raise ValueError(f"{state!r} is not a NAME=value assignment (for example 'READY=1')")
        if "\n" in value:
            raise ValueError(f"{state!r} contains a newline; send several states instead")
        lines.append(state)
    lines.extend(_format_field(name, value) for name, value in fields.items())
    if not lines:
        raise ValueError("nothing to notify: give states such as 'READY=1' or fields such as ready=True")
    return "\n".join(lines).encode("utf-8", "surrogateescape")


def _send(notify_socket: str, message: bytes, fds: Sequence[int]) -> None:
    """Send one datagram to *notify_socket*.

    Raises:
        OSError: the socket cannot be reached (ENOENT, ECONNREFUSED, EAGAIN
            after the timeout, ...).
        ValueError: *notify_socket* is not a usable address.
    """
    address = _address(notify_socket)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.settimeout(_SEND_TIMEOUT)
        ancillary = []
        if fds:
            ancillary.append((socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes()))
        sock.sendmsg([message], ancillary, socket.MSG_NOSIGNAL, address)


def notify(*states: str, fds: Sequence[int] = (), **fields: str | int | bool) -> bool:
    """Send a notification to the service manager (sd_notify(3)).

    States are given as ``NAME=value`` strings, fields as keyword arguments
    (the name upper-cased, ``True`` written ``1``), or both; they go in one
    datagram, in that order::

        notify("READY=1")
        notify(ready=True, status="serving 3 methods")
        notify("FDSTORE=1", fdname="cache", fds=[fd])   # descriptors travel with SCM_RIGHTS

    ``NOTIFY_SOCKET`` is read at each call. Servers need not call this: the
    server sends READY, STATUS, STOPPING and WATCHDOG itself.

    Returns:
        True if the datagram was sent; False when ``NOTIFY_SOCKET`` is unset
        (not under a service manager) or sending failed (logged at WARNING on
        the ``unixrpc.daemon`` logger, never raised).

    Raises:
        ValueError: nothing to send, a state that is not ``NAME=value``, a
            field set to False, or a value containing a newline (it would be
            read as another assignment).
    """
    message = _message(states, fields)
    notify_socket = os.environ.get("NOTIFY_SOCKET")
    if not notify_socket:
        return False
    try:
        _send(notify_socket, message, fds)
    except (OSError, ValueError) as exc:
        logger.warning("cannot notify the service manager at %s: %s", notify_socket, exc)
        return False
    return True


def _clean(text: str) -> str:
    return " ".join(text.splitlines())


class Notifier:
    """What the server tells the service manager, read from the environment once.

    ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID`` are taken from
    *environ* (default ``os.environ``) when the notifier is made. Every method
    returns True if a datagram was sent, False if notification is disabled or
    sending failed; failures are logged (the first at WARNING, repeats at
    DEBUG until a send succeeds again) and never raised. Safe from any thread.

    Args:
        environ: where to read the variables (default ``os.environ``).
        unset_environment: remove ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and
            ``WATCHDOG_PID`` from ``os.environ`` after reading them, so child
            processes do not notify in the daemon's name (the notifier keeps
            working; the module-level :func:`notify` then stops).
    """

    def __init__(self, environ: Mapping[str, str] | None = None, *, unset_environment: bool = False) -> None:
        env = os.environ if environ is None else environ
        self.socket_path: str | None = env.get("NOTIFY_SOCKET") or None
        self._watchdog_usec = env.get("WATCHDOG_USEC")
        self._watchdog_pid = env.get("WATCHDOG_PID")
        self._failing = False
        if unset_environment:
            for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
                os.environ.pop(name, None)

    @property
    def enabled(self) -> bool:
        """True when there is a service manager to notify (``NOTIFY_SOCKET`` set)."""
        return self.socket_path is not None

    def __repr__(self) -> str:
        return f"<Notifier {self.socket_path or 'disabled'} watchdog={self.watchdog_interval()}>"

    def send(self, *states: str, fds: Sequence[int] = (), **fields: str | int | bool) -> bool:
        """Send *states* and *fields* in one datagram, as :func:`notify` does.

        Raises:
            ValueError: malformed states or fields (as for :func:`notify`).
        """
        message = _message(states, fields)
        if self.socket_path is None:
            return False
        try:
            _send(self.socket_path, message, fds)
        except (OSError, ValueError) as exc:
            level = logging.DEBUG if self._failing else logging.WARNING
            self._failing = True
            logger.log(level, "cannot notify the service manager at %s: %s", self.socket_path, exc)
            return False
        if self._failing:
            self._failing = False
            logger.info("notifying the service manager at %s works again", self.socket_path)
        return True

    def ready(self, status: str | None = None) -> bool:
        """``READY=1`` (start-up or a reload is complete), with an optional ``STATUS=``."""
        return self._with_status(["READY=1"], status)

    def status(self, text: str) -> bool:
        """``STATUS=text``: one line for ``systemctl status`` (newlines become spaces)."""
        return self.send(f"STATUS={_clean(text)}")

    def stopping(self, status: str | None = None) -> bool:
        """``STOPPING=1``: shutdown has started."""
        return self._with_status(["STOPPING=1"], status)

    def reloading(self, status: str | None = None) -> bool:
        """``RELOADING=1`` with ``MONOTONIC_USEC=`` (now, CLOCK_MONOTONIC, in µs),
        as ``Type=notify-reload`` requires; send :meth:`ready` when the reload is done."""
        now = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self._with_status(["RELOADING=1", f"MONOTONIC_USEC={now}"], status)

    def watchdog(self) -> bool:
        """``WATCHDOG=1``: the keep-alive ping (send every :meth:`watchdog_interval`)."""
        return self.send("WATCHDOG=1")

    def extend_timeout(self, seconds: float) -> bool:
        """``EXTEND_TIMEOUT_USEC=``: ask for *seconds* more to finish starting,
        reloading or stopping."""
        return self.send(f"EXTEND_TIMEOUT_USEC={max(0, round(seconds * 1_000_000))}")

    def watchdog_interval(self) -> float | None:
        """Seconds between watchdog pings (half of ``WATCHDOG_USEC``), or None
        when no ping is wanted: notification disabled, ``WATCHDOG_USEC`` unset,
        zero or malformed, or ``WATCHDOG_PID`` set to another process."""
        if self.socket_path is None or not self._watchdog_usec:
            return None
        if self._watchdog_pid:
            try:
                if int(self._watchdog_pid) != os.getpid():
                    return None
            except ValueError:
                return None
        try:
            usec = int(self._watchdog_usec)
        except ValueError:
            return None
        if usec <= 0:
            return None
        return usec / 2 / 1_000_000

    def _with_status(self, states: list[str], status: str | None) -> bool:
        if status is not None:
            states.append(f"STATUS={_clean(status)}")
        return self.send(*states)
