"""Scope geometry: the noun-phrase list next to a cue and the parse role of each of its words.

A scope is the noun-phrase list next to a cue: after it (``no X, Y or Z``, ``_forward_region``)
or before it, as the subject of a predicate (``X and Y are normal``, ``_backward_region``).
``_np_roles`` gives every token of such a list the role it would have in the dependency parse
the original matches its Semgrex patterns against (head, conjunct head, modifier,
prepositional object...), and each cue marks only the roles its patterns reach (``_mark``
with one of the role sets below): ``X appears within normal limits`` reaches the heads only
(``the heart size ...`` leaves "the heart" positive, as in the original), ``X is normal``
reaches heads and modifiers (its patterns go two edges deep), ``stable X`` only the head.
"""

from __future__ import annotations

from .vocab import (
    _APPEAR,
    _BACK_STOP,
    _COPULA,
    _DETERMINERS,
    _LIST_ADJECTIVES,
    _NP_SEPARATORS,
    _PARTICIPLES,
    _PASS_OF,
    _PREDICATE_CHAIN,
    _PREPS,
    _SIZE_WORDS,
    _VERBISH,
    _is_adjective,
    _is_cardio_token,
)

# the roles a cue may reach (see ``_np_roles``)
_ALL_ROLES = frozenset({"H", "C", "C1", "M", "CM", "P", "D"})
_HC = frozenset({"H", "C"})
_HCC = frozenset({"H", "C", "C1"})
_H = frozenset({"H"})
_HCM = frozenset({"H", "C", "M", "CM", "P"})
_HCCM = frozenset({"H", "C", "C1", "M", "CM", "P"})

# verbs whose object "there is no X to <verb> Y" reaches
_SUGGEST_VERBS = ("suggest", "explain", "diagnose")

# ----------------------------------------------------------------------------------------
# forward: the list after a cue


def _forward_region(
    toks: list[str],
    clause: list[int],
    i: int,
    *,
    pass_of: bool = False,
    pass_preps: frozenset[str] = frozenset(),
    max_len: int = 1000,
    bridge: frozenset[str] = frozenset(),
) -> list[tuple[int, int, bool]]:
    """The noun-phrase list after token i, as segments ``(start, end, object)``: a new
    segment starts after "no evidence of" and after "to suggest"; the words after "to suggest"
    are the *object* of that verb (only their heads are reached). Leading ``bridge`` words
    ("may *be* / *represent* X") are skipped."""
    n = len(toks)
    c = clause[i]
    j = i + 1
    while j < n and clause[j] == c and toks[j] in bridge:
        j += 1
    start = j
    segments: list[tuple[int, int, bool]] = []
    is_object = False
    prev = toks[i]
    steps = 0
    suggest_seen = False
    while j < n and clause[j] == c and steps < max_len:
        t = toks[j]
        if t == "to" and j + 1 < n and toks[j + 1] in _SUGGEST_VERBS:
            # "there is no X to suggest Y" reaches Y (once); "no X to suggest Y" does not
            if suggest_seen or not (toks[i] == "no" and i > 0 and toks[i - 1] in _COPULA):
                break
            suggest_seen = True
            segments.append((start, j, is_object))
            j += 2
            start = j
            is_object = True
            steps += 2
            continue
        if t in ("of", "for") and (prev in _PASS_OF or prev == "negative"):
            segments.append((start, j, is_object))
            start = j + 1
            is_object = False  # "no evidence of X": X and its modifiers (2-hop patterns)
        elif t in ("change", "changes"):
            j += 1
            break
        elif _ends_forward_list(toks, clause, i, j, prev, steps, pass_of, pass_preps):
            break
        prev = t
        j += 1
        steps += 1
    segments.append((start, j, is_object))
    return segments


