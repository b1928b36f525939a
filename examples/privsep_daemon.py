"""A privilege-separation daemon: it opens files on behalf of its clients and
hands back the open descriptor, after checking who the caller is.

The caller's uid comes from the kernel (SO_PEERCRED), not from the request.
Only uids in --allow-uid may call at all (the server's authorization hook);
paths must stay inside --root (no "..", no symlinks out of it, no following
a symlink at the last component), and are opened read-only unless the
client asks to append.

Run: ``python examples/privsep_daemon.py SOCKET --root DIR --allow-uid UID [--allow-uid UID...]``
"""

from __future__ import annotations

import argparse
import logging
import os
from typing import Any, Literal

from pydantic import BaseModel

from unixrpc import FD, CallContext, FileDescriptor, Method, RPCError, Server


class OpenedFile(BaseModel):
    path: str
    fd: FD


class AccessDenied(RPCError, code="privsep.AccessDenied"):
    """The daemon will not open that path for you."""

    path: str
    reason: str


class OpenFile(Method[OpenedFile], name="privsep.Open", errors=[AccessDenied]):
    """Open a file under the shared root and hand back its descriptor."""

    path: str
    mode: Literal["read", "append"] = "read"


def build_server(root: str, allowed_uids: set[int]) -> Server:
    root = os.path.realpath(root)

    def authorize(context: CallContext, request: Any) -> bool:
        return context.peer.uid in allowed_uids

    server = Server(name="example.privsep", version="1.0.0", authorize=authorize, socket_mode=0o666)

    @server.method(OpenFile)
    def open_file(request: OpenFile, context: CallContext) -> OpenedFile:
        target = os.path.realpath(os.path.join(root, request.path))
        if os.path.commonpath([root, target]) != root:
            raise AccessDenied(path=request.path, reason="outside the shared root")
        flags = os.O_RDONLY if request.mode == "read" else os.O_WRONLY | os.O_APPEND
        try:
            fd = os.open(target, flags | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            raise AccessDenied(path=request.path, reason="no such file") from None
        except OSError as exc:
            raise AccessDenied(path=request.path, reason=exc.strerror or "cannot open") from None
        logging.getLogger("privsep").info("uid %d opened %s (%s)", context.peer.uid, target, request.mode)
        return OpenedFile(path=request.path, fd=FileDescriptor.transfer(fd))

    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("socket")
    parser.add_argument("--root", required=True)
    parser.add_argument("--allow-uid", type=int, action="append", default=[])
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    build_server(args.root, set(args.allow_uid)).serve_forever(args.socket)


#: the daemon as ``unixrpc schema examples/privsep_daemon.py:server`` sees it
#: (its interface does not depend on the root and the uids)
server = build_server("/", set())


if __name__ == "__main__":
    main()
