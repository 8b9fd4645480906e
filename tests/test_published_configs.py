"""The published fine-tuning settings (``configs/finetune_*.yaml``, one a task and data set).

* every YAML under ``configs/`` loads through the loader the CLI uses (``load_config``);
* each published file is the task and data set it claims (VQA-RAD CHEST really is chest-only);
* the settings the paper gives have the paper's values (the facts below cite their section,
  numbered as ``src/medvill/tasks`` cites them; source: ``../shared/docs/paper-notes.md``);
* every setting line says where it comes from (``# paper: ...`` or ``# ours: ...``);
* the commands in the files' headers and in ``docs/reproduce-mimic.md`` build the same run as
  the file and evaluate on the same data (data set, root, organ, section);
* with ``../shared/data/vqa_rad`` present, the CHEST config's examples are chest questions only.

The checks are functions returning the problems they find; ``test_the_checks_catch_*`` feeds
them broken inputs, so each test is shown able to fail.
"""

from __future__ import annotations

import inspect
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml
from _loader_data import VQA_RAD, need

from medvill.cli.options import cli_overrides
from medvill.cli.training_commands import evaluate as evaluate_command
from medvill.cli.training_commands import finetune as finetune_command
from medvill.config import RunConfig, load_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
GUIDE = ROOT / "docs" / "reproduce-mimic.md"

#: file -> (task, data.dataset, data.vqa_organ)
PUBLISHED = {
    "finetune_mimic_classification.yaml": ("classification", "mimic", "ALL"),
    "finetune_mimic_retrieval.yaml": ("retrieval", "mimic", "ALL"),
    "finetune_mimic_generation.yaml": ("generation", "mimic", "ALL"),
    "finetune_openi_classification.yaml": ("classification", "openi", "ALL"),
    "finetune_openi_retrieval.yaml": ("retrieval", "openi", "ALL"),
    "finetune_openi_generation.yaml": ("generation", "openi", "ALL"),
    "finetune_vqa_rad_all.yaml": ("vqa", "vqa_rad", "ALL"),
    "finetune_vqa_rad_chest.yaml": ("vqa", "vqa_rad", "CHEST"),
}
EVERY = tuple(PUBLISHED)
MIMIC = tuple(f for f, (_, ds, _) in PUBLISHED.items() if ds == "mimic")
OPENI = tuple(f for f, (_, ds, _) in PUBLISHED.items() if ds == "openi")
VQA = tuple(f for f, (_, ds, _) in PUBLISHED.items() if ds == "vqa_rad")
GENERATION = tuple(f for f, (task, _, _) in PUBLISHED.items() if task == "generation")
CLASSIFICATION = tuple(f for f, (task, _, _) in PUBLISHED.items() if task == "classification")

