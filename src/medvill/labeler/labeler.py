"""The labeler: mentions of a report, their labels, and the aggregation into 14 labels (stage 5)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from ..labels import CHEXPERT_OBSERVATIONS
from .mentions import Mention, find_mentions
from .phrases import (
    _OBS_INDEX,
    CARDIOMEGALY,
    NEGATIVE,
    NO_FINDING,
    POSITIVE,
    SUPPORT_DEVICES,
    UNCERTAIN,
    _positional_unmentions,
    load_phrases,
)
from .quirks import _parser_quirks
from .scopes import _mark_scopes
from .sentences import _Sentence, clean_report, split_sentences
from .vocab import _INHERENTLY_UNCERTAIN


class CheXpertLabeler:
    """Rule-based CheXpert labeler without a parser; see :mod:`medvill.labeler.core` for the exact
    conventions (mention, negation, uncertainty, aggregation).

    ``label(text)`` returns a float32 vector of 14 values in ``CHEXPERT_OBSERVATIONS`` order
    (1 positive, 0 negative, -1 uncertain, nan blank); ``label_many(texts)`` an (N, 14) array;
    ``mentions(text)`` the labelled mentions behind them. ``parser_quirks=False`` switches off
    the emulation of a few consistent misparses of the original (see ``_parser_quirks``).
    The phrase lists are read once (importlib.resources); per report only the phrases that
    occur anywhere in the cleaned text are searched sentence by sentence, and only sentences
    with a mention are tokenised and scoped. Nothing is compiled per report.
    """

    def __init__(self, *, parser_quirks: bool = True) -> None:
        self.parser_quirks = parser_quirks
        mentions = load_phrases("mention")
        unknown = set(mentions) - set(CHEXPERT_OBSERVATIONS)
        if unknown:
            raise ValueError(f"mention phrase files for unknown observations: {sorted(unknown)}")
        self.mention_phrases = mentions
        unmentions = load_phrases("unmention")
        for obs, extra in _positional_unmentions(mentions).items():
            unmentions.setdefault(obs, []).extend(extra)
        self.unmention_phrases = unmentions
        self._phrases: list[tuple[str, str]] = [
            (phrase, obs) for obs in sorted(mentions) for phrase in mentions[obs]
        ]
        self._unmention_by_obs = {obs: tuple(ps) for obs, ps in unmentions.items() if ps}

    # -- stage 3: mentions --------------------------------------------------------------
    def _find_mentions(self, sentence: str, phrases: list[tuple[str, str]]) -> list[tuple[str, int, int]]:
        return find_mentions(sentence, phrases, self._unmention_by_obs)

    # -- stage 4: classification --------------------------------------------------------
    def _classify(self, s: _Sentence, mentions: list[tuple[str, int, int]]) -> list[float]:
        _mark_scopes(s)
        if self.parser_quirks:
            _parser_quirks(s)
        return [_mention_label(s, start, end) for _obs, start, end in mentions]

    def mentions(self, report: str) -> list[Mention]:
        """All mentions of a report with their labels (after cleaning and splitting)."""
        text = clean_report(report)
        out: list[Mention] = []
        phrases = [item for item in self._phrases if item[0] in text]  # pre-filter per report
        if not phrases:
            return out
        for si, (_, sentence) in enumerate(split_sentences(text)):
            found = self._find_mentions(sentence, phrases)
            if not found:
                continue
            s = _Sentence(sentence)
            for (obs, start, end), label in zip(found, self._classify(s, found), strict=True):
                out.append(Mention(obs, si, start, end, sentence[start:end], label))
        return out

    # -- stage 5: aggregation -----------------------------------------------------------
    @staticmethod
    def aggregate(mentions: Iterable[Mention]) -> np.ndarray:
        """Merge mention labels into a 14-vector with the original aggregator's rules."""
        per_obs: dict[str, set[float]] = {}
        no_finding = True
        for m in mentions:
            if m.observation != SUPPORT_DEVICES and m.label in (POSITIVE, UNCERTAIN):
                no_finding = False
            if m.observation == NO_FINDING:
                continue
            if m.label in (POSITIVE, UNCERTAIN) and m.text in ("chf", "heart failure"):
                per_obs.setdefault(CARDIOMEGALY, set()).add(UNCERTAIN)
            per_obs.setdefault(m.observation, set()).add(m.label)
        vec = np.full(len(CHEXPERT_OBSERVATIONS), np.nan, dtype=np.float32)
        for obs, labels in per_obs.items():
            vec[_OBS_INDEX[obs]] = _merge(labels)
        if no_finding:
            vec[_OBS_INDEX[NO_FINDING]] = POSITIVE
        return vec

    def label(self, report: str) -> np.ndarray:
        """The 14-vector of one report (float32; 1 / 0 / -1 / nan)."""
        if not isinstance(report, str):  # None / NaN from a data frame: an empty report
            report = "" if report is None or (isinstance(report, float) and report != report) else str(report)
        return self.aggregate(self.mentions(report))

    def label_many(self, reports: Sequence[str]) -> np.ndarray:
        """An (N, 14) float32 array for N reports."""
        out = np.full((len(reports), len(CHEXPERT_OBSERVATIONS)), np.nan, dtype=np.float32)
        for i, r in enumerate(reports):
            out[i] = self.label(r)
        return out


def _mention_label(s: _Sentence, start: int, end: int) -> float:
    """The label of the mention at characters [start, end) of a marked sentence: negative when
    any of its tokens is negated (and not pre-negation-uncertain), else uncertain when any is
    uncertain (or the mention is uncertain by itself), else positive."""
    negated = uncertain = False
    for t in s.token_range(start, end):
        if s.pre_unc[t]:
            uncertain = True
        elif s.neg[t]:
            negated = True
        elif s.post_unc[t]:
            uncertain = True
    if not negated and not uncertain and s.text[start:end] in _INHERENTLY_UNCERTAIN:
        uncertain = True
    return NEGATIVE if negated else UNCERTAIN if uncertain else POSITIVE


def _merge(labels: set[float]) -> float:
    if len(labels) == 1:
        return next(iter(labels))
    if NEGATIVE in labels and UNCERTAIN in labels:
        return UNCERTAIN  # the original's case 1, checked before "positive wins"
    return POSITIVE
