"""What an engine needs of a :class:`~unixrpc.Server`, frozen when serving
starts (:class:`ServerConfig`): engines read this and nothing of the
``Server`` itself but its public methods (``shutdown``), so a limit is held
once (:class:`.._core.server.ServerRules` for the connections' rules) and
an engine never reaches into the facade.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from .._core.server import ServerRules
from ..protocol import StreamProtocol
from .anyio.handler_threads import HandlerThreads

__all__ = ["ServerConfig"]


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """The server as its engines see it (built by ``Server`` at serve time).

    Attributes:
        rules: what every connection obeys (methods, limits, timeouts, budget).
        protocol: the framing of the raw transports the engines read with.
        ancillary_bufsize: control-message room for one read's descriptors.
        authorize: the authorization hook, or None.
        max_connections, max_connections_per_uid: as given (None: derived
            from the descriptor limit by :func:`.kit.connection_limits`).
        max_threads_per_connection: the threads engine's per-connection cap.
        max_threads: the threads engine's server-wide budget of threads
            beyond each connection's first two (the anyio engine's handler
            pool has the same size, through *handler_threads*).
        shutdown_grace: seconds calls in flight get on shutdown.
        connection_ids: numbers for new connections.
        handler_threads: the pool that runs plain ``def`` handlers (anyio engine).
        has_async_handlers: whether any handler is ``async def`` (the threads
            engine starts its event-loop thread with the server).
        varlink_protocol: the framing of a connection the core says speaks
            varlink (``ServerConnection.choose_wire``); None: the server
            speaks unixrpc only, and the engines look at no first byte.
    """

    rules: ServerRules
    protocol: StreamProtocol[Any, Any]
    ancillary_bufsize: int
    authorize: Callable[..., Any] | None
    max_connections: int | None
    max_connections_per_uid: int | None
    max_threads_per_connection: int
    max_threads: int
    shutdown_grace: float
    connection_ids: Iterator[int]
    handler_threads: Callable[[], HandlerThreads]
    has_async_handlers: bool
    varlink_protocol: StreamProtocol[Any, Any] | None = None
