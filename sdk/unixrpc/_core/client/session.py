"""Session: the rules of a client across a succession of connections
(reconnect, sending calls again, resuming streams), without I/O.

The per-connection core (``connection.py``) stays broken once broken; a
client with ``reconnect=`` on keeps one :class:`Session` above its
connections, and its shells (``client/_sync_session.py`` with threads,
``client/_async_session.py`` with anyio) ask it what to do, then wait, lock
and connect. So the two differ only in how they wait.

Rules this module owns:

* Connections are numbered (``generation``, 1 for the first). A connection
  is *lost* when it broke for any cause but ``close()``, or when the daemon
  refused a call because it is shutting down (the connection is retired:
  calls in flight on it finish there, new calls wait for the next one).
  Losing the current connection starts a reconnect *episode*.
* An episode tries to connect at once, then after each failure waits
  ``initial_delay * multiplier ** n`` seconds, spread by +/- ``jitter`` of
  itself and capped at ``max_delay``, until a connect succeeds or the
  policy's ``deadline`` (seconds from the loss) passes; then the client is
  ``disconnected`` until a new call starts another episode. A connect that
  can never succeed by waiting (permission denied, a bad address) ends the
  episode at once. A caller waits for the episode at most until its own
  deadline (its call's ``timeout``).
* What a call whose connection was lost does (:meth:`Session.after_loss`):
  one that never ran (its request was never written, or the daemon refused
  it with ``ServerShuttingDownError`` before its handler ran: see
  :func:`refused_before_running`) is sent again on the next connection,
  whatever the method; one whose request was written is sent again only if
  its method is ``idempotent``. Each is sent at most once per connection
  and at most ``max_retries`` times again in all, within its own deadline.
  Otherwise it raises :class:`~unixrpc.CallNotRunError` or
  :class:`~unixrpc.CallOutcomeUnknownError`, chained to the cause.
* A stream opened with a resume policy is opened again on the next
  connection when its connection was lost or the daemon ended it because it
  is shutting down: with the request the policy derives from the last item
  consumed, or the first request when no item was consumed or the policy is
  ``True`` (same request). Reopening with the same request after an item was
  consumed, or with items received but not consumed, may skip or repeat
  items: the stream counts it as a gap.

stdlib and our own modules only: never socket, anyio, trio, asyncio or
threading.
"""

from __future__ import annotations

import dataclasses
import enum
import random
from collections.abc import Callable
from typing import Any

from ...exceptions import (
    CallInterruptedError,
    CallNotRunError,
    CallOutcomeUnknownError,
    ClientClosedError,
    ConnectError,
    ConnectionBrokenError,
    ServerBusyError,
    SocketPermissionError,
)
from ...methods import MethodSpec

__all__ = [
    "ConnectionState",
    "ReconnectPolicy",
    "Session",
    "connection_lost",
    "ends_stream_for_restart",
    "refused_before_running",
]

_SHUTTING_DOWN = "unixrpc.ShuttingDown"
#: the message of the server's refusal of a new call while it shuts down
#: (``_core/server/connection.py``); its other ShuttingDown errors (a stream
#: ended, a call cut after the grace period) say more after a colon
_REFUSAL_MESSAGE = "server is shutting down"


