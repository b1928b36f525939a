"""examples/privsep_daemon.py and privsep_client.py as separate processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")


@contextmanager
def daemon(sock: str, root: str, uid: int, log: list[str] | None = None) -> Iterator[subprocess.Popen[str]]:
    """Run the daemon; on the way out stop it with SIGTERM and collect its log."""
    proc = subprocess.Popen(
        [
            sys.executable,
            os.path.join(EXAMPLES, "privsep_daemon.py"),
            sock,
            "--root",
            root,
            "--allow-uid",
            str(uid),
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while not os.path.exists(sock):
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "daemon did not start"
            time.sleep(0.02)
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=20)
        if log is not None:
            log.append(stderr)


def run_client(sock: str, *paths: str) -> list[str]:
    result = subprocess.run(
        [sys.executable, os.path.join(EXAMPLES, "privsep_client.py"), sock, *paths],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return result.stdout.splitlines()


def test_privsep_daemon_hands_out_fds(sock_dir: str, tmp_path: object) -> None:
    root = os.path.join(sock_dir, "root")
    os.mkdir(root)
    with open(os.path.join(root, "notes.txt"), "w") as f:
        f.write("only the daemon could open this")
    os.symlink("/etc/hostname", os.path.join(root, "escape"))
    sock = os.path.join(sock_dir, "privsep.sock")
    logs: list[str] = []
    with daemon(sock, root, os.getuid(), logs) as proc:
        lines = run_client(sock, "notes.txt", "../../etc/passwd", "missing.txt", "escape")
    log = logs[0]
    assert lines == [
        "notes.txt: only the daemon could open this",
        "../../etc/passwd: denied (outside the shared root)",
        "missing.txt: denied (no such file)",
        "escape: denied (outside the shared root)",
    ]
    assert proc.returncode == 0, log
    assert f"uid {os.getuid()} opened" in log
    assert not os.path.exists(sock), "the socket file is removed on SIGTERM"


def test_privsep_daemon_refuses_other_uids(sock_dir: str) -> None:
    root = os.path.join(sock_dir, "root")
    os.mkdir(root)
    sock = os.path.join(sock_dir, "privsep.sock")
    with daemon(sock, root, os.getuid() + 12345):
        lines = run_client(sock, "anything")
    assert len(lines) == 1
    assert lines[0].startswith(f"anything: refused: privsep.Open is not allowed for uid {os.getuid()} (pid ")
