"""Report phrasings: the sentences that can state each drawn finding (and the device sentences)."""

from __future__ import annotations

from typing import Any

import numpy as np

from .cases import Finding
from .findings import _pick
from .observations import ATE, CARD, CON, ECM, EDE, EFF, FRA, LES, OPA, PLO, PNA, PTX, SD

_Mention = tuple[str, int]
_Candidate = tuple[str, tuple[_Mention, ...]]

_LOBES = {
    ("right", "upper"): ("right upper lobe", "RUL"), ("right", "middle"): ("right middle lobe", "RML"),
    ("right", "lower"): ("right lower lobe", "RLL"), ("left", "upper"): ("left upper lobe", "LUL"),
    ("left", "middle"): ("lingula", "lingula"), ("left", "lower"): ("left lower lobe", "LLL"),
}
_ZONE_WORD = {"upper": "upper", "middle": "mid", "lower": "lower"}
_ORDINAL = {3: "third", 4: "fourth", 5: "fifth", 6: "sixth", 7: "seventh", 8: "eighth", 9: "ninth"}
_SEV_ADJ = {"small": ("small",), "moderate": ("moderate", "moderate-sized"), "large": ("large",),
            "mild": ("mild",), "severe": ("severe", "marked"), "marked": ("marked",)}
_SEV_ADV = {"mild": "mildly", "moderate": "moderately", "severe": "markedly", "marked": "markedly"}


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _lobe(f: Finding, rng: np.random.Generator) -> str:
    full, abbr = _LOBES[(f.side or "right", f.location or "lower")]
    return abbr if rng.random() < 0.3 else full


def _ord(n: int, rng: np.random.Generator) -> str:
    if rng.random() < 0.5:
        return _ORDINAL[n]
    return f"{n}{'rd' if n == 3 else 'th'}"


def _finding_candidates(f: Finding, rng: np.random.Generator, ctx: dict[str, Any]) -> list[_Candidate]:
    """Sentences that state finding ``f`` (with its reported value) - the FINDINGS phrasings."""
    o, v = f.observation, f.value
    m: tuple[_Mention, ...] = ((o, v),)
    side = f.side or "right"
    sev = _pick(rng, _SEV_ADJ.get(f.severity or "", ("",)))
    if o == EFF:
        return _effusion_candidates(f, v, m, side, sev, ctx)
    if o == PTX:
        return _pneumothorax_candidates(f, v, m, side, sev, ctx)
    if o == CARD:
        return _cardiomegaly_candidates(f, v, m, sev)
    if o == ECM:
        return _mediastinum_candidates(f, v, m, sev)
    if o == LES:
        return _lesion_candidates(f, v, m, side, rng)
    if o in (OPA, CON, PNA):
        pna = f.params.get("pneumonia")
        if side == "bilateral":
            lobe_txt, base_txt = "both lower lobes", "both lung bases"
        else:
            lobe_txt, base_txt = _lobe(f, rng), f"{side} lung base"
        lower = f.location == "lower"
        return _airspace_candidates(o, v, pna, lobe_txt, base_txt if lower else None, side, rng)
    if o == EDE:
        return _edema_candidates(f, v, m, sev)
    if o == ATE:
        return _atelectasis_candidates(v, m, side)
    if o == PLO:
        return _pleural_other_candidates(f, v, m, side)
    if o == FRA:
        return _fracture_candidates(f, v, m, side, rng)
    if o == SD:
        return [_device_sentence(d, rng) for d in f.params.get("devices", [])]
    return []


def _effusion_candidates(f: Finding, v: int, m: tuple[_Mention, ...], side: str, sev: str,
                         ctx: dict[str, Any]) -> list[_Candidate]:
    """Pleural effusion, on one side or bilateral."""
    c: list[_Candidate] = []
    if side == "bilateral":
        if v == 1:
            c += [(f"{sev} bilateral pleural effusions.", m), (f"There are {sev} bilateral pleural effusions.", m),
                  (f"{sev} bilateral effusions.", m)]
            if f.severity == "small":
                c += [("Blunting of both costophrenic angles consistent with small bilateral effusions.", m)]
            if ctx["neg_ok"](PTX):
                c += [(f"{sev} bilateral pleural effusions without evidence of pneumothorax.", m + ((PTX, 0),))]
        else:
            c += [("Possible small bilateral pleural effusions.", m),
                  ("Questionable trace bilateral effusions.", m),
                  ("Small bilateral pleural effusions cannot be excluded.", m)]
    else:
        if v == 1:
            c += [(f"{sev} {side} pleural effusion.", m), (f"There is a {sev} {side} pleural effusion.", m),
                  (f"{sev} {side}-sided effusion.", m), (f"{sev} amount of {side} pleural fluid.", m),
                  (f"{sev} {'R' if side == 'right' else 'L'} pleural effusion.", m)]
            if f.severity == "small":
                c += [(f"Blunting of the {side} costophrenic angle consistent with a small effusion.", m)]
            if ctx["neg_ok"](PTX):
                c += [(f"{sev} {side} pleural effusion without evidence of pneumothorax.", m + ((PTX, 0),)),
                      (f"{sev} {side} pleural effusion, no pneumothorax.", m + ((PTX, 0),))]
        else:
            c += [(f"Possible small {side} pleural effusion.", m), (f"Questionable trace {side} effusion.", m),
                  (f"A small {side} pleural effusion cannot be excluded.", m),
                  (f"Minimal blunting of the {side} costophrenic angle may represent a small effusion.", m)]
    return c


