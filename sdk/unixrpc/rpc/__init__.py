"""The RPC clients (sync and async) and the RPC frame serializer."""

from .._core.framing import FrameSerializer
from .async_client import AsyncClient, AsyncStreamCall
from .client import DEFAULT, Client, StreamCall

__all__ = ["DEFAULT", "AsyncClient", "AsyncStreamCall", "Client", "FrameSerializer", "StreamCall"]
