"""The ``unixrpc`` command: poke a daemon from the shell.

Owns the command line (argparse, stdlib only), how params are read
(a JSON object, ``-`` for stdin, or ``key=value`` pairs coerced through the
daemon's described schema), how results, descriptors and errors are printed,
and the exit codes (docs/cli.md). Talks to daemons with the blocking
:class:`~unixrpc.Client` (no event loop); never prints from the library.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import json
import os
import signal
import stat
import sys
import time
import weakref
from collections.abc import Iterator, Sequence
from typing import IO, Any, NoReturn

from . import compat, interface
from .client import Client
from .exceptions import (
    ConnectError,
    Error,
    InvalidParamsError,
    MethodNotFoundError,
    PermissionDeniedError,
    ProtocolViolationError,
    RPCError,
)
from .fds import FileDescriptor
from .untyped import JSONReply

__all__ = ["EXIT", "main"]

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
    "interrupted": 130,  # Ctrl-C (a stream is cancelled on the daemon first)
}

_DEFAULT_TIMEOUT = 30.0

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
  unixrpc compat old-api.json new-api.json         (exit 1 on breaking changes)

exit codes:
  0 success   1 error reply (or breaking changes, for compat)   2 usage
  3 cannot connect (no socket, refused, permission) or connection lost
  4 method not found   5 invalid params   6 timeout   130 interrupted
"""


