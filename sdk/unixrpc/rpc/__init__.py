"""The RPC clients (sync and async) and the RPC frame serializer."""

from .async_client import AsyncClient, AsyncStreamCall
from .client import DEFAULT, Client, StreamCall
from .framing import FrameSerializer

__all__ = ["DEFAULT", "AsyncClient", "AsyncStreamCall", "Client", "FrameSerializer", "StreamCall"]
