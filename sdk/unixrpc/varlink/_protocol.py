"""The sans-IO part both varlink clients share (:mod:`.client`,
:mod:`.async_client`): encoding calls, the pending-call queue that replies
are filed to in order, error mapping, descriptor checks. The rules are in
:mod:`.client`'s docstring."""

from __future__ import annotations

import array
import collections
import contextlib
import socket
from typing import Any, NamedTuple, TypeVar

import orjson
from pydantic import BaseModel

from .._core.server.varlink import wrap_field
from .._core.varlink import (
    SERVICE,
    UNIXRPC_INTERFACE,
    MessageSplitter,
    message_length,
)
from ..exceptions import (
    AncillaryDataTruncatedError,
    ClientClosedError,
    ConnectionBrokenError,
    InvalidParamsError,
    MethodNotFoundError,
    PermissionDeniedError,
    RPCError,
)
from ..fds import FdContext, FileDescriptor, serialize
from ..methods import method_spec

T = TypeVar("T")

_MSG_CMSG_CLOEXEC = int(getattr(socket, "MSG_CMSG_CLOEXEC", 0))
_READ_SIZE = 256 * 1024
_FOREVER = 365 * 86400.0  # a socket timeout that never expires (None would make the socket blocking)
_MAX_FDS = 253
_ANCILLARY = socket.CMSG_SPACE(_MAX_FDS * 4)

_STANDARD_ERRORS: dict[str, type[RPCError]] = {
    f"{SERVICE}.MethodNotFound": MethodNotFoundError,
    f"{SERVICE}.InvalidParameter": InvalidParamsError,
    f"{SERVICE}.PermissionDenied": PermissionDeniedError,
}


class VarlinkReply(NamedTuple):
    """An untyped reply: its parameters (descriptor fields hold indexes into
    *fds*) and the descriptors that came with it (yours to close)."""

    parameters: dict[str, Any]
    fds: list[FileDescriptor]


def error_from_reply(name: str, parameters: Any, fds: list[int]) -> RPCError:
    """The exception for a varlink error reply *name* with *parameters*."""
    params = parameters if isinstance(parameters, dict) else {}
    context = FdContext(list(fds)) if fds else None
    try:
        standard = _STANDARD_ERRORS.get(name)
        if standard is not None:
            detail = ", ".join(f"{key}={value!r}" for key, value in params.items())
            return standard(f"{name}({detail})" if detail else name, data=params)
        if name.startswith(UNIXRPC_INTERFACE + "."):
            code = "unixrpc." + name.rpartition(".")[2]
            message = str(params.get("message", code))
            data = {key: value for key, value in params.items() if key != "message"} or None
            return RPCError.from_wire(code, message, data)
        pydantic_context = context.pydantic_context if context is not None else None
        return RPCError.from_wire(name, name, params, context=pydantic_context)
    finally:
        if context is not None:
            context.finish()


#: what one reply of a stream is (:meth:`_Protocol.stream_reply`)
ITEM, LAST_ITEM, END = 0, 1, 2

#: why the connection is closed: a call timed out, was cancelled, or a stream was left
TIMED_OUT = (
    "a varlink call timed out: the connection was closed (varlink has no cancel), "
    "and the calls queued behind it failed"
)
CANCELLED = (
    "a varlink call was cancelled: the connection was closed (varlink has no cancel), "
    "and the calls queued behind it failed"
)
STREAM_LEFT = "a varlink stream was left before its end: the connection was closed (varlink has no cancel)"


def send_failed(exc: OSError) -> ConnectionBrokenError:
    return ConnectionBrokenError(f"sending to the varlink service failed: {exc}")


def read_failed(exc: OSError) -> ConnectionBrokenError:
    return ConnectionBrokenError(f"reading from the varlink service failed: {exc}")


class _Pending:
    """A call waiting for its replies: each is ``(parameters, error, fds)``."""

    __slots__ = ("done", "expects_fds", "final", "replies", "streaming")

    def __init__(self, streaming: bool, expects_fds: bool) -> None:
        self.streaming = streaming
        self.expects_fds = expects_fds
        self.replies: collections.deque[tuple[Any, str | None, list[int]]] = collections.deque()
        self.done = False  # nothing more will come (its final reply, or the connection broke)
        self.final = False  # its final reply came

    @property
    def last_taken(self) -> bool:
        """The reply just taken was its final one."""
        return self.final and not self.replies


