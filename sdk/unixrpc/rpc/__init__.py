"""The old home of the RPC clients, kept so that ``unixrpc.rpc`` imports
keep working: the clients live in :mod:`unixrpc.client` now (import them
from ``unixrpc``)."""

from ..client import DEFAULT, AsyncClient, AsyncStreamCall, Client, StreamCall

__all__ = ["DEFAULT", "AsyncClient", "AsyncStreamCall", "Client", "StreamCall"]
