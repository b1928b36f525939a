"""Helpers for RPC tests: methods, a server with handlers for them, and ways
to run it (in the test's event loop, or in a thread for sync clients), on
the engine the test runs under (``ENGINE``, set per test by conftest: the
anyio engine, or the blocking threads engine)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import anyio
from pydantic import BaseModel

from unixrpc import CallContext, Method, RPCError, Server, StreamMethod

#: the server engine of the running test: "anyio" or "threads" (conftest sets it)
ENGINE = "anyio"


class Add(Method[int]):
    a: int
    b: int


class Sleep(Method[str]):
    """Sleeps, then answers; records that it started and whether it was cancelled."""

    seconds: float
    tag: str = ""


class Echo(Method[dict[str, object]]):
    payload: dict[str, object]


class User(BaseModel):
    uid: int
    name: str


class GetUser(Method[User], name="users.Get"):
    uid: int


class WhoAmI(Method[list[int]]):
    pass


class Fail(Method[int]):
    kind: str


class Log(Method[None]):
    line: str


class Count(StreamMethod[int]):
    n: int
    delay: float = 0.0


class UserNotFound(RPCError, code="users.NotFound"):
    uid: int


class Events:
    """What handlers saw, for assertions (shared between server and test)."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.cancelled: list[str] = []
        self.logged: list[str] = []
        self.produced = 0
        self.stream_closed = 0


def make_server(events: Events | None = None, **kwargs: object) -> Server:
    events = events if events is not None else Events()
    server = Server(**kwargs)  # type: ignore[arg-type]

    @server.method(Add)
    async def add(req: Add) -> int:
        return req.a + req.b

    @server.method(Sleep)
    async def sleep(req: Sleep) -> str:
        events.started.append(req.tag)
        try:
            await anyio.sleep(req.seconds)
        except anyio.get_cancelled_exc_class():
            events.cancelled.append(req.tag)
            raise
        return req.tag

    @server.method(Echo)
    def echo(req: Echo) -> dict[str, object]:  # a plain def: runs in a worker thread
        return req.payload

    @server.method(GetUser)
    def get_user(req: GetUser) -> User:
        if req.uid == 0:
            return User(uid=0, name="root")
        raise UserNotFound(uid=req.uid)

    @server.method(WhoAmI)
    async def whoami(req: WhoAmI, ctx: CallContext) -> list[int]:
        return [ctx.peer.pid, ctx.peer.uid, ctx.peer.gid]

    @server.method(Fail)
    async def fail(req: Fail) -> int:
        if req.kind == "value":
            raise ValueError("secret internal detail")
        if req.kind == "bad-result":
            return "not an int"  # type: ignore[return-value]
        raise RPCError("plain rpc error", data={"k": 1})

    @server.method(Log)
    async def log(req: Log) -> None:
        events.logged.append(req.line)

    @server.method(Count)
    async def count(req: Count) -> AsyncIterator[int]:
        try:
            for i in range(req.n):
                events.produced += 1
                yield i
                if req.delay:
                    await anyio.sleep(req.delay)
        finally:
            events.stream_closed += 1

    return server


@asynccontextmanager
async def serving(server: Server, path: str) -> AsyncIterator[str]:
    """Run *server* on *path* for the block: in the current event loop on the
    anyio engine, in a thread on the threads engine."""
    if ENGINE == "threads":
        with server.serve_in_thread(path, backend="threads"):
            yield path
        return
    async with anyio.create_task_group() as tg:
        await tg.start(server.serve, path)
        try:
            yield path
        finally:
            tg.cancel_scope.cancel()


@contextmanager
def serving_in_thread(server: Server, path: str, backend: str = "asyncio") -> Iterator[str]:
    """Run *server* in a thread (for sync clients): its own event loop on
    *backend*, or the threads engine when the test runs on it."""
    with server.serve_in_thread(path, backend="threads" if ENGINE == "threads" else backend):
        yield path
    assert not os.path.exists(path)


class Driver:
    """One async face for Client and AsyncClient. The sync client's calls run
    in a worker thread: a blocking call on the event loop's thread is refused
    (it would stop the loop, and the server when it runs there)."""

    def __init__(self, kind: str, client: Any) -> None:
        self.kind = kind
        self.client = client

    async def call(self, method: Any, **kwargs: Any) -> Any:
        if self.kind == "sync":
            # the result comes back in a box the test empties: a worker thread
            # keeps what its last job returned, and results may own descriptors
            box: list[Any] = []
            await anyio.to_thread.run_sync(lambda: box.append(self.client.call(method, **kwargs)))
            return box.pop()
        return await self.client.call(method, **kwargs)

    async def notify(self, method: Any) -> None:
        if self.kind == "sync":
            await anyio.to_thread.run_sync(self.client.notify, method)
        else:
            await self.client.notify(method)

    async def stream(self, method: Any, limit: int | None = None) -> list[Any]:
        items: list[Any] = []
        if self.kind == "sync":

            def run() -> None:
                with self.client.stream(method) as stream:
                    for item in stream:
                        items.append(item)
                        if limit is not None and len(items) >= limit:
                            break

            await anyio.to_thread.run_sync(run)
        else:
            async with self.client.stream(method) as stream:
                async for item in stream:
                    items.append(item)
                    if limit is not None and len(items) >= limit:
                        break
        return items
