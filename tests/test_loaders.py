"""Data set loaders: MIMIC-CXR-JPG (fixtures from the schema), Open-I (real reports), VQA-RAD
(real questions and images), MedViLL's split files and your own JSONL / CSV files."""

from __future__ import annotations

import csv
import gzip
import io
import json
import shutil
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medvill.data.common import DataError, RowPolicy, hash_split, normalize_split, parse_label_value, read_csv
from medvill.data.jsonl import load_jsonl
from medvill.data.mimic_cxr import (
    extract_sections,
    load_medvill_jsonl,
    load_mimic_cxr,
    parse_positive_labels,
    report_text,
)
from medvill.data.openi import (
    detect_layout,
    dicom_view,
    image_key,
    load_openi,
    load_openi_csv,
    load_openi_xml,
    load_r2gen,
    mesh_to_text,
    read_openi_xml,
)
from medvill.data.records import SkipReport, read_jsonl_records
from medvill.data.vqa_rad import build_answer_vocab, load_vqa_rad
from medvill.labels import CHEXPERT_OBSERVATIONS

SHARED = Path(__file__).resolve().parents[2] / "shared"
DATA = SHARED / "data"
MIMIC_EXAMPLE = DATA / "mimic_cxr_format" / "metadata_example.csv"
OPENI = DATA / "openi"
VQA_RAD = DATA / "vqa_rad"

IDX = {name: i for i, name in enumerate(CHEXPERT_OBSERVATIONS)}


def need(path: Path):
    return pytest.mark.skipif(not path.exists(), reason=f"{path} not available")


class FakeLabeler:
    """Keyword labeler standing in for medvill.labeler: counts its calls."""

    KEYWORDS = {"cardiomegaly": "Cardiomegaly", "effusion": "Pleural Effusion", "pneumothorax": "Pneumothorax",
                "opacity": "Lung Opacity", "no acute cardiopulmonary abnormality": "No Finding"}

    def __init__(self):
        self.calls: list[list[str]] = []

    def __call__(self, texts):
        self.calls.append(list(texts))
        out = np.full((len(texts), 14), np.nan, dtype=np.float32)
        for i, t in enumerate(texts):
            for word, obs in self.KEYWORDS.items():
                if word in t.lower():
                    out[i, IDX[obs]] = 1.0
        return out


def tiny_jpg(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8), 100, dtype=np.uint8), mode="L").save(path, format="JPEG")


_PNG8 = io.BytesIO()
Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8), mode="L").save(_PNG8, format="PNG")
_PNG16 = io.BytesIO()
Image.fromarray(np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000).save(_PNG16, format="PNG")


def tiny_png(path: Path, bits16: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes((_PNG16 if bits16 else _PNG8).getvalue())


# =======================================================================================
# common helpers
# =======================================================================================


def test_common_helpers(tmp_path):
    assert [normalize_split(s) for s in ("train", "Valid ", "val", "VALIDATE", "test", "", "dev", "x")] == \
        ["train", "validate", "validate", "validate", "test", None, "validate", None]
    assert [parse_label_value(v) for v in ("1.0", "0.0", "-1.0", 1, -1, 0.0)] == [1.0, 0.0, -1.0, 1.0, -1.0, 0.0]
    assert np.isnan(parse_label_value("")) and np.isnan(parse_label_value(None))
    for bad in ("2", "yes", True, 0.5):
        with pytest.raises(ValueError):
            parse_label_value(bad)
    splits = [hash_split(str(i), (0.7, 0.1, 0.2)) for i in range(2000)]
    assert splits == [hash_split(str(i), (0.7, 0.1, 0.2)) for i in range(2000)]
    c = Counter(splits)
    assert 0.65 < c["train"] / 2000 < 0.75 and 0.07 < c["validate"] / 2000 < 0.13
    with pytest.raises(ValueError, match="summing to 1"):
        hash_split("a", (0.5, 0.5, 0.5))
    # CSV rows carry the physical line they start on, also after a multi-line quoted field
    p = tmp_path / "t.csv.gz"
    with gzip.open(p, "wt", newline="") as fh:
        fh.write('a,b\n1,"x\ny"\n\n2,z\n3\n')
    skips = SkipReport("t")
    rows = list(read_csv(p, ["a", "b"], RowPolicy("skip", skips, p)))
    assert rows == [(2, {"a": "1", "b": "x\ny"}), (5, {"a": "2", "b": "z"})]
    assert skips.total == 1 and f"{p}:6" in skips.examples[0]
    with pytest.raises(DataError, match=r"t\.csv\.gz:6: expected 2 fields, got 1"):
        list(read_csv(p, ["a", "b"], RowPolicy("error", None, p)))
    with pytest.raises(DataError, match="missing column 'c'"):
        list(read_csv(p, ["a", "c"], RowPolicy("skip", None, p)))


# =======================================================================================
# MIMIC-CXR-JPG
# =======================================================================================

SPLIT_HEADER = ["dicom_id", "study_id", "subject_id", "split"]
CHEXPERT_HEADER = ["subject_id", "study_id", "Atelectasis", "Cardiomegaly", "Consolidation", "Edema",
                   "Enlarged Cardiomediastinum", "Fracture", "Lung Lesion", "Lung Opacity", "No Finding",
                   "Pleural Effusion", "Pleural Other", "Pneumonia", "Pneumothorax", "Support Devices"]
# made-up study (validate split): two AP images, the later one with the smaller dicom_id
EXTRA_META = [
    "bbbbbbbb-00000000-00000000-00000000-00000002,10000764,57375967,CHEST (PORTABLE AP),AP,2544,3056,"
    "21500101,101500.0,CHEST (PORTABLE AP),antero-posterior,Erect",
    "aaaaaaaa-00000000-00000000-00000000-00000001,10000764,57375967,CHEST (PORTABLE AP),AP,2544,3056,"
    "21500101,111500.0,CHEST (PORTABLE AP),antero-posterior,Erect",
]
SPLITS = {"50414267": "train", "53189527": "test", "53911762": "train", "57375967": "validate"}
REPORTS = {
    "50414267": ("                                 FINAL REPORT\n EXAMINATION:  CHEST (PA AND LAT)\n \n"
                 " INDICATION:  ___ year old woman with cough\n \n COMPARISON:  ___\n \n FINDINGS: \n \n"
                 " There is no focal consolidation, pleural effusion or pneumothorax.  The\n"
                 " cardiomediastinal silhouette is normal.\n \n IMPRESSION: \n \n No acute process.\n"),
    "53189527": ("EXAMINATION: CHEST (PA AND LAT)\n\nImpression:\nModerate cardiomegaly,\nunchanged.\n\n"
                 "NOTIFICATION: discussed with ___ at 10:00.\n"),
    "53911762": ("WET READ: ___ 9:00 AM\n  Small left effusion.\n\nFindings:  Small left pleural effusion with\n"
                 "adjacent opacity.  Heart size is normal.\n\nimpression: Small left effusion.\n"),
    "57375967": ("PORTABLE CHEST RADIOGRAPH\n\nComparison is made to a prior study.\n\n"
                 "Endotracheal tube ends 4 cm above the carina.  No pneumothorax.\n"),
}
CHEX = {  # by name, written in the schema's column order
    "50414267": {"No Finding": "1.0"},
    "53189527": {"Cardiomegaly": "1.0", "Edema": "-1.0", "Pleural Effusion": "0.0"},
    "53911762": {"Pleural Effusion": "1.0", "Lung Opacity": "-1.0", "Cardiomegaly": "0.0"},
    "57375967": {"Support Devices": "1.0", "Pneumothorax": "0.0"},
}


def _write(path: Path, text: str, gz: bool) -> None:
    if gz:
        with gzip.open(path.with_name(path.name + ".gz"), "wt", newline="") as fh:
            fh.write(text)
    else:
        path.write_text(text, newline="")


def make_mimic(root: Path, *, gz: bool = False, meta_extra: list[str] = (), meta_header_drop: str | None = None,
               split_override: dict[str, str] | None = None, reports: dict[str, str] | None = None,
               chex: dict[str, dict[str, str]] | None = None, skip_images: tuple[str, ...] = ()) -> Path:
    """A MIMIC-CXR-JPG folder from the 5 real metadata rows plus made-up ones."""
    root.mkdir(parents=True, exist_ok=True)
    lines = MIMIC_EXAMPLE.read_text().splitlines()
    header, rows = lines[0], lines[1:] + EXTRA_META + list(meta_extra)
    if meta_header_drop:
        cols = header.split(",")
        k = cols.index(meta_header_drop)
        header = ",".join(c for i, c in enumerate(cols) if i != k)
        rows = [",".join(v for i, v in enumerate(r.split(",")) if i != k) for r in rows]
    _write(root / "mimic-cxr-2.0.0-metadata.csv", "\n".join([header] + rows) + "\n", gz)
    parsed = [r.split(",") for r in rows if r.count(",") >= 4]
    splits = dict(SPLITS, **(split_override or {}))
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(SPLIT_HEADER)
    for r in parsed:
        if r[2] in splits:
            w.writerow([r[0], r[2], r[1], splits[r[2]]])
    _write(root / "mimic-cxr-2.0.0-split.csv", buf.getvalue(), gz)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CHEXPERT_HEADER)
    chex = CHEX if chex is None else chex
    subjects = {r[2]: r[1] for r in parsed}
    for study, labels in chex.items():
        w.writerow([subjects.get(study, "10000032"), study] + [labels.get(c, "") for c in CHEXPERT_HEADER[2:]])
    _write(root / "mimic-cxr-2.0.0-chexpert.csv", buf.getvalue(), gz)
    for r in parsed:
        dicom, subject, study = r[0], r[1], r[2]
        if dicom not in skip_images:
            tiny_jpg(root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}" / f"{dicom}.jpg")
    for study, text in (REPORTS if reports is None else reports).items():
        subject = subjects.get(study, "10000032")
        p = root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}.txt"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root


