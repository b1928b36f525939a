"""Kept for old imports: the blocking client lives in :mod:`unixrpc.client`."""

from ..client.sync import DEFAULT, Client, StreamCall

__all__ = ["DEFAULT", "Client", "StreamCall"]
