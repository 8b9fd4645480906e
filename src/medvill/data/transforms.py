"""X-ray image preprocessing shared by training, inference and the prepared-image cache.

One code path (:class:`Preprocess`) turns any supported file into the square 8-bit image the
model sees; :func:`load_image` (training and inference) and
:func:`medvill.data.prepare.prepare_cache` (the resized cache) both go through it.

Pipeline and conventions
------------------------
1. **Decode** (:func:`decode_image`) to a 2-D ``float32`` array in ``[0, 1]``, ``0`` = black,
   ``1`` = white, as the image is meant to be *displayed* (bone bright, air dark).  The
   decoding of each file type (8- and 16-bit PNG, JPEG, DICOM, images of the prepared cache)
   is described in :mod:`medvill.data.decode` and :mod:`medvill.data.dicom`.
2. **Cut the marginal space** (:func:`crop_margins`): uniform borders only - black or white
   frames, collimation, scanner padding.  Paper: "cut the marginal space".
3. **Intensity sanity check** (:func:`intensity_warnings`), on the cropped image; problems are
   logged once per file (``logging.warning`` naming it), never silently passed on.
4. **Resize** keeping the aspect ratio so the longer side is ``image_size`` (Lanczos, which
   Pillow antialiases when reducing), then pad with black (0), centred, to a square.  Paper:
   "resize to 512 x 512 keeping the aspect ratio".
5. **8-bit**: ``round(value * 255)`` as a Pillow ``"L"`` image; :func:`to_tensor` repeats it to 3
   channels and normalises with the ImageNet statistics the torchvision backbones expect.

Errors: a missing file is a ``FileNotFoundError`` naming it; a corrupt or unreadable one a
``ValueError`` naming it.

The decoding names (:func:`decode_image`, :class:`Decoded`, :func:`to_uint8`, ...) live in
:mod:`medvill.data.decode` and are importable from here as well.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from PIL import Image

from . import image_warnings
from .decode import (
    CLIP_BOTH_FRACTION,
    CLIP_ONE_FRACTION,
    CLIP_TOLERANCE,
    DICOM_SUFFIXES,
    INTEGER_MODES,
    LOW_BITS_MAX,
    LOW_CONTRAST_SPREAD,
    NEAR_CONSTANT_SPREAD,
    PREPARED_KEY,
    SURROUND_LEVEL,
    WINDOW_MODES,
    Decoded,
    MissingDecoderError,
    decode_image,
    decode_pil_image,
    image_from_array,
    intensity_warnings,
    read_grayscale,
    read_image,
    to_uint8,
)

if TYPE_CHECKING:  # torch is imported lazily so that image workers start fast
    import torch

__all__ = [
    # preprocessing (this module)
    "CROP_DETECT_SIZE", "CROP_LINE_FRACTION", "CROP_THRESHOLD", "IMAGENET_MEAN", "IMAGENET_STD", "MAX_CROP",
    "PIPELINE_VERSION", "PIXEL_CACHE", "Preprocess", "crop_margins", "load_image", "margin_box", "resize_pad",
    "resize_pad_array", "to_tensor", "warn_once",
    # decoding (medvill.data.decode), re-exported
    "CLIP_BOTH_FRACTION", "CLIP_ONE_FRACTION", "CLIP_TOLERANCE", "DICOM_SUFFIXES", "INTEGER_MODES", "LOW_BITS_MAX",
    "LOW_CONTRAST_SPREAD", "NEAR_CONSTANT_SPREAD", "SURROUND_LEVEL", "PREPARED_KEY", "WINDOW_MODES", "Decoded",
    "MissingDecoderError",
    "decode_image", "decode_pil_image", "image_from_array", "intensity_warnings", "read_grayscale", "read_image",
    "to_uint8",
]

log = logging.getLogger(__name__)

_ImageT = TypeVar("_ImageT", np.ndarray, Image.Image)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: Bumped whenever the pixels this module produces change for the same settings; part of
#: :meth:`Preprocess.settings`, so a prepared cache made by older code is not silently reused.
PIPELINE_VERSION = 1

# --- margin cropping (see crop_margins) -------------------------------------------------------
#: A pixel belongs to a border when it lies within this distance (on the [0, 1] scale, about
#: 5 gray levels of 255) of a border value.
CROP_THRESHOLD = 0.02
#: A row/column is border when at least this fraction of its pixels are border pixels
#: (tolerates a burned-in marker letter or a few dust pixels).
CROP_LINE_FRACTION = 0.99
#: Never cut more than this fraction of the height, nor of the width.
MAX_CROP = 0.5
#: Borders are detected on a block-averaged copy whose longer side is at most this.
CROP_DETECT_SIZE = 256


# ============================================================================================
# margins, logged warnings, resize
# ============================================================================================

def margin_box(img: np.ndarray, threshold: float = CROP_THRESHOLD, max_crop: float = MAX_CROP,
               line_fraction: float = CROP_LINE_FRACTION) -> tuple[int, int, int, int]:
    """The ``(top, bottom, left, right)`` bounds (slice ends exclusive) left by cutting the
    uniform borders of a float [0, 1] image.  Deterministic; see :func:`crop_margins`."""
    img = np.asarray(img, dtype=np.float32)
    h, w = img.shape
    f = max(1, math.ceil(max(h, w) / CROP_DETECT_SIZE))
    hs, ws = max(1, h // f), max(1, w // f)
    if f > 1 and h >= f and w >= f:
        small = img[: hs * f, : ws * f].reshape(hs, f, ws, f).mean(axis=(1, 3))
    else:
        f, hs, ws, small = 1, h, w, img
    if hs < 3 or ws < 3:
        return 0, h, 0, w
    # Border values: the median of the central half of each outer line, when that half is uniform.
    refs = []
    for line in (small[0, ws // 4: ws - ws // 4], small[-1, ws // 4: ws - ws // 4],
                 small[hs // 4: hs - hs // 4, 0], small[hs // 4: hs - hs // 4, -1]):
        m = float(np.median(line))
        if np.mean(np.abs(line - m) <= threshold) >= line_fraction:
            refs.append(m)
    if not refs:
        return 0, h, 0, w
    border = np.zeros(small.shape, dtype=bool)
    for m in refs:
        border |= np.abs(small - m) <= threshold
    y0, y1, x0, x1 = 0, hs, 0, ws
    for _ in range(16):
        before = (y0, y1, x0, x1)
        rows = border[y0:y1, x0:x1].mean(axis=1) >= line_fraction
        y0, y1 = y0 + _leading(rows), y1 - _leading(rows[::-1])
        if y0 >= y1:
            break
        cols = border[y0:y1, x0:x1].mean(axis=0) >= line_fraction
        x0, x1 = x0 + _leading(cols), x1 - _leading(cols[::-1])
        if x0 >= x1 or (y0, y1, x0, x1) == before:
            break
    y0, y1 = _cap(y0, hs - y1, hs, max_crop)
    x0, x1 = _cap(x0, ws - x1, ws, max_crop)
    y1, x1 = hs - y1, ws - x1
    # back to full resolution; partial blocks stay (conservative by up to f - 1 pixels)
    top, left = y0 * f, x0 * f
    bottom = h if y1 == hs else y1 * f
    right = w if x1 == ws else x1 * f
    return top, bottom, left, right


def _leading(flags: np.ndarray) -> int:
    """Number of leading True values."""
    idx = np.flatnonzero(~flags)
    return int(idx[0]) if idx.size else int(flags.size)


def _cap(first: int, last: int, n: int, max_crop: float) -> tuple[int, int]:
    """Shrink the two cuts of one axis proportionally so together they are <= max_crop * n."""
    first, last = max(first, 0), max(last, 0)
    limit = int(math.floor(max_crop * n))
    if first + last <= limit:
        return first, last
    total = first + last
    return first * limit // total, last * limit // total


def crop_margins(img: _ImageT, threshold: float = CROP_THRESHOLD, *,
                 max_crop: float = MAX_CROP, line_fraction: float = CROP_LINE_FRACTION) -> _ImageT:
    """Cut the uniform borders ("marginal space") of an X-ray: black or white frames,
    collimation, scanner padding.  Returns the same type (float array in [0, 1] or Pillow image).

    Rule (deterministic):

    1. Work on a block-averaged copy (integer factor, longer side <= 256 px; averaging also
       suppresses noise in collimated areas).
    2. Border values: for each side, the median of the central half of its outermost line, if at
       least ``line_fraction`` (99 %) of that half lies within ``threshold`` of it.  No border
       value -> no crop.
    3. A pixel is a border pixel when it is within ``threshold`` (default 0.02, about 5 of 255
       gray levels) of any border value (so a black side bar next to a white collimated top is
       handled too).
    4. Peel off whole rows from the top and bottom and whole columns from the left and right
       while at least ``line_fraction`` of the line (within the current bounds) is border,
       repeating until nothing changes.
    5. Never cut more than ``max_crop`` (default 0.5) of the height, nor of the width: larger
       cuts are shrunk proportionally on both sides.
    6. Back at full resolution a partly-border block is kept, so up to ``factor - 1`` pixels of
       border may remain; image content is never cut.

    An image without uniform borders is returned unchanged (the same object).
    """
    if isinstance(img, Image.Image):
        arr = np.asarray(img.convert("L") if img.mode not in ("L", "F") else img, dtype=np.float32)
        if img.mode != "F":
            arr = arr / 255.0
        y0, y1, x0, x1 = margin_box(arr, threshold, max_crop, line_fraction)
        return img if (y0, y1, x0, x1) == (0, arr.shape[0], 0, arr.shape[1]) else img.crop((x0, y0, x1, y1))
    y0, y1, x0, x1 = margin_box(img, threshold, max_crop, line_fraction)
    if (y0, y1, x0, x1) == (0, img.shape[0], 0, img.shape[1]):
        return img
    return img[y0:y1, x0:x1]


_warned: set[str] = set()
_warned_lock = threading.Lock()


def warn_once(path: str | Path, messages: list[str] | tuple[str, ...]) -> bool:
    """``logging.warning`` the messages about ``path`` in one line, once per file and process
    (inside :func:`~medvill.data.image_warnings.collected_image_warnings`: gathered for the
    run's summary instead).  Returns whether it logged."""
    if not messages:
        return False
    collector = image_warnings.active()
    if collector is not None:
        collector.add(path, messages)
        return False
    key = str(path)
    with _warned_lock:
        if key in _warned:
            return False
        _warned.add(key)
    log.warning("%s: %s", key, "; ".join(messages))
    return True


def resize_pad_array(pixels: np.ndarray, size: int) -> np.ndarray:
    """Float (H, W) -> float32 (size, size): longer side ``size`` keeping the aspect ratio
    (Lanczos, antialiased when reducing, clipped to [0, 1]), centred on a black (0) square;
    odd padding puts the extra pixel on the bottom/right."""
    h, w = pixels.shape
    scale = size / max(h, w)
    nw, nh = min(size, max(1, round(w * scale))), min(size, max(1, round(h * scale)))
    if (nh, nw) != (h, w):
        im = Image.fromarray(np.ascontiguousarray(pixels, dtype=np.float32), mode="F")
        resized = np.clip(np.asarray(im.resize((nw, nh), Image.Resampling.LANCZOS)), 0.0, 1.0)
    else:
        resized = np.asarray(pixels, dtype=np.float32)
    if (nh, nw) == (size, size):
        return np.ascontiguousarray(resized, dtype=np.float32)
    out = np.zeros((size, size), dtype=np.float32)
    top, left = (size - nh) // 2, (size - nw) // 2
    out[top:top + nh, left:left + nw] = resized
    return out


def resize_pad(image: Image.Image, size: int) -> Image.Image:
    """Pillow image -> (size, size) image of the same mode ("F" stays float, others become "L"):
    longer side ``size`` keeping the aspect ratio, centred on black (see :func:`resize_pad_array`)."""
    if image.mode == "F":
        return Image.fromarray(resize_pad_array(np.asarray(image, dtype=np.float32), size), mode="F")
    gray = image if image.mode == "L" else image.convert("L")
    if gray.size == (size, size):
        return gray
    arr = np.asarray(gray, dtype=np.float32) / 255.0
    return Image.fromarray(to_uint8(resize_pad_array(arr, size)), mode="L")


# ============================================================================================
# the pipeline
# ============================================================================================

@dataclass(frozen=True)
class Preprocess:
    """The X-ray preprocessing of the paper, as one callable: decode -> cut uniform margins ->
    intensity sanity check -> keep-aspect resize (longer side ``image_size``) + centred black
    padding -> 8-bit.  See the module docstring (and :mod:`medvill.data.decode` for decoding) for
    every convention.

    ``image_size``: output side in pixels (paper: 512).  ``crop_margins``: cut uniform borders
    (paper: yes).  ``window``: DICOM VOI handling, ``"auto"`` (VOI LUT / window tags when
    present) or ``"none"`` (min-max).  ``crop_threshold`` / ``max_crop``: see
    :func:`crop_margins`.  ``check_intensity``: run :func:`intensity_warnings`;
    ``cross_sectional``: check it as a CT or MR slice (neither changes pixels, so they are not
    part of :meth:`settings`).
    """

    image_size: int = 512
    crop_margins: bool = True
    window: str = "auto"
    crop_threshold: float = CROP_THRESHOLD
    max_crop: float = MAX_CROP
    check_intensity: bool = True
    cross_sectional: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.image_size, int) or self.image_size < 8:
            raise ValueError(f"image_size must be an integer >= 8, got {self.image_size!r}")
        if self.window not in WINDOW_MODES:
            raise ValueError(f"unknown window mode {self.window!r}; choose one of {', '.join(WINDOW_MODES)}")
        if not 0.0 <= self.crop_threshold < 0.5:
            raise ValueError(f"crop_threshold must be in [0, 0.5), got {self.crop_threshold!r}")
        if not 0.0 <= self.max_crop < 1.0:
            raise ValueError(f"max_crop must be in [0, 1), got {self.max_crop!r}")

    def settings(self) -> dict[str, Any]:
        """Everything that determines the output pixels (for cache keys), JSON-ready."""
        d = dataclasses.asdict(self)
        d.pop("check_intensity")
        d.pop("cross_sectional")
        d["pipeline_version"] = PIPELINE_VERSION
        return d

    def run(self, path: str | Path | Image.Image | np.ndarray) -> tuple[np.ndarray, list[str]]:
        """The preprocessed image as float32 (image_size, image_size) in [0, 1] and the warnings
        about it (decoder notes + failed sanity checks), *not* logged.

        ``path`` may also be an in-memory image: a Pillow image or a numpy array (see
        :func:`image_from_array`), decoded by :func:`decode_pil_image` like the file it came from.
        """
        if isinstance(path, Image.Image):
            return self.process(decode_pil_image(path, "<PIL image>"))
        if isinstance(path, np.ndarray):
            return self.process(decode_pil_image(image_from_array(path), "<array>"))
        return self.process(decode_image(path, window=self.window, draft_size=2 * self.image_size))

    def process(self, decoded: Decoded) -> tuple[np.ndarray, list[str]]:
        """Steps 2-4 on an already decoded image (:meth:`run` after decoding; in-memory images
        come here through :func:`decode_pil_image`)."""
        pixels = decoded.pixels
        warnings = list(decoded.notes)
        if decoded.prepared is None:
            if self.crop_margins:
                pixels = crop_margins(pixels, self.crop_threshold, max_crop=self.max_crop)
            if self.check_intensity:
                warnings += intensity_warnings(pixels, kind=decoded.kind, raw_max=decoded.raw_max,
                                               cross_sectional=self.cross_sectional)
        return resize_pad_array(pixels, self.image_size), warnings

    def __call__(self, path: str | Path | Image.Image | np.ndarray) -> Image.Image:
        """The preprocessed 8-bit ``"L"`` image; warnings are logged once per file (every time
        for an in-memory image)."""
        pixels, warnings = self.run(path)
        if isinstance(path, (str, Path)):
            warn_once(path, warnings)
        elif warnings:
            log.warning("%s: %s", type(path).__name__, "; ".join(warnings))
        return Image.fromarray(to_uint8(pixels), mode="L")