mimic = need(MIMIC_EXAMPLE)


def test_extract_sections():
    f, i, last = extract_sections(REPORTS["50414267"])
    assert f == ("There is no focal consolidation, pleural effusion or pneumothorax. The cardiomediastinal "
                 "silhouette is normal.")
    assert i == "No acute process."
    f, i, _ = extract_sections(REPORTS["53189527"])  # case-insensitive, multi-line, stops at NOTIFICATION
    assert (f, i) == ("", "Moderate cardiomegaly, unchanged.")
    f, i, _ = extract_sections(REPORTS["53911762"])  # a WET READ header ends nothing it does not start
    assert f == "Small left pleural effusion with adjacent opacity. Heart size is normal."
    assert i == "Small left effusion."
    f, i, last = extract_sections(REPORTS["57375967"])  # no sections: last paragraph
    assert (f, i) == ("", "") and last == "Endotracheal tube ends 4 cm above the carina. No pneumothorax."
    assert report_text(REPORTS["57375967"])[0] == last
    assert report_text(REPORTS["57375967"], fallback=False)[0] == ""
    assert extract_sections("FINDINGS: a.\n___________\nADDENDUM: b.\n__________\n")[2] == "b."
    rep = "FINDINGS: Long findings text here.\nCONCLUSION: Short.\n"
    assert report_text(rep, "longer")[0] == "Long findings text here."
    assert report_text(rep, "impression")[0] == "Short."
    assert report_text(rep, "both")[0] == "Long findings text here. Short."
    # a lower-case label that is no known header does not end a section
    assert extract_sections("Findings: x.\nNote: keep me.\nComparison: none.")[0] == "x. Note: keep me."


@mimic
def test_mimic_default_ap_official_labels(tmp_path):
    root = make_mimic(tmp_path / "mimic")
    skips = SkipReport("mimic")
    train = load_mimic_cxr(root, "train", skips=skips)
    assert [r.id for r in train] == ["s53911762"]  # the only AP study of train
    r = train[0]
    assert r.image == root / "files/p10/p10000032/s53911762/68b5c4b1-227d0485-9cc38c3f-7b84ab51-4b472714.jpg"
    assert r.text == "Small left pleural effusion with adjacent opacity. Heart size is normal."  # the longer
    assert r.impression == "Small left effusion." and r.split == "train"
    assert r.labels.dtype == np.float32 and r.labels.shape == (14,)
    assert r.labels[IDX["Pleural Effusion"]] == 1 and r.labels[IDX["Lung Opacity"]] == -1
    assert r.labels[IDX["Cardiomegaly"]] == 0 and np.isnan(r.labels[IDX["Edema"]])
    assert skips.total == 0
    assert load_mimic_cxr(root, "test") == []  # its only study is PA
    val = load_mimic_cxr(root, "validate")
    # two AP images on the same date: the earlier StudyTime wins over the smaller dicom_id
    assert [r.image.stem for r in val] == ["bbbbbbbb-00000000-00000000-00000000-00000002"]
    assert val[0].text == "Endotracheal tube ends 4 cm above the carina. No pneumothorax."  # fallback
    assert val[0].findings == "" and val[0].labels[IDX["Support Devices"]] == 1


