"""CNN backbones that turn an X-ray into K visual tokens with their grid locations.

ResNet-50 (default, as in the paper), ResNet-101 and DenseNet-121 come from torchvision,
with ImageNet weights when ``backbone_pretrained`` is set (downloaded once by torchvision;
offline this fails with a message that says how to proceed).  ``small_cnn`` is a four-block
CNN of stride 16 for tests and CPU demos.

The backbone is always trainable: every parameter keeps ``requires_grad=True`` (the
original code froze it by accident; a test checks that gradients reach it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from ..config import ModelConfig

if TYPE_CHECKING:
    from torchvision.models import WeightsEnum


class SmallCNN(nn.Module):
    """Four 3x3 stride-2 conv blocks (BN + ReLU): stride 16, ``2 * channels`` outputs."""

    def __init__(self, channels: int = 64, in_channels: int = 3):
        super().__init__()
        widths = [channels // 2, channels, channels * 2, channels * 2]
        layers: list[nn.Module] = []
        prev = in_channels
        for w in widths:
            layers += [nn.Conv2d(prev, w, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
            layers += [nn.Conv2d(w, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
            prev = w
        self.body = nn.Sequential(*layers)
        self.out_channels = prev

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def _imagenet_weights(name: str) -> WeightsEnum:
    import torchvision.models as tvm

    enum = {
        "resnet50": tvm.ResNet50_Weights, "resnet101": tvm.ResNet101_Weights, "densenet121": tvm.DenseNet121_Weights
    }[name]
    return enum.DEFAULT


def build_backbone(cfg: ModelConfig, load_pretrained: bool = True) -> tuple[nn.Module, int]:
    """Return ``(trunk, out_channels)``; ``trunk(images)`` is ``(B, C, H/stride, W/stride)``.

    ``load_pretrained=False`` skips the ImageNet download even when the config asks for it
    (used when the weights come from a medvill checkpoint anyway).
    """
    name = cfg.backbone
    if name == "small_cnn":
        net = SmallCNN(cfg.small_cnn_channels)
        return net, net.out_channels

    import torchvision.models as tvm

    weights = _imagenet_weights(name) if (cfg.backbone_pretrained and load_pretrained) else None
    try:
        net = getattr(tvm, name)(weights=weights)
    except Exception as exc:  # network errors surface as URLError / OSError / RuntimeError
        raise RuntimeError(
            f"could not load ImageNet weights for {name} ({type(exc).__name__}: {exc}). "
            f"torchvision downloads them once into {torch.hub.get_dir()}/checkpoints; without a "
            "network, copy the file there by hand or start from random weights with "
            "--set model.backbone_pretrained=false"
        ) from exc
    if name.startswith("resnet"):
        trunk = nn.Sequential(
            net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3, net.layer4
        )
        return trunk, net.fc.in_features
    # DenseNet: the feature trunk ends in a BatchNorm; torchvision applies ReLU afterwards.
    trunk = nn.Sequential(net.features, nn.ReLU(inplace=False))
    return trunk, net.classifier.in_features


class VisualEncoder(nn.Module):
    """Image ``(B, 3, H, W)`` -> features ``(B, K, C)`` in row-major grid order.

    ``channels_last`` (:meth:`use_channels_last`, called by
    :func:`medvill.train.memory.apply_memory_options` and the inference weight formats) runs the
    CNN on NHWC tensors, which the convolution kernels prefer; the output is the same up to
    float rounding.
    """

    channels_last: bool = False

    def __init__(self, cfg: ModelConfig, load_pretrained: bool = True):
        super().__init__()
        self.trunk, self.out_channels = build_backbone(cfg, load_pretrained)
        self.grid_size = cfg.grid_size

    def use_channels_last(self) -> None:
        """The CNN's weights and inputs in NHWC layout from now on."""
        self.channels_last = True
        self.trunk.to(memory_format=torch.channels_last)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        fmap = self.trunk(images)  # (B, C, h, w)
        if fmap.shape[-2:] != (self.grid_size, self.grid_size):
            raise ValueError(
                f"images of size {tuple(images.shape[-2:])} give a {tuple(fmap.shape[-2:])} feature map; "
                f"the model expects {self.grid_size}x{self.grid_size} (model.image_size)"
            )
        return fmap.flatten(2).transpose(1, 2)  # (B, K, C)


def sample_visual_tokens(
    features: torch.Tensor, k: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Randomly keep k of the K visual tokens of each example (independently per example).

    Returns ``(features (B, k, C), grid_index (B, k))``; kept tokens stay in grid order and
    keep their true grid index, so their location embedding is the real one.
    """
    b, big_k, _ = features.shape
    if not 1 <= k <= big_k:
        raise ValueError(f"cannot sample k={k} of K={big_k} visual tokens")
    scores = torch.rand(b, big_k, generator=generator, device="cpu").to(features.device)
    index = scores.argsort(dim=1)[:, :k].sort(dim=1).values  # (B, k)
    picked = features.gather(1, index[:, :, None].expand(-1, -1, features.shape[-1]))
    return picked, index
