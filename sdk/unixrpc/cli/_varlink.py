"""``unixrpc call/stream/describe/list varlink:SOCKET ...``: the same
commands against any varlink service (a unixrpc daemon, systemd's, one of
python-varlink's), for operators without ``varlinkctl`` (systemd < 255);
and ``unixrpc varlink-codegen``, Python ``Method`` classes from a varlink
interface (a ``.varlink`` file, or a running service's description).

Uses the blocking :class:`~unixrpc.varlink.client.VarlinkClient`; params
are a JSON object, ``-`` (stdin) or ``key=value`` pairs (a value that
parses as JSON is taken as JSON, anything else as a string: varlink
services describe their types in IDL, which is not consulted here).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from ..exceptions import MethodNotFoundError
from ..varlink.client import VarlinkClient
from ..varlink.codegen import generate
from ..varlink.idl import parse
from ._common import EXIT, dump, fail, reporting

__all__ = ["PREFIX", "is_varlink", "run_codegen", "run_varlink"]

#: what marks a varlink address on the command line
PREFIX = "varlink:"
_SERVICE = "org.varlink.service"


def is_varlink(args: argparse.Namespace) -> bool:
    """True if the command's SOCKET is a varlink address."""
    return str(getattr(args, "socket", "")).startswith(PREFIX)


def _path(text: str) -> str:
    path = text[len(PREFIX) :]
    if path.startswith("unix:"):  # varlink's own address form, varlink:unix:/run/...
        path = path[len("unix:") :]
    return "\0" + path[1:] if path.startswith("@") else path


def _connect(args: argparse.Namespace) -> VarlinkClient:
    return VarlinkClient(_path(args.socket), timeout=args.timeout)


def _params(args: argparse.Namespace) -> dict[str, Any]:
    params: list[str] = args.params
    if not params:
        return {}
    if params == ["-"]:
        text = sys.stdin.read()
        params = [text]
    if len(params) == 1 and params[0].lstrip().startswith("{"):
        try:
            value = json.loads(params[0])
        except ValueError as exc:
            fail(f"PARAMS is not a JSON object: {exc}", "usage")
        if not isinstance(value, dict):
            fail("PARAMS must be a JSON object", "usage")
        return value
    result: dict[str, Any] = {}
    for pair in params:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            fail(f"expected key=value, got {pair!r}", "usage")
        try:
            result[key] = json.loads(text)
        except ValueError:
            result[key] = text
    return result


def _push(paths: list[str]) -> list[int]:
    fds: list[int] = []
    for item in paths:
        try:
            fds.append(int(item) if item.isdigit() else os.open(item, os.O_RDONLY | os.O_CLOEXEC))
        except OSError as exc:
            fail(f"--push-fd {item}: {exc.strerror}", "usage")
    return fds


def _save(fds: list[Any], saved: list[str]) -> int:
    """Write what each received descriptor holds to the --save-fd files; the count written."""
    done = 0
    for handle, path in zip(fds, saved, strict=False):
        with open(path, "wb") as out:
            while chunk := os.read(handle.fileno(), 65536):
                out.write(chunk)
        done += 1
    for handle in fds:
        handle.close()
    return done


def run_varlink(args: argparse.Namespace) -> int:
    """``call``, ``stream``, ``describe`` or ``list`` against a varlink service."""
    with reporting(args.pretty), _connect(args) as client:
        if args.command in ("call", "stream"):
            return _call(args, client)
        if args.command == "list":
            for name in sorted(_methods(client)):
                sys.stdout.write(name + "\n")
            return EXIT["ok"]
        return _describe(args, client)


def _call(args: argparse.Namespace, client: VarlinkClient) -> int:
    params = _params(args)
    fds = _push(args.push_fd)
    saved = list(args.save_fd)
    received = 0
    try:
        if args.command == "stream":
            if args.pretty is None:
                args.pretty = False
            for reply in client.stream_by_name(args.method, params, expect_fds=bool(saved)):
                dump(reply.parameters, sys.stdout, pretty=args.pretty)
                sys.stdout.flush()
                received += _save(reply.fds, saved[received:])
        else:
            answer = client.call_by_name(args.method, params, fds=fds, expect_fds=bool(saved))
            assert answer is not None
            dump(answer.parameters, sys.stdout, pretty=args.pretty)
            received = _save(answer.fds, saved)
    finally:
        for fd, item in zip(fds, args.push_fd, strict=True):
            if not item.isdigit():
                os.close(fd)
    if received < len(saved):
        sys.stderr.write(
            f"unixrpc: {len(saved) - received} --save-fd file(s) not written: no descriptor came\n"
        )
        return EXIT["fds"]
    return EXIT["ok"]


