"""The parser-free CheXpert labeler: original fixtures, rule conventions, Open-I agreement, I/O."""

from __future__ import annotations

import csv
import json
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

from medvill.labeler import CheXpertLabeler, clean_report, get_labeler, label_report, label_reports, split_sentences
from medvill.labeler.io import LabelInputError, label_file, read_reports
from medvill.labels import CHEXPERT_OBSERVATIONS

SHARED = Path(__file__).resolve().parents[2] / "shared"
CHEXPERT_DIR = SHARED / "data" / "chexpert_labeler"
OPENI_DIR = SHARED / "data" / "openi" / "medvill_split"
needs_chexpert = pytest.mark.skipif(not CHEXPERT_DIR.is_dir(), reason="shared/data/chexpert_labeler not available")
needs_openi = pytest.mark.skipif(not OPENI_DIR.is_dir(), reason="shared/data/openi/medvill_split not available")

# measured on the 3,547 Open-I reports of the MedViLL split (see benchmarks/labeler_openi.py)
OPENI_MICRO_F1_MEASURED = 0.977
OPENI_MICRO_F1_FLOOR = 0.965


def labels(text: str) -> dict[str, float]:
    """The non-blank labels of one report, by observation name."""
    vec = label_report(text)
    return {name: float(v) for name, v in zip(CHEXPERT_OBSERVATIONS, vec, strict=True) if not np.isnan(v)}


# ---------------------------------------------------------------------------- rule files


def test_rule_files_are_package_data():
    rules = resources.files("medvill.labeler").joinpath("rules")
    assert rules.joinpath("LICENSE").read_text().startswith("MIT License")
    assert "chexpert-labeler" in rules.joinpath("NOTICE.md").read_text()
    for name in ("pre_negation_uncertainty", "negation", "post_negation_uncertainty"):
        assert rules.joinpath("patterns", f"{name}.txt").read_text().strip()
    labeler = get_labeler()
    assert set(labeler.mention_phrases) == set(CHEXPERT_OBSERVATIONS)
    assert "pleural effusion" not in labeler.mention_phrases["Pleural Effusion"]  # "effusion" covers it
    assert " line " in labeler.mention_phrases["Support Devices"]  # "_line_": "_" is a space
    assert "pericardial effusion" in labeler.unmention_phrases["Pleural Effusion"]
    assert "over the heart" in labeler.unmention_phrases["Cardiomegaly"]  # built in code, as the original does


@needs_chexpert
def test_shipped_rule_files_match_the_shared_copy():
    rules = resources.files("medvill.labeler").joinpath("rules")
    for src in sorted(CHEXPERT_DIR.glob("phrases/*/*.txt")) + sorted(CHEXPERT_DIR.glob("patterns/*.txt")):
        rel = src.relative_to(CHEXPERT_DIR)
        assert rules.joinpath(*rel.parts).read_bytes() == src.read_bytes(), rel


# ---------------------------------------------------------------------------- original fixtures


