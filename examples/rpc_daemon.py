"""An example unixrpc daemon: typed methods, a typed error, a stream, a file
descriptor handed back, and the caller's credentials.

Run: ``python examples/rpc_daemon.py /tmp/app.sock`` (stops on SIGTERM/SIGINT).
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import AsyncIterator

import anyio
from pydantic import BaseModel

from unixrpc import FD, CallContext, FileDescriptor, Method, RPCError, Server, StreamMethod


class Add(Method[int]):
    """a + b."""

    a: int
    b: int


class User(BaseModel):
    uid: int
    name: str


class UserNotFound(RPCError, code="users.NotFound"):
    """No such user."""

    uid: int


class GetUser(Method[User], name="users.Get", errors=[UserNotFound], idempotent=True):
    """The user with this uid."""

    uid: int


class WhoAmI(Method[dict[str, int]]):
    """The caller's pid, uid and gid, as the kernel told the daemon."""


class Countdown(StreamMethod[int]):
    """start, start - 1, ... 0, one item every 10 ms."""

    start: int


class ScratchFile(BaseModel):
    fd: FD
    note: str


class OpenScratch(Method[ScratchFile]):
    """The daemon creates an anonymous file, writes a note in it and hands over the descriptor."""

    note: str


USERS = {0: User(uid=0, name="root"), 1000: User(uid=1000, name="alice")}

server = Server(name="example.rpc", version="1.0.0", description="The example daemon of the unixrpc tour.")


@server.method(Add)
async def add(request: Add) -> int:
    return request.a + request.b


@server.method(GetUser)
def get_user(request: GetUser) -> User:  # a plain def runs in a worker thread
    try:
        return USERS[request.uid]
    except KeyError:
        raise UserNotFound(uid=request.uid) from None


@server.method(WhoAmI)
async def whoami(request: WhoAmI, context: CallContext) -> dict[str, int]:
    return context.peer._asdict()


@server.method(Countdown)
async def countdown(request: Countdown) -> AsyncIterator[int]:
    for n in range(request.start, -1, -1):
        yield n
        await anyio.sleep(0.01)


@server.method(OpenScratch)
def open_scratch(request: OpenScratch) -> ScratchFile:
    handle = tempfile.TemporaryFile()  # noqa: SIM115 - handed over to the client
    handle.write(request.note.encode())
    handle.flush()
    handle.seek(0)
    return ScratchFile(
        fd=FileDescriptor.transfer(handle), note=f"{len(request.note)} bytes from pid {os.getpid()}"
    )


if __name__ == "__main__":
    server.serve_forever(sys.argv[1])
