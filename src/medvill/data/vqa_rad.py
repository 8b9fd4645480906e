"""VQA-RAD: radiology visual question answering (Lau et al., Sci Data 2018).

Getting the data
----------------
* Official release (CC0): https://osf.io/89kps/ - ``VQA_RAD Dataset Public.json`` and the
  315 images in ``VQA_RAD Image Folder/``.
* MEVF layout (github.com/aioz-ai/MICCAI19-MedVQA, ``data_RAD``): ``trainset.json``,
  ``testset.json`` and ``images/``.  The built-in synthetic data set
  (:func:`medvill.data.synthetic.generate_synthetic`) writes this layout too.

Layouts (``layout="auto"`` picks ``mevf`` when ``trainset.json`` or ``testset.json`` is in
``root``, else ``official`` when the public JSON is)::

    root/trainset.json  root/testset.json  root/images/<image_name>              (mevf)
    root/VQA_RAD Dataset Public.json  root/VQA_RAD Image Folder/<image_name>     (official)

Each question has ``qid, image_name, question, answer, answer_type, question_type,
image_organ, phrase_type``.  In the official file the test questions are those whose
``phrase_type`` starts with ``test`` (``test_freeform``, ``test_para``); MEVF keeps them in
``testset.json``.  The official file keeps a question's "framed" rewording in its
``question_frame`` field instead of a row of its own; with ``expand_frames=True`` (default)
each such rewording (not blank / ``NULL``) becomes one more question (``phrase_type="frame"``,
``qid`` = ``"<qid>-frame"``, same image and answer), as in the MEVF files, whose 3,064
training questions are 1,206 freeform + 591 paraphrased + 1,267 framed ones.

Normalisation: answers are converted to text, lower-cased, stripped and their inner
whitespace collapsed (``"Yes"`` / ``" yes"`` -> ``"yes"``; numbers such as ``4`` -> ``"4"``);
``answer_type`` is stripped and upper-cased (``"CLOSED "`` -> ``"CLOSED"``; anything other
than CLOSED / OPEN is a bad row); ``image_organ`` is stripped and upper-cased (``"chest "``
-> ``"CHEST"``); ``question_type`` and ``phrase_type`` are stripped (question types
upper-cased, their typos kept); ``qid`` is kept as text.

Splits: ``test`` is the official test set.  There is no validation split: ``validate`` is a
deterministic ~10 % of the training questions **grouped by image** (no image is in both
``train`` and ``validate``), and ``train`` is the rest.  The carve is made per organ over all
training questions (so ``organ="CHEST"`` and ``organ="ALL"`` agree on every chest question):
for each organ the training images are ordered by SHA-256 of their file name and taken in
that order until they hold at least ``validate_fraction`` of that organ's training questions.
``validate_by="question"`` carves single questions instead (a hash of the qid below
``validate_fraction``): validation then asks about images seen in training, as the official
test split does (its 451 questions are about the training images), so model selection
matches what the test split measures.
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..fileio import bad_byte
from .common import DataError, RowPolicy, check_choice, check_split, clean_text, hash_unit, natural_key
from .records import SkipReport

log = logging.getLogger(__name__)

OFFICIAL_JSON = "VQA_RAD Dataset Public.json"
OFFICIAL_IMAGES = "VQA_RAD Image Folder"
LAYOUTS = ("auto", "mevf", "official")
ANSWER_TYPES = ("CLOSED", "OPEN")


@dataclass
class VQAItem:
    """One VQA-RAD question (normalised as described in the module docstring)."""

    qid: str
    image: Path
    question: str
    answer: str
    answer_type: str      # "CLOSED" or "OPEN"
    question_type: str
    organ: str            # "CHEST", "HEAD", "ABD", ...
    phrase_type: str
    split: str

    @property
    def cross_sectional(self) -> bool:
        """VQA-RAD's head and abdominal images are CT or MR slices (its chest images are
        radiographs): the image checks read them as such."""
        return self.organ.upper() != "CHEST"


def normalize_answer(answer: Any) -> str:
    """Answer text as used for the answer vocabulary: text, lower case, single spaces."""
    return clean_text(str(answer)).lower()


def detect_layout(root: str | Path) -> str:
    root = Path(root)
    if (root / "trainset.json").is_file() or (root / "testset.json").is_file():
        return "mevf"
    if (root / OFFICIAL_JSON).is_file():
        return "official"
    raise FileNotFoundError(f"no VQA-RAD data in {root}: expected trainset.json / testset.json (MEVF layout) "
                            f"or {OFFICIAL_JSON!r} (official release)")


def _read_json_list(path: Path) -> list[Any]:
    if not path.is_file():
        raise FileNotFoundError(f"VQA-RAD file not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: {bad_byte(exc)} is not UTF-8 text") from None
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of questions, got {type(data).__name__}")
    return data


_REQUIRED = ("qid", "image_name", "question", "answer", "answer_type", "image_organ")


def _parse_items(entries: Iterable[tuple[Any, Any]], path: Path, image_dir: Path, split_of: Callable[[str], str],
                 rows: RowPolicy, check_images: bool) -> list[VQAItem]:
    items: list[VQAItem] = []
    seen: set[str] = set()
    exists: dict[str, bool] = {}
    for j, q in entries:
        where = f"{path}:[{j}]"
        if not isinstance(q, dict):
            rows.bad("not a JSON object", where)
            continue
        missing = [k for k in _REQUIRED if k not in q]
        if missing:
            rows.bad(f"missing key{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))}", where)
            continue
        qid = str(q["qid"]).strip()
        where = f"{path}:[{j}] (qid {qid})"
        answer_type = str(q["answer_type"]).strip().upper()
        if answer_type not in ANSWER_TYPES:
            rows.bad(f"answer_type {q['answer_type']!r} is not CLOSED or OPEN", where)
            continue
        answer = normalize_answer(q["answer"]) if q["answer"] is not None else ""
        question = clean_text(q["question"])
        name = str(q["image_name"]).strip()
        organ = " ".join(str(q["image_organ"]).upper().split())
        if not answer or not question or not name or not organ:
            rows.bad("blank answer, question, image_name or image_organ", where)
            continue
        if qid in seen:
            rows.bad(f"duplicate qid {qid}", where)
            continue
        image = image_dir / name
        if check_images:
            if name not in exists:
                exists[name] = image.is_file()
            if not exists[name]:
                rows.bad(f"missing image {image}", where)
                continue
        seen.add(qid)
        phrase = clean_text(q.get("phrase_type", ""))
        items.append(VQAItem(qid=qid, image=image, question=question, answer=answer, answer_type=answer_type,
                             question_type=clean_text(q.get("question_type", "")).upper(), organ=organ,
                             phrase_type=phrase, split=split_of(phrase)))
    return items


def carve_validation(items: Sequence[VQAItem], fraction: float = 0.1) -> set[str]:
    """Image file names of the validation carve of training ``items`` (module docstring)."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"validate_fraction must be in [0, 1), got {fraction}")
    by_organ: dict[str, Counter] = {}
    for it in items:
        by_organ.setdefault(it.organ, Counter())[it.image.name] += 1
    chosen: set[str] = set()
    for organ in sorted(by_organ):
        counts = by_organ[organ]
        target = fraction * sum(counts.values())
        taken = 0
        for name in sorted(counts, key=lambda n: (hash_unit(n, "vqa-rad/"), n)):
            if taken >= target or math.isclose(taken, target):
                break
            chosen.add(name)
            taken += counts[name]
    return chosen


