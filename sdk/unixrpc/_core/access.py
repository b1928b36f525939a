"""The access policy as the server core checks it: numbers only, names
resolved already (by :mod:`..server.policy`).

Rules this module owns (docs/daemon.md, "Access policy"):

* A rule allows a peer when it allows everyone, when the peer's uid is one
  of its uids, or when one of its gids is the peer's primary gid or one of
  its supplementary groups (as the kernel gave them at connect time; only
  the primary gid where the kernel could not tell the others).
* A method's own rule replaces the server-wide one for that method; a
  method with neither is open to whoever can connect.
* A denial is logged at INFO on ``unixrpc.server.access`` (who: pid, uid,
  gid, groups; what: the method; why: what the rule allows) and answered
  with ``PermissionDeniedError``, as an ``authorize`` denial is. It is
  checked before the params are validated, before ``authorize`` and before
  the handler.

Pure: no I/O, no name lookups; imports the standard library and our errors only.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from ..exceptions import PermissionDeniedError

__all__ = ["AccessRule", "AccessTable", "PeerFacts"]

logger = logging.getLogger("unixrpc.server.access")


class PeerFacts(Protocol):
    """What a rule looks at (a :class:`~unixrpc.Peer` has it)."""

    @property
    def pid(self) -> int: ...

    @property
    def uid(self) -> int: ...

    @property
    def gid(self) -> int: ...

    @property
    def groups(self) -> tuple[int, ...] | None: ...


@dataclass(frozen=True, slots=True)
class AccessRule:
    """Who may call: everyone, or these uids and members of these gids.

    ``shown`` says it in words, for the log and the error (``"user root
    (uid 0), group wheel (gid 10)"``).
    """

    uids: frozenset[int] = frozenset()
    gids: frozenset[int] = frozenset()
    everyone: bool = False
    shown: str = ""

    def allows(self, peer: PeerFacts) -> bool:
        """Whether *peer* may call."""
        if self.everyone or peer.uid in self.uids:
            return True
        gids = self.gids
        if not gids:
            return False
        if peer.gid in gids:
            return True
        groups = peer.groups
        return groups is not None and not gids.isdisjoint(groups)


class AccessTable:
    """The rules of one server: a server-wide one and the methods' own."""

    __slots__ = ("default", "methods")

    def __init__(self, default: AccessRule | None, methods: Mapping[str, AccessRule]) -> None:
        self.default = default
        self.methods = dict(methods)

    def rule_for(self, method: str) -> AccessRule | None:
        """The rule that applies to *method* (None: anyone who can connect)."""
        return self.methods.get(method, self.default)

    def refusal(self, method: str, peer: PeerFacts) -> PermissionDeniedError | None:
        """None if *peer* may call *method*; else the error to answer with
        (the denial is logged at INFO)."""
        rule = self.methods.get(method, self.default)
        if rule is None or rule.allows(peer):
            return None
        groups = "unknown" if peer.groups is None else ",".join(map(str, peer.groups)) or "none"
        logger.info(
            "denied %s to pid %d uid %d gid %d groups %s: the policy allows %s",
            method,
            peer.pid,
            peer.uid,
            peer.gid,
            groups,
            rule.shown,
        )
        return PermissionDeniedError(
            f"{method} is not allowed for uid {peer.uid} (pid {peer.pid}): the server's policy allows "
            f"{rule.shown}"
        )
