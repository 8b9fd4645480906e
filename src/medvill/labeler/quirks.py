"""Emulation of a few consistent misparses of the original labeler's parser (``parser_quirks``)."""

from __future__ import annotations

from .sentences import _Sentence
from .vocab import _FINITE, _PARTICIPLES, _PLURAL_QUIRK_BLOCKERS


def _parser_quirks(s: _Sentence) -> None:
    """Undo the cues for a few verbless phrasings that the original's parser (BLLIP, GENIA
    model) reads with the plural noun as a *verb*, so that no negation or uncertainty
    pattern reaches the mention. They are consistent in the original's output on Open-I:

    * ``No acute, displaced rib fractures.`` / ``No evidence of rib fractures.`` /
      ``Probable old left rib fractures.``: positive Fracture ("fractures" after a modifier,
      at the end of a verbless clause); ``No fractures.``, ``No fractures or dislocations``
      and ``No displaced rib fractures are seen.`` stay negative;
    * ``No focal airspace consolidations.`` (positive Consolidation), ``No focal air space
      opacities.`` (positive Lung Opacity);
    * ``No pneumothorax, pleural effusion, or focal air space consolidation.``: the last
      conjunct is positive;
    * ``No pleural effusions or pneumothorax.``: pneumothorax is positive;
    * ``Unremarkable mediastinal contour.``, ``Normal heart size mediastinal contours.``:
      positive Enlarged Cardiomediastinum.
    """
    toks = s.tokens
    n = len(toks)
    clause = s.clause
    for k, t in enumerate(toks):
        if k == 0:
            continue
        prv = toks[k - 1]
        if t == "fractures" and prv not in _PLURAL_QUIRK_BLOCKERS:
            if _verbless(s, k) and _clause_end(s, k):
                _clear(s, k)
        elif (t == "consolidations" and prv in ("airspace", "space", "xxxx")) or (t == "opacities" and prv == "space"):
            if _verbless(s, k) and _clause_end(s, k):
                _clear(s, k)
        elif t == "consolidation" and prv == "space" and toks[k - 2 : k - 1] == ["air"] and "or" in toks[k - 5 : k - 2]:
            if _verbless(s, k) and _clause_end(s, k):
                _clear(s, k)
                _clear(s, k - 1)
                _clear(s, k - 2)
        elif t in ("contour", "contours") and prv == "mediastinal":
            if k > 1 and toks[k - 2] in ("unremarkable", "size") and _verbless(s, k) and _clause_end(s, k):
                _clear(s, k)
                _clear(s, k - 1)
        elif t == "or" and k >= 3 and toks[k - 3 : k] == ["no", "pleural", "effusions"] and _verbless(s, k):
            rest = [j for j in range(k + 1, n) if clause[j] == clause[k] and toks[j][0].isalnum()]
            if (k == 3 or clause[k - 4] != clause[k]) and rest and not toks[rest[-1]].endswith("s"):
                for j in range(k + 1, n):
                    if clause[j] != clause[k]:
                        break
                    _clear(s, j)


def _verbless(s: _Sentence, k: int) -> bool:
    """The clause of token k has no finite verb."""
    toks, clause = s.tokens, s.clause
    c = clause[k]
    return not any(toks[j] in _FINITE for j in range(len(toks)) if clause[j] == c)


def _clause_end(s: _Sentence, k: int) -> bool:
    """Nothing but participles / punctuation follow token k in its clause."""
    toks, clause = s.tokens, s.clause
    c = clause[k]
    return all(
        toks[j] in _PARTICIPLES or not toks[j][0].isalnum() for j in range(k + 1, len(toks)) if clause[j] == c
    )


def _clear(s: _Sentence, k: int) -> None:
    """Undo every negation / uncertainty mark of token k."""
    s.neg[k] = s.pre_unc[k] = s.post_unc[k] = 0