def _ends_forward_list(
    toks: list[str],
    clause: list[int],
    i: int,
    j: int,
    prev: str,
    steps: int,
    pass_of: bool,
    pass_preps: frozenset[str],
) -> bool:
    """Does token j end the list after the cue at i? (``prev``: the token before j, ``steps``:
    tokens taken so far; "to suggest", "evidence of" and "change" are handled by the caller.)"""
    t = toks[j]
    if t == ",":
        return not _comma_continues(toks, clause, j, i + 1)
    if t in ("of", "for"):
        return not pass_of
    if t == "to":
        return prev not in _SIZE_WORDS  # "small to moderate X" goes on
    if t in pass_preps:
        return False
    if t in _VERBISH or t in _PREPS:
        return not (t in _PARTICIPLES and (steps == 0 or prev in _NP_SEPARATORS))
    return False


def _comma_continues(toks: list[str], clause: list[int], j: int, lo: int = 0) -> bool:
    """Does a noun-phrase list continue across the comma at j?"""
    n = len(toks)
    k = j + 1
    if k >= n or clause[k] != clause[j]:
        return False
    if toks[k] in ("and", "or", "nor"):
        k += 1
    if k >= n:
        return False
    if toks[k] in _VERBISH or toks[k] in ("the", "no", "with", "without", "otherwise", "but"):
        return False
    if j > 0 and (_is_adjective(toks[j - 1]) or toks[j - 1] in _LIST_ADJECTIVES):
        return True  # "no acute, displaced rib fractures"
    # the stretch before the comma must not be a clause of its own ("no effusion seen, ...")
    b = j - 1
    while b >= lo and clause[b] == clause[j] and toks[b] != ",":
        if toks[b] in _PARTICIPLES or toks[b] in _COPULA:
            return False
        b -= 1
    # the segment after it: a verb there ends the list unless the list goes on ("B or C is seen")
    coordinated = toks[j + 1] in ("or", "and", "nor")
    while k < n and clause[k] == clause[j] and toks[k] != ",":
        t = toks[k]
        if t in ("or", "nor", "and"):
            coordinated = True
        elif t in _COPULA or t in ("suggest", "suggests", "seen", "noted", "has", "have"):
            nxt = toks[k + 1] if k + 1 < n else ""
            return coordinated or t in _PARTICIPLES or nxt in _PARTICIPLES
        k += 1
    return True


# ----------------------------------------------------------------------------------------
# backward: the subject before a predicate


def _backward_region(toks: list[str], clause: list[int], p: int, comma_stops: bool = False) -> tuple[int, int, str]:
    """The subject before the predicate token p: tokens [start, end) and the kind of link
    ("cop": is/are, "appear": appears/remains, "none": no verb)."""
    c = clause[p]
    j = p - 1
    kind = "none"
    conjoined = False
    while j >= 0 and clause[j] == c and toks[j] in _PREDICATE_CHAIN:
        if toks[j] in _APPEAR:
            kind = "appear"
        elif toks[j] in _COPULA and kind == "none":
            kind = "cop"
        elif toks[j] == "and":
            conjoined = True
        j -= 1
    if conjoined:
        kind = "conjoined"  # "X is stable and within normal limits": the second predicate
    end = j + 1
    while j >= 0 and clause[j] == c:
        t = toks[j]
        if t in (",", "and"):
            if (t == "," and comma_stops and kind == "none") or _segment_has_verb(toks, clause, j):
                break
        elif t in _BACK_STOP or (t in _PREPS and t != "in"):
            break
        j -= 1
    return j + 1, end, kind


def _segment_has_verb(toks: list[str], clause: list[int], j: int) -> bool:
    """Going back from a comma/and at j: does the stretch before it form its own clause?"""
    k = j - 1
    while k >= 0 and clause[k] == clause[j] and toks[k] != ",":
        if toks[k] in _VERBISH or toks[k] in ("no", "without"):
            return True
        k -= 1
    return False


# ----------------------------------------------------------------------------------------
# parse roles inside a list