class _Exit(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


# -- output -----------------------------------------------------------------------


def _dump(value: Any, stream: IO[str], *, pretty: bool | None) -> None:
    if pretty is None:
        pretty = stream.isatty()
    text = json.dumps(
        value, indent=2 if pretty else None, ensure_ascii=False, separators=None if pretty else (",", ":")
    )
    stream.write(text + "\n")
    stream.flush()


def _fail(message: str, code: str) -> NoReturn:
    sys.stderr.write(f"unixrpc: {message}\n")
    raise _Exit(EXIT[code])


def _report_rpc_error(error: RPCError, pretty: bool | None) -> NoReturn:
    body: dict[str, Any] = {"code": error.code, "message": error.message}
    if error.data is not None:
        body["data"] = error.data
    _dump({"error": body}, sys.stderr, pretty=pretty)
    if isinstance(error, MethodNotFoundError):
        raise _Exit(EXIT["method"])
    if isinstance(error, InvalidParamsError):
        raise _Exit(EXIT["params"])
    raise _Exit(EXIT["error"])


@contextlib.contextmanager
def _reporting(pretty: bool | None) -> Iterator[None]:
    """Turn what the library raises into a message and an exit code."""
    try:
        yield
    except RPCError as error:
        _report_rpc_error(error, pretty)
    except TimeoutError as error:
        if isinstance(error, ConnectError):
            _fail(str(error), "connect")
        _fail(f"timeout: {error}", "timeout")
    except (ConnectError, ConnectionError) as error:
        _fail(str(error), "connect")
    except (Error, ValueError, TypeError) as error:
        _fail(str(error), "usage")


# -- addresses, params, descriptors ---------------------------------------------------


def _address(text: str) -> str | bytes:
    """``@name`` is an abstract name; anything else a path."""
    return b"\0" + text[1:].encode() if text.startswith("@") else text


def _connect(args: argparse.Namespace) -> Client:
    return Client(_address(args.socket), timeout=args.timeout, connect_timeout=args.timeout)


_documents: weakref.WeakKeyDictionary[Client, dict[str, Any] | None] = weakref.WeakKeyDictionary()


def _describe(client: Client) -> dict[str, Any] | None:
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


def _find_method(document: dict[str, Any] | None, name: str) -> dict[str, Any] | None:
    for entry in (document or {}).get("methods", ()):
        if entry.get("name") == name:
            return entry  # type: ignore[no-any-return]
    return None


def _coerce(text: str, schema: Any, schemas: dict[str, Any]) -> Any:
    """A ``key=value`` value as the param's schema wants it: a string param
    takes the text as it is; anything else is read as JSON when it parses
    (``n=3``, ``flag=true``, ``ids=[1,2]``), else kept as text."""
    schema = interface.resolve(schema, schemas)
    kinds: set[str] = set()
    for branch in [schema, *schema.get("anyOf", ())] if isinstance(schema, dict) else []:
        branch = interface.resolve(branch, schemas)
        kind = branch.get("type") if isinstance(branch, dict) else None
        kinds.update([kind] if isinstance(kind, str) else kind or [])
    if kinds == {"string"} or (kinds == {"string", "null"} and text != "null"):
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text


def _read_params(args: argparse.Namespace, client: Client) -> dict[str, Any]:
    raw: list[str] = args.params
    if not raw:
        return {}
    if len(raw) == 1 and (raw[0] == "-" or raw[0].lstrip().startswith("{")):
        text = sys.stdin.read() if raw[0] == "-" else raw[0]
        try:
            params = json.loads(text)
        except ValueError as exc:
            _fail(f"params are not valid JSON: {exc}", "usage")
        if not isinstance(params, dict):
            _fail(f"params must be a JSON object, got {type(params).__name__}", "usage")
        return params
    pairs = []
    for item in raw:
        key, sep, value = item.partition("=")
        if not sep or not key:
            _fail(f"expected key=value (or one JSON object), got {item!r}", "usage")
        pairs.append((key, value))
    document = _describe(client)
    entry = _find_method(document, args.method)
    schemas = (document or {}).get("components", {}).get("schemas", {})
    declared = {param["name"]: param.get("schema", {}) for param in (entry or {}).get("params", ())}
    params = {}
    for key, value in pairs:
        if entry is not None and key not in declared:
            known = ", ".join(declared) or "none"
            sys.stderr.write(
                f"unixrpc: warning: {args.method} has no param {key!r} (params: {known}); "
                "the daemon ignores it\n"
            )
        params[key] = _coerce(value, declared.get(key, {}), schemas)
    return params


def _wrong_kind(client: Client, method: str, *, stream: bool) -> None:
    """If *method* is described as the other kind (a stream called with
    ``call``, or the reverse), say which command to use."""
    entry = _find_method(_describe(client), method)
    if entry is not None and bool(entry.get("x-unixrpc-stream")) != stream:
        right = "stream" if entry.get("x-unixrpc-stream") else "call"
        kind = "a stream method" if right == "stream" else "not a stream method"
        _fail(f"{method} is {kind}: use `unixrpc {right}`", "usage")


def _push_fds(paths: Sequence[str]) -> list[int]:
    """Open the ``--push-fd`` arguments: a number is a descriptor this process
    inherited (``3<file``), anything else a path, opened read-only."""
    fds = []
    try:
        for path in paths:
            if path.isdigit():
                os.fstat(int(path))
                fds.append(int(path))
            else:
                fds.append(os.open(path, os.O_RDONLY | os.O_CLOEXEC))
    except OSError as exc:
        for fd in fds:
            if str(fd) not in paths:
                os.close(fd)
        _fail(f"--push-fd: cannot open {exc.filename or path}: {exc.strerror}", "usage")
    return fds


def _fd_info(index: int, handle: FileDescriptor) -> dict[str, Any]:
    fd = handle.fileno()
    info: dict[str, Any] = {"fd": index}
    try:
        mode = os.fstat(fd).st_mode
        kinds = [
            (stat.S_ISREG, "file"),
            (stat.S_ISDIR, "directory"),
            (stat.S_ISFIFO, "pipe"),
            (stat.S_ISSOCK, "socket"),
            (stat.S_ISCHR, "character device"),
            (stat.S_ISBLK, "block device"),
        ]
        info["type"] = next((name for test, name in kinds if test(mode)), "other")
        info["path"] = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        info.setdefault("type", "unknown")
    return info


def _show_fds(value: Any, paths: Sequence[str], infos: list[dict[str, Any]]) -> Any:
    """*value* with each FD field (an index) replaced by what it refers to."""

    def replace(node: Any, parts: list[str]) -> Any:
        if not parts:
            if isinstance(node, int) and not isinstance(node, bool) and 0 <= node < len(infos):
                return infos[node]
            return node
        head, rest = parts[0], parts[1:]
        if head == "[]" and isinstance(node, list):
            return [replace(item, rest) for item in node]
        if head == "{}" and isinstance(node, dict):
            return {key: replace(item, rest) for key, item in node.items()}
        if isinstance(node, dict) and head in node:
            return {**node, head: replace(node[head], rest)}
        return node

    for path in paths:
        value = replace(value, _split_path(path))
    return value


def _split_path(path: str) -> list[str]:
    parts: list[str] = []
    for piece in path.replace("[]", ".[]").replace("{}", ".{}").split("."):
        if piece:
            parts.append(piece)
    return parts


def _output_reply(
    reply: JSONReply, args: argparse.Namespace, client: Client, saved: list[str], what: str
) -> None:
    with reply:
        value = reply.value
        if reply.fds:
            infos = [_fd_info(index, handle) for index, handle in enumerate(reply.fds)]
            entry = _find_method(_describe(client), args.method)
            paths = (entry or {}).get("x-unixrpc-fds", {}).get(what, [])
            if paths:
                value = _show_fds(value, paths, infos)
            else:
                sys.stderr.write(f"unixrpc: received descriptors: {json.dumps(infos)}\n")
            for handle in reply.fds:
                if saved:
                    _save_fd(handle, saved.pop(0))
        _dump(value, sys.stdout, pretty=args.pretty)


def _save_fd(handle: FileDescriptor, target: str) -> None:
    """Copy what can be read from a received descriptor (from its current
    offset) into the file *target*."""
    fd = handle.fileno()
    with contextlib.suppress(OSError):
        os.lseek(fd, 0, os.SEEK_SET)
    with open(target, "wb") as out:
        while chunk := os.read(fd, 1 << 16):
            out.write(chunk)


# -- subcommands ------------------------------------------------------------------


def _cmd_call(args: argparse.Namespace) -> int:
    with _reporting(args.pretty), _connect(args) as client:
        params = _read_params(args, client)
        fds = _push_fds(args.push_fd)
        try:
            reply = client.call_by_name(args.method, params, fds=fds)
        except ProtocolViolationError:
            _wrong_kind(client, args.method, stream=False)
            raise
        finally:
            for fd, path in zip(fds, args.push_fd, strict=True):
                if not path.isdigit():
                    os.close(fd)
        _output_reply(reply, args, client, list(args.save_fd), "result")
    return EXIT["ok"]


def _cmd_stream(args: argparse.Namespace) -> int:
    # Ctrl-C must cancel the stream, even when started from a shell that
    # ignores SIGINT in background jobs
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if args.pretty is None:
        args.pretty = False  # one JSON line per item, on a terminal too
    with _reporting(args.pretty), _connect(args) as client:
        params = _read_params(args, client)
        fds = _push_fds(args.push_fd)
        saved = list(args.save_fd)
        try:
            with client.stream_by_name(args.method, params, fds=fds) as items:
                for fd, path in zip(fds, args.push_fd, strict=True):
                    if not path.isdigit():
                        os.close(fd)
                fds = []
                try:
                    for item in items:
                        _output_reply(item, args, client, saved, "item")
                except ProtocolViolationError:
                    _wrong_kind(client, args.method, stream=True)
                    raise
                except KeyboardInterrupt:
                    items.close()  # tells the daemon to cancel the stream
                    sys.stderr.write("unixrpc: interrupted; the stream was cancelled\n")
                    return EXIT["interrupted"]
        finally:
            for fd in fds:
                os.close(fd)
    return EXIT["ok"]


def _type_of(schema: Any, schemas: dict[str, Any], depth: int = 0) -> str:
    """A short name for what *schema* accepts: ``integer``, ``list[User]``, ``str | None``."""
    if not isinstance(schema, dict) or depth > 6:
        return "any"
    ref = schema.get("$ref")
    if isinstance(ref, str):
        return ref.rsplit("/", 1)[-1]
    if schema.get(interface.FD_MARK):
        return "fd"
    if "const" in schema:
        return json.dumps(schema["const"])
    if "enum" in schema:
        return " | ".join(json.dumps(value) for value in schema["enum"])
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return " | ".join(_type_of(branch, schemas, depth + 1) for branch in schema[key])
    kind = schema.get("type")
    if kind == "array":
        return f"list[{_type_of(schema.get('items', {}), schemas, depth + 1)}]"
    if kind == "object" and isinstance(schema.get("additionalProperties"), dict):
        return f"dict[str, {_type_of(schema['additionalProperties'], schemas, depth + 1)}]"
    if isinstance(kind, list):
        return " | ".join(kind)
    return str(kind) if kind else "any"


def _signature(entry: dict[str, Any], schemas: dict[str, Any]) -> str:
    params = []
    for param in entry.get("params", ()):
        text = f"{param['name']}: {_type_of(param.get('schema'), schemas)}"
        if not param.get("required"):
            default = param.get("schema", {}).get("default")
            text += f" = {json.dumps(default)}"
        params.append(text)
    result = _type_of(entry.get("result", {}).get("schema"), schemas)
    arrow = f"stream of {result}" if entry.get("x-unixrpc-stream") else result
    return f"{entry['name']}({', '.join(params)}) -> {arrow}"


def _summary(document: dict[str, Any], out: IO[str], only: dict[str, Any] | None = None) -> None:
    schemas = document.get("components", {}).get("schemas", {})
    info = document.get("info", {})
    if only is None:
        out.write(f"{info.get('title', '?')} {info.get('version', '')}\n")
        if info.get("description"):
            out.write(f"  {info['description']}\n")
        out.write("\n")
    for entry in [only] if only is not None else document.get("methods", ()):
        out.write(_signature(entry, schemas) + "\n")
        text = entry.get("description") if only is not None else None
        text = text or entry.get("summary")
        if text:
            for line in text.splitlines():
                out.write(f"    {line}\n")
        fds = entry.get("x-unixrpc-fds")
        if fds:
            shown = "; ".join(f"{where}: {', '.join(paths)}" for where, paths in fds.items())
            out.write(f"    file descriptors: {shown}\n")
        for error in entry.get("x-unixrpc-errors", ()):
            data = error.get("data")
            fields = ""
            resolved = interface.resolve(data, schemas) if data is not None else None
            if isinstance(resolved, dict) and resolved.get("properties"):
                fields = (
                    " ("
                    + ", ".join(
                        f"{name}: {_type_of(sub, schemas)}" for name, sub in resolved["properties"].items()
                    )
                    + ")"
                )
            out.write(f"    raises {error['code']}{fields}: {error.get('message', '')}\n")
        if only is not None:
            for name in sorted(interface.refs_in([entry], schemas)):
                out.write(f"\n{name}: {json.dumps(schemas[name], ensure_ascii=False)}\n")
    out.flush()


def _fetch_document(args: argparse.Namespace) -> Any:
    """The daemon's interface document (``unixrpc.Describe``)."""
    with _reporting(args.pretty), _connect(args) as client:
        try:
            reply = client.call_by_name("unixrpc.Describe")
        except MethodNotFoundError:
            _fail(
                f"the daemon at {args.socket} does not describe itself (it serves no unixrpc.Describe: "
                "built with Server(introspection=False), or not a unixrpc daemon)",
                "method",
            )
        reply.close()
    return reply.value


def _cmd_describe(args: argparse.Namespace) -> int:
    document = _fetch_document(args)
    only = None
    if args.method is not None:
        only = _find_method(document, args.method)
        if only is None:
            names = [entry["name"] for entry in document.get("methods", ())]
            from ._core.messages import method_not_found

            _fail(method_not_found(args.method, names), "method")
    if args.json:
        _dump(only if only is not None else document, sys.stdout, pretty=args.pretty)
    else:
        _summary(document, sys.stdout, only)
    return EXIT["ok"]


def _cmd_list(args: argparse.Namespace) -> int:
    for entry in _fetch_document(args).get("methods", ()):
        sys.stdout.write(entry["name"] + "\n")
    return EXIT["ok"]


def _cmd_ping(args: argparse.Namespace) -> int:
    with _reporting(args.pretty), _connect(args) as client:
        started = time.monotonic()
        reply = client.call_by_name("unixrpc.Ping")
        elapsed = time.monotonic() - started
        reply.close()
        peer = client.get_peer_credentials()
    answer = dict(reply.value) if isinstance(reply.value, dict) else {"reply": reply.value}
    answer.update(pid=peer.pid, uid=peer.uid, gid=peer.gid, ms=round(elapsed * 1000, 3))
    _dump(answer, sys.stdout, pretty=args.pretty)
    return EXIT["ok"]


def load_server(spec: str) -> Any:
    """The object named by ``MODULE:ATTR`` (``pkg.mod:server``) or
    ``path/to/file.py:server``.

    Raises:
        ValueError: *spec* has no ``:ATTR``, or the attribute is missing.
        ImportError: the module cannot be imported.
    """
    module_name, sep, attr = spec.rpartition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"expected MODULE:ATTR (e.g. myapp.daemon:server), got {spec!r}")
    if module_name.endswith(".py") or os.sep in module_name:
        path = os.path.abspath(module_name)
        directory = os.path.dirname(path)
        if directory not in sys.path:
            sys.path.insert(0, directory)  # the file's siblings import as they do when it runs
        name = os.path.splitext(os.path.basename(path))[0]
        loaded = importlib.util.spec_from_file_location(name, path)
        if loaded is None or loaded.loader is None:
            raise ImportError(f"cannot import {path}")
        module = importlib.util.module_from_spec(loaded)
        sys.modules[name] = module
        loaded.loader.exec_module(module)
    else:
        if "" not in sys.path and os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())
        module = importlib.import_module(module_name)
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ValueError(f"{module_name} has no attribute {attr!r}") from None


