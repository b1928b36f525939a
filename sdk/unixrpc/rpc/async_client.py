"""Kept for old imports: the async client lives in :mod:`unixrpc.client`."""

from ..client.async_ import AsyncClient, AsyncStreamCall

__all__ = ["AsyncClient", "AsyncStreamCall"]
