"""The raw Unix stream clients (sync and async): sockets, locks, sendmsg/recvmsg.

Also what other packages of unixrpc use of the socket layer:
``connect_error`` (a failed connect explained) and ``peer_credentials``
(``SO_PEERCRED``, or ``getpeereid`` elsewhere)."""

from ._common import SocketProxy, connect_error, peer_credentials
from .async_client import AsyncUnixStreamClient
from .sync_client import UnixStreamClient

__all__ = ["AsyncUnixStreamClient", "SocketProxy", "UnixStreamClient", "connect_error", "peer_credentials"]
