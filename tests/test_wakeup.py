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


async def test_set_wakes_every_waiter_and_a_cancelled_one_is_forgotten(anyio_backend: str) -> None:
    """The server's tasks waiting for a short write to end share one wake-up:
    set() wakes all of them, and one cancelled meanwhile neither is woken nor
    takes the others down with it (on trio a wake-up that held one waiter
    left the others parked; on asyncio a cancelled waiter cancelled the
    future the others awaited)."""
    wakeup = wakeup_factory()()
    woken: list[int] = []

    async def waiter(n: int, scope: anyio.CancelScope) -> None:
        with scope:
            await wakeup.wait()
            woken.append(n)

    for cancelled in range(3):  # the first waiter, a middle one, the last one
        wakeup = wakeup_factory()()
        woken.clear()
        scopes = [anyio.CancelScope() for _ in range(3)]
        # fail_after: a waiter left parked would hang the task group for good
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                for n, scope in enumerate(scopes):
                    tg.start_soon(waiter, n, scope)
                await anyio.wait_all_tasks_blocked()
                scopes[cancelled].cancel()
                await anyio.wait_all_tasks_blocked()
                assert woken == []
                tg.start_soon(waiter, 3, anyio.CancelScope())  # one more after the cancel
                await anyio.wait_all_tasks_blocked()
                wakeup.set()
        assert sorted(woken) == sorted({0, 1, 2, 3} - {cancelled})
        with anyio.fail_after(1):
            await wakeup.wait()  # a wait after set() returns at once
