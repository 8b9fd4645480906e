"""Shared loader helpers: CSV reading, split names, label values, hash splits."""

from __future__ import annotations

import gzip
from collections import Counter

import numpy as np
import pytest

from medvill.data.common import DataError, RowPolicy, hash_split, normalize_split, parse_label_value, read_csv
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
