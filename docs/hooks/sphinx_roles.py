"""Griffe extension for the API reference: Sphinx cross-reference roles read as inline code.

Some docstrings use reStructuredText roles such as ``:class:`~diffode.models.Predictor``` or
``:meth:`step_orders```. mkdocstrings renders docstrings as Markdown, where those would show
verbatim; this extension rewrites them, when the package is loaded, to inline code: the last
component for a ``~``-prefixed target (``Predictor``), the target as written otherwise.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?:class|meth|func|mod|attr|data|obj|exc|const|ref):`(?P<tilde>~?)(?P<target>[^`]+)`")


def plain(text: str) -> str:
    """``text`` with every Sphinx role replaced by inline code."""

    def repl(m: re.Match) -> str:
        target = m.group("target").strip()
        if "<" in target and target.endswith(">"):  # :class:`title <target>`
            return f"`{target.split('<', 1)[0].strip()}`"
        if m.group("tilde"):
            target = target.rsplit(".", 1)[-1]
        return f"`{target}`"

    return ROLE.sub(repl, text)


class SphinxRoles(griffe.Extension):
    """Rewrite Sphinx roles in every docstring of the loaded package."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        seen: set[int] = set()
        stack: list[griffe.Object] = [pkg]
        while stack:
            obj = stack.pop()
            if id(obj) in seen:
                continue
            seen.add(id(obj))
            if obj.docstring is not None:
                obj.docstring.value = plain(obj.docstring.value)
            stack.extend(m for m in obj.members.values() if not m.is_alias)
