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
    # the typed RPC part
    assert "Add(a=1, b=2) -> 3" in out
    assert "GetUser(uid=7) -> raised UserNotFound(uid=7) [users.NotFound]" in out
    assert "Countdown(start=3) -> [3, 2, 1, 0]" in out
    assert "it reads: 'written by the daemon, read by the client'" in out
    assert out.count("results by call: [0, 2, 4, 6, 8, 10, 12, 14, 16, 18]") == 2
    assert "RPC daemon stopped on SIGTERM (exit code 0); socket removed: True" in out
