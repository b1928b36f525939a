"""What every ``unixrpc`` command shares: the exit codes, JSON output,
turning what the library raises into a message and an exit code, and
connecting to (and describing) a daemon. Never imports the other command
modules."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import weakref
from collections.abc import Iterator
from typing import IO, Any, NoReturn

from ..client import Client
from ..exceptions import (
    ConnectError,
    Error,
    InvalidParamsError,
    MethodNotFoundError,
    PermissionDeniedError,
    RPCError,
)

#: exit codes, by what happened (docs/cli.md)
EXIT = {
    "ok": 0,
    "error": 1,  # the daemon answered with an error (an application error, permission denied...);
    # for compat: breaking changes found
    "usage": 2,  # bad command line or params (argparse's own code)
    "connect": 3,  # no such socket, refused, permission denied on the socket, connection lost
    "method": 4,  # method not found
    "params": 5,  # invalid params
    "timeout": 6,  # no reply within --timeout
    "fds": 7,  # the reply carried fewer descriptors than --save-fd named (the result is printed)
    "interrupted": 130,  # Ctrl-C (a stream is cancelled on the daemon first)
}

DEFAULT_TIMEOUT = 30.0


class Exit(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


# -- output -----------------------------------------------------------------------


def dump(value: Any, stream: IO[str], *, pretty: bool | None) -> None:
    if pretty is None:
        pretty = stream.isatty()
    text = json.dumps(
        value, indent=2 if pretty else None, ensure_ascii=False, separators=None if pretty else (",", ":")
    )
    stream.write(text + "\n")
    stream.flush()


def fail(message: str, code: str) -> NoReturn:
    sys.stderr.write(f"unixrpc: {message}\n")
    raise Exit(EXIT[code])


def _report_rpc_error(error: RPCError, pretty: bool | None) -> NoReturn:
    body: dict[str, Any] = {"code": error.code, "message": error.message}
    if error.data is not None:
        body["data"] = error.data
    dump({"error": body}, sys.stderr, pretty=pretty)
    if isinstance(error, MethodNotFoundError):
        raise Exit(EXIT["method"])
    if isinstance(error, InvalidParamsError):
        raise Exit(EXIT["params"])
    raise Exit(EXIT["error"])


@contextlib.contextmanager
def reporting(pretty: bool | None) -> Iterator[None]:
    """Turn what the library raises into a message and an exit code."""
    try:
        yield
    except RPCError as error:
        _report_rpc_error(error, pretty)
    except TimeoutError as error:
        if isinstance(error, ConnectError):
            fail(str(error), "connect")
        fail(f"timeout: {error}", "timeout")
    except (ConnectError, ConnectionError) as error:
        fail(str(error), "connect")
    except (Error, ValueError, TypeError) as error:
        fail(str(error), "usage")


def address(text: str) -> str | bytes:
    """``@name`` is an abstract name; anything else a path."""
    return b"\0" + text[1:].encode() if text.startswith("@") else text


def connect(args: argparse.Namespace) -> Client:
    """A client of the daemon at ``args.socket`` (not connected yet)."""
    return Client(address(args.socket), timeout=args.timeout, connect_timeout=args.timeout)


def fetch_document(socket: str, timeout: float | None, pretty: bool | None) -> Any:
    """The interface document of the daemon at *socket* (``unixrpc.Describe``).

    Raises:
        Exit: cannot connect (3), the daemon does not describe itself (4), or
            it answered with another error (1); the message is on stderr.
    """
    with reporting(pretty), Client(address(socket), timeout=timeout, connect_timeout=timeout) as client:
        try:
            reply = client.call_by_name("unixrpc.Describe")
        except MethodNotFoundError:
            fail(
                f"the daemon at {socket} does not describe itself (it serves no unixrpc.Describe: "
                "built with Server(introspection=False), or not a unixrpc daemon)",
                "method",
            )
        reply.close()
    return reply.value


_documents: weakref.WeakKeyDictionary[Client, dict[str, Any] | None] = weakref.WeakKeyDictionary()


def describe_daemon(client: Client) -> dict[str, Any] | None:
    """The daemon's document, or None if it does not describe itself (to
    us); asked once per connection."""
    if client not in _documents:
        try:
            reply = client.call_by_name("unixrpc.Describe")
        except (MethodNotFoundError, PermissionDeniedError):
            _documents[client] = None
        else:
            reply.close()
            _documents[client] = reply.value if isinstance(reply.value, dict) else None
    return _documents[client]


def find_method(document: dict[str, Any] | None, name: str) -> dict[str, Any] | None:
    for entry in (document or {}).get("methods", ()):
        if entry.get("name") == name:
            return entry  # type: ignore[no-any-return]
    return None
