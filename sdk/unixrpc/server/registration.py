"""Mistakes in declaring a handler that registration catches where they are
made, with the fix in the message: ``@server.method`` used without its
method class, and a handler declared ``(context, request)``.

Imports the typed layer and :mod:`.context`; nothing that serves.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from typing import Any

from ..methods import MethodSpec
from .context import CallContext

__all__ = ["context_comes_first", "missing_method_class"]


def missing_method_class(function: Callable[..., Any]) -> str:
    """What ``@server.method`` used bare (so given the handler) says: the
    method class to write, from the request's annotation if it names one."""
    name = getattr(function, "__name__", repr(function))
    hint = "YourMethod"
    try:
        parameters = list(inspect.signature(function).parameters.values())
        hints = typing.get_type_hints(function)
    except Exception:  # unresolvable annotations: no hint from them
        parameters, hints = [], {}
    if parameters:
        annotation = hints.get(parameters[0].name)
        if isinstance(annotation, type) and getattr(annotation, "__rpc_spec__", None) is not None:
            hint = annotation.__name__
    return f"@server.method needs the method class: write @server.method({hint}) above {name}()"


def context_comes_first(
    function: Callable[..., Any], positional: list[inspect.Parameter], spec: MethodSpec
) -> bool:
    """Whether a handler's two parameters are declared ``(context, request)``:
    by their annotations, or failing those, by their names."""
    first, second = positional

    def means(parameter: inspect.Parameter, hints: dict[str, Any]) -> str | None:
        annotation = hints.get(parameter.name, parameter.annotation)
        if isinstance(annotation, str):
            annotation = annotation.rpartition(".")[2]
            if annotation == "CallContext":
                return "context"
            return "request" if annotation == spec.method_class.__name__ else None
        if annotation is CallContext:
            return "context"
        return "request" if annotation is spec.method_class else None

    try:
        hints = typing.get_type_hints(function)
    except Exception:  # forward references that do not resolve: read them as text
        hints = {}
    roles = (means(first, hints), means(second, hints))
    if roles[0] is not None or roles[1] is not None:
        return roles[0] == "context" or roles[1] == "request"
    return first.name in ("ctx", "context") and second.name not in ("ctx", "context")
