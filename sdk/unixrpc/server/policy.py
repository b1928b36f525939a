"""Allow: the declarative access policy a daemon writes, and its resolution
into the numbers the core checks (:mod:`.._core.access`).

A policy is given server-wide (``Server(policy=Allow(...))``) and per method
(``@server.method(Restart, allow=Allow(...))``); user and group names are
looked up (``pwd``, ``grp``) when the server starts serving, so a name that
does not exist fails the start with a clear error, and a module that
declares a policy imports on a machine without those users.

No I/O beyond the name lookups; no event loop.
"""

from __future__ import annotations

import grp
import pwd
from collections.abc import Iterable, Mapping

from .._core.access import AccessRule, AccessTable

__all__ = ["Allow", "access_table"]

_Names = int | str | Iterable[int | str]


def _as_tuple(what: str, value: _Names) -> tuple[int | str, ...]:
    items: tuple[object, ...] = (value,) if isinstance(value, int | str) else tuple(value)
    for item in items:
        if isinstance(item, bool) or not isinstance(item, int | str):
            raise TypeError(f"Allow({what}=...) takes names and numbers, got {item!r}")
        if isinstance(item, int) and item < 0:
            raise ValueError(f"Allow({what}=...): ids are not negative, got {item}")
        if isinstance(item, str) and not item:
            raise ValueError(f"Allow({what}=...): an empty name")
    return items  # type: ignore[return-value]


class Allow:
    """Who may call: users (names or uids) and members of groups (names or
    gids), or everyone. ``Allow(users="root", groups=["wheel", 4])`` lets
    root and the members of ``wheel`` and gid 4 in; the rest are answered
    ``PermissionDeniedError`` and the denial is logged at INFO.

    A process is a member of a group when it is its primary gid or one of
    its supplementary groups, as the kernel gave them when it connected
    (``SO_PEERGROUPS``: the groups the process really has, which a service
    that dropped its groups does not, whatever ``/etc/group`` says). Names
    are looked up when the server starts serving.

    Args:
        users: user names or uids (one, or an iterable).
        groups: group names or gids (one, or an iterable).
        everyone: allow every peer (for a public method in a server whose
            policy is narrower).

    Raises:
        TypeError: a user or group that is neither a name nor a number.
        ValueError: nobody is allowed (no users, no groups, not everyone),
            or a negative id or an empty name.
    """

    __slots__ = ("everyone", "groups", "users")

    def __init__(self, *, users: _Names = (), groups: _Names = (), everyone: bool = False) -> None:
        self.users = _as_tuple("users", users)
        self.groups = _as_tuple("groups", groups)
        self.everyone = bool(everyone)
        if not (self.users or self.groups or self.everyone):
            raise ValueError(
                "Allow() lets nobody in: give users=, groups= or everyone=True "
                "(to serve a method to nobody, don't register it)"
            )

    def __repr__(self) -> str:
        if self.everyone:
            return "Allow(everyone=True)"
        parts = [f"users={list(self.users)!r}"] if self.users else []
        parts += [f"groups={list(self.groups)!r}"] if self.groups else []
        return f"Allow({', '.join(parts)})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Allow):
            return NotImplemented
        return (self.users, self.groups, self.everyone) == (other.users, other.groups, other.everyone)

    def __hash__(self) -> int:
        return hash((self.users, self.groups, self.everyone))

    def resolve(self) -> AccessRule:
        """The rule with names looked up.

        Raises:
            ValueError: a user or group name this system does not know.
        """
        if self.everyone:
            return AccessRule(everyone=True, shown="everyone")
        uids: set[int] = set()
        gids: set[int] = set()
        shown: list[str] = []
        for user in self.users:
            if isinstance(user, str):
                try:
                    uid = pwd.getpwnam(user).pw_uid
                except KeyError:
                    raise ValueError(
                        f"the access policy names user {user!r}, which does not exist on this system: "
                        "create it, or give its uid"
                    ) from None
                shown.append(f"user {user} (uid {uid})")
            else:
                uid = user
                shown.append(f"uid {uid}")
            uids.add(uid)
        for group in self.groups:
            if isinstance(group, str):
                try:
                    gid = grp.getgrnam(group).gr_gid
                except KeyError:
                    raise ValueError(
                        f"the access policy names group {group!r}, which does not exist on this system: "
                        "create it, or give its gid"
                    ) from None
                shown.append(f"group {group} (gid {gid})")
            else:
                gid = group
                shown.append(f"gid {gid}")
            gids.add(gid)
        return AccessRule(frozenset(uids), frozenset(gids), shown=", ".join(shown))


def access_table(default: Allow | None, methods: Mapping[str, Allow]) -> AccessTable | None:
    """The table the core checks, names looked up now; None when there is
    no policy at all (every call goes through, at no cost).

    Raises:
        ValueError: a user or group name this system does not know.
    """
    if default is None and not methods:
        return None
    return AccessTable(
        None if default is None else default.resolve(),
        {name: allow.resolve() for name, allow in methods.items()},
    )
