"""The RPC clients used the wrong way, over real sockets (issue 19): a
blocking ``Client`` called on a thread that runs an event loop is refused at
once (it would stop the loop, and deadlock when the server runs on it); an
``AsyncClient`` built outside a loop, or never entered, leaves no
``ResourceWarning`` of the library's own."""

from __future__ import annotations

import gc
import os
import socket
import subprocess
import sys
import textwrap
import warnings
from collections.abc import Iterator

import anyio
import pytest

from rpc_support import Add, Count, Log, make_server, serving
from unixrpc import AsyncClient, Client

pytestmark = pytest.mark.anyio


@pytest.fixture
def listening(sock_dir: str) -> Iterator[str]:
    """A path where something listens (and never accepts)."""
    path = os.path.join(sock_dir, "l.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(path)
        sock.listen(4)
        yield path


async def test_a_sync_client_on_the_servers_loop_raises_at_once(
    anyio_backend: str, sock_dir: str, no_fd_leak: None
) -> None:
    async with serving(make_server(), os.path.join(sock_dir, "s.sock")) as path:
        with Client(path, timeout=None) as client:  # no timeout: before, this waited for ever
            with pytest.raises(RuntimeError) as raised:
                client.call(Add(a=1, b=2))
            message = str(raised.value)
            assert message.startswith(
                f"Client.call() blocks, and this thread is running an event loop ({anyio_backend}): "
            )
            assert "Use AsyncClient in async code, or call Client from a worker thread" in message
            with pytest.raises(RuntimeError, match=r"^Client\.notify\(\) blocks"):
                client.notify(Log(line="x"))
            with pytest.raises(RuntimeError, match=r"^Client\.stream\(\) blocks"):
                client.stream(Count(n=1))
            # refused before anything was sent: the client works from a worker thread
            assert await anyio.to_thread.run_sync(client.call, Add(a=1, b=2)) == 3
            stream = await anyio.to_thread.run_sync(client.stream, Count(n=2))
            with pytest.raises(RuntimeError, match=r"^Client\.stream\(\) blocks"):
                next(stream)  # iterating blocks too
            stream.close()
            assert await anyio.to_thread.run_sync(client.call, Add(a=2, b=2)) == 4


async def test_a_sync_client_on_any_running_loop_is_refused(anyio_backend: str, listening: str) -> None:
    """Any loop, not only the server's: the client cannot know what the reply
    depends on, and blocking a loop stops every task on it."""
    with Client(listening) as client, pytest.raises(RuntimeError, match="Use AsyncClient"):
        client.call(Add(a=1, b=2))


def _never_entered(path: str) -> None:
    AsyncClient(path)  # dropped at once
    gc.collect()


def test_an_async_client_built_outside_a_loop_and_never_entered_warns_nothing(listening: str) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _never_entered(listening)
        one_end, other_end = socket.socketpair()
        with other_end:
            AsyncClient(one_end)
            gc.collect()
            one_end.close()
    assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] == []


async def test_an_async_client_built_in_a_loop_and_never_entered_warns_nothing(
    anyio_backend: str, listening: str
) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _never_entered(listening)
    assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] == []


def test_never_entered_under_w_error(listening: str) -> None:
    """The same, as a user runs it: ``python -W error``, the warning raised
    inside a finalizer would be printed as an ignored exception."""
    script = textwrap.dedent(
        f"""
        import gc, anyio
        from unixrpc import AsyncClient
        AsyncClient({listening!r})
        gc.collect()
        async def main():
            AsyncClient({listening!r})
            gc.collect()
        anyio.run(main)
        anyio.run(main, backend="trio")
        gc.collect()
        import os, unixrpc
        print(os.path.dirname(os.path.dirname(unixrpc.__file__)))
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", script], capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "Warning" not in done.stderr, done.stderr
    assert done.stdout.strip() == os.path.dirname(os.path.dirname(__import__("unixrpc").__file__)), (
        done.stdout
    )