def to_tensor(image: Image.Image) -> torch.Tensor:
    """Grayscale 8-bit image -> float tensor (3, H, W): ``/255``, repeated to 3 channels and
    normalised with the ImageNet mean/std."""
    import torch

    arr = torch.from_numpy(np.asarray(image.convert("L") if image.mode != "L" else image, dtype=np.float32) / 255.0)
    x = arr[None].expand(3, -1, -1)
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    return (x - mean) / std


class _PixelCache:
    """Preprocessed 8-bit images of files, kept in memory up to ``max_bytes`` (oldest out
    first), so that epochs after the first, and every later run of the same process (the
    demo trains a dozen models on one data set), skip decoding, cropping and resizing.  The
    key holds the file's size and modification time and every preprocessing setting, so a
    changed file or setting is preprocessed again."""

    def __init__(self, max_bytes: int = 256 * 2**20):
        self.max_bytes = max_bytes
        self.items: dict[tuple, Image.Image] = {}
        self.bytes = 0
        self.lock = threading.Lock()

    def clear(self) -> None:
        with self.lock:
            self.items.clear()
            self.bytes = 0

    def get(self, path: Path, pre: Preprocess) -> Image.Image:
        st = path.stat()
        key = (str(path), st.st_size, st.st_mtime_ns, json.dumps(pre.settings(), sort_keys=True))
        with self.lock:
            hit = self.items.get(key)
        if hit is not None:
            return hit
        image = pre(path)
        size = image.width * image.height
        with self.lock:
            if size <= self.max_bytes and key not in self.items:
                while self.items and self.bytes + size > self.max_bytes:
                    old = self.items.pop(next(iter(self.items)))
                    self.bytes -= old.width * old.height
                self.items[key] = image
                self.bytes += size
        return image


PIXEL_CACHE = _PixelCache()


def load_image(path: str | Path | Image.Image | np.ndarray, size: int,
               preprocess: Preprocess | None = None) -> torch.Tensor:
    """The model input for one file (or in-memory image): :class:`Preprocess` (default settings,
    ``image_size=size``) then :func:`to_tensor`.  Images of the prepared cache are used as
    prepared.  Training and inference (:class:`medvill.Pipeline`) both call this.  Files are
    preprocessed once per process (:data:`PIXEL_CACHE`)."""
    pre = preprocess if preprocess is not None else Preprocess(image_size=size)
    if pre.image_size != size:
        pre = dataclasses.replace(pre, image_size=size)
    if isinstance(path, (str, Path)):
        return to_tensor(PIXEL_CACHE.get(Path(path), pre))
    return to_tensor(pre(path))
