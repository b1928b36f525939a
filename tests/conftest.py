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
#: the server engines a test marked ``server`` runs on
ENGINES = ["anyio", "threads"]


@pytest.fixture
def anyio_backend() -> str:
    """Overridden by pytest_generate_tests: every async test runs on both backends."""
    return "asyncio"


@pytest.fixture
def server_engine() -> str:
    """The engine the test's servers run on: ``"anyio"`` or ``"threads"``.
    Overridden by pytest_generate_tests for tests marked ``server``."""
    return "anyio"


@pytest.fixture
def server_backend(server_engine: str, anyio_backend: str) -> str:
    """The ``backend=`` that serves a server in a thread (``serve_in_thread``,
    ``unixrpc.testing.serving``) on the test's engine: ``"threads"``, or the
    test's anyio backend for the anyio engine."""
    return "threads" if server_engine == "threads" else anyio_backend


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
    """A test marked ``server`` runs on every engine; others on the anyio
    engine only. Every async test runs on asyncio and trio."""
    on_every_engine = metafunc.definition.get_closest_marker("server") is not None
    if metafunc.definition.get_closest_marker("anyio_engine_only"):
        on_every_engine = False
    engines = ENGINES if on_every_engine else ENGINES[:1]
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
