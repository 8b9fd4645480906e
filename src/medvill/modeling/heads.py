"""Task heads on top of :class:`MedViLLModel`, and the pre-training model (MLM + IRM).

Head parameter names follow BERT where BERT has the same head (``mlm_head`` mirrors
``cls.predictions``), so BERT's MLM head initialises ours.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..config import MaskScheme, ModelConfig
from .baselines import CNNTransformerModel, CNNTransformerOutput
from .contrastive import label_aware_itc_loss, same_group, sample_hard_negatives
from .dropout import Dropout
from .encoder import _activation, init_bert_weights
from .masks import pseudo_mask_attention
from .medvill import MedViLLModel, MedViLLOutput
from .pretrained import PreTrainedModel, register


class MLMTransform(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.act = _activation(cfg.hidden_act)
        eps = cfg.layer_norm_eps if cfg.mlm_layer_norm_eps is None else cfg.mlm_layer_norm_eps
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.act(self.dense(x)))


class MLMHead(nn.Module):
    """BERT's LM head; the decoder weight is tied to the word embeddings."""

    def __init__(self, cfg: ModelConfig, word_embeddings: nn.Embedding):
        super().__init__()
        self.transform = MLMTransform(cfg)
        self.decoder = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.decoder.weight = word_embeddings.weight
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:  # (..., D) -> (..., V)
        return self.decoder(self.transform(hidden)) + self.bias


@dataclass
class PretrainOutput:
    loss: torch.Tensor
    mlm_loss: torch.Tensor
    irm_loss: torch.Tensor
    mlm_accuracy: torch.Tensor
    irm_accuracy: torch.Tensor
    irm_logits: torch.Tensor | None  # (B,); None when called with matching=False
    scheme: MaskScheme
    base: MedViLLOutput | None  # None for the all-token objective (its pass has the pseudo-mask layout)
    itc_loss: torch.Tensor | None = None  # image-report contrastive loss (with report_ids)
    itc_accuracy: torch.Tensor | None = None  # share of images whose most similar report has their label set
    hard_negatives: int = 0  # mismatched pairs whose report was replaced by a sampled hard negative


