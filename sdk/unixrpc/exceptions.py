"""The whole public error hierarchy of unixrpc.

This module owns every exception class a user may catch. It imports nothing
of ours, so any layer may import it.

Every class here derives from :class:`Error`, so ``except unixrpc.Error``
catches whatever the library raises on purpose; each also keeps the
standard base it always had (``ConnectionError``, ``OSError``,
``ValueError``...), so ``except`` clauses written against those keep working.

Naming follows anyio's split between "you closed it" and "it broke under
you", and h11's split between "you misused the API" and "the peer
misbehaved":

* :class:`ClientClosedError` -- you closed the client (or its write side).
* :class:`ConnectionBrokenError` -- the peer went away, or the connection
  reached a state it cannot recover from.
* :class:`StreamProtocolParseError` -- the peer sent bytes that are not a
  valid packet; the stream is still usable and the next packet can be read.
* :class:`SerializeError` / :class:`FrameTooLargeError` -- you asked to send
  something that cannot be sent; nothing was written.
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "AncillaryDataTruncatedError",
    "ConnectError",
    "Error",
    "SocketNotFoundError",
    "SocketPermissionError",
    "SocketRefusedError",
    "ConnectTimeoutError",
    "CallCancelledError",
    "InternalError",
    "InvalidResultError",
    "InvalidParamsError",
    "LocalProtocolError",
    "MethodNotFoundError",
    "PermissionDeniedError",
    "ProtocolViolationError",
    "RPCError",
    "RemoteProtocolError",
    "ServerBusyError",
    "ServerShuttingDownError",
    "ClientClosedError",
    "ConnectionBrokenError",
    "CallInterruptedError",
    "CallNotRunError",
    "CallOutcomeUnknownError",
    "DeserializeError",
    "FrameTooLargeError",
    "IncrementalDeserializeError",
    "OversizedFrameError",
    "SerializeError",
    "StreamProtocolParseError",
    "SocketActivationError",
]


class Error(Exception):
    """The base of every exception unixrpc raises on purpose: ``except
    unixrpc.Error`` catches them all (errors from the peer, broken or closed
    connections, failed connects, invalid packets, misuse of the API).

    The subclasses keep their standard bases as well (``ConnectionError``,
    ``FileNotFoundError``, ``ValueError``, ``TypeError``...)."""


class ConnectError(Error, OSError):
    """Connecting to a daemon's socket failed. The message names the address
    and the likely cause; ``errno`` is the system's.

    Attributes:
        address: the address as given (``@name`` for an abstract name).
    """

    def __init__(self, errno: int, message: str, address: str) -> None:
        super().__init__(errno, message)
        self.address = address

    def __str__(self) -> str:
        return str(self.strerror)

    def __reduce__(self) -> Any:
        return (type(self), (self.errno, self.strerror, self.address))


class SocketNotFoundError(ConnectError, FileNotFoundError):
    """Nothing exists at the socket path: the daemon is not running, or
    listens elsewhere."""


class SocketRefusedError(ConnectError, ConnectionRefusedError):
    """Nothing accepts connections there: a socket file left behind by a
    daemon that is gone, a path that is a regular file or a directory rather
    than a socket, or an abstract name no one has bound."""


class SocketPermissionError(ConnectError, PermissionError):
    """The socket file (or a directory on its path) does not let this user
    connect: see the daemon's ``socket_mode`` / ``socket_group``."""


class ConnectTimeoutError(ConnectError, TimeoutError):
    """The daemon's listen backlog stayed full for the whole connect timeout:
    it exists but is not accepting connections (busy, or hung)."""


class ClientClosedError(Error, ConnectionError):
    """The client was closed by this process (``close()``/``aclose()``), or its
    write side was shut down with ``send_eof()`` and a send was attempted."""


class ConnectionBrokenError(Error, ConnectionError):
    """The connection broke under you: the peer closed it, reset it, or it is in
    a state the client cannot recover from (for example a send that was
    interrupted in the middle of a frame). Every later operation on the same
    client raises this error too; close the client and reconnect."""


