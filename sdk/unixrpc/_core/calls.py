"""Descriptor bookkeeping for one connection, without I/O (used by the
client core, ``_core/client.py``, and the server).

Rules this module owns:

* A received frame's descriptors come out of one FIFO, as many as the frame
  declares: the kernel may deliver a later frame's descriptors together
  with an earlier frame's bytes, never after them (they ride on a frame's
  first byte), so assignment by count is exact. A frame that declares more
  descriptors than have arrived is a protocol violation.
* Every descriptor this module hands out has exactly one owner.

No socket, anyio, trio, asyncio or threading imports: the shells do the
waiting and the locking.
"""

from __future__ import annotations

import contextlib
import os
from collections import deque
from collections.abc import Iterable

__all__ = ["FdQueue", "close_fds"]


def close_fds(fds: Iterable[int]) -> None:
    """Close every descriptor in *fds*, ignoring ones already closed."""
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


class FdQueue:
    """Descriptors received but not yet assigned to a frame, in arrival order."""

    __slots__ = ("_fds",)

    def __init__(self) -> None:
        self._fds: deque[int] = deque()

    def __len__(self) -> int:
        return len(self._fds)

    def push(self, fds: Iterable[int]) -> None:
        self._fds.extend(fds)

    def take(self, count: int) -> list[int]:
        """The next *count* descriptors, now owned by the caller.

        Raises:
            ValueError: fewer than *count* have arrived (the peer lied).
        """
        if not count:
            return []
        if count > len(self._fds):
            raise ValueError(f"frame declares {count} file descriptors but only {len(self._fds)} arrived")
        popleft = self._fds.popleft
        return [popleft() for _ in range(count)]

    def close_all(self) -> None:
        """Close every queued descriptor (the connection is going away)."""
        fds, self._fds = self._fds, deque()
        close_fds(fds)
