"""What the Pipeline accepts, and the training preprocessing it gives every image.

**Images** may be file paths (PNG, JPEG, DICOM, 16-bit PNG/TIFF, ...), Pillow images or numpy
arrays (``uint8`` or ``uint16`` gray, ``uint8`` RGB/RGBA, floats in [0, 1]).  Every image goes
through :func:`medvill.data.transforms.load_image`, the very function training reads images
with (decode, cut uniform margins, keep-aspect resize and pad, 8-bit, ImageNet normalisation).
When the model was trained on a prepared-image cache (``medvill prepare``), an original image is
first given the cache's preprocessing, as the cache did (``preprocess.json`` beside the
checkpoint records which): :class:`ModelInput`.  An in-memory image decodes exactly like the
file it was read from, except for what only a file holds: a PNG's ``sBIT`` bit depth and JPEG
draft scaling (pass the path to have those).

**Texts** (reports, questions) are WordPiece-encoded as training encoded them.  **Batches**: a
list or a tuple is a batch, anything else one input; a batch is processed in slices of the
Pipeline's ``batch_size``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..checkpoint_files import INPUT_INFO, read_json_file, read_run_config, training_root
from ..config import ConfigError
from ..data.pairs import encode_reports, pad_stack
from ..data.prepare import training_input_settings
from ..data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    PIPELINE_VERSION,
    Decoded,
    Preprocess,
    load_image,
    to_tensor,
    to_uint8,
)
from ..tokenization import MedTokenizer

log = logging.getLogger("medvill.inference")  # the logger of every inference module

#: An image as the Pipeline accepts it: a file path, a Pillow image or a numpy array.
ImageInput = str | os.PathLike | Image.Image | np.ndarray
#: A batch as the Pipeline's methods take it: a list or a tuple (anything else is one input).
Batch = list[Any] | tuple[Any, ...]


# ============================================================================================
# the training preprocessing
# ============================================================================================

@dataclass(frozen=True)
class ModelInput:
    """Any image -> the model input tensor ``(3, S, S)``, exactly as training read its images.

    ``cache``: None when training read the original files (then this is
    :func:`~medvill.data.transforms.load_image` at ``image_size``); else the preprocessing of the
    prepared-image cache training read, applied first as the cache applied it (8-bit result),
    followed by what :func:`load_image` does with a cached image (resize only)."""

    image_size: int
    cache: Preprocess | None = None

    @classmethod
    def for_checkpoint(cls, directory: str | Path, image_size: int) -> ModelInput:
        """From the checkpoint's ``preprocess.json``; older checkpoints: from the data root in
        its ``run_config.yaml`` (when that folder is still there)."""
        directory = Path(directory)
        path = directory / INPUT_INFO
        if path.is_file():
            cache = _recorded_cache(path, image_size)
        else:
            cache = training_input_settings(_training_root(directory), image_size)["cache"]
        if cache is None:
            return cls(image_size)
        if cache.get("pipeline_version") != PIPELINE_VERSION:
            log.warning("%s was trained on images prepared by preprocessing version %s; this medvill has version %s",
                        directory, cache.get("pipeline_version"), PIPELINE_VERSION)
        fields = ("image_size", "crop_margins", "window", "crop_threshold", "max_crop")
        try:
            return cls(image_size, Preprocess(**{k: cache[k] for k in fields if k in cache}))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{directory}: invalid preprocessing settings {cache} ({exc})") from None

    def __call__(self, image: ImageInput) -> torch.Tensor:
        source = Path(image) if isinstance(image, os.PathLike) else image  # any path object as a Path
        if self.cache is None:
            return load_image(source, self.image_size)
        cached = self.cache(source)  # what medvill prepare wrote (an already prepared image stays as it is)
        decoded = Decoded(np.asarray(cached, dtype=np.float32) / 255.0, "prepared",
                          prepared={"settings": self.cache.settings()})
        pixels, _ = Preprocess(image_size=self.image_size).process(decoded)
        return to_tensor(Image.fromarray(to_uint8(pixels), mode="L"))


def _recorded_cache(path: Path, image_size: int) -> dict[str, Any] | None:
    """The cache settings a checkpoint's ``preprocess.json`` records (None: the original files),
    checked against the model's ``image_size``."""
    info = read_json_file(path)
    try:
        cache, size = info["cache"], int(info["image_size"])
        if cache is not None and not isinstance(cache, dict):
            raise TypeError(f"'cache' must be an object or null, got {type(cache).__name__}")
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{path}: not a medvill {INPUT_INFO} ({type(exc).__name__}: {exc})") from None
    if size != image_size:
        raise ConfigError(f"{path}: image_size {size} differs from the model's {image_size}")
    return cache