class CallInterruptedError(ConnectionBrokenError):
    """A call of a client with ``reconnect=`` on lost its connection before
    its reply and was not sent again (it is not idempotent, or reconnecting
    did not succeed within its timeout and the policy's deadline). Raised as
    one of its two subclasses, which say whether the daemon may have run it:
    :class:`CallNotRunError` (it did not: safe to send again) and
    :class:`CallOutcomeUnknownError` (the request reached the daemon; it may
    or may not have run).

    Attributes:
        method: the wire name of the method.
        request_sent: the request was written to the daemon's socket.
    """

    def __init__(self, message: str, *, method: str = "", request_sent: bool = False) -> None:
        super().__init__(message)
        self.method = method
        self.request_sent = request_sent

    def __reduce__(self) -> Any:
        return (_rebuild_interrupted, (type(self), str(self), self.method, self.request_sent))


class CallNotRunError(CallInterruptedError):
    """The call never ran: its request was never written, or the daemon
    refused it with ``ServerShuttingDownError`` before its handler started.
    Sending it again cannot run it twice."""


class CallOutcomeUnknownError(CallInterruptedError):
    """The request reached the daemon's socket, and the connection broke
    before the reply: the daemon may have run the call, in full or in part,
    or not at all. The method is not idempotent, so it was not sent again;
    check the daemon's state before deciding to."""


def _rebuild_interrupted(
    cls: type[CallInterruptedError], message: str, method: str, request_sent: bool
) -> CallInterruptedError:
    return cls(message, method=method, request_sent=request_sent)


class AncillaryDataTruncatedError(ConnectionBrokenError):
    """The kernel truncated the control data of a ``recvmsg`` (``MSG_CTRUNC``).

    Some file descriptors the peer sent were lost. The ones that did arrive
    have been closed, and the connection is marked broken, since no one can
    tell which packet the lost descriptors belonged to. Raise
    ``ancillary_bufsize`` (``socket.CMSG_SPACE(4 * max_fds)``) to avoid it.

    Attributes:
        bufsize: the ancillary buffer size that was too small.
        closed_fds: how many descriptors arrived and were closed.
    """

    def __init__(self, message: str, *, bufsize: int, closed_fds: int) -> None:
        super().__init__(message)
        self.bufsize = bufsize
        self.closed_fds = closed_fds


class SerializeError(Error, TypeError):
    """A packet could not be turned into bytes (an object the serializer does not
    know how to encode). Nothing was sent."""


class FrameTooLargeError(Error, ValueError):
    """A packet to send encodes to more bytes than the serializer's size limit.
    Nothing was sent.

    Attributes:
        size: the encoded size in bytes.
        limit: the limit in bytes.
    """

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"packet encodes to {size} bytes, over the frame limit of {limit} bytes")
        self.size = size
        self.limit = limit


class DeserializeError(Error):
    """Raised by a serializer when bytes are not a valid packet.

    Attributes:
        error_info: machine-readable details, when the serializer has them
            (for :class:`~unixrpc.PydanticSerializer`, pydantic's ``errors()`` list).
    """

    def __init__(self, message: str, *, error_info: Any = None) -> None:
        super().__init__(message)
        self.error_info = error_info


class OversizedFrameError(DeserializeError):
    """Raised by :meth:`AbstractFramedPacketSerializer.locate_frame` when the frame
    starting at ``start`` is over the size limit. The receiver reports it as a
    :class:`StreamProtocolParseError` and discards the frame as its bytes
    arrive, without buffering them.

    Attributes:
        next_frame_at: index in the buffer where the next frame begins (it may lie
            beyond the bytes received so far), or ``None`` when the serializer only
            finds it by scanning (see ``resync``).
    """

    def __init__(self, message: str, *, next_frame_at: int | None) -> None:
        super().__init__(message)
        self.next_frame_at = next_frame_at


class IncrementalDeserializeError(DeserializeError):
    """Raised by an incremental deserializer generator when a frame is invalid.

    Attributes:
        remaining_data: the bytes that followed the bad frame; they are kept
            for the next packet.
    """

    def __init__(self, message: str, remaining_data: bytes, *, error_info: Any = None) -> None:
        super().__init__(message, error_info=error_info)
        self.remaining_data = remaining_data


