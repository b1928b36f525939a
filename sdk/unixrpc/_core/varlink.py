"""The varlink wire's shared facts (https://varlink.org, sd-varlink), for
the server codec (:mod:`.server.varlink`) and the varlink client
(:mod:`unixrpc.varlink.client`): the name grammar, how unixrpc names map
to qualified varlink names, the standard errors, and the splitting of a
byte stream into NUL-terminated messages with their descriptors.

Rules this module owns (docs/varlink.md):

* A message is a JSON object followed by one NUL byte; a message (without
  its NUL) over the size limit is refused before more of it is buffered.
* Descriptors ride on a message's first byte. A read that brought
  descriptors gives them to the first message that *starts* in that read;
  a reader that may receive descriptors reads one message per ``recvmsg``
  after a peek (:func:`message_length`), so a read never holds the first
  byte of two messages (systemd issue 43823: the kernel may join a message
  without descriptors and the next one, with descriptors, in one read).
* Names: an interface is reverse-domain with at least two parts; method,
  type and error names are CamelCase. A unixrpc name that is already a
  qualified varlink name keeps it; any other maps to
  ``<interface>.<CamelCase of its last dotted part>``.

No I/O; stdlib only.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = [
    "DEFAULT_MAX_MESSAGE_SIZE",
    "SERVICE",
    "UNIXRPC_INTERFACE",
    "MessageSplitter",
    "MessageTooLargeError",
    "camel_case",
    "is_field_name",
    "is_interface_name",
    "is_member_name",
    "is_qualified_name",
    "message_length",
    "qualified_name",
    "split_qualified",
]

#: sd-varlink's buffer limit: the largest message either side accepts by default
DEFAULT_MAX_MESSAGE_SIZE: Final = 16 * 1024 * 1024
#: the standard interface every varlink service implements
SERVICE: Final = "org.varlink.service"
#: the interface of unixrpc's own errors (those with no standard varlink
#: counterpart: InternalError, Busy, ShuttingDown, ProtocolError, Cancelled)
UNIXRPC_INTERFACE: Final = "org.unixrpc"

_INTERFACE = re.compile(r"[A-Za-z]([-]*[A-Za-z0-9])*(\.[A-Za-z0-9]([-]*[A-Za-z0-9])*)+")
_MEMBER = re.compile(r"[A-Z][A-Za-z0-9]*")
_FIELD = re.compile(r"[A-Za-z](_?[A-Za-z0-9])*")


def is_interface_name(name: str) -> bool:
    """A reverse-domain interface name with at least two parts (``org.example.calc``)."""
    return _INTERFACE.fullmatch(name) is not None


def is_member_name(name: str) -> bool:
    """A CamelCase method, type or error name (``Add``)."""
    return _MEMBER.fullmatch(name) is not None


def is_field_name(name: str) -> bool:
    """A varlink field name (``uid``, ``userName``, ``user_name``)."""
    return _FIELD.fullmatch(name) is not None


def split_qualified(name: str) -> tuple[str, str] | None:
    """``("org.example.calc", "Add")`` for ``org.example.calc.Add``, or None
    when *name* is not a qualified varlink name."""
    interface, dot, member = name.rpartition(".")
    if not dot or not is_interface_name(interface) or not is_member_name(member):
        return None
    return interface, member


def is_qualified_name(name: str) -> bool:
    """``interface.Member`` with a valid interface and member name."""
    return split_qualified(name) is not None


def camel_case(name: str) -> str:
    """``get_user`` → ``GetUser``, ``add`` → ``Add``, ``NotFound`` kept.

    Raises:
        ValueError: nothing of *name* makes a varlink name.
    """
    parts = [part for part in re.split(r"[^A-Za-z0-9]+", name) if part]
    result = "".join(part[:1].upper() + part[1:] for part in parts)
    if not is_member_name(result):
        raise ValueError(f"{name!r} cannot be made a varlink name (CamelCase, starting with a letter)")
    return result


def qualified_name(name: str, interface: str) -> str:
    """The varlink name of a unixrpc method name or error code: itself if it
    is already qualified (``org.example.calc.Add``), else
    ``<interface>.<CamelCase of its last dotted part>`` (``users.Get`` →
    ``org.example.Get``).

    Raises:
        ValueError: *interface* is no varlink interface name, or *name*
            cannot be made a member name.
    """
    if is_qualified_name(name):
        return name
    if not is_interface_name(interface):
        raise ValueError(
            f"{interface!r} is not a varlink interface name (reverse-domain, at least two "
            "lower-case parts, e.g. org.example.calc)"
        )
    return f"{interface}.{camel_case(name.rpartition('.')[2])}"


def message_length(peeked: bytes) -> int | None:
    """How many bytes to read to take exactly the first message of
    *peeked* (bytes seen with ``MSG_PEEK``), its NUL included; None if no
    message ends in them yet."""
    end = peeked.find(b"\0")
    return None if end < 0 else end + 1


class MessageTooLargeError(ValueError):
    """A message is over the size limit (the stream cannot be trusted any more)."""


class MessageSplitter:
    """A received byte stream cut into messages (bodies without the NUL),
    each with the number of descriptors that belong to it (see the module
    docstring for the rule). Not thread-safe."""

    __slots__ = ("_buffer", "_pending_fds", "max_size")

    def __init__(self, max_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> None:
        self.max_size = max_size
        self._buffer = bytearray()
        self._pending_fds = 0  # descriptors of the message being received

    @property
    def partial(self) -> bool:
        """A message has begun and not ended."""
        return bool(self._buffer)

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes, nfds: int = 0) -> list[tuple[bytes, int]]:
        """The messages completed by *data*, a read that brought *nfds*
        descriptors: ``(body, nfds)`` each, in order.

        Raises:
            MessageTooLargeError: a message is over ``max_size``.
        """
        out: list[tuple[bytes, int]] = []
        buffer = self._buffer
        start = 0
        fds_to_assign = nfds
        if buffer:
            end = data.find(b"\0")
            if end < 0:
                if len(buffer) + len(data) > self.max_size:
                    raise MessageTooLargeError(self._too_large(len(buffer) + len(data)))
                buffer += data
                if fds_to_assign:  # fds in the middle of a message: they ride on no first byte
                    self._pending_fds += fds_to_assign
                return out
            if len(buffer) + end > self.max_size:
                raise MessageTooLargeError(self._too_large(len(buffer) + end))
            buffer += data[:end]
            out.append((bytes(buffer), self._pending_fds))
            buffer.clear()
            self._pending_fds = 0
            start = end + 1
        size = len(data)
        while start < size:
            end = data.find(b"\0", start)
            if end < 0:
                if size - start > self.max_size:
                    raise MessageTooLargeError(self._too_large(size - start))
                buffer += data[start:]
                self._pending_fds = fds_to_assign
                return out
            if end - start > self.max_size:
                raise MessageTooLargeError(self._too_large(end - start))
            out.append((data[start:end], fds_to_assign))
            fds_to_assign = 0
            start = end + 1
        if fds_to_assign:  # a read of only the tail of a message brought descriptors
            if out:
                body, count = out[-1]
                out[-1] = (body, count + fds_to_assign)
            else:
                self._pending_fds += fds_to_assign
        return out

    def _too_large(self, size: int) -> str:
        return f"a message of more than {size - 1} bytes is over the limit of {self.max_size} bytes"
