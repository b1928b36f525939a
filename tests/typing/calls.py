"""Checked by mypy in test_typing.py (never run): what a type checker infers
for calls. Each reveal_type line names the expected type in a comment."""

from __future__ import annotations

import socket
from typing import reveal_type

from pydantic import BaseModel

from unixrpc import FD, AsyncClient, Client, FileDescriptor, Method, StreamMethod


class User(BaseModel):
    uid: int


class Add(Method[int]):
    a: int
    b: int


class GetUser(Method[User], name="users.Get"):
    uid: int


class Watch(StreamMethod[str]):
    topic: str


def sync_calls(client: Client) -> None:
    reveal_type(client.call(Add(a=1, b=2)))  # expect: int
    reveal_type(client.call(GetUser(uid=1)))  # expect: calls.User
    for item in client.stream(Watch(topic="t")):
        reveal_type(item)  # expect: str


async def async_calls(client: AsyncClient) -> None:
    reveal_type(await client.call(Add(a=1, b=2)))  # expect: int
    async for item in client.stream(Watch(topic="t")):
        reveal_type(item)  # expect: str


def wrong(client: Client) -> None:
    total: str = client.call(Add(a=1, b=2))  # noqa: F841  # expect-error: assignment
    client.call(Watch(topic="t"))  # expect-error: arg-type


class Device(BaseModel):
    name: str


class ListDevices(Method[list[Device]]):
    pass


class Devices(StreamMethod[list[Device]]):
    pass


def covariant(client: Client) -> None:
    # the result type variable is covariant: a list[Device] result is Sized
    reveal_type(len(client.call(ListDevices())))  # expect: int
    for devices in client.stream(Devices()):
        reveal_type(len(devices))  # expect: int


async def covariant_async(client: AsyncClient) -> None:
    reveal_type(len(await client.call(ListDevices())))  # expect: int


class Handle(BaseModel):
    fd: FD


class OpenLog(Method[Handle]):
    name: str


class Upload(Method[int]):
    data: FD
    maybe: FD | None = None


def fd_fields(client: Client, path: str, sock: socket.socket) -> None:
    # an FD field is built from what docs/fds.md shows ...
    with open(path, "rb") as file:
        client.call(Upload(data=file))
    client.call(Upload(data=0))
    client.call(Upload(data=sock))
    client.call(Upload(data=FileDescriptor.borrow(0), maybe=FileDescriptor.transfer(sock)))
    # ... and read as a FileDescriptor
    handle = client.call(OpenLog(name="app"))
    reveal_type(handle.fd)  # expect: unixrpc.fds.FileDescriptor
    reveal_type(handle.fd.fileno())  # expect: int
    client.call(Upload(data="0"))  # expect-error: arg-type
