"""From a :class:`RunConfig` to a trained checkpoint: data, tokenizer, model, loop.

The command line and the demo call these functions; so can a notebook.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch.utils.data import DataLoader

from .checkpoint_files import RUN_CONFIG
from .config import ModelConfig, RunConfig
from .data.collate import LengthGroupedSampler, MLMSpec, PretrainCollator, PretrainDataset
from .data.records import Record
from .data.registry import load_records
from .data.task_data import ImageTextDataset
from .modeling.bert_init import bert_model_config, load_bert_weights, resolve_bert_dir
from .modeling.heads import MedViLLForPretraining
from .tokenization import MedTokenizer
from .train.loop import TrainResult, fit

log = logging.getLogger(__name__)



def load_split(cfg: RunConfig, split: str) -> list[Record]:
    """The records of a split whose images can be read (:func:`readable`)."""
    d = cfg.data
    records = load_records(d.dataset, d.root, split, image_size=cfg.model.image_size, synthetic_n=d.synthetic_n,
                           synthetic_seed=d.synthetic_seed, policy=d.policy, section=d.section)
    return readable(records, cfg, split)


def load_vqa_split(cfg: RunConfig, split: str) -> list:
    """The VQA items (:class:`~medvill.data.vqa_rad.VQAItem`) of a split of the run's data set
    whose images can be read (:func:`readable`)."""
    from .data.registry import load_vqa

    d = cfg.data
    items = load_vqa(d.dataset, d.root, split, organ=d.vqa_organ, image_size=cfg.model.image_size,
                     synthetic_n=d.synthetic_n, synthetic_seed=d.synthetic_seed, policy=d.policy,
                     validate_by=d.vqa_validate_by)
    return readable(items, cfg, split)


def readable(items: list, cfg: RunConfig, split: str) -> list:
    """Check every image of ``items`` before any training step: each is decoded and
    preprocessed once (into the in-memory pixel cache, which the first epoch then reads, so
    the check costs nothing where the images fit in it).  An unreadable image (zero bytes,
    truncated, not an image, a decompression bomb) is a bad row: ``data.policy=skip`` drops its
    items and logs the count with an example; ``error`` stops the run before it starts, naming
    the file.  Images of a ``medvill prepare`` cache were checked by prepare and are not
    checked again."""
    from .data.common import DataError
    from .data.registry import is_prepared
    from .data.transforms import PIXEL_CACHE, Preprocess

    if not items or is_prepared(cfg.data.root):
        return items
    pre = Preprocess(image_size=cfg.model.image_size)
    bad: dict[Path, str] = {}
    seen: set[Path] = set()
    for item in items:
        path = Path(item.image)
        if path in seen:
            continue
        seen.add(path)
        try:
            PIXEL_CACHE.get(path, pre)
        except (OSError, ValueError) as exc:
            bad[path] = str(exc)
    if not bad:
        return items
    first, reason = next(iter(bad.items()))
    if cfg.data.policy == "error":
        raise DataError(f"{len(bad)} unreadable image{'s' if len(bad) > 1 else ''} in the {split} split, "
                        f"e.g. {reason}; fix or remove {'them' if len(bad) > 1 else 'it'}, or set data.policy=skip")
    kept = [it for it in items if Path(it.image) not in bad]
    log.warning("%s split: skipped %d item(s) of %d unreadable image(s), e.g. %s", split, len(items) - len(kept),
                len(bad), reason)
    return kept


def build_tokenizer(cfg: RunConfig, texts: list[str], bert_dir: Path | None = None) -> MedTokenizer:
    """The init checkpoint's vocabulary, a given vocabulary, or one trained on ``texts``."""
    if bert_dir is not None:
        return MedTokenizer.from_vocab(bert_dir / "vocab.txt", lowercase=cfg.tokenizer.lowercase)
    if cfg.tokenizer.vocab:
        path = Path(cfg.tokenizer.vocab)
        if path.is_dir():
            return MedTokenizer.from_pretrained(path)
        return MedTokenizer.from_vocab(path, cfg.tokenizer.lowercase)
    return MedTokenizer.train(texts, cfg.tokenizer.vocab_size, cfg.tokenizer.min_frequency, cfg.tokenizer.lowercase)


def model_config_for(cfg: RunConfig, tokenizer: MedTokenizer, bert_dir: Path | None = None) -> ModelConfig:
    """The run's model config with the tokenizer's ids (and a BERT init's dimensions)."""
    base = bert_model_config(bert_dir, cfg.model) if bert_dir is not None else cfg.model
    return dataclasses.replace(
        base, vocab_size=tokenizer.vocab_size, pad_token_id=tokenizer.pad_id, unk_token_id=tokenizer.unk_id,
        cls_token_id=tokenizer.cls_id, sep_token_id=tokenizer.sep_id, mask_token_id=tokenizer.mask_id,
    )


