"""The anyio engine: the server in a running asyncio or trio event loop
(``await server.serve(path)``). Imports nothing of the threads engine."""

from .engine import AnyioEngine
from .handler_threads import HandlerThreads

__all__ = ["AnyioEngine", "HandlerThreads"]