def _cmd_schema(args: argparse.Namespace) -> int:
    from .server.server import Server

    try:
        server = load_server(args.target)
    except (ValueError, ImportError, OSError) as exc:
        _fail(str(exc), "usage")
    if not isinstance(server, Server):
        _fail(f"{args.target} is a {type(server).__name__}, not a unixrpc Server", "usage")
    document = server.interface_document()
    text = json.dumps(document, indent=2, ensure_ascii=False) + "\n"
    if args.output:
        with open(args.output, "w", encoding="utf-8") as out:
            out.write(text)
    else:
        sys.stdout.write(text)
    return EXIT["ok"]


def _cmd_compat(args: argparse.Namespace) -> int:
    documents = []
    for path in (args.old, args.new):
        try:
            with open(path, encoding="utf-8") as source:
                documents.append(json.load(source))
        except (OSError, ValueError) as exc:
            _fail(f"cannot read {path}: {exc}", "usage")
    changes = compat.compare(documents[0], documents[1])
    breaking = [change for change in changes if change.breaking]
    if args.json:
        _dump([change.as_dict() for change in changes], sys.stdout, pretty=args.pretty)
    else:
        for change in changes:
            sys.stdout.write(str(change) + "\n")
        verdict = f"{len(breaking)} breaking change(s)" if breaking else "no breaking changes"
        sys.stdout.write(f"{verdict} ({len(changes) - len(breaking)} compatible)\n")
    return EXIT["error"] if breaking else EXIT["ok"]