#: (files, key, the paper's value, stated in the YAML itself, where the paper says it)
PAPER_FACTS: list[tuple[tuple[str, ...], str, Any, bool, str]] = [
    (EVERY, "model.backbone", "resnet50", True, "III-A: ImageNet ResNet-50"),
    (EVERY, "model.image_size", 512, True, "III-A / data: images resized to 512 x 512"),
    (EVERY, "model.num_visual_tokens", 256, False, "III-A: K = 16 x 16 = 256; every downstream task uses all"),
    (EVERY, "model.max_text_len", 253, True, "III-A: reports truncated / padded to 253 tokens"),
    (EVERY, "model.hidden_size", 768, False, "III-A: BERT-base, hidden 768"),
    (EVERY, "model.num_hidden_layers", 12, False, "III-A: BERT-base, 12 layers"),
    (EVERY, "model.num_attention_heads", 12, False, "III-A: BERT-base, 12 heads"),
    (EVERY, "model.hidden_dropout_prob", 0.1, False, "III-A: BERT-base, dropout 0.1"),
    (EVERY, "init_text", "bert-base-uncased", True, "III-A: the transformer is BERT-base"),
    (MIMIC, "data.dataset", "mimic", True, "IV, data sets: MIMIC-CXR"),
    (MIMIC, "data.section", "longer", True, "IV, data sets: the longer of Findings and Impression"),
    (OPENI, "data.dataset", "openi", True, "IV, data sets: Open-I only for transfer from MIMIC-CXR"),
    (VQA, "data.dataset", "vqa_rad", True, "IV, data sets: VQA-RAD"),
    (("finetune_vqa_rad_all.yaml",), "data.vqa_organ", "ALL", True, "IV-C: fine-tuned on ALL images"),
    (("finetune_vqa_rad_chest.yaml",), "data.vqa_organ", "CHEST", True, "IV-C: and on CHEST only"),
    (GENERATION, "finetune.generation_objective", "mlm", True, "IV-D: fine-tuned like MLM, S2S mask"),
    (GENERATION, "pretrain.mlm_prob", 0.15, True, "III-B: 15 % of the text tokens"),
    (GENERATION, "pretrain.mlm_mask_frac", 0.8, True, "III-B: 80 % [MASK]"),
    (GENERATION, "pretrain.mlm_random_frac", 0.1, True, "III-B: 10 % random, 10 % unchanged"),
    (CLASSIFICATION, "finetune.image_only_prob", 0.0, True, "IV-A: classifies the image-report pair"),
]
PAPER_CASES = [(name, key, value, stated, why) for files, key, value, stated, why in PAPER_FACTS for name in files]

EVAL_CANDIDATES = 100  # paper IV-B: each retrieval trial ranks 100 image-report pairs
BOOTSTRAP = "30"  # paper IV (protocol): 30 random bootstrap experiments
FROM_PRETRAINING = "runs/pretrain-bar"  # the guide's BAR pre-training output


def published(name: str) -> Path:
    return CONFIGS / name


def get(cfg: RunConfig, key: str) -> Any:
    obj: Any = cfg
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


# ---------------------------------------------------------------------------------------------
# the checks (each returns the problems it finds)
# ---------------------------------------------------------------------------------------------

SETTING = re.compile(r"^(\s*)([A-Za-z_][\w]*):(.*)$")
SOURCE = re.compile(r"#\s*(paper|ours):\s*(\S.*)$")
SECTION = re.compile(r"\b(III|IV)(-[A-D])?\b")


def source_comment_problems(text: str) -> list[str]:
    """Every setting line (``key: value``, nested or not) carries ``# paper: ...`` (citing a
    section) or ``# ours: ...``; section headers (``data:``) need none.  The lines checked must
    be every setting YAML reads from the text."""
    problems, checked = [], 0
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        m = SETTING.match(line)
        if m is None:
            problems.append(f"line {number}: not a 'key: value' line: {line!r}")
            continue
        value, _, comment = m.group(3).partition(" #")
        if not value.strip():
            continue  # a section header
        checked += 1
        if value.strip()[:1] in "{[":
            problems.append(f"line {number}: {m.group(2)}: one setting a line, no flow mappings or lists")
        src = SOURCE.search("#" + comment) if comment else None
        if src is None:
            problems.append(f"line {number}: {m.group(2)} has no '# paper:' / '# ours:' comment")
        elif src.group(1) == "paper" and not SECTION.search(src.group(2)):
            problems.append(f"line {number}: {m.group(2)}: 'paper:' cites no section (III-A, IV-C, ...)")
    leaves = _count_leaves(yaml.safe_load(text) or {})
    if leaves != checked:
        problems.append(f"YAML holds {leaves} settings but {checked} setting lines were checked")
    return problems


def _count_leaves(data: Any) -> int:
    return sum(_count_leaves(v) for v in data.values()) if isinstance(data, dict) else 1


