"""The one-shot wake-ups of the async hot paths (unixrpc._wakeup), on each backend."""

from __future__ import annotations

import anyio

from unixrpc._wakeup import wakeup_factory


async def test_set_wakes_the_waiting_task(anyio_backend: str) -> None:
    new = wakeup_factory()
    wakeup = new()
    order: list[str] = []

    async def waiter() -> None:
        await wakeup.wait()
        order.append("woken")

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter)
        await anyio.wait_all_tasks_blocked()
        assert order == []
        order.append("set")
        wakeup.set()
    assert order == ["set", "woken"]


async def test_set_before_wait_returns_at_once(anyio_backend: str) -> None:
    wakeup = wakeup_factory()()
    wakeup.set()
    wakeup.set()  # idempotent
    with anyio.fail_after(1):
        await wakeup.wait()


async def test_cancelled_wait_then_set_is_harmless(anyio_backend: str) -> None:
    wakeup = wakeup_factory()()
    with anyio.move_on_after(0.01) as scope:
        await wakeup.wait()
    assert scope.cancelled_caught
    wakeup.set()  # the waiter is gone: nothing to wake, nothing raised
    await anyio.sleep(0)


async def test_the_backend_primitive_is_used(anyio_backend: str) -> None:
    wakeup = wakeup_factory()()
    if anyio_backend == "trio":
        assert type(wakeup).__name__ == "_TrioWakeup"
    else:
        assert type(wakeup).__name__ == "_FutureWakeup"
