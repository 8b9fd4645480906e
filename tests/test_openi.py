"""Open-I loaders (the real reports in ../shared/data/openi when present): XML, CSV, the R2Gen
annotation, MedViLL's split."""

from __future__ import annotations

import csv
import gzip
import json
import tarfile
from collections import Counter

import numpy as np
import pytest
from _loader_data import IDX, OPENI, FakeLabeler, need, tiny_png
from PIL import Image

from medvill.data.common import DataError, hash_split
from medvill.data.medvill_jsonl import load_medvill_jsonl
from medvill.data.openi import detect_layout, load_openi
from medvill.data.openi_loaders import load_openi_csv, load_openi_xml
from medvill.data.openi_r2gen import load_r2gen
from medvill.data.openi_reports import mesh_to_text, read_openi_xml
from medvill.data.openi_views import dicom_view, image_key
from medvill.data.records import SkipReport

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
    from medvill.data.openi_views import read_image_views

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
    impressions = {r.id: r.text for r in load_openi(OPENI, "validate", labels="none", check_images=False,
                                                    section="impression")}
    r = next(r for r in per["validate"] if r.impression and r.impression != r.text)
    assert impressions[r.id] == r.impression


def test_data_section_reaches_the_openi_loader(monkeypatch, tmp_path):
    """``data.section`` was dropped on the way to Open-I's loader (the paper's "longer" always)."""
    import medvill.data.openi as openi
    from medvill.data.registry import load_records

    seen = {}
    monkeypatch.setattr(openi, "load_openi", lambda root, split, **kw: seen.update(kw) or [])
    load_records("openi", tmp_path, "test", section="impression")
    assert seen["section"] == "impression"


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
    with pytest.raises(ValueError, match="data.section=impression: Open-I's r2gen layout holds one report text"):
        load_openi(tmp_path, "test", labels="none", section="impression")
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