@mimic
def test_mimic_view_order_and_split(tmp_path):
    root = make_mimic(tmp_path / "mimic")
    both = load_mimic_cxr(root, "train", views=("PA", "AP"))
    assert [(r.id, r.image.stem[:8]) for r in both] == [("s50414267", "02aa804e"), ("s53911762", "68b5c4b1")]
    assert both[0].text.startswith("There is no focal consolidation") and both[0].labels[IDX["No Finding"]] == 1
    lat = load_mimic_cxr(root, "train", views=("LATERAL", "PA"))
    assert [(r.id, r.image.stem[:8]) for r in lat] == [("s50414267", "174413ec")]  # first view listed wins
    test = load_mimic_cxr(root, "test", views=["PA", "AP"], section="impression")
    assert [r.id for r in test] == ["s53189527"] and test[0].text == "Moderate cardiomegaly, unchanged."
    assert test[0].labels[IDX["Edema"]] == -1 and test[0].labels[IDX["Pleural Effusion"]] == 0
    with pytest.raises(ValueError, match="unknown view"):
        load_mimic_cxr(root, "train", views=("FRONTAL",))
    with pytest.raises(ValueError, match="unknown split"):
        load_mimic_cxr(root, "valid")


@mimic
def test_mimic_gz_and_reports_root(tmp_path):
    plain = load_mimic_cxr(make_mimic(tmp_path / "a"), "train", views=("PA", "AP"))
    root = make_mimic(tmp_path / "b", gz=True)
    assert not (root / "mimic-cxr-2.0.0-split.csv").exists()
    gz = load_mimic_cxr(root, "train", views=("PA", "AP"))
    assert [(r.id, r.text, r.image.name) for r in gz] == [(r.id, r.text, r.image.name) for r in plain]
    assert all(np.array_equal(a.labels, b.labels, equal_nan=True) for a, b in zip(gz, plain))
    # reports in a separate MIMIC-CXR folder
    reports = tmp_path / "reports"
    (reports / "files" / "p10" / "p10000032").mkdir(parents=True)
    shutil.move(root / "files" / "p10" / "p10000032" / "s53911762.txt",
                reports / "files" / "p10" / "p10000032" / "s53911762.txt")
    assert load_mimic_cxr(root, "train") == []  # report not found in root
    assert [r.id for r in load_mimic_cxr(root, "train", reports_root=reports)] == ["s53911762"]


@mimic
def test_mimic_labeler_labels(tmp_path):
    root = make_mimic(tmp_path / "mimic")
    fake = FakeLabeler()
    recs = load_mimic_cxr(root, "train", views=("PA", "AP"), labels="labeler", labeler=fake)
    assert len(fake.calls) == 1 and fake.calls[0] == [r.text for r in recs]  # labels the text the model reads
    assert recs[1].labels[IDX["Pleural Effusion"]] == 1 and np.isnan(recs[1].labels[IDX["Edema"]])
    none = load_mimic_cxr(root, "train", labels="none")
    assert np.isnan(none[0].labels).all()


# (name, change to the fixture, reason counted, location in the message, train ids left)
MIMIC_BAD = [
    ("truncated", dict(meta_extra=["cccccccc-00000000-00000000-00000000-00000003,10000764,57375967,CHEST"]),
     "expected 12 fields, got 4", "mimic-cxr-2.0.0-metadata.csv:9", ["s53911762"]),
    ("unknown view", dict(meta_extra=["dddddddd-00000000-00000000-00000000-00000004,10000032,53911762,X,OBLIQUE,"
                                      "1,1,21800723,80556.875,X,x,"]),
     "unknown ViewPosition 'OBLIQUE'", "mimic-cxr-2.0.0-metadata.csv:9", ["s53911762"]),
    ("blank view", dict(meta_extra=["dddddddd-00000000-00000000-00000000-00000004,10000032,53911762,X,,"
                                    "1,1,21800723,80556.875,X,x,"]),
     "blank ViewPosition", "mimic-cxr-2.0.0-metadata.csv:9", ["s53911762"]),
    ("missing image", dict(skip_images=("68b5c4b1-227d0485-9cc38c3f-7b84ab51-4b472714",)),
     "missing image", "mimic-cxr-2.0.0-metadata.csv:6", []),
    ("empty report", dict(reports=dict(REPORTS, **{"53911762": "  \n\n"})),
     "empty report", "mimic-cxr-2.0.0-metadata.csv:6", []),
    ("missing report", dict(reports={k: v for k, v in REPORTS.items() if k != "53911762"}),
     "missing report", "mimic-cxr-2.0.0-metadata.csv:6", []),
    ("bad label", dict(chex=dict(CHEX, **{"53911762": {"Edema": "2.0"}})),
     "column 'Edema' has value '2.0'", "mimic-cxr-2.0.0-chexpert.csv:4", []),
    ("no label row", dict(chex={k: v for k, v in CHEX.items() if k != "53911762"}),
     "has no row in mimic-cxr-2.0.0-chexpert.csv", "mimic-cxr-2.0.0-metadata.csv:6", []),
    ("bad split", dict(split_override={"53911762": "holdout"}),
     "unknown split value 'holdout'", "mimic-cxr-2.0.0-split.csv:6", []),
]


@mimic
@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("name,change,reason,where,left", MIMIC_BAD, ids=[b[0] for b in MIMIC_BAD])
def test_mimic_bad_rows_both_policies(tmp_path, name, change, reason, where, left, gz):
    root = make_mimic(tmp_path / "mimic", gz=gz, **change)
    skips = SkipReport("mimic")
    recs = load_mimic_cxr(root, "train", skips=skips)
    # the bad row is left out and counted once, never silently used with a wrong label
    assert [r.id for r in recs] == left and skips.total == 1
    (counted,) = skips.counts
    assert reason.split(" '")[0] in counted and where.replace(".csv", ".csv.gz" if gz else ".csv") in skips.examples[0]
    with pytest.raises(DataError) as info:
        load_mimic_cxr(root, "train", policy="error")
    msg = str(info.value)
    assert where.replace(".csv", ".csv.gz" if gz else ".csv") in msg and reason in msg


@mimic
def test_mimic_missing_column_and_file(tmp_path):
    root = make_mimic(tmp_path / "mimic", meta_header_drop="ViewPosition")
    for policy in ("skip", "error"):
        with pytest.raises(DataError, match=r"metadata\.csv: missing column 'ViewPosition'"):
            load_mimic_cxr(root, "train", policy=policy)
    root = make_mimic(tmp_path / "m2")
    (root / "mimic-cxr-2.0.0-chexpert.csv").unlink()
    with pytest.raises(FileNotFoundError, match="chexpert"):
        load_mimic_cxr(root, "train")
    assert len(load_mimic_cxr(root, "train", labels="none")) == 1  # not needed without official labels
    lines = (root / "mimic-cxr-2.0.0-split.csv").read_text().splitlines()
    (root / "mimic-cxr-2.0.0-split.csv").write_text("\n".join(["dicom_id,study_id,subject_id"] + lines[1:]))
    with pytest.raises(DataError, match=r"split\.csv: missing column 'split'"):
        load_mimic_cxr(root, "train", labels="none")


