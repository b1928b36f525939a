"""The wording of the errors a server sends back: messages that say what
was wrong and what to do about it.

Owns the text of three replies: invalid params (which fields, and what was
wrong with each), an unknown method (the nearest names served, and how to
list them all), and an ``authorize`` hook that raised (the hook's failure,
not the handler's). Pure functions of their arguments: strings in, a string
out. Must never import socket, anyio, trio, asyncio or threading; the engines
call these functions at the point where they build the error.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = ["authorize_failed", "invalid_params", "method_not_found", "shown_name"]

#: how many field errors an InvalidParams message spells out (the rest are counted)
MAX_SHOWN_ERRORS = 5
#: how long a rejected value may be in a message before it is cut
MAX_SHOWN_INPUT = 40
#: how long an unknown method name may be in a message before it is cut
MAX_SHOWN_NAME = 100
#: the prefix of method names (and error codes) the library keeps for itself
RESERVED_PREFIX = "unixrpc."


def shown_name(name: str) -> str:
    """*name* quoted, cut to :data:`MAX_SHOWN_NAME` characters (a peer may
    send any string as a method name)."""
    return repr(name) if len(name) <= MAX_SHOWN_NAME else repr(name[:MAX_SHOWN_NAME]) + "..."


def _location(loc: Sequence[Any]) -> str:
    """``("items", 0, "uid")`` -> ``items[0].uid``; the empty location is the params object itself."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text or "params"


def _shown_input(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= MAX_SHOWN_INPUT else text[: MAX_SHOWN_INPUT - 3] + "..."


def _one_error(error: Mapping[str, Any]) -> str:
    where = _location(error.get("loc", ()))
    kind = error.get("type", "")
    message = str(error.get("msg", "invalid value"))
    if kind == "value_error":  # a validator's own ValueError: its text says it all
        message = message.removeprefix("Value error, ")
    if kind == "missing":
        return f"{where}: required, not given"
    if kind == "extra_forbidden":
        return f"{where}: not a param of this method"
    if "input" in error and kind not in ("model_type", "dict_type"):
        return f"{where}: {message[:1].lower()}{message[1:]} (got {_shown_input(error['input'])})"
    return f"{where}: {message[:1].lower()}{message[1:]}"


def invalid_params(method: str, errors: Sequence[Mapping[str, Any]]) -> str:
    """The message of an InvalidParams reply: the method, then each field
    that failed and why, e.g. ``invalid params for Add: b: input should be a
    valid integer (got 'two'); a: required, not given``. *errors* is
    pydantic's error list (``ValidationError.errors()``); the reply's
    ``data`` keeps it whole.
    """
    if not errors:
        return f"invalid params for {method}"
    shown = "; ".join(_one_error(error) for error in errors[:MAX_SHOWN_ERRORS])
    more = len(errors) - MAX_SHOWN_ERRORS
    if more > 0:
        shown += f"; and {more} more (see the error's data)"
    return f"invalid params for {method}: {shown}"


def _nearest(name: str, served: Sequence[str], limit: int = 3) -> list[str]:
    """The served names closest to *name*: same name in another case or
    namespace first (``get`` and ``users.Get``), then by similarity."""
    lowered = name.lower()
    last = lowered.rsplit(".", 1)[-1]
    found = [
        candidate
        for candidate in served
        if candidate.lower() == lowered or candidate.lower().rsplit(".", 1)[-1] == last
    ]
    for candidate in difflib.get_close_matches(name, served, n=limit, cutoff=0.7):
        if candidate not in found:
            found.append(candidate)
    if len(found) < limit:
        by_lower = {candidate.lower(): candidate for candidate in served}
        for candidate in difflib.get_close_matches(lowered, list(by_lower), n=limit, cutoff=0.7):
            if by_lower[candidate] not in found:
                found.append(by_lower[candidate])
    return found[:limit]


def method_not_found(name: str, served: Iterable[str]) -> str:
    """The message of a MethodNotFound reply, e.g. ``no method named
    'user.Get'; did you mean 'users.Get'? (`unixrpc describe SOCKET` lists
    the 4 methods served)``. The library's own ``unixrpc.*`` methods are
    suggested only for a name in that namespace.
    """
    all_served = list(served)
    reserved = name.startswith(RESERVED_PREFIX)
    candidates = sorted(n for n in all_served if reserved or not n.startswith(RESERVED_PREFIX))
    public = [n for n in all_served if not n.startswith(RESERVED_PREFIX)]
    text = f"no method named {shown_name(name)}"
    nearest = _nearest(name, candidates)
    if nearest:
        quoted = [repr(candidate) for candidate in nearest]
        choice = quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]
        text += f"; did you mean {choice}?"
    count = len(public)
    listed = f"the {count} method{'s' if count != 1 else ''} served"
    return f"{text} (`unixrpc describe SOCKET` lists {listed})"


def authorize_failed(method: str, exc: BaseException) -> str:
    """The message of the InternalError sent when the server's ``authorize``
    hook raised instead of answering: the hook failed, the handler of
    *method* never ran."""
    return (
        f"the server's authorize hook raised {type(exc).__name__} while checking a call of {method}; "
        "the handler did not run (the hook should return True or False)"
    )
