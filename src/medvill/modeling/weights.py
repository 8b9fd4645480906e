"""Smaller weights for inference: the Linear layers in bfloat16 or int8 (``weights=``).

A cached decoding step reads every weight of the transformer and the MLM head once for a
token or two, so on a CPU its time is the time to stream those bytes from memory
(BENCHMARKS.md, "Generation").  Fewer bytes per weight make it faster:

* ``fp32``: the model as trained (the default).
* ``bf16``: every ``nn.Linear`` outside the CNN keeps its weight in bfloat16 (half the bytes).
  The input is rounded to bfloat16 for the product and the result turned back into float32,
  so LayerNorm, softmax, the residual sums and the key/value cache stay float32.
* ``int8``: the same layers dynamically quantised
  (``torch.ao.quantization.quantize_dynamic``: int8 weights with a scale per output channel,
  each call's input quantised from its own range; a quarter of the bytes).  CPU only.

The CNN and the embeddings stay float32 in every format (the CNN runs once per image, and an
embedding step reads one row per token).  Both smaller formats also compute each layer's
query, key and value projections as one product (:func:`fuse_qkv`: one int8 call instead of
three) and run the CNN in channels_last (NHWC) memory layout.  :func:`convert_weights` rewrites a loaded model in
place; a converted model is for inference only (no training, no ``save_pretrained``).  How far
each format moves the outputs (tokens, BLEU-4, clinical efficacy) is measured in
BENCHMARKS.md.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from .visual import VisualEncoder

#: the weight formats of :func:`convert_weights` (``Pipeline(weights=...)``, ``--weights``)
WEIGHT_FORMATS = ("fp32", "bf16", "int8")


def check_weights(weights: str, device: str | torch.device | None = None) -> str:
    """``weights`` if it is a format that runs on ``device``, else a ``ValueError`` saying why."""
    if weights not in WEIGHT_FORMATS:
        raise ValueError(f"weights must be one of {', '.join(WEIGHT_FORMATS)}, got {weights!r}")
    kind = torch.device(device).type if device is not None else "cpu"
    if weights == "int8" and kind != "cpu":
        raise ValueError(f"weights='int8' runs on the CPU only (dynamic quantisation has no {kind} kernels); "
                         "use weights='bf16' on a GPU, or device='cpu'")
    return weights


class Bf16Linear(nn.Module):
    """``nn.Linear`` with its weight stored in bfloat16: float32 in, float32 out."""

    weight: torch.Tensor
    bias: torch.Tensor | None

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("weight", linear.weight.detach().to(torch.bfloat16).contiguous())
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().float().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., in) -> (..., out)
        y = F.linear(x.to(torch.bfloat16), self.weight).to(x.dtype)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def _converted_linears(model: nn.Module) -> list[str]:
    """Names of the ``nn.Linear`` modules a format converts: all but those inside a CNN."""
    skip = [name for name, m in model.named_modules() if isinstance(m, VisualEncoder)]
    return [name for name, m in model.named_modules()
            if isinstance(m, nn.Linear) and not any(name.startswith(s + ".") for s in skip)]


def fuse_qkv(model: nn.Module) -> nn.Module:
    """Every self-attention's query, key and value projections as one ``nn.Linear`` (their
    weights stacked), in place: one product (and, for int8, one quantised call) per layer instead
    of three.  For inference; the outputs change only by the products' float rounding."""
    from .encoder import BertSelfAttention

    for m in model.modules():
        if isinstance(m, BertSelfAttention) and m.qkv is None:
            parts = (m.query, m.key, m.value)
            fused = nn.Linear(m.query.in_features, 3 * m.query.out_features, bias=m.query.bias is not None)
            fused = fused.to(device=m.query.weight.device, dtype=m.query.weight.dtype)
            with torch.no_grad():
                fused.weight.copy_(torch.cat([lin.weight for lin in parts]))
                if fused.bias is not None:
                    fused.bias.copy_(torch.cat([lin.bias for lin in parts]))
            m.qkv = fused
            del m.query, m.key, m.value
    return model


def convert_weights(model: nn.Module, weights: str) -> nn.Module:
    """``model`` (in eval mode) with its Linear layers in ``weights`` format, converted in place;
    returns it.  ``fp32`` leaves it as it is; the other formats also fuse each layer's query, key
    and value projections (:func:`fuse_qkv`) and run the CNN in channels_last (NHWC)."""
    check_weights(weights)
    if weights == "fp32":
        return model
    if weights == "int8" and any(p.device.type != "cpu" for p in model.parameters()):
        raise ValueError("weights='int8' runs on the CPU only: move the model to the CPU first")
    model.eval()
    fuse_qkv(model)
    for m in model.modules():  # the fp32 CNN in NHWC: 0.22 -> 0.19 s for a 512 px ResNet-50 image (BENCHMARKS.md)
        if isinstance(m, VisualEncoder):
            m.use_channels_last()
    names = _converted_linears(model)
    if weights == "int8":
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        with warnings.catch_warnings():  # torch.ao.quantization's deprecation notices (torchao is its successor)
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", UserWarning)
            quantize_dynamic(model, {name: per_channel_dynamic_qconfig for name in names}, dtype=torch.qint8,
                             inplace=True)
        return model
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, Bf16Linear(getattr(parent, child)))
    return model


def weight_bytes(module: nn.Module) -> int:
    """Bytes of ``module``'s weights as stored (parameters and buffers, a tied tensor once, the
    packed int8 weights of dynamically quantised layers)."""
    seen: set[int] = set()
    total = 0

    def add(t: torch.Tensor) -> None:
        nonlocal total
        key = t.untyped_storage().data_ptr() if t.device.type != "meta" else id(t)
        if t.numel() and key not in seen:
            seen.add(key)
            total += t.numel() * t.element_size()

    for t in [*module.parameters(), *module.buffers()]:
        add(t)
    for m in module.modules():
        packed = getattr(m, "_packed_params", None)
        if packed is not None and hasattr(packed, "_weight_bias"):
            w, b = packed._weight_bias()
            total += w.numel() * w.element_size() + (0 if b is None else b.numel() * b.element_size())
            if w.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
                total += sum(t.numel() * t.element_size() for t in (w.q_per_channel_scales(),
                                                                   w.q_per_channel_zero_points()))
    return total
