"""Mention extraction (stage 3): phrase matches in a sentence, minus the unmentions."""

from __future__ import annotations

from dataclasses import dataclass


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


def find_mentions(
    sentence: str, phrases: list[tuple[str, str]], unmention_by_obs: dict[str, tuple[str, ...]]
) -> list[tuple[str, int, int]]:
    """Every match ``(observation, start, end)`` of every ``(phrase, observation)`` in the
    sentence, as a plain substring (overlapping matches included), except the matches that
    overlap an unmention phrase of the same observation."""
    found: list[tuple[str, int, int]] = []
    for phrase, obs in phrases:
        pos = sentence.find(phrase)
        if pos < 0:
            continue
        unm = unmention_by_obs.get(obs)
        plen = len(phrase)
        while pos >= 0:
            end = pos + plen
            if not (unm and _overlaps_any(sentence, unm, pos, end)):
                found.append((obs, pos, end))
            pos = sentence.find(phrase, end)
    return found


def _overlaps_any(sentence: str, phrases: tuple[str, ...], start: int, end: int) -> bool:
    for p in phrases:
        pos = sentence.find(p)
        while pos >= 0:
            if start < pos + len(p) and end > pos:
                return True
            pos = sentence.find(p, pos + 1)
    return False
