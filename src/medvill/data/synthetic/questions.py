"""VQA questions about one image, in the VQA-RAD (MEVF) style."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .anatomy import _sides
from .cases import Finding
from .findings import _pick
from .observations import ABNORMALITIES, ATE, CARD, CON, ECM, EDE, EFF, FRA, LES, NF, OPA, PLO, PNA, PTX, SD
from .phrases import _LOBES
from .reports import _NEGATION_BLOCKERS

_PRESENCE_Q: dict[str, tuple[str, tuple[str, ...]]] = {
    EFF: ("PRES", ("Is there a pleural effusion?", "Is there an effusion?", "Is there fluid in the pleural space?")),
    PTX: ("PRES", ("Is there a pneumothorax?", "Is there air in the pleural space?")),
    CARD: ("SIZE", ("Is the heart enlarged?", "Is there cardiomegaly?", "Is the cardiac silhouette enlarged?")),
    ECM: ("SIZE", ("Is the mediastinum widened?", "Is the upper mediastinum enlarged?")),
    LES: ("PRES", ("Is there a lung nodule or mass?", "Is there a focal lung lesion?")),
    CON: ("PRES", ("Is there consolidation?", "Is there a focal consolidation?")),
    OPA: ("PRES", ("Is there a lung opacity?", "Are there any opacities in the lungs?")),
    EDE: ("PRES", ("Is there pulmonary edema?", "Is there evidence of pulmonary edema?")),
    ATE: ("PRES", ("Is there atelectasis?", "Is there any atelectasis?")),
    FRA: ("PRES", ("Is there a fracture?", "Are any bones fractured?")),
    PLO: ("PRES", ("Is there pleural thickening?",)),
}
_SIDE_Q = {
    EFF: ("Is there a pleural effusion on the {s}?", "Is the effusion on the {s} side?"),
    PTX: ("Is there a pneumothorax on the {s}?", "Is the {s} lung collapsed?"),
    LES: ("Is there a nodule or mass in the {s} lung?",),
    ATE: ("Is there atelectasis in the {s} lung?",),
    FRA: ("Is there a fracture on the {s} side?",),
}
_DEVICE_NAMES = {"ett": "endotracheal tube", "ng": "nasogastric tube", "cvc": "central venous catheter",
                 "picc": "picc line", "pacemaker": "pacemaker", "ecg": "ecg leads"}
_DEVICE_Q = {"ett": "Is there an endotracheal tube?", "ng": "Is there a nasogastric tube?",
             "pacemaker": "Is there a pacemaker?", "cvc": "Is there a central venous catheter?"}
_ABN_NAME = {EFF: "pleural effusion", PTX: "pneumothorax", CARD: "cardiomegaly", ECM: "widened mediastinum",
             OPA: "opacity", CON: "consolidation", PNA: "pneumonia", EDE: "pulmonary edema", ATE: "atelectasis",
             PLO: "pleural thickening", FRA: "fracture"}


#: OPEN questions about the side / the size of a positive finding.
_OPEN_SIDE_Q = {EFF: ("Which side is the effusion on?", "On which side is the pleural effusion?"),
                PTX: ("Which side is the pneumothorax on?", "Where is the pneumothorax?"),
                LES: ("In which lung is the lesion?",), ATE: ("Which side is the atelectasis on?",),
                PLO: ("Which side shows pleural thickening?",), FRA: ("Which side is the fracture on?",)}
_OPEN_SEV_Q = {EFF: ("How large is the pleural effusion?", "What is the size of the effusion?"),
               PTX: ("How large is the pneumothorax?",),
               LES: ("What is the size of the lesion?", "Is the lung lesion small or large?"),
               CARD: ("How enlarged is the heart?", "What is the degree of cardiomegaly?"),
               EDE: ("How severe is the pulmonary edema?",)}

_QA = tuple[str, str, str]   # (question, answer, question type)


def _device_name(dev: str) -> str:
    return "chest tube" if dev.startswith("chest_tube") else _DEVICE_NAMES[dev]


def make_questions(drawn: Sequence[Finding], labels: dict[str, int | None], n: int,
                   rng: np.random.Generator) -> list[dict[str, Any]]:
    """``n`` question dicts (question, answer, answer_type, question_type) about one image.

    About half are CLOSED yes/no (the wanted answer is drawn first, so yes and no are
    balanced); the rest OPEN with short lower-case answers.  Only findings reported as
    positive are asked about; a "no" is only given when nothing similar is drawn.
    """
    pos = {f.observation: f for f in drawn if f.value == 1 and labels.get(f.observation) == 1}
    devices = [d for f in drawn if f.observation == SD for d in f.params.get("devices", [])]
    closed = _closed_questions(drawn, labels, pos, devices)
    opened = _open_questions(drawn, labels, pos, devices)
    generic = [("What abnormality is seen?", "none", "ABN")] if labels.get(NF) == 1 and not opened else []
    generic += [("What imaging modality is this?", "x-ray", "MODALITY"),
                ("How was this image taken?", "x-ray", "MODALITY"),
                ("What plane is this image in?", "pa", "PLANE"), ("What part of the body is shown?", "chest", "ORGAN"),
                ("What organ system is imaged?", "chest", "ORGAN")]
    return _choose_questions(closed, opened, generic, n, rng)


def _closed_questions(drawn: Sequence[Finding], labels: dict[str, int | None], pos: dict[str, Finding],
                      devices: list[str]) -> list[_QA]:
    """Yes/no questions: presence, side, devices, normal or not."""
    drawn_obs = {f.observation for f in drawn}
    closed: list[_QA] = []

    def absent(obs: str) -> bool:
        return labels.get(obs) not in (1, -1) and not (_NEGATION_BLOCKERS.get(obs, {obs}) & drawn_obs)

    for obs, (qtype, qs) in _PRESENCE_Q.items():
        if labels.get(obs) == 1:
            closed += [(q, "yes", qtype) for q in qs]
        elif absent(obs):
            closed += [(q, "no", qtype) for q in qs]
    for obs, qs in _SIDE_Q.items():
        f = pos.get(obs)
        if f is not None and f.side:
            for q in qs:
                for s in ("left", "right"):
                    closed.append((q.format(s=s), "yes" if s in _sides(f.side) else "no", "POS"))
        elif absent(obs):
            closed += [(q.format(s=s), "no", "POS") for q in qs for s in ("left", "right")]
    sd_q = ("Are there any support devices?", "Is there a medical device present?", "Are there any lines or tubes?")
    closed += [(q, "yes" if devices else "no", "PRES") for q in sd_q]
    for dev, q in _DEVICE_Q.items():
        closed.append((q, "yes" if dev in devices else "no", "PRES"))
    abnormal_pos = any(labels.get(o) == 1 for o in ABNORMALITIES)
    if labels.get(NF) == 1 and not devices:
        closed += [("Is this a normal chest x-ray?", "yes", "ABN"), ("Is this chest radiograph normal?", "yes", "ABN"),
                   ("Are there any abnormalities?", "no", "ABN"),
                   ("Is there any abnormality in this image?", "no", "ABN")]
    elif abnormal_pos:
        closed += [("Is this a normal chest x-ray?", "no", "ABN"), ("Is this chest radiograph normal?", "no", "ABN"),
                   ("Are there any abnormalities?", "yes", "ABN"),
                   ("Is there any abnormality in this image?", "yes", "ABN")]
    return closed


def _open_questions(drawn: Sequence[Finding], labels: dict[str, int | None], pos: dict[str, Finding],
                    devices: list[str]) -> list[_QA]:
    """Questions with short answers about the positive findings and the devices."""
    drawn_obs = {f.observation for f in drawn}
    opened: list[_QA] = []
    for obs, f in pos.items():
        for q in _OPEN_SIDE_Q.get(obs, ()):
            if f.side:
                opened.append((q, f.side, "POS"))
        for q in _OPEN_SEV_Q.get(obs, ()):
            if f.severity:
                ans = ("small" if f.severity == "small" else "large") if obs == LES else (
                    "severe" if f.severity == "marked" else f.severity)
                opened.append((q, ans, "SIZE"))
    if FRA in pos:
        opened.append(("What bone is fractured?", pos[FRA].location or "rib", "ABN"))
    if LES in pos:
        kind = "nodule" if pos[LES].severity == "small" else "mass"
        opened.append(("What type of lung lesion is seen?", kind, "ABN"))
    if CARD in pos and ECM not in drawn_obs:
        opened.append(("What organ is enlarged?", "heart", "ORGAN"))
    elif ECM in pos and CARD not in drawn_obs:
        opened.append(("What structure is widened?", "mediastinum", "ORGAN"))
    opened += _lobe_questions(drawn, labels)
    uniq = sorted(set(_device_name(d) for d in devices))
    if len(uniq) == 1:
        opened += [("What device is present?", uniq[0], "PRES"), ("What support device is seen?", uniq[0], "PRES")]
    elif uniq:
        opened.append(("How many different support devices are present?", str(len(uniq)), "COUNT"))
    reported = [o for o in ABNORMALITIES if labels.get(o) in (1, -1)]
    if len(reported) == 1 and reported[0] in pos and reported[0] != LES:
        opened.append(("What is the main abnormality?", _ABN_NAME[reported[0]], "ABN"))
    return opened


def _lobe_questions(drawn: Sequence[Finding], labels: dict[str, int | None]) -> list[_QA]:
    """What is in a given lobe, asked only where exactly one nameable finding is drawn there."""
    out: list[_QA] = []
    in_lobe: dict[tuple[str, str], list[str]] = {}
    for f in drawn:
        if f.observation in (OPA, CON, PNA, LES, ATE):
            for s in _sides(f.side):
                name = None
                if f.observation == LES and f.value == 1:
                    name = "nodule" if f.severity == "small" else "mass"
                elif f.observation == PNA:
                    name = "pneumonia" if f.value == 1 else ("opacity" if labels.get(OPA) == 1 else None)
                elif f.value == 1:
                    name = _ABN_NAME[f.observation]
                in_lobe.setdefault((s, f.location or "lower"), []).append(name or "?")
    for (s, zone), names in in_lobe.items():
        if len(names) == 1 and names[0] != "?":
            out.append((f"What abnormality is seen in the {_LOBES[(s, zone)][0]}?", names[0], "ABN"))
    return out


def _choose_questions(closed: list[_QA], opened: list[_QA], generic: list[_QA], n: int,
                      rng: np.random.Generator) -> list[dict[str, Any]]:
    """Pick ``n`` different questions, alternating CLOSED (yes and no balanced) and OPEN."""
    out: list[dict[str, Any]] = []
    used: set[str] = set()
    first_closed = rng.random() < 0.5
    for j in range(n):
        want_closed = (j % 2 == 0) == first_closed
        if want_closed:
            target = "yes" if rng.random() < 0.5 else "no"
            pools = [[c for c in closed if c[1] == target and c[0] not in used],
                     [c for c in closed if c[1] != target and c[0] not in used]]
        else:
            pools = [[c for c in opened if c[0] not in used] if rng.random() < 0.8 else [],
                     [c for c in generic if c[0] not in used], [c for c in opened if c[0] not in used]]
        pool = next((p for p in pools if p), None)
        if pool is None:
            pool = [c for c in generic + opened + closed if c[0] not in used] or generic
        q, a, t = _pick(rng, pool)
        used.add(q)
        out.append({"question": q, "answer": a, "answer_type": "CLOSED" if a in ("yes", "no") else "OPEN",
                    "question_type": t})
    return out
