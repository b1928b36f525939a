"""What the examples of README.md, docs/rpc.md and docs/fds.md take from
around them (a connected client, a path, the daemon's own helpers): each
generated module of test_typing.test_doc_examples_pass_mypy_strict starts
with ``from doc_context import *``. Checked by mypy, never run."""

from __future__ import annotations

from collections.abc import Iterator
from typing import IO

from unixrpc import Client

__all__ = ["client", "data", "follow", "log_file", "next_event", "path", "ready", "walk"]

client: Client  # a connected client
path: str  # a file to send
data: bytes  # bytes to share
log_file: IO[str]  # an open file


def follow(path: str) -> Iterator[str]:
    """The lines appended to a file (the daemon's own helper)."""
    raise NotImplementedError


async def next_event(topic: str) -> str:
    """The next event on a topic (the daemon's own helper)."""
    raise NotImplementedError


def walk(root: str) -> Iterator[str]:
    """The entries under a directory (the daemon's own helper)."""
    raise NotImplementedError


def ready(key: str) -> bool:
    """Whether a key is ready (the daemon's own helper)."""
    raise NotImplementedError
