"""The uvloop switch: ``Server.serve_forever/serve_in_thread(backend="uvloop")``
runs the asyncio engine on uvloop's loop, and ``AsyncClient`` works under
``anyio.run(..., backend_options={"use_uvloop": True})``. uvloop is in the
dev extras, so these run in CI; they skip only where it is not installed."""

from __future__ import annotations

import importlib.util
import os
import tempfile

import anyio
import pytest

from unixrpc import AsyncClient, Client, Method, Server

needs_uvloop = pytest.mark.skipif(
    importlib.util.find_spec("uvloop") is None, reason="uvloop is not installed"
)


class Add(Method[int]):
    a: int
    b: int


def _server() -> Server:
    server = Server()

    @server.method(Add)
    async def add(req: Add) -> int:
        import asyncio

        import uvloop

        assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
        return req.a + req.b

    return server


@needs_uvloop
def test_the_server_and_async_client_run_on_uvloop() -> None:
    with tempfile.TemporaryDirectory(prefix="urpc-") as tmp:
        path = os.path.join(tmp, "uv.sock")
        with _server().serve_in_thread(path, backend="uvloop"):
            with Client(path) as client:
                assert client.call(Add(a=1, b=2)) == 3

            async def calls() -> list[int]:
                import asyncio

                import uvloop

                assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
                async with AsyncClient(path) as client:
                    async with anyio.create_task_group() as tg:
                        results: list[int] = []

                        async def one(i: int) -> None:
                            results.append(await client.call(Add(a=i, b=1)))

                        for i in range(16):
                            tg.start_soon(one, i)
                    return sorted(results)

            assert anyio.run(calls, backend="asyncio", backend_options={"use_uvloop": True}) == list(
                range(1, 17)
            )


def test_uvloop_without_uvloop_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "uvloop", None)  # as if not installed
    with pytest.raises(ModuleNotFoundError, match="uvloop"):
        Server().serve_forever("/nonexistent/unused.sock", backend="uvloop")
