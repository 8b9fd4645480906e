"""Cleaning, sentence splitting and the token-level view of a sentence (stages 1 and 2)."""

from __future__ import annotations

import re

from .vocab import _CLAUSE_PUNCT, _CLAUSE_WORDS

_SLASH_RE = re.compile(r"(?<=[a-zA-Z])/(?=[a-zA-Z])")
_EMPTY_SENT_RE = re.compile(r"\.\s+\.")
_SPACER = str.maketrans({".": ". ", ",": ", "})


def clean_report(report: str) -> str:
    """The original loader's cleaning (see the module docstring)."""
    text = report.lower()
    text = text.replace("and/or", "or")
    text = _SLASH_RE.sub(" or ", text)
    text = text.replace("..", ".")
    text = text.translate(_SPACER)
    text = " ".join(text.split())
    return _EMPTY_SENT_RE.sub(".", text)


_ABBREVIATIONS = frozenset(
    "dr mr mrs ms vs v e.g i.e etc approx cf fig no nos st jr sr resp incl".split()
)
_SENT_END_RE = re.compile(r"[.?!](?= )")


def split_sentences(text: str) -> list[tuple[int, str]]:
    """Split cleaned text into ``(offset, sentence)`` pairs (a Punkt approximation)."""
    out: list[tuple[int, str]] = []
    start = 0
    n = len(text)
    for m in _SENT_END_RE.finditer(text):
        end = m.end()
        if text[end - 1] == ".":
            # the token that ends with this period
            k = end - 2
            while k >= start and text[k] != " ":
                k -= 1
            word = text[k + 1 : end - 1]
            nxt = text[end + 1 : end + 2] if end + 1 < n else ""
            if word in _ABBREVIATIONS and word != "no":
                continue
            if word.isdigit() and nxt.isalpha():
                continue  # "1. left effusion": an enumeration, not a sentence end
        sentence = text[start:end].strip()
        if sentence:
            out.append((start, sentence) if text[start] != " " else (start + 1, sentence))
        start = end + 1
    if start < n:
        tail = text[start:].strip()
        if tail:
            out.append((start + (len(text[start:]) - len(text[start:].lstrip())), tail))
    return out


# ----------------------------------------------------------------------------------------
# tokens and clauses

_TOKEN_RE = re.compile(r"[a-z0-9]+(?:['\-][a-z0-9]+)*|[^\sa-z0-9]")


class _Sentence:
    """Token-level view of one sentence with negation / uncertainty marks."""

    __slots__ = ("text", "tokens", "starts", "ends", "clause", "neg", "pre_unc", "post_unc")

    def __init__(self, text: str) -> None:
        self.text = text
        toks, starts, ends = [], [], []
        for m in _TOKEN_RE.finditer(text):
            toks.append(m.group())
            starts.append(m.start())
            ends.append(m.end())
        self.tokens = toks
        self.starts = starts
        self.ends = ends
        n = len(toks)
        clause = [0] * n
        c = 0
        for i, t in enumerate(toks):
            if t in _CLAUSE_PUNCT or t in _CLAUSE_WORDS:
                c += 1
            clause[i] = c
        self.clause = clause
        self.neg = bytearray(n)
        self.pre_unc = bytearray(n)
        self.post_unc = bytearray(n)

    def token_range(self, start: int, end: int) -> range:
        """Indices of the tokens overlapping the character span [start, end)."""
        lo = 0
        starts, ends = self.starts, self.ends
        n = len(starts)
        while lo < n and ends[lo] <= start:
            lo += 1
        hi = lo
        while hi < n and starts[hi] < end:
            hi += 1
        return range(lo, hi)
