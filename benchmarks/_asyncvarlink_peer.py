"""asyncvarlink's server for bench_varlink.py: org.example.bench Add and Echo.
No ``from __future__ import annotations`` here: asyncvarlink reads the
annotations as types.

Run: python _asyncvarlink_peer.py PATH (prints "ready" once listening)
"""

import asyncio
import sys

import asyncvarlink


class Bench(asyncvarlink.VarlinkInterface, name="org.example.bench"):
    @asyncvarlink.varlinkmethod(return_parameter="result")
    def Add(self, *, a: int, b: int) -> int:
        return a + b

    @asyncvarlink.varlinkmethod(return_parameter="result")
    def Echo(self, *, data: str) -> str:
        return data


async def serve(path: str) -> None:
    registry = asyncvarlink.VarlinkInterfaceRegistry()
    registry.register_interface(Bench())
    server = await asyncvarlink.create_unix_server(registry.protocol_factory, path)
    print("ready", flush=True)
    async with server:
        await asyncio.Event().wait()  # until killed


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1]))