def test_medvill_jsonl_mimic_style(tmp_path):
    rows = [
        {"id": "s57495790", "split": "valid", "label": "'Lung Opacity', 'Support Devices'", "text": "Tube. Opacity.",
         "img": "data/preprocessed/mimic/valid/s57495790.jpg"},
        {"id": "s50000001", "split": "valid", "label": "''", "text": "Normal.",
         "img": "data/preprocessed/mimic/valid/s50000001.jpg"},
        {"id": "s50000002", "split": "test", "label": "'Edema'", "text": "Edema.",
         "img": "data/preprocessed/mimic/test/s50000002.jpg"},
        {"id": "s50000003", "split": "valid", "label": "'Heart Failure'", "text": "x",
         "img": "data/preprocessed/mimic/valid/s50000003.jpg"},
    ]
    path = tmp_path / "Valid.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    images = tmp_path / "imgs"
    for r in rows:
        tiny_jpg(images / Path(r["img"]).name)
    skips = SkipReport("v")
    recs = load_medvill_jsonl(path, "validate", image_root=images, skips=skips)
    assert [r.id for r in recs] == ["s50000001", "s57495790"]
    assert recs[0].labels.tolist() == [0.0] * 14  # "''": no positive -> all 0
    lab = recs[1].labels
    assert lab[IDX["Lung Opacity"]] == 1 and lab[IDX["Support Devices"]] == 1 and lab.sum() == 2
    assert recs[1].image == images / "s57495790.jpg"
    assert skips.counts == {"unknown CheXpert observation 'Heart Failure' in label field": 1}
    with pytest.raises(DataError, match=r"Valid\.jsonl:4: unknown CheXpert observation"):
        load_medvill_jsonl(tmp_path, "validate", image_root=images, policy="error")
    assert [r.id for r in load_medvill_jsonl(path, "test", image_root=images)] == ["s50000002"]
    assert parse_positive_labels(["Edema"])[IDX["Edema"]] == 1


# =======================================================================================
# Open-I
# =======================================================================================

openi_tgz = need(OPENI / "NLMCXR_reports.tgz")


@pytest.fixture(scope="module")
def openi_reports():
    if not (OPENI / "NLMCXR_reports.tgz").is_file():
        pytest.skip("Open-I reports not available")
    return read_openi_xml(OPENI / "NLMCXR_reports.tgz", policy="error")


def test_openi_xml_parse_all(openi_reports):
    reps = openi_reports
    assert len(reps) == 3955 and len({r.uid for r in reps}) == 3955
    assert [r.uid for r in reps[:3]] == ["1", "2", "3"]
    assert sum(bool(r.findings) for r in reps) == 3425
    assert sum(bool(r.impression) for r in reps) == 3921
    assert sum(bool(r.findings or r.impression) for r in reps) == 3927
    assert sum(bool(r.images) for r in reps) == 3851
    assert Counter(len(r.images) for r in reps)[2] == 3208
    r2 = reps[1]
    assert r2.major == ("Cardiomegaly/borderline", "Pulmonary Artery/enlarged") and r2.automatic == ("sternotomy",)
    assert r2.images == ("CXR2_IM-0652-1001", "CXR2_IM-0652-2001")
    assert r2.findings.startswith("Borderline cardiomegaly.") and r2.impression == "No acute pulmonary findings."
    assert reps[0].major == ("normal",)
    assert sum(r.major == ("normal",) for r in reps) == 1391 and sum(r.major == ("No Indexing",) for r in reps) == 95


def test_mesh_to_text():
    assert mesh_to_text(["Cardiomegaly/mild"]) == "mild cardiomegaly."
    assert mesh_to_text(["normal"]) == "no acute cardiopulmonary abnormality."
    assert mesh_to_text(["No Indexing"]) == ""
    assert mesh_to_text(["Opacity/lung/base/left/mild", "Catheters, Indwelling/right",
                         "Pulmonary Disease, Chronic Obstructive", "Technical Quality of Image Unsatisfactory ",
                         "Cardiomegaly/mild"]) == (
        "mild left base lung opacity. right indwelling catheters. chronic obstructive pulmonary disease. "
        "technical quality of image unsatisfactory. mild cardiomegaly.")


def test_dicom_view_rule():
    assert dicom_view({"View Position": "LL", "Patient Orientation": ""}) == "lateral"
    assert dicom_view({"View Position": "", "Patient Orientation": "['A', 'F']"}) == "lateral"
    assert dicom_view({"View Position": "PA", "Patient Orientation": "['L', 'F']",
                       "Acquisition Device Processing Code": "60025"}) == "frontal"
    assert dicom_view({"View Position": "PA", "Acquisition Device Processing Code": "60003"}) == "lateral"
    assert dicom_view({"View Position": "AP"}) == "frontal"
    assert dicom_view({"View Position": ""}) == "unknown"
    assert image_key("1_IM-0001-4001.dcm.png") == image_key("CXR1_1_IM-0001-4001") == "1/IM-0001-4001"
    assert image_key("CXR1_IM-0001-4001") == image_key("CXR1_1_IM-0001-4001.png") == "1/IM-0001-4001"
    assert image_key("CXR21_IM-0729-1001-0002") == image_key("21_IM-0729-1001-0002.dcm.png")


@need(OPENI / "nlmcxr_dicom_metadata.csv.gz")
@need(OPENI / "indiana_projections.csv")
def test_openi_dicom_rule_against_projections(openi_reports):
    """The DICOM-only rule picks a frontal image (per the projections table) for >= 98 % of
    the reports that have one."""
    from medvill.data.openi import read_image_views

    truth = read_image_views(projections=OPENI / "indiana_projections.csv")
    dicom = read_image_views(dicom_metadata=OPENI / "nlmcxr_dicom_metadata.csv.gz")
    has, ok = 0, 0
    for rep in openi_reports:
        keys = [image_key(i) for i in rep.images]
        if not any(truth.get(k) == "frontal" for k in keys):
            continue
        has += 1
        kinds = [dicom.get(k, "unknown") for k in keys]
        pick = keys[kinds.index("frontal")] if "frontal" in kinds else (
            keys[kinds.index("unknown")] if "unknown" in kinds else None)
        ok += pick is not None and truth.get(pick) == "frontal"
    assert has == 3689 and ok / has > 0.98


