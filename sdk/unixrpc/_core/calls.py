"""Request/response correlation and descriptor bookkeeping, without I/O.

Rules this module owns:

* Call ids are allocated per connection, increasing, never reused.
* A received frame's descriptors come out of one FIFO, as many as the frame
  declares: the kernel may deliver a later frame's descriptors together
  with an earlier frame's bytes, never after them (they ride on a frame's
  first byte), so assignment by count is exact. A frame that declares more
  descriptors than have arrived is a protocol violation.
* A message for a call nobody waits for any more (timed out, cancelled,
  abandoned stream) is dropped and its descriptors are closed.
* Every descriptor this module hands out has exactly one owner.

No socket, anyio, trio, asyncio or threading imports: the shells do the
waiting and the locking.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections import deque
from collections.abc import Iterable
from typing import Any

__all__ = ["CallSlot", "CallTable", "FdQueue", "close_fds"]


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


class CallSlot:
    """What one call has received so far: envelopes with their descriptors.

    A unary call receives one final message (result or error); a stream
    receives items, then one final message.
    """

    __slots__ = ("call_id", "finished", "messages", "waiter")

    def __init__(self, call_id: int) -> None:
        self.call_id = call_id
        self.messages: deque[tuple[str, dict[str, Any], list[int]]] = deque()
        self.finished = False  # the final message has been filed
        self.waiter: Any = None  # for the async shell: an event to set on arrival

    def discard(self) -> None:
        """Close the descriptors of every message not yet consumed."""
        while self.messages:
            close_fds(self.messages.popleft()[2])


class CallTable:
    """The calls in flight on one connection."""

    __slots__ = ("_ids", "_slots")

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._slots: dict[int, CallSlot] = {}

    def __len__(self) -> int:
        return len(self._slots)

    def open(self) -> CallSlot:
        """Allocate an id and a slot for a new call."""
        call_id = next(self._ids)
        slot = self._slots[call_id] = CallSlot(call_id)
        return slot

    def abandon(self, slot: CallSlot) -> None:
        """Forget *slot*: whatever still arrives for it is dropped."""
        self._slots.pop(slot.call_id, None)
        slot.discard()

    def file(self, kind: str, envelope: dict[str, Any], fds: list[int]) -> CallSlot | None:
        """File a received result, error or item under its call.

        Returns the slot to wake, or None when no one waits for that id any
        more (the message is dropped and its descriptors closed).
        """
        call_id = envelope["id"]
        final = kind != "item"
        slot = self._slots.pop(call_id, None) if final else self._slots.get(call_id)
        if slot is None:
            close_fds(fds)
            return None
        slot.messages.append((kind, envelope, fds))
        if final:
            slot.finished = True
        return slot

    def pending(self) -> list[CallSlot]:
        """The slots still waiting for messages."""
        return list(self._slots.values())

    def fail_all(self) -> list[CallSlot]:
        """Remove and return every pending slot (the connection broke)."""
        slots = list(self._slots.values())
        self._slots.clear()
        return slots