class _Protocol:
    """The client side of one varlink connection, sans-IO (see the module
    docstring). Not thread-safe: the shells lock around it."""

    def __init__(self, max_message_size: int) -> None:
        self.pending: collections.deque[_Pending] = collections.deque()
        self.splitter = MessageSplitter(max_message_size)
        self.broken: BaseException | None = None

    @staticmethod
    def encode(name: str, params: bytes, *, more: bool = False, oneway: bool = False) -> bytes:
        flags = b',"more":true' if more else (b',"oneway":true' if oneway else b"")
        return b'{"method":' + orjson.dumps(name) + b',"parameters":' + params + flags + b"}\0"

    @property
    def peek_mode(self) -> bool:
        """Read one message per recvmsg: a pending call may receive descriptors."""
        return any(pending.expects_fds for pending in self.pending)

    def received(self, data: bytes, fds: list[int]) -> None:
        """A read brought *data* and *fds*: file the replies it completes.

        Raises:
            ConnectionBrokenError: the peer broke the protocol (the caller breaks the connection).
        """
        try:
            messages = self.splitter.feed(data, len(fds))
        except ValueError as exc:
            _close(fds)
            raise ConnectionBrokenError(f"varlink peer sent {exc}") from None
        taken = 0
        for body, count in messages:
            mine, taken = fds[taken : taken + count], taken + count
            self._reply(body, mine)
        if taken < len(fds) and not self.splitter.partial:
            _close(fds[taken:])

    def _reply(self, body: bytes, fds: list[int]) -> None:
        try:
            reply = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            _close(fds)
            raise ConnectionBrokenError(f"varlink peer sent invalid JSON: {exc}") from None
        if type(reply) is not dict or not self.pending:
            _close(fds)
            what = "a reply nobody waits for" if type(reply) is dict else "a message that is no object"
            raise ConnectionBrokenError(f"varlink peer sent {what}")
        head = self.pending[0]
        error = reply.get("error")
        params = reply.get("parameters")
        if error is None and reply.get("continues") is True:
            if not head.streaming:
                _close(fds)
                raise ConnectionBrokenError("varlink peer sent continues to a call without more")
            head.replies.append((params, None, fds))
            return
        head.replies.append((params, str(error) if error is not None else None, fds))
        head.done = head.final = True
        self.pending.popleft()

    # -- the rules both shells follow, apart from how they wait and lock --------------

    @staticmethod
    def prepare(
        name: str, params: bytes, fds: FdContext | list[int] | None, *, more: bool, oneway: bool
    ) -> tuple[bytes, list[int]]:
        """A call's message and the descriptors sent with its first byte.

        Raises:
            ValueError: more descriptors than one message may carry.
        """
        outgoing = (fds if isinstance(fds, list) else [h.fileno() for h in fds.outgoing]) if fds else []
        _check_fds(outgoing)
        return _Protocol.encode(name, params, more=more, oneway=oneway), outgoing

    def expect(self, closed: bool, *, more: bool, oneway: bool, expects_fds: bool) -> _Pending | None:
        """Before a call is sent (send lock held): its place in the reply
        queue (None for a oneway call).

        Raises:
            ClientClosedError: the client is closed.
            ConnectionBrokenError (or what broke it): the connection is broken.
        """
        if closed:
            raise ClientClosedError("the varlink client is closed")
        if self.broken is not None:
            raise _copy(self.broken)
        if oneway:
            return None
        pending = _Pending(more, expects_fds)
        self.pending.append(pending)
        return pending

    def next_reply(self, pending: _Pending) -> tuple[Any, str | None, list[int]] | None:
        """*pending*'s next reply if one was filed, else None (read more).

        Raises:
            ConnectionBrokenError (or what broke it): none will come.
        """
        if pending.replies:
            return pending.replies.popleft()
        if pending.done:
            raise _copy(self.broken or ConnectionBrokenError("the varlink connection broke"))
        return None

    def read_done(self, data: bytes, fds: list[int]) -> BaseException | None:
        """A read returned *data* and *fds*: file them; the error to break the
        connection with, if it must break (the peer closed it, or broke the
        protocol)."""
        if not data:
            return ConnectionBrokenError("the varlink service closed the connection")
        try:
            self.received(data, fds)
        except ConnectionBrokenError as exc:
            return exc
        return None

    @staticmethod
    def stream_reply(pending: _Pending, reply: Any, error: str | None, fds: list[int]) -> int:
        """What one reply of a stream is: ``ITEM``, ``LAST_ITEM``, or
        ``END`` (a final reply with no item: its *fds* are closed).

        Raises:
            RPCError: the reply is an error (the stream is over).
        """
        if error is not None:
            raise error_from_reply(error, reply, fds)
        if not pending.last_taken:
            return ITEM
        if _is_end(reply):
            _close(fds)
            return END
        return LAST_ITEM

    def break_with(self, error: BaseException) -> None:
        """The connection is broken: every pending call fails with *error*."""
        if self.broken is None:
            self.broken = error
        for pending in self.pending:
            pending.done = True
        self.pending.clear()


