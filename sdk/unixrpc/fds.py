"""File descriptors as typed fields: FileDescriptor (an owning handle) and the
``FD`` annotation that makes a pydantic field travel as SCM_RIGHTS.

Rules this module owns:

* On the wire an ``FD`` field is an integer: the index of the descriptor in
  the fds of the frame that carries it.
* Ownership is explicit. A received descriptor is wrapped at once in a
  :class:`FileDescriptor` that owns it: ``close()``, leaving its ``with``,
  ``detach()``, ``open()``, or the garbage collector (with a
  ``ResourceWarning``) release it. What a sender passes (an int, a file, a
  socket, a FileDescriptor) is borrowed, not closed by sending, unless it was
  wrapped with :meth:`FileDescriptor.transfer`.
* Encoding and decoding happen inside a :class:`FdContext`, which collects
  the descriptors of one frame (sending) or hands them out (receiving) and
  closes every one that no field took.
"""

from __future__ import annotations

import contextlib
import os
import socket
import warnings
from typing import IO, TYPE_CHECKING, Any, Final, Literal, Protocol, TypeAlias, overload

from pydantic import GetCoreSchemaHandler, GetJsonSchemaHandler, SerializationInfo, ValidationInfo
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import PydanticSerializationError, SchemaSerializer, core_schema

__all__ = ["FD", "NO_FDS", "FdContext", "FileDescriptor", "SupportsFileno", "schema_has_fds", "serialize"]

_CONTEXT_KEY = "unixrpc.fds"
#: in the context of a value believed to hold no FD field (see :func:`serialize`)
_NO_FDS_EXPECTED = object()
_NO_FDS_MARK = "unixrpc: FD field in a value serialized as holding none"
#: what refusing a bare int in an FD field says (see :func:`serialize`)
BARE_INT_MESSAGE = (
    "an FD field holds a bare int, which would stay open in this process: "
    "return FileDescriptor.transfer(fd) to close it once sent, or "
    "FileDescriptor.borrow(fd) to keep it open"
)


class SupportsFileno(Protocol):
    """Anything with a ``fileno()`` method: files, sockets, selectors,
    :class:`FileDescriptor`."""

    def fileno(self) -> int: ...