class ContrastiveProjections:
    """The image-report contrastive projections of a model with MedViLL's trunk (``medvill``):
    ``contrastive_dim`` > 0 adds them (:meth:`build_projections`), under the same names in every
    model, so a fine-tuned model initialises them from its pre-training."""

    medvill: MedViLLModel
    contrastive_dim: int = 0
    itc_image_proj: nn.Linear
    itc_text_proj: nn.Linear

    def build_projections(self, config: ModelConfig, contrastive_dim: int) -> list[nn.Module]:
        """Create the projections (none for 0); returns them for initialisation."""
        self.contrastive_dim = contrastive_dim
        if not contrastive_dim:
            return []
        self.itc_image_proj = nn.Linear(self.medvill.visual.out_channels, contrastive_dim)
        self.itc_text_proj = nn.Linear(config.hidden_size, contrastive_dim)
        return [self.itc_image_proj, self.itc_text_proj]

    def contrastive_embeddings(self, report_ids: torch.Tensor, report_valid: torch.Tensor,
                               visual_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Unimodal summaries, projected and L2-normalised: ``(image (B, E), report (B, E))``.

        The image's is the mean of its CNN features (the visual tokens before the
        transformer), the report's the CLS_L of a Non-crossing pass over the report alone, so
        neither sees the other modality.  Measured on the synthetic data (64 px, small preset):
        a summary taken from CLS of the same Non-crossing pass trained the CNN more slowly
        (matching AUROC 0.60 against 0.85 after 800 steps) and slowed the MLM loss, which shares
        the transformer.
        """
        if not self.contrastive_dim:
            raise ValueError("this model has no contrastive projections (built with contrastive_dim=0)")
        image = F.normalize(self.itc_image_proj(visual_features.mean(dim=1)).float(), dim=-1)
        no_visual = visual_features[:, :0]  # (B, 0, C): the report pass needs no visual token
        out = self.medvill(report_ids, report_valid, MaskScheme.NON_CROSSING, visual_features=no_visual)
        report = F.normalize(self.itc_text_proj(out.last_hidden_state[:, out.layout.cls_l_index]).float(), dim=-1)
        return image, report


@register
class MedViLLForPretraining(ContrastiveProjections, PreTrainedModel):
    """MedViLL with the masked-language-modelling and image-report-matching heads.

    ``contrastive_dim`` > 0 adds the projections of the image-report contrastive loss
    (``pretrain.itc_weight``, an option beyond the paper; :mod:`medvill.modeling.contrastive`):
    unimodal summaries of the image and the report (:meth:`contrastive_embeddings`), each
    projected to ``contrastive_dim`` and L2-normalised.
    """

    def __init__(self, config: ModelConfig, load_pretrained_backbone: bool = True, contrastive_dim: int = 0):
        super().__init__(config)
        self.medvill = MedViLLModel(config, load_pretrained_backbone)
        self.mlm_head = MLMHead(config, self.medvill.embeddings.word_embeddings)
        self.irm_head = nn.Linear(config.hidden_size, 1)
        heads = [self.mlm_head.transform, self.irm_head, *self.build_projections(config, contrastive_dim)]
        for module in heads:
            module.apply(lambda m: init_bert_weights(m, config.initializer_range))

    def head_config(self) -> dict:
        return {"contrastive_dim": self.contrastive_dim} if self.contrastive_dim else {}

    def sequence_logprobs(self, text_ids: torch.Tensor, text_valid: torch.Tensor,
                          visual_features: torch.Tensor) -> torch.Tensor:
        """Log-probabilities ``(B, N, V)`` of every report token given the image and the
        tokens before it, in ONE pass (:func:`~medvill.modeling.masks.pseudo_mask_attention`):
        position t is predicted by a [MASK] query at position t that sees the visual tokens
        and ``w_0 .. w_{t-1}``, as in free-running decoding.  [SEP] (the end of the report) is
        a position like any other, so a model trained on this learns when to stop."""
        emb = self.medvill.embeddings
        cfg = self.config
        b = text_ids.shape[0]
        k = visual_features.shape[1]
        grid = torch.arange(k, device=text_ids.device)[None].expand(b, -1)
        prefix = torch.cat([emb._special(cfg.cls_token_id, 0, 0, b), emb.visual(visual_features, grid),
                            emb._special(cfg.sep_token_id, 1, 0, b)], dim=1)
        queries = torch.full_like(text_ids, cfg.mask_token_id)
        x = emb.finish(torch.cat([prefix, emb.text(text_ids), emb.text(queries)], dim=1))  # (B, K + 2 + 2N, D)
        mask = pseudo_mask_attention(k + 2, text_valid)
        hidden = self.medvill.encoder(x, mask).last_hidden_state[:, k + 2 + text_ids.shape[1]:]  # queries (B, N, D)
        return self.mlm_head(hidden).float().log_softmax(-1)

    def mlm_logits(self, out: MedViLLOutput, positions: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """Vocabulary logits at the given (row, text index) positions only: (M, V)."""
        rows, cols = positions
        hidden = out.last_hidden_state[rows, out.layout.text_start + cols]
        return self.mlm_head(hidden)

    def forward(
        self,
        text_ids: torch.Tensor,  # (B, T)
        text_valid: torch.Tensor,  # (B, T) bool
        scheme: MaskScheme,
        images: torch.Tensor | None = None,
        mlm_labels: torch.Tensor | None = None,  # (B, T): token id to predict or -100
        is_matched: torch.Tensor | None = None,  # (B,) 1 matched pair, 0 mismatched
        num_visual_sampled: int | None = None,
        generator: torch.Generator | None = None,
        visual_features: torch.Tensor | None = None,
        matching: bool = True,  # False: skip the matching head (report generation trains the MLM only)
        report_ids: torch.Tensor | None = None,  # (B, R) each image's own report, unmasked: contrastive loss
        report_valid: torch.Tensor | None = None,  # (B, R) bool
        label_groups: torch.Tensor | None = None,  # (B,) id of each image's positive label set
        itc_temperature: float = 0.1,
        hard_negatives: bool = False,  # mismatched rows take a report sampled by contrastive similarity
        all_tokens: bool = False,  # report generation: score every token of the unmasked report (S2S, one pass)
    ) -> PretrainOutput:
        if visual_features is None:
            if images is None:
                raise ValueError("pass images or visual_features")
            visual_features = self.medvill.encode_image(images)  # (B, K, C), shared by both passes
        zero = visual_features.new_zeros((), dtype=torch.float32)
        if all_tokens:
            return self._all_token_loss(text_ids, text_valid, visual_features, zero)
        itc_loss = itc_acc = None
        n_hard = 0
        if report_ids is not None:
            if label_groups is None or report_valid is None:
                raise ValueError("the contrastive loss needs report_valid and label_groups with report_ids")
            image, report = self.contrastive_embeddings(report_ids, report_valid, visual_features)
            similarity = image @ report.T / itc_temperature  # (B, B)
            itc_loss = label_aware_itc_loss(similarity, label_groups)
            rows = torch.arange(similarity.shape[0], device=similarity.device)
            itc_acc = same_group(label_groups)[rows, similarity.argmax(dim=1)].float().mean()
            if hard_negatives and matching and is_matched is not None:
                text_ids, text_valid, n_hard = _swap_in_hard_negatives(
                    similarity, label_groups, is_matched, text_ids, text_valid, generator)
        elif hard_negatives:
            raise ValueError("hard negatives are sampled by contrastive similarity: pass report_ids")
        out = self.medvill(
            text_ids, text_valid, scheme, visual_features=visual_features,
            num_visual_sampled=num_visual_sampled, generator=generator,
        )
        mlm_loss, mlm_acc = zero, zero
        if mlm_labels is not None:
            mlm_rows, mlm_cols = torch.nonzero(mlm_labels != -100, as_tuple=True)  # mlm_labels is (B, T)
            positions = (mlm_rows, mlm_cols)
            if positions[0].numel():
                logits = self.mlm_logits(out, positions)  # (M, V)
                targets = mlm_labels[positions]
                mlm_loss = F.cross_entropy(logits.float(), targets)
                mlm_acc = (logits.argmax(-1) == targets).float().mean()
        # a head output that no loss uses would stall DDP's gradient reduction: compute it only when wanted
        irm_logits = self.irm_head(self.medvill.summary(out, text_valid)).squeeze(-1) if matching else None  # (B,)
        irm_loss, irm_acc = zero, zero
        if is_matched is not None and irm_logits is not None:
            target = is_matched.float()
            irm_loss = F.binary_cross_entropy_with_logits(irm_logits.float(), target)
            irm_acc = ((irm_logits > 0).float() == target).float().mean()
        total = mlm_loss + irm_loss + (itc_loss if itc_loss is not None else 0.0)
        return PretrainOutput(
            loss=total, mlm_loss=mlm_loss, irm_loss=irm_loss, mlm_accuracy=mlm_acc, irm_accuracy=irm_acc,
            irm_logits=irm_logits, scheme=out.scheme, base=out, itc_loss=itc_loss, itc_accuracy=itc_acc,
            hard_negatives=n_hard,
        )


    def _all_token_loss(self, text_ids: torch.Tensor, text_valid: torch.Tensor, visual_features: torch.Tensor,
                        zero: torch.Tensor) -> PretrainOutput:
        """Mean cross-entropy of every valid report token ([SEP] included) under S2S; the
        ``mlm_*`` fields hold it (it is MLM with a [MASK] query at every position)."""
        logprobs = self.sequence_logprobs(text_ids, text_valid, visual_features)  # (B, N, V)
        valid = text_valid.bool()
        nll = -logprobs.gather(-1, text_ids[..., None]).squeeze(-1)[valid]
        acc = (logprobs.argmax(-1) == text_ids)[valid].float().mean()
        return PretrainOutput(loss=nll.mean(), mlm_loss=nll.mean(), irm_loss=zero, mlm_accuracy=acc, irm_accuracy=zero,
                              irm_logits=None, scheme=MaskScheme.S2S, base=None)


def _swap_in_hard_negatives(similarity: torch.Tensor, groups: torch.Tensor, is_matched: torch.Tensor,
                            text_ids: torch.Tensor, text_valid: torch.Tensor, generator: torch.Generator | None
                            ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Give each mismatched row the (MLM-masked) report of a matched row of the batch, drawn by
    contrastive similarity among those with another label set; rows without such a report
    keep the data set's random label-aware negative."""
    rows = torch.nonzero(is_matched == 0).squeeze(1)
    candidates = torch.nonzero(is_matched == 1).squeeze(1)
    picked = sample_hard_negatives(similarity, groups, rows, candidates, generator).to(text_ids.device)
    ok = picked >= 0
    if not bool(ok.any()):
        return text_ids, text_valid, 0
    text_ids, text_valid = text_ids.clone(), text_valid.clone()
    text_ids[rows[ok]] = text_ids[picked[ok]]
    text_valid[rows[ok]] = text_valid[picked[ok]]
    return text_ids, text_valid, int(ok.sum())


