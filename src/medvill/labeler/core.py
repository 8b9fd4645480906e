"""Parser-free re-implementation of the CheXpert labeler (Irvin et al., AAAI 2019).

The original labeler (stanfordmlgroup/chexpert-labeler, MIT) runs four stages; this module
mimics each of them in pure Python:

1. **Cleaning** (``clean_report``), exactly as the original loader: lower-case, ``and/or`` ->
   ``or``, ``a/b`` between letters -> ``a or b``, ``..`` -> ``.``, a space after every ``.``
   and ``,``, whitespace collapsed, empty sentences (``. .``) dropped.
2. **Sentence splitting** (``split_sentences``): an approximation of NLTK Punkt on lower-cased
   text: a sentence ends at ``.``/``?``/``!`` followed by a space, except after a known
   abbreviation (``vs.``, ``e.g.``...) and after a bare number followed by a word
   (``1. left effusion`` is one sentence).
3. **Mention extraction** (``CheXpertLabeler.mentions``): every phrase of
   ``rules/phrases/mention/<observation>.txt`` (``_`` = space) is matched as a plain
   *substring* of each sentence, as the original's ``re.finditer(phrase, sentence)`` does
   (so ``atelecta`` matches ``atelectasis`` and ``plate`` matches ``platelike``; word
   boundaries exist only where a phrase spells a ``_``). Every match of every phrase is one
   mention, overlapping ones included. A mention is dropped when it overlaps a match of an
   *unmention* phrase of the same observation (``rules/phrases/unmention``, e.g. ``massive``
   for Lung Lesion, ``pleural scar`` for Lung Opacity, ``pericardial effusion`` for Pleural
   Effusion) or one of the positional unmentions the original builds in code
   (``over the`` / ``overly the`` / ``in the`` [+ ``superior``/``left``/``right``] + a
   Cardiomegaly or Enlarged Cardiomediastinum phrase, e.g. ``projecting over the heart``).
4. **Classification** of each mention as negative, uncertain or positive. The original
   matches the NegBio Semgrex patterns of ``rules/patterns`` against a dependency parse
   (BLLIP + Stanford universal dependencies); here the same cues act on token *scopes* inside
   a clause, without a parser or Java:

   * a sentence is cut into clauses at ``;`` ``:`` ``(`` ``)`` and at ``but``, ``however``,
     ``although``, ``which``, ``whereas``, ``except``...;
   * a scope is the noun-phrase list after a cue (it runs over commas, ``and``, ``or``,
     ``nor`` and stops at a verb, a preposition or the clause end) or the subject before a
     predicate cue. Each word of the list gets the role a parser would give it (head, other
     conjunct, modifier, prepositional object) and a cue reaches only the roles its Semgrex
     patterns reach: ``X appears within normal limits`` negates only the head, so in "the
     heart size ... appear within normal limits" the mention "the heart" stays positive,
     exactly as in the original; ``X is normal`` also reaches modifiers;
   * *pre-negation uncertainty* (wins over negation): ``cannot exclude X``, ``X cannot be
     excluded``, ``X is not excluded``, ``cannot rule out X``, ``no new X``;
   * *negation*: after ``no``, ``without``, ``nor``, ``negative for``, ``free of``, ``clear
     of``, ``no evidence of``, ``there is no X to suggest Y``, ``resolution / removal /
     history / disappearance of``, ``rule out``, ``exclude``, ``normal`` / ``unremarkable``
     (``normal heart size and mediastinal contours``), ``normal except for X``, ``clear X``;
     before: ``X is/appears normal``, ``X is within normal limits``, ``X is at the upper
     limits of normal``, ``X is not enlarged``, ``X has resolved``, ``X has been removed``,
     ``X has cleared``, ``X is clear``, ``X is absent``, ``X is no longer seen``. As in the
     original, ``X is not seen``, ``resolved X``, ``no change in X``, ``X upper limits of
     normal`` (without "at") and ``no X to suggest Y`` (without "there is") do not negate;
     a verbless "X within normal limits" after a comma also negates the subject of the
     clause's verb ("heart size is enlarged, vascularity within normal limits");
   * *post-negation uncertainty*: after ``possible``, ``possibly``, ``probable``,
     ``presumably``, ``questionable``, ``question of``, ``suspect(ed)``, ``suspicious``,
     ``suspicion``, ``suggestion of``, ``concern(ing) for``, ``worrisome for``,
     ``differential``, ``correlate``, the modals ``may``/``might``/``could``/``would``
     (``may represent X``, ``may be due to X``), ``secondary to``, ``is compatible with``;
     both sides of ``or`` and ``versus``/``vs`` (``atelectasis or consolidation``); before:
     ``X is suspected``, ``X may be present``, ``X is obscured``, ``X is not well
     visualized``, ``X was not appreciated``, ``X is poorly evaluated``; the mentions
     ``vascular congestion``, ``pulmonary congestion``, ``vascular prominence`` and
     ``indistinctness`` are uncertain by themselves; heart/mediastinal contour words
     (``silhouette``, ``contour``, ``heart``, ``size``, ``mediastinum``...) that are
     ``stable``, ``unchanged``, ``not changed``, ``similar to prior`` or after ``no change
     in`` are uncertain (``stable cardiomediastinal silhouette``) while ``stable
     cardiomegaly`` stays positive. ``likely``, ``suggest(s)`` and ``consistent with`` are
     *not* uncertainty cues in CheXpert;
   * a few phrasings the original's parser consistently misreads (a plural noun taken for a
     verb: ``No acute, displaced rib fractures.`` is a *positive* Fracture in the original)
     are reproduced by ``_parser_quirks`` (``CheXpertLabeler(parser_quirks=False)`` turns
     this off);
   * a mention covers every token its span overlaps; it is negative when any of its tokens
     is negated (and not pre-negation-uncertain), else uncertain when any token is
     uncertain, else positive.

5. **Aggregation** per report, exactly as the original aggregator:

   * the labels of all mentions of an observation are merged: negative + uncertain ->
     uncertain, otherwise positive + anything -> positive, otherwise the common value
     (note the original's quirk, kept here: a positive, an uncertain *and* a negative
     mention give *uncertain*);
   * a positive or uncertain ``chf`` / ``heart failure`` mention (an Edema phrase; Edema
     gets its own label) also adds an *uncertain* Cardiomegaly mention;
   * ``No Finding`` is 1 when no mention of any observation other than Support Devices is
     positive or uncertain -- the "mentions" include the no_finding phrase list
     (``emphysema``, ``granuloma``, ``scoliosis``, ``calcifi``...), which never gets a
     label column of its own; otherwise it is blank. An empty report therefore gets
     No Finding = 1 and all other columns blank, as in the original;
   * Support Devices is labelled like any other observation but never blocks No Finding.

Label values: 1 positive, 0 negative, -1 uncertain, nan blank (not mentioned).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from importlib import resources

import numpy as np

from ..labels import CHEXPERT_OBSERVATIONS

POSITIVE = 1.0
NEGATIVE = 0.0
UNCERTAIN = -1.0

NO_FINDING = "No Finding"
SUPPORT_DEVICES = "Support Devices"
CARDIOMEGALY = "Cardiomegaly"
ENLARGED_CARDIOMEDIASTINUM = "Enlarged Cardiomediastinum"

_OBS_INDEX = {name: i for i, name in enumerate(CHEXPERT_OBSERVATIONS)}

# ----------------------------------------------------------------------------------------
# rule files


def _observation_name(stem: str) -> str:
    return stem.replace("_", " ").title()


def load_phrases(kind: str) -> dict[str, list[str]]:
    """``{observation: [phrase, ...]}`` from ``rules/phrases/<kind>/*.txt`` (kind = mention |
    unmention); ``_`` in a phrase stands for a space, as in the original."""
    root = resources.files("medvill.labeler") / "rules" / "phrases" / kind
    out: dict[str, list[str]] = {}
    for entry in sorted(root.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".txt"):
            continue
        observation = _observation_name(entry.name[: -len(".txt")])
        phrases = out.setdefault(observation, [])
        for line in entry.read_text(encoding="utf-8").splitlines():
            phrase = line.strip().replace("_", " ")
            if phrase and phrase not in phrases:
                phrases.append(phrase)
    return out


def _positional_unmentions(mentions: dict[str, list[str]]) -> dict[str, list[str]]:
    """The positional unmentions the original adds in code (``over the heart``...)."""
    firsts = ["over the", "overly the", "in the"]
    seconds = ["", " superior", " left", " right"]
    positional = [a + b for a in firsts for b in seconds]
    cardio = [
        p + " " + m.replace("the ", "")
        for p in positional
        for m in mentions.get(CARDIOMEGALY, [])
        if m not in ("cardiomegaly", "cardiac enlargement")
    ]
    ecm = [p + " " + m for p in positional for m in mentions.get(ENLARGED_CARDIOMEDIASTINUM, [])]
    return {CARDIOMEGALY: cardio, ENLARGED_CARDIOMEDIASTINUM: ecm}


# ----------------------------------------------------------------------------------------
# cleaning and sentence splitting

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
# word classes used by the scope rules

_TOKEN_RE = re.compile(r"[a-z0-9]+(?:['\-][a-z0-9]+)*|[^\sa-z0-9]")

_CLAUSE_PUNCT = frozenset(";:()[]?!.")
_CLAUSE_WORDS = frozenset(
    "but however although though whereas which who whose while except unless because if where when "
    "nonetheless nevertheless".split()
)
_COPULA = frozenset("is are was were be been being am".split())
_APPEAR = frozenset(
    "appear appears appeared remain remains remained seem seems seemed look looks looked".split()
)
_PARTICIPLES = frozenset("seen noted identified visualized demonstrated detected appreciated visible".split())
# words that end a noun-phrase list: verbs, participles, pronouns
_VERBISH = (
    _COPULA
    | _APPEAR
    | _PARTICIPLES
    | frozenset(
        """has have had persist persists persisted suggest suggests suggesting suggested represent represents
        representing represented reflect reflects reflecting show shows showing shown demonstrate demonstrates
        demonstrating consistent compatible project projects projecting projected overlying overlie overlies
        measuring measures measure measured involving involves involve extending extends extend containing
        contains contain causing causes cause obscuring obscures obscured indicating indicates indicate include
        includes including there it this these those that they which detected given related likely unlikely
        favored favor favors""".split()
    )
)
_PREPS = frozenset(
    """in at on within with without to from into over under along about above below behind beneath near since
    by through throughout adjacent compared than as like upon across between toward towards per via around
    after before during overlying involving projecting""".split()
)
_NP_SEPARATORS = frozenset({",", "and", "or", "nor"})
# heads after which "of"/"for" keeps a negation scope going ("no evidence of X")
_PASS_OF = frozenset(
    "evidence sign signs finding findings focus foci area areas development suggestion xxxx line".split()
)
_SIZE_WORDS = frozenset("mild moderate small large minimal trace tiny significant severe".split())
_ADVERBS = frozenset(
    """now otherwise still again grossly essentially overall currently also both entirely completely
    stably relatively largely quite normally generally all each significantly markedly""".split()
)
_NORMAL = frozenset({"normal", "unremarkable", "nl", "wnl"})
# what may stand between a subject and its predicate ("X is now again within normal limits")
_PREDICATE_CHAIN = (
    _COPULA
    | _APPEAR
    | _ADVERBS
    | frozenset(
        """not no longer has have had cannot can could be top upper high near normal within limits limit of at
        the on to xxxx a and stable unchanged""".split()
    )
)
_BACK_STOP = (_VERBISH - _PARTICIPLES - {"given"}) | frozenset({"with", "without", "no"})
_NORMAL_PREPS = frozenset({"in", "for"})
_NO_BACKWARD_BEFORE_NORMAL = frozenset({"with", "without", "and", ",", "a", "an", "the", "of", "no"})
_CANNOT = frozenset({"cannot", "not", "can't", "t"})
_MODALS = frozenset("may might could would maybe".split())
_UNCERTAIN_FORWARD = frozenset(
    """possible possibly probable presumably questionable question questioned suspect suspected
    suspicious suspicion suggestion concern concerning worrisome maybe differential correlate
    correlation""".split()
)
_ADJECTIVES = frozenset("left right upper lower mild small large hilar bilateral".split())
_ADJ_SUFFIXES = ("al", "ar", "ic", "ous", "ive", "ary", "ent", "ant")
_FINITE = frozenset("is are was were has have had".split())
_PLURAL_QUIRK_BLOCKERS = frozenset(
    "no without for of possible probable questionable possibly probably suspected suspicious".split()
)
_DETERMINERS = frozenset("the a an this these".split())
_UNCERTAINTY_BRIDGE = frozenset(
    """be is are represent represents representing reflect reflects reflecting indicate indicates include includes
    including diagnosis considerations consideration also related due to secondary contain appear suggest signify
    show demonstrate relate possibly have has been this that could may these for of in the presence partially
    partly likely part""".split()
) | _ADVERBS
_NOT_A_NEW_NOUN = _PREPS | _NP_SEPARATORS | _ADVERBS | frozenset(
    """of for size sized caliber contour contours configuration appearance limits limit range there the
    allowing considering""".split()
)
_LIST_ADJECTIVES = frozenset("acute displaced focal definite large small significant new confluent old".split())
_INHERENTLY_UNCERTAIN = ("vascular congestion", "pulmonary congestion", "vascular prominence", "indistinctness")
_CARDIO_LEMMAS = (
    "cardiomediastinal", "pericardial", "mediastinal", "mediastinum", "cardiomediastinum", "contour",
    "configuration", "silhouette", "size", "heart", "shadow",
)


def _is_cardio_token(tok: str) -> bool:
    return any(lemma in tok for lemma in _CARDIO_LEMMAS)


# ----------------------------------------------------------------------------------------
# the labeler


@dataclass(frozen=True)
class Mention:
    """One phrase match: observation, sentence index, character span in the sentence,
    matched text and its label (1/0/-1)."""

    observation: str
    sentence: int
    start: int
    end: int
    text: str
    label: float


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


class CheXpertLabeler:
    """Rule-based CheXpert labeler without a parser; see the module docstring for the exact
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
        found: list[tuple[str, int, int]] = []
        for phrase, obs in phrases:
            pos = sentence.find(phrase)
            if pos < 0:
                continue
            unm = self._unmention_by_obs.get(obs)
            plen = len(phrase)
            while pos >= 0:
                end = pos + plen
                if not (unm and _overlaps_any(sentence, unm, pos, end)):
                    found.append((obs, pos, end))
                pos = sentence.find(phrase, end)
        return found

    # -- stage 4: classification --------------------------------------------------------
    def _classify(self, s: _Sentence, mentions: list[tuple[str, int, int]]) -> list[float]:
        _mark_scopes(s)
        if self.parser_quirks:
            _parser_quirks(s)
        labels = []
        for _obs, start, end in mentions:
            rng = s.token_range(start, end)
            text = s.text[start:end]
            negated = uncertain = False
            for t in rng:
                if s.pre_unc[t]:
                    uncertain = True
                elif s.neg[t]:
                    negated = True
                elif s.post_unc[t]:
                    uncertain = True
            if not negated and not uncertain and text in _INHERENTLY_UNCERTAIN:
                uncertain = True
            labels.append(NEGATIVE if negated else UNCERTAIN if uncertain else POSITIVE)
        return labels

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


def _merge(labels: set[float]) -> float:
    if len(labels) == 1:
        return next(iter(labels))
    if NEGATIVE in labels and UNCERTAIN in labels:
        return UNCERTAIN  # the original's case 1, checked before "positive wins"
    return POSITIVE


def _overlaps_any(sentence: str, phrases: tuple[str, ...], start: int, end: int) -> bool:
    for p in phrases:
        pos = sentence.find(p)
        while pos >= 0:
            if start < pos + len(p) and end > pos:
                return True
            pos = sentence.find(p, pos + 1)
    return False


# ----------------------------------------------------------------------------------------
# scope marking
#
# A scope is the noun-phrase list next to a cue: after it (``no X, Y or Z``) or before it,
# as the subject of a predicate (``X and Y are normal``). ``_np_roles`` gives every token of
# such a list the role it would have in the dependency parse the original matches its
# Semgrex patterns against (head, conjunct head, modifier, prepositional object...), and each
# cue marks only the roles its patterns reach: ``X appears within normal limits`` reaches the
# heads only (``the heart size ...`` leaves "the heart" positive, as in the original), ``X is
# normal`` reaches heads and modifiers (its patterns go two edges deep), ``stable X`` only
# the head.


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
        if t == ",":
            if not _comma_continues(toks, clause, j, i + 1):
                break
        elif t in ("of", "for"):
            if prev in _PASS_OF or prev == "negative":
                segments.append((start, j, is_object))
                start = j + 1
                is_object = False  # "no evidence of X": X and its modifiers (2-hop patterns)
            elif not pass_of:
                break
        elif t == "to":
            if not (prev in _SIZE_WORDS or (j + 1 < n and toks[j + 1] in ("suggest", "explain", "diagnose"))):
                break
            if j + 1 < n and toks[j + 1] in ("suggest", "explain", "diagnose"):
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
        elif t in pass_preps:
            pass
        elif t in _VERBISH or t in _PREPS:
            if not (t in _PARTICIPLES and (steps == 0 or prev in _NP_SEPARATORS)):
                break
        elif t in ("change", "changes"):
            j += 1
            break
        prev = t
        j += 1
        steps += 1
    segments.append((start, j, is_object))
    return segments


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


def _is_adjective(tok: str) -> bool:
    return tok in _ADJECTIVES or tok.endswith(_ADJ_SUFFIXES)


def _np_roles(toks: list[str], a: int, b: int) -> dict[int, str]:
    """The role of every token of the noun-phrase list [a, b) in a dependency parse:
    ``H`` head (last word before a preposition) of the first conjunct; ``C`` head of another
    conjunct when the first conjunct is a compound ("heart size and mediastinal contours") or
    both are bare nouns ("heart and mediastinum"); ``C1`` head of a multi-word conjunct after a
    one-word first conjunct ("heart and mediastinal contours"; the original's parses attach
    these more loosely); ``M`` modifier of H; ``CM`` modifier of a C/C1; ``P`` object of a
    preposition after a head ("size of *the heart*"); ``D`` deeper words and the
    prepositions themselves. An "and" between two adjectives ("mediastinal and hilar
    contours") does not split the phrase."""
    roles: dict[int, str] = {}
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
    conj_role = "C"
    for ci, (s, e) in enumerate(conjuncts):
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
    for k, r in roles.items():
        if r in reach and (toks is None or _is_cardio_token(toks[k])):
            marks[k] = 1


_ALL_ROLES = frozenset({"H", "C", "C1", "M", "CM", "P", "D"})
_HC = frozenset({"H", "C"})
_HCC = frozenset({"H", "C", "C1"})
_H = frozenset({"H"})
_HCM = frozenset({"H", "C", "M", "CM", "P"})
_HCCM = frozenset({"H", "C", "C1", "M", "CM", "P"})


def _mark_scopes(s: _Sentence) -> None:
    toks = s.tokens
    clause = s.clause
    n = len(toks)
    neg, pre_unc, post_unc = s.neg, s.pre_unc, s.post_unc

    def fwd(
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
        regions = _forward_region(
            toks, clause, i, pass_of=pass_of, pass_preps=pass_preps, max_len=max_len, bridge=bridge
        )
        for a, b, is_object in regions:
            if b > a:
                _mark(_np_roles(toks, a, b), marks, reach & _HCC if is_object else reach, toks if cardio else None)

    def bwd(
        p: int, marks: bytearray, reach: dict[str, frozenset[str]], cardio: bool = False, comma_stops: bool = False
    ) -> None:
        a, b, kind = _backward_region(toks, clause, p, comma_stops)
        roles = reach.get(kind)
        if roles is not None and b > a:
            _mark(_np_roles(toks, a, b), marks, roles, toks if cardio else None)

    # which parts of the subject a predicate reaches, by the verb that links them
    head_only = {"cop": _HCC, "appear": _HCC, "none": _HCC}
    head_only_no_appear = {"cop": _HCC, "none": _HCC}
    stable_reach = {"cop": _HC}
    normal_reach = {"cop": _HCCM, "appear": _HCC, "none": _HCCM, "conjoined": _HCCM}
    upper_limits_reach = {"cop": _HCM, "appear": _HC, "none": _HCM}
    wnl_reach = {"cop": _HCCM, "appear": _HCC, "none": _HCC}

    for i, t in enumerate(toks):
        nxt = toks[i + 1] if i + 1 < n else ""
        nxt2 = toks[i + 2] if i + 2 < n else ""
        prv = toks[i - 1] if i > 0 else ""
        prv2 = toks[i - 2] if i > 1 else ""

        # ---------------- pre-negation uncertainty / negation: exclude, rule out
        if t in ("exclude", "excluded", "excluding") or (t in ("rule", "ruled") and nxt == "out"):
            cannot = any(x in _CANNOT for x in toks[max(0, i - 3) : i])
            marks = pre_unc if cannot else neg
            fwd(i + 1 if t in ("rule", "ruled") else i, marks, _HC)
            if t in ("excluded", "ruled"):
                bwd(i, marks, head_only)
            continue
        if t == "no" and nxt == "new":
            fwd(i + 1, pre_unc, _H)  # "no new X": X uncertain; the rest of the list is negated

        # ---------------- negation
        if t in ("no", "without", "nor", "neither"):
            if nxt == "longer":
                continue
            if _is_change(toks, i):
                continue
            fwd(i, neg)
            continue
        if t == "not":
            k = i + 1
            while k < n and toks[k] in _ADVERBS:
                k += 1
            if k < n and toks[k] in ("enlarged", "dilated", "widened"):
                bwd(i, neg, head_only)
            continue
        if (nxt == "of" and t in ("free", "clear", "resolution", "removal", "history", "disappearance", "drainage",
                                  "clearing")) or (t == "negative" and nxt == "for"):
            if prv != "not":
                fwd(i + 1, neg, _HCC)
            continue
        if t in _NORMAL:
            if prv == "within":
                _within_normal_limits(s, i - 1, bwd, wnl_reach, head_only)
                if nxt in ("limits", "limit", "range") and nxt2 in ("for", "in", "of"):
                    fwd(i + 2, neg, _HCC, pass_preps=_NORMAL_PREPS)
                continue
            if nxt != "appearing":  # "normal appearing X": not a negation of X
                fwd(i, neg, _HCCM, pass_of=True, pass_preps=_NORMAL_PREPS)
            if prv in ("limits", "limit") or (prv == "of" and prv2 in ("limits", "limit")):
                # "(at) the upper limits of normal"
                k = i - (2 if prv == "of" else 1)
                before = toks[max(0, k - 3) : k]
                if ("upper" in before or "top" in before) and not any(w in ("at", "within", "on") for w in before):
                    continue
                bwd(k, neg, upper_limits_reach)
                continue
            if nxt in ("limits", "limit") and prv in _APPEAR:
                continue  # "X appear normal limits": "normal" modifies "limits", not a predicate
            if nxt and nxt[0].isalpha() and nxt not in _NOT_A_NEW_NOUN and prv in _COPULA:
                continue  # "heart size is normal lungs are clear": "normal" modifies "lungs"
            if (
                prv not in _NO_BACKWARD_BEFORE_NORMAL
                or (prv == "of" and prv2 in _COPULA)
                or (prv == "and" and prv2 in ("stable", "unchanged", "clear"))
            ):
                bwd(i, neg, normal_reach, comma_stops=True)
            continue
        if t == "except" and prv in ("normal", "clear", "unremarkable") and nxt == "for":
            fwd(i + 1, neg, _HC)
            continue
        if t in ("resolved", "removed", "cleared") and (prv in ("has", "have", "been", "had") or t == "removed"):
            if prv == "not" or prv2 == "not":
                continue
            bwd(i, neg, head_only)
            if t == "removed":
                fwd(i, neg, _HC, max_len=4)
            continue
        if t == "clear" and nxt != "of":
            if prv in _PREDICATE_CHAIN:
                bwd(i, neg, head_only)
                # "lungs are clear and hyperinflated" / "clear, hyperinflated": a conjoined predicate
                k = i + 1
                if k < n and toks[k] in ("and", ","):
                    k += 1
                if k > i + 1 and k < n and clause[k] == clause[i] and toks[k][0].isalpha():
                    neg[k] = 1
            elif prv == "but" and i > 1:
                neg[i - 2] = 1  # "hyperinflated but clear"
            if nxt and nxt[0].isalpha() and nxt not in _NOT_A_NEW_NOUN and nxt not in ("and", "bilaterally"):
                fwd(i, neg, _H, max_len=4)  # "clear airspace disease"
            continue
        if t == "absent":
            bwd(i, neg, head_only)
            continue
        if t == "longer" and prv == "no" and nxt in _PARTICIPLES | {"present", "evident", "apparent"}:
            bwd(i - 1, neg, head_only)
            continue

        # ---------------- post-negation uncertainty
        if t in _UNCERTAIN_FORWARD or t in _MODALS:
            fwd(i, post_unc, pass_of=True, bridge=_UNCERTAINTY_BRIDGE)
            if t in ("suspected", "possible", "questionable") and (prv in _COPULA or t == "suspected"):
                bwd(i, post_unc, head_only)
            if t in _MODALS and ((nxt == "be" and nxt2 in ("present", "seen")) or nxt == "appear"):
                bwd(i, post_unc, head_only)
            continue
        if t == "secondary" and nxt == "to":
            fwd(i + 1, post_unc)
            continue
        if t in ("or", "versus", "vs") and nxt != "not":
            _mark_coordination(toks, clause, i, post_unc)
            continue
        if t.startswith("obscur") and t != "obscuration":
            fwd(i, post_unc, _HC, max_len=4)
            bwd(i, post_unc, head_only)
            continue
        if t in ("evaluated", "visualized", "appreciated", "seen", "assessed") and (
            prv in ("poorly", "incompletely")
            or (prv == "not" and t == "appreciated")
            or (prv == "well" and prv2 == "not")
            or (prv == "clearly" and prv2 == "not")
        ):
            bwd(i, post_unc, head_only)
            continue
        if t == "compatible" and nxt == "with" and prv in _COPULA:
            fwd(i + 1, post_unc)
            continue
        # stable / unchanged heart and mediastinal contours
        if t in ("stable", "unchanged"):
            if nxt == "appearance" and nxt2 == "of":
                fwd(i + 2, post_unc, _HC, cardio=True)
            else:
                fwd(i, post_unc, _HC, cardio=True, max_len=6)
            if prv in _PREDICATE_CHAIN or prv not in _NO_BACKWARD_BEFORE_NORMAL:
                bwd(i, post_unc, stable_reach, cardio=True)
            elif prv == "," and clause[i - 1] == clause[i] and not _segment_has_verb(toks, clause, i - 1):
                bwd(i - 1, post_unc, {"none": _H}, cardio=True)  # "enlarged cardiac contour, stable"
            if prv == "but" or (prv in ("and", "but") and prv2 in ("enlarged", "prominent")):
                # "the cardiac silhouette is enlarged but unchanged": the shared subject
                k = i - 2
                while k >= 0 and toks[k] not in _COPULA and toks[k] not in _CLAUSE_PUNCT:
                    k -= 1
                if k >= 0 and toks[k] in _COPULA and k + 1 < i:
                    bwd(k + 1, post_unc, head_only_no_appear, cardio=True)
            continue
        if t == "changed" and prv == "not":
            bwd(i, post_unc, head_only_no_appear, cardio=True)
            continue
        if t in ("change", "changes") and _is_change(toks, max(0, i - 4)):
            fwd(i, post_unc, _HC, cardio=True, pass_preps=frozenset({"in"}))
            continue
        if t == "similar" and nxt == "to" and "prior" in toks[i + 2 : i + 5]:
            bwd(i, post_unc, head_only_no_appear, cardio=True)
            continue
        if t == "borderline" and nxt == "heart" and nxt2 == "size":
            post_unc[i + 1] = 1
            continue


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

    def verbless(k: int) -> bool:
        c = clause[k]
        return not any(toks[j] in _FINITE for j in range(n) if clause[j] == c)

    def clause_end(k: int) -> bool:
        """Nothing but participles / punctuation follow token k in its clause."""
        c = clause[k]
        return all(toks[j] in _PARTICIPLES or not toks[j][0].isalnum() for j in range(k + 1, n) if clause[j] == c)

    def clear(k: int) -> None:
        s.neg[k] = s.pre_unc[k] = s.post_unc[k] = 0

    for k, t in enumerate(toks):
        if k == 0:
            continue
        prv = toks[k - 1]
        if t == "fractures" and prv not in _PLURAL_QUIRK_BLOCKERS:
            if verbless(k) and clause_end(k):
                clear(k)
        elif (t == "consolidations" and prv in ("airspace", "space", "xxxx")) or (t == "opacities" and prv == "space"):
            if verbless(k) and clause_end(k):
                clear(k)
        elif t == "consolidation" and prv == "space" and toks[k - 2 : k - 1] == ["air"] and "or" in toks[k - 5 : k - 2]:
            if verbless(k) and clause_end(k):
                clear(k)
                clear(k - 1)
                clear(k - 2)
        elif t in ("contour", "contours") and prv == "mediastinal":
            if k > 1 and toks[k - 2] in ("unremarkable", "size") and verbless(k) and clause_end(k):
                clear(k)
                clear(k - 1)
        elif t == "or" and k >= 3 and toks[k - 3 : k] == ["no", "pleural", "effusions"] and verbless(k):
            rest = [j for j in range(k + 1, n) if clause[j] == clause[k] and toks[j][0].isalnum()]
            if (k == 3 or clause[k - 4] != clause[k]) and rest and not toks[rest[-1]].endswith("s"):
                for j in range(k + 1, n):
                    if clause[j] != clause[k]:
                        break
                    clear(j)


def _within_normal_limits(
    s: _Sentence,
    w: int,
    bwd: Callable[[int, bytearray, dict[str, frozenset[str]]], None],
    wnl_reach: dict[str, frozenset[str]],
    head_only: dict[str, frozenset[str]],
) -> None:
    """Negation by "within normal limits" (``w`` = the token "within").

    A verbless "X within normal limits" inside a longer clause attaches, in the parse, to
    the clause's main verb: after "heart size is enlarged, pulmonary vascularity within
    normal limits" the original negates the heart size too, and before a later verb
    ("..., visualized osseous structures appear intact") it negates nothing."""
    toks, clause = s.tokens, s.clause
    a, b, kind = _backward_region(toks, clause, w)
    if kind != "none":
        bwd(w, s.neg, wnl_reach)
        return
    c = clause[w]
    later = [j for j in range(w + 1, len(toks)) if clause[j] == c]
    if any(toks[j] == "," for j in later) and any(toks[j] in _FINITE or toks[j] in _APPEAR for j in later):
        return
    bwd(w, s.neg, wnl_reach)
    if a > 0 and toks[a - 1] == ",":
        k = a - 2
        while k >= 0 and clause[k] == c and toks[k] not in _COPULA:
            k -= 1
        if k >= 0 and clause[k] == c and toks[k] in _COPULA:
            bwd(k + 1, s.neg, head_only)
    # "heart size within normal limits, stable mediastinal and hilar contours": the verbless
    # noun phrase after the comma is read as one more subject of "within normal limits"
    e = w + 3
    if e + 1 < len(toks) and toks[w + 2] in ("limits", "limit") and toks[e] == "," and clause[e] == c:
        a2, b2, _ = _forward_region(toks, clause, e)[0]
        if b2 > a2:
            _mark(_np_roles(toks, a2, b2), s.neg, _HCC)


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


def _segment_has_verb(toks: list[str], clause: list[int], j: int) -> bool:
    """Going back from a comma/and at j: does the stretch before it form its own clause?"""
    k = j - 1
    while k >= 0 and clause[k] == clause[j] and toks[k] != ",":
        if toks[k] in _VERBISH or toks[k] in ("no", "without"):
            return True
        k -= 1
    return False


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