@needs_chexpert
def test_exact_match_with_the_original_on_the_sample_reports():
    with (CHEXPERT_DIR / "labeled_reports.csv").open(newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    header, body = rows[0], rows[1:]
    assert header[1:] == list(CHEXPERT_OBSERVATIONS)
    with (CHEXPERT_DIR / "sample_reports.csv").open(newline="", encoding="utf-8") as fh:
        samples = [r[0] for r in csv.reader(fh) if r]
    assert samples == [r[0] for r in body]
    expected = np.array([[float(x) if x else np.nan for x in r[1:]] for r in body], dtype=np.float32)
    got = label_reports(samples)
    assert got.shape == (4, 14) and got.dtype == np.float32
    np.testing.assert_array_equal(got, expected)  # every column, blanks (nan) included


def test_cleaning_and_sentence_splitting_follow_the_original():
    assert clean_report("Heart  size NORMAL..Atelectasis/scarring and/or effusion,noted") == (
        "heart size normal. atelectasis or scarring or effusion, noted"
    )
    sentences = [s for _, s in split_sentences(clean_report("1. Left effusion. 2. No pneumothorax vs. edema."))]
    assert sentences == ["1. left effusion.", "2. no pneumothorax vs. edema."]


# ---------------------------------------------------------------------------- conventions

CASES = [
    # negation lists
    ("No pneumothorax, pleural effusion, or focal consolidation.",
     {"No Finding": 1, "Pneumothorax": 0, "Pleural Effusion": 0, "Consolidation": 0}),
    ("No evidence of pneumothorax or large pleural effusion.",
     {"No Finding": 1, "Pneumothorax": 0, "Pleural Effusion": 0}),
    ("Negative for pneumonia.", {"No Finding": 1, "Pneumonia": 0}),
    ("The lungs are free of focal consolidation.", {"No Finding": 1, "Consolidation": 0}),
    ("There is no focal air space opacity to suggest a pneumonia.",
     {"No Finding": 1, "Lung Opacity": 0, "Pneumonia": 0}),
    # predicates after the mention
    ("The heart is normal in size.", {"No Finding": 1, "Cardiomegaly": 0}),
    ("Heart size within normal limits.", {"No Finding": 1, "Cardiomegaly": 0}),
    ("The left pleural effusion has resolved.", {"No Finding": 1, "Pleural Effusion": 0}),
    ("The endotracheal tube has been removed.", {"No Finding": 1, "Support Devices": 0}),
    # ... and what the original does NOT treat as negation
    ("No change in cardiomegaly.", {"Cardiomegaly": 1}),
    ("Resolved interstitial edema.", {"Edema": 1}),
    ("The previously seen mass is not seen.", {"Lung Lesion": 1}),
    # uncertainty; pre-negation uncertainty beats negation
    ("Cannot exclude pneumonia.", {"Pneumonia": -1}),
    ("Pneumonia cannot be excluded.", {"Pneumonia": -1}),
    ("No new consolidation.", {"Consolidation": -1}),
    ("Possible right lower lobe pneumonia.", {"Pneumonia": -1}),
    ("Opacity may represent atelectasis or pneumonia.", {"Lung Opacity": 1, "Atelectasis": -1, "Pneumonia": -1}),
    ("Atelectasis versus infiltrate.", {"Atelectasis": -1, "Lung Opacity": -1}),
    ("Concerning for pneumonia.", {"Pneumonia": -1}),
    ("Pulmonary vascular congestion.", {"Edema": -1}),
    ("Stable cardiomediastinal silhouette.", {"Enlarged Cardiomediastinum": -1}),
    ("Stable cardiomegaly.", {"Cardiomegaly": 1}),
    ("Findings likely represent atelectasis.", {"Atelectasis": 1}),  # "likely" is not a CheXpert cue
    # aggregation across sentences: positive beats uncertain beats negative
    ("Possible pneumonia. Right lower lobe pneumonia is present.", {"Pneumonia": 1}),
    ("Possible effusion. No effusion on the left.", {"Pleural Effusion": -1}),
    ("Left effusion. No right effusion.", {"Pleural Effusion": 1}),
    # unmention phrases
    ("Massive cardiomegaly.", {"Cardiomegaly": 1}),  # "massive" is not a mass
    ("Small pericardial effusion.", {"No Finding": 1}),  # not a pleural effusion
    ("Calcified nodule in the left upper lobe.", {}),  # no Lung Lesion; "calcifi" still blocks No Finding
    ("Opacity projecting over the heart.", {"Lung Opacity": 1}),  # positional unmention for Cardiomegaly
    ("Mild pleural scarring at the apex.", {"Pleural Other": 1}),  # "pleural scar": not a Lung Opacity "scar"
    # chf / heart failure -> uncertain cardiomegaly, and their own Edema label
    ("Findings consistent with CHF.", {"Edema": 1, "Cardiomegaly": -1}),
    ("Mild pulmonary edema, likely due to heart failure.", {"Edema": 1, "Cardiomegaly": -1}),
    ("Cardiomegaly and CHF.", {"Edema": 1, "Cardiomegaly": 1}),
    ("No CHF.", {"No Finding": 1, "Edema": 0}),
    # No Finding: only when nothing but Support Devices is positive or uncertain
    ("Lungs are clear. No acute disease.", {"No Finding": 1}),
    ("Pacemaker in place. Lungs are clear.", {"No Finding": 1, "Support Devices": 1}),
    ("Heart size normal. Mild scoliosis.", {"Cardiomegaly": 0}),  # a no_finding phrase is a finding
    ("Possible pneumonia.", {"Pneumonia": -1}),
    # substring matching, as the original's re.finditer(phrase, sentence)
    ("Platelike atelectasis at the left base.", {"Atelectasis": 1, "Support Devices": 1}),
    # a parser quirk of the original, reproduced
    ("No acute, displaced rib fractures.", {"Fracture": 1}),
    ("No displaced rib fractures are seen.", {"No Finding": 1, "Fracture": 0}),
]


@pytest.mark.parametrize(("text", "expected"), CASES, ids=[c[0][:40] for c in CASES])
def test_conventions(text, expected):
    assert labels(text) == {k: float(v) for k, v in expected.items()}


def test_the_original_aggregator_quirk_negative_uncertain_positive_gives_uncertain():
    text = "Small left effusion. No right effusion. Possible effusion at the right base."
    kinds = {m.label for m in get_labeler().mentions(text) if m.observation == "Pleural Effusion"}
    assert kinds == {1.0, 0.0, -1.0}
    assert labels(text)["Pleural Effusion"] == -1.0


def test_parser_quirks_can_be_switched_off():
    plain = CheXpertLabeler(parser_quirks=False)
    vec = plain.label("No acute, displaced rib fractures.")
    assert vec[CHEXPERT_OBSERVATIONS.index("Fracture")] == 0.0


def test_core_keeps_the_public_names():
    """``medvill.labeler.core`` documents the conventions and re-exports the names that live in
    the stage modules (phrases, sentences, mentions, labeler)."""
    import medvill.labeler as pkg
    from medvill.labeler import core, labeler, mentions, phrases, sentences

    for name in core.__all__:
        assert hasattr(core, name), name
    assert core.CheXpertLabeler is labeler.CheXpertLabeler is pkg.CheXpertLabeler
    assert core.Mention is mentions.Mention
    assert core.split_sentences is sentences.split_sentences and core.load_phrases is phrases.load_phrases
    assert (core.POSITIVE, core.NEGATIVE, core.UNCERTAIN) == (1.0, 0.0, -1.0)


def test_scope_rules_mark_the_expected_tokens():
    """The cue families of ``scopes`` on one sentence each: negation, pre-negation and
    post-negation uncertainty, stability (only heart / mediastinal words)."""
    from medvill.labeler.scopes import _mark_scopes
    from medvill.labeler.sentences import _Sentence

    def marked(text: str) -> dict[str, list[str]]:
        s = _Sentence(text)
        _mark_scopes(s)
        return {
            name: [t for t, m in zip(s.tokens, getattr(s, name)) if m] for name in ("neg", "pre_unc", "post_unc")
        }

    assert marked("no pleural effusion or pneumothorax.") == {
        "neg": ["pleural", "effusion", "pneumothorax"],  # "no X or Y"
        "pre_unc": [],
        "post_unc": ["pleural", "effusion", "pneumothorax"],  # both sides of "or" (negation wins)
    }
    assert marked("pneumonia cannot be excluded.") == {"neg": [], "pre_unc": ["pneumonia"], "post_unc": []}
    assert marked("heart size is within normal limits.")["neg"] == ["heart", "size"]
    assert marked("may represent atelectasis.")["post_unc"] == ["atelectasis"]
    # "stable X" reaches the head only, and only a heart / mediastinal word
    assert marked("stable cardiomediastinal silhouette and cardiomegaly.")["post_unc"] == ["silhouette"]


@pytest.mark.parametrize("text", ["", "   \n ", None, float("nan")])
def test_empty_report_is_no_finding_only(text):
    vec = get_labeler().label(text)
    assert vec[0] == 1.0 and np.isnan(vec[1:]).all()


def test_label_reports_shape_and_values():
    out = label_reports(["The heart is enlarged.", "", "No effusion.", "Possible edema."])
    assert out.shape == (4, 14) and out.dtype == np.float32
    assert set(np.unique(out[~np.isnan(out)])) <= {1.0, 0.0, -1.0}
    with pytest.raises(TypeError):
        label_reports("a single string")


def test_mentions_report_their_spans():
    ms = get_labeler().mentions("There is a small left pleural effusion.")
    effusion = [m for m in ms if m.observation == "Pleural Effusion"]
    assert len(effusion) == 1 and effusion[0].text == "effusion" and effusion[0].label == 1.0


# ---------------------------------------------------------------------------- Open-I agreement


def _parse_label_field(value: str) -> frozenset[str]:
    return frozenset(n for n in (p.strip().strip("'\"").strip() for p in value.split(",")) if n)


@needs_openi
def test_agreement_with_the_original_on_openi():
    rows = []
    for split in ("Train", "Valid", "Test"):
        with (OPENI_DIR / f"{split}.jsonl").open(encoding="utf-8") as fh:
            rows += [json.loads(line) for line in fh if line.strip()]
    assert len(rows) == 3547
    gold = [_parse_label_field(r["label"]) for r in rows]
    assert all(g <= set(CHEXPERT_OBSERVATIONS) for g in gold)
    matrix = label_reports([r["text"] for r in rows])
    pred = [frozenset(CHEXPERT_OBSERVATIONS[j] for j in np.flatnonzero(v == 1.0)) for v in matrix]
    tp = sum(len(g & p) for g, p in zip(gold, pred, strict=True))
    fp = sum(len(p - g) for g, p in zip(gold, pred, strict=True))
    fn = sum(len(g - p) for g, p in zip(gold, pred, strict=True))
    micro_f1 = 2 * tp / (2 * tp + fp + fn)
    assert micro_f1 >= OPENI_MICRO_F1_FLOOR, f"micro F1 {micro_f1:.4f} (measured {OPENI_MICRO_F1_MEASURED})"
    exact = np.mean([g == p for g, p in zip(gold, pred, strict=True)])
    assert exact >= 0.94


# ---------------------------------------------------------------------------- label_file


def _read_output(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_label_file_csv_with_report_column(tmp_path):
    src = tmp_path / "in.csv"
    with src.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["study", "Findings"])
        w.writerow(["s1", "The heart is enlarged.\nSmall left effusion, no pneumothorax."])
        w.writerow(["s2", ""])
        w.writerow(["s3", "Lungs are clear."])
    out = tmp_path / "out" / "labels.csv"
    summary = label_file(src, out)
    assert (summary.n, summary.empty, summary.kind) == (3, 1, "csv")
    assert summary.seconds >= 0 and summary.positives["Cardiomegaly"] == 1
    rows = _read_output(out)
    assert list(rows[0]) == ["id", "Reports", *CHEXPERT_OBSERVATIONS]
    assert [r["id"] for r in rows] == ["0", "1", "2"]
    assert rows[0]["Reports"].startswith("The heart is enlarged.\n")
    assert (rows[0]["Cardiomegaly"], rows[0]["Pleural Effusion"], rows[0]["Pneumothorax"]) == ("1.0", "1.0", "0.0")
    assert rows[0]["No Finding"] == "" and rows[0]["Edema"] == ""
    assert rows[1]["No Finding"] == "1.0" and all(rows[1][c] == "" for c in CHEXPERT_OBSERVATIONS[1:])
    assert rows[2]["No Finding"] == "1.0"
    # an explicit column wins, case-insensitively
    summary = label_file(src, tmp_path / "again.csv", text_column="findings")
    assert summary.n == 3


@needs_chexpert
def test_label_file_headerless_csv_reproduces_labeled_reports(tmp_path):
    out = tmp_path / "labeled.csv"
    summary = label_file(CHEXPERT_DIR / "sample_reports.csv", out)
    assert summary.n == 4 and summary.empty == 0
    with (CHEXPERT_DIR / "labeled_reports.csv").open(newline="", encoding="utf-8") as fh:
        expected = list(csv.reader(fh))
    with out.open(newline="", encoding="utf-8") as fh:
        got = list(csv.reader(fh))
    assert [r[1:] for r in got] == expected  # same layout and values after the id column
    assert [r[0] for r in got[1:]] == ["0", "1", "2", "3"]


def test_label_file_txt_folder_and_single_txt(tmp_path):
    folder = tmp_path / "reports"
    (folder / "p10").mkdir(parents=True)
    (folder / "b.txt").write_text("No acute cardiopulmonary process.", encoding="utf-8")
    (folder / "p10" / "a.txt").write_text("FINDINGS: Right pneumothorax.", encoding="utf-8")
    (folder / "notes.md").write_text("ignored", encoding="utf-8")
    summary = label_file(folder, tmp_path / "out.csv")
    assert (summary.n, summary.kind) == (2, "txt-folder")
    rows = _read_output(tmp_path / "out.csv")
    assert [r["id"] for r in rows] == ["b.txt", "p10/a.txt"]
    assert rows[0]["No Finding"] == "1.0" and rows[1]["Pneumothorax"] == "1.0"
    summary = label_file(folder / "p10" / "a.txt", tmp_path / "one.csv")
    assert (summary.n, summary.kind) == (1, "txt")
    assert _read_output(tmp_path / "one.csv")[0]["id"] == "a.txt"


def test_label_file_jsonl(tmp_path):
    src = tmp_path / "reports.jsonl"
    src.write_text(
        json.dumps({"id": "r1", "text": "Possible pneumonia."}) + "\n\n"
        + json.dumps({"report": "No effusion."}) + "\n",
        encoding="utf-8",
    )
    summary = label_file(src, tmp_path / "out.csv")
    assert (summary.n, summary.kind) == (2, "jsonl")
    rows = _read_output(tmp_path / "out.csv")
    assert [r["id"] for r in rows] == ["r1", "3"]  # the id field, else the line number
    assert rows[0]["Pneumonia"] == "-1.0" and rows[1]["Pleural Effusion"] == "0.0"


def test_label_file_errors_name_the_file_and_line(tmp_path):
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text('{"text": "ok"}\n{"text": oops}\n', encoding="utf-8")
    with pytest.raises(LabelInputError, match=r"bad\.jsonl:2: not valid JSON"):
        label_file(bad_json, tmp_path / "o.csv")
    no_field = tmp_path / "nofield.jsonl"
    no_field.write_text('{"body": "x"}\n', encoding="utf-8")
    with pytest.raises(LabelInputError, match=r"nofield\.jsonl:1: no report field"):
        read_reports(no_field)
    no_col = tmp_path / "cols.csv"
    no_col.write_text("a,b\n1,2\n", encoding="utf-8")
    with pytest.raises(LabelInputError, match=r"cols\.csv: no report column found \(columns: a, b\)"):
        label_file(no_col, tmp_path / "o.csv")
    with pytest.raises(LabelInputError, match=r"cols\.csv: no column 'Impression'"):
        label_file(no_col, tmp_path / "o.csv", text_column="Impression")
    binary = tmp_path / "latin1.txt"
    binary.write_bytes(b"caf\xe9 \xff")
    with pytest.raises(LabelInputError, match=r"latin1\.txt: not UTF-8"):
        label_file(binary, tmp_path / "o.csv")
    with pytest.raises(LabelInputError, match=r"missing\.csv: no such file"):
        label_file(tmp_path / "missing.csv", tmp_path / "o.csv")
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    with pytest.raises(LabelInputError, match=r"empty: folder has no \.txt"):
        label_file(empty_dir, tmp_path / "o.csv")
    assert issubclass(LabelInputError, ValueError)
