"""The daemon side: Server, CallContext."""

from .context import CallContext
from .server import AuthorizeHook, Server

__all__ = ["AuthorizeHook", "CallContext", "Server"]
