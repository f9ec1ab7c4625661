"""README.md as the package index shows it: no link that leads nowhere.

The index page shows the README without the repository around it, so the
build rewrites each relative link (pyproject's fancy-pypi-readme
substitutions) into its title and the path to read. These tests apply the
same substitutions as the build and check what comes out.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINK = re.compile(r"\[([^\]]+)\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.DOTALL | re.MULTILINE)


def index_description() -> str:
    """The README as the build turns it into the package's description."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    hook = config["tool"]["hatch"]["metadata"]["hooks"]["fancy-pypi-readme"]
    assert [fragment["path"] for fragment in hook["fragments"]] == ["README.md"]
    text = (ROOT / "README.md").read_text()
    for substitution in hook["substitutions"]:
        replacement = re.sub(r"\\(\d)", r"\\g<\1>", substitution["replacement"])
        text = re.sub(substitution["pattern"], replacement, text)
    return text


def links(markdown: str) -> list[tuple[str, str]]:
    prose = FENCE.sub("", markdown)
    return [(title, target) for title, target in LINK.findall(prose)]


def test_the_readme_links_to_files_that_exist() -> None:
    relative = [target for _, target in links((ROOT / "README.md").read_text())]
    relative = [target for target in relative if not target.startswith(("http", "#"))]
    assert relative, "the README links to its docs"
    missing = [target for target in relative if not (ROOT / target.split("#")[0]).exists()]
    assert not missing


def test_the_index_page_has_no_relative_link() -> None:
    description = index_description()
    left = [target for _, target in links(description) if not target.startswith("https://")]
    assert not left, f"links that lead nowhere on the package index: {left}"
    # Each one became its title and the path to read.
    assert "the tutorial (`docs/tutorial.md`)" in description
    assert "MIT license (`LICENSE`)" in description
