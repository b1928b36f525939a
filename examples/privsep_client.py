"""Client of privsep_daemon.py: asks the daemon to open files and reads them
through the descriptor it hands back.

Run: ``python examples/privsep_client.py SOCKET PATH [PATH...]``; prints one
line per path: its contents, or why the daemon refused.
"""

from __future__ import annotations

import sys

from privsep_daemon import AccessDenied, OpenFile

from unixrpc import Client, PermissionDeniedError


def main() -> None:
    socket_path, *paths = sys.argv[1:]
    with Client(socket_path, timeout=10) as client:
        for path in paths:
            try:
                opened = client.call(OpenFile(path=path))
            except AccessDenied as denied:
                print(f"{path}: denied ({denied.reason})")
                continue
            except PermissionDeniedError as refused:
                print(f"{path}: refused: {refused.message}")
                continue
            with opened.fd.open("r") as f:
                print(f"{path}: {f.read().strip()}")


if __name__ == "__main__":
    main()