@openi_tgz
@need(OPENI / "indiana_projections.csv")
def test_openi_xml_loader_counts(tmp_path):
    skips = SkipReport("openi")
    per = {s: load_openi_xml(OPENI, s, labels="none", check_images=False, skips=skips)
           for s in ("train", "validate", "test")}
    assert {s: len(v) for s, v in per.items()} == {"train": 2678, "validate": 325, "test": 663}
    ids = [r.id for v in per.values() for r in v]
    assert len(ids) == len(set(ids)) == 3666
    assert skips.counts == {"no image": 104, "no frontal image": 160, "no findings or impression": 25}
    r1 = next(r for v in per.values() for r in v if r.id == "1")
    assert r1.image.name == "CXR1_1_IM-0001-4001.png"  # the frontal one, listed second in 1.xml
    assert r1.text == r1.findings  # the longer section
    assert detect_layout(OPENI) == "xml"
    # the same reports through the dispatcher
    assert [r.id for r in load_openi(OPENI, "validate", labels="none", check_images=False)] == \
        [r.id for r in per["validate"]]


@openi_tgz
def test_openi_xml_images_and_mesh_labels(tmp_path):
    """Test split of the real reports with tiny PNGs (a few 16-bit) for the chosen images."""
    recs = load_openi_xml(OPENI, "test", labels="none", check_images=False)
    images = tmp_path / "png"
    for k, r in enumerate(recs):
        tiny_png(images / r.image.name, bits16=k % 100 == 0)
    fake = FakeLabeler()
    got = load_openi_xml(OPENI, "test", images=images, labeler=fake)
    assert [r.id for r in got] == [r.id for r in recs] and all(r.image.is_file() for r in got)
    assert Image.open(got[0].image).mode.startswith("I")  # a 16-bit one
    sent = fake.calls[0]
    assert len(fake.calls) == 1 and "mild cardiomegaly." in sent
    by_id = {r.id: r for r in got}
    reps = {r.uid: r for r in read_openi_xml(OPENI / "NLMCXR_reports.tgz")}
    for rid, r in by_id.items():
        text = mesh_to_text(reps[rid].major)
        if not text:
            assert np.isnan(r.labels).all()  # "No Indexing": blank, labeler not asked
        elif "cardiomegaly" in text:
            assert r.labels[IDX["Cardiomegaly"]] == 1
        if reps[rid].major == ("normal",):
            assert r.labels[IDX["No Finding"]] == 1 and np.nansum(r.labels) == 1
    # a missing image: counted, or an error naming the report
    (images / got[5].image.name).unlink()
    skips = SkipReport("x")
    assert len(load_openi_xml(OPENI, "test", images=images, labels="none", skips=skips)) == len(got) - 1
    assert skips.counts["missing image" + f" {images / got[5].image.name}"] == 1
    with pytest.raises(DataError, match=rf"ecgen-radiology/{got[5].id}\.xml: missing image"):
        load_openi_xml(OPENI, "test", images=images, labels="none", policy="error")


@openi_tgz
def test_openi_xml_folder_dicom_views_and_fallback(tmp_path):
    """A folder of XMLs (3 real ones, one broken), DICOM metadata only, and no view info."""
    root = tmp_path / "openi"
    folder = root / "ecgen-radiology"
    folder.mkdir(parents=True)
    with tarfile.open(OPENI / "NLMCXR_reports.tgz") as tf:
        for n in ("1", "2", "4"):
            (folder / f"{n}.xml").write_bytes(tf.extractfile(f"ecgen-radiology/{n}.xml").read())
    (folder / "9999.xml").write_text("<eCitation><uId id='CXR9999'/>")  # truncated
    reps = {r.uid: r for r in read_openi_xml(folder)}
    for rep in reps.values():
        for k, i in enumerate(rep.images):
            tiny_png(root / "images" / f"{i}.png", bits16=k == 1)
    # DICOM metadata: report 1's first image lateral (LL), second PA; report 2: no view info;
    # report 4: both lateral -> left out
    meta = [("CXR1_1_IM-0001-3001", "LL", ""), ("CXR1_1_IM-0001-4001", "PA", "['L', 'F']")]
    meta += [(i, "", "") for i in reps["2"].images] + [(i, "", "['A', 'F']") for i in reps["4"].images]
    with gzip.open(root / "nlmcxr_dicom_metadata.csv.gz", "wt", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["imageid", "Bits Stored", "View Position", "Patient Orientation"])
        w.writerows([(i, 12, v, o) for i, v, o in meta])
    skips = SkipReport("x")
    everything = (1, 0, 0)  # all reports in train
    got = {r.id: r.image.name for r in load_openi_xml(root, "train", labels="none", skips=skips,
                                                      split_fractions=everything)}
    # 1: the PA image (listed second); 2: no view known -> its first image; 4: lateral only
    assert got == {"1": "CXR1_1_IM-0001-4001.png", "2": "CXR2_IM-0652-1001.png"}
    assert skips.counts["no frontal image"] == 1 and skips.total == 2
    assert any("9999.xml: not valid XML" in e for e in skips.examples)
    with pytest.raises(DataError, match=r"9999\.xml: not valid XML"):
        load_openi_xml(root, "train", labels="none", policy="error", split_fractions=everything)
    first = load_openi_xml(root, "train", labels="none", view_source="first", split_fractions=everything)
    assert {r.id: r.image.name for r in first}["1"] == "CXR1_1_IM-0001-3001.png"
    with pytest.raises(FileNotFoundError, match="indiana_projections"):
        load_openi_xml(root, "train", view_source="projections")


@need(OPENI / "indiana_reports.csv")
def test_openi_csv_matches_xml(openi_reports):
    fake = FakeLabeler()
    skips = SkipReport("csv")
    per = {s: load_openi_csv(OPENI, s, check_images=False, labeler=fake, skips=skips)
           for s in ("train", "validate", "test")}
    assert {s: len(v) for s, v in per.items()} == {"train": 2678, "validate": 325, "test": 663}
    assert skips.counts == {"no frontal image": 160, "no findings or impression": 25}
    xml = {r.uid: r for r in openi_reports}
    for s, recs in per.items():
        for r in recs:
            assert hash_split(r.id, (0.7, 0.1, 0.2)) == s
            assert r.text == " ".join(choose(xml[r.id]).split())
    r2 = next(r for r in per["train"] + per["validate"] + per["test"] if r.id == "2")
    assert r2.image.name == "2_IM-0652-1001.dcm.png" and r2.labels[IDX["Cardiomegaly"]] == 1


def choose(rep):
    from medvill.data.records import choose_text

    return choose_text(rep.findings, rep.impression)


