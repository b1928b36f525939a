"""unixrpc: typed RPC between Python programs and local daemons over Unix stream sockets.

This module defines nothing: it re-exports the public API from the modules
that own it. ``__all__`` is the public API (a test checks it).
"""

from .address import UnixSocketAddress
from .ancillary import SCMCredentials, SCMRights, SocketAncillary, UnixCredentials
from .client import AsyncClient, AsyncStreamCall, Client, ConnectionState, ReconnectPolicy, StreamCall
from .daemon import listen_fds, notify
from .exceptions import (
    AncillaryDataTruncatedError,
    CallCancelledError,
    CallInterruptedError,
    CallNotRunError,
    CallOutcomeUnknownError,
    ClientClosedError,
    ConnectError,
    ConnectionBrokenError,
    ConnectTimeoutError,
    DeserializeError,
    Error,
    FrameTooLargeError,
    IncrementalDeserializeError,
    InternalError,
    InvalidParamsError,
    InvalidResultError,
    LocalProtocolError,
    MethodNotFoundError,
    OversizedFrameError,
    PermissionDeniedError,
    ProtocolViolationError,
    RemoteProtocolError,
    RPCError,
    SerializeError,
    ServerBusyError,
    ServerShuttingDownError,
    SocketActivationError,
    SocketNotFoundError,
    SocketPermissionError,
    SocketRefusedError,
    StreamProtocolParseError,
)
from .fds import FD, FileDescriptor
from .methods import Method, StreamMethod
from .peer import Peer
from .protocol import StreamProtocol
from .serializers import (
    AbstractFramedPacketSerializer,
    AbstractIncrementalPacketSerializer,
    AbstractPacketSerializer,
    JSONSerializer,
    LengthPrefixedSerializer,
    PydanticSerializer,
)
from .server import Allow, CallContext, Server
from .shared_buffer import SharedBuffer
from .transport import AsyncUnixStreamClient, SocketProxy, UnixStreamClient
from .untyped import JSONReply

__version__ = "0.1.0"

__all__ = [
    "Allow",
    "Peer",
    "ConnectError",
    "ConnectTimeoutError",
    "Error",
    "JSONReply",
    "SocketNotFoundError",
    "SocketPermissionError",
    "SocketRefusedError",
    "FD",
    "FileDescriptor",
    "SharedBuffer",
    "AsyncClient",
    "AsyncStreamCall",
    "CallCancelledError",
    "CallInterruptedError",
    "CallNotRunError",
    "CallOutcomeUnknownError",
    "CallContext",
    "Client",
    "ConnectionState",
    "InternalError",
    "InvalidParamsError",
    "InvalidResultError",
    "LocalProtocolError",
    "Method",
    "MethodNotFoundError",
    "PermissionDeniedError",
    "ProtocolViolationError",
    "RPCError",
    "ReconnectPolicy",
    "RemoteProtocolError",
    "Server",
    "ServerBusyError",
    "ServerShuttingDownError",
    "StreamCall",
    "StreamMethod",
    "AbstractFramedPacketSerializer",
    "AbstractIncrementalPacketSerializer",
    "AbstractPacketSerializer",
    "AncillaryDataTruncatedError",
    "AsyncUnixStreamClient",
    "ClientClosedError",
    "ConnectionBrokenError",
    "DeserializeError",
    "FrameTooLargeError",
    "IncrementalDeserializeError",
    "JSONSerializer",
    "LengthPrefixedSerializer",
    "OversizedFrameError",
    "PydanticSerializer",
    "SCMCredentials",
    "SCMRights",
    "SerializeError",
    "SocketAncillary",
    "SocketProxy",
    "StreamProtocol",
    "StreamProtocolParseError",
    "UnixCredentials",
    "UnixSocketAddress",
    "UnixStreamClient",
    "SocketActivationError",
    "listen_fds",
    "notify",
]
