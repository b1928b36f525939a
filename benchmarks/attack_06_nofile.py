"""Issue 21 item 6: at systemd's default soft ``RLIMIT_NOFILE`` of 1,024,
one uid took every connection. The daemon (``socket_mode=0o666``) starts
with ``RLIMIT_NOFILE`` (a) 1,024 soft and hard (nothing to raise to), (b)
1,024 soft under a higher hard limit; root opens connections until one is
refused; then a peer of uid 65534 calls ``Add``.

Run as root: ``python benchmarks/attack_06_nofile.py [asyncio|trio|threads ...]``.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys

from _attack import ENV, Daemon, add_request, engines_from_argv, raw_connect, recv_envelope, socket_dir, table

OTHER_UID = """
import os, socket, sys, time
os.setgroups([]); os.setresgid(65534, 65534, 65534); os.setresuid(65534, 65534, 65534)
s = socket.socket(socket.AF_UNIX); s.settimeout(5)
t0 = time.perf_counter()
try:
    s.connect(sys.argv[1]); s.sendall(bytes.fromhex(sys.argv[2]))
    print(repr(s.recv(200)), f"{(time.perf_counter() - t0) * 1e3:.1f} ms")
except OSError as exc:
    print("failed:", exc)
"""


def attack(engine: str, where: str, name: str, nofile: tuple[int, int]) -> list[object]:
    os.chmod(where, 0o755)
    path = os.path.join(where, name)
    with Daemon(path, engine, _nofile=list(nofile), socket_mode=0o666) as daemon:
        socks, refusal = [], "none"
        for _ in range(5000):
            try:
                sock = raw_connect(path, timeout=5)
                sock.sendall(add_request(1, 2, 3))
                reply = recv_envelope(sock)
            except OSError as exc:
                refusal = f"{type(exc).__name__}"
                break
            if reply != {"id": 1, "result": 5}:
                refusal = "closed" if reply is None else reply.get("error", {}).get("message", reply)[:60]
                sock.close()
                break
            socks.append(sock)
        with open(f"/proc/{daemon.pid}/limits") as limits:
            soft = next(line for line in limits if line.startswith("Max open files")).split()[3]
        other = subprocess.run(
            [sys.executable, "-c", OTHER_UID, path, add_request(1, 2, 3).hex()],
            capture_output=True,
            text=True,
            env=ENV,
            timeout=30,
        ).stdout.strip()
        for sock in socks:
            sock.close()
        return [engine, f"{nofile[0]} / {nofile[1]}", soft, len(socks), refusal, other[:70]]


def main() -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    rows = []
    for engine in engines_from_argv(sys.argv[1:]):
        with socket_dir() as where:
            rows.append(attack(engine, where, "a", (1024, 1024)))
            rows.append(attack(engine, where, "b", (1024, hard)))
    print(
        table(
            [
                "engine",
                "RLIMIT_NOFILE soft / hard at start",
                "soft while serving",
                "root's connections served",
                "then",
                "uid 65534's Add",
            ],
            rows,
        )
    )


if __name__ == "__main__":
    main()
