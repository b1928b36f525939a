"""Build a copy of ``sdk/`` whose sans-IO core is compiled with mypyc: a
measurement of what a compiled core would save, not a shipped build
(docs/performance.md, "A compiled core").

The modules compiled are the server core's per-call path and the framing
(``MODULES``); the rest of the package stays Python. mypyc checks the
annotations at run time, so a wrong one fails loudly in the copy.

Run: ``python benchmarks/compile_core.py DEST`` (needs mypy, which brings
mypyc, and a C compiler; about 25 s), then use the copy with
``PYTHONPATH=DEST``, e.g. ``PYTHONPATH=DEST python benchmarks/bench_callgrind.py threads``
or the test suite.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

SDK = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "sdk")

#: the modules compiled, relative to ``sdk/``
MODULES = [
    "unixrpc/_core/framing.py",
    "unixrpc/_core/wire.py",
    "unixrpc/_core/server/call.py",
    "unixrpc/_core/server/calltable.py",
    "unixrpc/_core/server/clocks.py",
    "unixrpc/_core/server/connection.py",
    "unixrpc/_core/server/outbox.py",
    "unixrpc/_core/server/reception.py",
    "unixrpc/_core/server/unixrpc.py",
]


def build(dest: str) -> None:
    """Copy ``sdk/`` to *dest* and compile :data:`MODULES` there in place.

    Raises:
        FileExistsError: *dest* exists.
        subprocess.CalledProcessError: mypyc failed (its output says why).
    """
    shutil.copytree(SDK, dest, ignore=shutil.ignore_patterns("__pycache__", "*.so", "build"))
    mypyc = os.path.join(os.path.dirname(sys.executable), "mypyc")
    subprocess.run([mypyc, *MODULES], cwd=dest, check=True, stdout=subprocess.DEVNULL)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    build(sys.argv[1])
    print(f"compiled core in {sys.argv[1]}; use it with PYTHONPATH={sys.argv[1]}")
