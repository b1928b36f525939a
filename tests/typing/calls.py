"""Checked by mypy in test_typing.py (never run): what a type checker infers
for calls. Each reveal_type line names the expected type in a comment."""

from __future__ import annotations

from typing import reveal_type

from pydantic import BaseModel

from unixrpc import AsyncClient, Client, Method, StreamMethod


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
