"""The raw Unix stream clients (sync and async): sockets, locks, sendmsg/recvmsg."""

from ._common import SocketProxy
from .async_client import AsyncUnixStreamClient
from .sync_client import UnixStreamClient

__all__ = ["AsyncUnixStreamClient", "SocketProxy", "UnixStreamClient"]