def _training_root(directory: Path) -> str | None:
    """The data root of an older checkpoint's run (None: not recorded or no longer there)."""
    run = read_run_config(directory)
    root = training_root(directory, run)
    if root is None and ((run or {}).get("data") or {}).get("root"):
        log.warning("%s has no %s and its training data is not here: cannot check whether training read a "
                    "prepared-image cache; using the default preprocessing", directory, INPUT_INFO)
    return root


def image_from_tensor(x: torch.Tensor) -> np.ndarray:
    """The 8-bit image ``(S, S)`` behind a model input tensor (inverts the normalisation)."""
    c0 = x[0].detach().float().cpu().numpy()
    return to_uint8(c0 * IMAGENET_STD[0] + IMAGENET_MEAN[0])


# ============================================================================================
# checking and keying images
# ============================================================================================

def _check_image(x: Any, what: str = "image") -> None:
    """TypeError unless ``x`` is an :data:`ImageInput`; ``what`` names it in the message."""
    if not isinstance(x, (str, os.PathLike, Image.Image, np.ndarray)):
        raise TypeError(f"{what}: expected a file path, a PIL image or a numpy array, got {type(x).__name__}")


def _is_image_query(x: Any) -> bool:
    """Whether a retrieval query is an image: a path object, a PIL image, an array or a ``str``
    naming an existing file (any other ``str`` is a report)."""
    if isinstance(x, (os.PathLike, Image.Image, np.ndarray)):
        return True
    if isinstance(x, str):
        try:
            return len(x) < 4096 and "\n" not in x and Path(x).is_file()
        except OSError:  # e.g. a long report is no valid file name
            return False
    raise TypeError(f"query: expected an image (path, PIL image, array) or a report (str), got {type(x).__name__}")


def _path_key(x: Any) -> tuple | None:
    """Cache key of an image file (path, modification time, size); None for in-memory images."""
    if isinstance(x, (str, os.PathLike)):
        p = Path(x)
        try:
            st = p.stat()
        except OSError:
            return None  # let preprocessing raise the clear error
        return ("file", str(p.resolve()), st.st_mtime_ns, st.st_size)
    return None


# ============================================================================================
# texts and batches
# ============================================================================================

def _encode_texts(tokenizer: MedTokenizer, texts: Sequence[str],
                  max_text_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids ``(B, T)`` of ``texts`` as training encoded them, padded, and their validity
    mask ``(B, T)`` (True on real tokens); on the CPU."""
    for t in texts:
        if not isinstance(t, str):
            raise TypeError(f"expected text (str), got {type(t).__name__}")
    ids = encode_reports(tokenizer, list(texts), max_text_len)
    lengths = torch.tensor([len(i) for i in ids])
    text_ids = pad_stack(ids, tokenizer.pad_id)
    valid = torch.arange(text_ids.shape[1])[None] < lengths[:, None]
    return text_ids, valid


def _as_list(x: Any) -> tuple[list, bool]:
    """``(items, single)``: a list/tuple is a batch, anything else one item."""
    if isinstance(x, (list, tuple)):
        return list(x), False
    return [x], True


def _pair_inputs(images: Any, texts: Any, what: str, default: str | None = None) -> tuple[list, list[str], bool]:
    """Images and texts as equal-length lists (a single one is repeated); ``single`` when
    neither was a list.  ``texts`` None: ``default``, or a ValueError naming ``what`` when there
    is none."""
    imgs, single_img = _as_list(images)
    if texts is None:
        if default is None:
            raise ValueError(f"{what} is required")
        texts = default
    txts, single_txt = _as_list(texts)
    if single_img and not single_txt:
        imgs = imgs * len(txts)
    elif single_txt and not single_img:
        txts = txts * len(imgs)
    elif len(imgs) != len(txts):
        raise ValueError(f"{len(imgs)} images but {len(txts)} {what}")
    return imgs, txts, single_img and single_txt


def _chunks(n: int, size: int) -> Iterator[slice]:
    """Slices of ``range(n)`` of at most ``size`` items, in order."""
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))