@need(OPENI / "r2gen_annotation.json")
def test_r2gen_annotation(tmp_path):
    path = OPENI / "r2gen_annotation.json"
    sizes = {s: len(load_r2gen(path, s, labels="none", check_images=False)) for s in ("train", "validate", "test")}
    assert sizes == {"train": 2069, "validate": 296, "test": 590}
    test = load_r2gen(path, "test", labels="none", check_images=False)
    assert test[0].image.parts[-2:] == (test[0].id, "0.png") and test[0].split == "test"
    # images present for a small copy; a record contradicting its key is a bad row
    data = json.loads(path.read_text())
    small = {"train": data["train"][:3], "val": data["val"][:2], "    ": data["    "][:2]}
    small["train"][2] = dict(small["train"][2], split="test")
    (tmp_path / "annotation.json").write_text(json.dumps(small))
    for recs in small.values():
        for rec in recs:
            tiny_png(tmp_path / "images" / rec["image_path"][0])
    fake = FakeLabeler()
    skips = SkipReport("r2gen")
    train = load_r2gen(tmp_path, "train", labeler=fake, skips=skips)
    assert len(train) == 2 and all(r.image.is_file() for r in train) and len(fake.calls) == 1
    assert skips.total == 1 and "contradicts key 'train'" in skips.examples[0]
    assert len(load_r2gen(tmp_path, "test", labels="none")) == 2  # the four-space key
    with pytest.raises(DataError, match=r"annotation\.json:'train'\[2\]: split field 'test'"):
        load_r2gen(tmp_path, "train", labels="none", policy="error")


@need(OPENI / "medvill_split")
def test_medvill_openi_split(tmp_path):
    root = OPENI / "medvill_split"
    sizes = {s: len(load_medvill_jsonl(root, s, check_images=False)) for s in ("train", "validate", "test")}
    assert sizes == {"train": 2483, "validate": 710, "test": 354}
    test = load_medvill_jsonl(root, "test", check_images=False)
    counts = np.nansum(np.stack([r.labels for r in test]) == 1, axis=0)
    assert counts[IDX["No Finding"]] == 130 and counts[IDX["Lung Opacity"]] == 72 and counts[IDX["Cardiomegaly"]] == 51
    assert not np.isnan(np.stack([r.labels for r in test])).any()  # unlisted = 0
    assert sum(r.labels.sum() == 0 for r in test) == 67  # "''"
    images = tmp_path / "openi"
    for r in test:
        tiny_png(images / f"{r.id}.jpg")
    (images / f"{test[0].id}.jpg").unlink()
    skips = SkipReport("t")
    got = load_medvill_jsonl(root, "test", image_root=images, skips=skips)
    assert len(got) == 353 and skips.total == 1 and got[0].image.parent == images
    assert detect_layout(root) == "medvill"
    assert len(load_openi(root, "validate", check_images=False)) == 710


# =======================================================================================
# VQA-RAD
# =======================================================================================

vqa = need(VQA_RAD / "trainset.json")


@vqa
def test_vqa_rad_validation_by_question_asks_about_training_images():
    train = load_vqa_rad(VQA_RAD, "train", validate_by="question", policy="error")
    val = load_vqa_rad(VQA_RAD, "validate", validate_by="question", policy="error")
    assert len(train) + len(val) == 3064 and 0.08 <= len(val) / 3064 <= 0.12
    assert not {i.qid for i in train} & {i.qid for i in val}
    shared = {i.image.name for i in val} & {i.image.name for i in train}
    assert len(shared) > 0.8 * len({i.image.name for i in val})  # as in the official test split
    assert [i.qid for i in load_vqa_rad(VQA_RAD, "validate", validate_by="question")] == [i.qid for i in val]
    with pytest.raises(ValueError, match="validate_by"):
        load_vqa_rad(VQA_RAD, "validate", validate_by="organ")


@vqa
def test_vqa_rad_real_counts_and_quirks():
    raw = json.loads((VQA_RAD / "trainset.json").read_text())
    for organ, n_q, n_img in (("ALL", 3064, 314), ("CHEST", 1088, 107)):
        train = load_vqa_rad(VQA_RAD, "train", organ=organ, policy="error")
        val = load_vqa_rad(VQA_RAD, "validate", organ=organ, policy="error")
        imgs_t, imgs_v = {i.image.name for i in train}, {i.image.name for i in val}
        assert len(train) + len(val) == n_q and len(imgs_t | imgs_v) == n_img
        assert not imgs_t & imgs_v  # grouped by image
        assert 0.09 <= len(val) / n_q <= 0.13
        assert all(i.image.is_file() for i in train + val)
        assert {i.split for i in train} == {"train"} and {i.split for i in val} == {"validate"}
        if organ == "CHEST":
            assert {i.organ for i in train + val} == {"CHEST"}
            chest_val = {i.qid for i in val}
        else:
            all_val = {i.qid for i in val}
            items = train + val
    assert chest_val <= all_val  # the carve does not depend on the organ filter
    assert Counter(i.answer_type for i in items) == {"CLOSED": 1823, "OPEN": 1241}  # "CLOSED " fixed
    assert sum(str(q["answer_type"]).endswith(" ") for q in raw) == 2
    assert all(i.answer == i.answer.strip().lower() for i in items)
    by_qid = {i.qid: i for i in items}
    assert by_qid["1"].answer == "yes" and raw[0]["answer"] == "Yes"
    assert sorted({i.answer for i in items if i.answer.isdigit()}) == ["12", "2", "4"]  # int answers
    assert [i.qid for i in train] == sorted((i.qid for i in train), key=int)
    with pytest.raises(FileNotFoundError, match="testset.json"):
        load_vqa_rad(VQA_RAD, "test")
    vocab = build_answer_vocab(train)
    assert vocab[:2] == ["no", "yes"] and len(vocab) == len(set(vocab))
    assert set(build_answer_vocab(train + val)) == set(vocab)  # validation answers never leak in
    counts = Counter(i.answer for i in train)
    assert build_answer_vocab(train, min_count=3) == [a for a in vocab if counts[a] >= 3]


