"""Varlink (https://varlink.org) for unixrpc: interface descriptions both
ways (:mod:`.idl`), pydantic method classes generated from them
(:mod:`.codegen`), and typed clients of any varlink service (:mod:`.client`).
The server side is a codec of the server core (``_core/server/varlink.py``).
docs/varlink.md has the mapping.
"""

from .idl import VarlinkSyntaxError, VarlinkTypeError, describe, parse

__all__ = ["VarlinkSyntaxError", "VarlinkTypeError", "describe", "parse"]
