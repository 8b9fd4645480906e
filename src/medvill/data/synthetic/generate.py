"""Cases and files: one case from (seed, index), and a whole data set folder."""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ...fileio import umask_mode
from ...labels import CHEXPERT_OBSERVATIONS
from ..choices import SPLITS
from ..common import check_fractions
from .anatomy import sample_anatomy
from .cases import Anatomy, Finding, SyntheticCase, SyntheticSummary
from .findings import sample_findings
from .observations import CARD
from .questions import make_questions
from .render import render_image
from .reports import aggregate_labels, write_report

GENERATOR = "medvill-synthetic"
VERSION = 1


# Random streams: each part of a case has its own generator seeded by (seed, index, stream),
# so that e.g. removing a finding never changes the anatomy or the noise.  Image texture and
# noise come from ``Anatomy.texture_seed`` (drawn in the anatomy stream).
_ANATOMY, _FINDINGS, _TEXT, _QUESTIONS = 0, 1, 2, 4


def _rng(seed: int, index: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(index), stream])


def case_id(index: int) -> str:
    return f"synth-{index:06d}"


def case_split(index: int, seed: int, split_fractions: Sequence[float] = (0.8, 0.1, 0.1)) -> str:
    """Split of case ``index``: a golden-ratio (Weyl) sequence with a seed-dependent start.

    Depends only on (seed, index, split_fractions), so it never changes when ``n`` grows, and
    any run of consecutive indices is spread over the splits very evenly (e.g. 40 cases at
    0.8/0.1/0.1 give 4 +- 1 validation and test cases).
    """
    fr = check_fractions(split_fractions)
    start = float(np.random.default_rng([int(seed), 0x5B11]).random())
    u = (start + index * 0.6180339887498949) % 1.0
    if u < fr[0]:
        return "train"
    return "validate" if u < fr[0] + fr[1] else "test"


def cardiothoracic_ratio(anatomy: Anatomy, drawn: Sequence[Finding] = ()) -> float:
    """Heart width / internal thoracic width at the heart's widest level."""
    hs = max([float(f.params.get("heart_scale", 1.45)) for f in drawn if f.observation == CARD] or [1.0])
    A = anatomy
    hcy = A.lung_cy + 0.55 * A.lung_b
    t = (hcy - (A.lung_cy - A.lung_b)) / (1.9 * A.lung_b)
    a_eff = A.lung_a * (0.6 + 0.45 * math.sqrt(min(max(t, 0.0), 1.0)))
    thorax = 2 * A.lung_dx + a_eff * (1.0 + 0.96)
    return 2 * A.heart_hw * hs / thorax


def synthesize_case(index: int, seed: int, image_size: int, *, split_fractions: Sequence[float] = (0.8, 0.1, 0.1),
                    questions_per_image: int = 4) -> SyntheticCase:
    """One synthetic case, derived only from ``(seed, index)`` (pure: no I/O, no global RNG).

    ``image_size`` changes only the pixel resolution: the findings, report, labels and
    questions of a case are the same at every size.
    """
    anatomy = sample_anatomy(_rng(seed, index, _ANATOMY))
    drawn = sample_findings(_rng(seed, index, _FINDINGS))
    for f in drawn:
        if f.observation == CARD:
            f.params["ctr"] = round(cardiothoracic_ratio(anatomy, [f]), 4)
    findings_s, impression_s = write_report(drawn, _rng(seed, index, _TEXT))
    sentences = findings_s + impression_s
    labels = aggregate_labels(sentences)
    findings_text = " ".join(s.text for s in findings_s)
    impression_text = " ".join(s.text for s in impression_s)
    cid = case_id(index)
    questions = make_questions(drawn, labels, questions_per_image, _rng(seed, index, _QUESTIONS))
    for j, q in enumerate(questions):
        q.update(qid=index * questions_per_image + j, image_name=f"{cid}.png")
    image = render_image(anatomy, drawn, image_size)
    return SyntheticCase(
        id=cid, index=index, seed=seed, image=image, findings=findings_text, impression=impression_text,
        report=f"FINDINGS: {findings_text}\nIMPRESSION: {impression_text}", labels=labels, sentences=sentences,
        drawn=drawn, anatomy=anatomy, questions=questions, split=case_split(index, seed, split_fractions),
    )


def _mevf(q: dict[str, Any]) -> dict[str, Any]:
    return {"qid": q["qid"], "image_name": q["image_name"], "image_organ": "CHEST", "answer": q["answer"],
            "answer_type": q["answer_type"], "question_type": q["question_type"], "question": q["question"],
            "phrase_type": "freeform"}


