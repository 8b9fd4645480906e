"""Griffe extension: turn the reST roles of medvill's docstrings into mkdocstrings links.

medvill's docstrings use Sphinx-style inline roles (``:func:`load_vqa```,
``:class:`~medvill.data.records.Record```); Markdown would show them literally.  This
extension rewrites each role into an autorefs link (``[`load_vqa`][medvill.data.registry.load_vqa]``)
when the target is a public medvill object (and therefore rendered in the API reference),
and into plain code otherwise, so a strict build never fails on an unresolvable name.
A paragraph that ends in reST's literal-block marker ``::`` gets a single colon (the
indented block after it is already a Markdown code block).
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?:func|class|meth|mod|attr|data|obj|exc|const|ref):`(~?)([^`<>]+?)(?:\s*<([^`>]+)>)?`")
LITERAL_MARKER = re.compile(r"(\S)::$", re.MULTILINE)


class RstRoles(griffe.Extension):
    """Rewrite reST roles in every docstring of the package once it is fully loaded."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        self._walk(pkg, pkg)

    def _walk(self, obj: griffe.Object | griffe.Alias, pkg: griffe.Module) -> None:
        if isinstance(obj, griffe.Alias):
            return
        if obj.docstring is not None:
            obj.docstring.value = self._rewrite(obj.docstring.value, obj, pkg)
        for member in obj.members.values():
            self._walk(member, pkg)

    def _rewrite(self, text: str, obj: griffe.Object, pkg: griffe.Module) -> str:
        def link(m: re.Match[str]) -> str:
            tilde, first, explicit = m.group(1), m.group(2).strip(), m.group(3)
            target = (explicit or first).strip().rstrip("()")
            label = first if explicit else (target.rsplit(".", 1)[-1] if tilde else target)
            path = self._resolve(target, obj, pkg)
            return f"[`{label}`][{path}]" if path else f"`{label}`"

        return LITERAL_MARKER.sub(r"\1:", ROLE.sub(link, text))

    @staticmethod
    def _resolve(target: str, obj: griffe.Object, pkg: griffe.Module) -> str | None:
        """Full path of a public object of ``pkg`` that ``target`` names from ``obj``'s scope."""
        head, _, rest = target.partition(".")
        candidates = [target]
        try:
            candidates.insert(0, obj.resolve(head) + (f".{rest}" if rest else ""))
        except (griffe.NameResolutionError, KeyError, AttributeError):
            pass
        for path in candidates:
            if path != pkg.path and not path.startswith(pkg.path + "."):
                continue
            parts = path.split(".")[1:]
            if any(p.startswith("_") and not (p.startswith("__") and p.endswith("__")) for p in parts):
                continue  # private: not rendered
            try:
                found = pkg[".".join(parts)] if parts else pkg
            except (KeyError, griffe.AliasResolutionError, griffe.CyclicAliasError):
                continue
            full = found.target_path if isinstance(found, griffe.Alias) else found.path
            if full.startswith(pkg.path + ".") and not any(p.startswith("_") and not p.endswith("__")
                                                           for p in full.split(".")):
                return full
        return None