# -- the parser -------------------------------------------------------------------


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
            type=float,
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
        parents=[connected(_DEFAULT_TIMEOUT)],
        help="call a method, print its result as JSON",
        description="Call METHOD and print its result as JSON.",
        epilog="example: unixrpc call /run/app.sock Add a=1 b=2",
    )
    calls(call)
    call.set_defaults(run=_cmd_call)

    stream = commands.add_parser(
        "stream",
        parents=[connected(None)],
        help="call a stream method, print one JSON line per item",
        description="Print one JSON line per item until the stream ends or Ctrl-C, which cancels it "
        "on the daemon. --timeout applies to each item.",
        epilog="example: unixrpc stream /run/app.sock Countdown start=5",
    )
    calls(stream)
    stream.set_defaults(run=_cmd_stream)

    describe = commands.add_parser(
        "describe",
        parents=[connected(_DEFAULT_TIMEOUT)],
        help="what the daemon serves (a summary, or --json for its OpenRPC document)",
        description="Summarize the daemon's methods, or one method; --json prints the OpenRPC document.",
        epilog="example: unixrpc describe /run/app.sock users.Get",
    )
    describe.add_argument("method", nargs="?", metavar="METHOD", help="describe only this method")
    describe.add_argument("--json", action="store_true", help="the OpenRPC document (or method entry)")
    describe.set_defaults(run=_cmd_describe)

    listing = commands.add_parser(
        "list",
        parents=[connected(_DEFAULT_TIMEOUT)],
        help="the names of the methods served, one a line",
        epilog="example: unixrpc list /run/app.sock",
    )
    listing.set_defaults(run=_cmd_list)

    ping = commands.add_parser(
        "ping",
        parents=[connected(_DEFAULT_TIMEOUT)],
        help="is the daemon there? its name, version, pid and the round trip in ms",
        epilog="example: unixrpc ping /run/app.sock",
    )
    ping.set_defaults(run=_cmd_ping)

    schema = commands.add_parser(
        "schema",
        help="print the interface document of a Server in code, without running it",
        description="Import MODULE (or a .py file) and print the OpenRPC document of its Server ATTR.",
        epilog="example: unixrpc schema examples/rpc_daemon.py:server -o schemas/rpc_daemon.openrpc.json",
    )
    schema.add_argument(
        "target", metavar="MODULE:ATTR", help="e.g. myapp.daemon:server or path/daemon.py:server"
    )
    schema.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of stdout")
    schema.set_defaults(run=_cmd_schema)

    check = commands.add_parser(
        "compat",
        parents=[output],
        help="the breaking changes between two interface documents (exit 1 if any)",
        description="Compare two interface documents (OLD: what clients were built against, NEW: the "
        "daemon now) and report what would break those clients. Exit 1 if anything would.",
        epilog="example: unixrpc compat schemas/v1.json schemas/v2.json",
    )
    check.add_argument("old", metavar="OLD.json")
    check.add_argument("new", metavar="NEW.json")
    check.add_argument("--json", action="store_true", help="the changes as a JSON list")
    check.set_defaults(run=_cmd_compat)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``unixrpc`` command; returns its exit code (see :data:`EXIT`)."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except _Exit as done:
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
