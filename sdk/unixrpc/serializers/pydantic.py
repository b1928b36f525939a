"""PydanticSerializer: pydantic-core JSON encode/validate of one type.

A model class or anything a ``TypeAdapter`` accepts. A malformed packet is a
:class:`~unixrpc.DeserializeError` carrying pydantic's error list. Must not
import anything that does I/O.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar, cast

from pydantic import TypeAdapter, ValidationError
from pydantic_core import PydanticSerializationError

from ..exceptions import DeserializeError, FrameTooLargeError, SerializeError
from ._lines import DEFAULT_MAX_FRAME_SIZE, LineFramedSerializer

__all__ = ["PydanticSerializer"]

T = TypeVar("T")


class PydanticSerializer(LineFramedSerializer[T, T], Generic[T]):
    """Encode and validate packets of one type with pydantic-core's JSON.

    On a stream each packet is one compact JSON line; inside
    :class:`~unixrpc.LengthPrefixedSerializer` it is a bare JSON document.

    Args:
        type_: a pydantic model class, or any type a ``TypeAdapter`` accepts
            (``list[int]``, a ``Union`` of models, a ``TypedDict``...).
        max_frame_size: largest document accepted or sent, in bytes.
        strict: validate in pydantic's strict mode.

    Raises:
        pydantic.PydanticSchemaGenerationError: pydantic cannot build a schema
            for *type_*.
    """

    __slots__ = ("_adapter", "_strict", "_to_json", "_validate_json")

    def __init__(
        self,
        type_: type[T] | Any,
        *,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        strict: bool | None = None,
    ) -> None:
        super().__init__(max_frame_size=max_frame_size)
        self._adapter: TypeAdapter[T] = TypeAdapter(type_)
        self._validate_json = self._adapter.validator.validate_json
        self._to_json = self._adapter.serializer.to_json
        self._strict = strict

    @property
    def type_adapter(self) -> TypeAdapter[T]:
        """The ``TypeAdapter`` used for encoding and validation."""
        return self._adapter

    def serialize(self, packet: T) -> bytes:
        """Return *packet* as compact JSON.

        Fields are written by alias, as validation reads them.

        Raises:
            SerializeError: pydantic cannot serialize *packet*, or it is not of
                the serializer's type.
        """
        try:
            return self._to_json(packet, by_alias=True, warnings="error")
        except PydanticSerializationError as exc:
            raise SerializeError(f"cannot encode packet: {exc}") from exc

    def serialize_frame(self, packet: T) -> bytes:
        """Return *packet* as one JSON line.

        Raises:
            SerializeError: pydantic cannot serialize *packet*.
            FrameTooLargeError: the document is over ``max_frame_size``.
        """
        data = self.serialize(packet)
        if len(data) > self.max_frame_size:
            raise FrameTooLargeError(len(data), self.max_frame_size)
        return data + b"\n"

    def deserialize(self, data: bytes | bytearray) -> T:
        """Validate the JSON document *data* and return the packet.

        Raises:
            DeserializeError: *data* is not valid JSON or fails validation;
                ``error_info`` holds pydantic's ``errors()`` list.
        """
        try:
            return cast(T, self._validate_json(data, strict=self._strict))
        except ValidationError as exc:
            raise DeserializeError(
                f"packet failed validation: {exc}", error_info=exc.errors(include_url=False)
            ) from exc
