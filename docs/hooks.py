"""A build hook of the documentation site (``hooks:`` in mkdocs.yml).

The docstrings are written for Sphinx: mkdocstrings reads their fields
(``:param x:``, ``:raises X:``), and renders the rest as Markdown, where the
cross-reference roles (``:class:`Call```) and the version directives
(``.. versionadded:: 0.1``) would show as they are typed. This turns them
into code spans and notes on the generated pages.
"""

from __future__ import annotations

import re
from typing import Any

#: ``:class:`~activity.HResult``` as Markdown renders it: the role, then a code span.
ROLE = re.compile(r":(?:py:)?[a-z]+:<code>(~?)([^<]+)</code>")
#: ``.. versionadded:: 0.1`` and ``.. versionchanged:: 0.2 what changed``.
VERSION = re.compile(
    r"\.\. version(added|changed):: ([\w.]+)(?:[ \t]+([^\n<]*(?:<code>[^<]*</code>[^\n<]*)*))?"
)
#: A paragraph that ends with ``::`` (reST's "a literal block follows").
LITERAL_INTRO = re.compile(r"::</p>")


def _role(match: re.Match[str]) -> str:
    shorten, target = match.groups()
    return f"<code>{target.rsplit('.', 1)[-1] if shorten else target}</code>"


def _version(match: re.Match[str]) -> str:
    kind, version, what = match.groups()
    label = "Added in" if kind == "added" else "Changed in"
    return f"<em>{label} version {version}</em>" + (f": {what}" if what else ".")


def on_page_content(html: str, **kwargs: Any) -> str:
    """Rewrite the reST left in a page's HTML (only the API pages have any)."""
    if "doc-contents" not in html:
        return html
    html = ROLE.sub(_role, html)
    html = VERSION.sub(_version, html)
    return LITERAL_INTRO.sub(":</p>", html)
