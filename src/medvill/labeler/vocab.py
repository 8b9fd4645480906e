"""Word classes used by the clause splitting and the scope rules, and two word predicates."""

from __future__ import annotations

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


def _is_adjective(tok: str) -> bool:
    return tok in _ADJECTIVES or tok.endswith(_ADJ_SUFFIXES)

