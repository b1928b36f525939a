"""JSONSerializer: orjson, one compact document per line.

Compatible with newline-delimited JSON (JSON Lines) peers. As a one-shot
serializer (inside :class:`~unixrpc.LengthPrefixedSerializer`) it is a bare
JSON document. Must not import anything that does I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from ..exceptions import DeserializeError, FrameTooLargeError, SerializeError
from ._lines import DEFAULT_MAX_FRAME_SIZE, LineFramedSerializer

__all__ = ["JSONSerializer"]


class JSONSerializer(LineFramedSerializer[Any, Any]):
    """Encode packets as JSON with orjson.

    On a stream each packet is one compact JSON document followed by ``\\n``
    (orjson never writes a raw newline inside a document). The ``dumps``
    output is standard JSON: any JSON Lines peer can read and write it.

    Args:
        max_frame_size: largest document accepted or sent, in bytes
            (default 16 MiB).
        default: called for objects orjson cannot encode natively (as
            ``orjson.dumps(default=...)``).
        option: extra ``orjson.OPT_*`` flags for encoding (``OPT_INDENT_2``
            only applies to one-shot use: a JSON line is always compact).

    Raises:
        ValueError: ``max_frame_size`` is not positive.
    """

    __slots__ = ("_default", "_line_option", "_option")

    def __init__(
        self,
        *,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        default: Callable[[Any], Any] | None = None,
        option: int = 0,
    ) -> None:
        super().__init__(max_frame_size=max_frame_size)
        self._default = default
        self._option = option
        # one document per line: indentation would put raw newlines inside a frame
        self._line_option = (option & ~orjson.OPT_INDENT_2) | orjson.OPT_APPEND_NEWLINE

    def serialize(self, packet: Any) -> bytes:
        """Return *packet* as a compact JSON document.

        Raises:
            SerializeError: *packet* holds something JSON cannot encode.
        """
        try:
            return orjson.dumps(packet, default=self._default, option=self._option)
        except orjson.JSONEncodeError as exc:
            raise SerializeError(f"cannot encode packet as JSON: {exc}") from exc

    def serialize_frame(self, packet: Any) -> bytes:
        """Return *packet* as one JSON line.

        Raises:
            SerializeError: *packet* holds something JSON cannot encode.
            FrameTooLargeError: the document is over ``max_frame_size``.
        """
        try:
            data = orjson.dumps(packet, default=self._default, option=self._line_option)
        except orjson.JSONEncodeError as exc:
            raise SerializeError(f"cannot encode packet as JSON: {exc}") from exc
        if len(data) > self.max_frame_size + 1:
            raise FrameTooLargeError(len(data) - 1, self.max_frame_size)
        return data

    def deserialize(self, data: bytes | bytearray | memoryview) -> Any:
        """Return the object encoded in the JSON document *data*.

        Raises:
            DeserializeError: *data* is not valid JSON.
        """
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise DeserializeError(f"invalid JSON: {exc}", error_info={"position": exc.pos}) from exc
