"""The ``unixrpc`` command: poke a daemon from the shell.

Owns the command line (argparse, stdlib only) and dispatch; each command
lives in a module of its own (_calls: call, stream; _describe: describe,
list, ping; _documents: schema, compat; _common: what they share). How params are read
(a JSON object, ``-`` for stdin, or ``key=value`` pairs coerced through the
daemon's described schema), how results, descriptors and errors are printed,
and the exit codes (docs/cli.md). Talks to daemons with the blocking
:class:`~unixrpc.Client` (no event loop); never prints from the library.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from ._calls import run_call, run_stream
from ._common import DEFAULT_TIMEOUT, EXIT, Exit
from ._describe import run_describe, run_list, run_ping
from ._documents import load_server, run_compat, run_schema
from ._varlink import add_codegen, is_varlink, run_varlink

__all__ = ["EXIT", "build_parser", "load_server", "main", "main_exit"]

_EXAMPLES = """\
examples:
  unixrpc call /run/app.sock Add '{"a": 1, "b": 2}'
  unixrpc call /run/app.sock Add a=1 b=2           (values coerced through the described schema)
  echo '{"uid": 0}' | unixrpc call /run/app.sock users.Get -
  unixrpc call @app Add a=1 b=2                    (@name: a Linux abstract socket name)
  unixrpc call /run/app.sock OpenScratch note=hi --save-fd copy.txt
  unixrpc call /run/logs.sock logs.Attach fd=0 --push-fd /var/log/app.log
  unixrpc stream /run/app.sock Countdown start=5   (one JSON line per item; Ctrl-C cancels)
  unixrpc describe /run/app.sock                   (a summary; --json for the OpenRPC document)
  unixrpc describe /run/app.sock users.Get
  unixrpc list /run/app.sock
  unixrpc ping /run/app.sock
  unixrpc schema examples/rpc_daemon.py:server > api.json
  unixrpc schema mydaemon.py:server -o api.json --check   (exit 1 if api.json is stale)
  unixrpc compat old-api.json new-api.json         (exit 1 on breaking changes)
  unixrpc compat old-api.json /run/app.sock        (or MODULE:ATTR: the daemon as it is now)
  unixrpc call varlink:/run/app.sock org.example.calc.Add a=1 b=2   (any varlink service)
  unixrpc describe varlink:/run/systemd/io.systemd.Hostname         (GetInfo and its IDL)
  unixrpc varlink-codegen io.example.varlink -o methods.py          (Method classes from IDL)
  unixrpc schema --varlink mydaemon.py:server -o api.varlink        (its varlink IDL)

exit codes:
  0 success   1 error reply (or breaking changes, for compat; stale, for schema --check)   2 usage
  3 cannot connect (no socket, refused, permission) or connection lost
  4 method not found   5 invalid params   6 timeout
  7 fewer descriptors received than --save-fd named   130 interrupted
