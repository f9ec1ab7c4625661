"""examples/web_app.py runs against a real server and prints what its docstring promises."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "web_app.py"


def promised_output() -> list[str]:
    docstring = ast.get_docstring(ast.parse(EXAMPLE.read_text()))
    assert docstring is not None
    block = docstring.split("and prints::", 1)[1]
    return textwrap.dedent(block).strip().splitlines()


def test_the_scripted_visit_prints_what_the_docstring_says() -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLE)],
        cwd=EXAMPLE.parent.parent,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # no traceback, no warning
    assert result.stdout.splitlines() == promised_output()
    print(f"FIGURES example: {result.stdout.splitlines()[-1]}")