class StreamProtocolParseError(Error):
    """The peer sent a frame that is not a valid packet.

    The bad frame has been consumed; the stream stays in sync, so the next
    call receives the next packet.

    Attributes:
        error: the serializer's :class:`DeserializeError`.
        error_info: shortcut for ``error.error_info`` (pydantic's error list for
            :class:`~unixrpc.PydanticSerializer`).
    """

    def __init__(self, error: DeserializeError) -> None:
        super().__init__(f"invalid packet: {error}")
        self.error = error
        self.error_info = error.error_info


# -- the RPC layer ---------------------------------------------------------------


class LocalProtocolError(Error):
    """You used the RPC API in a way it cannot honour (a wrong argument type,
    too many file descriptors for one frame...). Nothing was sent."""


class RemoteProtocolError(ConnectionBrokenError):
    """The peer broke the wire protocol in a way that makes the connection
    unusable (an oversized frame, a frame that declares descriptors that never
    came, a reply that is not an envelope). The connection is closed; every
    call in flight on it fails with this error."""


class InvalidResultError(Error, ValueError):
    """The server's result or stream item does not validate as the method's
    declared type (the daemon and the client disagree on the method).

    Attributes:
        error_info: pydantic's error list.
    """

    def __init__(self, message: str, *, error_info: Any = None) -> None:
        super().__init__(message)
        self.error_info = error_info


_ERROR_CLASSES: dict[str, type[RPCError]] = {}
#: instance attributes of every RPCError, which a declared field would clobber
_RESERVED_FIELDS = frozenset({"code", "message", "data", "args"})


def _own_fields(cls: type) -> dict[str, Any]:
    """The annotated fields an RPCError subclass declares (its own and its
    parents'), excluding ClassVars."""
    import inspect
    import typing

    hints = typing.get_type_hints(cls)
    fields: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        if klass is RPCError or not issubclass(klass, RPCError):
            continue
        for name in inspect.get_annotations(klass):
            hint = hints.get(name)
            if typing.get_origin(hint) is typing.ClassVar or hint is typing.ClassVar or name.startswith("_"):
                continue
            default = klass.__dict__.get(name, ...)
            fields[name] = (hint, default)
    return fields


class RPCError(Error):
    """An error that crosses the wire: a ``code`` (a dotted string), a
    ``message`` and JSON ``data``.

    Declare typed application errors as subclasses with a code and fields::

        class UserNotFound(RPCError, code="users.NotFound"):
            uid: int

    A handler raises ``UserNotFound(uid=7)``; the client re-raises it as
    ``UserNotFound`` with ``.uid == 7`` (the class must be imported on the
    client side too; otherwise it arrives as a plain ``RPCError`` with the
    same ``code`` and ``data``).

    Args:
        message: what went wrong, for people (defaults to the class docstring's
            first line, or the code).
        data: free JSON data, for classes without declared fields.
        **fields: the declared fields.

    Raises:
        pydantic.ValidationError: the fields are missing or of the wrong type.
        TypeError: fields were given to a class that declares none; or (at
            class creation) a declared field named like an attribute of
            RPCError itself (``code``, ``message``, ``data``, ``args``, a
            method): rename it.
    """

    code: ClassVar[str] = "unixrpc.Error"
    __rpc_data_model__: ClassVar[Any] = None

    def __init_subclass__(cls, *, code: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        fields = _own_fields(cls)
        for name in fields:
            if name == "code":
                raise TypeError(
                    f"{cls.__name__} declares a field 'code', which RPCError reserves for the error "
                    f'code: write class {cls.__name__}(RPCError, code="...") or rename the field'
                )
            if name in _RESERVED_FIELDS or hasattr(RPCError, name):
                raise TypeError(
                    f"{cls.__name__} declares a field {name!r}, a name RPCError uses itself "
                    "(code, message, data, args and its methods): rename the field"
                )
        if code is not None:
            cls.code = code
            _ERROR_CLASSES[code] = cls
        if fields:
            from pydantic import create_model

            cls.__rpc_data_model__ = create_model(f"{cls.__name__}Data", **fields)
        else:
            cls.__rpc_data_model__ = None

    def __init__(self, message: str | None = None, *, data: Any = None, **fields: Any) -> None:
        model = type(self).__rpc_data_model__
        if model is not None:
            validated = model(**fields)
            for name in type(validated).model_fields:
                setattr(self, name, getattr(validated, name))
            self._rpc_fields = validated  # re-encoded on the wire (FD fields need a frame)
            data = validated.model_dump(mode="json")
        elif fields:
            raise TypeError(f"{type(self).__name__} declares no fields, got {sorted(fields)}")
        if message is None:
            doc = (type(self).__doc__ or "").strip().splitlines()
            message = doc[0] if doc and type(self).__doc__ is not RPCError.__doc__ else self.code
        super().__init__(message)
        self.message = message
        self.data = data

    def __str__(self) -> str:
        # "No such user. [users.NotFound] (uid=7)"; a class without a
        # docstring has its code as message: "users.NotFound (uid=7)"
        text = self.message if self.message == self.code else f"{self.message} [{self.code}]"
        model = type(self).__rpc_data_model__
        if model is not None:
            shown = ", ".join(f"{name}={getattr(self, name, None)!r}" for name in model.model_fields)
            text = f"{text} ({shown})"
        return text

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, message={self.message!r}, data={self.data!r})"

    def __reduce__(self) -> Any:
        return (_rebuild_error, (type(self), self.code, self.message, self.data))

    @classmethod
    def from_wire(cls, code: str, message: str, data: Any, *, context: Any = None) -> RPCError:
        """The exception for an error object received from the peer: the
        registered class for *code* if there is one and *data* fits its fields,
        else a plain :class:`RPCError` carrying *code*."""
        klass = _ERROR_CLASSES.get(code)
        if klass is not None:
            error = klass.__new__(klass)
            model = klass.__rpc_data_model__
            try:
                if model is not None:
                    validated = model.model_validate(data if data is not None else {}, context=context)
                    for name in type(validated).model_fields:
                        setattr(error, name, getattr(validated, name))
            except Exception:  # the peer's data does not fit our class: keep it raw
                pass
            else:
                Exception.__init__(error, message)
                error.message, error.data = message, data
                return error
        error = RPCError.__new__(RPCError)
        Exception.__init__(error, message)
        error.message, error.data = message, data
        if code != RPCError.code:
            error.code = code  # type: ignore[misc]
        return error


