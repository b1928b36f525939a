"""Reconnecting clients (issue 20): two figures, one CPU.

1. Restart to first call: the daemon (tests/reconnect_daemon.py, threads
   engine) is killed with -9 and started again under the same path; the time
   from starting the new process to the first call that succeeds on a
   ``Client(reconnect=True)`` (the default policy) that was waiting in a
   call, against the floor: a plain client polling the path every 0.5 ms
   until a call succeeds (how soon the new daemon can answer at all).
2. The cost of an enabled but idle policy on a normal call: blocks of
   sequential calls on a plain client and on a reconnecting one (the same
   daemon), taking turns; the paired ratio (median over rounds of
   reconnecting / plain time), for Client and AsyncClient (asyncio).

Run: ``python benchmarks/bench_reconnect.py [restarts] [rounds]``.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import anyio
from _harness import pin_to_one_cpu

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))

from reconnect_daemon import Get, Pid  # noqa: E402
from unixrpc import AsyncClient, Client, ConnectionBrokenError, SocketNotFoundError, SocketRefusedError  # noqa: E402

DAEMON = os.path.join(ROOT, "tests", "reconnect_daemon.py")
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.join(ROOT, "sdk"), os.path.join(ROOT, "tests")]))


def start(path: str, backend: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, DAEMON, path, backend], env=ENV, stdout=subprocess.DEVNULL)


def poll_until_serving(path: str) -> None:
    while True:
        try:
            with Client(path, timeout=10) as client:
                client.call(Pid())
                return
        except (SocketNotFoundError, SocketRefusedError, ConnectionBrokenError):
            time.sleep(0.0005)


class WaitingCall:
    """A call made in a thread of its own; :meth:`took` waits for it and
    says how long after ``t0`` it returned."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.t0 = 0.0
        self.done_at = 0.0
        self.worker = threading.Thread(target=self._run)
        self.worker.start()

    def _run(self) -> None:
        self.client.call(Get(n=1))
        self.done_at = time.perf_counter()

    def took(self) -> float:
        self.worker.join()
        return self.done_at - self.t0


def restart_to_first_call(path: str, backend: str, restarts: int) -> tuple[list[float], list[float]]:
    proc = start(path, backend)
    poll_until_serving(path)
    floors, ours = [], []
    with Client(path, reconnect=True, timeout=30) as client:
        client.call(Get(n=1))
        for round_ in range(restarts):
            proc.kill()
            proc.wait()
            if round_ % 2:  # the floor: a plain client polling
                t0 = time.perf_counter()
                proc = start(path, backend)
                poll_until_serving(path)
                floors.append(time.perf_counter() - t0)
                client.call(Get(n=1))  # let the reconnecting client catch up
            else:  # a reconnecting client waiting in a call
                waiting = WaitingCall(client)
                time.sleep(0.05)  # the call is waiting (reconnecting) before the restart
                waiting.t0 = time.perf_counter()
                proc = start(path, backend)
                ours.append(waiting.took())
    proc.kill()
    proc.wait()
    return floors, ours


def idle_policy(path: str, rounds: int, calls: int) -> tuple[float, float]:
    proc = start(path, "threads")
    poll_until_serving(path)
    try:
        with Client(path) as plain, Client(path, reconnect=True) as session:
            ratios = []
            for client in (plain, session):
                for _ in range(200):
                    client.call(Get(n=1))
            for _ in range(rounds):
                times = []
                for client in (plain, session):
                    t0 = time.perf_counter()
                    for _ in range(calls):
                        client.call(Get(n=1))
                    times.append(time.perf_counter() - t0)
                ratios.append(times[1] / times[0])
        sync_ratio = statistics.median(ratios)

        async def main() -> float:
            async with AsyncClient(path) as plain, AsyncClient(path, reconnect=True) as session:
                ratios = []
                for client in (plain, session):
                    for _ in range(200):
                        await client.call(Get(n=1))
                for _ in range(rounds):
                    times = []
                    for client in (plain, session):
                        t0 = time.perf_counter()
                        for _ in range(calls):
                            await client.call(Get(n=1))
                        times.append(time.perf_counter() - t0)
                    ratios.append(times[1] / times[0])
                return statistics.median(ratios)

        async_ratio = anyio.run(main, backend="asyncio")
    finally:
        proc.kill()
        proc.wait()
    return sync_ratio, async_ratio


def main() -> None:
    restarts = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 15
    pin_to_one_cpu()
    with tempfile.TemporaryDirectory(prefix="urpc-b", dir="/tmp") as where:
        path = os.path.join(where, "d.sock")
        for backend in ("threads", "asyncio"):
            floors, ours = restart_to_first_call(path, backend, restarts)
            low, high = min(ours) * 1e3, max(ours) * 1e3
            print(
                f"restart to first call, {backend} engine: reconnecting client median "
                f"{statistics.median(ours) * 1e3:.1f} ms (min {low:.1f}, max {high:.1f}); "
                f"polling floor median {statistics.median(floors) * 1e3:.1f} ms; "
                f"ratio {statistics.median(ours) / statistics.median(floors):.2f}"
            )
        sync_ratio, async_ratio = idle_policy(path, rounds, 2000)
        print(
            f"idle policy, paired ratio reconnect/plain: Client {sync_ratio:.3f}, "
            f"AsyncClient {async_ratio:.3f}"
        )


if __name__ == "__main__":
    main()
