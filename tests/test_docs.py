"""The docs stay true to the code.

Every test they name exists, every link resolves, the tables of errors, codes
and options are those of the code, the API reference names every public name,
and the site's navigation lists every page. (``tests/test_snippets.py`` runs
their code.)
"""

from __future__ import annotations

import ast
import importlib
import re
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from collections.abc import Callable

ROOT = Path(__file__).resolve().parent.parent
DOCS = sorted((ROOT / "docs").rglob("*.md"))
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


def doc_id(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


@pytest.mark.parametrize("doc", DOCS, ids=doc_id)
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


@pytest.mark.parametrize("doc", [*DOCS, ROOT / "README.md"], ids=doc_id)
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


# -- the tables of docs/errors.md and docs/configuration.md are the code's -------------


def plain(docstring_text: str) -> str:
    """A docstring's reST as Markdown: roles and double backquotes become code spans."""
    text = re.sub(r":\w+:`~?([^`]+)`", r"`\1`", docstring_text)
    return text.replace("``", "`")


def exception_table() -> str:
    """The table of docs/errors.md's exceptions, as the code has them."""
    import activity
    from activity import ActivityError

    public = [getattr(activity, name) for name in activity.__all__]
    errors = [ActivityError] + [
        obj
        for obj in public
        if isinstance(obj, type) and issubclass(obj, ActivityError) and obj is not ActivityError
    ]
    rows = ["| exception | code | also a | raised when |", "|---|---|---|---|"]
    for cls in errors:
        also = ", ".join(
            f"`{base.__name__}`"
            for base in cls.__bases__
            if not issubclass(base, ActivityError) and base is not Exception
        )
        summary = plain((cls.__doc__ or "").strip().splitlines()[0])
        rows.append(f"| `{cls.__name__}` | `{cls.default_hresult.name}` | {also} | {summary} |")
    return "\n".join(rows) + "\n"


def hresult_table() -> str:
    """The table of docs/errors.md's codes, as the code has them."""
    from activity import HResult, error_from_hresult
    from activity.integrations.problem import DEFAULT_STATUS_MAP

    rows = [
        "| code | value | raised as | HTTP status | message |",
        "|---|---|---|---|---|",
    ]
    for code in HResult:
        if code.failed:
            raised = f"`{type(error_from_hresult(code)).__name__}`"
            status = str(DEFAULT_STATUS_MAP.get(code, 500))
        else:
            raised, status = "success", ""
        rows.append(f"| `{code.name}` | `0x{code:08X}` | {raised} | {status} | {code.message} |")
    return "\n".join(rows) + "\n"


@pytest.mark.parametrize("table", [exception_table, hresult_table], ids=lambda f: f.__name__)
def test_the_errors_page_has_the_codes_tables(table: Callable[[], str]) -> None:
    text = (ROOT / "docs" / "errors.md").read_text(encoding="utf-8")
    expected = table()
    assert expected in text, f"docs/errors.md should have this table:\n\n{expected}"


def test_the_configuration_page_lists_every_field_and_default() -> None:
    from activity import ActivityConfig

    text = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| `(\w+)` \| `([^`]*)` \|", text, flags=re.MULTILINE)
    expected = [
        (name, field.default.name if isinstance(field.default, Enum) else repr(field.default))
        for name, field in ActivityConfig.model_fields.items()
    ]
    assert rows == expected


# -- the API reference and the site's navigation ----------------------------------------


#: ``::: target`` and the indented options under it, in a page of the API reference.
DIRECTIVE = re.compile(r"^::: ([\w.]+)\n((?:    .*\n)*)", flags=re.MULTILINE)
PUBLIC_MODULES = [
    "activity",
    "activity.tracking",
    "activity.pytest_plugin",
    "activity.integrations.asgi",
    "activity.integrations.problem",
    "activity.integrations.starlette",
    "activity.integrations.fastapi",
    "activity.integrations.litestar",
    "activity.integrations.aiohttp",
]


def documented_objects() -> list[object]:
    """Every object the API reference renders: each ``:::`` target, or its ``members``."""
    found: list[object] = []
    for page in sorted((ROOT / "docs" / "reference").glob("*.md")):
        for target, options in DIRECTIVE.findall(page.read_text(encoding="utf-8")):
            members = re.findall(r"^\s+- (\w+)$", options, flags=re.MULTILINE)
            try:
                module = importlib.import_module(target)
            except ModuleNotFoundError:
                parent, _, name = target.rpartition(".")
                found.append(getattr(importlib.import_module(parent), name))
                continue
            names = members or getattr(module, "__all__", [])
            found.extend(getattr(module, name) for name in names)
    return found


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_the_api_reference_documents_every_public_name(module_name: str) -> None:
    module = importlib.import_module(module_name)
    documented = documented_objects()
    missing = [
        name
        for name in module.__all__
        if not any(getattr(module, name) is obj for obj in documented)
    ]
    assert not missing, f"docs/reference/ does not document {module_name}'s {missing}"


def test_the_site_lists_every_page() -> None:
    config = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    listed = re.findall(r"^\s+- (?:[^:\n]+: )?([\w/.-]+\.md)$", config, flags=re.MULTILINE)
    pages = [doc.relative_to(ROOT / "docs").as_posix() for doc in DOCS]
    assert sorted(listed) == sorted(pages)


# -- the README is a landing page ---------------------------------------------------------


def test_the_readme_is_a_landing_page_with_the_two_commands() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 180
    demo = "pip install -e '.[cli]' && python -m activity demo"
    tests = "pip install -e '.[dev]' && python -m pytest "
    assert demo in readme
    assert tests in readme
    # CI runs the README's test command, exactly.
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert ci.rstrip().splitlines()[-1] == "python -m pytest"
