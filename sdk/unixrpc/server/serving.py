"""How a :class:`~unixrpc.Server` comes to serve, apart from the engines:
the sockets it serves (bound here, handed over, or passed by systemd), the
signals a blocking ``serve_forever`` answers, journal logging by default,
and the one error a task group wrapped. Functions used by ``server.py``.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Final

from .._core.server.wires import VARLINK
from ..address import UnixAddressLike
from .binding import BoundListener, bind_listener

if TYPE_CHECKING:
    from .server import Server

__all__ = [
    "VARLINK_FDNAME",
    "journal_logging_by_default",
    "listeners_for",
    "signals_shut_down",
    "unwrap",
]

logger = logging.getLogger("unixrpc.server")


#: the ``LISTEN_FDNAMES`` name (``FileDescriptorName=``) of activated sockets that speak varlink only
VARLINK_FDNAME: Final = "varlink"


def listeners_for(
    address: UnixAddressLike | None,
    listener: socket.socket | None,
    listen_name: str | None,
    mode: int,
    group: int | str | None,
    varlink: UnixAddressLike | socket.socket | None = None,
) -> list[BoundListener]:
    """The sockets to serve: *listener* (handed over), *address* (the
    socket systemd passed for it, else bound here), the sockets systemd
    passed by *listen_name*, or, with none of these, every socket systemd
    passed; and *varlink*, a socket (handed over) or an address (as
    *address*) that speaks varlink only. They combine. Sockets systemd
    passed under the name ``varlink`` speak varlink only, the others both
    wires (chosen per connection by its first byte)."""
    # systemd's side of it (LISTEN_FDS) lives with the daemon plumbing, which imports binding
    from ..daemon.activation import adopt_listener, inherited_listener_at, inherited_listeners

    listeners: list[BoundListener] = []

    def at(where: UnixAddressLike) -> BoundListener:
        inherited = inherited_listener_at(where)
        return inherited if inherited is not None else bind_listener(where, mode=mode, group=group)

    try:
        if listener is not None:
            listeners.append(adopt_listener(listener))
        if address is not None:
            listeners.append(at(address))
        if varlink is not None:
            only = adopt_listener(varlink) if isinstance(varlink, socket.socket) else at(varlink)
            only.wire = VARLINK
            listeners.append(only)
        if listen_name is not None or not listeners:
            listeners.extend(inherited_listeners(listen_name))
    except BaseException:
        for taken in listeners:
            taken.close()
        raise
    for bound in listeners:
        if bound.name == VARLINK_FDNAME:
            bound.wire = VARLINK
    return listeners


def journal_logging_by_default() -> None:
    """Under systemd (stderr is the ``JOURNAL_STREAM``), a daemon that set up
    no logging of its own gets the default handler, with ``<N>`` priority
    prefixes so journald keeps the levels (``unixrpc.daemon.install_daemon_logging``)."""
    from ..daemon.logs import install_daemon_logging, stream_is_journal

    if not logging.getLogger().handlers and stream_is_journal():
        install_daemon_logging()


def unwrap(group: BaseExceptionGroup[Any]) -> BaseException:
    """The one exception inside *group* (task groups wrap what serving
    raised), or the group itself when it holds several."""
    leaves: list[BaseException] = []

    def collect(error: BaseException) -> None:
        if isinstance(error, BaseExceptionGroup):
            for inner in error.exceptions:
                collect(inner)
        else:
            leaves.append(error)

    collect(group)
    return leaves[0] if len(leaves) == 1 else group


@contextlib.contextmanager
def signals_shut_down(server: Server) -> Iterator[None]:
    """SIGTERM and SIGINT shut *server* down gracefully, a second one at
    once; SIGHUP runs ``on_reload``, or is logged and ignored without one;
    only in the main thread (the only one where Python runs signal
    handlers). The previous handlers are restored afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def on_signal(signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if received:
            logger.warning("received %s again: cancelling what is left", name)
            server.shutdown(grace=0)
        else:
            logger.info("received %s: shutting down", name)
            server.shutdown()
        received.append(signum)

    previous = {signum: signal.signal(signum, on_signal) for signum in (signal.SIGTERM, signal.SIGINT)}

    def on_hangup(signum: int, frame: Any) -> None:
        # never the default action (exit 129 with calls in flight and a stale socket)
        if server.on_reload is None:
            logger.warning("received SIGHUP: ignored (no on_reload hook to run; stop with SIGTERM)")
            return
        logger.info("received SIGHUP: reloading")
        server.reload()

    previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, on_hangup)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
