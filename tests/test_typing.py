"""mypy infers the result type of a call from the method class (and rejects
misuse): run mypy --strict on tests/typing/calls.py and compare with the
expectations written in its comments; and every example of the README,
docs/rpc.md and docs/fds.md passes mypy --strict."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
SAMPLE = os.path.join(HERE, "typing", "calls.py")


def test_mypy_infers_call_result_types() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--show-error-codes", "calls.py"],
        cwd=os.path.dirname(SAMPLE),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    output = result.stdout
    with open(SAMPLE) as sample:
        lines = sample.read().splitlines()
    expected_reveals = {
        number: match.group(1)
        for number, line in enumerate(lines, 1)
        if (match := re.search(r"# expect: (\S+)", line))
    }
    expected_errors = {
        number: match.group(1)
        for number, line in enumerate(lines, 1)
        if (match := re.search(r"# expect-error: (\S+)", line))
    }
    reveals = {
        int(m.group(1)): m.group(2)
        for m in re.finditer(r"calls\.py:(\d+): note: Revealed type is \"([^\"]+)\"", output)
    }
    errors = {
        int(m.group(1)): m.group(2)
        for m in re.finditer(r"calls\.py:(\d+): error: .*\[([\w-]+)\]$", output, re.M)
    }
    assert reveals == expected_reveals, output
    assert errors == expected_errors, output


DOCS = ["README.md", "docs/rpc.md", "docs/fds.md"]
#: before a ```python block: check it as a module of its own (it imports
#: what it needs rather than building on the blocks before it)
STANDALONE = "<!-- typing: standalone -->"


def _blocks(text: str) -> list[tuple[int, str, bool]]:
    """The ```python blocks of a markdown text: (line of the first code line,
    code, standalone)."""
    blocks: list[tuple[int, str, bool]] = []
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        if lines[index].strip() == "```python":
            standalone = index > 0 and lines[index - 1].strip() == STANDALONE
            end = lines.index("```", index + 1)
            blocks.append((index + 2, "\n".join(lines[index + 1 : end]), standalone))
            index = end
        index += 1
    return blocks


def _awaits(node: ast.AST) -> bool:
    """Whether *node* awaits outside any function of its own (top-level
    ``await``, ``async with``, ``async for``)."""
    if isinstance(node, (ast.Await, ast.AsyncWith, ast.AsyncFor)):
        return True
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
        return False
    return any(_awaits(child) for child in ast.iter_child_nodes(node))


def _module(blocks: list[tuple[int, str]]) -> tuple[str, dict[int, int]]:
    """One module of doc blocks (and, for each of its lines, the doc line it
    came from): top-level statements that await run inside an ``async def``
    of their own, the rest at module level, in order."""
    out = ["from __future__ import annotations", "from doc_context import *  # noqa: F403"]
    origin: dict[int, int] = {}
    for first_line, code in blocks:
        lines = code.splitlines()
        tree = compile(code, "<doc>", "exec", flags=ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
        assert isinstance(tree, ast.Module)
        for statement in tree.body:
            start, end = statement.lineno, statement.end_lineno or statement.lineno
            if isinstance(statement, (ast.AsyncFunctionDef, ast.FunctionDef, ast.ClassDef)):
                start = min([start, *(d.lineno for d in statement.decorator_list)])
            indent = ""
            if _awaits(statement):
                out.append(f"async def _example_{len(out)}() -> None:")
                indent = "    "
            for number in range(start, end + 1):
                out.append(indent + lines[number - 1])
                origin[len(out)] = first_line + number - 1
    return "\n".join(out) + "\n", origin


def test_doc_examples_pass_mypy_strict(tmp_path: Any) -> None:
    """Every ```python example of README.md, docs/rpc.md and docs/fds.md
    passes ``mypy --strict``: the blocks of a document, in order, form one
    module (names flow from block to block), but a block marked
    ``<!-- typing: standalone -->`` is a module of its own; what examples take
    from around them (a client, a path) comes from tests/typing/doc_context.py."""
    root = os.path.dirname(HERE)
    origins: dict[str, tuple[str, dict[int, int]]] = {}
    for doc in DOCS:
        with open(os.path.join(root, doc)) as file:
            blocks = _blocks(file.read())
        assert blocks, doc
        base = "doc_" + os.path.basename(doc).removesuffix(".md").lower()
        groups = [[(line, code) for line, code, alone in blocks if not alone]]
        groups += [[(line, code)] for line, code, alone in blocks if alone]
        for number, group in enumerate(groups):
            name = f"{base}_{number}.py"
            source, origin = _module(group)
            (tmp_path / name).write_text(source)
            origins[name] = (doc, origin)
    env = {**os.environ, "MYPYPATH": os.path.join(HERE, "typing")}
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--show-error-codes", *origins],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    problems = []
    for match in re.finditer(r"^(doc_\w+\.py):(\d+): (error|note): (.*)$", result.stdout, re.M):
        doc, origin = origins[match.group(1)]
        problems.append(f"{doc}:{origin.get(int(match.group(2)), '?')}: {match.group(3)}: {match.group(4)}")
    assert not problems, "\n".join(problems)
    assert result.returncode == 0, result.stdout + result.stderr