def _expand_frames(entries: list[Any]) -> Iterable[tuple[Any, Any]]:
    for j, q in enumerate(entries):
        yield j, q
        frame = q.get("question_frame") if isinstance(q, dict) else None
        if frame is not None and clean_text(frame) and clean_text(frame).upper() != "NULL":
            yield f"{j} question_frame", dict(q, question=frame, phrase_type="frame", qid=f"{q.get('qid')}-frame")


def _read_layout(root: Path, layout: str, split: str, expand_frames: bool, check_images: bool, policy: str,
                 skips: SkipReport | None) -> tuple[list[VQAItem], RowPolicy]:
    """The questions of the file that holds ``split`` (``split`` of each: ``train`` or ``test``),
    and the bad-row policy made for that file."""
    if layout == "mevf":
        image_dir = root / "images"
        path = root / ("testset.json" if split == "test" else "trainset.json")
        rows = RowPolicy(policy, skips, path)
        fixed = "test" if split == "test" else "train"
        items = _parse_items(enumerate(_read_json_list(path)), path, image_dir, lambda _: fixed, rows, check_images)
        return items, rows
    image_dir = root / OFFICIAL_IMAGES
    path = root / OFFICIAL_JSON
    rows = RowPolicy(policy, skips, path)
    entries = _read_json_list(path)
    items = _parse_items(_expand_frames(entries) if expand_frames else enumerate(entries), path, image_dir,
                         lambda phrase: "test" if phrase.lower().startswith("test") else "train", rows,
                         check_images)
    return items, rows


