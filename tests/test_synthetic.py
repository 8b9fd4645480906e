"""The built-in synthetic data set: files, determinism, report/label agreement, visibility."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medvill.data.synthetic import (
    Finding,
    SyntheticSummary,
    generate_synthetic,
    render_image,
    sample_anatomy,
    synthesize_case,
)
from medvill.labels import CHEXPERT_OBSERVATIONS

N_FILES = 40
PX = 64
SPLITS = ("train", "validate", "test")
RECORD_KEYS = {"id", "image", "findings", "impression", "report", "labels", "split"}
VQA_KEYS = {"qid", "image_name", "image_organ", "answer", "answer_type", "question_type", "question", "phrase_type"}
META_KEYS = {"generator", "version", "n", "image_size", "seed", "split_fractions", "counts", "label_counts"}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, SyntheticSummary]:
    root = tmp_path_factory.mktemp("synth") / "a"
    return root, generate_synthetic(root, n=N_FILES, image_size=PX, seed=0)


@pytest.fixture(scope="module")
def cases() -> list:
    """500 cases made directly (pure, no I/O) at a small image size."""
    return [synthesize_case(i, 0, 32) for i in range(500)]


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# ---------------------------------------------------------------------------------------
# layout and determinism
# ---------------------------------------------------------------------------------------


def test_layout_and_keys(dataset):
    root, summary = dataset
    assert sorted(p.name for p in root.iterdir()) == sorted(
        ["images", "train.jsonl", "validate.jsonl", "test.jsonl", "trainset.json", "testset.json", "meta.json"])
    meta = json.loads((root / "meta.json").read_text())
    assert set(meta) == META_KEYS
    assert meta["generator"] == "medvill-synthetic" and meta["version"] == 1
    assert (meta["n"], meta["image_size"], meta["seed"]) == (N_FILES, PX, 0)
    assert meta["counts"] == summary.counts and meta["label_counts"] == summary.label_counts
    assert summary.root == root and summary.n == N_FILES
    assert sum(summary.counts.values()) == N_FILES
    assert all(summary.counts[s] > 0 for s in SPLITS), summary.counts
    ids = set()
    for split in SPLITS:
        records = _read_jsonl(root / f"{split}.jsonl")
        assert len(records) == summary.counts[split]
        for rec in records:
            assert set(rec) == RECORD_KEYS
            assert rec["split"] == split
            assert re.fullmatch(r"synth-\d{6}", rec["id"]) and rec["id"] not in ids
            ids.add(rec["id"])
            assert rec["image"] == f"images/{rec['id']}.png"
            assert list(rec["labels"]) == list(CHEXPERT_OBSERVATIONS)
            assert all(v in (1, 0, -1, None) for v in rec["labels"].values())
            assert rec["report"] == f"FINDINGS: {rec['findings']}\nIMPRESSION: {rec['impression']}"
            with Image.open(root / rec["image"]) as im:
                assert im.mode == "L" and im.size == (PX, PX)
    assert len(ids) == N_FILES
    assert len(list((root / "images").iterdir())) == N_FILES
    for obs, counts in summary.label_counts.items():
        assert set(counts) == {"1", "0", "-1", "blank"} and sum(counts.values()) == N_FILES, obs


def test_same_seed_gives_identical_files(dataset, tmp_path):
    root, _ = dataset
    again = tmp_path / "again"
    generate_synthetic(again, n=N_FILES, image_size=PX, seed=0)
    for path in sorted(root.rglob("*")):
        if path.is_file():
            assert (again / path.relative_to(root)).read_bytes() == path.read_bytes(), path.name
    other = tmp_path / "other"
    generate_synthetic(other, n=N_FILES, image_size=PX, seed=1)
    assert (other / "train.jsonl").read_bytes() != (root / "train.jsonl").read_bytes()
    assert (other / "images" / "synth-000000.png").read_bytes() != (root / "images" / "synth-000000.png").read_bytes()


def test_synthesize_case_matches_written_record(dataset):
    root, _ = dataset
    for split in SPLITS:
        for rec in _read_jsonl(root / f"{split}.jsonl"):
            case = synthesize_case(int(rec["id"].split("-")[1]), 0, PX)
            assert case.to_record() == rec
            with Image.open(root / rec["image"]) as im:
                assert np.array_equal(np.asarray(im), case.image)
    # no dependence on n or on generation order
    a = synthesize_case(7, 0, PX)
    synthesize_case(3, 0, PX)
    b = synthesize_case(7, 0, PX)
    assert np.array_equal(a.image, b.image) and a.report == b.report


def test_existing_non_empty_output_is_refused(tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="taken"):
        generate_synthetic(out, n=3, image_size=32)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["taken"]      # no temporary folder left behind
    empty = tmp_path / "empty"
    empty.mkdir()
    assert generate_synthetic(empty, n=3, image_size=32).n == 3


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError):
        generate_synthetic(tmp_path / "x", n=0)
    with pytest.raises(ValueError):
        generate_synthetic(tmp_path / "y", n=3, split_fractions=(0.5, 0.5, 0.5))


# ---------------------------------------------------------------------------------------
# VQA
# ---------------------------------------------------------------------------------------


def test_vqa_files(dataset):
    root, _ = dataset
    split_of = {rec["id"]: split for split in SPLITS for rec in _read_jsonl(root / f"{split}.jsonl")}
    qids = set()
    for name, wanted in (("trainset", {"train", "validate"}), ("testset", {"test"})):
        items = json.loads((root / f"{name}.json").read_text())
        assert items, name
        for q in items:
            assert set(q) == VQA_KEYS
            assert (root / "images" / q["image_name"]).is_file()
            assert split_of[q["image_name"][:-4]] in wanted
            assert q["image_organ"] == "CHEST" and q["phrase_type"] == "freeform"
            assert q["answer_type"] in ("CLOSED", "OPEN")
            assert q["answer"] == q["answer"].lower() and q["answer"].strip()
            if q["answer_type"] == "CLOSED":
                assert q["answer"] in ("yes", "no")
            assert isinstance(q["qid"], int) and q["qid"] not in qids
            qids.add(q["qid"])
    assert len(qids) == 4 * N_FILES


def test_vqa_balance_and_ground_truth(cases):
    closed = [q for c in cases for q in c.questions if q["answer_type"] == "CLOSED"]
    total = sum(len(c.questions) for c in cases)
    assert 0.4 <= len(closed) / total <= 0.6
    yes = sum(q["answer"] == "yes" for q in closed) / len(closed)
    assert 0.35 <= yes <= 0.65, yes
    for c in cases:
        for q in c.questions:
            if q["question"] == "Is there a pleural effusion?":
                assert (q["answer"] == "yes") == (c.labels["Pleural Effusion"] == 1)
            if q["question"] == "Are there any support devices?":
                assert (q["answer"] == "yes") == (c.labels["Support Devices"] == 1)
            if q["question"] == "Which side is the effusion on?":
                assert q["answer"] == next(f.side for f in c.drawn if f.observation == "Pleural Effusion")


# ---------------------------------------------------------------------------------------
# reports agree with labels: an independent keyword / cue checker
# ---------------------------------------------------------------------------------------

KEYWORDS = {
    "Enlarged Cardiomediastinum": r"mediastin",
    "Cardiomegaly": r"cardiomegaly|\bheart\b|\bcardiac\b|cardiomediastinal",
    "Lung Lesion": r"\bnodules?\b|\bmass(es)?\b",
    "Lung Opacity": r"opaci|airspace disease|infiltrat",
    "Edema": r"\bedema\b|vascular congestion",
    "Consolidation": r"consolidat",
    "Pneumonia": r"pneumonia|\binfection\b|infectious",
    "Atelectasis": r"atelecta|\bcollapse",
    "Pneumothorax": r"pneumothora|\bptx\b",
    "Pleural Effusion": r"effusion|pleural fluid",
    "Pleural Other": r"pleural thickening|pleural scar",
    "Fracture": r"fracture",
    "Support Devices": r"\btubes?\b|\bett\b|\bpicc\b|catheter|pacemaker|\blines?\b|\bleads\b|devices?",
}
PRE_CUES = [(r"cannot exclude|may represent|\bpossibl[ey]\b|questionable|concerning for|suspicious for", -1),
            (r"\bno\b|\bwithout\b|negative for|\bnormal\b", 0)]
POST_CUES = [(r"cannot be excluded|is not excluded", -1),
             (r"not seen|\bnormal\b|within normal limits|unremarkable|not widened|not enlarged", 0)]


def check_sentence(text: str) -> set[tuple[str, int]]:
    """(observation, value) pairs a CheXpert-style reader finds in one sentence: a mention
    takes the polarity of the nearest cue before it in its clause, else of a cue after it,
    else it is positive.  Clauses are split at ';'."""
    found = set()
    for clause in text.lower().split(";"):
        pre = [(m.end(), v) for pat, v in PRE_CUES for m in re.finditer(pat, clause)]
        post = [(m.start(), v) for pat, v in POST_CUES for m in re.finditer(pat, clause)]
        for obs, pat in KEYWORDS.items():
            for m in re.finditer(pat, clause):
                before = [(end, v) for end, v in pre if end <= m.start()]
                after = [(start, v) for start, v in post if start >= m.end()]
                if before:
                    value = max(before)[1]
                elif after:
                    value = min(after)[1]
                else:
                    value = 1
                found.add((obs, value))
    return found


def chexpert_aggregate(pairs) -> dict:
    out = {}
    for obs in CHEXPERT_OBSERVATIONS:
        vals = {v for o, v in pairs if o == obs}
        out[obs] = 1 if 1 in vals else (-1 if -1 in vals else (0 if 0 in vals else None))
    any_finding = any(out[o] in (1, -1) for o in CHEXPERT_OBSERVATIONS if o not in ("No Finding", "Support Devices"))
    out["No Finding"] = None if any_finding else 1
    return out


def test_checker_reads_the_conventions():
    assert check_sentence("No pleural effusion or pneumothorax.") == {("Pleural Effusion", 0), ("Pneumothorax", 0)}
    assert check_sentence("Small left pleural effusion without evidence of pneumothorax.") == {
        ("Pleural Effusion", 1), ("Pneumothorax", 0)}
    assert check_sentence("RLL consolidation, concerning for pneumonia.") == {("Consolidation", 1), ("Pneumonia", -1)}
    assert check_sentence("The cardiomediastinal silhouette is within normal limits.") == {
        ("Cardiomegaly", 0), ("Enlarged Cardiomediastinum", 0)}
    assert check_sentence("A small right pleural effusion cannot be excluded.") == {("Pleural Effusion", -1)}
    assert check_sentence("The lungs are clear.") == set()


def test_reports_agree_with_labels(cases):
    for case in cases[:300]:
        for sent in case.sentences:
            assert check_sentence(sent.text) == set(sent.mentions), (case.id, sent.text, sent.mentions)
        pairs = {mv for s in case.sentences for mv in s.mentions}
        assert chexpert_aggregate(pairs) == case.labels, case.report
        # the text itself, read independently, gives the same labels
        read = set().union(*(check_sentence(t) for t in re.split(r"(?<=\.) ", case.findings + " " + case.impression)))
        assert chexpert_aggregate(read) == case.labels, case.report
        # FINDINGS alone already carries every label (the impression only repeats)
        findings_only = {mv for s in case.sentences if s.section == "findings" for mv in s.mentions}
        assert chexpert_aggregate(findings_only) == case.labels, case.report
        assert case.labels["No Finding"] in (1, None)
        # and FINDINGS is the longer section, so "the longer of Findings and Impression" sees it
        assert len(case.findings) > len(case.impression), case.report


def test_drawn_findings_match_labels(cases):
    for case in cases:
        for f in case.drawn:
            label = case.labels[f.observation]
            if f.value == 1:
                assert label == 1, (case.id, f)
            else:
                assert label in (-1, 1), (case.id, f)
            if f.observation != "Pneumonia":
                assert f.faint == (f.value == -1), (case.id, f)
        drawn = {f.observation for f in case.drawn}
        for obs, value in case.labels.items():
            if value in (1, -1) and obs not in ("No Finding", "Pneumonia", "Lung Opacity", "Consolidation"):
                assert obs in drawn, (case.id, obs, case.report)


def test_label_diversity(cases):
    n = len(cases)
    sets = Counter(frozenset(o for o, v in c.labels.items() if v == 1 and o != "No Finding") for c in cases)
    assert len(sets) >= 30
    for obs in CHEXPERT_OBSERVATIONS:
        if obs == "No Finding":
            frac = sum(c.labels[obs] == 1 for c in cases) / n
            assert 0.2 <= frac <= 0.4, frac
        elif obs == "Pneumonia":
            assert sum(c.labels[obs] in (1, -1) for c in cases) / n >= 0.05
        else:
            assert sum(c.labels[obs] == 1 for c in cases) / n >= 0.05, obs
    assert sum(c.labels[o] == -1 for c in cases for o in CHEXPERT_OBSERVATIONS) > 0.05 * n
    assert sum(c.labels[o] == 0 for c in cases for o in CHEXPERT_OBSERVATIONS) > n


# ---------------------------------------------------------------------------------------
# findings are visible where they should be
# ---------------------------------------------------------------------------------------


def _patient(i: int = 5):
    return sample_anatomy(np.random.default_rng([123, i]))


def _diff(findings, px: int = 64, i: int = 5) -> np.ndarray:
    A = _patient(i)
    return render_image(A, findings, px).astype(int) - render_image(A, [], px).astype(int)


def test_effusion_brightens_the_right_base():
    for side in ("left", "right"):
        d = _diff([Finding("Pleural Effusion", 1, side=side, severity="moderate", params={"height": 0.3})])
        lower = d[40:60]
        image_right, image_left = lower[:, 32:].sum(), lower[:, :32].sum()
        assert d.min() >= -2                     # fluid only adds density
        if side == "left":                       # the patient's left is the image's right
            assert image_right > 5 * max(image_left, 1) and image_right > 2000
        else:
            assert image_left > 5 * max(image_right, 1) and image_left > 2000


def test_cardiomegaly_widens_the_heart():
    A = _patient()
    normal = render_image(A, [], 64).astype(int)
    cardiomegaly = Finding("Cardiomegaly", 1, severity="moderate", params={"heart_scale": 1.45})
    big = render_image(A, [cardiomegaly], 64).astype(int)
    rows = slice(int(64 * (A.lung_cy + 0.4 * A.lung_b)) - 2, int(64 * (A.lung_cy + 0.4 * A.lung_b)) + 2)
    d = big[rows] - normal[rows]
    mid = int(64 * A.cx)
    assert d[:, mid:].max() > 40 and d[:, :mid].max() > 20      # grows to both sides, more to the image right
    assert d[:, mid:].sum() > d[:, :mid].sum() > 0
    from medvill.data.synthetic import cardiothoracic_ratio
    f = Finding("Cardiomegaly", 1, params={"heart_scale": 1.45})
    assert cardiothoracic_ratio(A) < 0.45 < 0.5 < cardiothoracic_ratio(A, [f])


def test_pneumothorax_darkens_one_upper_lateral_lung():
    d = _diff([Finding("Pneumothorax", 1, side="right", severity="moderate", params={"r0": 0.62})])
    assert np.abs(d[:, 36:]).max() <= 3          # the patient's left (image right) is untouched
    assert d[:40, :32].min() < -25               # darker rim without markings
    assert d[:40, :32].max() > 10                # bright visceral pleural edge


@pytest.mark.parametrize("obs,kw,region", [
    ("Consolidation", {"side": "right", "location": "lower", "params": {"amp": 0.9, "tex": 1}}, "left-low"),
    ("Lung Opacity", {"side": "left", "location": "upper", "params": {"amp": 0.55, "tex": 2}}, "right-up"),
    ("Lung Lesion", {"side": "left", "severity": "large", "params": {"radius": 0.06, "v": -0.3, "amp": 0.35}}, "right"),
    ("Atelectasis", {"side": "right", "location": "lower"}, "left-low"),
    ("Pleural Other", {"side": "left", "location": "lateral", "params": {"thickness": 0.03}}, "right"),
    ("Fracture", {"side": "left", "location": "clavicle", "params": {"step": 1.3}}, "right-up"),
    ("Fracture", {"side": "right", "location": "rib", "params": {"rib": 6, "step": 1.3}}, "left"),
    ("Edema", {"side": "bilateral", "params": {"amp": 0.2, "marks_gain": 1.8, "tex": 3}}, "both"),
    ("Enlarged Cardiomediastinum", {"params": {"med_scale": 2.0}}, "middle-up"),
    ("Pneumonia", {"side": "left", "location": "lower", "params": {"amp": 0.7, "tex": 4}}, "right-low"),
])
def test_finding_is_visible_in_its_region(obs, kw, region):
    d = np.abs(_diff([Finding(obs, 1, **kw)]))
    assert (d > 12).sum() >= 8, f"{obs} is not visible"
    ys, xs = np.nonzero(d > 6)
    cy, cx = ys.mean() / 64, xs.mean() / 64
    if "left" in region:
        assert cx < 0.45
    if "right" in region:
        assert cx > 0.55
    if "low" in region:
        assert cy > 0.5
    if "up" in region:
        assert cy < 0.5
    if region in ("both", "middle-up"):
        assert 0.4 < cx < 0.6


def test_support_devices_are_very_bright():
    img = render_image(_patient(), [Finding("Support Devices", 1, params={"devices": ["ett", "pacemaker"]})], 64)
    base = render_image(_patient(), [], 64)
    assert img.max() >= 235 and (img.astype(int) - base > 40).sum() > 20
    assert (img[5:15, 29:36] >= 230).any()       # the endotracheal tube in the midline


def test_every_drawn_case_finding_changes_the_image(cases):
    """In generated cases every finding (faint ones too) changes the pixels."""
    checked = Counter()
    for case in cases[:120]:
        for f in case.drawn:
            if checked[(f.observation, f.faint)] >= 2:
                continue
            others = [g for g in case.drawn if g is not f]
            d = np.abs(render_image(case.anatomy, case.drawn, 64).astype(int)
                       - render_image(case.anatomy, others, 64).astype(int))
            assert (d > (3 if f.faint else 8)).sum() >= 3, (case.id, f)
            checked[(f.observation, f.faint)] += 1
    assert len({o for o, _ in checked}) >= 12
