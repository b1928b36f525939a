"""Issue 21 item 4: frames that are not calls must not starve good clients.

Good clients (each in its own process, one connection each, sequential
``Add`` calls, 5 s timeout) measure their latency while the daemon (its own
process, default ``Server()``) is flooded by hostile local peers, against
the same number of CPU hogs that send nothing (the baseline):

* ``cancel``: one peer pipelining cancels for ids that are no call;
* ``credit``: one peer pipelining credit for streams that do not exist;
* ``junk``: 4 peers, each sending frames that are not envelopes (every one
  answered with an id-null ``ProtocolError``, which it reads) then a fatal
  frame, and reconnecting at once when the server closes it.

The target (issue 21): a good client's p99 within 10x its p99 under the same
number of CPU hogs. Printed: p50/p99 per case, the p99 ratios, timeouts,
and how many frames the attackers got in.

Run: ``python benchmarks/attack_floods.py [seconds] [rounds] [asyncio|trio|threads ...]
[case ...] [KEY=JSON ...]`` (KEY=JSON: arguments of the daemon, see
benchmarks/_attack_server.py; cases: their names' first word, e.g. ``cancel``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from _attack import (
    ENGINES,
    ENV,
    Daemon,
    add_request,
    cpu_hogs,
    encode,
    frame,
    percentile,
    raw_connect,
    recv_envelope,
    socket_dir,
    table,
)

GOOD_CLIENTS = 2
CALL_TIMEOUT = 5.0


# -- the peers, each in its own process ---------------------------------------------------------


def good_client(path: str, seconds: float) -> None:
    """Sequential Adds on one connection for *seconds*: the latencies (a
    timeout counts as CALL_TIMEOUT, then a new connection)."""
    latencies: list[float] = []
    timeouts = 0
    sock = raw_connect(path, timeout=CALL_TIMEOUT)
    call_id = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        call_id += 1
        t0 = time.perf_counter()
        try:
            sock.sendall(add_request(call_id, call_id, 1))
            reply = recv_envelope(sock)
            if reply != {"id": call_id, "result": call_id + 1}:
                raise OSError(f"unexpected {reply}")
            latencies.append(time.perf_counter() - t0)
        except OSError:
            timeouts += 1
            latencies.append(CALL_TIMEOUT)
            sock.close()
            sock = raw_connect(path, timeout=CALL_TIMEOUT)
    sock.close()
    print(json.dumps({"latencies": latencies, "timeouts": timeouts}), flush=True)


def _pipeline(path: str, seconds: float, batch: bytes, per_batch: int) -> None:
    """Send *batch* again and again (never reading: nothing is answered)."""
    frames = connections = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        connections += 1
        try:
            with raw_connect(path, timeout=1.0) as sock:
                while time.monotonic() < end:
                    try:
                        sock.sendall(batch)
                    except TimeoutError:
                        continue  # the server is not reading us: try again
                    frames += per_batch
        except OSError:
            time.sleep(0.001)
    print(json.dumps({"frames": frames, "connections": connections}), flush=True)


def cancel_flood(path: str, seconds: float) -> None:
    batch = b"".join(frame(encode(cancel=10**9 + i)) for i in range(1000))
    _pipeline(path, seconds, batch, 1000)


def credit_flood(path: str, seconds: float) -> None:
    batch = b"".join(frame(encode(credit=10**9 + i, n=1)) for i in range(1000))
    _pipeline(path, seconds, batch, 1000)


def junk_flood(path: str, seconds: float) -> None:
    """Connect, send 4,000 frames that are not envelopes (reading their
    id-null errors as they come), then a frame over the size limit (fatal);
    read to the end, reconnect."""
    import selectors

    kinds = [b"[1,2]", b"5", b"null", b'"x"', b"{}", b'{"foo":1}', b"true", b"\xff\xfe"]
    junk = b"".join(frame(kinds[i % len(kinds)]) for i in range(4000))
    fatal = bytes.fromhex("ffffffff0000") + b"{"
    frames = connections = replies_bytes = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        connections += 1
        try:
            sock = raw_connect(path, timeout=1.0)
        except OSError:
            time.sleep(0.001)
            continue
        sock.setblocking(False)
        out = memoryview(junk + fatal)
        selector = selectors.DefaultSelector()
        selector.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
        try:
            while time.monotonic() < end:
                events = selector.select(0.5)
                done = False
                for _, mask in events:
                    if mask & selectors.EVENT_READ:
                        try:
                            data = sock.recv(1 << 16)
                        except (BlockingIOError, InterruptedError):
                            data = b"?"
                        except OSError:
                            data = b""
                        if not data:
                            done = True
                        replies_bytes += len(data)
                    if mask & selectors.EVENT_WRITE and out:
                        try:
                            sent = sock.send(out)
                        except (BlockingIOError, InterruptedError):
                            sent = 0
                        except OSError:
                            done = True
                            sent = 0
                        out = out[sent:]
                        if not out:
                            selector.modify(sock, selectors.EVENT_READ)
                if done:
                    break
            frames += (4001 * (len(junk) + len(fatal) - len(out))) // (len(junk) + len(fatal))
        finally:
            selector.close()
            sock.close()
    report = {"frames": frames, "connections": connections, "reply_bytes": replies_bytes}
    print(json.dumps(report), flush=True)


PEERS = {"good": good_client, "cancel": cancel_flood, "credit": credit_flood, "junk": junk_flood}


def spawn(role: str, path: str, seconds: float) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, __file__, "--peer", role, path, str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
        env=ENV,
    )


def collect(procs: list[subprocess.Popen[str]]) -> list[dict[str, object]]:
    out = []
    for proc in procs:
        stdout, _ = proc.communicate(timeout=120)
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    return out


# -- the cases ----------------------------------------------------------------------------------

#: name: (attacker role or None, number of attackers or hogs)
CASES = {
    "quiet": (None, 0),
    "hogs x1": (None, 1),
    "cancel flood (1 peer)": ("cancel", 1),
    "credit flood (1 peer)": ("credit", 1),
    "hogs x4": (None, 4),
    "junk flood (4 reconnecting peers)": ("junk", 4),
}
BASELINE = {
    "cancel flood (1 peer)": "hogs x1",
    "credit flood (1 peer)": "hogs x1",
    "junk flood (4 reconnecting peers)": "hogs x4",
}


def run_case(daemon: Daemon, attacker: str | None, count: int, seconds: float) -> dict[str, object]:
    path = daemon.path
    cpu0 = daemon.cpu_seconds()
    if attacker is None:
        with cpu_hogs(count):
            time.sleep(0.3)
            goods = collect([spawn("good", path, seconds) for _ in range(GOOD_CLIENTS)])
        attackers: list[dict[str, object]] = []
    else:
        peers = [spawn(attacker, path, seconds + 1.0) for _ in range(count)]
        time.sleep(0.5)
        goods = collect([spawn("good", path, seconds) for _ in range(GOOD_CLIENTS)])
        attackers = collect(peers)
    latencies = [x for good in goods for x in good["latencies"]]  # type: ignore[attr-defined]
    return {
        "p50": percentile(latencies, 50),
        "p99": percentile(latencies, 99),
        "calls": len(latencies),
        "timeouts": sum(int(good["timeouts"]) for good in goods),  # type: ignore[call-overload]
        "attack_frames": sum(int(a["frames"]) for a in attackers),  # type: ignore[call-overload]
        "attack_connections": sum(int(a["connections"]) for a in attackers),  # type: ignore[call-overload]
        "server_cpu": daemon.cpu_seconds() - cpu0,
        "alive": daemon.alive(),
    }


def main() -> None:
    server_kwargs = {
        key: json.loads(value) for key, _, value in (arg.partition("=") for arg in sys.argv[1:] if "=" in arg)
    }
    words = {name.split()[0] for name in CASES}
    chosen = [arg for arg in sys.argv[1:] if arg in words]
    cases = {name: case for name, case in CASES.items() if not chosen or name.split()[0] in chosen}
    args = [arg for arg in sys.argv[1:] if arg not in ENGINES and "=" not in arg and arg not in words]
    seconds = float(args[0]) if args else 5.0
    rounds = int(args[1]) if len(args) > 1 else 1
    engines = tuple(arg for arg in sys.argv[1:] if arg in ENGINES) or ENGINES
    print(
        f"# {GOOD_CLIENTS} good clients x {seconds} s per case, {rounds} round(s), "
        f"{os.cpu_count()} CPUs, daemon {server_kwargs or 'Server()'}"
    )
    rows = []
    for engine in engines:
        for round_ in range(rounds):
            with socket_dir() as where, Daemon(os.path.join(where, "s"), engine, **server_kwargs) as daemon:
                results = {}
                for name, (attacker, count) in cases.items():
                    results[name] = run_case(daemon, attacker, count, seconds)
                    if not daemon.alive():
                        break
                for name, r in results.items():
                    base = BASELINE.get(name)
                    ratio = f"{r['p99'] / results[base]['p99']:.1f}x" if base in results else ""  # type: ignore[operator]
                    rows.append(
                        [
                            engine,
                            round_ + 1,
                            name,
                            f"{r['p50'] * 1e3:.2f}",  # type: ignore[operator]
                            f"{r['p99'] * 1e3:.2f}",  # type: ignore[operator]
                            ratio,
                            r["calls"],
                            r["timeouts"],
                            f"{r['attack_frames']:,}",
                            r["attack_connections"],
                            f"{r['server_cpu']:.1f}",
                            "yes" if r["alive"] else "DIED",
                        ]
                    )
                print(f"{engine} round {round_ + 1} done", file=sys.stderr, flush=True)
    header = [
        "engine",
        "round",
        "case",
        "p50 ms",
        "p99 ms",
        "p99 / same # of hogs",
        "calls",
        "timeouts",
        "attack frames sent",
        "attack conns",
        "server CPU s",
        "alive",
    ]
    print(table(header, rows))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--peer":
        PEERS[sys.argv[2]](sys.argv[3], float(sys.argv[4]))
    else:
        main()