def _pneumothorax_candidates(f: Finding, v: int, m: tuple[_Mention, ...], side: str, sev: str,
                             ctx: dict[str, Any]) -> list[_Candidate]:
    """Pneumothorax."""
    c: list[_Candidate] = []
    if v == 1:
        where = "apical " if f.location == "apical" else ""
        c += [(f"{sev} {side} {where}pneumothorax.", m), (f"There is a {sev} {side}-sided pneumothorax.", m),
              (f"{sev} {side} PTX.", m),
              (f"{sev} {side} {where}pneumothorax with a visible visceral pleural edge.", m)]
        if ctx["neg_ok"](EFF):
            c += [(f"{sev} {side} pneumothorax without pleural effusion.", m + ((EFF, 0),))]
    else:
        c += [(f"Possible tiny {side} apical pneumothorax.", m),
              (f"Questionable small {side} apical pneumothorax.", m),
              (f"A tiny {side} apical pneumothorax cannot be excluded.", m)]
    return c


def _cardiomegaly_candidates(f: Finding, v: int, m: tuple[_Mention, ...], sev: str) -> list[_Candidate]:
    """Cardiomegaly."""
    c: list[_Candidate] = []
    if v == 1:
        adv = _SEV_ADV[f.severity or "mild"]
        c += [(f"{sev} cardiomegaly.", m), (f"The heart is {adv} enlarged.", m),
              (f"{sev} enlargement of the cardiac silhouette.", m), (f"Heart size is {adv} enlarged.", m),
              (f"The cardiac silhouette is {adv} enlarged.", m), (f"Stable {sev} cardiomegaly.", m)]
    else:
        c += [("Possible mild cardiomegaly.", m), ("Questionable mild enlargement of the cardiac silhouette.", m),
              ("Mild cardiomegaly cannot be excluded.", m)]
    return c


def _mediastinum_candidates(f: Finding, v: int, m: tuple[_Mention, ...], sev: str) -> list[_Candidate]:
    """Enlarged Cardiomediastinum (a widened upper mediastinum)."""
    c: list[_Candidate] = []
    if v == 1:
        adv = _SEV_ADV[f.severity or "mild"]
        c += [(f"The mediastinum is {adv} widened.", m), (f"{sev} widening of the superior mediastinum.", m),
              ("Widened upper mediastinal silhouette.", m),
              (f"The superior mediastinal contour is {adv} widened.", m)]
    else:
        c += [("Possible widening of the superior mediastinum.", m), ("Questionable mediastinal widening.", m)]
    return c


def _lesion_candidates(f: Finding, v: int, m: tuple[_Mention, ...], side: str,
                       rng: np.random.Generator) -> list[_Candidate]:
    """Lung Lesion: a nodule (size in mm) or a mass (in cm)."""
    c: list[_Candidate] = []
    lobe = _lobe(f, rng)
    zone = f"{side} {_ZONE_WORD[f.location or 'middle']} lung"
    size = 2 * float(f.params.get("radius", 0.02)) * 370
    if v == 1 and f.severity == "small":
        mm = int(round(size))
        c += [(f"{mm} mm nodule in the {lobe}.", m), (f"A small nodule projects over the {zone}.", m),
              (f"{_cap(lobe) if len(lobe) > 3 else lobe} pulmonary nodule measuring {mm} mm.", m),
              (f"There is a {mm} mm {zone} nodule.", m)]
    elif v == 1:
        cm = round(size / 10, 1)
        c += [(f"{cm} cm mass in the {lobe}.", m), (f"Large {zone} mass.", m),
              (f"There is a {cm} cm mass in the {lobe}.", m), (f"Lobulated mass in the {lobe}.", m)]
    else:
        c += [(f"Questionable nodule in the {zone}.", m), (f"Possible small nodule in the {lobe}.", m),
              (f"A small nodule in the {lobe} cannot be excluded.", m)]
    return c