class FileDescriptor:
    """A file descriptor and whether this object owns it.

    Received descriptors are owned: they are closed by :meth:`close`, by
    leaving a ``with`` block, or by the garbage collector (which warns with a
    ``ResourceWarning``). ``FileDescriptor(fd)`` takes ownership of *fd*;
    :meth:`borrow` and :meth:`transfer` wrap one for sending.

    Raises:
        ValueError: *fd* is negative.
    """

    __slots__ = ("__weakref__", "_bare", "_close_after_send", "_fd", "_keepalive", "_owned")

    def __init__(self, fd: int) -> None:
        if not isinstance(fd, int) or isinstance(fd, bool) or fd < 0:
            raise ValueError(f"invalid file descriptor: {fd!r}")
        self._fd = fd
        self._owned = True
        self._keepalive: object = None
        self._close_after_send = False
        #: made by an FD field from a bare int (nobody said who owns it)
        self._bare = False

    if TYPE_CHECKING:
        # For type checkers only: a field annotated ``FD`` in a pydantic
        # model reads as a FileDescriptor but is built from anything the
        # field accepts (PEP 681's rule for a field whose type is a
        # descriptor). At run time FileDescriptor is no descriptor.
        @overload
        def __get__(self, instance: None, owner: Any) -> FileDescriptor: ...
        @overload
        def __get__(self, instance: object, owner: Any) -> FileDescriptor: ...
        def __get__(self, instance: object, owner: Any) -> FileDescriptor: ...
        def __set__(self, instance: object, value: FileDescriptor | int | SupportsFileno) -> None: ...

    @classmethod
    def borrow(cls, source: int | SupportsFileno) -> FileDescriptor:
        """Wrap a descriptor you keep owning (an int, or any object with
        ``fileno()``, kept alive as long as the wrapper). Sending it leaves it
        open; ``close()`` on the wrapper does not close it.

        Raises:
            TypeError: *source* is neither an int nor has ``fileno()``.
            ValueError: the descriptor is negative (a closed file object).
        """
        if isinstance(source, FileDescriptor):
            source._bare = False  # said explicitly now
            return source
        if isinstance(source, int) and not isinstance(source, bool):
            fd = source
        elif hasattr(source, "fileno"):
            fd = source.fileno()
        else:
            raise TypeError(f"expected a file descriptor (int or object with fileno()), got {source!r}")
        handle = cls(fd)
        handle._owned = False
        handle._keepalive = source
        return handle

    @classmethod
    def transfer(cls, source: int | SupportsFileno) -> FileDescriptor:
        """Wrap a descriptor whose ownership passes to the call: it is closed
        once the frame carrying it has been sent (or when sending fails).
        For a file or socket object, that object is closed.

        Raises:
            TypeError, ValueError: as for :meth:`borrow`.
        """
        handle = cls.borrow(source)
        handle._close_after_send = True
        return handle

    @property
    def closed(self) -> bool:
        """True once closed or detached."""
        return self._fd < 0

    @property
    def owned(self) -> bool:
        """True if closing this object closes the descriptor."""
        return self._owned

    def fileno(self) -> int:
        """The descriptor number.

        Raises:
            ValueError: the descriptor was closed or detached.
        """
        if self._fd < 0:
            raise ValueError("I/O operation on a closed FileDescriptor")
        return self._fd

    def detach(self) -> int:
        """Give up ownership and return the number; you must close it.

        Raises:
            ValueError: already closed or detached.
        """
        fd = self.fileno()
        self._fd = -1
        return fd

    def close(self) -> None:
        """Close the descriptor if owned (a borrowed one is only forgotten).
        Idempotent."""
        fd, self._fd = self._fd, -1
        keepalive, self._keepalive = self._keepalive, None
        if fd < 0:
            return
        if self._owned:
            os.close(fd)
        elif self._close_after_send and keepalive is not None and hasattr(keepalive, "close"):
            keepalive.close()
        elif self._close_after_send:
            os.close(fd)

    def open(
        self, mode: str = "r", buffering: int = -1, encoding: str | None = None, **kwargs: Any
    ) -> IO[Any]:
        """A file object over the descriptor (``os.fdopen``); the file object
        takes ownership and this FileDescriptor is detached.

        Raises:
            ValueError: already closed or detached, or a bad *mode*.
            OSError: the mode does not fit the descriptor.
        """
        fd = self.fileno()
        if not self._owned:
            fd = os.dup(fd)  # never hand out ownership of a borrowed descriptor
        try:
            result = open(fd, mode, buffering, encoding, closefd=True, **kwargs)  # noqa: SIM115 - returned
        except BaseException:
            if not self._owned:
                os.close(fd)
            raise
        if self._owned:
            self._fd = -1
        return result

    def socket(self) -> socket.socket:
        """A ``socket.socket`` over the descriptor, which takes ownership
        (this FileDescriptor is detached).

        Raises:
            ValueError: already closed or detached.
            OSError: the descriptor is not a socket.
        """
        fd = self.fileno() if self._owned else os.dup(self.fileno())
        sock = socket.socket(fileno=fd)
        if self._owned:
            self._fd = -1
        return sock

    def __enter__(self) -> FileDescriptor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._fd < 0 else ("owned" if self._owned else "borrowed")
        return f"<FileDescriptor {self._fd} {state}>"

    def __del__(self) -> None:
        if getattr(self, "_fd", -1) >= 0 and self._owned:
            warnings.warn(f"unclosed {self!r}", ResourceWarning, stacklevel=2)
            _close_quietly(self._fd)
            self._fd = -1


