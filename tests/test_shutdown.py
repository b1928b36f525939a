"""Shutdown keeps its grace (issue 19 item 4, issue 21 item 11): a handler
that never returns does not hold the server past ``shutdown_grace`` (no
hidden extra wait on the threads engine), the warning names the calls
still running and who made them, and nothing the server opened stays open.
On every engine."""

from __future__ import annotations

import logging
import os
import threading

import pytest

from conftest import open_fds
from unixrpc import Client, Method, Server
from unixrpc.exceptions import RPCError

pytestmark = pytest.mark.server


class Stuck(Method[str]):
    pass


def test_a_handler_that_never_returns_is_left_behind_at_the_grace(
    sock_dir: str, server_backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    release = threading.Event()
    started = threading.Event()
    server = Server(shutdown_grace=0.3)

    @server.method(Stuck)
    def stuck(request: Stuck) -> str:
        started.set()
        release.wait(30)  # ignores ctx.cancelled: it will not stop in time
        return "late"

    path = os.path.join(sock_dir, "s")
    before = open_fds()
    outcome: list[object] = []
    try:
        with caplog.at_level(logging.WARNING, logger="unixrpc.server"):
            serving = server.serve_in_thread(path, backend=server_backend)
            serving.__enter__()
            with Client(path, timeout=30) as client:
                caller = threading.Thread(target=lambda: outcome.append(_call(client)))
                caller.start()
                assert started.wait(10)
                serving.__exit__(None, None, None)  # shuts down: returns at the grace, the handler blocked
                caller.join(10)
            assert not release.is_set()
            assert open_fds() == before, "descriptors left open by the shutdown"
    finally:
        release.set()
    assert len(outcome) == 1
    assert isinstance(outcome[0], RPCError)
    messages = [r.getMessage() for r in caplog.records if "grace" in r.getMessage()]
    assert any(f"Stuck (call 1) from pid {os.getpid()} uid {os.getuid()}" in m for m in messages), messages


def _call(client: Client) -> object:
    try:
        return client.call(Stuck())
    except RPCError as exc:
        return exc
