"""VQA accuracy, overall and split by answer type (CLOSED yes/no vs OPEN)."""

from __future__ import annotations

from collections.abc import Sequence


def vqa_accuracy(predictions: Sequence[str], answers: Sequence[str], answer_types: Sequence[str]) -> dict[str, float]:
    """Exact-match accuracy after lower-casing and stripping both sides.

    Returns ``accuracy``, ``closed_accuracy`` and ``open_accuracy`` (nan where a type is absent).
    """
    if not len(predictions) == len(answers) == len(answer_types):
        raise ValueError("predictions, answers and answer_types must have the same length")
    hits = {"ALL": [0, 0], "CLOSED": [0, 0], "OPEN": [0, 0]}
    for pred, ans, kind in zip(predictions, answers, answer_types, strict=True):
        kind = kind.strip().upper()
        if kind not in ("CLOSED", "OPEN"):
            raise ValueError(f"unknown answer type {kind!r}; expected CLOSED or OPEN")
        ok = int(pred.strip().lower() == ans.strip().lower())
        for key in ("ALL", kind):
            hits[key][0] += ok
            hits[key][1] += 1

    def rate(key: str) -> float:
        n_ok, n = hits[key]
        return n_ok / n if n else float("nan")

    return {"accuracy": rate("ALL"), "closed_accuracy": rate("CLOSED"), "open_accuracy": rate("OPEN")}
