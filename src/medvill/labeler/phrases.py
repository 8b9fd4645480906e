"""Label values, observation names and the rule files (mention / unmention phrase lists)."""

from __future__ import annotations

from importlib import resources

from ..labels import CHEXPERT_OBSERVATIONS

POSITIVE = 1.0
NEGATIVE = 0.0
UNCERTAIN = -1.0

NO_FINDING = "No Finding"
SUPPORT_DEVICES = "Support Devices"
CARDIOMEGALY = "Cardiomegaly"
ENLARGED_CARDIOMEDIASTINUM = "Enlarged Cardiomediastinum"

_OBS_INDEX = {name: i for i, name in enumerate(CHEXPERT_OBSERVATIONS)}


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
