"""schemas/*.openrpc.json are the current interface documents of the example
daemons (regenerate with ``make schemas``), and are valid OpenRPC as far as
the fields a reader relies on."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

DOCUMENTS = {
    "rpc_daemon.openrpc.json": "examples/rpc_daemon.py:server",
    "privsep_daemon.openrpc.json": "examples/privsep_daemon.py:server",
}


@pytest.mark.parametrize(("name", "target"), DOCUMENTS.items())
def test_documents_are_current(name: str, target: str) -> None:
    # in a subprocess: importing an example here would register its error
    # classes over the tests' own (same codes)
    result = subprocess.run(
        [sys.executable, "-m", "unixrpc", "schema", os.path.join(ROOT, target)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    with open(os.path.join(ROOT, "schemas", name), encoding="utf-8") as source:
        assert source.read() == result.stdout, f"schemas/{name} is stale: run `make schemas`"


@pytest.mark.parametrize(("name", "target"), DOCUMENTS.items())
def test_varlink_interfaces_are_current_and_parse(name: str, target: str) -> None:
    """schemas/*.varlink: what the example daemons answer to GetInterfaceDescription."""
    varlink = pytest.importorskip("varlink", reason="python-varlink is not installed")
    idl = name.replace(".openrpc.json", ".varlink")
    result = subprocess.run(
        [sys.executable, "-m", "unixrpc", "schema", "--varlink", os.path.join(ROOT, target)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    with open(os.path.join(ROOT, "schemas", idl), encoding="utf-8") as source:
        text = source.read()
    assert text == result.stdout, f"schemas/{idl} is stale: run `make schemas`"
    assert (
        varlink.Interface(text).name == text.split("interface ", 1)[1].split()[0]
    )  # python-varlink's scanner


@pytest.mark.parametrize("name", DOCUMENTS)
def test_documents_have_the_openrpc_shape(name: str) -> None:
    with open(os.path.join(ROOT, "schemas", name), encoding="utf-8") as source:
        document = json.load(source)
    assert document["openrpc"].startswith("1.")
    assert set(document["info"]) >= {"title", "version"}
    schemas = document.get("components", {}).get("schemas", {})
    text = json.dumps(document)
    for ref in {part.split('"')[0] for part in text.split('"$ref": "')[1:]}:
        assert ref.startswith("#/components/schemas/")
        assert ref.removeprefix("#/components/schemas/") in schemas, ref
    for entry in document["methods"]:
        assert entry["paramStructure"] == "by-name"
        assert all(set(param) >= {"name", "schema", "required"} for param in entry["params"])
        assert set(entry["result"]) == {"name", "schema"}
        assert not any(key.startswith("x-") and not key.startswith("x-unixrpc-") for key in entry)
