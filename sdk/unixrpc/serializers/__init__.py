"""Serializers turn packets into frames and back; see :mod:`unixrpc.serializers.abc`
for the base classes. No I/O happens here."""

from .abc import (
    AbstractFramedPacketSerializer,
    AbstractIncrementalPacketSerializer,
    AbstractPacketSerializer,
    FrameLocation,
)
from .json import JSONSerializer
from .length_prefixed import LengthPrefixedSerializer
from .pydantic import PydanticSerializer

__all__ = [
    "AbstractFramedPacketSerializer",
    "AbstractIncrementalPacketSerializer",
    "AbstractPacketSerializer",
    "FrameLocation",
    "JSONSerializer",
    "LengthPrefixedSerializer",
    "PydanticSerializer",
]