@dataclasses.dataclass(frozen=True)
class ReconnectPolicy:
    """How a client reconnects after its connection to the daemon is lost
    (``Client(path, reconnect=ReconnectPolicy(...))``; ``reconnect=True``
    takes these defaults).

    Attributes:
        initial_delay: seconds between the first failed connect and the next
            (the first connect is tried at once).
        multiplier: each further delay is this many times the one before.
        max_delay: the cap on one delay, jitter included.
        jitter: each delay is spread by up to this fraction of itself, up or
            down (0 to 1), so that many clients of one daemon do not all
            connect at the same instant.
        deadline: seconds from the loss after which reconnecting stops
            (None: never); a call waits at most its own ``timeout``.
        max_retries: how many times one call is sent again in all (a daemon
            that crashes on a request is not fed it for ever).

    Raises:
        ValueError: a value is out of range.
    """

    initial_delay: float = 0.02
    multiplier: float = 2.0
    max_delay: float = 1.0
    jitter: float = 0.2
    deadline: float | None = 30.0
    max_retries: int = 5

    def __post_init__(self) -> None:
        if not self.initial_delay >= 0:
            raise ValueError(f"initial_delay must be at least 0, got {self.initial_delay!r}")
        if not self.multiplier >= 1:
            raise ValueError(f"multiplier must be at least 1, got {self.multiplier!r}")
        if not self.max_delay >= self.initial_delay:
            raise ValueError(f"max_delay must be at least initial_delay, got {self.max_delay!r}")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"jitter must be between 0 and 1, got {self.jitter!r}")
        if self.deadline is not None and not self.deadline > 0:
            raise ValueError(f"deadline must be above 0 or None, got {self.deadline!r}")
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be at least 0, got {self.max_retries!r}")

    def delay(self, failures: int, draw: float) -> float:
        """Seconds to wait after the *failures*-th failed connect (1 for the
        first) of an episode; *draw* is uniform in [0, 1) (the jitter)."""
        base = self.initial_delay * self.multiplier ** min(failures - 1, 64)
        spread = base * self.jitter * (2 * draw - 1)
        return max(0.0, min(self.max_delay, base + spread))

    @classmethod
    def of(cls, reconnect: bool | ReconnectPolicy | None) -> ReconnectPolicy | None:
        """The policy a client's ``reconnect=`` argument means (None: off).

        Raises: TypeError for anything but a bool, None or a policy."""
        if reconnect is None or reconnect is False:
            return None
        if reconnect is True:
            return cls()
        if isinstance(reconnect, ReconnectPolicy):
            return reconnect
        raise TypeError(f"reconnect= takes True, False or a ReconnectPolicy, got {reconnect!r}")


class ConnectionState(enum.Enum):
    """Where a reconnecting client stands (``client.state``)."""

    #: a connection is up; calls go to it
    CONNECTED = "connected"
    #: the connection was lost; connecting again, calls wait (bounded)
    RECONNECTING = "reconnecting"
    #: reconnecting gave up (the policy's deadline); the next call tries again
    DISCONNECTED = "disconnected"
    #: closed by the application: every call raises ClientClosedError
    CLOSED = "closed"


def connection_lost(broken: BaseException | None) -> bool:
    """Whether a connection that ended with *broken* (the core's cause) was
    lost under the client, as opposed to closed by it."""
    return broken is not None and not isinstance(broken, ClientClosedError)


def refused_before_running(envelope: dict[str, Any]) -> bool:
    """Whether an error reply is the daemon refusing a new call because it is
    shutting down: the handler never ran."""
    error = envelope.get("error")
    return (
        type(error) is dict
        and error.get("code") == _SHUTTING_DOWN
        and error.get("message") == _REFUSAL_MESSAGE
    )


def ends_stream_for_restart(envelope: dict[str, Any]) -> bool:
    """Whether the final error of a stream is the daemon shutting down (the
    stream was ended, refused or cut): a resumable stream opens again."""
    error = envelope.get("error")
    return type(error) is dict and error.get("code") == _SHUTTING_DOWN


def _retryable_connect(error: BaseException) -> bool:
    """Whether waiting may make a failed connect succeed (the daemon is
    restarting): not for a permission refused or a bad address."""
    if isinstance(error, SocketPermissionError):
        return False
    return isinstance(error, (ConnectError, ConnectionBrokenError, ServerBusyError, OSError))