def test_vqa_rad_official_layout(tmp_path):
    root = tmp_path / "vqa"
    folder = root / "VQA_RAD Image Folder"
    for name in ("synpic1.jpg", "synpic2.jpg", "synpic3.jpg"):
        tiny_jpg(folder / name)
    rows = [
        dict(qid=1, image_name="synpic1.jpg", question=" Is there an effusion? ", answer="Yes ",
             answer_type="CLOSED ", question_type="PRES", image_organ="CHEST", phrase_type="freeform",
             question_frame="Is there a pleural effusion in the image?", question_rephrase="NULL"),
        dict(qid=2, image_name="synpic1.jpg", question="Which side?", answer=" Left  lung",
             answer_type="OPEN", question_type="pos", image_organ="chest", phrase_type="para", question_frame="NULL"),
        dict(qid=3, image_name="synpic2.jpg", question="Is the brain normal?", answer="no",
             answer_type="closed", question_type="ABN", image_organ="HEAD", phrase_type="freeform"),
        dict(qid=4, image_name="synpic3.jpg", question="How many?", answer=4, answer_type="OPEN",
             question_type="COUNT", image_organ="CHEST ", phrase_type="test_freeform"),
        dict(qid=5, image_name="synpic3.jpg", question="What?", answer="x", answer_type="MAYBE",
             question_type="PRES", image_organ="CHEST", phrase_type="test_para"),
        dict(qid=6, image_name="missing.jpg", question="What?", answer="x", answer_type="OPEN",
             question_type="PRES", image_organ="CHEST", phrase_type="freeform"),
    ]
    (root / "VQA_RAD Dataset Public.json").write_text(json.dumps(rows))
    skips = SkipReport("vqa")
    train = load_vqa_rad(root, "train", validate_fraction=0.0, skips=skips)
    assert [(i.qid, i.answer, i.answer_type, i.organ, i.question) for i in train] == [
        ("1", "yes", "CLOSED", "CHEST", "Is there an effusion?"),
        ("1-frame", "yes", "CLOSED", "CHEST", "Is there a pleural effusion in the image?"),
        ("2", "left lung", "OPEN", "CHEST", "Which side?"), ("3", "no", "CLOSED", "HEAD", "Is the brain normal?")]
    assert train[1].phrase_type == "frame" and train[1].image == train[0].image
    assert train[2].question_type == "POS" and train[0].image == root / "VQA_RAD Image Folder" / "synpic1.jpg"
    # the whole file is checked: qid 5 (test) has a bad answer type, qid 6 a missing image
    assert skips.total == 2 and "(qid 6): missing image" in skips.examples[1]
    test = load_vqa_rad(root, "test", organ="chest")
    assert [(i.qid, i.answer, i.split) for i in test] == [("4", "4", "test")]
    assert [i.qid for i in load_vqa_rad(root, "train", organ="CHEST", validate_fraction=0.0, expand_frames=False)] \
        == ["1", "2"]
    with pytest.raises(DataError, match=r"\[4\] \(qid 5\): answer_type 'MAYBE'"):
        load_vqa_rad(root, "test", policy="error")
    with pytest.raises(FileNotFoundError, match="trainset.json"):
        load_vqa_rad(tmp_path, "train")


def test_vqa_rad_reads_synthetic(tmp_path):
    from medvill.data.synthetic import generate_synthetic

    root = tmp_path / "synth"
    summary = generate_synthetic(root, n=20, image_size=64)
    got = {s: load_vqa_rad(root, s, policy="error") for s in ("train", "validate", "test")}
    n_train = len(json.loads((root / "trainset.json").read_text()))
    assert len(got["train"]) + len(got["validate"]) == n_train and got["validate"]
    assert len(got["test"]) == len(json.loads((root / "testset.json").read_text())) == 4 * summary.counts["test"]
    assert not {i.image for i in got["train"]} & {i.image for i in got["validate"]}
    assert all(i.image.is_file() and i.organ == "CHEST" for v in got.values() for i in v)
    assert {i.answer_type for v in got.values() for i in v} == {"CLOSED", "OPEN"}
    assert len(load_vqa_rad(root, "train", organ="CHEST")) == len(got["train"])
    assert load_vqa_rad(root, "train", organ="HEAD") == []


# =======================================================================================
# your own data (JSONL / CSV)
# =======================================================================================


@pytest.fixture
def own_dir(tmp_path):
    for name in ("a.png", "b.png", "c.png", "d.png", "e.png"):
        tiny_png(tmp_path / "images" / name)
    return tmp_path


def test_own_jsonl(own_dir, tmp_path_factory):
    absolute = tmp_path_factory.mktemp("abs") / "x.png"
    tiny_png(absolute)
    rows = [
        {"id": "a", "image": "images/a.png", "text": "Small effusion.", "split": "train",
         "labels": {"Pleural Effusion": 1, "Edema": 0}},
        {"id": "b", "image": "images/b.png", "findings": "Mild cardiomegaly, unchanged.", "impression": "Cardiomegaly.",
         "split": "train", "Cardiomegaly": 1.0, "Edema": ""},
        {"id": "c", "image": "images/c.png", "report": "INDICATION: cough\nFINDINGS: No pneumothorax.\n"
                                                       "IMPRESSION: Normal chest.", "split": "valid"},
        {"id": "d", "image": str(absolute), "text": "Left pneumothorax.", "split": "train"},
        {"id": "e", "image": "images/e.png", "text": "Opacity at the base.", "split": "TRAIN"},
        {"id": "bad-label", "image": "images/a.png", "text": "x", "split": "train", "labels": {"Edema": 2}},
        {"id": "bad-split", "image": "images/a.png", "text": "x", "split": "holdout"},
        {"id": "no-image", "image": "images/zzz.png", "text": "x", "split": "train"},
        {"id": "empty", "image": "images/a.png", "text": "  ", "split": "train"},
        {"id": "a", "image": "images/a.png", "text": "dup", "split": "train"},
    ]
    path = own_dir / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "{broken\n")
    fake = FakeLabeler()
    skips = SkipReport("own")
    train = load_jsonl(path, "train", labeler=fake, skips=skips)
    assert [r.id for r in train] == ["a", "b", "d", "e"]
    a, b, d, e = train
    assert a.labels[IDX["Pleural Effusion"]] == 1 and a.labels[IDX["Edema"]] == 0 and np.isnan(a.labels[0])
    assert b.text == "Mild cardiomegaly, unchanged." and b.labels[IDX["Cardiomegaly"]] == 1
    assert np.isnan(b.labels[IDX["Edema"]])
    assert fake.calls == [["Left pneumothorax.", "Opacity at the base."]]  # only rows without labels
    assert d.image == absolute and d.labels[IDX["Pneumothorax"]] == 1 and e.labels[IDX["Lung Opacity"]] == 1
    assert a.image == own_dir / "images" / "a.png"
    assert dict(skips.counts) == {"label 'Edema' has value 2; expected 1, 0, -1 or blank": 1,
                                  "unknown split value 'holdout' (expected train, validate or test)": 1,
                                  f"missing image {own_dir / 'images' / 'zzz.png'}": 1, "empty report": 1,
                                  "duplicate id 'a'": 1, "not valid JSON (Expecting property name enclosed in "
                                                         "double quotes)": 1}
    val = load_jsonl(path, "validate", labeler=fake)
    assert [(r.id, r.text, r.findings, r.impression) for r in val] == [
        ("c", "No pneumothorax.", "No pneumothorax.", "Normal chest.")]
    with pytest.raises(DataError, match=r"data\.jsonl:6: label 'Edema' has value 2"):
        load_jsonl(path, "train", labeler=fake, policy="error")
    assert np.isnan(load_jsonl(path, "train", labels="none")[0].labels).all()


