"""The report pool that retrieval ranks: a file of reports or a split of the retrieval model's data."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..checkpoint_files import training_root
from ..config import ConfigError
from ..fileio import parse_json_lines
from ..inference import Pipeline
from .settings import ServeConfig


@dataclass
class ReportPool:
    """Reports that retrieval ranks, with the positive observations of each, and where they
    came from (``source``, shown on the page)."""

    texts: list[str]
    findings: list[list[str]]
    source: str


def read_pool_file(path: str | Path) -> list[str]:
    """Reports of a pool file: ``.txt`` one report a line (blank lines skipped), ``.jsonl`` one
    object a line with a ``text`` or ``report`` string.  Errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"report pool file not found: {path}")
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    texts: list[str] = []
    if path.suffix.lower() == ".jsonl":
        for n, obj in parse_json_lines("\n".join(lines), path, ConfigError):
            text = obj.get("text", obj.get("report")) if isinstance(obj, dict) else None
            if not isinstance(text, str):
                raise ConfigError(f"{path}:{n}: expected an object with a 'text' or 'report' string")
            if text.strip():
                texts.append(text.strip())
    elif path.suffix.lower() == ".txt":
        texts = [line.strip() for line in lines if line.strip()]
    else:
        raise ConfigError(f"{path}: a report pool is a .txt file (one report a line) or .jsonl (a 'text' key a line)")
    if not texts:
        raise ConfigError(f"{path}: the report pool is empty")
    return texts


def _distinct(texts: Sequence[str], labels: Sequence[Any], limit: int) -> tuple[list[str], list[Any]]:
    seen: set[str] = set()
    out_t, out_l = [], []
    for t, lab in zip(texts, labels, strict=True):
        key = " ".join(t.lower().split())
        if key in seen:
            continue
        seen.add(key)
        out_t.append(t)
        out_l.append(lab)
        if len(out_t) == limit:
            break
    return out_t, out_l


def load_pool(config: ServeConfig, pipe: Pipeline) -> ReportPool:
    """The report pool: ``config.pool`` (labelled by the built-in labeler), else the distinct
    reports of the retrieval checkpoint's ``pool_split`` split with their data set labels."""
    from ..figures import label_names

    if config.pool is not None:
        from ..labeler import label_reports

        texts = read_pool_file(config.pool)
        texts, _ = _distinct(texts, texts, config.pool_size)
        found = label_reports(texts)
        return ReportPool(texts, [label_names(row) for row in found],
                          f"{config.pool} ({len(texts)} distinct reports; findings by the built-in labeler)")
    from ..figures import checkpoint_records

    ckpt = pipe.checkpoint_path("retrieval")
    try:
        records = checkpoint_records(ckpt, config.pool_split)
    except FileNotFoundError:
        root = training_root(ckpt)  # a relative root found from the checkpoint's parent folders
        if root is None:
            raise
        records = checkpoint_records(ckpt, config.pool_split, root=root)
    texts, labels = _distinct([r.text for r in records], [r.labels for r in records], config.pool_size)
    return ReportPool(texts, [label_names(row) for row in labels],
                      f"the {config.pool_split} split of the retrieval model's training data ({len(texts)} distinct "
                      f"reports of {len(records)}; findings from the data set's labels)")

