"""UnixSocketAddress: a Unix socket's address, path or Linux abstract name.

Owns conversion between the raw forms the ``socket`` module uses (``str`` or
``bytes``, abstract names with a leading NUL) and a value type that prints
abstract names as ``@name``. Does no I/O.
"""

from __future__ import annotations

import os
import pathlib
from typing import Final

__all__ = ["UnixSocketAddress", "UnixAddressLike"]

_MAX_PATH: Final = 107  # sizeof(sun_path) - 1 on Linux


class UnixSocketAddress:
    """The address of a Unix socket: a filesystem path, a Linux abstract name,
    or unnamed (an unbound socket, e.g. the client end of a connection).

    ``str()`` gives the path, ``@name`` for an abstract name, or ``""`` for
    unnamed. Instances are immutable, hashable and compare by value.
    """

    __slots__ = ("_raw",)

    def __init__(self, raw: bytes) -> None:
        """Build from the raw ``sun_path`` bytes (leading NUL for abstract names).
        Prefer the ``from_*`` constructors."""
        self._raw = bytes(raw)

    @classmethod
    def from_pathname(cls, path: str | bytes | os.PathLike[str] | os.PathLike[bytes]) -> UnixSocketAddress:
        """Address of a socket file.

        Raises:
            ValueError: *path* is empty, contains a NUL byte, or is longer than
                ``sun_path`` allows (107 bytes on Linux).
        """
        raw = os.fsencode(path)
        if not raw:
            raise ValueError("empty socket path")
        if b"\0" in raw:
            raise ValueError(f"socket path contains a NUL byte: {raw!r}")
        if len(raw) > _MAX_PATH:
            raise ValueError(
                f"socket path is {len(raw)} bytes, longer than the {_MAX_PATH} bytes sun_path allows"
            )
        return cls(raw)

    @classmethod
    def from_abstract_name(cls, name: str | bytes) -> UnixSocketAddress:
        """Address in Linux's abstract namespace (no file; written ``@name``).

        Raises:
            ValueError: *name* is longer than 107 bytes.
        """
        raw = name.encode("utf-8", "surrogateescape") if isinstance(name, str) else bytes(name)
        if len(raw) > _MAX_PATH:
            raise ValueError(f"abstract name is {len(raw)} bytes, longer than {_MAX_PATH} bytes")
        return cls(b"\0" + raw)

    @classmethod
    def from_raw(
        cls, raw: str | bytes | os.PathLike[str] | os.PathLike[bytes] | UnixSocketAddress
    ) -> UnixSocketAddress:
        """Address from what ``socket.getsockname()`` returns or ``connect()``
        accepts: a leading NUL means an abstract name, empty means unnamed.

        Raises:
            ValueError: a path form is invalid (see :meth:`from_pathname`).
        """
        if isinstance(raw, UnixSocketAddress):
            return raw
        data = os.fsencode(raw)
        if not data:
            return cls(b"")
        if data[:1] == b"\0":
            return cls.from_abstract_name(data[1:])
        return cls.from_pathname(data)

    def as_raw(self) -> str | bytes:
        """The form ``socket.connect()``/``bind()`` take: ``str`` for a path
        (filesystem-decoded), ``bytes`` with a leading NUL for an abstract name."""
        if self._raw[:1] == b"\0":
            return self._raw
        return os.fsdecode(self._raw)

    def is_unnamed(self) -> bool:
        """True for an unbound socket's address."""
        return not self._raw

    def is_abstract(self) -> bool:
        """True for a Linux abstract name."""
        return self._raw[:1] == b"\0"

    def as_pathname(self) -> pathlib.Path | None:
        """The socket file's path, or None for abstract and unnamed addresses."""
        if not self._raw or self.is_abstract():
            return None
        return pathlib.Path(os.fsdecode(self._raw))

    def as_abstract_name(self) -> bytes | None:
        """The abstract name without its leading NUL, or None."""
        return self._raw[1:] if self.is_abstract() else None

    def __str__(self) -> str:
        if self.is_abstract():
            return "@" + self._raw[1:].decode("utf-8", "backslashreplace")
        return os.fsdecode(self._raw)

    def __repr__(self) -> str:
        return f"UnixSocketAddress({str(self)!r})" if self._raw else "UnixSocketAddress(<unnamed>)"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, UnixSocketAddress) and other._raw == self._raw

    def __hash__(self) -> int:
        return hash(self._raw)


#: What the clients accept as an address.
UnixAddressLike = str | bytes | os.PathLike[str] | os.PathLike[bytes] | UnixSocketAddress
