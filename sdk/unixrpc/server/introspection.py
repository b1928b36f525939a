"""The methods every server answers about itself: ``unixrpc.Describe`` (the
interface document) and ``unixrpc.Ping`` (name and version).

Owns the reserved methods and their handlers; the document itself is made
by :mod:`unixrpc.interface`. They are served like any other method, so the
server's ``authorize`` hook sees them too (a daemon may refuse to describe
itself to some uids); ``Server(introspection=False)`` leaves them out.
No event loop here: the handlers are plain coroutines that never wait.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel

from ..interface import openrpc_document
from ..methods import Method

if TYPE_CHECKING:
    from .server import Server

__all__ = ["RESERVED_PREFIX", "Describe", "Ping", "PingReply", "install", "interface_document"]

#: method names (and error codes) starting with this belong to the library
RESERVED_PREFIX = "unixrpc."


class Describe(Method[dict[str, Any]], name="unixrpc.Describe"):
    """The server's interface document: OpenRPC, with every method it serves
    (the reserved ``unixrpc.*`` ones excepted), their params, results, file
    descriptors and typed errors."""

    __rpc_reserved__: ClassVar[bool] = True


class PingReply(BaseModel):
    """What ``unixrpc.Ping`` answers."""

    name: str | None
    version: str | None


class Ping(Method[PingReply], name="unixrpc.Ping"):
    """Answers at once with the server's name and version: is it there, and which is it."""

    __rpc_reserved__: ClassVar[bool] = True


def interface_document(server: Server) -> dict[str, Any]:
    """The OpenRPC document of *server*'s methods, the reserved ones left out."""
    specs = [
        spec for spec in server.methods.values() if not getattr(spec.method_class, "__rpc_reserved__", False)
    ]
    return openrpc_document(
        specs,
        title=server.name or "unixrpc server",
        version=server.version or "0.0.0",
        description=server.description,
    )


def install(server: Server) -> None:
    """Serve the reserved methods on *server*."""
    cache: dict[str, Any] = {}

    def describe(request: Describe) -> dict[str, Any]:  # plain: the threads engine needs no loop
        key = tuple(server.methods)  # a method added since the last call: describe again
        if cache.get("key") != key:
            cache["document"] = interface_document(server)
            cache["key"] = key
        return cache["document"]  # type: ignore[no-any-return]

    def ping(request: Ping) -> PingReply:
        return PingReply(name=server.name, version=server.version)

    server._add_reserved(Describe, describe)
    server._add_reserved(Ping, ping)
