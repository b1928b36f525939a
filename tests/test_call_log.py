"""What a daemon operator sees of each call (issue 19): one log line per
call that reached the server, refusals included, with structured fields;
an invalid result is an ERROR on the server with the detail and a short,
value-free error for the client; a handler's exception is logged with the
caller and call id. On every engine."""

from __future__ import annotations

import logging
import os

import pytest

import rpc_support
from unixrpc import Client, InternalError, InvalidParamsError, Method, MethodNotFoundError, Server

pytestmark = pytest.mark.server


class Add(Method[int]):
    a: int
    b: int


class Leak(Method[int]):
    pass


class Boom(Method[int]):
    pass


class Missing(Method[int], name="NotServed"):
    pass


def make_server() -> Server:
    server = Server()

    @server.method(Add)
    def add(request: Add) -> int:
        return request.a + request.b

    @server.method(Leak)
    def leak(request: Leak) -> int:
        return {"password": "hunter2"}  # type: ignore[return-value]

    @server.method(Boom)
    def boom(request: Boom) -> int:
        raise RuntimeError("kaboom")

    return server


def _calls(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "unixrpc_method", None) is not None]


def test_every_call_leaves_one_line_refusals_included(
    sock_dir: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = os.path.join(sock_dir, "s")
    with (
        caplog.at_level(logging.DEBUG, logger="unixrpc.server"),
        rpc_support.serving_in_thread(make_server(), path),
        Client(path, timeout=10) as client,
    ):
        assert client.call(Add(a=1, b=2)) == 3
        with pytest.raises(MethodNotFoundError):
            client.call(Missing())
        with pytest.raises(InvalidParamsError):
            client.call_by_name("Add", {"a": "x", "b": 1})
    lines = {r.unixrpc_method: r for r in _calls(caplog)}  # type: ignore[attr-defined]
    assert set(lines) >= {"Add", "NotServed"}
    ok = [r for r in _calls(caplog) if r.unixrpc_outcome == "ok"]  # type: ignore[attr-defined]
    assert len(ok) == 1
    assert ok[0].unixrpc_peer_pid == os.getpid()  # type: ignore[attr-defined]
    assert ok[0].unixrpc_peer_uid == os.getuid()  # type: ignore[attr-defined]
    assert ok[0].unixrpc_duration_ms >= 0  # type: ignore[attr-defined]
    refused = [r.unixrpc_outcome for r in _calls(caplog) if r.unixrpc_outcome != "ok"]  # type: ignore[attr-defined]
    assert any(outcome.startswith("refused unixrpc.MethodNotFound") for outcome in refused), refused
    assert any(outcome.startswith("refused unixrpc.InvalidParams") for outcome in refused), refused


def test_an_invalid_result_is_an_error_on_the_server_and_value_free_for_the_client(
    sock_dir: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = os.path.join(sock_dir, "s")
    with (
        caplog.at_level(logging.INFO, logger="unixrpc.server"),
        rpc_support.serving_in_thread(make_server(), path),
        Client(path, timeout=10) as client,
        pytest.raises(InternalError) as caught,
    ):
        client.call(Leak())
    assert "hunter2" not in str(caught.value)
    assert caught.value.message.startswith("handler of Leak returned an invalid result: a dict")
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert any("handler of Leak returned an invalid result" in r.getMessage() for r in errors)


def test_a_handler_exception_is_logged_with_the_caller_and_call_id(
    sock_dir: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = os.path.join(sock_dir, "s")
    with (
        caplog.at_level(logging.INFO, logger="unixrpc.server"),
        rpc_support.serving_in_thread(make_server(), path),
        Client(path, timeout=10) as client,
        pytest.raises(InternalError),
    ):
        client.call(Boom())
    (record,) = [r for r in caplog.records if r.levelno == logging.ERROR and "Boom" in r.getMessage()]
    assert f"from pid {os.getpid()} uid {os.getuid()}" in record.getMessage()
    assert "(call 1 " in record.getMessage() or "(call " in record.getMessage()
    assert record.exc_info is not None
