"""unixrpc.testing: serving a daemon in a test (``serving``,
``temporary_socket_path``) and the pytest plugin's fixtures
(``unixrpc_socket_path``, ``unixrpc_serve``), used as a user's tests use
them, on every engine (the anyio engine on asyncio and trio, the threads
engine: marker ``server``); plus a user-style test file
run by pytest itself (``pytester``), with the plugin loaded by its entry point."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator

import pytest

from unixrpc import AsyncClient, CallContext, Client, Method, Server, StreamMethod
from unixrpc.testing import serving, temporary_socket_path

pytest_plugins = ["pytester"]


class Add(Method[int]):
    a: int
    b: int


class Who(Method[int]):
    """The caller's uid, from a plain def handler."""


class Count(StreamMethod[int]):
    n: int


def make_server() -> Server:
    server = Server(name="org.example.Test", version="1.0.0")

    @server.method(Add)
    async def add(req: Add) -> int:
        return req.a + req.b

    @server.method(Who)
    def who(req: Who, ctx: CallContext) -> int:
        return ctx.peer.uid

    @server.method(Count)
    def count(req: Count) -> Iterator[int]:
        yield from range(req.n)

    return server


def server_threads() -> list[str]:
    return [thread.name for thread in threading.enumerate() if thread.name.startswith("unixrpc")]


# -- the fixtures, as a user's tests use them --------------------------------------------


@pytest.mark.server
def test_sync_test_calls_a_served_daemon(unixrpc_serve: Callable[..., str], server_backend: str) -> None:
    path = unixrpc_serve(make_server(), backend=server_backend)
    assert len(os.fsencode(path)) <= 107
    assert stat.S_ISSOCK(os.stat(path).st_mode)
    with Client(path, timeout=5) as client:
        assert client.call(Add(a=1, b=2)) == 3
        assert client.call(Who()) == os.getuid()
        assert list(client.stream(Count(n=3))) == [0, 1, 2]


@pytest.mark.anyio
@pytest.mark.server
async def test_async_test_calls_a_served_daemon(
    unixrpc_serve: Callable[..., str], server_backend: str
) -> None:
    path = unixrpc_serve(make_server(), backend=server_backend)
    async with AsyncClient(path, timeout=5) as client:
        assert await client.call(Add(a=20, b=22)) == 42
        assert await client.call(Who()) == os.getuid()
        async with client.stream(Count(n=3)) as items:
            assert [item async for item in items] == [0, 1, 2]


@pytest.mark.server
def test_several_servers_in_one_test(unixrpc_serve: Callable[..., str], server_backend: str) -> None:
    first = unixrpc_serve(make_server(), backend=server_backend)
    second = unixrpc_serve(make_server())  # the default backend: threads
    assert first != second
    for path in (first, second):
        with Client(path, timeout=5) as client:
            assert client.call(Add(a=1, b=1)) == 2


@pytest.mark.server
def test_serve_on_the_socket_path_fixture(
    unixrpc_socket_path: str, unixrpc_serve: Callable[..., str], server_backend: str
) -> None:
    assert not os.path.exists(unixrpc_socket_path)
    assert stat.S_IMODE(os.stat(os.path.dirname(unixrpc_socket_path)).st_mode) == 0o700
    assert unixrpc_serve(make_server(), unixrpc_socket_path, backend=server_backend) == unixrpc_socket_path
    with Client(unixrpc_socket_path, timeout=5) as client:
        assert client.call(Add(a=2, b=3)) == 5


# -- the helpers underneath ---------------------------------------------------------------


def test_temporary_socket_path_is_short_and_removed() -> None:
    with temporary_socket_path("d.sock") as path:
        directory = os.path.dirname(path)
        assert os.path.basename(path) == "d.sock"
        assert len(os.fsencode(path)) <= 107
        assert os.path.isdir(directory)
        assert not os.path.exists(path)
    assert not os.path.exists(directory)


def test_temporary_socket_path_refuses_a_path_or_a_long_name() -> None:
    with pytest.raises(ValueError, match="a socket file name is needed"), temporary_socket_path("a/b"):
        pass
    with pytest.raises(ValueError, match="longer than the 107 bytes"), temporary_socket_path("x" * 120):
        pass


