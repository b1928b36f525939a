"""The clocks of one server connection (frame_timeout,
connection_idle_timeout) and what it is charged in the server's memory
budget: state and arithmetic only; :class:`.connection.ServerConnection`
decides when they apply. Times are the engine's monotonic seconds.
"""

from __future__ import annotations

from .rules import MemoryBudget

__all__ = ["CHARGE_SHIFT", "Charge", "Clocks"]

#: a connection's memory is charged in steps of 2**CHARGE_SHIFT bytes (64 KiB),
#: rounded down: at most that much per connection goes uncharged, like its read buffer
CHARGE_SHIFT = 16


class Clocks:
    """When the frame half received began to arrive, and since when the
    connection is idle (nothing in flight, nothing to write)."""

    __slots__ = ("idle_since", "partial_since")

    def __init__(self) -> None:
        self.partial_since: float | None = None
        self.idle_since: float | None = None

    def received(self, now: float, partial: bool) -> None:
        """Bytes came at *now*; a frame is still half received if *partial*."""
        if partial:
            if self.partial_since is None:
                self.partial_since = now
        else:
            self.partial_since = None
        self.idle_since = now

    def deadline(
        self, now: float, busy: bool, frame_timeout: float | None, idle_timeout: float | None
    ) -> float | None:
        """The next deadline: a frame begun must arrive whole within
        *frame_timeout*; a connection not *busy* is idle from the later of
        its last read and the first time it is seen idle, for at most
        *idle_timeout*."""
        if self.partial_since is not None:
            return None if frame_timeout is None else self.partial_since + frame_timeout
        if busy:
            self.idle_since = None
            return None
        if self.idle_since is None:
            self.idle_since = now
        return None if idle_timeout is None else self.idle_since + idle_timeout


class Charge:
    """What one connection is charged in its server's memory budget: its
    receive buffer beyond the base read size, and its unsent output."""

    __slots__ = ("_budget", "held", "receive_excess")

    def __init__(self, budget: MemoryBudget) -> None:
        self._budget = budget
        self.held = 0
        self.receive_excess = 0

    def update(self, unsent: int) -> bool:
        """Charge what is held now: False if it grew while the server is
        over its budget (the connection must go)."""
        held = (self.receive_excess + unsent) >> CHARGE_SHIFT << CHARGE_SHIFT
        if held == self.held:
            return True
        ok = self._budget.charge(self.held, held)
        self.held = held
        return ok
