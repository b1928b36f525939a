"""One call in flight, and the client's call options: what a call is given
and how long it may take. No I/O, no waiting.

Rules this module owns:

* ``timeout=DEFAULT`` means the client's timeout; ``None`` waits for ever.
* A unary call's timeout covers the whole call: sending the request and
  waiting for the reply share one deadline.
* A stream's timeout bounds sending its request, then each item on its own,
  counted from when the caller asks for it (after the request is out); the
  credit that an item makes due is sent within that item's deadline.
* Telling the server that a call was given up (its cancel) may take at most
  :data:`CANCEL_SEND_LIMIT` seconds: a server that does not read cannot
  hold a caller up.

Deadlines are in the clock the shell gave the connection (``time.monotonic``
for threads, the event loop's for anyio), so a shell can wait on them as they
are.

stdlib and our own sans-IO modules only: never socket, anyio, trio, asyncio
or threading.
"""

from __future__ import annotations

import enum
from collections import deque
from typing import Any, Final

from ...methods import MethodSpec
from ..calls import close_fds

__all__ = [
    "CANCEL_SEND_LIMIT",
    "DEFAULT",
    "DEFAULT_STREAM_WINDOW",
    "CallSlot",
    "Default",
    "Message",
    "Timeout",
]

#: what a call receives: (kind, envelope, descriptors now owned by the receiver)
Message = tuple[str, dict[str, Any], list[int]]


class Default(enum.Enum):
    """The type of :data:`DEFAULT`."""

    DEFAULT = "DEFAULT"


#: "Use the client's default timeout" (the default of every call's ``timeout``).
DEFAULT: Final = Default.DEFAULT

#: what a call's ``timeout`` may be: seconds, None (for ever) or DEFAULT
Timeout = float | Default | None

#: items a stream may receive ahead of consumption, unless the client says otherwise
DEFAULT_STREAM_WINDOW: Final = 16

#: seconds a given-up call may spend telling the server (writing its cancel)
CANCEL_SEND_LIMIT: Final = 1.0


class CallSlot:
    """One call in flight: what it has received so far, oldest first, and
    the deadline of what its caller waits for now.

    A unary call receives one final message (result or error); a stream
    receives items, then one final message. ``timeout`` is the call's
    timeout in seconds (None: for ever); ``deadline`` the time, on the
    connection's clock, at which the current wait (the request's send and
    the reply, or the next item) times out (None: never). ``waiter``
    belongs to the shell (the async one parks an event there).
    """

    __slots__ = ("call_id", "consumed", "deadline", "finished", "messages", "spec", "timeout", "waiter")

    def __init__(
        self, call_id: int, spec: MethodSpec, timeout: float | None = None, deadline: float | None = None
    ) -> None:
        self.call_id = call_id
        self.spec = spec
        self.timeout = timeout
        self.deadline = deadline
        self.messages: deque[Message] = deque()
        self.finished = False  # the final message has been filed
        self.consumed = 0  # stream items consumed since the last credit
        self.waiter: Any = None

    def discard(self) -> None:
        """Close the descriptors of every message not yet consumed."""
        while self.messages:
            close_fds(self.messages.popleft()[2])
