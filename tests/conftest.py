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


@pytest.fixture
def anyio_backend() -> str:
    """Overridden by pytest_generate_tests: every async test runs on both backends."""
    return "asyncio"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "client_kind" in metafunc.fixturenames:
        metafunc.parametrize(
            ("client_kind", "anyio_backend"),
            CLIENT_VARIANTS,
            ids=[f"{kind}-{backend}" for kind, backend in CLIENT_VARIANTS],
        )
    elif "anyio_backend" in metafunc.fixturenames:
        metafunc.parametrize("anyio_backend", ["asyncio", "trio"])


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