def _rebuild_error(cls: type[RPCError], code: str, message: str, data: Any) -> RPCError:
    return RPCError.from_wire(code, message, data) if cls is RPCError else cls.from_wire(code, message, data)


class MethodNotFoundError(RPCError, code="unixrpc.MethodNotFound"):
    """The server has no method of that name."""


class InvalidParamsError(RPCError, code="unixrpc.InvalidParams"):
    """The call's parameters failed validation on the server; ``data`` holds
    pydantic's error list."""


class InternalError(RPCError, code="unixrpc.InternalError"):
    """The handler raised an exception that is not an RPCError. No traceback
    crosses the wire unless the server opts in (``expose_tracebacks=True``)."""


class PermissionDeniedError(RPCError, code="unixrpc.PermissionDenied"):
    """The server's authorization hook refused the call."""


class ServerBusyError(RPCError, code="unixrpc.Busy"):
    """The server refused the call or connection because of a limit (calls in
    flight, connections), or because it is shutting down."""


class ServerShuttingDownError(ServerBusyError, code="unixrpc.ShuttingDown"):
    """The server is shutting down: it refused a new call, ended a stream, or
    cut a call that did not finish within its shutdown grace period (also
    raised by every later call on the connection). Connect again once it is
    back (socket activation starts it on the next connect)."""


class ProtocolViolationError(RPCError, code="unixrpc.ProtocolError"):
    """The peer sent a frame that is not a valid envelope; the frame was
    dropped and the connection stays usable."""


class CallCancelledError(RPCError, code="unixrpc.Cancelled"):
    """The server cancelled the call because the client asked it to."""


class SocketActivationError(Error, ValueError):
    """A socket to serve cannot be taken from where it was said to be: systemd's
    socket-activation variables (``LISTEN_FDS``, ``LISTEN_PID``,
    ``LISTEN_FDNAMES``) are missing, malformed or meant for another process, no
    passed socket has the requested name, or a passed or handed-over socket is
    not a listening ``AF_UNIX`` ``SOCK_STREAM`` socket. The message says which,
    and what to change (usually in the ``.socket`` unit)."""
