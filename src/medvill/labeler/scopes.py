"""Scope marking (stage 4): the negation / uncertainty cues of a sentence and the scopes they mark.

``_mark_scopes`` walks the tokens of a sentence once; at each token the cue rules are tried
in a fixed order and the first that matches marks its scope (``_Sentence.neg``, ``pre_unc``,
``post_unc``) and ends the walk step. The rules are grouped by cue family, in this order:

1. ``_exclusion``: pre-negation uncertainty / negation by "exclude", "rule out", "no new";
2. ``_negation_cues``: "no", "without", "nor", "not enlarged", "free of", "negative for"...;
3. ``_normal``: "normal", "unremarkable", "within normal limits", "upper limits of normal";
4. ``_negation_predicates``: "normal except for", "has resolved", "removed", "clear",
   "absent", "no longer seen";
5. ``_uncertainty_cues``: post-negation uncertainty ("possible", the modals, "secondary to",
   "or" / "versus", "obscured", "poorly evaluated", "compatible with");
6. ``_stability``: "stable" / "unchanged" / "no change in" / "similar to prior" heart and
   mediastinal contours, "borderline heart size".

Where a scope lies and which of its words a cue reaches: :mod:`medvill.labeler.regions`.
"""

from __future__ import annotations

from .regions import (
    _ALL_ROLES,
    _H,
    _HC,
    _HCC,
    _HCCM,
    _HCM,
    _backward_region,
    _forward_region,
    _is_change,
    _mark,
    _mark_coordination,
    _np_roles,
    _segment_has_verb,
)
from .sentences import _Sentence
from .vocab import (
    _ADVERBS,
    _APPEAR,
    _CANNOT,
    _CLAUSE_PUNCT,
    _COPULA,
    _FINITE,
    _MODALS,
    _NO_BACKWARD_BEFORE_NORMAL,
    _NORMAL,
    _NORMAL_PREPS,
    _NOT_A_NEW_NOUN,
    _PARTICIPLES,
    _PREDICATE_CHAIN,
    _UNCERTAIN_FORWARD,
    _UNCERTAINTY_BRIDGE,
)

# which parts of the subject a predicate reaches, by the verb that links them
# (the kinds of ``_backward_region``; a kind not listed reaches nothing)
_HEAD_ONLY = {"cop": _HCC, "appear": _HCC, "none": _HCC}
_HEAD_ONLY_NO_APPEAR = {"cop": _HCC, "none": _HCC}
_STABLE_REACH = {"cop": _HC}
_NORMAL_REACH = {"cop": _HCCM, "appear": _HCC, "none": _HCCM, "conjoined": _HCCM}
_UPPER_LIMITS_REACH = {"cop": _HCM, "appear": _HC, "none": _HCM}
_WNL_REACH = {"cop": _HCCM, "appear": _HCC, "none": _HCC}


def _mark_scopes(s: _Sentence) -> None:
    """Mark the negated / uncertain tokens of a sentence (see the module docstring)."""
    _ScopeMarker(s).run()