def parse_command(line: str) -> tuple[str, str, dict[str, str], list[str]]:
    """``(command, task, options, --set values)`` of a ``medvill finetune|evaluate ...`` line."""
    argv = shlex.split(line)
    assert argv[0] == "medvill", line
    command, task, rest = argv[1], argv[2], argv[3:]
    opts: dict[str, str] = {}
    sets: list[str] = []
    i = 0
    while i < len(rest):
        flag = rest[i]
        assert flag.startswith("--"), f"{line}: unexpected {flag!r}"
        if flag in ("--overwrite",):
            opts[flag] = "true"
            i += 1
            continue
        value = rest[i + 1]
        if flag == "--set":
            sets.append(value)
        else:
            opts[flag] = value
        i += 2
    return command, task, opts, sets


def _default(command: Any, name: str) -> Any:
    return inspect.signature(command).parameters[name].default


def command_config(line: str) -> RunConfig:
    """The configuration ``medvill finetune`` / ``evaluate`` builds from this line, as the CLI
    builds it (preset, config file, flags, then --set)."""
    command, _, opts, sets = parse_command(line)
    fn = finetune_command if command == "finetune" else evaluate_command
    dataset = opts.get("--dataset", _default(fn, "dataset"))
    root = Path(opts["--root"]) if "--root" in opts else None
    preset = opts.get("--preset", _default(fn, "preset"))
    config = ROOT / opts["--config"] if "--config" in opts else None
    if command == "finetune":
        max_steps = int(opts["--max-steps"]) if "--max-steps" in opts else None
        return load_config(preset, config, sets, cli_overrides(dataset, root, max_steps))
    return load_config(preset, config, sets, cli_overrides(dataset, root))


def _without_root(cfg: RunConfig) -> dict[str, Any]:
    d = cfg.to_dict()
    d["data"].pop("root")
    return d


def _differences(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    """The keys (``section.key``) whose values differ between two nested mappings."""
    out = []
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict):
            out += _differences(x, y, f"{prefix}{key}.")
        elif x != y:
            out.append(f"{prefix}{key}")
    return out


def command_problems(lines: list[str], expect_config: str | None = None) -> list[str]:
    """Problems of a set of ``medvill finetune`` / ``evaluate`` lines that use the published
    configs: a fine-tune command must name a published file for its own task and build the
    file's run (only ``data.root`` added); an evaluation of its output must read the same data
    (data set, root, organ, section) with 30 bootstrap resamples; every fine-tuned model must be
    evaluated.  ``expect_config``: every fine-tune line must use this file."""
    problems = []
    outputs: dict[str, RunConfig] = {}
    for line in lines:
        command, task, opts, _ = parse_command(line)
        if command != "finetune":
            continue
        config = opts.get("--config", "")
        name = Path(config).name
        if not config.startswith("configs/") or name not in PUBLISHED:
            problems.append(f"{line}: no published --config configs/finetune_*.yaml")
            continue
        if expect_config is not None and name != expect_config:
            problems.append(f"{line}: uses {name}, not {expect_config}")
        if PUBLISHED[name][0] != task:
            problems.append(f"{line}: task {task} with {name}, which is for {PUBLISHED[name][0]}")
        built = command_config(line)
        alone = load_config("base", published(name))
        diff = _differences(_without_root(alone), _without_root(built))
        if diff:
            problems.append(f"{line}: the command changes the file's settings: {', '.join(diff)}")
        outputs[opts["--output"]] = built
    evaluated = set()
    for line in lines:
        command, task, opts, _ = parse_command(line)
        if command != "evaluate" or opts.get("--checkpoint") not in outputs:
            continue
        evaluated.add(opts["--checkpoint"])
        trained, scored = outputs[opts["--checkpoint"]].data, command_config(line).data
        for key in ("dataset", "root", "vqa_organ", "section"):
            if getattr(trained, key) != getattr(scored, key):
                problems.append(f"{line}: evaluates data.{key}={getattr(scored, key)!r}, "
                                f"the model was fine-tuned on {getattr(trained, key)!r}")
        if opts.get("--bootstrap") != BOOTSTRAP:
            problems.append(f"{line}: --bootstrap {opts.get('--bootstrap')} (the paper: {BOOTSTRAP})")
    for output in sorted(set(outputs) - evaluated):
        problems.append(f"the model fine-tuned into {output} is never evaluated")
    return problems