"""


# -- the parser -------------------------------------------------------------------


def _seconds(text: str) -> float:
    """A ``--timeout``: a finite number of seconds above 0.

    Raises:
        argparse.ArgumentTypeError: anything else (argparse makes it a usage error).
    """
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not (0 < seconds < math.inf):
        raise argparse.ArgumentTypeError(
            f"expected a number of seconds above 0, got {text!r} (leave --timeout out for the default)"
        )
    return seconds


def build_parser() -> argparse.ArgumentParser:
    """The ``unixrpc`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="unixrpc",
        description="Talk to a unixrpc daemon from the shell: call its methods, stream, describe it.",
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    output = argparse.ArgumentParser(add_help=False)
    shape = output.add_mutually_exclusive_group()
    shape.add_argument(
        "--pretty", action="store_true", default=None, help="indented JSON (default on a terminal)"
    )
    shape.add_argument("--compact", dest="pretty", action="store_false", help="one line of JSON per value")

    def connected(default_timeout: float | None) -> argparse.ArgumentParser:
        common = argparse.ArgumentParser(add_help=False, parents=[output])
        common.add_argument(
            "socket", metavar="SOCKET", help="the daemon's socket path, or @name for an abstract name"
        )
        common.add_argument(
            "--timeout",
            type=_seconds,
            default=default_timeout,
            metavar="SECONDS",
            help=f"give up after this long (default: {default_timeout or 'wait forever'})",
        )
        return common

    def calls(command: argparse.ArgumentParser) -> None:
        command.add_argument("method", metavar="METHOD", help="the method's wire name, e.g. users.Get")
        command.add_argument(
            "params",
            nargs="*",
            metavar="PARAMS",
            help="a JSON object, - to read one from stdin, or key=value pairs",
        )
        command.add_argument(
            "--push-fd",
            action="append",
            default=[],
            metavar="FILE",
            help="send FILE (opened read-only; a number: an inherited descriptor) with the call; "
            "refer to it by index in the params (0 for the first)",
        )
        command.add_argument(
            "--save-fd",
            action="append",
            default=[],
            metavar="FILE",
            help="write what can be read from each received descriptor to FILE (in order)",
        )

    call = commands.add_parser(
        "call",
        parents=[connected(DEFAULT_TIMEOUT)],
        help="call a method, print its result as JSON",
        description="Call METHOD and print its result as JSON.",
        epilog="example: unixrpc call /run/app.sock Add a=1 b=2",
    )
    calls(call)
    call.set_defaults(run=run_call)

    stream = commands.add_parser(
        "stream",
        parents=[connected(None)],
        help="call a stream method, print one JSON line per item",
        description="Print one JSON line per item until the stream ends or Ctrl-C, which cancels it "
        "on the daemon. --timeout applies to each item.",
        epilog="example: unixrpc stream /run/app.sock Countdown start=5",
    )
    calls(stream)
    stream.set_defaults(run=run_stream)

    describe = commands.add_parser(
        "describe",
        parents=[connected(DEFAULT_TIMEOUT)],
        help="what the daemon serves (a summary, or --json for its OpenRPC document)",
        description="Summarize the daemon's methods, or one method; --json prints the OpenRPC document.",
        epilog="example: unixrpc describe /run/app.sock users.Get",
    )
    describe.add_argument("method", nargs="?", metavar="METHOD", help="describe only this method")
    describe.add_argument("--json", action="store_true", help="the OpenRPC document (or method entry)")
    describe.set_defaults(run=run_describe)

    listing = commands.add_parser(
        "list",
        parents=[connected(DEFAULT_TIMEOUT)],
        help="the names of the methods served, one a line",
        epilog="example: unixrpc list /run/app.sock",
    )
    listing.set_defaults(run=run_list)

    ping = commands.add_parser(
        "ping",
        parents=[connected(DEFAULT_TIMEOUT)],
        help="is the daemon there? its name, version, pid and the round trip in ms",
        epilog="example: unixrpc ping /run/app.sock",
    )
    ping.set_defaults(run=run_ping)

    schema = commands.add_parser(
        "schema",
        help="print the interface document of a Server in code, without running it",
        description="Import MODULE (or a .py file) and print the OpenRPC document of its Server ATTR.\n"
        "With --check, write nothing and exit 1 if the file given by -o is stale.",
        epilog="examples:\n"
        "  unixrpc schema examples/rpc_daemon.py:server -o schemas/rpc_daemon.openrpc.json\n"
        "  unixrpc schema examples/rpc_daemon.py:server -o schemas/rpc_daemon.openrpc.json --check",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    schema.add_argument(
        "target", metavar="MODULE:ATTR", help="e.g. myapp.daemon:server or path/daemon.py:server"
    )
    schema.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of stdout")
    schema.add_argument(
        "--varlink", action="store_true", help="its varlink interface (IDL) instead of the OpenRPC document"
    )
    schema.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 (saying what changed) if FILE (-o) is not the current document",
    )
    schema.set_defaults(run=run_schema)

    check = commands.add_parser(
        "compat",
        parents=[output],
        help="the breaking changes between two interfaces (exit 1 if any)",
        description="Compare two interfaces (OLD: what clients were built against, NEW: the daemon\n"
        "now) and report what would break those clients. Exit 1 if anything would. Each is\n"
        "a document file, a running daemon's socket (a path or @name), or MODULE:ATTR.",
        epilog="examples:\n  unixrpc compat schemas/v1.json schemas/v2.json\n"
        "  unixrpc compat api/released.json /run/app.sock\n"
        "  unixrpc compat api/released.json myapp.daemon:server",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    check.add_argument("old", metavar="OLD", help="a document (.json), a daemon's socket, or MODULE:ATTR")
    check.add_argument("new", metavar="NEW", help="the same choices as OLD")
    check.add_argument(
        "--timeout",
        type=_seconds,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=f"for a daemon's socket: give up after this long (default: {DEFAULT_TIMEOUT:g})",
    )
    check.add_argument("--json", action="store_true", help="the changes as a JSON list")
    check.set_defaults(run=run_compat)
    add_codegen(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``unixrpc`` command; returns its exit code (see :data:`EXIT`)."""
    args = build_parser().parse_args(argv)
    try:
        if is_varlink(args):
            if args.command not in ("call", "stream", "describe", "list"):
                sys.stderr.write(f"unixrpc: {args.command} does not take a varlink address\n")
                return EXIT["usage"]
            return run_varlink(args)
        return int(args.run(args))
    except Exit as done:
        return done.code
    except KeyboardInterrupt:
        sys.stderr.write("unixrpc: interrupted\n")
        return EXIT["interrupted"]
    except BrokenPipeError:  # stdout closed early (| head): not an error of ours
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - keeps interpreter shutdown quiet
        return EXIT["ok"]


def main_exit() -> NoReturn:
    """The console script's entry point: :func:`main`, then exit with its code."""
    sys.exit(main())