class _ScopeMarker:
    """The cue rules applied to one sentence. Each rule method (``_exclusion`` ... ``_stability``)
    takes token ``i`` as ``t`` with its neighbours ``nxt``, ``nxt2`` (after) and ``prv``,
    ``prv2`` (before; "" beyond the sentence) and returns True when one of its cues matched
    there: the later rules are then skipped for that token."""

    __slots__ = ("s", "toks", "clause", "n")

    def __init__(self, s: _Sentence) -> None:
        self.s = s
        self.toks = s.tokens
        self.clause = s.clause
        self.n = len(s.tokens)

    def run(self) -> None:
        toks, n = self.toks, self.n
        for i, t in enumerate(toks):
            nxt = toks[i + 1] if i + 1 < n else ""
            nxt2 = toks[i + 2] if i + 2 < n else ""
            prv = toks[i - 1] if i > 0 else ""
            prv2 = toks[i - 2] if i > 1 else ""
            _ = (
                self._exclusion(i, t, nxt, nxt2, prv, prv2)
                or self._negation_cues(i, t, nxt, nxt2, prv, prv2)
                or self._normal(i, t, nxt, nxt2, prv, prv2)
                or self._negation_predicates(i, t, nxt, nxt2, prv, prv2)
                or self._uncertainty_cues(i, t, nxt, nxt2, prv, prv2)
                or self._stability(i, t, nxt, nxt2, prv, prv2)
            )

    # -- marking a scope ----------------------------------------------------------------
    def fwd(
        self,
        i: int,
        marks: bytearray,
        reach: frozenset[str] = _ALL_ROLES,
        cardio: bool = False,
        *,
        pass_of: bool = False,
        pass_preps: frozenset[str] = frozenset(),
        max_len: int = 1000,
        bridge: frozenset[str] = frozenset(),
    ) -> None:
        """Mark the ``reach`` roles of the list after token i (only heart / mediastinal
        words when ``cardio``)."""
        toks = self.toks
        regions = _forward_region(
            toks, self.clause, i, pass_of=pass_of, pass_preps=pass_preps, max_len=max_len, bridge=bridge
        )
        for a, b, is_object in regions:
            if b > a:
                _mark(_np_roles(toks, a, b), marks, reach & _HCC if is_object else reach, toks if cardio else None)

    def bwd(
        self,
        p: int,
        marks: bytearray,
        reach: dict[str, frozenset[str]],
        cardio: bool = False,
        comma_stops: bool = False,
    ) -> None:
        """Mark the roles of the subject before the predicate token p that ``reach`` gives
        for the verb linking them."""
        toks = self.toks
        a, b, kind = _backward_region(toks, self.clause, p, comma_stops)
        roles = reach.get(kind)
        if roles is not None and b > a:
            _mark(_np_roles(toks, a, b), marks, roles, toks if cardio else None)

    # -- 1. pre-negation uncertainty / negation: exclude, rule out -----------------------
    def _exclusion(self, i: int, t: str, nxt: str, nxt2: str, prv: str, prv2: str) -> bool:
        if t in ("exclude", "excluded", "excluding") or (t in ("rule", "ruled") and nxt == "out"):
            cannot = any(x in _CANNOT for x in self.toks[max(0, i - 3) : i])
            marks = self.s.pre_unc if cannot else self.s.neg
            self.fwd(i + 1 if t in ("rule", "ruled") else i, marks, _HC)
            if t in ("excluded", "ruled"):
                self.bwd(i, marks, _HEAD_ONLY)
            return True
        if t == "no" and nxt == "new":
            self.fwd(i + 1, self.s.pre_unc, _H)  # "no new X": X uncertain; the rest of the list is negated
        return False  # "no new" goes on to the negation by "no"

    # -- 2. negation cues before their scope ---------------------------------------------
    def _negation_cues(self, i: int, t: str, nxt: str, nxt2: str, prv: str, prv2: str) -> bool:
        toks, neg = self.toks, self.s.neg
        if t in ("no", "without", "nor", "neither"):
            if nxt == "longer":
                return True
            if _is_change(toks, i):
                return True
            self.fwd(i, neg)
            return True
        if t == "not":
            k = i + 1
            while k < self.n and toks[k] in _ADVERBS:
                k += 1
            if k < self.n and toks[k] in ("enlarged", "dilated", "widened"):
                self.bwd(i, neg, _HEAD_ONLY)
            return True
        if (nxt == "of" and t in ("free", "clear", "resolution", "removal", "history", "disappearance", "drainage",
                                  "clearing")) or (t == "negative" and nxt == "for"):
            if prv != "not":
                self.fwd(i + 1, neg, _HCC)
            return True
        return False

    # -- 3. normal / unremarkable --------------------------------------------------------
    def _normal(self, i: int, t: str, nxt: str, nxt2: str, prv: str, prv2: str) -> bool:
        if t not in _NORMAL:
            return False
        neg = self.s.neg
        if prv == "within":
            self._within_normal_limits(i - 1)
            if nxt in ("limits", "limit", "range") and nxt2 in ("for", "in", "of"):
                self.fwd(i + 2, neg, _HCC, pass_preps=_NORMAL_PREPS)
            return True
        if nxt != "appearing":  # "normal appearing X": not a negation of X
            self.fwd(i, neg, _HCCM, pass_of=True, pass_preps=_NORMAL_PREPS)
        if prv in ("limits", "limit") or (prv == "of" and prv2 in ("limits", "limit")):
            self._upper_limits_of_normal(i, prv)
            return True
        if nxt in ("limits", "limit") and prv in _APPEAR:
            return True  # "X appear normal limits": "normal" modifies "limits", not a predicate
        if nxt and nxt[0].isalpha() and nxt not in _NOT_A_NEW_NOUN and prv in _COPULA:
            return True  # "heart size is normal lungs are clear": "normal" modifies "lungs"
        if (
            prv not in _NO_BACKWARD_BEFORE_NORMAL
            or (prv == "of" and prv2 in _COPULA)
            or (prv == "and" and prv2 in ("stable", "unchanged", "clear"))
        ):
            self.bwd(i, neg, _NORMAL_REACH, comma_stops=True)
        return True

    def _upper_limits_of_normal(self, i: int, prv: str) -> None:
        """"X is at the upper limits of normal" negates X; "X upper limits of normal" (without
        "at", "within" or "on") does not."""
        k = i - (2 if prv == "of" else 1)
        before = self.toks[max(0, k - 3) : k]
        if ("upper" in before or "top" in before) and not any(x in ("at", "within", "on") for x in before):
            return
        self.bwd(k, self.s.neg, _UPPER_LIMITS_REACH)

    def _within_normal_limits(self, w: int) -> None:
        """Negation by "within normal limits" (``w`` = the token "within").

        A verbless "X within normal limits" inside a longer clause attaches, in the parse, to
        the clause's main verb: after "heart size is enlarged, pulmonary vascularity within
        normal limits" the original negates the heart size too, and before a later verb
        ("..., visualized osseous structures appear intact") it negates nothing."""
        s = self.s
        toks, clause = self.toks, self.clause
        a, b, kind = _backward_region(toks, clause, w)
        if kind != "none":
            self.bwd(w, s.neg, _WNL_REACH)
            return
        c = clause[w]
        later = [j for j in range(w + 1, len(toks)) if clause[j] == c]
        if any(toks[j] == "," for j in later) and any(toks[j] in _FINITE or toks[j] in _APPEAR for j in later):
            return
        self.bwd(w, s.neg, _WNL_REACH)
        if a > 0 and toks[a - 1] == ",":
            k = a - 2
            while k >= 0 and clause[k] == c and toks[k] not in _COPULA:
                k -= 1
            if k >= 0 and clause[k] == c and toks[k] in _COPULA:
                self.bwd(k + 1, s.neg, _HEAD_ONLY)
        # "heart size within normal limits, stable mediastinal and hilar contours": the verbless
        # noun phrase after the comma is read as one more subject of "within normal limits"
        e = w + 3
        if e + 1 < len(toks) and toks[w + 2] in ("limits", "limit") and toks[e] == "," and clause[e] == c:
            a2, b2, _ = _forward_region(toks, clause, e)[0]
            if b2 > a2:
                _mark(_np_roles(toks, a2, b2), s.neg, _HCC)

    # -- 4. negation by a predicate after its subject ------------------------------------
    def _negation_predicates(self, i: int, t: str, nxt: str, nxt2: str, prv: str, prv2: str) -> bool:
        neg = self.s.neg
        if t == "except" and prv in ("normal", "clear", "unremarkable") and nxt == "for":
            self.fwd(i + 1, neg, _HC)
            return True
        if t in ("resolved", "removed", "cleared") and (prv in ("has", "have", "been", "had") or t == "removed"):
            if prv == "not" or prv2 == "not":
                return True
            self.bwd(i, neg, _HEAD_ONLY)
            if t == "removed":
                self.fwd(i, neg, _HC, max_len=4)
            return True
        if t == "clear" and nxt != "of":
            self._clear(i, nxt, prv)
            return True
        if t == "absent":
            self.bwd(i, neg, _HEAD_ONLY)
            return True
        if t == "longer" and prv == "no" and nxt in _PARTICIPLES | {"present", "evident", "apparent"}:
            self.bwd(i - 1, neg, _HEAD_ONLY)
            return True
        return False

    def _clear(self, i: int, nxt: str, prv: str) -> None:
        """"X is clear" (and a predicate conjoined to it), "hyperinflated but clear", "clear X"."""
        toks, clause, n, neg = self.toks, self.clause, self.n, self.s.neg
        if prv in _PREDICATE_CHAIN:
            self.bwd(i, neg, _HEAD_ONLY)
            # "lungs are clear and hyperinflated" / "clear, hyperinflated": a conjoined predicate
            k = i + 1
            if k < n and toks[k] in ("and", ","):
                k += 1
            if k > i + 1 and k < n and clause[k] == clause[i] and toks[k][0].isalpha():
                neg[k] = 1
        elif prv == "but" and i > 1:
            neg[i - 2] = 1  # "hyperinflated but clear"
        if nxt and nxt[0].isalpha() and nxt not in _NOT_A_NEW_NOUN and nxt not in ("and", "bilaterally"):
            self.fwd(i, neg, _H, max_len=4)  # "clear airspace disease"

    # -- 5. post-negation uncertainty ----------------------------------------------------
    def _uncertainty_cues(self, i: int, t: str, nxt: str, nxt2: str, prv: str, prv2: str) -> bool:
        post_unc = self.s.post_unc
        if t in _UNCERTAIN_FORWARD or t in _MODALS:
            self.fwd(i, post_unc, pass_of=True, bridge=_UNCERTAINTY_BRIDGE)
            if t in ("suspected", "possible", "questionable") and (prv in _COPULA or t == "suspected"):
                self.bwd(i, post_unc, _HEAD_ONLY)
            if t in _MODALS and ((nxt == "be" and nxt2 in ("present", "seen")) or nxt == "appear"):
                self.bwd(i, post_unc, _HEAD_ONLY)
            return True
        if t == "secondary" and nxt == "to":
            self.fwd(i + 1, post_unc)
            return True
        if t in ("or", "versus", "vs") and nxt != "not":
            _mark_coordination(self.toks, self.clause, i, post_unc)
            return True
        if t.startswith("obscur") and t != "obscuration":
            self.fwd(i, post_unc, _HC, max_len=4)
            self.bwd(i, post_unc, _HEAD_ONLY)
            return True
        if t in ("evaluated", "visualized", "appreciated", "seen", "assessed") and (
            prv in ("poorly", "incompletely")
            or (prv == "not" and t == "appreciated")
            or (prv == "well" and prv2 == "not")
            or (prv == "clearly" and prv2 == "not")
        ):
            self.bwd(i, post_unc, _HEAD_ONLY)
            return True
        if t == "compatible" and nxt == "with" and prv in _COPULA:
            self.fwd(i + 1, post_unc)
            return True
        return False

    # -- 6. stable / unchanged heart and mediastinal contours ----------------------------
    def _stability(self, i: int, t: str, nxt: str, nxt2: str, prv: str, prv2: str) -> bool:
        toks, post_unc = self.toks, self.s.post_unc
        if t in ("stable", "unchanged"):
            self._stable(i, nxt, nxt2, prv, prv2)
            return True
        if t == "changed" and prv == "not":
            self.bwd(i, post_unc, _HEAD_ONLY_NO_APPEAR, cardio=True)
            return True
        if t in ("change", "changes") and _is_change(toks, max(0, i - 4)):
            self.fwd(i, post_unc, _HC, cardio=True, pass_preps=frozenset({"in"}))
            return True
        if t == "similar" and nxt == "to" and "prior" in toks[i + 2 : i + 5]:
            self.bwd(i, post_unc, _HEAD_ONLY_NO_APPEAR, cardio=True)
            return True
        if t == "borderline" and nxt == "heart" and nxt2 == "size":
            post_unc[i + 1] = 1
            return True
        return False

    def _stable(self, i: int, nxt: str, nxt2: str, prv: str, prv2: str) -> None:
        """"stable X", "stable appearance of X", "X is stable", "X, stable", "X is enlarged
        but unchanged": uncertain heart / mediastinal words."""
        toks, clause, post_unc = self.toks, self.clause, self.s.post_unc
        if nxt == "appearance" and nxt2 == "of":
            self.fwd(i + 2, post_unc, _HC, cardio=True)
        else:
            self.fwd(i, post_unc, _HC, cardio=True, max_len=6)
        if prv in _PREDICATE_CHAIN or prv not in _NO_BACKWARD_BEFORE_NORMAL:
            self.bwd(i, post_unc, _STABLE_REACH, cardio=True)
        elif prv == "," and clause[i - 1] == clause[i] and not _segment_has_verb(toks, clause, i - 1):
            self.bwd(i - 1, post_unc, {"none": _H}, cardio=True)  # "enlarged cardiac contour, stable"
        if prv == "but" or (prv in ("and", "but") and prv2 in ("enlarged", "prominent")):
            # "the cardiac silhouette is enlarged but unchanged": the shared subject
            k = i - 2
            while k >= 0 and toks[k] not in _COPULA and toks[k] not in _CLAUSE_PUNCT:
                k -= 1
            if k >= 0 and toks[k] in _COPULA and k + 1 < i:
                self.bwd(k + 1, post_unc, _HEAD_ONLY_NO_APPEAR, cardio=True)
