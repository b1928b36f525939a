"""Turning a request for a served method into a call: its stream window
checked, its params validated into the method's model with the frame's
descriptors. A pure function of the request and the rules; the checks that
need the connection's state (shutdown, calls in flight, ids, access) are
made before, by :class:`.connection.ServerConnection`. No I/O.
"""

from __future__ import annotations

import logging
from typing import Any

from pydantic import ValidationError

from ...exceptions import InternalError, InvalidParamsError, ProtocolViolationError, RPCError
from ...fds import EMPTY_FDS, NO_FDS, FdContext
from .. import messages
from .call import ServerCall
from .rules import Handler

__all__ = ["make_call"]

logger = logging.getLogger("unixrpc.server")


def make_call(
    handler: Handler, call_id: int | None, params: Any, window: int | None, fds: list[int], max_window: int
) -> ServerCall | RPCError:
    """The call for a request of *handler*'s method, or the error to refuse
    it with. Descriptors the call takes are removed from *fds* (owned by the
    call, or closed here if its params do not validate); on a refusal those
    still in *fds* are the caller's to close."""
    spec, name = handler.spec, handler.spec.name
    if window is not None or spec.streaming:
        refusal = _window_refusal(name, spec.streaming, call_id, window, max_window)
        if refusal is not None:
            return ProtocolViolationError(refusal)
        if call_id is None:
            window = None  # a notification of a stream: its items are discarded
    if fds:
        request_fds = FdContext(list(fds))
        context = request_fds.pydantic_context
        fds.clear()  # owned by request_fds from here on
    else:  # the common case: the shared empty context, which nothing changes
        request_fds, context = EMPTY_FDS, NO_FDS
    try:
        request = spec.method_class.__pydantic_validator__.validate_python(
            params, context=context, extra=spec.wire_extra
        )
    except ValidationError as exc:
        request_fds.abort()
        errors = exc.errors(include_url=False, include_context=False)
        return InvalidParamsError(messages.invalid_params(name, errors), data=errors)
    except Exception as exc:  # a validator that raised something else: the call fails, not the server
        request_fds.abort()
        logger.exception("validating the params of %s raised", name)
        return InternalError(f"validating the params of {name} raised {type(exc).__name__}")
    if request_fds is not EMPTY_FDS:
        request_fds.finish()  # descriptors no FD field took are closed
    return ServerCall(handler, request, call_id, window, request_fds)


def _window_refusal(
    name: str, streaming: bool, call_id: int | None, window: int | None, limit: int
) -> str | None:
    """Why a stream window (or its absence) is refused, or None."""
    if streaming and window is None and call_id is not None:
        return f'{name} is a stream method: send a "stream" window'
    if not streaming and window is not None:
        return f"{name} is not a stream method"
    if window is not None and window > limit:
        return (
            f"stream window {window} is over this server's limit of {limit}:"
            " open the stream with a smaller stream_window"
        )
    return None