def header_commands(text: str) -> list[str]:
    return [line.lstrip("#").strip() for line in text.splitlines()
            if re.match(r"#\s+medvill (finetune|evaluate) ", line)]


def guide_commands() -> list[str]:
    """The ``medvill finetune`` / ``evaluate`` lines of the guide's bash blocks."""
    out, in_bash = [], False
    for line in GUIDE.read_text().splitlines():
        if line.startswith("```"):
            in_bash = line.strip() == "```bash" if not in_bash else False
            continue
        if in_bash and re.match(r"medvill (finetune|evaluate) ", line.strip()):
            out.append(line.strip())
    return out


# ---------------------------------------------------------------------------------------------
# the tests
# ---------------------------------------------------------------------------------------------

def test_every_published_config_exists():
    names = {p.name for p in CONFIGS.glob("finetune_*.yaml")}
    assert set(PUBLISHED) <= names, f"missing: {sorted(set(PUBLISHED) - names)}"


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_config_loads_and_validates_through_the_cli_loader(path):
    cfg = load_config("base", path)  # what `medvill pretrain|finetune --config PATH` calls
    assert cfg.preset in ("tiny", "small", "base")
    assert cfg.data.root is None  # data roots are command-line arguments, never in a config
    assert not re.search(r"^\s*root:", path.read_text(), re.M)
    # through the CLI's own flag handling, with the data set the file names
    again = load_config("base", path, [], cli_overrides(cfg.data.dataset, Path("data"), None))
    assert _without_root(again) == _without_root(cfg)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_each_published_config_is_the_task_and_data_it_claims(name):
    task, dataset, organ = PUBLISHED[name]
    cfg = load_config("base", published(name))
    assert cfg.data.dataset == dataset
    assert cfg.data.vqa_organ == organ
    assert cfg.preset == "base"
    assert cfg.data.eval_split == "validate"  # model selection never looks at the test split
    assert cfg.train.early_stopping_patience > 0 and 0 < cfg.train.eval_every < cfg.train.max_steps
    assert cfg.train.warmup_steps < cfg.train.max_steps
    text = published(name).read_text()
    lines = header_commands(text)
    tasks = {parse_command(line)[1] for line in lines}
    assert tasks == {task}, f"{name}: header commands are for {tasks}"
    assert any(parse_command(line)[0] == "finetune" for line in lines)
    assert any(parse_command(line)[0] == "evaluate" for line in lines)
    if task == "generation":
        assert "generation_objective" in text
    if organ == "CHEST":
        assert re.search(r"^\s*vqa_organ: CHEST\b", text, re.M)


@pytest.mark.parametrize("name, key, value, stated, why", PAPER_CASES,
                         ids=[f"{c[0].removesuffix('.yaml')}:{c[1]}" for c in PAPER_CASES])
def test_the_papers_settings_have_the_papers_values(name, key, value, stated, why):
    cfg = load_config("base", published(name))
    expected = pytest.approx(value) if isinstance(value, float) else value
    assert get(cfg, key) == expected, why
    if stated:  # written in the file itself, not left to a default
        leaf = key.split(".")[-1]
        line = next((ln for ln in published(name).read_text().splitlines()
                     if re.match(rf"\s*{leaf}:", ln)), None)
        assert line is not None, f"{name}: {key} ({why}) is not written in the file"
        assert "paper:" in line, f"{name}: {key} is the paper's ({why}) but its comment does not say so"


def test_the_evaluation_protocol_is_the_papers():
    # `medvill evaluate` reads no config file: its settings are the preset's and the guide's flags
    cfg = command_config("medvill evaluate retrieval --checkpoint x --dataset mimic --output y")
    assert cfg.eval.n_candidates == EVAL_CANDIDATES  # paper IV-B
    assert _default(evaluate_command, "n_bootstrap") == int(BOOTSTRAP)  # paper IV: 30 resamples


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_every_setting_line_says_paper_or_ours(name):
    assert source_comment_problems(published(name).read_text()) == []


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_the_header_commands_build_the_files_run(name):
    lines = header_commands(published(name).read_text())
    assert command_problems(lines, expect_config=name) == []


