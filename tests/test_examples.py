"""The examples run: the demo talks to its daemon in another process."""

from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_demo_runs() -> None:
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "examples", "demo.py")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "upper -> {'ok': 'HELLO, DAEMON'}" in out
    assert f"'pid': {os.getpid()}" not in out  # the daemon saw the demo process, not pytest
    assert "-> {'ok': 'contents of a file only the client opened'}" in out
    assert out.count("three pipelined requests -> [{'ok': 'ONE'}, {'ok': 'TWO'}, {'ok': 'THREE'}]") == 2