class FdContext:
    """The descriptors of one frame while it is encoded or decoded.

    Sending: ``FdContext()``; encoding an ``FD`` field appends its
    FileDescriptor and writes its index. Receiving: ``FdContext(fds)`` with the
    frame's descriptors (now owned by the context); decoding an ``FD`` field
    takes one by index. :meth:`finish` closes whatever no field took;
    :meth:`abort` closes everything, taken or not.
    """

    __slots__ = ("_incoming", "_taken", "bare_ints", "outgoing")

    def __init__(self, incoming: list[int] | None = None, *, bare_ints: bool = True) -> None:
        self.outgoing: list[FileDescriptor] = []
        self._incoming = incoming if incoming is not None else []
        self._taken: dict[int, FileDescriptor] = {}
        #: False: an FD field holding a bare int fails to encode (see :func:`serialize`)
        self.bare_ints = bare_ints

    @property
    def pydantic_context(self) -> dict[str, Any]:
        """The ``context=`` for pydantic's validate/serialize calls."""
        return {_CONTEXT_KEY: self}

    def take(self, index: int) -> FileDescriptor:
        if not 0 <= index < len(self._incoming):
            count = len(self._incoming)
            noun = "descriptor" if count == 1 else "descriptors"
            raise ValueError(f"fd index {index} out of range: the frame carries {count} {noun}")
        handle = self._taken.get(index)
        if handle is None:
            # the same handle on a repeat take: a union tries several branches
            handle = self._taken[index] = FileDescriptor(self._incoming[index])
        return handle

    def take_all(self) -> list[FileDescriptor]:
        """Every received descriptor, in frame order, each as a
        :class:`FileDescriptor` owned by this context until :meth:`finish`
        (for a reply decoded without a type: the untyped calls)."""
        return [self.take(index) for index in range(len(self._incoming))]

    def holds_any(self) -> bool:
        """True if a field took one of the received descriptors."""
        return bool(self._taken)

    def finish(self) -> None:
        """Close the received descriptors that no field took."""
        if self._incoming:
            for index, fd in enumerate(self._incoming):
                if index not in self._taken:
                    _close_quietly(fd)
            self._incoming = []

    @classmethod
    def receiving(cls, fds: list[int]) -> FdContext:
        """The context for decoding a frame that carries *fds* (owned by the
        context from now on). For a frame without descriptors, a shared
        empty context: an FD field in it fails, as it must, and nothing in
        it ever changes."""
        return cls(fds) if fds else _EMPTY

    def abort(self) -> None:
        """Close every received descriptor, including those already wrapped."""
        if self._taken:
            for handle in self._taken.values():
                handle.close()
            self._taken.clear()
        if self._incoming:
            self.finish()

    def sent(self) -> None:
        """The frame was sent (or given up): close what was transferred."""
        for handle in self.outgoing:
            if handle._close_after_send:
                handle.close()


_EMPTY = FdContext()
#: the context of every received frame without descriptors (shared: an FD
#: field in such a frame fails, and nothing ever changes it)
EMPTY_FDS: Final = _EMPTY
#: the pydantic context for a frame without descriptors (shared, never changes)
NO_FDS: Final = {_CONTEXT_KEY: _EMPTY}


