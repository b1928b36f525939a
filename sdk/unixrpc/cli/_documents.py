"""``unixrpc schema`` and ``unixrpc compat``: interface documents from
code, files and running daemons, and what changed between two of them."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import stat
import subprocess
import sys
from typing import Any

from .. import compat
from ._common import EXIT, Exit, dump, fail, fetch_document


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


def _server_document_text(target: str) -> str:
    """The interface document of the Server *target* names, as ``schema``
    writes it (indented JSON and a newline).

    Raises:
        Exit: *target* cannot be imported or is not a Server (2).
    """
    from ..server.server import Server

    try:
        server = load_server(target)
    except (ValueError, ImportError, OSError) as exc:
        fail(str(exc), "usage")
    if not isinstance(server, Server):
        fail(f"{target} is a {type(server).__name__}, not a unixrpc Server", "usage")
    return json.dumps(server.interface_document(), indent=2, ensure_ascii=False) + "\n"


def run_schema(args: argparse.Namespace) -> int:
    """``unixrpc schema``; with ``--check``, exit 1 when ``-o FILE`` is stale."""
    if args.check and not args.output:
        fail("--check compares with the file given by -o FILE: give it", "usage")
    if args.varlink:
        text = _server_idl_text(args.target)
        if args.check:
            return _check_idl(args.target, args.output, text)
    else:
        text = _server_document_text(args.target)
    if args.check:
        return _check(args.target, args.output, text)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as out:
            out.write(text)
    else:
        sys.stdout.write(text)
    return EXIT["ok"]


def _server_idl_text(target: str) -> str:
    """The varlink IDL of the Server *target* names (``schema --varlink``).

    Raises:
        Exit: *target* cannot be imported, is not a Server, or has no varlink face (2).
    """
    from ..server.server import Server
    from ..server.varlink_face import interface_description

    try:
        server = load_server(target)
    except (ValueError, ImportError, OSError) as exc:
        fail(str(exc), "usage")
    if not isinstance(server, Server):
        fail(f"{target} is not a unixrpc Server", "usage")
    try:
        return interface_description(server)
    except (ValueError, TypeError) as exc:
        fail(f"{target} has no varlink description: {exc}", "usage")


def _check_idl(target: str, path: str, text: str) -> int:
    """Whether the varlink IDL in *path* is what *target* describes now."""
    try:
        with open(path, encoding="utf-8") as source:
            stored: str | None = source.read()
    except OSError as exc:
        stored, why = None, f"cannot read it ({exc.strerror})"
    if stored == text:
        return EXIT["ok"]
    if stored is not None:
        why = "it differs from the interface of the code"
    sys.stderr.write(
        f"unixrpc: {path} is stale: {why}\nregenerate it: unixrpc schema --varlink {target} -o {path}\n"
    )
    return EXIT["error"]


def _check(target: str, path: str, text: str) -> int:
    """Whether the document in *path* is what *target* describes now; say
    what differs on stderr."""
    try:
        with open(path, encoding="utf-8") as source:
            stored = source.read()
    except OSError as exc:
        stored, why = None, f"cannot read it ({exc.strerror})"
    if stored == text:
        return EXIT["ok"]
    if stored is not None:
        why = "it differs from the document of the code"
        try:
            changes = compat.compare(json.loads(stored), json.loads(text))
        except ValueError:
            why = "it is not an interface document"
        else:
            lines = [f"  {change}" for change in changes] or ["  (the same interface, written differently)"]
            why += " (from the file to the code):\n" + "\n".join(lines)
    sys.stderr.write(f"unixrpc: {path} is stale: {why}\nregenerate it: unixrpc schema {target} -o {path}\n")
    return EXIT["error"]


def _looks_like_target(source: str) -> bool:
    module, sep, attr = source.rpartition(":")
    return bool(sep and module and attr.isidentifier())


def load_document(source: str, timeout: float | None) -> Any:
    """The interface document *source* names: a file holding one (JSON), a
    running daemon's socket (a path to a socket, or ``@name``), or the Server
    ``MODULE:ATTR`` names (imported in a child process, so that two versions
    of one module do not meet).

    Raises:
        Exit: it cannot be read, reached or imported (2, 3 or 4); the message
            is on stderr.
    """
    if source.startswith("@"):
        return fetch_document(source, timeout, None)
    try:
        info = os.stat(source)
    except OSError as exc:
        if _looks_like_target(source):
            return json.loads(_document_of_target(source))
        fail(
            f"cannot read {source}: {exc.strerror} (give an interface document, a daemon's socket, "
            "or MODULE:ATTR)",
            "usage",
        )
    if stat.S_ISSOCK(info.st_mode):
        return fetch_document(source, timeout, None)
    try:
        with open(source, encoding="utf-8") as opened:
            return json.load(opened)
    except (OSError, ValueError) as exc:
        fail(f"cannot read {source}: {exc}", "usage")


def _document_of_target(target: str) -> str:
    """``unixrpc schema TARGET``'s output, from a child process."""
    package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, "-m", "unixrpc", "schema", target],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if done.returncode != 0:
        sys.stderr.write(done.stderr)
        raise Exit(done.returncode)
    return done.stdout


def run_compat(args: argparse.Namespace) -> int:
    """``unixrpc compat``: exit 1 when NEW breaks clients of OLD."""
    documents = [load_document(source, args.timeout) for source in (args.old, args.new)]
    try:
        changes = compat.compare(documents[0], documents[1])
    except ValueError as exc:
        fail(str(exc), "usage")
    breaking = [change for change in changes if change.breaking]
    if args.json:
        dump([change.as_dict() for change in changes], sys.stdout, pretty=args.pretty)
    else:
        for change in changes:
            sys.stdout.write(str(change) + "\n")
        verdict = f"{len(breaking)} breaking change(s)" if breaking else "no breaking changes"
        sys.stdout.write(f"{verdict} ({len(changes) - len(breaking)} compatible)\n")
    return EXIT["error"] if breaking else EXIT["ok"]
