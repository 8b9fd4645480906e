"""The package's layers (docs/architecture.md): each part of medvill imports only the parts
below it, so the flow data -> model -> task -> loop -> recipe -> command stays one-way."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "medvill"

#: what each part may import (besides itself); a module imported inside a function counts too
ALLOWED: dict[str, set[str]] = {
    "fileio": set(),
    "labels": set(),
    "distributed": set(),
    "workers": set(),
    "config": {"fileio", "data.choices"},
    "checkpoint_files": {"config", "fileio"},
    "tokenization": {"fileio"},
    "metrics": {"labels"},
    "labeler": {"labels", "fileio"},
    "data": {"config", "fileio", "checkpoint_files", "labels", "labeler", "tokenization", "workers"},
    "modeling": {"config", "fileio", "checkpoint_files"},
    "generation": {"config", "modeling"},
    "tasks": {"config", "fileio", "labels", "checkpoint_files", "distributed", "tokenization", "metrics", "labeler",
              "data", "modeling", "generation"},
    "train": {"config", "fileio", "checkpoint_files", "modeling", "tasks.base"},
    "inference": {"config", "fileio", "labels", "checkpoint_files", "tokenization", "data", "modeling", "generation",
                  "tasks"},
    "figures": {"config", "fileio", "labels", "checkpoint_files", "metrics", "data", "tasks", "inference"},
    "recipes": {"config", "fileio", "labels", "checkpoint_files", "workers", "tokenization", "metrics", "data",
                "modeling", "tasks", "train", "inference", "figures"},
    "serve": {"config", "fileio", "checkpoint_files", "labeler", "data", "inference", "figures"},
    "cli": {"config", "data", "labeler", "recipes", "inference", "figures", "serve"},
    # the 0.1 import paths, kept as aliases
    "pipeline": {"data", "recipes"}, "finetune": {"recipes"}, "evaluate": {"recipes"},
    "__init__": {"inference"}, "__main__": {"cli"},
}


def _imports(path: Path) -> set[tuple[str, ...]]:
    """Every medvill module ``path`` imports, as a tuple of names below ``medvill``."""
    rel = path.relative_to(SRC).with_suffix("").parts
    package = rel[:-1]  # the package a relative import starts from (a package's __init__ too)
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - (node.level - 1)]
                target = (*base, *(node.module.split(".") if node.module else ()))
                names = [a.name for a in node.names] if not node.module else []
                found |= {(*target, n) for n in names} or {target}
            elif node.module and node.module.split(".")[0] == "medvill":
                found.add(tuple(node.module.split(".")[1:]))
        elif isinstance(node, ast.Import):
            found |= {tuple(a.name.split(".")[1:]) for a in node.names if a.name.split(".")[0] == "medvill"}
    return {t for t in found if t}


def _allowed(part: str, target: tuple[str, ...]) -> bool:
    if target[0] == part:
        return True
    return any(rule == target[0] or rule == ".".join(target[:len(rule.split("."))])
               for rule in ALLOWED[part])


def test_every_part_imports_only_the_parts_below_it():
    wrong = []
    for path in sorted(SRC.rglob("*.py")):
        part = path.relative_to(SRC).with_suffix("").parts[0]
        assert part in ALLOWED, f"{part}: a new part of medvill; give it its place in ALLOWED and docs/architecture.md"
        wrong += [f"{path.relative_to(SRC)} imports medvill.{'.'.join(t)}" for t in sorted(_imports(path))
                  if not _allowed(part, t)]
    assert not wrong, "\n".join(wrong)


def test_the_rule_sees_a_wrong_import(tmp_path):
    """The check itself: an upward import is found, relative or absolute."""
    assert not _allowed("modeling", ("tasks", "base")) and not _allowed("data", ("recipes", "finetune"))
    assert _allowed("train", ("tasks", "base")) and not _allowed("train", ("tasks", "vqa"))
    assert _allowed("config", ("data", "choices")) and not _allowed("config", ("data", "registry"))
    probe = SRC / "modeling" / "heads.py"
    assert ("config",) in _imports(probe) or any(t[0] == "config" for t in _imports(probe))


def test_the_documented_jsonl_example_loads(tmp_path):
    """docs/architecture.md's data set without code: its JSON lines load as written, the
    labeler fills the labels a row does not give."""
    import re

    import numpy as np
    from PIL import Image

    from medvill.data.jsonl import load_jsonl
    from medvill.labels import CHEXPERT_OBSERVATIONS

    doc = (SRC.parents[1] / "docs" / "architecture.md").read_text()
    (block,) = re.findall(r"```jsonl\n(.*?)```", doc, re.DOTALL)
    (tmp_path / "pairs.jsonl").write_text(block)
    (tmp_path / "images").mkdir()
    for name in ("p1", "p2"):
        Image.fromarray(np.full((16, 16), 90, dtype=np.uint8)).save(tmp_path / "images" / f"{name}.png")
    p1, p2 = load_jsonl(tmp_path / "pairs.jsonl", "train", policy="error")
    assert (p1.id, p2.id) == ("p1", "p2") and p1.image == tmp_path / "images" / "p1.png"
    assert p1.labels[CHEXPERT_OBSERVATIONS.index("Pleural Effusion")] == 1  # from the labeler
    assert p2.labels[CHEXPERT_OBSERVATIONS.index("No Finding")] == 1  # from the row
