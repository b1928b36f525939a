"""What the benchmarks share: peers in their own processes, pinning to one
CPU, and interleaved medians."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

HERE = os.path.dirname(os.path.abspath(__file__))


def pin_to_one_cpu() -> None:
    """Pin this process (and the peers it spawns) to one CPU: across cores the
    round trip is dominated by wake-up latency that swings by tens of
    microseconds between runs."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})


@contextmanager
def peer(script: str, *args: str) -> Iterator[None]:
    """Run ``benchmarks/SCRIPT ARGS`` in its own process until it prints "ready"."""
    proc = subprocess.Popen(
        [sys.executable, os.path.join(HERE, script), *args], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready", f"{script} did not start"
        yield
    finally:
        proc.kill()
        proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()


def measure_samples(cases: dict[str, Callable[[], float]], repeats: int) -> dict[str, list[float]]:
    """Every sample of every case, round by round: in each round the cases
    take turns, so drift hits them all alike and sample *i* of two cases
    can be compared as a pair."""
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for fn in cases.values():
        fn()  # warm up
    for _ in range(repeats):
        for name, fn in cases.items():
            samples[name].append(fn())
    return samples


def measure(cases: dict[str, Callable[[], float]], repeats: int) -> dict[str, float]:
    """Median per case (see :func:`measure_samples`)."""
    return {name: statistics.median(values) for name, values in measure_samples(cases, repeats).items()}


def paired_ratio(reference: list[float], other: list[float]) -> float:
    """Median over rounds of reference/other: the speed of *other* relative to
    *reference* measured in the same round (robust to the machine's drift,
    which on a shared VM moves both by tens of percent between rounds)."""
    return statistics.median(r / o for r, o in zip(reference, other, strict=True))
