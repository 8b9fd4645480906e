"""FINDINGS and IMPRESSION sections of a free-text radiology report.

Used for MIMIC-CXR reports (:func:`medvill.data.mimic_cxr.load_mimic_cxr`) and the ``report``
field of your own files (:func:`medvill.data.jsonl.load_jsonl`).  A section starts at its
header (case-insensitive, at the start of a line) and ends at the next section header,
spanning lines; :func:`report_text` then picks the text the model reads (one of
:data:`~medvill.data.choices.SECTIONS`, :func:`~medvill.data.records.choose_text`), falling
back to the report's last paragraph when it has neither section, as the MIMIC-CXR section
script does.
"""

from __future__ import annotations

import re

from .common import clean_text
from .records import choose_text

_FINDINGS_NAMES = {"findings", "finding", "findings and impression", "findings/impression"}
_IMPRESSION_NAMES = {"impression", "impressions", "conclusion", "conclusions"}
_OTHER_HEADERS = {
    "indication", "indications", "history", "clinical history", "technique", "comparison", "comparisons",
    "examination", "exam", "reason for exam", "reason for examination", "notification", "recommendation",
    "recommendations", "recommendation(s)", "addendum", "wet read", "procedure", "clinical information",
    "clinical indication", "type of examination", "final report", "study",
}
_HEADER_RE = re.compile(r"^[ \t]*([A-Za-z][A-Za-z ()/&,-]{0,48}?)[ \t]*:", re.MULTILINE)


def _header_kind(name: str) -> str | None:
    """'findings' / 'impression' / 'other' for a section header name, or None if the text
    before the colon is not a header (an all-capitals label, or a known header name in any
    case)."""
    key = " ".join(name.lower().split())
    if key in _FINDINGS_NAMES:
        return "findings"
    if key in _IMPRESSION_NAMES:
        return "impression"
    if key in _OTHER_HEADERS or (name.isupper() and any(c.isalpha() for c in name)):
        return "other"
    return None


def _section_bodies(text: str) -> dict[str, list[str]]:
    """The non-empty bodies of the FINDINGS and IMPRESSION sections of ``text``, in order."""
    heads = [(m.start(), m.end(), _header_kind(m.group(1))) for m in _HEADER_RE.finditer(text)]
    heads = [h for h in heads if h[2] is not None]
    parts: dict[str, list[str]] = {"findings": [], "impression": []}
    for i, (_, end, kind) in enumerate(heads):
        if kind in parts:
            stop = heads[i + 1][0] if i + 1 < len(heads) else len(text)
            body = clean_text(text[end:stop])
            if body:
                parts[kind].append(body)
    return parts


def _last_paragraph(text: str) -> str:
    """The last block of ``text`` separated by a blank line or a line of underscores, without
    a leading header label."""
    lines = ["" if re.fullmatch(r"\s*_{3,}\s*", ln) else ln for ln in text.split("\n")]
    paragraphs = [p for p in re.split(r"\n[ \t]*\n", "\n".join(lines)) if p.strip()]
    if not paragraphs:
        return ""
    last = paragraphs[-1]
    m = _HEADER_RE.match(last)
    if m and _header_kind(m.group(1)) is not None:
        last = last[m.end():]
    return clean_text(last)


def extract_sections(report: str) -> tuple[str, str, str]:
    """``(findings, impression, last_paragraph)`` of a free-text radiology report.

    A section starts at a header at the beginning of a line (``FINDINGS:``, ``Impression:``,
    ... - case-insensitive; ``CONCLUSION`` counts as impression, ``FINDINGS AND IMPRESSION``
    as findings) and runs, over any number of lines, to the next header (any all-capitals
    ``LABEL:`` at a line start, or a known header name such as ``Comparison:``).  Repeated
    sections are joined.  Whitespace is collapsed to single spaces.  ``last_paragraph`` is the
    last block of the report separated by a blank line or a line of underscores (the
    addendum delimiter), without a leading header label.
    """
    text = report.replace("\r\n", "\n").replace("\r", "\n")
    parts = _section_bodies(text)
    return " ".join(parts["findings"]), " ".join(parts["impression"]), _last_paragraph(text)


def report_text(report: str, section: str = "longer", fallback: bool = True) -> tuple[str, str, str]:
    """``(text, findings, impression)`` for a report: the chosen section(s), or the last
    paragraph when the report has neither FINDINGS nor IMPRESSION (and ``fallback``)."""
    findings, impression, last = extract_sections(report)
    if findings or impression:
        return choose_text(findings, impression, section), findings, impression
    return (last if fallback else ""), "", ""