def _edema_candidates(f: Finding, v: int, m: tuple[_Mention, ...], sev: str) -> list[_Candidate]:
    """Edema (one phrasing also states Lung Opacity)."""
    c: list[_Candidate] = []
    if v == 1:
        c += [(f"{sev} pulmonary edema.", m), (f"{sev} interstitial edema.", m),
              ("Diffuse bilateral perihilar edema.", m), (f"Findings of {sev} pulmonary edema.", m),
              (f"Bilateral perihilar hazy opacities consistent with {sev} pulmonary edema.", m + ((OPA, 1),))]
        if f.severity == "mild":
            c += [("Mild pulmonary vascular congestion.", m)]
    else:
        c += [("Possible mild pulmonary edema.", m), ("Questionable mild interstitial edema.", m),
              ("Mild pulmonary vascular congestion cannot be excluded.", m)]
    return c


def _atelectasis_candidates(v: int, m: tuple[_Mention, ...], side: str) -> list[_Candidate]:
    """Atelectasis at one base or bibasilar."""
    c: list[_Candidate] = []
    if side == "bilateral":
        if v == 1:
            c += [("Bibasilar atelectasis.", m), ("Mild bibasilar atelectasis.", m),
                  ("Linear atelectasis at both lung bases.", m), ("Bibasilar plate-like atelectasis.", m)]
        else:
            c += [("Bibasilar linear markings, possibly atelectasis.", m),
                  ("Possible mild bibasilar atelectasis.", m)]
    else:
        if v == 1:
            c += [(f"{side} basilar atelectasis.", m), (f"Linear atelectasis at the {side} base.", m),
                  (f"Plate-like atelectasis in the {side} lower lobe.", m),
                  (f"Subsegmental atelectasis at the {side} lung base.", m),
                  (f"{'RLL' if side == 'right' else 'LLL'} subsegmental atelectasis.", m)]
        else:
            c += [(f"Streaky {side} basilar changes may represent atelectasis.", m),
                  (f"Possible {side} basilar atelectasis.", m)]
    return c


def _pleural_other_candidates(f: Finding, v: int, m: tuple[_Mention, ...], side: str) -> list[_Candidate]:
    """Pleural Other: apical or lateral pleural thickening."""
    c: list[_Candidate] = []
    where = "apical" if f.location == "apical" else "lateral"
    if v == 1:
        if where == "apical":
            c += [(f"{side} apical pleural thickening.", m), (f"Pleural thickening at the {side} apex.", m),
                  (f"Mild {side} apical pleural scarring.", m)]
        else:
            c += [(f"Pleural thickening along the {side} lateral chest wall.", m),
                  (f"{side} lateral pleural thickening.", m), (f"Mild {side} lateral pleural scarring.", m)]
    else:
        c += [(f"Possible {side} {where} pleural thickening.", m),
              (f"Questionable {side} {where} pleural thickening.", m)]
    return c


def _fracture_candidates(f: Finding, v: int, m: tuple[_Mention, ...], side: str,
                         rng: np.random.Generator) -> list[_Candidate]:
    """Rib or clavicle fracture."""
    c: list[_Candidate] = []
    if f.location == "clavicle":
        c += [(f"Fracture of the {side} clavicle.", m), (f"{side} clavicle fracture.", m),
              (f"There is a displaced fracture of the {side} clavicle.", m)]
    else:
        n = int(f.params.get("rib", 5))
        rib = _ord(n, rng)
        if v == 1:
            c += [(f"Acute fracture of the {side} {rib} rib.", m), (f"Displaced {side} {rib} rib fracture.", m),
                  (f"{side} {rib} posterior rib fracture.", m),
                  (f"There is a fracture of the {side} {rib} posterior rib with mild displacement.", m)]
        else:
            c += [(f"Possible nondisplaced fracture of the {side} {rib} rib.", m),
                  (f"Questionable {side} {rib} rib fracture.", m),
                  (f"A {side} rib fracture cannot be excluded.", m)]
    return c


