"""A handler registered for a method (:func:`make_handler`), and the
mistakes in declaring one that registration catches where they are made,
with the fix in the message: ``@server.method`` used without its method
class, a handler of the wrong kind or arity, one declared ``(context,
request)``, a name already served.

Imports the typed layer and :mod:`.context`; nothing that serves.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from typing import Any

from .._core.server import Handler
from ..methods import MethodSpec
from .context import CallContext

__all__ = ["context_comes_first", "make_handler", "missing_method_class"]


def make_handler(spec: MethodSpec, function: Callable[..., Any], served: dict[str, Handler]) -> Handler:
    """The handler that serves *spec* with *function*, checked.

    Raises:
        TypeError: the name is in *served* already, a stream method's
            handler is not a generator function (or a unary one's is), the
            handler does not take ``(request)`` or ``(request, context)``,
            or takes them as ``(context, request)``.
    """
    if spec.name in served:
        raise TypeError(f"method {spec.name!r} is already served by {served[spec.name].function!r}")
    if spec.streaming:
        is_async = inspect.isasyncgenfunction(function)
        if not is_async and not inspect.isgeneratorfunction(function):
            raise TypeError(f"the handler of stream method {spec.name!r} must be a generator function")
    else:
        is_async = inspect.iscoroutinefunction(function)
        if inspect.isasyncgenfunction(function) or inspect.isgeneratorfunction(function):
            raise TypeError(f"{spec.name!r} is not a StreamMethod: its handler must return, not yield")
    positional = [
        p
        for p in inspect.signature(function).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    if not 1 <= len(positional) <= 2:
        raise TypeError(f"a handler takes (request) or (request, context), got {function!r}")
    if len(positional) == 2 and context_comes_first(function, positional, spec):
        first, second = positional[0].name, positional[1].name
        raise TypeError(
            f"the handler {function.__qualname__} of {spec.name!r} takes ({first}, {second}): "
            f"the request comes first, write ({second}, {first})"
        )
    return Handler(spec, function, len(positional) == 2, is_async)


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
