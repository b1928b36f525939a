"""What a serving engine tells systemd and when it stops by itself.

Owns the daemon-side timing rules both engines follow (sd_notify(3),
systemd.service(5)):

* ``READY=1`` once every listener accepts, with ``STATUS=serving N methods
  on ADDRESS`` (N counted as the "serving" log line counts them:
  :func:`served_method_count`); ``STOPPING=1`` when a shutdown starts;
* ``WATCHDOG=1`` every half ``WATCHDOG_USEC``, sent from the engine's
  serving loop itself (the event loop, or the accepting thread), so a
  wedged server stops pinging and systemd restarts it;
* a reload (SIGHUP with an ``on_reload`` hook, or :meth:`Lifecycle.request_reload`):
  ``RELOADING=1`` + ``MONOTONIC_USEC=`` (``STATUS=reloading``), the hook,
  then ``READY=1`` with the serving status again (``Type=notify-reload``),
  which says so when the hook raised, until a reload succeeds;
* idle exit: with ``idle_timeout``, a server with no connection for that
  long shuts down (socket activation starts it again on the next connect).

Engines call :meth:`Lifecycle.tick` from their loop and sleep at most what
it returns. No sockets here beyond the notifier's datagrams.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from ..address import UnixSocketAddress
from ..daemon.notify import Notifier

if TYPE_CHECKING:
    from .server import Server

__all__ = ["Lifecycle", "served_method_count", "serving_status"]

logger = logging.getLogger("unixrpc.server")


def served_method_count(server: Server) -> int:
    """How many methods *server* serves, as the log and ``STATUS=`` say it:
    the daemon's own, without the library's ``unixrpc.*`` ones."""
    return sum(1 for name in server.methods if not name.startswith("unixrpc."))


def serving_status(server: Server, addresses: Sequence[UnixSocketAddress]) -> str:
    """``serving N methods on ADDRESS, ...``: the "serving" log line's text
    and the ``STATUS=`` of a server that is up."""
    where = ", ".join(str(address) for address in addresses)
    return f"serving {served_method_count(server)} methods on {where}"


class Lifecycle:
    """The notify, watchdog, reload and idle state of one serving run."""

    def __init__(self, server: Server, wake: Callable[[], object]) -> None:
        self._server = server
        self._wake = wake  # wakes the engine's loop (thread-safe)
        self.notifier = Notifier()
        self._watchdog = self.notifier.watchdog_interval()
        self._next_ping = 0.0
        self._idle_since: float | None = None
        self._stopping_sent = False
        self._addresses: list[UnixSocketAddress] = []
        self._reloading = False
        self._reload_failed = False
        self.reload_requested = False

    def status(self) -> str:
        """What ``STATUS=`` says while serving: ``serving N methods on
        ADDRESS``, plus ``(the last reload failed: see the log)`` after a
        reload whose hook raised, until one succeeds."""
        text = serving_status(self._server, self._addresses)
        return text + " (the last reload failed: see the log)" if self._reload_failed else text

    def started(self, addresses: Sequence[UnixSocketAddress]) -> None:
        """Every listener accepts: tell systemd we are ready."""
        self._addresses = list(addresses)
        self.notifier.ready(self.status())
        self._idle_since = time.monotonic()

    def stopping(self) -> None:
        """A shutdown started (sent once)."""
        if not self._stopping_sent:
            self._stopping_sent = True
            self.notifier.stopping("shutting down")

    def request_reload(self) -> None:
        """Ask for a reload (thread-safe; from a signal handler too)."""
        self.reload_requested = True
        self._wake()

    def reload(self) -> Any:
        """Run the reload hook, after ``RELOADING=1`` (what the hook returns:
        an awaitable for the engine to await, or None); the engine then calls
        :meth:`reloaded`. A hook that raises, or whose awaitable raises, is
        logged and marks the reload failed; the server goes on."""
        self.reload_requested = False
        hook = self._server.on_reload
        if hook is None:
            return None
        self._reloading = True
        self._reload_failed = False
        self.notifier.reloading("reloading")
        logger.info("reloading")
        try:
            pending = hook()
        except Exception:
            logger.exception("the on_reload hook raised")
            self._reload_failed = True
            return None
        if inspect.isawaitable(pending):
            return self._awaiting(pending)
        return pending

    async def _awaiting(self, pending: Awaitable[object]) -> None:
        try:
            await pending
        except Exception:
            logger.exception("the on_reload hook raised")
            self._reload_failed = True

    def reloaded(self) -> None:
        """The reload is over: ``READY=1`` with the serving status again
        (nothing when no reload was started: no hook)."""
        if self._reloading:
            self._reloading = False
            self.notifier.ready(self.status())

    def tick(self, connections: int) -> float | None:
        """Ping the watchdog when due, and shut down after ``idle_timeout``
        with no connection: how long the engine may sleep before the next
        tick (None: nothing is due; 0 while a reload is pending, so that an
        engine which consumed the wake-up of a reload asked for after it
        last looked does not sleep on it)."""
        now = time.monotonic()
        waits: list[float] = []
        if self._watchdog is not None:
            if now >= self._next_ping:
                self.notifier.watchdog()
                self._next_ping = now + self._watchdog
            waits.append(self._next_ping - now)
        idle_timeout = self._server.idle_timeout
        if idle_timeout is not None and not self._server.is_shutting_down():
            if connections:
                self._idle_since = None
                waits.append(idle_timeout)
            else:
                since = self._idle_since = self._idle_since if self._idle_since is not None else now
                if now - since >= idle_timeout:
                    logger.info("idle for %ss with no connection: stopping", idle_timeout)
                    self._server.shutdown()
                else:
                    waits.append(since + idle_timeout - now)
        if self.reload_requested:
            return 0.0
        return max(min(waits), 0.0) if waits else None
