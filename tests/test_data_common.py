"""Shared loader helpers: CSV reading, split names, label values, hash splits."""

from __future__ import annotations

import gzip
from collections import Counter

import numpy as np
import pytest

from medvill.data.common import DataError, RowPolicy, hash_split, normalize_split, read_csv
from medvill.data.label_values import label_vector, parse_label_value
from medvill.data.records import SkipReport


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


def test_label_vector_words_its_errors_for_the_caller():
    vec = label_vector({"Edema": "1.0", "Cardiomegaly": -1, "Pneumonia": ""})
    assert vec.shape == (14,) and np.isnan(vec).sum() == 12
    with pytest.raises(ValueError, match=r"^unknown CheXpert observation 'Heart Size'$"):
        label_vector({"Heart Size": 1})
    with pytest.raises(ValueError, match=r"^label 'Edema' has value 2; expected 1, 0, -1 or blank$"):
        label_vector({"Edema": 2})
    with pytest.raises(ValueError, match=r"^column 'Edema' has value '2.0'; expected 1.0, 0.0, -1.0 or blank$"):
        label_vector({"Edema": "2.0"}, field="column", expected="1.0, 0.0, -1.0")


def test_choices_are_defined_once_and_moved_names_stay_importable():
    from medvill.data import choices, common, label_values, medvill_jsonl, mimic_cxr, openi, records, registry
    from medvill.data import sections as sections_mod

    assert registry.SPLITS is common.SPLITS is choices.SPLITS
    assert mimic_cxr.SECTIONS is choices.SECTIONS
    with pytest.raises(ValueError, match="use longer, findings, impression or both"):
        records.choose_text("a", "b", "middle")
    with pytest.raises(ValueError, match="unknown split 'val'; choose one of train, validate, test"):
        registry.load_records("jsonl", None, "val")
    # the helpers that lived in mimic_cxr.py / common.py before they got their own modules
    assert mimic_cxr.extract_sections is sections_mod.extract_sections
    assert mimic_cxr.report_text is sections_mod.report_text
    assert mimic_cxr.load_medvill_jsonl is openi.load_medvill_jsonl is medvill_jsonl.load_medvill_jsonl
    assert mimic_cxr.parse_positive_labels is openi.parse_positive_labels is label_values.parse_positive_labels
    assert common.parse_label_value is label_values.parse_label_value
    assert common.blank_labels is label_values.blank_labels
    assert all(hasattr(openi, name) for name in openi.__all__)