def test_own_hash_split_and_csv(own_dir):
    header = ["image", "findings", "impression"] + list(CHEXPERT_OBSERVATIONS)
    lines = [",".join(header)]
    for k, name in enumerate("abcde"):
        vals = [""] * 14
        vals[IDX["Cardiomegaly"]] = ["1.0", "0", "-1", "", "1"][k]
        lines.append(f"images/{name}.png,Finding {name} is here.,Imp {name}.," + ",".join(vals))
    path = own_dir / "data.csv"
    path.write_text("\n".join(lines) + "\n")
    got = {s: load_jsonl(path, s, policy="error") for s in ("train", "validate", "test")}
    ids = [r.id for v in got.values() for r in v]
    assert sorted(ids) == [f"data-{k}" for k in range(2, 7)]  # every row in exactly one split
    for s, recs in got.items():
        for r in recs:
            assert hash_split(f"images/{r.image.name}", (0.8, 0.1, 0.1)) == s
            assert r.text.startswith("Finding")
    card = {r.image.stem: r.labels[IDX["Cardiomegaly"]] for v in got.values() for r in v}
    assert card["a"] == 1 and card["b"] == 0 and card["c"] == -1 and np.isnan(card["d"])
    # a truncated line
    path.write_text("\n".join(lines[:3] + ["images/c.png,Finding"]) + "\n")
    skips = SkipReport("csv")
    assert sum(len(load_jsonl(path, s, skips=skips)) for s in ("train", "validate", "test")) == 2
    assert skips.counts and f"{path}:4" in skips.examples[0]
    with pytest.raises(DataError, match=r"data\.csv:4: expected 17 fields, got 2"):
        load_jsonl(path, "train", policy="error")
    # partial label columns / no image column: errors naming the file and the column(s)
    path.write_text("image,text,Edema\nimages/a.png,x,1\n")
    with pytest.raises(DataError, match=r"data\.csv: has 1 of the 14 label columns; missing columns 'No Finding'"):
        load_jsonl(path, "train")
    path.write_text("path,text\nimages/a.png,x\n")
    with pytest.raises(DataError, match=r"data\.csv: missing column 'image'"):
        load_jsonl(path, "train")


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_a_bad_byte_costs_its_row_not_the_file(own_dir, suffix):
    """One non-UTF-8 byte (after the first 8 KB chunk, as in a real file) is a bad row named
    file:line under either policy; the other rows load."""
    path = own_dir / f"data{suffix}"
    pad = "x" * 9000  # pushes the bad byte past the decoder's first chunk
    if suffix == ".jsonl":
        rows = [json.dumps({"id": n, "image": f"images/{n}.png", "text": f"Finding {n}. {pad}", "split": "train"})
                for n in "abc"]
        data = "\n".join(rows).encode() + b"\n"
        data = data.replace(b"Finding c.", b"Finding c\xe9.")
        bad_line = 3
    else:
        lines = ["id,image,text,split"] + [f"{n},images/{n}.png,Finding {n}. {pad},train" for n in "abc"]
        data = ("\n".join(lines) + "\n").encode().replace(b"Finding b.", b"Finding b\xe9.")
        bad_line = 3
    path.write_bytes(data)
    skips = SkipReport("own")
    got = load_jsonl(path, "train", skips=skips, labels="none")
    assert len(got) == 2 and skips.total == 1
    assert f"{path}:{bad_line}" in skips.examples[0] and "byte 0xe9" in skips.examples[0]
    with pytest.raises(DataError, match=rf"data\{suffix}:{bad_line}: byte 0xe9 at column \d+ is not UTF-8 text"):
        load_jsonl(path, "train", policy="error", labels="none")


def test_report_text_must_be_a_string(own_dir):
    path = own_dir / "data.jsonl"
    rows = [{"id": "a", "image": "images/a.png", "text": ["Small", "effusion."], "split": "train"},
            {"id": "b", "image": "images/b.png", "findings": {"x": 1}, "split": "train"},
            {"id": "c", "image": 3, "text": "ok", "split": "train"},
            {"id": "d", "image": "images/d.png", "text": "Clear lungs.", "split": "train"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    skips = SkipReport("own")
    assert [r.id for r in load_jsonl(path, "train", skips=skips, labels="none")] == ["d"]
    assert dict(skips.counts) == {"'text' must be a string, got a JSON list": 1,
                                  "'findings' must be a string, got a JSON object": 1,
                                  "'image' must be a string, got a JSON number": 1}
    with pytest.raises(DataError, match=r"data\.jsonl:1: 'text' must be a string, got a JSON list"):
        load_jsonl(path, "train", policy="error", labels="none")


def test_vqa_rad_file_with_a_bad_byte_is_named(tmp_path):
    from medvill.data.vqa_rad import load_vqa_rad

    (tmp_path / "VQA_RAD Image Folder").mkdir()
    (tmp_path / "VQA_RAD Dataset Public.json").write_bytes(b'[{"question": "caf\xe9"}]')
    with pytest.raises(DataError, match=r"VQA_RAD Dataset Public\.json: byte 0xe9 at offset \d+ is not UTF-8"):
        load_vqa_rad(tmp_path, "train")


def test_own_jsonl_reads_synthetic_layout(tmp_path):
    from medvill.data.synthetic import generate_synthetic

    root = tmp_path / "synth"
    generate_synthetic(root, n=20, image_size=64)
    for split in ("train", "validate", "test"):
        mine = load_jsonl(root, split, policy="error", labeler=FakeLabeler())
        ref = sorted(read_jsonl_records(root / f"{split}.jsonl"), key=lambda r: r.id)
        assert [(r.id, r.text, r.image, r.split) for r in mine] == [(r.id, r.text, r.image, r.split) for r in ref]
        assert all(np.array_equal(a.labels, b.labels, equal_nan=True) for a, b in zip(mine, ref))


def test_default_labeler(own_dir):
    """labeler=None means medvill.labeler.label_reports (skipped checks when it is absent)."""
    path = own_dir / "x.jsonl"
    path.write_text(json.dumps({"image": "images/a.png", "text": "Large right pleural effusion.", "split": "train"})
                    + "\n")
    try:
        import medvill.labeler  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="medvill.labeler"):
            load_jsonl(path, "train")
        pytest.skip("medvill.labeler is not available")
    (rec,) = load_jsonl(path, "train")
    assert rec.labels.shape == (14,) and rec.labels[IDX["Pleural Effusion"]] == 1