class Session:
    """A reconnecting client's state across its connections (see the module
    docstring). The shells call it under their lock; it never waits.

    Args:
        policy: the reconnect policy.
        clock: the shell's clock, in seconds (deadlines are on it).
        draw: uniform numbers in [0, 1) for the jitter.
    """

    def __init__(
        self,
        policy: ReconnectPolicy,
        clock: Callable[[], float],
        draw: Callable[[], float] = random.random,
    ) -> None:
        self.policy = policy
        self._clock = clock
        self._draw = draw
        self.state = ConnectionState.CONNECTED
        #: the number of the current (or last) connection, 1 for the first
        self.generation = 1
        #: connections made after the first
        self.reconnects = 0
        #: why the last connect of the episode failed (None: none failed)
        self.last_error: BaseException | None = None
        self._episode_deadline: float | None = None
        self._failures = 0
        self._next_at = 0.0

    # -- connections ---------------------------------------------------------------

    def lost(self, generation: int) -> bool:
        """Connection *generation* was lost (broke, or was retired). Returns
        True when that starts an episode (it was the current one)."""
        if generation != self.generation or self.state is not ConnectionState.CONNECTED:
            return False
        self._start_episode()
        return True

    def call_arrives(self) -> None:
        """A new call finds the client disconnected: reconnecting starts again."""
        if self.state is ConnectionState.DISCONNECTED:
            self._start_episode()

    def _start_episode(self) -> None:
        now = self._clock()
        self.state = ConnectionState.RECONNECTING
        deadline = self.policy.deadline
        self._episode_deadline = None if deadline is None else now + deadline
        self._failures = 0
        self._next_at = now
        self.last_error = None

    def next_attempt(self) -> float | None:
        """When to try connecting next (on the clock; maybe already past),
        or None when the episode is over (the client is now disconnected)."""
        if self.state is not ConnectionState.RECONNECTING:
            return None
        at, deadline = self._next_at, self._episode_deadline
        if deadline is not None and at > deadline:
            self.state = ConnectionState.DISCONNECTED
            return None
        return at

    def connect_failed(self, error: BaseException) -> None:
        """A connect attempt raised *error*: wait before the next one, or
        end the episode if waiting cannot help."""
        self.last_error = error
        if not _retryable_connect(error):
            self.state = ConnectionState.DISCONNECTED
            return
        self._failures += 1
        self._next_at = self._clock() + self.policy.delay(self._failures, self._draw())

    def connected(self) -> int:
        """A new connection is up. Returns its generation."""
        self.generation += 1
        self.reconnects += 1
        self.state = ConnectionState.CONNECTED
        self.last_error = None
        return self.generation

    def close(self) -> None:
        """The application closed the client."""
        self.state = ConnectionState.CLOSED

    # -- calls ---------------------------------------------------------------------

    def after_loss(
        self,
        spec: MethodSpec,
        *,
        request_sent: bool,
        ran: bool | None,
        retries: int,
        cause: BaseException | None,
    ) -> CallInterruptedError | None:
        """A call of *spec* lost its connection before its reply. None: send
        it again on the next connection (it never ran, or is idempotent, and
        was sent again *retries* times so far); else the error to raise.
        *ran*: False when the daemon certainly did not run it, None when it
        may have."""
        if (ran is False or spec.idempotent) and retries < self.policy.max_retries:
            return None
        if ran is False:
            why = "it was sent again too many times" if retries else "the client may not send it again"
        else:
            why = "its method is not idempotent, so it was not sent again"
            if spec.idempotent:
                why = f"it was sent again {retries} times, the most the reconnect policy allows"
        return self.interrupted(spec, request_sent=request_sent, ran=ran, why=why, cause=cause)

    def interrupted(
        self,
        spec: MethodSpec,
        *,
        request_sent: bool,
        ran: bool | None,
        why: str,
        cause: BaseException | None,
    ) -> CallInterruptedError:
        """The error of a call of *spec* that ends without a reply because
        *why*, chained to *cause*."""
        error: CallInterruptedError
        if ran is False:
            what = (
                "the daemon refused it before running it (shutting down)"
                if request_sent
                else "its request was never sent"
            )
            error = CallNotRunError(
                f"{spec.name} did not run: {what}, and {why}", method=spec.name, request_sent=request_sent
            )
        else:
            error = CallOutcomeUnknownError(
                f"the connection to the daemon was lost after {spec.name} was sent, before its reply: "
                f"the daemon may or may not have run it; {why}",
                method=spec.name,
                request_sent=True,
            )
        error.__cause__ = cause
        return error

    def no_connection(
        self, spec: MethodSpec, *, request_sent: bool, ran: bool | None
    ) -> CallInterruptedError:
        """The error of a call of *spec* that waited for a connection until
        its deadline, or until the episode gave up."""
        last = self.last_error
        if self.state is ConnectionState.DISCONNECTED:
            why = "reconnecting gave up"
            if last is not None:
                why += f" ({last})"
        else:
            why = "no connection to the daemon came back within the call's timeout"
            if last is not None:
                why += f" (last connect: {last})"
        return self.interrupted(spec, request_sent=request_sent, ran=ran, why=why, cause=last)