def _info(client: VarlinkClient) -> dict[str, Any]:
    reply = client.call_by_name(f"{_SERVICE}.GetInfo")
    assert reply is not None
    return reply.parameters


def _description(client: VarlinkClient, interface: str) -> str:
    reply = client.call_by_name(f"{_SERVICE}.GetInterfaceDescription", {"interface": interface})
    assert reply is not None
    return str(reply.parameters.get("description", ""))


def _methods(client: VarlinkClient) -> list[str]:
    names = []
    for interface in _info(client).get("interfaces", []):
        if interface == _SERVICE:
            continue
        parsed = parse(_description(client, interface))
        names += [f"{interface}.{method}" for method in parsed.methods]
    return names


def _describe(args: argparse.Namespace, client: VarlinkClient) -> int:
    """The service's GetInfo and the IDL of each interface (or of one:
    ``describe varlink:SOCKET INTERFACE``); ``--json``: as JSON."""
    info = _info(client)
    wanted = [args.method] if args.method else [i for i in info.get("interfaces", []) if i != _SERVICE]
    try:
        texts = {interface: _description(client, interface) for interface in wanted}
    except MethodNotFoundError:  # (systemd before 255 answers neither)
        fail("the service does not describe its interfaces (org.varlink.service)", "method")
    if args.json:
        dump({"info": info, "interfaces": texts}, sys.stdout, pretty=args.pretty)
        return EXIT["ok"]
    head = " ".join(str(info.get(key, "")) for key in ("product", "version") if info.get(key))
    if head and not args.method:
        sys.stdout.write(head + "\n\n")
    sys.stdout.write("\n".join(texts.values()))
    return EXIT["ok"]


# -- varlink-codegen ----------------------------------------------------------------------------


def add_codegen(commands: Any) -> None:
    """The ``varlink-codegen`` command."""
    command = commands.add_parser(
        "varlink-codegen",
        help="write Python Method classes from a varlink interface (a .varlink file or a service)",
        description="Write pydantic Method classes, reply models and RPCError classes for a varlink\n"
        "interface, read from a .varlink file or asked of a running service.",
        epilog="examples:\n"
        "  unixrpc varlink-codegen tests/varlink/io.systemd.UserDatabase.varlink -o userdb.py "
        "--stream GetUserRecord\n"
        "  unixrpc varlink-codegen varlink:/run/app.sock --interface org.example.calc",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    command.add_argument("source", metavar="SOURCE", help="a .varlink file, or varlink:SOCKET")
    command.add_argument("--interface", metavar="NAME", help="for a service: which interface")
    command.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of stdout")
    command.add_argument(
        "--stream",
        action="append",
        default=[],
        metavar="METHOD",
        help="generate METHOD as a StreamMethod (varlink's IDL does not say which methods stream)",
    )
    command.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS", help=argparse.SUPPRESS)
    command.set_defaults(run=run_codegen, pretty=None)


def run_codegen(args: argparse.Namespace) -> int:
    """``unixrpc varlink-codegen``."""
    with reporting(None):
        if args.source.startswith(PREFIX):
            with VarlinkClient(_path(args.source), timeout=args.timeout) as client:
                interface = args.interface
                if interface is None:
                    served = [i for i in _info(client).get("interfaces", []) if i != _SERVICE]
                    if len(served) != 1:
                        fail(f"the service serves {served}: choose one with --interface", "usage")
                    interface = served[0]
                text = _description(client, interface)
        else:
            try:
                with open(args.source, encoding="utf-8") as source:
                    text = source.read()
            except OSError as exc:
                fail(f"cannot read {args.source}: {exc.strerror}", "usage")
        code = generate(text, streams=args.stream)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as out:
            out.write(code)
    else:
        sys.stdout.write(code)
    return EXIT["ok"]
