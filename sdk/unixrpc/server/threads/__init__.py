"""The threads engine: the server on blocking sockets and threads, no
event loop (``server.serve_forever(path, backend="threads")``). Imports
nothing of the anyio engine."""

from .engine import ThreadEngine

__all__ = ["ThreadEngine"]
