"""Image loading and normalisation shared by training and inference.

An X-ray is read as grayscale, resized so its longer side equals ``image_size`` keeping the
aspect ratio, padded (centred) to a square, scaled to [0, 1], repeated to 3 channels and
normalised with the ImageNet statistics the torchvision backbones expect.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def read_grayscale(path: str | Path) -> Image.Image:
    """Open an image file as 8-bit grayscale; a missing or corrupt file is an error naming it."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(im, dtype=np.float32)
                lo, hi = float(arr.min()), float(arr.max())
                arr = (arr - lo) / max(hi - lo, 1.0) * 255.0
                return Image.fromarray(arr.round().astype(np.uint8), mode="L")
            return im.convert("L")
    except FileNotFoundError:
        raise FileNotFoundError(f"image not found: {path}") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ValueError(f"cannot read image {path}: {exc}") from None


def resize_pad(image: Image.Image, size: int) -> Image.Image:
    """Resize keeping the aspect ratio so the longer side is ``size``, then pad to a square."""
    w, h = image.size
    if (w, h) == (size, size):
        return image
    scale = size / max(w, h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    resized = image.resize((nw, nh), Image.BILINEAR)
    canvas = Image.new("L", (size, size), 0)
    canvas.paste(resized, ((size - nw) // 2, (size - nh) // 2))
    return canvas


def to_tensor(image: Image.Image) -> torch.Tensor:
    """Grayscale PIL image -> normalised float tensor (3, H, W)."""
    arr = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)
    x = arr[None].expand(3, -1, -1)
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    return (x - mean) / std


def load_image(path: str | Path, size: int) -> torch.Tensor:
    return to_tensor(resize_pad(read_grayscale(path), size))
