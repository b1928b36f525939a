"""Introspection (unixrpc.Describe, unixrpc.Ping) and the untyped calls
(call_by_name, stream_by_name), over real sockets on every client kind."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from pydantic import BaseModel

from conftest import open_fds
from rpc_support import Events, serving, serving_in_thread
from unixrpc import (
    FD,
    AsyncClient,
    CallContext,
    Client,
    FileDescriptor,
    InvalidParamsError,
    JSONReply,
    Method,
    MethodNotFoundError,
    PermissionDeniedError,
    RPCError,
    SerializeError,
    Server,
    StreamMethod,
)
from unixrpc.interface import fd_paths, openrpc_document
from unixrpc.methods import method_spec

pytestmark = pytest.mark.anyio


class Handle(BaseModel):
    fd: FD
    size: int


class NoSuchTopic(RPCError, code="test.NoSuchTopic"):
    """That topic does not exist."""

    topic: str


class Read(Method[str], name="files.Read"):
    """Read what a descriptor holds.

    The daemon reads from the descriptor it is given, to the end.
    """

    fd: FD
    limit: int = 100


class Make(Method[Handle], name="files.Make"):
    """A pipe whose read end comes back, holding *text*."""

    text: str


class Ticks(StreamMethod[int], errors=[NoSuchTopic]):
    """n items, then the end; topic "none" does not exist."""

    n: int
    topic: str = "time"


class Files(StreamMethod[list[Handle]]):
    count: int


def build_server(events: Events, **kwargs: Any) -> Server:
    server = Server(name="test.daemon", version="2.1.0", **kwargs)

    @server.method(Read)
    def read(request: Read) -> str:
        with request.fd.open("rb") as source:
            return source.read(request.limit).decode()

    @server.method(Make)
    def make(request: Make) -> Handle:
        read_end, write_end = os.pipe()
        os.write(write_end, request.text.encode())
        os.close(write_end)
        return Handle(fd=FileDescriptor.transfer(read_end), size=len(request.text))

    @server.method(Ticks)
    async def ticks(request: Ticks) -> AsyncIterator[int]:
        if request.topic == "none":
            raise NoSuchTopic(topic=request.topic)
        try:
            for i in range(request.n):
                events.produced += 1
                yield i
                await anyio.sleep(0)
        finally:
            events.stream_closed += 1

    @server.method(Files)
    async def files(request: Files) -> AsyncIterator[list[Handle]]:
        for _ in range(request.count):
            read_end, write_end = os.pipe()
            os.close(write_end)
            yield [Handle(fd=FileDescriptor.transfer(read_end), size=0)]

    return server


class Face:
    """Client and AsyncClient behind one async face (untyped calls). The sync
    client runs in a worker thread: it refuses to block the event loop."""

    def __init__(self, kind: str, client: Any) -> None:
        self.kind, self.client = kind, client

    async def call(self, name: str, params: Any = None, **kwargs: Any) -> JSONReply:
        if self.kind == "sync":
            box: list[JSONReply] = []  # (a worker thread keeps what its last job returned)
            await anyio.to_thread.run_sync(
                lambda: box.append(self.client.call_by_name(name, params, **kwargs))
            )
            return box.pop()
        return await self.client.call_by_name(name, params, **kwargs)  # type: ignore[no-any-return]

    async def stream(
        self, name: str, params: Any = None, limit: int | None = None, **kwargs: Any
    ) -> list[JSONReply]:
        items: list[JSONReply] = []
        if self.kind == "sync":

            def run() -> None:
                with self.client.stream_by_name(name, params, **kwargs) as stream:
                    for item in stream:
                        items.append(item)
                        if limit is not None and len(items) >= limit:
                            break

            await anyio.to_thread.run_sync(run)
        else:
            async with self.client.stream_by_name(name, params, **kwargs) as stream:
                async for item in stream:
                    items.append(item)
                    if limit is not None and len(items) >= limit:
                        break
        return items


@asynccontextmanager
async def daemon(
    kind: str, sock_dir: str, events: Events | None = None, **kwargs: Any
) -> AsyncIterator[Face]:
    server = build_server(events or Events(), **kwargs)
    path = os.path.join(sock_dir, "d.sock")
    if kind == "sync":
        with serving_in_thread(server, path), Client(path, timeout=10) as client:
            yield Face(kind, client)
    else:
        async with serving(server, path), AsyncClient(path, timeout=10) as client:
            yield Face(kind, client)


@pytest.mark.server
async def test_describe_returns_the_interface_document(client_kind: str, sock_dir: str) -> None:
    async with daemon(client_kind, sock_dir) as client:
        reply = await client.call("unixrpc.Describe")
    document = reply.value
    assert reply.fds == []
    assert document["openrpc"] == "1.3.2"
    assert document["info"] == {"title": "test.daemon", "version": "2.1.0"}
    methods = {entry["name"]: entry for entry in document["methods"]}
    assert list(methods) == ["Files", "Ticks", "files.Make", "files.Read"]  # sorted, reserved ones left out
    read = methods["files.Read"]
    assert read["summary"] == "Read what a descriptor holds."
    assert "to the end" in read["description"]
    assert read["paramStructure"] == "by-name"
    assert read["params"] == [
        {
            "name": "fd",
            "required": True,
            "schema": {
                "description": "index into the file descriptors of this frame",
                "minimum": 0,
                "type": "integer",
                "x-unixrpc-fd": True,
            },
            "description": "index into the file descriptors of this frame",
        },
        {"name": "limit", "required": False, "schema": {"default": 100, "type": "integer"}},
    ]
    assert read["result"] == {"name": "result", "schema": {"type": "string"}}
    assert read["x-unixrpc-fds"] == {"params": ["fd"]}
    assert methods["files.Make"]["x-unixrpc-fds"] == {"result": ["fd"]}
    assert methods["files.Make"]["result"]["schema"] == {"$ref": "#/components/schemas/Handle"}
    assert methods["Files"]["x-unixrpc-fds"] == {"item": ["[].fd"]}
    ticks = methods["Ticks"]
    assert ticks["x-unixrpc-stream"] is True
    assert ticks["result"]["name"] == "item"
    assert ticks["x-unixrpc-errors"] == [
        {
            "code": "test.NoSuchTopic",
            "message": "That topic does not exist.",
            "data": {"$ref": "#/components/schemas/NoSuchTopicData"},
        }
    ]
    schemas = document["components"]["schemas"]
    assert set(schemas) == {"Handle", "NoSuchTopicData"}  # method classes become params lists
    assert schemas["NoSuchTopicData"]["required"] == ["topic"]


@pytest.mark.server
async def test_ping(client_kind: str, sock_dir: str) -> None:
    async with daemon(client_kind, sock_dir) as client:
        reply = await client.call("unixrpc.Ping")
    assert reply.value == {"name": "test.daemon", "version": "2.1.0"}


@pytest.mark.server
async def test_introspection_can_be_turned_off(client_kind: str, sock_dir: str) -> None:
    async with daemon(client_kind, sock_dir, introspection=False) as client:
        with pytest.raises(MethodNotFoundError):
            await client.call("unixrpc.Describe")
        with pytest.raises(MethodNotFoundError):
            await client.call("unixrpc.Ping")


@pytest.mark.server
async def test_introspection_goes_through_authorize(client_kind: str, sock_dir: str) -> None:
    seen: list[tuple[str, str]] = []

    def authorize(context: CallContext, request: Any) -> bool:
        seen.append((context.method, type(request).__name__))
        return context.method != "unixrpc.Describe"

    async with daemon(client_kind, sock_dir, authorize=authorize) as client:
        with pytest.raises(PermissionDeniedError):
            await client.call("unixrpc.Describe")
        assert (await client.call("unixrpc.Ping")).value["name"] == "test.daemon"
    assert seen == [("unixrpc.Describe", "Describe"), ("unixrpc.Ping", "Ping")]


def test_reserved_names_are_refused_and_the_document_needs_no_socket() -> None:
    class Mine(Method[int], name="unixrpc.Mine"):
        pass

    server = Server()
    with pytest.raises(TypeError, match="reserved for the library"):
        server.add_method(Mine, lambda request: 1)
    assert set(server.methods) == {"unixrpc.Describe", "unixrpc.Ping"}
    assert server.interface_document() == {
        "openrpc": "1.3.2",
        "info": {"title": "unixrpc server", "version": "0.0.0"},
        "methods": [],
    }
    assert set(Server(introspection=False).methods) == set()


def test_describe_sees_methods_added_later() -> None:
    server = build_server(Events())
    before = {entry["name"] for entry in server.interface_document()["methods"]}

    class Late(Method[None]):
        pass

    server.add_method(Late, lambda request: None)
    after = {entry["name"] for entry in server.interface_document()["methods"]}
    assert after - before == {"Late"}


def test_fd_paths_walks_nested_values() -> None:
    class Inner(BaseModel):
        fd: FD

    class Outer(BaseModel):
        one: Inner
        many: list[Inner]
        named: dict[str, FD]
        maybe: FD | None = None

    class Get(Method[Outer]):
        pass

    document = openrpc_document([method_spec(Get)], title="t", version="1")
    schemas = document["components"]["schemas"]
    assert sorted(fd_paths(document["methods"][0]["result"]["schema"], schemas)) == [
        "many[].fd",
        "maybe",
        "named{}",
        "one.fd",
    ]


# -- untyped calls ------------------------------------------------------------------


@pytest.mark.server
async def test_call_by_name_plain_json(client_kind: str, sock_dir: str) -> None:
    async with daemon(client_kind, sock_dir) as client:
        with pytest.raises(MethodNotFoundError, match=r"did you mean 'files\.Read'"):
            await client.call("files.Raed", {})
        with pytest.raises(
            InvalidParamsError, match=r"invalid params for files\.Make: text: required, not given"
        ):
            await client.call("files.Make", {})
        with pytest.raises(TypeError, match="params must be a JSON object"):
            await client.call("files.Make", [1, 2])
        with pytest.raises(SerializeError):
            await client.call("files.Make", {"text": object()})
        # unknown params are ignored by the daemon (the evolution rule)
        with await client.call("files.Make", {"text": "x", "future_option": True}) as reply:
            assert reply.value == {"fd": 0, "size": 1}


@pytest.mark.server
async def test_call_by_name_sends_and_receives_fds(client_kind: str, sock_dir: str, no_fd_leak: None) -> None:
    async with daemon(client_kind, sock_dir) as client:
        read_end, write_end = os.pipe()
        try:
            os.write(write_end, b"through a pipe")
            os.close(write_end)
            reply = await client.call("files.Read", {"fd": 0, "limit": 7}, fds=[read_end])
            assert reply == JSONReply("through")
            assert reply.fds == []
        finally:
            os.close(read_end)  # borrowed: still ours
        with await client.call("files.Make", {"text": "made here"}) as made:
            assert made.value == {"fd": 0, "size": 9}
            assert len(made.fds) == 1
            with made.fds[made.value["fd"]].open("rb") as source:
                assert source.read() == b"made here"
        with pytest.raises(InvalidParamsError, match="fd index 0 out of range"):
            await client.call("files.Read", {"fd": 0})


@pytest.mark.server
async def test_stream_by_name(client_kind: str, sock_dir: str, no_fd_leak: None) -> None:
    events = Events()
    async with daemon(client_kind, sock_dir, events) as client:
        items = await client.stream("Ticks", {"n": 3})
        assert [item.value for item in items] == [0, 1, 2]
        with pytest.raises(NoSuchTopic) as info:
            await client.stream("Ticks", {"n": 3, "topic": "none"})
        assert info.value.topic == "none"
        # leaving early cancels it on the server
        items = await client.stream("Ticks", {"n": 1_000_000}, limit=2)
        assert [item.value for item in items] == [0, 1]
        with anyio.fail_after(10):
            while events.stream_closed < 2:  # the "none" topic raised before its try
                await anyio.sleep(0.01)
        assert events.produced < 1000
        received = await client.stream("Files", {"count": 2})
        assert [len(item.fds) for item in received] == [1, 1]
        assert received[0].value == [{"fd": 0, "size": 0}]
        for item in received:
            item.close()
        with pytest.raises(TypeError, match="method name must be a non-empty string"):
            await client.stream("", {})


def test_untyped_method_classes_are_cached_per_name() -> None:
    from unixrpc.untyped import untyped_call, untyped_stream

    assert type(untyped_call("a.B")) is type(untyped_call("a.B", {"x": 1}))
    assert type(untyped_call("a.B")) is not type(untyped_stream("a.B"))
    assert method_spec(type(untyped_stream("a.B"))).streaming
    before = open_fds()
    reply = JSONReply(1, [FileDescriptor(os.dup(0))])
    with reply:
        pass
    assert open_fds() == before
    assert repr(JSONReply([1])) == "JSONReply([1])"
