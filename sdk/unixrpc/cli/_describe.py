"""``unixrpc describe``, ``list`` and ``ping``: what a daemon serves, and
whether it is there."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import IO, Any

from .. import interface
from ._common import EXIT, connect, dump, fail, fetch_document, find_method, reporting


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


def run_describe(args: argparse.Namespace) -> int:
    document = fetch_document(args.socket, args.timeout, args.pretty)
    only = None
    if args.method is not None:
        only = find_method(document, args.method)
        if only is None:
            names = [entry["name"] for entry in document.get("methods", ())]
            from .._core.messages import method_not_found

            fail(method_not_found(args.method, names), "method")
    if args.json:
        dump(only if only is not None else document, sys.stdout, pretty=args.pretty)
    else:
        _summary(document, sys.stdout, only)
    return EXIT["ok"]


def run_list(args: argparse.Namespace) -> int:
    for entry in fetch_document(args.socket, args.timeout, args.pretty).get("methods", ()):
        sys.stdout.write(entry["name"] + "\n")
    return EXIT["ok"]


def run_ping(args: argparse.Namespace) -> int:
    with reporting(args.pretty), connect(args) as client:
        started = time.monotonic()
        reply = client.call_by_name("unixrpc.Ping")
        elapsed = time.monotonic() - started
        reply.close()
        peer = client.get_peer_credentials()
    answer = dict(reply.value) if isinstance(reply.value, dict) else {"reply": reply.value}
    answer.update(pid=peer.pid, uid=peer.uid, gid=peer.gid, ms=round(elapsed * 1000, 3))
    dump(answer, sys.stdout, pretty=args.pretty)
    return EXIT["ok"]
