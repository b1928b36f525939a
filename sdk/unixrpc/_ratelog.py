"""Log lines a flood cannot multiply: at most *burst* lines per *interval*
seconds for one kind of event, then one line saying how many were left out.

Used where a local peer, or a resource running out, could otherwise make the
daemon write without bound (protocol violations, failed accepts, threads that
could not be started). Imports only the standard library.
"""

from __future__ import annotations

import logging
import threading
import time

__all__ = ["RateLimitedLog"]


class RateLimitedLog:
    """Log at *level* on *logger*, at most *burst* lines per *interval*
    seconds; the lines left out are counted and reported once the next
    interval begins. Thread-safe."""

    def __init__(
        self,
        logger: logging.Logger,
        level: int,
        what: str,
        *,
        burst: int = 10,
        interval: float = 10.0,
    ) -> None:
        self._logger, self._level, self._what = logger, level, what
        self.burst, self.interval = burst, interval
        self._lock = threading.Lock()
        self._window = -interval
        self._count = 0
        self._suppressed = 0

    def __call__(self, message: str, *args: object) -> None:
        """Log ``message % args``, unless the burst of this interval is spent."""
        now = time.monotonic()
        with self._lock:
            suppressed = 0
            if now - self._window >= self.interval:
                suppressed, self._suppressed = self._suppressed, 0
                self._window, self._count = now, 0
            self._count += 1
            log = self._count <= self.burst
            if not log:
                self._suppressed += 1
        if suppressed:
            self._logger.log(
                self._level, "%d more %s not logged in the last %ss", suppressed, self._what, self.interval
            )
        if log:
            self._logger.log(self._level, message, *args)