def _close_quietly(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


def _validate_fd(value: Any, info: ValidationInfo) -> FileDescriptor:
    context = info.context.get(_CONTEXT_KEY) if isinstance(info.context, dict) else None
    if isinstance(context, FdContext):  # from the wire: an index into the frame's fds
        if type(value) is not int:
            raise ValueError("an FD field must be an integer index into the frame's file descriptors")
        return context.take(value)
    if isinstance(value, FileDescriptor):
        if value.closed:
            raise ValueError("the FileDescriptor is closed")
        return value
    try:
        handle = FileDescriptor.borrow(value)
        handle._bare = type(value) is int
    except TypeError:
        raise ValueError(
            "expected a file descriptor: an int, a FileDescriptor, or an object with fileno()"
        ) from None
    return handle


def _serialize_fd(value: FileDescriptor, info: SerializationInfo) -> int:
    context = info.context.get(_CONTEXT_KEY) if isinstance(info.context, dict) else None
    if context is _NO_FDS_EXPECTED:  # serialize() retries with a real context
        raise ValueError(_NO_FDS_MARK)
    if not isinstance(context, FdContext):
        return value.fileno()  # outside a call (model_dump in user code): the raw number
    value.fileno()  # raises if closed
    if value._bare and not context.bare_ints:
        raise ValueError(BARE_INT_MESSAGE)
    context.outgoing.append(value)
    return len(context.outgoing) - 1


def _core_schema(source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
    return core_schema.with_info_plain_validator_function(
        _validate_fd,
        serialization=core_schema.plain_serializer_function_ser_schema(
            _serialize_fd, info_arg=True, return_schema=core_schema.int_schema(), when_used="always"
        ),
    )


def _json_schema(schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
    return {
        "type": "integer",
        "minimum": 0,
        "description": "index into the file descriptors of this frame",
        "x-unixrpc-fd": True,
    }


FileDescriptor.__get_pydantic_core_schema__ = staticmethod(_core_schema)  # type: ignore[attr-defined]
FileDescriptor.__get_pydantic_json_schema__ = staticmethod(_json_schema)  # type: ignore[attr-defined]

#: A pydantic field type for a file descriptor that travels with the call as
#: SCM_RIGHTS (on the wire: an index into the frame's descriptors). Accepts an
#: int, a file, a socket or a FileDescriptor when you build a model (so do
#: type checkers, for a field annotated ``FD``; inside ``FD | None`` or
#: ``list[FD]`` they want a FileDescriptor: ``FileDescriptor.borrow(x)``);
#: reading the field gives a FileDescriptor. On the receiving side it is one
#: you own. A server refuses a bare int in a result or stream item (it would
#: leak): return ``FileDescriptor.transfer(fd)`` or ``FileDescriptor.borrow(fd)``.
FD: TypeAlias = FileDescriptor


def schema_has_fds(schema: Any) -> bool:
    """True if a pydantic core schema may hold an ``FD`` field: one appears
    anywhere in it (nested models and definitions included), or a value of
    unknown type (``Any``) may hold one, or the schema cannot be inspected
    yet (a model with unresolved forward references)."""
    if not isinstance(schema, dict):
        return True  # not built yet: assume the worst
    stack: list[Any] = [schema]
    seen: set[int] = set()
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, dict):
            if node.get("type") == "any":  # encoded by what it holds at run time
                return True
            values: Any = node.values()
        else:
            values = node
        for value in values:
            if value is _validate_fd or value is _serialize_fd:
                return True
            if isinstance(value, (dict, list, tuple)):
                stack.append(value)
    return False


_NO_FDS_CONTEXT = {_CONTEXT_KEY: _NO_FDS_EXPECTED}


def serialize(
    serializer: SchemaSerializer,
    value: Any,
    *,
    has_fds: bool,
    warnings: bool | Literal["error"] = True,
    bare_ints: bool = True,
) -> tuple[bytes, FdContext | None]:
    """*value* as JSON, with the FdContext that collected its descriptors
    (None when it has none to send).

    *has_fds* says whether the schema may hold FD fields
    (:func:`schema_has_fds`). Without them no FdContext is made, the common
    case. A descriptor that turns up anyway (a custom serializer returning a
    model with one) trips a wire and the value is serialized again with a
    real context: never is a descriptor's number sent as a plain integer.
    (The wire cannot help a one-shot iterator the first pass consumed, or a
    wrap serializer that swallows the ``ValueError``: which is why fields
    typed ``Any`` count as holding descriptors.)

    *bare_ints* False refuses an FD field built from a bare int (neither
    :meth:`FileDescriptor.transfer` nor :meth:`FileDescriptor.borrow` said
    who closes it): a server's results, where it would leak one descriptor
    per call. The error's text holds :data:`BARE_INT_MESSAGE`.

    Raises:
        PydanticSerializationError, ValueError: the value cannot be encoded
            (what was transferred is closed even though nothing is sent), or
            it holds a bare int and *bare_ints* is False.
    """
    if not has_fds:
        try:
            return serializer.to_json(value, by_alias=True, warnings=warnings, context=_NO_FDS_CONTEXT), None
        except PydanticSerializationError as exc:
            if _NO_FDS_MARK not in str(exc):
                raise
    fd_context = FdContext(bare_ints=bare_ints)
    try:
        data = serializer.to_json(
            value, by_alias=True, warnings=warnings, context=fd_context.pydantic_context
        )
    except BaseException:
        fd_context.sent()
        raise
    return data, fd_context
