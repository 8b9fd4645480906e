"""The MedViLL network: backbone, embeddings, masks, encoder, heads, checkpoints."""

from .heads import MedViLLForPretraining, MLMHead, PretrainOutput
from .masks import SequenceLayout, build_attention_mask, resolve_scheme, summary_indices
from .medvill import MedViLLModel, MedViLLOutput
from .pretrained import PreTrainedModel

__all__ = [
    "MLMHead", "MedViLLForPretraining", "MedViLLModel", "MedViLLOutput", "PreTrainedModel",
    "PretrainOutput", "SequenceLayout", "build_attention_mask", "resolve_scheme", "summary_indices",
]
