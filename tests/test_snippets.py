"""Every Python block of the docs and of the README runs, so that no snippet can rot.

A fenced ```` ```python ```` block of ``README.md`` or ``docs/**/*.md`` runs in
this process, in a namespace of its own named ``__main__``; a block with a
top-level ``await`` runs as a coroutine under ``asyncio.run()``. An HTML
comment on the line before a fence (blank lines between are allowed) says
more:

* ``<!-- output -->`` before a ```` ```text ```` block: that block is exactly
  what the python block before it printed;
* ``<!-- continue -->`` before a python block: it runs in the namespace of the
  python block before it, as the next cell of one program;
* ``<!-- pytest -->`` before a python block: it is a test module; it is written
  to a file, and pytest runs it in a subprocess, where it must pass;
* ``<!-- skip: why -->`` before a python block: it does not run, and says why.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import io
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^```(\w*)\s*$")
MARKER = re.compile(r"^<!--\s*(output|continue|pytest|skip)\s*(?::\s*(.*?))?\s*-->$")


@dataclass
class Block:
    """One fenced block: where it is, its language, its text and its marker."""

    path: Path
    line: int
    language: str
    text: str
    marker: str | None
    reason: str

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


@dataclass
class Program:
    """Python blocks run one after another in one namespace, and what each prints."""

    blocks: list[Block]
    outputs: dict[int, Block] = field(default_factory=dict[int, Block])

    @property
    def where(self) -> str:
        return self.blocks[0].where


def fenced_blocks(path: Path, text: str | None = None) -> list[Block]:
    """Every fenced block of a Markdown file (or of ``text``), with the marker before it."""
    if text is None:
        text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    blocks: list[Block] = []
    index = 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if opening is None:
            index += 1
            continue
        end = index + 1
        while end < len(lines) and lines[end].rstrip() != "```":
            end += 1
        before = index - 1
        while before >= 0 and not lines[before].strip():
            before -= 1
        marker = MARKER.match(lines[before].strip()) if before >= 0 else None
        blocks.append(
            Block(
                path=path,
                line=index + 1,
                language=opening.group(1),
                text="\n".join(lines[index + 1 : end]) + "\n",
                marker=marker.group(1) if marker else None,
                reason=(marker.group(2) or "") if marker else "",
            )
        )
        index = end + 1
    return blocks


def programs(path: Path, text: str | None = None) -> tuple[list[Program], list[Block], list[str]]:
    """The file's programs, its skipped blocks, and what is wrong with its markers."""
    found: list[Program] = []
    skipped: list[Block] = []
    problems: list[str] = []
    last: Program | None = None
    for block in fenced_blocks(path, text):
        if block.language == "python":
            if block.marker == "skip":
                skipped.append(block)
                last = None
                if not block.reason:
                    problems.append(f"{block.where}: a skip must say why")
            elif block.marker == "continue":
                if last is None:
                    problems.append(f"{block.where}: nothing to continue")
                else:
                    last.blocks.append(block)
            elif block.marker in (None, "pytest"):
                last = Program([block])
                found.append(last)
            else:
                problems.append(f"{block.where}: <!-- {block.marker} --> before a python block")
        elif block.marker == "output":
            if block.language != "text" or last is None:
                problems.append(f"{block.where}: an output must be a text block after a program")
            else:
                last.outputs[len(last.blocks) - 1] = block
        elif block.marker is not None:
            problems.append(
                f"{block.where}: <!-- {block.marker} --> before a {block.language!r} block"
            )
    return found, skipped, problems


ALL = [(path, *programs(path)) for path in SOURCES]
PROGRAMS = [program for _, found, _, _ in ALL for program in found]


def run_block(block: Block, namespace: dict[str, Any]) -> str:
    """Run one block in ``namespace``; return what it printed."""
    code = compile(
        block.text, block.where, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True
    )
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        result = eval(code, namespace)  # a coroutine if the block awaits at top level
        if asyncio.iscoroutine(result):
            asyncio.run(result)
    return printed.getvalue()


def run_as_test_module(block: Block, tmp_path: Path) -> None:
    module = tmp_path / "test_snippet.py"
    module.write_text(block.text, encoding="utf-8")
    result = subprocess.run(
        [
            *(sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "error"),
            *("-o", "asyncio_default_fixture_loop_scope=function", str(module)),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"{block.where}:\n{result.stdout}\n{result.stderr}"
    assert " passed" in result.stdout


@pytest.mark.parametrize("program", PROGRAMS, ids=lambda program: program.where)
def test_snippet_runs(program: Program, tmp_path: Path) -> None:
    first = program.blocks[0]
    if first.marker == "pytest":
        assert len(program.blocks) == 1, f"{first.where}: a test module cannot be continued"
        run_as_test_module(first, tmp_path)
        return
    namespace: dict[str, Any] = {"__name__": "__main__"}
    for index, block in enumerate(program.blocks):
        printed = run_block(block, namespace)
        expected = program.outputs.get(index)
        if expected is not None:
            assert printed == expected.text, (
                f"{block.where} printed something else than {expected.where} says:\n{printed}"
            )


def test_markers_are_well_formed() -> None:
    problems = [problem for _, _, _, found in ALL for problem in found]
    assert not problems


def test_the_collector_finds_the_snippets() -> None:
    # The README's tour and the tutorial's programs at least; a parsing slip that
    # found none would otherwise pass unnoticed.
    sources = {program.blocks[0].path.name for program in PROGRAMS}
    assert {"README.md", "tutorial.md", "index.md"} <= sources
    assert len(PROGRAMS) >= 15


def test_the_collector_reads_markers() -> None:
    text = textwrap.dedent(
        """\
        ```python
        print(1)
        ```

        <!-- output -->
        ```text
        1
        ```

        <!-- continue -->
        ```python
        x = 2
        ```

        <!-- skip: needs a server -->
        ```python
        serve()
        ```

        <!-- skip -->
        ```python
        serve()
        ```

        <!-- continue -->
        ```python
        x = 3
        ```
        """
    )
    path = ROOT / "docs" / "example.md"
    blocks = fenced_blocks(path, text)
    assert [(b.line, b.language, b.marker, b.reason) for b in blocks] == [
        (1, "python", None, ""),
        (6, "text", "output", ""),
        (11, "python", "continue", ""),
        (16, "python", "skip", "needs a server"),
        (21, "python", "skip", ""),
        (26, "python", "continue", ""),
    ]
    found, skipped, problems = programs(path, text)
    assert [[b.line for b in program.blocks] for program in found] == [[1, 11]]
    assert found[0].outputs[0].line == 6
    assert [b.line for b in skipped] == [16, 21]
    assert problems == [
        "docs/example.md:21: a skip must say why",
        "docs/example.md:26: nothing to continue",
    ]
