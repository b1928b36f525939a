"""The key-value store's interface, shared by the daemon (kvstore.py) and its
clients (kvctl.py): the methods and the error, nothing else."""

from __future__ import annotations

from unixrpc import Method, RPCError


class Get(Method[str], name="kv.Get"):
    key: str


class Set(Method[None], name="kv.Set"):
    key: str
    value: str


class Delete(Method[bool], name="kv.Delete"):
    """Remove *key*; True if it was there."""

    key: str


class Keys(Method[list[str]], name="kv.Keys"):
    prefix: str = ""


class KeyNotFound(RPCError, code="kv.KeyNotFound"):
    """No value is stored under that key."""

    key: str
