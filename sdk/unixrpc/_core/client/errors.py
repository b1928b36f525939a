"""What a client caller raises, and why: the wording and the class of every
error the client core hands a shell. No I/O.

Rules this module owns:

* The broken error: every operation after the connection ended raises a
  fresh error of the cause's class (``ConnectionBrokenError``, or its
  subclasses ``RemoteProtocolError`` when the server broke the protocol and
  ``AncillaryDataTruncatedError`` when descriptors were lost;
  ``ClientClosedError``; the server's own ``RPCError``) whose message names
  the cause, chained to it.
* The kept cause holds no traceback and no chained exceptions (no cycle
  through the frames that raised it).
* Timeouts name the method and the seconds; a stream's says it applies to
  each item; a send that timed out says whether it cut its frame (then the
  connection is broken) or the server is not reading.

stdlib and our own modules only: never socket, anyio, trio, asyncio or threading.
"""

from __future__ import annotations

from ...exceptions import (
    AncillaryDataTruncatedError,
    ClientClosedError,
    ConnectionBrokenError,
    RemoteProtocolError,
    RPCError,
)
from ...methods import MethodSpec

__all__ = ["broken_error", "detached", "send_timeout_error", "timeout_error"]


def detached(error: BaseException) -> BaseException:
    """*error*, or an equivalent of the same class for :func:`broken_error`,
    without traceback or chained exceptions: kept for the life of the
    connection, those would hold the frames that raised it, and through
    them the connection itself (a cycle only the GC breaks)."""
    if error.__traceback__ is None and error.__cause__ is None and error.__context__ is None:
        return error
    message = str(error)
    if isinstance(error, AncillaryDataTruncatedError):
        return AncillaryDataTruncatedError(message, bufsize=error.bufsize, closed_fds=error.closed_fds)
    if isinstance(error, RemoteProtocolError):
        return RemoteProtocolError(message)
    if isinstance(error, ClientClosedError):
        return ClientClosedError(message)
    if isinstance(error, RPCError):
        return RPCError.from_wire(error.code, error.message, error.data)
    return ConnectionBrokenError(message)


def broken_error(broken: BaseException | None) -> Exception:
    """A fresh exception for a caller, because the connection ended with
    *broken*: of the cause's class, chained to it."""
    if isinstance(broken, ClientClosedError):
        return ClientClosedError("client is closed")
    if isinstance(broken, RPCError):
        return RPCError.from_wire(broken.code, broken.message, broken.data)
    message = f"connection is broken: {broken}"
    error: ConnectionBrokenError
    if isinstance(broken, AncillaryDataTruncatedError):
        error = AncillaryDataTruncatedError(message, bufsize=broken.bufsize, closed_fds=broken.closed_fds)
    elif isinstance(broken, RemoteProtocolError):
        error = RemoteProtocolError(message)
    else:
        error = ConnectionBrokenError(message)
    error.__cause__ = broken
    return error


def _seconds(seconds: float) -> str:
    return "1 second" if seconds == 1 else f"{seconds:g} seconds"


def timeout_error(spec: MethodSpec, seconds: float) -> TimeoutError:
    """What a caller of *spec* raises when its reply (or next item) took
    longer than *seconds*."""
    if spec.streaming:
        return TimeoutError(
            f"no item from {spec.name} within {_seconds(seconds)} (the timeout applies to each item; "
            "timeout=None waits for ever)"
        )
    return TimeoutError(f"no reply to {spec.name} within {_seconds(seconds)}")


def send_timeout_error(spec: MethodSpec, seconds: float, *, cut: bool, what: str = "request") -> TimeoutError:
    """What a caller raises when its request (or other *what*) could not be
    written within *seconds*; *cut*: it was cut in the middle of its frame."""
    message = f"could not send the {what} for {spec.name} within {_seconds(seconds)}"
    if cut:
        return TimeoutError(f"{message}: it was cut in the middle of its frame, so the connection is broken")
    return TimeoutError(f"{message} (the server is not reading)")
