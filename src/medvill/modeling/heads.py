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
from .encoder import _activation, init_bert_weights
from .medvill import MedViLLModel, MedViLLOutput
from .pretrained import PreTrainedModel, register


class MLMTransform(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.act = _activation(cfg.hidden_act)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

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
    base: MedViLLOutput


@register
class MedViLLForPretraining(PreTrainedModel):
    """MedViLL with the masked-language-modelling and image-report-matching heads."""

    def __init__(self, config: ModelConfig, load_pretrained_backbone: bool = True):
        super().__init__(config)
        self.medvill = MedViLLModel(config, load_pretrained_backbone)
        self.mlm_head = MLMHead(config, self.medvill.embeddings.word_embeddings)
        self.irm_head = nn.Linear(config.hidden_size, 1)
        for module in (self.mlm_head.transform, self.irm_head):
            module.apply(lambda m: init_bert_weights(m, config.initializer_range))

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
    ) -> PretrainOutput:
        out = self.medvill(
            text_ids, text_valid, scheme, images=images, visual_features=visual_features,
            num_visual_sampled=num_visual_sampled, generator=generator,
        )
        zero = out.last_hidden_state.new_zeros(())
        mlm_loss, mlm_acc = zero, zero
        if mlm_labels is not None:
            positions = torch.nonzero(mlm_labels != -100, as_tuple=True)
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
        return PretrainOutput(
            loss=mlm_loss + irm_loss, mlm_loss=mlm_loss, irm_loss=irm_loss,
            mlm_accuracy=mlm_acc, irm_accuracy=irm_acc, irm_logits=irm_logits, scheme=out.scheme, base=out,
        )


# ----------------------------------------------------------------------------- downstream tasks


@dataclass
class TaskOutput:
    logits: torch.Tensor  # (B, L) classification / VQA, or (B,) matching
    base: MedViLLOutput | CNNTransformerOutput


#: trunks a task model can sit on: MedViLL, or the CNN & Transformer baseline (modeling/baselines.py)
TRUNKS = {"medvill": MedViLLModel, "cnn_transformer": CNNTransformerModel}


class _PooledTaskModel(PreTrainedModel):
    """Base model + a head on the pooled summary token (CLS under Bi; paper section IV).

    Fine-tuning for understanding tasks uses the bidirectional mask and all K visual tokens.
    ``trunk`` (saved in the checkpoint's head config): ``medvill``, or ``cnn_transformer``
    for the CNN & Transformer baseline, whose summary (late fusion of a CNN vector and a
    text-only transformer's CLS) feeds the same heads; the attribute stays ``medvill``.
    """

    def __init__(self, config: ModelConfig, load_pretrained_backbone: bool = True, trunk: str = "medvill"):
        super().__init__(config)
        if trunk not in TRUNKS:
            raise ValueError(f"unknown trunk {trunk!r}; choose one of {', '.join(TRUNKS)}")
        self.trunk = trunk
        self.medvill = TRUNKS[trunk](config, load_pretrained_backbone)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def head_config(self) -> dict:
        return {"trunk": self.trunk}

    def pooled(self, text_ids, text_valid, images=None, visual_features=None, scheme=MaskScheme.BI):
        out = self.medvill(text_ids, text_valid, scheme, images=images, visual_features=visual_features)
        return self.dropout(self.medvill.summary(out, text_valid)), out


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

    def forward(self, text_ids, text_valid, images=None, visual_features=None, scheme=MaskScheme.BI) -> TaskOutput:
        pooled, out = self.pooled(text_ids, text_valid, images, visual_features, scheme)
        return TaskOutput(self.classifier(pooled), out)


@register
class MedViLLForRetrieval(_PooledTaskModel):
    """Image-report matching score on CLS (initialised from the pre-training IRM head)."""

    def __init__(self, config: ModelConfig, load_pretrained_backbone: bool = True, trunk: str = "medvill"):
        super().__init__(config, load_pretrained_backbone, trunk)
        self.irm_head = nn.Linear(config.hidden_size, 1)
        self.irm_head.apply(lambda m: init_bert_weights(m, config.initializer_range))

    def forward(self, text_ids, text_valid, images=None, visual_features=None, scheme=MaskScheme.BI) -> TaskOutput:
        pooled, out = self.pooled(text_ids, text_valid, images, visual_features, scheme)
        return TaskOutput(self.irm_head(pooled).squeeze(-1), out)


@register
class MedViLLForVQA(_PooledTaskModel):
    """Answer classification over the training answer vocabulary, on CLS (image + question)."""

    def __init__(self, config: ModelConfig, load_pretrained_backbone: bool = True, num_answers: int = 2,
                 trunk: str = "medvill"):
        super().__init__(config, load_pretrained_backbone, trunk)
        self.num_answers = num_answers
        d = config.hidden_size
        self.answer_head = nn.Sequential(
            nn.Linear(d, 2 * d), nn.GELU(), nn.LayerNorm(2 * d, eps=config.layer_norm_eps), nn.Linear(2 * d, num_answers)
        )
        self.answer_head.apply(lambda m: init_bert_weights(m, config.initializer_range))

    def head_config(self) -> dict:
        return {**super().head_config(), "num_answers": self.num_answers}

    def forward(self, text_ids, text_valid, images=None, visual_features=None, scheme=MaskScheme.BI) -> TaskOutput:
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
