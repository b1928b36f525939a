"""Call the key-value store: ``kvctl.py SOCKET get KEY | set KEY VALUE | delete KEY | keys [PREFIX]``.

Prints the result as JSON; exits 1 with the error on stderr when the key is
not found or the daemon cannot be reached.
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from kvapi import Delete, Get, KeyNotFound, Keys, Set

from unixrpc import Client


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    path, command, *args = argv
    requests = {
        "get": lambda: Get(key=args[0]),
        "set": lambda: Set(key=args[0], value=args[1]),
        "delete": lambda: Delete(key=args[0]),
        "keys": lambda: Keys(prefix=args[0] if args else ""),
    }
    if command not in requests:
        print(f"unknown command {command!r}; {__doc__}", file=sys.stderr)
        return 2
    try:
        with Client(path, timeout=10) as client:
            result = client.call(requests[command]())
    except KeyNotFound as exc:
        print(f"no such key: {exc.key}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"cannot reach the store at {path}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
