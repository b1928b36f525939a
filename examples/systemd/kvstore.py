"""A key-value store daemon on unixrpc, made to run under systemd.

Started by ``kvstore.socket`` (socket activation) as ``kvstore.service``
(``Type=notify``), it serves the socket systemd passed, tells systemd when
it is ready and what it is doing (``systemctl status kvstore``), pings the
watchdog from its serving loop, reloads its data on ``systemctl reload``
(SIGHUP), stops cleanly on SIGTERM, and logs with priorities journald keeps
(``journalctl -u kvstore -p warning``). The data lives in
``$STATE_DIRECTORY/kv.json`` (``StateDirectory=kvstore``: /var/lib/kvstore).

Run by hand, then call it with kvctl.py:
    python examples/systemd/kvstore.py /tmp/kv.sock               # binds the path itself
    systemd-socket-activate -l /tmp/kv.sock python examples/systemd/kvstore.py
    python examples/systemd/kvctl.py /tmp/kv.sock set greeting hello
    python examples/systemd/kvctl.py /tmp/kv.sock get greeting

See docs/daemon.md for installing the units.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from kvapi import Delete, Get, KeyNotFound, Keys, Set

from unixrpc import Server
from unixrpc.daemon import install_daemon_logging

logger = logging.getLogger("kvstore")


class Store:
    """The data, kept in memory and written through to a JSON file."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.lock = threading.Lock()  # plain def handlers run in worker threads
        self.data: dict[str, str] = {}

    def load(self) -> None:
        try:
            with open(self.path) as file:
                data = json.load(file)
        except FileNotFoundError:
            data = {}
        with self.lock:
            self.data = {str(k): str(v) for k, v in data.items()}
        logger.info("loaded %d keys from %s", len(self.data), self.path)

    def save(self) -> None:
        # write a new file and rename it over the old one: a crash never leaves half a file
        directory = os.path.dirname(self.path) or "."
        fd, temporary = tempfile.mkstemp(dir=directory, prefix=".kv-")
        with os.fdopen(fd, "w") as file:
            json.dump(self.data, file)
        os.replace(temporary, self.path)


state_directory = os.environ.get("STATE_DIRECTORY", tempfile.gettempdir()).split(":")[0]
store = Store(os.path.join(state_directory, "kv.json"))
server = Server(
    socket_mode=0o660,  # when it binds the path itself; a .socket unit sets SocketMode= instead
    idle_timeout=300,  # socket-activated: exit after 5 idle minutes, systemd starts us again
    on_reload=store.load,  # SIGHUP: RELOADING=1, reload, READY=1
)


@server.method(Get)
def get(request: Get) -> str:
    with store.lock:
        try:
            return store.data[request.key]
        except KeyError:
            raise KeyNotFound(key=request.key) from None


@server.method(Set)
def set_(request: Set) -> None:
    with store.lock:
        store.data[request.key] = request.value
        store.save()


@server.method(Delete)
def delete(request: Delete) -> bool:
    with store.lock:
        found = store.data.pop(request.key, None) is not None
        if found:
            store.save()
        return found


@server.method(Keys)
def keys(request: Keys) -> list[str]:
    with store.lock:
        return sorted(k for k in store.data if k.startswith(request.prefix))


if __name__ == "__main__":
    install_daemon_logging()  # <N> priority prefixes under journald, rate-limited warnings
    store.load()
    # no address: serve the socket systemd passed (LISTEN_FDS); an address: bind it,
    # or take the passed socket already listening there
    server.serve_forever(sys.argv[1] if len(sys.argv) > 1 else None)
