"""The client side of the protocol, without I/O (see ``connection.py``).

``connection.py`` owns the per-connection rules (ids, routing, descriptors,
credit, the broken state, what a failed write means); ``calls.py`` the call
options (timeouts, the cancel-send limit); ``errors.py`` what callers raise;
``interface.py`` the narrow face the shells (``unixrpc.client``) use, where a
reconnecting session can later sit.
"""

from .calls import CANCEL_SEND_LIMIT, DEFAULT, DEFAULT_STREAM_WINDOW, CallSlot, Default, Message, Timeout
from .connection import ClientConnection
from .interface import ClientCore

__all__ = [
    "CANCEL_SEND_LIMIT",
    "DEFAULT",
    "DEFAULT_STREAM_WINDOW",
    "CallSlot",
    "ClientConnection",
    "ClientCore",
    "Default",
    "Message",
    "Timeout",
]