# ----------------------------------------------------------------------------- downstream tasks


@dataclass
class TaskOutput:
    logits: torch.Tensor  # (B, L) classification / VQA, or (B,) matching
    base: MedViLLOutput | CNNTransformerOutput
    contrastive: tuple[torch.Tensor, torch.Tensor] | None = None  # retrieval with report_ids: (image, report) (B, E)


#: trunks a task model can sit on: MedViLL, or the CNN & Transformer baseline (modeling/baselines.py)
TRUNKS: dict[str, type[MedViLLModel] | type[CNNTransformerModel]] = {
    "medvill": MedViLLModel, "cnn_transformer": CNNTransformerModel
}


class _PooledTaskModel(PreTrainedModel):
    """Base model + a head on the pooled summary token (CLS under Bi; paper section IV).

    Fine-tuning for understanding tasks uses the bidirectional mask and all K visual tokens.
    ``trunk`` (saved in the checkpoint's head config): ``medvill`` (the attribute
    ``medvill``), or ``cnn_transformer`` for the CNN & Transformer baseline (the attribute
    ``cnn_transformer``), whose summary (late fusion of a CNN vector and a text-only
    transformer's CLS) feeds the same heads; :attr:`body` is whichever the model has.
    """

    medvill: MedViLLModel
    cnn_transformer: CNNTransformerModel

    def __init__(self, config: ModelConfig, load_pretrained_backbone: bool = True, trunk: str = "medvill"):
        super().__init__(config)
        if trunk not in TRUNKS:
            raise ValueError(f"unknown trunk {trunk!r}; choose one of {', '.join(TRUNKS)}")
        self.trunk = trunk
        if trunk == "medvill":
            self.medvill = MedViLLModel(config, load_pretrained_backbone)
        else:
            self.cnn_transformer = CNNTransformerModel(config, load_pretrained_backbone)
        self.dropout = Dropout(config.hidden_dropout_prob)

    @property
    def body(self) -> MedViLLModel | CNNTransformerModel:
        """The trunk under the head: MedViLL's, or the CNN & Transformer baseline's."""
        return self.medvill if self.trunk == "medvill" else self.cnn_transformer

    def upgrade_state_dict(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """CNN & Transformer checkpoints written before the trunk had its own name stored it
        under ``medvill.*``."""
        if self.trunk != "cnn_transformer" or not any(k.startswith("medvill.") for k in state):
            return state
        return {("cnn_transformer." + k[len("medvill."):] if k.startswith("medvill.") else k): v
                for k, v in state.items()}

    def head_config(self) -> dict:
        return {"trunk": self.trunk}

    def pooled(self, text_ids: torch.Tensor, text_valid: torch.Tensor, images: torch.Tensor | None = None,
               visual_features: torch.Tensor | None = None, scheme: MaskScheme = MaskScheme.BI
               ) -> tuple[torch.Tensor, MedViLLOutput | CNNTransformerOutput]:
        out = self.body(text_ids, text_valid, scheme, images=images, visual_features=visual_features)
        return self.dropout(self.body.summary(out, text_valid)), out


@register
class MedViLLForClassification(_PooledTaskModel):
    """Multi-label diagnosis classification: one logit per CheXpert observation on CLS."""

    def __init__(self, config: ModelConfig, load_pretrained_backbone: bool = True, num_labels: int = 14,
                 trunk: str = "medvill"):
        super().__init__(config, load_pretrained_backbone, trunk)
        self.num_labels = num_labels
        self.classifier = nn.Linear(config.hidden_size, num_labels)
        self.classifier.apply(lambda m: init_bert_weights(m, config.initializer_range))

    def head_config(self) -> dict:
        return {**super().head_config(), "num_labels": self.num_labels}

    def forward(self, text_ids: torch.Tensor, text_valid: torch.Tensor, images: torch.Tensor | None = None,
                visual_features: torch.Tensor | None = None, scheme: MaskScheme = MaskScheme.BI) -> TaskOutput:
        pooled, out = self.pooled(text_ids, text_valid, images, visual_features, scheme)
        return TaskOutput(self.classifier(pooled), out)


@register
class MedViLLForRetrieval(ContrastiveProjections, _PooledTaskModel):
    """Image-report matching score on CLS (initialised from the pre-training IRM head).

    ``contrastive_dim`` > 0 (``finetune.retrieval_itc_weight``, beyond the paper) keeps the
    pre-training's contrastive projections (same names, so they are initialised from it) and
    their loss in fine-tuning; a pair's retrieval score is then the matching logit plus the
    contrastive logit, cosine similarity / ``itc_temperature``
    (:class:`medvill.tasks.retrieval.PairScorer`).
    """

    def __init__(self, config: ModelConfig, load_pretrained_backbone: bool = True, trunk: str = "medvill",
                 contrastive_dim: int = 0, itc_temperature: float = 0.1):
        super().__init__(config, load_pretrained_backbone, trunk)
        self.irm_head = nn.Linear(config.hidden_size, 1)
        if contrastive_dim and trunk != "medvill":
            raise ValueError("contrastive projections need MedViLL's trunk (its Non-crossing report pass)")
        self.itc_temperature = itc_temperature
        for module in [self.irm_head, *self.build_projections(config, contrastive_dim)]:
            module.apply(lambda m: init_bert_weights(m, config.initializer_range))

    def head_config(self) -> dict:
        extra = {"contrastive_dim": self.contrastive_dim, "itc_temperature": self.itc_temperature}
        return {**super().head_config(), **(extra if self.contrastive_dim else {})}

    def forward(self, text_ids: torch.Tensor, text_valid: torch.Tensor, images: torch.Tensor | None = None,
                visual_features: torch.Tensor | None = None, scheme: MaskScheme = MaskScheme.BI,
                report_ids: torch.Tensor | None = None, report_valid: torch.Tensor | None = None) -> TaskOutput:
        """Matching logits; with ``report_ids`` (each image's own report) also the contrastive
        embeddings of the images and those reports, from the same CNN pass."""
        if report_ids is not None and visual_features is None:
            if images is None:
                raise ValueError("pass images or visual_features")
            visual_features = self.body.encode_image(images)
        pooled, out = self.pooled(text_ids, text_valid, images, visual_features, scheme)
        contrastive = None
        if report_ids is not None:
            assert report_valid is not None and visual_features is not None
            contrastive = self.contrastive_embeddings(report_ids, report_valid, visual_features)
        return TaskOutput(self.irm_head(pooled).squeeze(-1), out, contrastive)


@register
class MedViLLForVQA(_PooledTaskModel):
    """Answer classification over the training answer vocabulary, on CLS (image + question)."""

    def __init__(self, config: ModelConfig, load_pretrained_backbone: bool = True, num_answers: int = 2,
                 trunk: str = "medvill"):
        super().__init__(config, load_pretrained_backbone, trunk)
        self.num_answers = num_answers
        d = config.hidden_size
        self.answer_head = nn.Sequential(
            nn.Linear(d, 2 * d), nn.GELU(), nn.LayerNorm(2 * d, eps=config.layer_norm_eps),
            nn.Linear(2 * d, num_answers),
        )
        self.answer_head.apply(lambda m: init_bert_weights(m, config.initializer_range))

    def head_config(self) -> dict:
        return {**super().head_config(), "num_answers": self.num_answers}

    def forward(self, text_ids: torch.Tensor, text_valid: torch.Tensor, images: torch.Tensor | None = None,
                visual_features: torch.Tensor | None = None, scheme: MaskScheme = MaskScheme.BI) -> TaskOutput:
        pooled, out = self.pooled(text_ids, text_valid, images, visual_features, scheme)
        return TaskOutput(self.answer_head(pooled), out)


def init_from_pretraining(model: nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
    """Copy a pre-training checkpoint's weights into a task model by name: the shared
    ``medvill.*`` trunk always; ``irm_head`` / ``mlm_head`` where the task model has them.
    Returns the task model's keys that were NOT initialised (its new head)."""
    own = model.state_dict()
    picked = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    missing_trunk = [k for k in own if k.startswith("medvill.") and k not in picked]
    if missing_trunk:
        raise ValueError(f"the checkpoint lacks trunk weights such as {missing_trunk[:3]}; is it a medvill checkpoint "
                         "with the same architecture?")
    model.load_state_dict(picked, strict=False)
    return [k for k in own if k not in picked]
