"""Pre-training (``medvill pretrain``): from a :class:`RunConfig` to a pre-trained
checkpoint: data, tokenizer, model, loop.  The command line and the demo call
:func:`run_pretraining`; so can a notebook."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console

from ..checkpoint_files import RUN_CONFIG
from ..config import ModelConfig, RunConfig
from ..data.image_warnings import collected_image_warnings
from ..data.pairs import MLMSpec, ReportPairCollator, ReportPairDataset
from ..data.splits import data_loader, load_split
from ..modeling.bert_init import load_bert_weights, resolve_bert_dir
from ..modeling.heads import MedViLLForPretraining
from ..train.loop import TrainResult, fit
from ..train.tracking import check_available
from .common import build_tokenizer, model_config_for

log = logging.getLogger(__name__)



@dataclass
class PretrainRun:
    output_dir: Path
    result: TrainResult
    model_config: ModelConfig
    num_train: int


def run_pretraining(cfg: RunConfig, output_dir: str | Path, console: Console | None = None) -> PretrainRun:
    """Pre-train MedViLL (MLM + IRM) and write the checkpoint into ``output_dir``; the image
    checks' warnings are summarised once (:mod:`medvill.data.image_warnings`)."""
    with collected_image_warnings(output_dir):
        return _pretrain(cfg, output_dir, console)


def _pretrain(cfg: RunConfig, output_dir: str | Path, console: Console | None) -> PretrainRun:
    console = console or Console()
    check_available(cfg.train.trackers)  # a missing tracker package stops the run before any work
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
    dataset = ReportPairDataset(records, tokenizer, mcfg.image_size, mcfg.max_text_len, mlm, seed=cfg.train.seed,
                              contrastive=contrastive)
    collate = ReportPairCollator(tokenizer.pad_id)
    loader = data_loader(dataset, cfg, collate, train=True)
    from ..tasks.pretrain import PretrainTask

    task = PretrainTask(p, cfg.train.seed)
    evaluate = None
    if cfg.train.eval_every:  # curves on fixed validation pairs (nothing is selected: the last step is saved)
        val_records = load_split(cfg, cfg.data.eval_split)
        val_set = ReportPairDataset(val_records, tokenizer, mcfg.image_size, mcfg.max_text_len, mlm,
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
    result = fit(model, task, loader, cfg.train, output_dir, save, console=console, evaluate=evaluate, run_config=cfg)
    return PretrainRun(output_dir=output_dir, result=result, model_config=mcfg, num_train=len(dataset))
