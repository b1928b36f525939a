"""``unixrpc schema`` and ``unixrpc compat``: interface documents from
code, files and running daemons, and what changed between two of them."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import sys
from typing import Any

from .. import compat
from ._common import EXIT, dump, fail


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


def run_schema(args: argparse.Namespace) -> int:
    from ..server.server import Server

    try:
        server = load_server(args.target)
    except (ValueError, ImportError, OSError) as exc:
        fail(str(exc), "usage")
    if not isinstance(server, Server):
        fail(f"{args.target} is a {type(server).__name__}, not a unixrpc Server", "usage")
    document = server.interface_document()
    text = json.dumps(document, indent=2, ensure_ascii=False) + "\n"
    if args.output:
        with open(args.output, "w", encoding="utf-8") as out:
            out.write(text)
    else:
        sys.stdout.write(text)
    return EXIT["ok"]


def run_compat(args: argparse.Namespace) -> int:
    documents = []
    for path in (args.old, args.new):
        try:
            with open(path, encoding="utf-8") as source:
                documents.append(json.load(source))
        except (OSError, ValueError) as exc:
            fail(f"cannot read {path}: {exc}", "usage")
    changes = compat.compare(documents[0], documents[1])
    breaking = [change for change in changes if change.breaking]
    if args.json:
        dump([change.as_dict() for change in changes], sys.stdout, pretty=args.pretty)
    else:
        for change in changes:
            sys.stdout.write(str(change) + "\n")
        verdict = f"{len(breaking)} breaking change(s)" if breaking else "no breaking changes"
        sys.stdout.write(f"{verdict} ({len(changes) - len(breaking)} compatible)\n")
    return EXIT["error"] if breaking else EXIT["ok"]