def _airspace_candidates(o: str, v: int, pna: int | None, lobe: str, base: str | None, side: str,
                         rng: np.random.Generator) -> list[_Candidate]:
    """Opacity / consolidation / pneumonia phrasings, with the pneumonia co-mention if any."""
    c: list[_Candidate] = []
    if o == OPA:
        m = ((OPA, v),)
        if v == 1:
            plain = [f"Patchy opacity in the {lobe}.", f"Ill-defined opacity in the {lobe}.",
                     f"{_cap(lobe) if side != 'bilateral' else 'Bilateral lower lobe'} airspace opacity.",
                     f"Hazy opacification of the {lobe}.", f"Patchy airspace disease in the {lobe}."]
            if base:
                plain += [f"Hazy opacity at the {base}."] if side != "bilateral" else ["Bibasilar opacities."]
            if pna is None:
                c += [(t, m) for t in plain]
            elif pna == -1:
                c += [(f"Patchy opacity in the {lobe}, concerning for pneumonia.", m + ((PNA, -1),)),
                      (f"Ill-defined opacity in the {lobe} which may represent pneumonia.", m + ((PNA, -1),)),
                      (f"Patchy airspace opacity in the {lobe}; infection cannot be excluded.", m + ((PNA, -1),))]
            else:
                c += [(f"Patchy airspace opacity in the {lobe} due to pneumonia.", m + ((PNA, 1),)),
                      (f"Opacity in the {lobe} representing pneumonia.", m + ((PNA, 1),))]
        else:
            c += [(f"Possible subtle opacity in the {lobe}.", m), (f"Questionable faint opacity in the {lobe}.", m),
                  (f"A subtle {lobe} opacity cannot be excluded.", m)]
    elif o == CON:
        m = ((CON, v),)
        if v == 1:
            plain = [f"{_cap(lobe)} consolidation.", f"Dense consolidation in the {lobe}.",
                     f"There is airspace consolidation in the {lobe}.", f"Consolidation of the {lobe}."]
            if base:
                plain += [f"Focal consolidation at the {base}."]
            if pna is None:
                c += [(t, m) for t in plain]
            elif pna == -1:
                c += [(f"{_cap(lobe)} consolidation, concerning for pneumonia.", m + ((PNA, -1),)),
                      (f"Dense consolidation in the {lobe} which may represent pneumonia.", m + ((PNA, -1),)),
                      (f"Consolidation in the {lobe}; pneumonia cannot be excluded.", m + ((PNA, -1),)),
                      (f"{_cap(lobe)} consolidation, suspicious for infection.", m + ((PNA, -1),))]
            else:
                c += [(f"{_cap(lobe)} pneumonia with dense consolidation.", ((PNA, 1), (CON, 1))),
                      (f"Consolidation in the {lobe} due to pneumonia.", m + ((PNA, 1),))]
        else:
            c += [(f"Possible early consolidation in the {lobe}.", m), (f"Questionable {lobe} consolidation.", m)]
    else:  # Pneumonia drawn as a patchy airspace process
        m = ((PNA, v),)
        if v == 1:
            c += [(f"{_cap(lobe)} pneumonia.", m), (f"Findings of pneumonia in the {lobe}.", m),
                  (f"Patchy airspace disease in the {lobe} due to pneumonia.", ((OPA, 1), (PNA, 1)))]
        else:
            c += [(f"Patchy {lobe} opacity, concerning for pneumonia.", ((OPA, 1), (PNA, -1))),
                  (f"Patchy opacity in the {lobe} which may represent pneumonia.", ((OPA, 1), (PNA, -1))),
                  (f"Ill-defined {lobe} airspace abnormality, possibly early pneumonia.", m),
                  (f"Patchy opacity in the {lobe}; pneumonia cannot be excluded.", ((OPA, 1), (PNA, -1)))]
    return c


def _device_sentence(dev: str, rng: np.random.Generator) -> _Candidate:
    m = ((SD, 1),)
    if dev == "ett":
        opts = [f"Endotracheal tube terminates {int(rng.integers(3, 6))} cm above the carina.",
                "ETT in standard position.",
                "The endotracheal tube is in appropriate position."]
    elif dev == "ng":
        opts = ["Nasogastric tube courses below the diaphragm.", "NG tube tip in the stomach.",
                "An enteric tube extends into the stomach."]
    elif dev == "cvc":
        opts = ["Right internal jugular central venous catheter terminates in the SVC.",
                "R IJ central line with tip in the mid SVC.", "Right IJ catheter tip projects over the SVC."]
    elif dev == "picc":
        opts = ["Left PICC terminates in the SVC.", "Left upper extremity PICC line with tip in the lower SVC.",
                "L PICC tip in the distal SVC."]
    elif dev == "pacemaker":
        opts = ["Left chest wall pacemaker with leads in the right atrium and right ventricle.",
                "Dual-chamber pacemaker in place.", "Left-sided pacemaker device with intact leads."]
    elif dev == "ecg":
        opts = ["ECG leads overlie the chest.", "External monitoring leads are noted.",
                "EKG leads project over the chest."]
    elif dev.startswith("chest_tube"):
        side = dev.rsplit("_", 1)[-1]
        opts = [f"{_cap(side)} chest tube in place.", f"{_cap(side)}-sided chest tube with tip at the apex.",
                f"{'R' if side == 'right' else 'L'} pigtail catheter in the pleural space."]
    else:
        raise ValueError(f"unknown device {dev!r}")
    return _pick(rng, opts), m