def test_the_guide_fine_tunes_with_the_published_configs():
    lines = guide_commands()
    assert command_problems(lines) == []
    used = {Path(parse_command(line)[2]["--config"]).name for line in lines
            if parse_command(line)[0] == "finetune" and parse_command(line)[2].get("--init") == FROM_PRETRAINING}
    assert used == set(PUBLISHED), f"not fine-tuned from the pre-training in the guide: {set(PUBLISHED) - used}"


def test_the_checks_catch_a_missing_source_comment():
    good = "preset: base  # paper: BERT-base (III-A)\ntrain:\n  lr: 1.0e-5  # ours: kept\n"
    assert source_comment_problems(good) == []
    assert source_comment_problems(good.replace("  # ours: kept", "")) != []
    assert source_comment_problems(good.replace("(III-A)", "")) != []  # paper: without a section
    assert source_comment_problems(good + "data: {dataset: mimic}  # ours: x\n") != []  # a flow mapping
    assert source_comment_problems(good + "eval: {n_candidates: 100, seed: 0}\n") != []  # settings not checked


def test_the_checks_catch_commands_that_train_or_score_other_data():
    ft = ("medvill finetune vqa --init runs/pretrain-bar --dataset vqa_rad --root /d "
          "--config configs/finetune_vqa_rad_chest.yaml --output runs/ft/v")
    ev = "medvill evaluate vqa --checkpoint runs/ft/v --dataset vqa_rad --root /d --bootstrap 30 --output e"
    assert command_problems([ft, ev + " --set data.vqa_organ=CHEST"]) == []
    assert command_problems([ft, ev]) != []  # scored on every organ
    assert command_problems([ft, ev + " --config configs/finetune_vqa_rad_chest.yaml"]) == []  # the file's organ
    assert command_problems([ft.replace(" --dataset vqa_rad", ""), ev + " --set data.vqa_organ=CHEST"]) == []
    assert command_problems([ft.replace("vqa --init", "classification --init"), ev]) != []  # wrong task
    assert command_problems([ft]) != []  # never evaluated
    assert command_problems([ft, ev.replace("30", "5") + " --set data.vqa_organ=CHEST"]) != []
    assert command_problems([ft + " --set train.lr=1", ev + " --set data.vqa_organ=CHEST"]) != []


@need(VQA_RAD / "trainset.json")
def test_the_chest_config_builds_chest_questions_only():
    from medvill.tasks.registry import task_spec

    examples = task_spec("vqa").examples
    fast = ["model.image_size=64", "pretrain.visual_tokens_sampled=null"]  # images checked at 64 px
    items = {}
    for name in ("finetune_vqa_rad_chest.yaml", "finetune_vqa_rad_all.yaml"):
        # as `medvill finetune vqa --dataset vqa_rad --root ... --config configs/NAME` builds it
        cfg = load_config("base", published(name), fast, cli_overrides("vqa_rad", VQA_RAD))
        items[name] = {split: examples(cfg, split) for split in ("train", "validate")}
    chest, every = items["finetune_vqa_rad_chest.yaml"], items["finetune_vqa_rad_all.yaml"]
    assert chest["train"] and chest["validate"]
    assert {i.organ for split in chest.values() for i in split} == {"CHEST"}
    assert {i.organ for split in every.values() for i in split} == {"CHEST", "HEAD", "ABD"}
    # paper (IV, data sets): 107 chest X-rays
    assert len({i.image.name for split in chest.values() for i in split}) == 107
    every_chest = {i.qid for split in every.values() for i in split if i.organ == "CHEST"}
    assert {i.qid for split in chest.values() for i in split} == every_chest
    assert {i.qid for i in chest["validate"]} <= {i.qid for i in every["validate"]}
