"""The typed RPC clients: :class:`Client` (blocking, threads) and
:class:`AsyncClient` (asyncio and trio, via anyio).

Both are thin shells over the sans-IO client core (``unixrpc._core.client``),
which owns every protocol rule; they differ only in how they wait and lock.
With ``reconnect=`` a session shell (``_sync_session.py``,
``_async_session.py``; resuming streams in ``_sync_resume.py``,
``_async_resume.py``) sits above the connections, driven by the session
core (``_core/client/session.py``).
``sync.py`` and ``async_.py`` hold one shell each; ``_fds.py`` turns a
call's descriptors into ancillary data.
"""

from .._core.client import DEFAULT
from .._core.client.session import ConnectionState, ReconnectPolicy
from .async_ import AsyncClient, AsyncStreamCall
from .sync import Client, StreamCall

__all__ = [
    "DEFAULT",
    "AsyncClient",
    "AsyncStreamCall",
    "Client",
    "ConnectionState",
    "ReconnectPolicy",
    "StreamCall",
]
