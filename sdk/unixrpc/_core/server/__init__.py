"""The server side of a connection, sans-IO (see :mod:`.connection` for the
rules). Split by concept:

* :mod:`.rules`: what every connection of a server obeys, held once
  (limits, timeouts, the memory budget, admission);
* :mod:`.call`: one call in flight, the events and outcomes exchanged with
  the engine;
* :mod:`.outbox`: what a connection has to write;
* :mod:`.codec` and :mod:`.unixrpc`: the interface a wire implements, and
  the unixrpc wire;
* :mod:`.intake`, :mod:`.calltable`, :mod:`.encoding`: a request made a
  call; the calls in flight and the one way each ends (retirement,
  descriptor release); replies encoded;
* :mod:`.clocks`: deadlines and the memory charge;
* :mod:`.reception`: descriptors and frames taken in, routed by kind,
  requests admitted or refused in order;
* :mod:`.connection`: the protocol-neutral connection that ties them
  together (admission of requests, timers, budget, hang-up, outbox).

No I/O anywhere in this package (tests/test_layers.py checks).
"""

from .call import Cancel, Chunk, Close, Event, FdFrame, Grant, ServerCall
from .calltable import ITEM, NO_CREDIT, NO_ROOM, STOP, CallTable
from .codec import WireCodec
from .connection import ServerConnection
from .rules import (
    DEFAULT_MAX_STREAM_WINDOW,
    DEFAULT_MAX_UNSENT,
    Admission,
    Handler,
    MemoryBudget,
    ServerRules,
)
from .unixrpc import UnixrpcCodec

__all__ = [
    "DEFAULT_MAX_STREAM_WINDOW",
    "DEFAULT_MAX_UNSENT",
    "ITEM",
    "NO_CREDIT",
    "NO_ROOM",
    "STOP",
    "Admission",
    "CallTable",
    "Cancel",
    "Chunk",
    "Close",
    "Event",
    "FdFrame",
    "Grant",
    "Handler",
    "MemoryBudget",
    "ServerCall",
    "ServerConnection",
    "ServerRules",
    "UnixrpcCodec",
    "WireCodec",
]
