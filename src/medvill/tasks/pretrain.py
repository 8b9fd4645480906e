"""Pre-training task: masked language modelling + image-report matching (paper III-B)."""

from __future__ import annotations

import random

import torch
from sklearn.metrics import roc_auc_score
from torch import nn
from torch.utils.data import DataLoader

from ..config import MaskScheme, PretrainConfig
from ..distributed import gather_lists, shard_loader
from ..modeling.masks import resolve_scheme
from .base import StepOutput


class PretrainTask:
    """``loss = MLM + irm_weight * IRM (+ itc_weight * ITC)`` under the configured mask scheme.

    With ``itc_weight`` > 0 the batch carries each image's own report and label-set id
    (:class:`~medvill.data.pairs.ReportPairDataset` with ``contrastive=True``); the
    contrastive loss is computed on a Non-crossing pass and, with ``irm_negatives=hard``,
    the mismatched pairs take reports sampled by its similarities.

    Bi&S2S draws S2S (probability ``s2s_prob``) or Bi once per mini-batch.  The draw and the
    k-of-K visual sampling depend only on ``(seed, step)``, so every process of a
    distributed run makes the same choice and a resumed run repeats it.
    """

    name = "pretrain"

    def __init__(self, cfg: PretrainConfig, seed: int = 0):
        self.cfg = cfg
        self.seed = seed

    def scheme_for_step(self, step: int) -> MaskScheme:
        return resolve_scheme(self.cfg.mask, self.cfg.s2s_prob, random.Random(self.seed * 1_000_003 + step))

    def training_step(self, model: nn.Module, batch: dict[str, torch.Tensor], step: int) -> StepOutput:
        scheme = self.scheme_for_step(step)
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        c = self.cfg
        contrastive = {}
        if c.itc_weight > 0:
            contrastive = dict(report_ids=batch["report_ids"], report_valid=batch["report_valid"],
                               label_groups=batch["label_group"], itc_temperature=c.itc_temperature,
                               hard_negatives=c.irm_negatives == "hard")
        out = model(
            text_ids=batch["text_ids"], text_valid=batch["text_valid"], scheme=scheme, images=batch["images"],
            mlm_labels=batch["mlm_labels"], is_matched=batch["is_matched"],
            num_visual_sampled=c.visual_tokens_sampled, generator=gen, **contrastive,
        )
        loss = out.mlm_loss + c.irm_weight * out.irm_loss
        metrics = {"mlm_loss": out.mlm_loss.item(), "irm_loss": out.irm_loss.item(),
                   "mlm_acc": out.mlm_accuracy.item(), "irm_acc": out.irm_accuracy.item(),
                   "s2s_batch": float(scheme == MaskScheme.S2S)}
        if out.itc_loss is not None:
            loss = loss + c.itc_weight * out.itc_loss
            metrics.update(itc_loss=out.itc_loss.item(), itc_acc=out.itc_accuracy.item())
        return StepOutput(loss=loss, metrics=metrics)

    @torch.no_grad()
    def validate(self, model: nn.Module, loader: DataLoader) -> dict[str, float]:
        """Pre-training curves on fixed validation pairs (MLM-masked, label-aware negatives):
        MLM loss and accuracy on the matched pairs, matching AUROC and accuracy, and with the
        contrastive loss its in-batch top-1 label-set accuracy.  All K visual tokens; Bi&S2S is
        scored under S2S (its usual draw)."""
        scheme = MaskScheme.S2S if self.cfg.mask == MaskScheme.BI_S2S else MaskScheme(self.cfg.mask)
        was = model.training
        model.eval()
        device = next(model.parameters()).device
        scores: list[torch.Tensor] = []  # per batch (n, 2): matching logit, is_matched
        sums: list[torch.Tensor] = []  # per batch: masked tokens, their loss sum and hits, pairs, ITC hits
        try:
            for batch in shard_loader(loader):
                b = {k: v.to(device) for k, v in batch.items()}
                extra = {}
                if self.cfg.itc_weight > 0:
                    extra = dict(report_ids=b["report_ids"], report_valid=b["report_valid"],
                                 label_groups=b["label_group"], itc_temperature=self.cfg.itc_temperature)
                out = model(text_ids=b["text_ids"], text_valid=b["text_valid"], scheme=scheme, images=b["images"],
                            mlm_labels=b["mlm_labels"], is_matched=b["is_matched"], **extra)
                n_mlm, n = float((b["mlm_labels"] != -100).sum()), len(b["is_matched"])
                itc = out.itc_accuracy.item() * n if out.itc_accuracy is not None else 0.0
                sums.append(torch.tensor([n_mlm, out.mlm_loss.item() * n_mlm, out.mlm_accuracy.item() * n_mlm, n, itc],
                                         dtype=torch.float64))
                scores.append(torch.stack([out.irm_logits.float().cpu(), b["is_matched"].float().cpu()], dim=1))
        finally:
            model.train(was)
        table = torch.cat(gather_lists(scores)).numpy()
        total = torch.stack(gather_lists(sums)).sum(0).tolist()
        logits, matched = table[:, 0], table[:, 1]
        metrics = {
            "mlm_loss": total[1] / max(total[0], 1.0),
            "mlm_acc": total[2] / max(total[0], 1.0),
            "irm_auroc": float(roc_auc_score(matched, logits)) if 0 < matched.sum() < len(matched) else float("nan"),
            "irm_acc": float(((logits > 0) == (matched == 1)).mean()),
        }
        if self.cfg.itc_weight > 0:
            metrics["itc_acc"] = total[4] / max(total[3], 1.0)
        return metrics