def data_loader(dataset: PretrainDataset | ImageTextDataset, cfg: RunConfig,
                collate: Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]], train: bool) -> DataLoader:
    """The loader of a training (shuffled, seeded, full batches) or evaluation (every item
    once) split.  With ``train.length_grouping`` > 0 the batches hold reports of similar
    length (:class:`~medvill.data.collate.LengthGroupedSampler`); evaluation then visits the
    items shortest first (every evaluation puts its results back in data set order)."""
    t = cfg.train
    lengths = [len(ids) for ids in dataset.text_ids]
    common: dict[str, Any] = dict(batch_size=t.batch_size, num_workers=cfg.data.num_workers, collate_fn=collate)
    if train:
        drop_last = len(dataset) >= t.batch_size
        if t.length_grouping:
            return DataLoader(dataset, sampler=LengthGroupedSampler(lengths, t.batch_size, t.length_grouping, t.seed),
                              drop_last=drop_last, **common)
        return DataLoader(dataset, shuffle=True, drop_last=drop_last, generator=torch.Generator().manual_seed(t.seed),
                          **common)
    if t.length_grouping:
        return DataLoader(dataset, sampler=sorted(range(len(dataset)), key=lengths.__getitem__), **common)
    return DataLoader(dataset, shuffle=False, **common)


@dataclass
class PretrainRun:
    output_dir: Path
    result: TrainResult
    model_config: ModelConfig
    num_train: int


def run_pretraining(cfg: RunConfig, output_dir: str | Path, console: Console | None = None) -> PretrainRun:
    """Pre-train MedViLL (MLM + IRM) and write the checkpoint into ``output_dir``."""
    console = console or Console()
    output_dir = Path(output_dir)
    records = load_split(cfg, cfg.data.train_split)
    bert_dir = resolve_bert_dir(cfg.init_text) if cfg.init_text else None
    tokenizer = build_tokenizer(cfg, [r.text for r in records], bert_dir)
    mcfg = model_config_for(cfg, tokenizer, bert_dir)
    cfg = dataclasses.replace(cfg, model=mcfg)
    p = cfg.pretrain
    contrastive = p.itc_weight > 0
    torch.manual_seed(cfg.train.seed)
    model = MedViLLForPretraining(mcfg, contrastive_dim=p.itc_dim if contrastive else 0)
    if bert_dir is not None:
        report = load_bert_weights(model, bert_dir)
        console.print(f"initialised {len(report['loaded'])} tensors from {bert_dir}")
    mlm = MLMSpec(p.mlm_prob, p.mlm_mask_frac, p.mlm_random_frac)
    dataset = PretrainDataset(records, tokenizer, mcfg.image_size, mcfg.max_text_len, mlm, seed=cfg.train.seed,
                              contrastive=contrastive)
    collate = PretrainCollator(tokenizer.pad_id)
    loader = data_loader(dataset, cfg, collate, train=True)
    from .tasks.pretrain import PretrainTask

    task = PretrainTask(p, cfg.train.seed)
    evaluate = None
    if cfg.train.eval_every:  # curves on fixed validation pairs (nothing is selected: the last step is saved)
        val_records = load_split(cfg, cfg.data.eval_split)
        val_set = PretrainDataset(val_records, tokenizer, mcfg.image_size, mcfg.max_text_len, mlm,
                                  seed=cfg.train.seed + 1, contrastive=contrastive)
        val_loader = data_loader(val_set, cfg, collate, train=False)

        def evaluate(m: torch.nn.Module) -> dict[str, float]:
            return task.validate(m, val_loader)

    def save(model_: torch.nn.Module, directory: Path) -> None:
        assert isinstance(model_, MedViLLForPretraining)  # fit hands back the (unwrapped) model it trains
        model_.save_pretrained(directory, tokenizer=tokenizer, extra_files={RUN_CONFIG: cfg.to_yaml()})

    console.print(
        f"pre-training {sum(q.numel() for q in model.parameters()) / 1e6:.2f}M parameters "
        f"({mcfg.backbone}, hidden {mcfg.hidden_size} x {mcfg.num_hidden_layers} layers) with mask "
        f"[bold]{p.mask.value}[/bold] on {len(dataset)} {cfg.data.dataset} pairs for {cfg.train.max_steps} steps"
    )
    result = fit(model, task, loader, cfg.train, output_dir, save, console=console, evaluate=evaluate)
    return PretrainRun(output_dir=output_dir, result=result, model_config=mcfg, num_train=len(dataset))
