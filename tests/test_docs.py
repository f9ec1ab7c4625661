"""The docs stay true to the code: every test they name exists, every link resolves."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = sorted((ROOT / "docs").glob("*.md"))
#: `tests/file.py`, optionally followed by ::Class, ::test or ::Class::test.
TEST_REFERENCE = re.compile(r"`(tests/[\w/]+\.py)((?:::\w+)*)`")
#: A ``Class``/``test`` named on its own after a reference, as in "`TestA`, `TestB`".
BARE_NAME = re.compile(r"`((?:Test\w+|test_\w+)(?:::\w+)*)`")
LINK = re.compile(r"\]\(([^)#]+)(?:#[^)]*)?\)")


def defined_names(path: Path) -> set[str]:
    """``Class`` and ``Class::method`` and ``function`` names defined in a test file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            names.add(node.name)
            for item in node.body:
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                    names.add(f"{node.name}::{item.name}")
                    names.add(item.name)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):  # a TestCase made by a factory
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return names


def prose(text: str) -> str:
    """``text`` without its code: fenced blocks and inline spans."""
    text = re.sub(r"```.*?```", "", text, flags=re.DOTALL)
    return re.sub(r"`[^`\n]*`", "", text)


def references(text: str) -> list[tuple[str, str]]:
    """(file, name) for every test a text names; bare names belong to the last file named."""
    found: list[tuple[str, str]] = []
    last_file: str | None = None
    for paragraph in text.split("\n\n"):
        for match in re.finditer(f"{TEST_REFERENCE.pattern}|{BARE_NAME.pattern}", paragraph):
            file, suffix, bare = match.group(1), match.group(2), match.group(3)
            if file is not None:
                last_file = file
                if suffix:
                    found.append((file, suffix.removeprefix("::")))
            elif bare is not None and last_file is not None:
                found.append((last_file, bare))
    return found


@pytest.mark.parametrize("doc", DOCS, ids=lambda path: path.name)
def test_named_tests_exist(doc: Path) -> None:
    text = doc.read_text(encoding="utf-8")
    missing: list[str] = []
    for file, name in references(text):
        path = ROOT / file
        if not path.is_file():
            missing.append(file)
        elif name not in defined_names(path):
            missing.append(f"{file}::{name}")
    assert not missing, f"{doc.name} names tests that do not exist: {missing}"


@pytest.mark.parametrize("doc", [*DOCS, ROOT / "README.md"], ids=lambda path: path.name)
def test_relative_links_resolve(doc: Path) -> None:
    text = doc.read_text(encoding="utf-8")
    broken = [
        target
        for target in LINK.findall(prose(text))
        if "://" not in target and not (doc.parent / target).exists()
    ]
    assert not broken, f"{doc.name} links to files that do not exist: {broken}"


def test_promises_name_tests() -> None:
    text = (ROOT / "docs" / "promises.md").read_text(encoding="utf-8")
    assert len(references(text)) >= 20
