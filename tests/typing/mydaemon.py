"""The daemon module the README's testing example imports (checked by
mypy with the docs' examples, never run)."""

from __future__ import annotations

from unixrpc import Method, Server

__all__ = ["Add", "server"]


class Add(Method[int]):
    a: int
    b: int


server = Server()


@server.method(Add)
async def add(req: Add) -> int:
    return req.a + req.b