def generate_synthetic(output: str | Path, n: int = 1000, image_size: int = 128, seed: int = 0,
                       split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
                       questions_per_image: int = 4) -> SyntheticSummary:
    """Write ``n`` synthetic cases into the new folder ``output``::

        output/
          images/<id>.png          8-bit grayscale PNG, image_size x image_size (ids "synth-000042")
          train.jsonl validate.jsonl test.jsonl
                                   {"id", "image": "images/<id>.png", "findings", "impression",
                                    "report": "FINDINGS: ...\\nIMPRESSION: ...",
                                    "labels": {14 observations: 1|0|-1|null}, "split"}
          trainset.json testset.json
                                   VQA-RAD (MEVF) question lists: {"qid", "image_name": "<id>.png",
                                    "image_organ": "CHEST", "answer", "answer_type": CLOSED|OPEN,
                                    "question_type", "question", "phrase_type": "freeform"};
                                    trainset = train + validate images, testset = test images
          meta.json                {"generator", "version", "n", "image_size", "seed",
                                    "split_fractions", "counts", "label_counts"}

    The folder is written next to ``output`` under a temporary name and renamed into place,
    so it either appears complete or not at all.  An existing non-empty ``output`` raises
    :class:`FileExistsError`; bad arguments raise :class:`ValueError`.
    """
    output = Path(output)
    if int(n) != n or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if int(image_size) != image_size or image_size < 16:
        raise ValueError(f"image_size must be an integer >= 16, got {image_size!r}")
    if int(questions_per_image) != questions_per_image or questions_per_image < 0:
        raise ValueError(f"questions_per_image must be a non-negative integer, got {questions_per_image!r}")
    fractions = check_fractions(split_fractions)
    n, image_size, questions_per_image = int(n), int(image_size), int(questions_per_image)
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise FileExistsError(f"{output} already exists and is not an empty folder; choose a new output folder")
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.tmp-", dir=output.parent))
    try:
        counts, label_counts = _write_cases(tmp, n, image_size, seed, fractions, questions_per_image)
        meta = {"generator": GENERATOR, "version": VERSION, "n": n, "image_size": image_size, "seed": int(seed),
                "split_fractions": list(fractions), "counts": counts, "label_counts": label_counts}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        os.chmod(tmp, umask_mode(0o777))  # mkdtemp made it 0700
        _move_into_place(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return SyntheticSummary(root=output, n=n, image_size=image_size, seed=int(seed), counts=counts,
                            label_counts=label_counts)


def _write_cases(tmp: Path, n: int, image_size: int, seed: int, fractions: tuple[float, float, float],
                 questions_per_image: int) -> tuple[dict[str, int], dict[str, dict[str, int]]]:
    """Images, JSONL records and VQA question lists of cases ``0 .. n-1`` into the folder ``tmp``;
    returns the records per split and the label counts per observation."""
    (tmp / "images").mkdir()
    counts = {s: 0 for s in SPLITS}
    label_counts = {o: {"1": 0, "0": 0, "-1": 0, "blank": 0} for o in CHEXPERT_OBSERVATIONS}
    vqa: dict[str, list[dict[str, Any]]] = {"trainset": [], "testset": []}
    files = {s: (tmp / f"{s}.jsonl").open("w", encoding="utf-8", newline="\n") for s in SPLITS}
    try:
        for i in range(n):
            case = synthesize_case(i, seed, image_size, split_fractions=fractions,
                                   questions_per_image=questions_per_image)
            Image.fromarray(case.image, mode="L").save(tmp / "images" / case.image_name, format="PNG",
                                                       compress_level=1)
            files[case.split].write(json.dumps(case.to_record(), ensure_ascii=False) + "\n")
            counts[case.split] += 1
            for o in CHEXPERT_OBSERVATIONS:
                val = case.labels[o]
                label_counts[o]["blank" if val is None else str(val)] += 1
            vqa["testset" if case.split == "test" else "trainset"].extend(_mevf(q) for q in case.questions)
    finally:
        for fh in files.values():
            fh.close()
    for name, items in vqa.items():
        (tmp / f"{name}.json").write_text(json.dumps(items, indent=1) + "\n", encoding="utf-8")
    return counts, label_counts


def _move_into_place(tmp: Path, output: Path) -> None:
    """Rename the finished folder ``tmp`` to ``output`` (an empty ``output`` is replaced)."""
    try:
        os.rename(tmp, output)     # replaces an empty folder; fails on a non-empty one
    except OSError as exc:
        if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR):
            raise
        raise FileExistsError(f"{output} appeared while generating and is not empty ({exc.strerror})") from None