def _mark_validation(items: list[VQAItem], validate_by: str, fraction: float) -> None:
    """Move the validation carve of the training ``items`` to ``split="validate"``."""
    train = [it for it in items if it.split == "train"]
    if validate_by == "image":
        val_images = carve_validation(train, fraction)
        for it in train:
            if it.image.name in val_images:
                it.split = "validate"
    else:
        for it in train:
            if hash_unit(f"{it.qid}:{it.question}", "vqa-rad-question/") < fraction:
                it.split = "validate"


def load_vqa_rad(
    root: str | Path,
    split: str,
    *,
    organ: str = "ALL",
    layout: str = "auto",
    expand_frames: bool = True,
    validate_fraction: float = 0.1,
    validate_by: str = "image",
    check_images: bool = True,
    policy: str = "skip",
    skips: SkipReport | None = None,
) -> list[VQAItem]:
    """VQA-RAD questions of one split (``train`` / ``validate`` / ``test``), all organs
    (``organ="ALL"``) or one (``"CHEST"``, ``"HEAD"``, ``"ABD"``); see the module docstring for
    where to get the data, the layouts, normalisation and the validation carve.  A question
    with a missing key, an unknown answer type, a blank field, a duplicate qid or (with
    ``check_images``) a missing image file is a bad row (``policy``).  Sorted by qid.
    """
    check_split(split)
    check_choice("layout", layout, LAYOUTS)
    check_choice("validate_by", validate_by, ("image", "question"))
    organ = " ".join(str(organ).upper().split())
    root = Path(root)
    if layout == "auto":
        layout = detect_layout(root)
    items, rows = _read_layout(root, layout, split, expand_frames, check_images, policy, skips)
    if split != "test":
        _mark_validation(items, validate_by, validate_fraction)
    items = [it for it in items if it.split == split and (organ == "ALL" or it.organ == organ)]
    items.sort(key=lambda it: natural_key(it.qid))
    rows.finish(log)
    log.info("VQA-RAD %s (%s): %d questions on %d images", split, organ, len(items),
             len({it.image.name for it in items}))
    return items


def build_answer_vocab(items: Iterable[VQAItem], min_count: int = 1) -> list[str]:
    """Answer classes from the **training** questions among ``items`` (items of other splits
    are ignored, so validation / test answers never leak in): answers seen at least
    ``min_count`` times, most frequent first, ties in alphabetical order."""
    counts = Counter(it.answer for it in items if it.split == "train")
    if not counts:
        raise ValueError("build_answer_vocab needs training items (split == 'train')")
    return [a for a, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if n >= min_count]