@pytest.mark.server
def test_serving_stops_the_server_and_it_can_serve_again(server_backend: str) -> None:
    server = make_server()  # as a daemon module's server, shared by several tests
    for _ in range(2):
        with serving(server, backend=server_backend) as path:
            with Client(path, timeout=5) as client:
                assert client.call(Add(a=1, b=2)) == 3
            assert server.is_shutting_down() is False
        assert not os.path.exists(path)
        assert not os.path.exists(os.path.dirname(path)), "the temporary directory is left behind"
        assert server.address is None
        assert "unixrpc-server" not in server_threads()


@pytest.mark.server
def test_serving_with_grace_zero_cancels_what_is_in_flight(server_backend: str) -> None:
    server = make_server()
    started = threading.Event()

    class Hang(Method[None]):
        pass

    @server.method(Hang)
    def hang(req: Hang, ctx: CallContext) -> None:
        started.set()
        ctx.wait_cancelled(30)

    client = None
    errors: list[BaseException] = []
    with serving(server, grace=0, backend=server_backend) as path:
        client = Client(path, timeout=10)

        def call() -> None:
            try:
                client.call(Hang())
            except BaseException as exc:
                errors.append(exc)

        caller = threading.Thread(target=call)
        caller.start()
        assert started.wait(5)
    caller.join(5)
    client.close()
    assert [type(error).__name__ for error in errors] == ["ServerShuttingDownError"]


@pytest.mark.server
def test_serving_raises_a_failed_bind_on_entry(server_backend: str) -> None:
    with temporary_socket_path() as path:
        with open(path, "w"):
            pass  # a regular file where the socket should go
        with pytest.raises(FileExistsError), serving(make_server(), path, backend=server_backend):
            pytest.fail("entered the block although binding failed")
        with pytest.raises(ValueError, match="unknown backend"), serving(make_server(), backend="curio"):
            pytest.fail("entered the block with an unknown backend")
    assert "unixrpc-server" not in server_threads()


def test_importing_unixrpc_needs_no_pytest() -> None:
    script = textwrap.dedent(
        """
        import sys
        sys.modules["pytest"] = None  # import pytest now raises ImportError
        import unixrpc
        assert "unixrpc.testing" not in sys.modules, "unixrpc imports its testing helpers"
        from unixrpc import Client, Method, Server
        import unixrpc.testing as testing
        assert not hasattr(testing, "unixrpc_serve"), "fixtures defined without pytest"

        class Add(Method[int]):
            a: int
            b: int

        server = Server()

        @server.method(Add)
        def add(req: Add) -> int:
            return req.a + req.b

        with testing.serving(server) as path, Client(path, timeout=5) as client:
            assert client.call(Add(a=1, b=2)) == 3
        print("ok")
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "ok\n"


# -- a user's test file, run by pytest with the plugin loaded from its entry point --------

USER_TESTS = """
import pytest

from unixrpc import AsyncClient, Client, Method, Server


class Add(Method[int]):
    a: int
    b: int


server = Server()  # the daemon's module would define it


@server.method(Add)
def add(req: Add) -> int:
    return req.a + req.b


@pytest.fixture
def path(unixrpc_serve):
    return unixrpc_serve(server)


def test_sync(path):
    with Client(path, timeout=5) as client:
        assert client.call(Add(a=1, b=2)) == 3


@pytest.mark.anyio
async def test_async(path):
    async with AsyncClient(path, timeout=5) as client:
        assert await client.call(Add(a=2, b=2)) == 4


def test_socket_path(unixrpc_socket_path):
    assert unixrpc_socket_path.endswith(".sock")
"""


def test_plugin_in_a_users_test_run(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_daemon=USER_TESTS)
    args = ["-p", "no:cacheprovider", "-v"]
    if os.environ.get("PYTEST_DISABLE_PLUGIN_AUTOLOAD"):
        args += ["-p", "unixrpc.testing", "-p", "anyio"]
    result = pytester.runpytest_subprocess(*args, timeout=120)
    outcomes = result.parseoutcomes()
    assert set(outcomes) <= {"passed", "seconds"}, result.stdout.str()
    # anyio runs an async test on each backend it finds (asyncio, and trio when installed)
    result.stdout.fnmatch_lines(
        [
            "*test_daemon.py::test_sync PASSED*",
            "*test_daemon.py::test_async?asyncio? PASSED*",
            "*test_daemon.py::test_socket_path PASSED*",
        ],
        consecutive=False,
    )


def test_plugin_is_registered_as_an_entry_point() -> None:
    from importlib.metadata import entry_points

    found = [entry for entry in entry_points(group="pytest11") if entry.name == "unixrpc"]
    assert [entry.value for entry in found] == ["unixrpc.testing"]
