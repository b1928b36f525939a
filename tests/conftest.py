"""Shared fixtures: backends, short socket paths, fd counting, and the
sync/async client drivers that let one test body run against both clients."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

# Property-based tests: a bounded run in ``make test``, a long one in ``make stress``
# (HYPOTHESIS_PROFILE=stress). Never a deadline: no test asserts a duration.
settings.register_profile("default", max_examples=150, deadline=None)
settings.register_profile(
    "stress", max_examples=20_000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

#: (client kind, anyio backend) combinations a shared client test runs under.
CLIENT_VARIANTS = [("sync", "asyncio"), ("async", "asyncio"), ("async", "trio")]
#: the server engines every server test runs on
ENGINES = ["anyio", "threads"]
#: modules whose tests run a unixrpc Server: each runs on every engine
SERVER_MODULES = {
    "test_server",
    "test_fds",
    "test_foreign_peer",
    "test_rpc",
    "test_fast_paths",
    "test_coalescing",
    "test_engine_edges",
    "test_reliability",
    "test_identity",
    "test_mistakes",
}


@pytest.fixture
def anyio_backend() -> str:
    """Overridden by pytest_generate_tests: every async test runs on both backends."""
    return "asyncio"


@pytest.fixture
def server_engine() -> str:
    """Overridden by pytest_generate_tests for server tests: every engine."""
    return "anyio"


@pytest.fixture(autouse=True)
def _use_server_engine(server_engine: str) -> Iterator[None]:
    """Serve the test's servers on its engine (see rpc_support.serving)."""
    import rpc_support

    rpc_support.ENGINE = server_engine
    try:
        yield
    finally:
        rpc_support.ENGINE = "anyio"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    module = metafunc.module.__name__.rpartition(".")[2]
    engines = ENGINES if module in SERVER_MODULES else ENGINES[:1]
    if metafunc.definition.get_closest_marker("anyio_engine_only"):
        engines = ENGINES[:1]
    # the threads engine is the server's choice, not the test loop's: against it the
    # clients run on asyncio (trio clients are covered against the anyio engine)
    if "client_kind" in metafunc.fixturenames:
        variants = [
            (*variant, engine)
            for engine in engines
            for variant in CLIENT_VARIANTS
            if engine == "anyio" or variant[1] == "asyncio"
        ]
        metafunc.parametrize(
            ("client_kind", "anyio_backend", "server_engine"),
            variants,
            ids=[f"{kind}-{backend}-{engine}" for kind, backend, engine in variants],
        )
    elif "anyio_backend" in metafunc.fixturenames:
        combos = [
            (backend, engine)
            for engine in engines
            for backend in ("asyncio", "trio")
            if engine == "anyio" or backend == "asyncio"
        ]
        metafunc.parametrize(("anyio_backend", "server_engine"), combos, ids=[f"{b}-{e}" for b, e in combos])
    elif len(engines) > 1:
        metafunc.parametrize("server_engine", engines)


@pytest.fixture
def sock_dir() -> Iterator[str]:
    """A short temporary directory for socket files (sun_path is 108 bytes)."""
    path = tempfile.mkdtemp(prefix="urpc-", dir="/tmp")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def open_fds() -> set[int]:
    """The descriptors open in this process right now."""
    return {int(name) for name in os.listdir("/proc/self/fd")}


@pytest.fixture
def no_fd_leak() -> Iterator[None]:
    """Fail the test if it leaves more descriptors open than it found."""
    before = open_fds()
    yield
    # a server thread may still be closing a connection it just shut down:
    # give it a moment, then insist
    deadline = time.monotonic() + 2.0
    while (leaked := open_fds() - before) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not leaked, f"leaked descriptors: {sorted(leaked)} -> {[_describe(fd) for fd in leaked]}"


def _describe(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return "?"