def _close(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            socket.close(fd)


def _encode_params(method: BaseModel) -> tuple[bytes, FdContext | None]:
    """A method's parameters as JSON, with fields that are None left out:
    varlink makes an omitted optional field and a null one the same, and
    sd-varlink (systemd 252) refuses null for some of them."""
    serializer = type(method).__pydantic_serializer__
    spec = method_spec(type(method))
    data, fds = serialize(serializer, method, has_fds=spec.params_have_fds)
    if b"null" in data:
        data = orjson.dumps(_without_nulls(orjson.loads(data)))
    return data, fds


def _without_nulls(value: Any) -> Any:
    if type(value) is dict:
        return {key: _without_nulls(item) for key, item in value.items() if item is not None}
    if type(value) is list:
        return [_without_nulls(item) for item in value]
    return value


def _decode(method: type[BaseModel], params: Any, fds: list[int], streaming: bool) -> Any:
    spec = method_spec(method)
    params = params if isinstance(params, dict) else {}
    wrap = wrap_field(spec.result_type, streaming)
    value = params if wrap is None else params.get(wrap)
    context = FdContext(list(fds)) if fds else None
    try:
        kwargs = {"context": context.pydantic_context} if context is not None else {}
        return spec.result_validator.validate_python(value, **kwargs)
    finally:
        if context is not None:
            context.finish()


def _is_end(params: Any) -> bool:
    """A final reply of a stream that carries no item (unixrpc's end of stream)."""
    return params is None or params == {}


def _untyped(params: Any, fds: list[int]) -> VarlinkReply:
    return VarlinkReply(params if isinstance(params, dict) else {}, [FileDescriptor(fd) for fd in fds])


def _recv(sock: socket.socket, peek: bool, size: int) -> tuple[bytes, list[int]]:
    """One read (one message at most if *peek*); raises BlockingIOError if nothing waits."""
    if peek:
        peeked = sock.recv(size, socket.MSG_PEEK)
        if not peeked:
            return b"", []
        size = message_length(peeked) or len(peeked)
    data, ancdata, flags, _ = sock.recvmsg(size, _ANCILLARY, _MSG_CMSG_CLOEXEC)
    fds: list[int] = []
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            received = array.array("i")
            received.frombytes(payload[: len(payload) - (len(payload) % received.itemsize)])
            fds.extend(received)
    if flags & socket.MSG_CTRUNC:
        _close(fds)
        raise AncillaryDataTruncatedError(
            "control data was truncated: a varlink message carried more descriptors than fit",
            bufsize=_ANCILLARY,
            closed_fds=len(fds),
        )
    return data, fds


def _fds_cmsg(fds: list[int]) -> list[tuple[int, int, bytes]]:
    return [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())] if fds else []


def _check_fds(fds: list[int]) -> None:
    if len(fds) > _MAX_FDS:
        raise ValueError(f"a varlink message carries at most {_MAX_FDS} descriptors, got {len(fds)}")


# -- sync ----------------------------------------------------------------------------------


def _copy(error: BaseException) -> BaseException:
    """A fresh exception like *error* (one raised in several places gets several tracebacks)."""
    try:
        return type(error)(*error.args)
    except Exception:
        return ConnectionBrokenError(str(error))
