"""``unixrpc call`` and ``unixrpc stream``: params from the command line,
descriptors pushed and received, replies printed."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import stat
import sys
from collections.abc import Iterator, Sequence
from typing import Any

from .. import interface
from ..client import Client
from ..exceptions import ConnectError, ProtocolViolationError
from ..fds import FileDescriptor
from ..untyped import JSONReply
from ._common import EXIT, connect, describe_daemon, dump, fail, find_method, reporting


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
            fail(f"params are not valid JSON: {exc}", "usage")
        if not isinstance(params, dict):
            fail(f"params must be a JSON object, got {type(params).__name__}", "usage")
        return params
    pairs = []
    for item in raw:
        key, sep, value = item.partition("=")
        if not sep or not key:
            fail(f"expected key=value (or one JSON object), got {item!r}", "usage")
        pairs.append((key, value))
    document = describe_daemon(client)
    entry = find_method(document, args.method)
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
    entry = find_method(describe_daemon(client), method)
    if entry is not None and bool(entry.get("x-unixrpc-stream")) != stream:
        right = "stream" if entry.get("x-unixrpc-stream") else "call"
        kind = "a stream method" if right == "stream" else "not a stream method"
        fail(f"{method} is {kind}: use `unixrpc {right}`", "usage")


def plural(count: int, noun: str) -> str:
    """``1 descriptor``, ``2 descriptors``."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _check_pushed(args: argparse.Namespace, client: Client, params: dict[str, Any]) -> None:
    """With the method's schema known, refuse ``--push-fd`` for a method
    that takes no descriptors and params that refer to one not pushed, and
    warn of a pushed descriptor no param refers to."""
    pushed = len(args.push_fd)
    if not pushed:
        return
    entry = find_method(describe_daemon(client), args.method)
    if entry is None:
        return  # not described: the daemon decides
    paths = entry.get("x-unixrpc-fds", {}).get("params", [])
    if not paths:
        fail(
            f"{args.method} takes no file descriptors (none of its params is an FD), but --push-fd "
            f"gave {plural(pushed, 'descriptor')}: leave --push-fd out",
            "usage",
        )
    referred: set[int] = set()
    for path in paths:
        for where, index in _values_at(params, _split_path(path), path):
            if isinstance(index, int) and not isinstance(index, bool):
                if index >= pushed:
                    fail(
                        f"param {where} refers to descriptor {index}, but --push-fd gave "
                        f"{plural(pushed, 'descriptor')} (indexes start at 0)",
                        "usage",
                    )
                referred.add(index)
    for index, source in enumerate(args.push_fd):
        if index not in referred:
            sys.stderr.write(
                f"unixrpc: warning: descriptor {index} (--push-fd {source}) is not referred to by any "
                f"param of {args.method} (its FD params: {', '.join(paths)}); the daemon closes it\n"
            )


def _values_at(node: Any, parts: list[str], shown: str) -> Iterator[tuple[str, Any]]:
    """The values found at a path of ``x-unixrpc-fds`` (``files[]``,
    ``by_name{}``, ``file.fd``), each with where it is."""
    if not parts:
        yield shown, node
        return
    head, rest = parts[0], parts[1:]
    if head == "[]" and isinstance(node, list):
        for item in node:
            yield from _values_at(item, rest, shown)
    elif head == "{}" and isinstance(node, dict):
        for item in node.values():
            yield from _values_at(item, rest, shown)
    elif isinstance(node, dict) and head in node:
        yield from _values_at(node[head], rest, shown)


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
        fail(f"--push-fd: cannot open {exc.filename or path}: {exc.strerror}", "usage")
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
) -> int:
    """Print *reply*, its descriptors in place, and save them to the next
    ``--save-fd`` files; returns how many descriptors it carried."""
    with reply:
        value = reply.value
        if reply.fds:
            infos = [_fd_info(index, handle) for index, handle in enumerate(reply.fds)]
            entry = find_method(describe_daemon(client), args.method)
            paths = (entry or {}).get("x-unixrpc-fds", {}).get(what, [])
            if paths:
                value = _show_fds(value, paths, infos)
            else:
                sys.stderr.write(f"unixrpc: received descriptors: {json.dumps(infos)}\n")
            for handle in reply.fds:
                if saved:
                    _save_fd(handle, saved.pop(0))
        dump(value, sys.stdout, pretty=args.pretty)
        return len(reply.fds)


def _unsaved(saved: list[str], received: int, what: str) -> None:
    """Fail (exit 7) if ``--save-fd`` named more files than descriptors came."""
    if saved:
        files = ", ".join(saved)
        written = "this file was" if len(saved) == 1 else "these files were"
        fail(
            f"--save-fd {files}: {what} carried {plural(received, 'descriptor')}, so {written} not written",
            "fds",
        )


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


def _close_opened(fds: list[int], sources: Sequence[str]) -> None:
    """Close the descriptors ``--push-fd`` opened (not the inherited ones)."""
    for fd, source in zip(fds, sources, strict=True):
        if not source.isdigit():
            os.close(fd)


def run_call(args: argparse.Namespace) -> int:
    """``unixrpc call``; returns the exit code (or raises :class:`Exit`)."""
    with reporting(args.pretty), connect(args) as client:
        params = _read_params(args, client)
        _check_pushed(args, client, params)
        fds = _push_fds(args.push_fd)
        try:
            reply = client.call_by_name(args.method, params, fds=fds)
        except ProtocolViolationError:
            _wrong_kind(client, args.method, stream=False)
            raise
        except TimeoutError as error:
            if isinstance(error, ConnectError):
                raise
            fail(f"timeout: {error} (--timeout {args.timeout:g}; raise it to wait longer)", "timeout")
        finally:
            _close_opened(fds, args.push_fd)
        saved = list(args.save_fd)
        received = _output_reply(reply, args, client, saved, "result")
        _unsaved(saved, received, "the reply")
    return EXIT["ok"]


def run_stream(args: argparse.Namespace) -> int:
    """``unixrpc stream``; returns the exit code (or raises :class:`Exit`)."""
    # Ctrl-C must cancel the stream, even when started from a shell that
    # ignores SIGINT in background jobs
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if args.pretty is None:
        args.pretty = False  # one JSON line per item, on a terminal too
    with reporting(args.pretty), connect(args) as client:
        params = _read_params(args, client)
        _check_pushed(args, client, params)
        fds = _push_fds(args.push_fd)
        saved = list(args.save_fd)
        received = 0
        try:
            with client.stream_by_name(args.method, params, fds=fds) as items:
                _close_opened(fds, args.push_fd)
                fds = []
                try:
                    for item in items:
                        received += _output_reply(item, args, client, saved, "item")
                except TimeoutError as error:
                    if isinstance(error, ConnectError):
                        raise
                    fail(
                        f"timeout: no item from {args.method} within {args.timeout:g} s (--timeout "
                        "applies to each item; leave it out to wait for ever)",
                        "timeout",
                    )
                except ProtocolViolationError:
                    _wrong_kind(client, args.method, stream=True)
                    raise
                except KeyboardInterrupt:
                    items.close()  # tells the daemon to cancel the stream
                    sys.stderr.write("unixrpc: interrupted; the stream was cancelled\n")
                    return EXIT["interrupted"]
        finally:
            _close_opened(fds, args.push_fd)
        _unsaved(saved, received, "the stream's items")
    return EXIT["ok"]
