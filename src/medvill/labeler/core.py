"""Parser-free re-implementation of the CheXpert labeler (Irvin et al., AAAI 2019).

The original labeler (stanfordmlgroup/chexpert-labeler, MIT) runs four stages; this package
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

Where each part lives (this module documents the conventions and re-exports the public names):

* :mod:`~medvill.labeler.phrases`: label values, observation names, the rule files;
* :mod:`~medvill.labeler.sentences`: stages 1 and 2, and the token / clause view of a
  sentence that the scope rules mark (``_Sentence``);
* :mod:`~medvill.labeler.mentions`: stage 3 (``Mention``, ``find_mentions``);
* :mod:`~medvill.labeler.vocab`: the word classes of the scope rules;
* :mod:`~medvill.labeler.regions`: where a scope lies (the noun-phrase list before or after a
  cue) and which parse roles its words take;
* :mod:`~medvill.labeler.scopes`: stage 4, the negation / uncertainty cues (``_mark_scopes``);
* :mod:`~medvill.labeler.quirks`: the emulated misparses (``_parser_quirks``);
* :mod:`~medvill.labeler.labeler`: ``CheXpertLabeler`` (stages 3 to 5 per report) and the
  aggregation.
"""

from __future__ import annotations

from .labeler import CheXpertLabeler
from .mentions import Mention
from .phrases import (
    CARDIOMEGALY,
    ENLARGED_CARDIOMEDIASTINUM,
    NEGATIVE,
    NO_FINDING,
    POSITIVE,
    SUPPORT_DEVICES,
    UNCERTAIN,
    load_phrases,
)
from .sentences import clean_report, split_sentences

__all__ = [
    "CARDIOMEGALY",
    "ENLARGED_CARDIOMEDIASTINUM",
    "NEGATIVE",
    "NO_FINDING",
    "POSITIVE",
    "SUPPORT_DEVICES",
    "UNCERTAIN",
    "CheXpertLabeler",
    "Mention",
    "clean_report",
    "load_phrases",
    "split_sentences",
]
