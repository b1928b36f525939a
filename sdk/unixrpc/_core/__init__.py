"""The sans-IO core of the RPC layer. Never imports socket, anyio, trio, asyncio or threading."""