def _np_conjuncts(toks: list[str], a: int, b: int) -> list[tuple[int, int]]:
    """The conjuncts ``(start, end)`` of the noun-phrase list [a, b), split at commas,
    "and", "or" and "nor"; an "and" between two adjectives ("mediastinal and hilar contours")
    does not split the phrase."""
    conjuncts = []
    s = a
    for k in range(a, b):
        if toks[k] in _NP_SEPARATORS:
            # "mediastinal and hilar contours": coordinated adjectives, one noun phrase
            if toks[k] != "," and k > a and _is_adjective(toks[k - 1]) and k + 2 < b + 1 and (
                k + 1 < b and _is_adjective(toks[k + 1]) and k + 2 < b and toks[k + 2] not in _NP_SEPARATORS
            ):
                continue
            if k > s:
                conjuncts.append((s, k))
            s = k + 1
    if b > s:
        conjuncts.append((s, b))
    return conjuncts


def _np_roles(toks: list[str], a: int, b: int) -> dict[int, str]:
    """The role of every token of the noun-phrase list [a, b) in a dependency parse:
    ``H`` head (last word before a preposition) of the first conjunct; ``C`` head of another
    conjunct when the first conjunct is a compound ("heart size and mediastinal contours") or
    both are bare nouns ("heart and mediastinum"); ``C1`` head of a multi-word conjunct after a
    one-word first conjunct ("heart and mediastinal contours"; the original's parses attach
    these more loosely); ``M`` modifier of H; ``CM`` modifier of a C/C1; ``P`` object of a
    preposition after a head ("size of *the heart*"); ``D`` deeper words and the
    prepositions themselves. An "and" between two adjectives ("mediastinal and hilar
    contours") does not split the phrase (``_np_conjuncts``)."""
    roles: dict[int, str] = {}
    conj_role = "C"
    for ci, (s, e) in enumerate(_np_conjuncts(toks, a, b)):
        head_role, mod_role = ("H", "M") if ci == 0 else (conj_role, "CM")
        while s < e - 1 and (toks[s] in _PREPS or toks[s] in ("of", "for")):
            roles[s] = mod_role
            s += 1
        q = e
        for k in range(s + 1, e):
            if toks[k] in _PREPS or toks[k] in ("of", "for"):
                q = k
                break
        head = q - 1
        multiword = any(toks[k] not in _DETERMINERS for k in range(s, head))
        if ci > 0 and conj_role == "C1" and not multiword:
            head_role = "C"  # "heart and mediastinum": two bare nouns coordinate tightly
        roles[head] = head_role
        for k in range(s, head):
            roles[k] = mod_role
        if ci == 0 and not multiword:
            conj_role = "C1"
        if q < e:
            roles[q] = "D"
            for k in range(q + 1, e - 1):
                roles[k] = "D"
            roles[e - 1] = "P"
    return roles


def _mark(roles: dict[int, str], marks: bytearray, reach: frozenset[str], toks: list[str] | None = None) -> None:
    """Mark the tokens whose role is in ``reach`` (only heart / mediastinal words when ``toks`` is given)."""
    for k, r in roles.items():
        if r in reach and (toks is None or _is_cardio_token(toks[k])):
            marks[k] = 1


def _mark_coordination(toks: list[str], clause: list[int], i: int, marks: bytearray) -> None:
    """Mark both conjuncts of the 'or'/'versus' at token i."""
    n = len(toks)
    c = clause[i]
    j = i + 1
    if j < n and toks[j] == "either":
        j += 1
    while j < n and clause[j] == c:
        t = toks[j]
        if t == "," or t in _VERBISH or t in _PREPS or t in ("of", "for", "and", "or"):
            break
        marks[j] = 1
        j += 1
    j = i - 1
    oxford = j >= 0 and toks[j] == ","  # "A, B, or C": every member; "A, B or C": only B and C
    while j >= 0 and clause[j] == c:
        t = toks[j]
        if t == ",":
            if not oxford:
                break
            j -= 1
            continue
        if t in _VERBISH or t in _PREPS or t in ("of", "for", "and", "no", "without", "either"):
            break
        marks[j] = 1
        j -= 1


def _is_change(toks: list[str], i: int) -> bool:
    """'no (significant) (interval) change' starting at token i."""
    if toks[i] != "no":
        return False
    for t in toks[i + 1 : i + 5]:
        if t in ("change", "changes"):
            return True
        if t not in ("significant", "interval", "appreciable", "substantial", "definite", "acute"):
            return False
    return False
