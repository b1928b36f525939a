"""mypy infers the result type of a call from the method class (and rejects
misuse): run mypy --strict on tests/typing/calls.py and compare with the
expectations written in its comments."""

from __future__ import annotations

import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SAMPLE = os.path.join(HERE, "typing", "calls.py")


def test_mypy_infers_call_result_types() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--show-error-codes", "calls.py"],
        cwd=os.path.dirname(SAMPLE),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    output = result.stdout
    with open(SAMPLE) as sample:
        lines = sample.read().splitlines()
    expected_reveals = {
        number: match.group(1)
        for number, line in enumerate(lines, 1)
        if (match := re.search(r"# expect: (\S+)", line))
    }
    expected_errors = {
        number: match.group(1)
        for number, line in enumerate(lines, 1)
        if (match := re.search(r"# expect-error: (\S+)", line))
    }
    reveals = {
        int(m.group(1)): m.group(2)
        for m in re.finditer(r"calls\.py:(\d+): note: Revealed type is \"([^\"]+)\"", output)
    }
    errors = {
        int(m.group(1)): m.group(2)
        for m in re.finditer(r"calls\.py:(\d+): error: .*\[([\w-]+)\]$", output, re.M)
    }
    assert reveals == expected_reveals, output
    assert errors == expected_errors, output
