"""The daemon side: Server, CallContext, the access policy (Allow)."""

from .context import CallContext
from .policy import Allow
from .server import AuthorizeHook, Server

__all__ = ["Allow", "AuthorizeHook", "CallContext", "Server"]
