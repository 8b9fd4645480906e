"""Reports: what is said (FINDINGS and IMPRESSION sentences, negations, label aggregation)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from ...labels import CHEXPERT_OBSERVATIONS
from .cases import Finding, Sentence
from .findings import _pick
from .observations import ATE, CARD, CON, ECM, EDE, EFF, FRA, LES, NF, OPA, PLO, PNA, PTX, SD
from .phrases import _cap, _finding_candidates, _Mention

#: Explicit negations: (text, observations negated).  Only used when every observation in it
#: is absent from the image (and not otherwise mentioned).
_NEGATIONS: dict[str, list[tuple[str, tuple[str, ...]]]] = {
    "pleural": [
        ("No pleural effusion or pneumothorax.", (EFF, PTX)), ("No pneumothorax or pleural effusion.", (PTX, EFF)),
        ("There is no pleural effusion or pneumothorax.", (EFF, PTX)),
        ("No focal consolidation, pleural effusion or pneumothorax.", (CON, EFF, PTX)),
        ("There is no focal consolidation, pleural effusion, or pneumothorax.", (CON, EFF, PTX)),
        ("No pleural effusion.", (EFF,)), ("No pleural effusions.", (EFF,)),
        ("No evidence of pleural effusion.", (EFF,)),
        ("No pneumothorax.", (PTX,)), ("There is no pneumothorax.", (PTX,)), ("No evidence of pneumothorax.", (PTX,)),
        ("Pneumothorax is not seen.", (PTX,)), ("No PTX.", (PTX,)),
    ],
    "airspace": [
        ("There is no focal consolidation.", (CON,)), ("No focal consolidation.", (CON,)),
        ("No focal airspace consolidation.", (CON,)), ("No focal airspace opacity.", (OPA,)),
        ("No focal opacity to suggest pneumonia.", (OPA, PNA)), ("No evidence of pneumonia.", (PNA,)),
        ("No focal consolidation to suggest pneumonia.", (CON, PNA)),
    ],
    "cardiac": [
        ("The cardiomediastinal silhouette is within normal limits.", (CARD, ECM)),
        ("Normal cardiomediastinal silhouette.", (CARD, ECM)),
        ("Cardiomediastinal silhouette is unremarkable.", (CARD, ECM)),
        ("Heart size is normal.", (CARD,)), ("The heart is normal in size.", (CARD,)), ("Normal heart size.", (CARD,)),
        ("No cardiomegaly.", (CARD,)), ("Mediastinal contours are normal.", (ECM,)),
        ("The mediastinum is not widened.", (ECM,)), ("Normal mediastinal silhouette.", (ECM,)),
    ],
    "edema": [("No pulmonary edema.", (EDE,)), ("No evidence of pulmonary edema.", (EDE,)),
              ("There is no pulmonary vascular congestion.", (EDE,))],
    "bones": [("No acute displaced rib fracture.", (FRA,)), ("No acute fracture.", (FRA,)),
              ("No displaced fracture is seen.", (FRA,))],
    "lesion": [("No suspicious pulmonary nodules or masses.", (LES,)), ("No focal nodule.", (LES,))],
    "atelectasis": [("No atelectasis.", (ATE,))],
}
_NEG_P = {"pleural": 0.85, "airspace": 0.55, "cardiac": 0.75, "edema": 0.3, "bones": 0.25, "lesion": 0.15,
          "atelectasis": 0.05}

_TECHNIQUE = ("PA view of the chest.", "PA and lateral views of the chest.", "Frontal view of the chest.",
              "Single frontal radiograph of the chest.", "PA chest radiograph.")
_COMPARISON = ("Comparison is made to the prior study.", "Compared to prior study.",
               "No prior studies are available for comparison.", "Comparison: none.")
_CLEAR_LUNGS = ("The lungs are clear.", "Lungs are clear bilaterally.", "The lungs are well expanded and clear.")
_BONES_OK = ("The osseous structures are intact.", "No acute osseous abnormality.",
             "Visualized osseous structures are unremarkable.")
_ABDOMEN_OK = ("The visualized upper abdomen is unremarkable.", "Upper abdomen is unremarkable.")
_NORMAL_IMPRESSION = ("No acute cardiopulmonary process.", "No acute cardiopulmonary abnormality.",
                      "Normal chest radiograph.", "No acute intrathoracic process.")

#: Which drawn observations rule out a negation of an observation (they would look alike).
_NEGATION_BLOCKERS = {
    OPA: {OPA, CON, PNA, EDE, LES, ATE}, CON: {CON, PNA, OPA}, PNA: {PNA, CON, OPA},
    EDE: {EDE}, LES: {LES}, ATE: {ATE}, CARD: {CARD}, ECM: {ECM}, EFF: {EFF}, PTX: {PTX},
    FRA: {FRA}, PLO: {PLO},
}
_GROUP = {OPA: "lung", CON: "lung", PNA: "lung", LES: "lung", EDE: "lung", ATE: "lung",
          EFF: "pleura", PTX: "pleura", PLO: "pleura", CARD: "heart", ECM: "heart", FRA: "bones", SD: "devices"}
_IMPRESSION_PRIORITY = (PTX, EFF, CON, PNA, OPA, EDE, CARD, ECM, LES, ATE, FRA, PLO)


def aggregate_labels(sentences: Iterable[Sentence]) -> dict[str, int | None]:
    """CheXpert aggregation of sentence mentions: 1 beats -1 beats 0, unmentioned is None;
    No Finding is 1 when nothing but Support Devices is 1 or -1, otherwise None."""
    seen: dict[str, set[int]] = {}
    for sent in sentences:
        for obs, val in sent.mentions:
            seen.setdefault(obs, set()).add(int(val))
    labels: dict[str, int | None] = {}
    for obs in CHEXPERT_OBSERVATIONS:
        vals = seen.get(obs, set())
        labels[obs] = 1 if 1 in vals else (-1 if -1 in vals else (0 if 0 in vals else None))
    finding = any(labels[o] in (1, -1) for o in CHEXPERT_OBSERVATIONS if o not in (NF, SD))
    labels[NF] = None if finding else 1
    return labels


def write_report(drawn: Sequence[Finding], rng: np.random.Generator) -> tuple[list[Sentence], list[Sentence]]:
    """FINDINGS and IMPRESSION sentences for the drawn findings (see the package docstring)."""
    drawn_obs = {f.observation for f in drawn}
    comention = {PNA for f in drawn if f.params.get("pneumonia") is not None}

    def neg_ok(obs: str) -> bool:
        return not (_NEGATION_BLOCKERS.get(obs, {obs}) & drawn_obs) and obs not in comention

    ctx = {"neg_ok": neg_ok}
    groups = _stated_sentences(drawn, rng, ctx)
    _add_negations(groups, rng, neg_ok)
    _add_filler(groups, drawn_obs, rng)
    findings = _assemble_findings(groups, rng)
    impression = _write_impression(drawn, findings, rng, ctx)
    _pad_findings(findings, impression, drawn_obs)
    return findings, impression


def _stated_sentences(drawn: Sequence[Finding], rng: np.random.Generator,
                      ctx: dict[str, Any]) -> dict[str, list[Sentence]]:
    """One sentence per drawn finding (one per device), grouped by where it goes in FINDINGS."""
    groups: dict[str, list[Sentence]] = {"devices": [], "lung": [], "pleura": [], "heart": [], "bones": []}
    for f in drawn:
        cands = _finding_candidates(f, rng, ctx)
        if f.observation == SD:
            for text, m in cands:
                groups["devices"].append(_sentence(text, m))
            if len(cands) >= 2 and rng.random() < 0.3:
                groups["devices"] = [_sentence(_pick(rng, ("Lines and tubes are in standard position.",
                                                           "Support devices are in standard position.")), ((SD, 1),))]
            continue
        text, m = _pick(rng, cands)
        groups[_GROUP[f.observation]].append(_sentence(text, m))
    return groups


def _add_negations(groups: dict[str, list[Sentence]], rng: np.random.Generator,
                   neg_ok: Callable[[str], bool]) -> None:
    """Explicit negations of absent observations (not repeating ones already stated inline)."""
    negated: set[str] = {o for g in groups.values() for sent in g for o, val in sent.mentions if val == 0}
    for key, p in _NEG_P.items():
        if rng.random() >= p:
            continue
        opts = [(t, obs) for t, obs in _NEGATIONS[key] if all(neg_ok(o) for o in obs) and not (set(obs) & negated)]
        if not opts:
            continue
        text, obs = _pick(rng, opts)
        negated.update(obs)
        target = {"pleural": "pleura", "airspace": "lung", "cardiac": "heart", "edema": "lung", "bones": "bones",
                  "lesion": "lung", "atelectasis": "lung"}[key]
        groups[target].append(_sentence(text, tuple((o, 0) for o in obs)))


def _add_filler(groups: dict[str, list[Sentence]], drawn_obs: set[str], rng: np.random.Generator) -> None:
    """Mention-free filler sentences, then shuffle some groups."""
    lungs_normal = not (drawn_obs & {OPA, CON, PNA, EDE, LES, ATE, PTX, EFF, PLO})
    if lungs_normal and rng.random() < 0.6:
        groups["lung"].insert(0, Sentence(_pick(rng, _CLEAR_LUNGS)))
    if FRA not in drawn_obs and rng.random() < 0.35:
        groups["bones"].append(Sentence(_pick(rng, _BONES_OK)))
    if rng.random() < 0.1:
        groups["bones"].append(Sentence(_pick(rng, _ABDOMEN_OK)))
    for g in ("lung", "pleura", "heart"):
        if len(groups[g]) > 1 and rng.random() < 0.3:
            groups[g] = [groups[g][i] for i in rng.permutation(len(groups[g]))]


def _assemble_findings(groups: dict[str, list[Sentence]], rng: np.random.Generator) -> list[Sentence]:
    """The FINDINGS section: optional technique / comparison, then the groups in a varied order."""
    order = ["lung", "pleura", "heart", "bones"]
    if rng.random() < 0.35:
        order = ["heart", "lung", "pleura", "bones"]
    order = (["devices"] + order) if rng.random() < 0.6 else (order[:-1] + ["devices", order[-1]])
    findings: list[Sentence] = []
    if rng.random() < 0.4:
        findings.append(Sentence(_pick(rng, _TECHNIQUE)))
    if rng.random() < 0.3:
        findings.append(Sentence(_pick(rng, _COMPARISON)))
    for g in order:
        findings.extend(groups[g])
    if all(not s.mentions for s in findings):                 # never an empty-of-content report
        findings.append(_sentence(_pick(rng, _NEGATIONS["pleural"][:3])[0], ((EFF, 0), (PTX, 0))))
    return findings


def _pad_findings(findings: list[Sentence], impression: list[Sentence], drawn_obs: set[str]) -> None:
    """FINDINGS is always the longer section (readers that take "the longer section" then see
    every label): pad a short one with mention-free filler, in place."""
    def length(sents: list[Sentence]) -> int:
        return len(" ".join(x.text for x in sents))

    has_intro = any(x.text in _TECHNIQUE + _COMPARISON for x in findings)
    leading = [] if has_intro else [_TECHNIQUE[0], _COMPARISON[0]]
    trailing = [t for t in ((() if FRA in drawn_obs else _BONES_OK[:1]) + _ABDOMEN_OK[:1])
                if all(x.text != t for x in findings)]
    for i, text in enumerate(leading):
        if length(findings) > length(impression):
            break
        findings.insert(i, Sentence(text))
    for text in trailing:
        if length(findings) > length(impression):
            break
        findings.append(Sentence(text))


def _sentence(text: str, mentions: Sequence[_Mention], section: str = "findings") -> Sentence:
    text = _cap(text)
    if not mentions:
        return Sentence(text, section=section)
    (o, v), rest = mentions[0], tuple(mentions[1:])
    return Sentence(text, o, int(v), rest, section)


def _write_impression(drawn: Sequence[Finding], findings: Sequence[Sentence], rng: np.random.Generator,
                      ctx: dict[str, Any]) -> list[Sentence]:
    """A shorter summary that only repeats (observation, value) pairs already in FINDINGS."""
    stated = {mv for s in findings for mv in s.mentions}
    abnormal = [f for f in drawn if f.observation != SD]
    out: list[Sentence] = []
    if not abnormal:
        out.append(Sentence(_pick(rng, _NORMAL_IMPRESSION), section="impression"))
    else:
        prio = {o: i for i, o in enumerate(_IMPRESSION_PRIORITY)}
        top = sorted(abnormal, key=lambda f: prio[f.observation])[: int(rng.integers(1, 4))]
        for f in top:
            cands = [(t, m) for t, m in _finding_candidates(f, rng, ctx) if set(m) <= stated]
            short = sorted(cands, key=lambda c: len(c[0]))[:3]
            if short:
                text, m = _pick(rng, short)
                out.append(_sentence(text, m, "impression"))
        if len(abnormal) <= 1 and rng.random() < 0.3:
            out.append(Sentence("Otherwise no acute cardiopulmonary process.", section="impression"))
    devices = [f for f in drawn if f.observation == SD]
    if devices and rng.random() < 0.3 and (SD, 1) in stated:
        out.append(_sentence("Support devices as described above.", ((SD, 1),), "impression"))
    return out
