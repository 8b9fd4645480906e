"""MIMIC-CXR-JPG loader (fixtures built from the official schema) and MedViLL's MIMIC-style JSONL split files."""

from __future__ import annotations

import csv
import gzip
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from _loader_data import IDX, MIMIC_EXAMPLE, FakeLabeler, need, tiny_jpg

from medvill.data.common import DataError
from medvill.data.label_values import parse_positive_labels
from medvill.data.medvill_jsonl import load_medvill_jsonl
from medvill.data.mimic_cxr import load_mimic_cxr
from medvill.data.records import SkipReport
from medvill.data.sections import extract_sections, report_text

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
