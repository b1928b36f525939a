"""Interface evolution: old clients against new daemons and new clients
against old daemons over real sockets, and unixrpc.compat's verdict on
each kind of change (docs/interfaces.md)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any, Literal

import pytest
from pydantic import BaseModel

from rpc_support import Driver, serving, serving_in_thread
from unixrpc import FD, AsyncClient, Client, Method, MethodNotFoundError, RPCError, Server, StreamMethod
from unixrpc.compat import Change, compare
from unixrpc.interface import openrpc_document
from unixrpc.methods import method_spec

pytestmark = pytest.mark.anyio


# -- version 1 and version 2 of one daemon's interface, side by side ----------------


class UserV1(BaseModel):
    uid: int
    name: str


class GetUserV1(Method[UserV1], name="users.Get"):
    uid: int


class UserV2(BaseModel):
    uid: int
    name: str
    email: str = ""  # a new result field


class Suspended(RPCError, code="users.Suspended"):
    """The user is suspended."""

    until: str


class GetUserV2(Method[UserV2], name="users.Get", errors=[Suspended]):
    uid: int
    verbose: bool = False  # a new optional param


class ListUsers(Method[list[int]], name="users.List"):  # a new method
    pass


seen_params: list[dict[str, Any]] = []


def server_v1() -> Server:
    server = Server(name="users", version="1")

    @server.method(GetUserV1)
    async def get_user(request: GetUserV1) -> UserV1:
        seen_params.append(request.model_dump())
        return UserV1(uid=request.uid, name="alice")

    return server


def server_v2() -> Server:
    server = Server(name="users", version="2")

    @server.method(GetUserV2)
    async def get_user(request: GetUserV2) -> UserV2:
        seen_params.append(request.model_dump())
        if request.uid == 13:
            raise Suspended(until="tomorrow")
        return UserV2(uid=request.uid, name="alice", email="a@example.org" if request.verbose else "")

    @server.method(ListUsers)
    async def list_users(request: ListUsers) -> list[int]:
        return [1000]

    return server


async def pair(kind: str, sock_dir: str, server: Server) -> AsyncIterator[Driver]:
    path = os.path.join(sock_dir, "v.sock")
    if kind == "sync":
        with serving_in_thread(server, path), Client(path, timeout=10) as client:
            yield Driver(kind, client)
    else:
        async with serving(server, path), AsyncClient(path, timeout=10) as client:
            yield Driver(kind, client)


@pytest.mark.server
async def test_old_client_new_server(client_kind: str, sock_dir: str) -> None:
    async for client in pair(client_kind, sock_dir, server_v2()):
        user = await client.call(GetUserV1(uid=1))
        assert user == UserV1(uid=1, name="alice")  # the new email field is ignored
        with pytest.raises(Suspended) as info:  # a new error: a plain RPCError for a client without the class
            await client.call(GetUserV1(uid=13))
        assert isinstance(info.value, RPCError)
        assert info.value.code == "users.Suspended"


@pytest.mark.server
async def test_new_client_old_server(client_kind: str, sock_dir: str) -> None:
    seen_params.clear()
    async for client in pair(client_kind, sock_dir, server_v1()):
        user = await client.call(GetUserV2(uid=1, verbose=True))  # the old daemon ignores verbose
        assert user == UserV2(uid=1, name="alice", email="")  # the missing field takes its default
        with pytest.raises(MethodNotFoundError, match=r"users\.List"):
            await client.call(ListUsers())
    assert seen_params == [{"uid": 1}]


def test_building_a_method_with_an_unknown_field_still_fails_at_once() -> None:
    with pytest.raises(ValueError, match="Extra inputs are not permitted"):
        GetUserV1(uid=1, verbose=True)  # type: ignore[call-arg]


# -- the checker ----------------------------------------------------------------------


def document(*methods: type[Any]) -> dict[str, Any]:
    return openrpc_document([method_spec(m) for m in methods], title="t", version="1")


def breaking(old: list[type[Any]], new: list[type[Any]]) -> list[str]:
    return [
        f"{c.method} {c.where}: {c.message}" for c in compare(document(*old), document(*new)) if c.breaking
    ]


def compatible(old: list[type[Any]], new: list[type[Any]]) -> list[Change]:
    changes = compare(document(*old), document(*new))
    assert [c for c in changes if c.breaking] == []
    return changes


ACCEPTS = "the daemon no longer accepts what old clients may send: "
SENDS = "old clients may not accept what the daemon now sends: "


def test_the_allowed_changes_are_compatible() -> None:
    changes = compatible([GetUserV1], [GetUserV2, ListUsers])
    assert {(c.method, c.where) for c in changes} == {
        ("users.Get", "params.verbose"),
        ("users.Get", "errors.users.Suspended"),
        ("users.Get", "result.email"),
        ("users.List", ""),
    }
    assert compatible([GetUserV1], [GetUserV1]) == []


class Wide(Method[int], name="M"):
    x: int | str
    level: Literal["a", "b", "c"] = "a"


class Narrow(Method[int], name="M"):
    x: int
    level: Literal["a", "b"] = "a"


class Required(Method[int], name="M"):
    x: int | str
    level: Literal["a", "b", "c"]


class NewRequired(Method[int], name="M"):
    x: int | str
    level: Literal["a", "b", "c"] = "a"
    y: int


class MaybeResult(Method[int | None], name="M"):
    x: int | str
    level: Literal["a", "b", "c"] = "a"


class Streamed(StreamMethod[int], name="M"):
    x: int | str
    level: Literal["a", "b", "c"] = "a"


def test_params_that_accept_less_break_and_more_does_not() -> None:
    assert breaking([Wide], [Narrow]) == [
        f'M params.level: {ACCEPTS}"c" not among "a", "b"',
        f"M params.x: {ACCEPTS}string where integer is expected",
    ]
    compatible([Narrow], [Wide])
    assert breaking([Wide], [Required]) == [
        "M params.level: optional param made required: old clients may leave it out"
    ]
    compatible([Required], [Wide])
    assert breaking([Wide], [NewRequired]) == ["M params.y: new required param: old clients do not send it"]
    assert breaking([NewRequired], [Wide]) == [
        "M params.y: param removed: old clients still send it and the daemon ignores it"
    ]


def test_results_that_send_more_break_and_less_does_not() -> None:
    assert breaking([Wide], [MaybeResult]) == [f"M result: {SENDS}null where integer is expected"]
    compatible([MaybeResult], [Wide])
    assert breaking([Wide], [Streamed]) == ["M stream: became a stream: old clients call it the other way"]
    assert breaking([Wide], []) == ["M : method removed: old clients calling it get MethodNotFound"]


class Profile(BaseModel):
    name: str
    state: Literal["on", "off"]


class ProfileMore(BaseModel):
    name: str
    state: Literal["on", "off", "unknown"]
    extra: int = 0


class ProfileLess(BaseModel):
    state: Literal["on", "off"]


class GetProfile(Method[Profile], name="P"):
    pass


class GetProfileMore(Method[ProfileMore], name="P"):
    pass


class GetProfileLess(Method[ProfileLess], name="P"):
    pass


class Holder(BaseModel):
    name: FD


class GetHolder(Method[Holder], name="P"):
    pass


class Node(BaseModel):
    value: int
    children: list[Node] = []


class GetTree(Method[Node], name="T"):
    pass


class NodeStr(BaseModel):
    value: str
    children: list[NodeStr] = []


class GetTreeStr(Method[NodeStr], name="T"):
    pass


def test_result_fields_enums_fds_and_recursion() -> None:
    assert breaking([GetProfile], [GetProfileMore]) == [
        f'P result.state: {SENDS}"unknown" not among "on", "off"'
    ]
    assert breaking([GetProfile], [GetProfileLess]) == [f"P result.name: {SENDS}required field is absent"]
    compatible([GetProfileLess], [GetProfile])
    assert breaking([GetProfile], [GetHolder]) == [
        f"P result.state: {SENDS}required field is absent",
        f"P result.name: {SENDS}the value carries a file descriptor",
    ]
    compatible([GetTree], [GetTree])
    assert breaking([GetTree], [GetTreeStr]) == [f"T result.value: {SENDS}string where integer is expected"]


def test_compare_refuses_what_is_not_a_document() -> None:
    with pytest.raises(ValueError, match="no 'methods' list"):
        compare({"openrpc": "1.3.2"}, document())
    assert (
        str(Change("M", "params.x", "new optional param", False)) == "ok       M params.x: new optional param"
    )


def notes(old: list[type[Any]], new: list[type[Any]]) -> list[str]:
    return [f"{c.method} {c.where}: {c.message}" for c in compatible(old, new)]


class Out(BaseModel):
    out: FD


class MaybeOut(BaseModel):
    out: FD | None = None


class TakeOut(Method[int], name="F"):
    out: FD


class TakeMaybeOut(Method[int], name="F"):
    out: FD | None = None


class TakeInt(Method[int], name="F"):
    out: int


class GiveOut(Method[Out], name="F"):
    pass


class GiveMaybeOut(Method[MaybeOut], name="F"):
    pass


def test_an_fd_param_made_optional_is_compatible_and_an_fd_result_made_optional_is_not() -> None:
    assert notes([TakeOut], [TakeMaybeOut]) == ["F params.out: required param made optional"]
    assert breaking([TakeMaybeOut], [TakeOut]) == [
        "F params.out: optional param made required: old clients may leave it out",
        f"F params.out: {ACCEPTS}null where integer is expected",
    ]
    assert breaking([TakeOut], [TakeInt]) == [
        f"F params.out: {ACCEPTS}the value no longer carries a file descriptor"
    ]
    assert breaking([TakeInt], [TakeOut]) == [
        f"F params.out: {ACCEPTS}the value now carries a file descriptor"
    ]
    assert breaking([GiveOut], [GiveMaybeOut]) == [f"F result.out: {SENDS}null where integer is expected"]
    compatible([GiveMaybeOut], [GiveOut])


class Account(BaseModel):
    uid: int


class AccountMore(BaseModel):
    uid: int
    shell: str = "/bin/sh"
    home: str


class AccountDefaulted(BaseModel):
    uid: int = 0


class AccountMaybe(BaseModel):
    uid: int | None = None


class GetAccount(Method[Account], name="A"):
    pass


class GetAccountMore(Method[AccountMore], name="A"):
    pass


class GetAccountDefaulted(Method[AccountDefaulted], name="A"):
    pass


class GetAccountMaybe(Method[AccountMaybe], name="A"):
    pass


def test_new_result_fields_are_reported() -> None:
    assert notes([GetAccount], [GetAccountMore]) == [
        "A result.shell: new field: old clients ignore it; new clients get its default "
        '("/bin/sh") from older daemons, which do not send it',
        "A result.home: new field: old clients ignore it; new clients fail on older daemons, "
        "which do not send it (give it a default if they must work together)",
    ]
    assert breaking([GetAccountMore], [GetAccount]) == [
        f"A result.shell: {SENDS}required field is absent",
        f"A result.home: {SENDS}required field is absent",
    ]


def test_result_fields_with_defaults_are_required_since_the_daemon_always_sends_them() -> None:
    schemas = document(GetAccountDefaulted)["components"]["schemas"]
    assert schemas["AccountDefaulted"]["required"] == ["uid"]
    assert schemas["AccountDefaulted"]["properties"]["uid"]["default"] == 0
    compatible([GetAccount], [GetAccountDefaulted])  # a default in the daemon's model: it still sends it
    compatible([GetAccountDefaulted], [GetAccount])
    assert breaking([GetAccountDefaulted], [GetAccountMaybe]) == [
        f"A result.uid: {SENDS}null where integer is expected"
    ]
    # params keep pydantic's rule: a field with a default may be left out
    params = document(Wide)["methods"][0]["params"]
    assert [(p["name"], p["required"]) for p in params] == [("x", True), ("level", False)]


class Filter(BaseModel):
    name: str
    limit: int = 10


class FilterLess(BaseModel):
    name: str


class FilterMore(BaseModel):
    name: str
    limit: int = 10
    sort: bool = False


class Search(Method[int], name="S"):
    filter: Filter


class SearchLess(Method[int], name="S"):
    filter: FilterLess


class SearchMore(Method[int], name="S"):
    filter: FilterMore


class SearchLevel(Method[int], name="S"):
    filter: Filter
    level: int = 1


class SearchLevelTwo(Method[int], name="S"):
    filter: Filter
    level: int = 2


def test_nested_param_fields_and_defaults() -> None:
    assert notes([Search], [SearchMore]) == ["S params.filter.sort: new optional field"]
    assert breaking([Search], [SearchLess]) == [
        f"S params.filter.limit: {ACCEPTS}field removed (old clients still send it; the daemon ignores it)"
    ]
    assert breaking([SearchLevel], [SearchLevelTwo]) == [
        "S params.level: default changed from 1 to 2: old clients that leave it out now mean something else"
    ]
