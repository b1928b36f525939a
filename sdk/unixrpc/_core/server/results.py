"""What a server sends for the value a handler returned (or yielded): the
JSON of a result or stream item, and the descriptors that go with it.

Rules this module owns:

* A value whose class is exactly the declared type (when that type is a
  plain class: a scalar or a pydantic model) is encoded as it is; any other
  value is encoded with pydantic's type checks as errors.
* A value that is not of the declared type is validated into it, as
  building the model would (a ``dict`` becomes the model, as FastAPI does
  with a response model); one that does not validate is refused.
* An ``FD`` field holding a bare int is refused, never sent and left open
  to leak: the handler says who closes it with ``FileDescriptor.transfer``
  or ``FileDescriptor.borrow``.
* A refusal is an :class:`InternalError` whose message names the method,
  the kind of value returned and the type expected, never the value.

Imports the typed layer and pydantic; no I/O.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ValidationError
from pydantic_core import PydanticSerializationError

from ...exceptions import InternalError
from ...fds import BARE_INT_MESSAGE, FdContext, serialize
from ...methods import MethodSpec

__all__ = ["encode_value"]


def encode_value(spec: MethodSpec, value: Any, what: str) -> tuple[bytes, FdContext | None]:
    """The JSON of *value*, a result (*what* ``"result"``) or stream item
    (``"item"``) of *spec*'s method, and the descriptors it carries.

    Raises:
        InternalError: *value* does not validate as the declared type, holds
            a bare int in an FD field, or cannot be encoded otherwise.
    """
    codec = spec.codec or spec.result_codec()
    # A value whose type could mismatch is encoded with warnings as errors,
    # which costs pydantic-core about 1 us per call (the string argument): a
    # value of exactly a plain class is spared.
    warnings: bool | Literal["error"] = False if type(value) is codec.trusted_type else "error"
    try:
        return serialize(codec.serializer, value, has_fds=codec.has_fds, warnings=warnings, bare_ints=False)
    except (PydanticSerializationError, ValueError) as exc:
        if warnings is False or BARE_INT_MESSAGE in str(exc):
            raise _refused(spec, what, exc) from None
    try:  # not of the declared type: validate it into that type
        validated = codec.validator.validate_python(value, strict=True)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(part) for part in first["loc"])
        # only the kind of what was found, never the value itself
        found = f"a {type(first['input']).__name__}" if "input" in first else "it"
        reason = first["msg"][:1].lower() + first["msg"][1:]
        detail = f"at {where}, {found}: {reason}" if where else reason
        message = (
            f"handler of {spec.name} returned an invalid {what}: a {type(value).__name__} "
            f"that does not validate as {spec.result_type_name} ({detail})"
        )
        raise InternalError(message) from None
    try:
        return serialize(codec.serializer, validated, has_fds=codec.has_fds, warnings=False, bare_ints=False)
    except (PydanticSerializationError, ValueError) as exc:
        raise _refused(spec, what, exc) from None


def _refused(spec: MethodSpec, what: str, exc: Exception) -> InternalError:
    text = str(exc)
    if BARE_INT_MESSAGE in text:
        reason = BARE_INT_MESSAGE
    else:  # pydantic's "Error calling function `...`: ValueError: <ours>"
        reason = text.rpartition("Error: ")[2] if "Error: " in text else text
    return InternalError(f"handler of {spec.name} returned an invalid {what}: {reason}")
