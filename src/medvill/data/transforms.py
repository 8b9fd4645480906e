"""X-ray image preprocessing shared by training, inference and the prepared-image cache.

One code path (:class:`Preprocess`) turns any supported file into the square 8-bit image the
model sees; :func:`load_image` (training and inference) and
:func:`medvill.data.prepare.prepare_cache` (the resized cache) both go through it.

Pipeline and conventions
------------------------
1. **Decode** (:func:`decode_image`) to a 2-D ``float32`` array in ``[0, 1]``, ``0`` = black,
   ``1`` = white, as the image is meant to be *displayed* (bone bright, air dark).  Full
   precision is kept until the final 8-bit conversion.  The file type is found from the file's
   content (a DICOM ``DICM`` preamble or a ``.dcm``/``.dicom``/``.dic`` name; anything else goes
   to Pillow), not from its name alone.

   * 8-bit images (PNG, JPEG, ...; palette/RGB are converted to luminance): ``value / 255``.
   * 16-bit grayscale PNG/TIFF: ``value / (2**bits - 1)`` where ``bits`` is the PNG ``sBIT``
     significant-bit depth when present and consistent with the data, otherwise the smallest of
     8, 10, 12, 14, 16 that holds the image's maximum.  So 12-bit data stored in 16 bits fills
     ``[0, 1]`` instead of coming out 16x too dark; an image is never stretched beyond that.
     Values outside 0..65535 (32-bit containers) are min-max stretched, with a warning.
   * DICOM (pydicom): unused high bits beyond ``BitsStored`` are masked (sign-extended when
     ``PixelRepresentation`` is 1); the modality transform (``RescaleSlope``/``RescaleIntercept``
     or a Modality LUT) is applied; then, with ``window="auto"``, the first VOI LUT of a
     ``VOILUTSequence`` (normalised by its output bit depth), else the first
     ``WindowCenter``/``WindowWidth`` pair with the ``VOILUTFunction`` (LINEAR as in DICOM
     PS3.3 C.11.2.1.2, LINEAR_EXACT or SIGMOID), else a min-max stretch of the modality values.
     ``window="none"`` always min-max stretches.  ``MONOCHROME1`` is inverted (``1 - value``)
     after the VOI step; ``PresentationLUTShape`` is not used.  Multi-frame files use frame 0
     (with a warning).  Compressed transfer syntaxes need pydicom pixel-data plugins; when none
     is installed, :class:`MissingDecoderError` names the file, the transfer syntax and the
     packages to install.
   * A PNG written by the prepared-image cache (it carries a ``medvill-prepared`` text chunk)
     is already preprocessed: it is neither cropped nor checked again, only resized when another
     ``image_size`` is asked for.
   * JPEG is decoded with Pillow's DCT scaling (``draft``) to no less than twice the target size
     (a fast, antialiased reduction by 2, 4 or 8; deterministic).

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
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

import numpy as np
from PIL import Image

if TYPE_CHECKING:  # torch is imported lazily so that image workers start fast
    import torch

log = logging.getLogger(__name__)

_ImageT = TypeVar("_ImageT", np.ndarray, Image.Image)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: Bumped whenever the pixels this module produces change for the same settings; part of
#: :meth:`Preprocess.settings`, so a prepared cache made by older code is not silently reused.
PIPELINE_VERSION = 1
#: PNG text-chunk key marking an image written by the prepared-image cache.
PREPARED_KEY = "medvill-prepared"
WINDOW_MODES = ("auto", "none")
DICOM_SUFFIXES = (".dcm", ".dicom", ".dic")

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

# --- intensity sanity check (see intensity_warnings) ------------------------------------------
#: 1st..99th percentile spread below this: "nearly constant" (blank, or everything clipped).
NEAR_CONSTANT_SPREAD = 0.02
#: 1st..99th percentile spread below this (and not nearly constant): "low contrast" - usually a
#: wrong bit depth or window.  A normal chest radiograph spreads over well above half the range.
LOW_CONTRAST_SPREAD = 0.10
#: At least this fraction of pixels at 0 *and* at least this fraction at 1: clipped at both ends
#: (a window far too narrow, or a mis-scaled image).
CLIP_BOTH_FRACTION = 0.20
#: At least this fraction of pixels at one end (0 or 1): saturated.
CLIP_ONE_FRACTION = 0.50
#: Pixels within this of 0 or 1 count as clipped (half a gray level of 255).
CLIP_TOLERANCE = 0.5 / 255
#: An integer container deeper than 8 bits whose maximum is at most this uses only the low 8 bits.
LOW_BITS_MAX = 255


class MissingDecoderError(ValueError):
    """A DICOM file's compressed pixel data needs a pydicom plugin that is not installed."""


class Decoded(NamedTuple):
    """The result of :func:`decode_image`.

    ``pixels``: float32 (H, W) in [0, 1], display orientation.  ``kind``: ``"8-bit"``,
    ``"16-bit"`` (integer container deeper than 8 bits), ``"float"``, ``"dicom"`` or
    ``"prepared"``.  ``bits``: the bit depth the values were divided by (integer containers) or
    None.  ``raw_max``: the largest stored value (integer containers) or None.  ``notes``:
    decoder-level warnings (always reported).  ``prepared``: the cache marker of a prepared
    image, else None.
    """

    pixels: np.ndarray
    kind: str
    bits: int | None = None
    raw_max: float | None = None
    notes: tuple[str, ...] = ()
    prepared: dict | None = None


# ============================================================================================
# decoding
# ============================================================================================

def decode_image(path: str | Path, *, window: str = "auto", draft_size: int | None = None) -> Decoded:
    """Read one image file to float32 [0, 1] (see the module docstring for every convention).

    ``draft_size``: for JPEG, let the decoder reduce by 2/4/8 as long as both sides stay at
    least this large (None: full resolution).
    """
    if window not in WINDOW_MODES:
        raise ValueError(f"unknown window mode {window!r}; choose one of {', '.join(WINDOW_MODES)}")
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"image not found: {path}")
    if path.is_dir():
        raise ValueError(f"cannot read image {path}: it is a folder")
    try:
        if _is_dicom(path):
            return _decode_dicom(path, window)
        return _decode_pil(path, draft_size)
    except (FileNotFoundError, MissingDecoderError):
        raise
    except Exception as exc:  # noqa: BLE001 - any decoder failure is "unreadable", named
        msg = str(exc)
        if str(path) in msg:
            raise ValueError(msg) from None
        raise ValueError(f"cannot read image {path}: {type(exc).__name__}: {msg}") from None


def read_image(path: str | Path, *, window: str = "auto") -> np.ndarray:
    """The full-resolution image as float32 (H, W) in [0, 1] (no crop, no resize)."""
    return decode_image(path, window=window).pixels


def read_grayscale(path: str | Path, *, window: str = "auto") -> Image.Image:
    """The full-resolution image as 8-bit grayscale (``"L"``; no crop, no resize).

    A missing file is a ``FileNotFoundError`` naming it, a corrupt one a ``ValueError``.
    """
    return Image.fromarray(to_uint8(read_image(path, window=window)), mode="L")


def _is_dicom(path: Path) -> bool:
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    with path.open("rb") as fh:
        head = fh.read(132)
    return len(head) == 132 and head[128:132] == b"DICM"


INTEGER_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def _decode_pil(path: Path, draft_size: int | None) -> Decoded:
    with Image.open(path) as im:
        if draft_size and im.format == "JPEG":
            im.draft("L", (draft_size, draft_size))
        im.load()
        sbit = _png_sbit(path) if im.format == "PNG" and im.mode in INTEGER_MODES else None
        return decode_pil_image(im, path, sbit=sbit)


def decode_pil_image(im: Image.Image, source: str | Path = "<image>", *, sbit: int | None = None) -> Decoded:
    """A Pillow image (any mode) to float32 [0, 1] with the conventions of :func:`decode_image`.

    Files go through here after opening, so an in-memory image and the file it was read from
    decode the same, except for what only the file holds: the PNG ``sBIT`` bit depth (pass
    ``sbit``) and JPEG DCT draft scaling.  ``source`` names the image in messages.
    """
    fmt = im.format
    prepared = _prepared_marker(im.info.get(PREPARED_KEY)) if fmt == "PNG" else None
    mode = im.mode
    if mode in INTEGER_MODES:
        decoded = _decode_integer(np.asarray(im), sbit, source)
        return decoded._replace(prepared=prepared) if prepared else decoded
    if mode == "F":
        arr = np.asarray(im, dtype=np.float32)
        if not np.isfinite(arr).all():
            raise ValueError(f"cannot read image {source}: it contains NaN or infinite values")
        lo, hi = float(arr.min()), float(arr.max())
        if lo >= 0.0 and hi <= 1.0:
            return Decoded(arr.copy(), "float")
        return Decoded(_minmax(arr), "float", notes=(
            f"floating-point values outside [0, 1] (min {lo:g}, max {hi:g}); stretched min..max to 0..1",))
    if mode != "L":
        im = im.convert("L")
    pixels = np.asarray(im, dtype=np.float32) / 255.0
    return Decoded(pixels, "prepared" if prepared else "8-bit", prepared=prepared)


def image_from_array(arr: np.ndarray, source: str = "<array>") -> Image.Image:
    """A numpy image as the Pillow image a file with the same pixels opens to, so that
    :func:`decode_pil_image` treats both alike.

    Accepted: 2-D gray (``uint8``; ``uint16`` or other integers = a deeper container, scaled
    as a 16-bit file; floats in [0, 1], else min-max stretched) and ``(H, W, 1)``, ``(H, W, 3)``
    RGB or ``(H, W, 4)`` RGBA ``uint8`` (converted to luminance like an RGB file).  Anything
    else is a ``ValueError`` naming ``source``, the shape and the dtype.
    """
    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    what = f"{source}: shape {arr.shape}, dtype {arr.dtype}"
    if arr.size == 0 or arr.ndim not in (2, 3):
        raise ValueError(f"cannot read image {what}: expected (H, W), (H, W, 3) or (H, W, 4)")
    if arr.ndim == 3:
        if arr.shape[2] not in (3, 4) or arr.dtype != np.uint8:
            raise ValueError(f"cannot read image {what}: colour images must be uint8 with 3 (RGB) or 4 (RGBA) "
                             "channels; pass deeper images as 2-D grayscale")
        return Image.fromarray(np.ascontiguousarray(arr), mode="RGB" if arr.shape[2] == 3 else "RGBA")
    if arr.dtype == np.uint8:
        return Image.fromarray(np.ascontiguousarray(arr), mode="L")
    if arr.dtype == np.uint16:
        return Image.fromarray(np.ascontiguousarray(arr))  # mode I;16, as a 16-bit PNG opens
    if np.issubdtype(arr.dtype, np.integer):
        if arr.min() < np.iinfo(np.int32).min or arr.max() > np.iinfo(np.int32).max:
            raise ValueError(f"cannot read image {what}: values outside the 32-bit integer range")
        return Image.fromarray(arr.astype(np.int32), mode="I")
    if np.issubdtype(arr.dtype, np.floating):
        return Image.fromarray(arr.astype(np.float32), mode="F")
    raise ValueError(f"cannot read image {what}: unsupported dtype (use uint8, uint16, integers or floats)")


def _prepared_marker(text: Any) -> dict | None:
    if not isinstance(text, str):
        return None
    try:
        marker = json.loads(text)
    except json.JSONDecodeError:
        return None
    return marker if isinstance(marker, dict) and "format" in marker else None


def _png_sbit(path: Path) -> int | None:
    """The significant bits of a grayscale PNG (its ``sBIT`` chunk), or None."""
    with path.open("rb") as fh:
        if fh.read(8) != b"\x89PNG\r\n\x1a\n":
            return None
        color_type = None
        while True:
            head = fh.read(8)
            if len(head) < 8:
                return None
            length, ctype = struct.unpack(">I4s", head)
            if ctype in (b"IDAT", b"IEND"):
                return None
            if ctype in (b"IHDR", b"sBIT"):
                data = fh.read(length)
                fh.seek(4, 1)
                if ctype == b"IHDR" and len(data) >= 10:
                    color_type = data[9]
                elif ctype == b"sBIT" and data and color_type in (0, 4):  # gray, gray + alpha
                    return int(data[0])
            else:
                fh.seek(length + 4, 1)


def _decode_integer(arr: np.ndarray, sbit: int | None, path: str | Path) -> Decoded:
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi > 65535:
        return Decoded(_minmax(arr), "16-bit", None, float(hi), (
            f"integer values outside 0..65535 (min {lo}, max {hi}); stretched min..max to 0..1",))
    inferred = next(b for b in (8, 10, 12, 14, 16) if hi < 2 ** b)
    notes: tuple[str, ...] = ()
    if sbit is not None and 1 <= sbit <= 16 and hi < 2 ** sbit:
        bits = sbit
    else:
        bits = inferred
        if sbit is not None:
            notes = (f"values up to {hi} exceed the {sbit} significant bits the PNG declares (sBIT); "
                     f"scaled as {bits}-bit",)
    return Decoded(arr.astype(np.float32) / np.float32(2 ** bits - 1), "16-bit", bits, float(hi), notes)


def _minmax(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return np.zeros(values.shape, dtype=np.float32)
    return ((values - lo) / (hi - lo)).astype(np.float32)


# --- DICOM ------------------------------------------------------------------------------------

def _pydicom_fn(name: str) -> Callable[..., Any]:
    """A pixel helper from pydicom 3 (``pydicom.pixels``) or pydicom 2 (``pixel_data_handlers``)."""
    try:
        from pydicom import pixels
    except ImportError:  # pydicom 2.x
        from pydicom.pixel_data_handlers import util

        return getattr(util, name)
    return getattr(pixels, name)


def _missing_decoder_message(path: Path, ts: Any) -> str | None:
    """A clear message when no installed plugin can decode transfer syntax ``ts``, else None."""
    try:
        from pydicom.pixels import get_decoder

        decoder = get_decoder(ts)
        if decoder.is_available:
            return None
        missing = list(decoder.missing_dependencies)
    except Exception:  # noqa: BLE001 - pydicom 2 or an unknown syntax: a generic hint
        missing = ["pylibjpeg with pylibjpeg-libjpeg / pylibjpeg-openjpeg / pylibjpeg-rle", "gdcm"]
    name = getattr(ts, "name", str(ts))
    return (f"cannot decode {path}: its pixel data is compressed as {name} ({ts}) and no installed "
            f"pydicom plugin can decode it; install one of: {'; '.join(missing)}")


def _decode_dicom(path: Path, window: str) -> Decoded:
    import pydicom

    ds = pydicom.dcmread(path, force=True)
    if "PixelData" not in ds:
        raise ValueError(f"cannot read image {path}: the DICOM file has no pixel data")
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    try:
        arr = ds.pixel_array
    except Exception as exc:  # noqa: BLE001
        if ts is not None and getattr(ts, "is_compressed", False):
            msg = _missing_decoder_message(path, ts)
            if msg:
                raise MissingDecoderError(msg) from None
        raise ValueError(f"cannot decode the DICOM pixel data of {path}: {type(exc).__name__}: {exc}") from None
    notes: list[str] = []
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        arr = arr[0]
        notes.append(f"multi-frame DICOM ({frames} frames): using the first frame")
    bits_stored = int(ds.get("BitsStored", 0) or 0) or int(ds.get("BitsAllocated", 16) or 16)
    if samples == 3 or arr.ndim == 3:  # pydicom 3 returns YBR data converted to RGB
        rgb = arr.astype(np.float64)
        lum = rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
        return Decoded((lum / (2 ** bits_stored - 1)).clip(0, 1).astype(np.float32), "dicom", notes=tuple(notes))
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ValueError(f"cannot read image {path}: unsupported PhotometricInterpretation {photometric!r}")
    arr = _mask_bits(np.asarray(arr), bits_stored, int(ds.get("PixelRepresentation", 0) or 0))
    values = _modality(arr, ds)
    pixels = None
    if window == "auto":
        if "VOILUTSequence" in ds and len(ds.VOILUTSequence):
            pixels = _voi_lut(values, ds, path, notes)
        elif ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
            pixels = _window(values, ds, notes)
    if pixels is None:
        pixels = _minmax(values)
    if photometric == "MONOCHROME1":
        pixels = 1.0 - pixels
    return Decoded(np.ascontiguousarray(pixels, dtype=np.float32), "dicom", notes=tuple(notes))


def _mask_bits(arr: np.ndarray, bits_stored: int, signed: int) -> np.ndarray:
    """Keep the low ``bits_stored`` bits (sign-extending signed data); idempotent."""
    if arr.dtype.kind not in "iu" or bits_stored <= 0 or bits_stored >= arr.dtype.itemsize * 8:
        return arr
    raw = arr.astype(np.int64) & ((1 << bits_stored) - 1)
    if signed:
        raw = np.where(raw >= (1 << (bits_stored - 1)), raw - (1 << bits_stored), raw)
    return raw


def _first(value: Any) -> float:
    try:
        return float(value[0]) if not isinstance(value, (str, bytes)) and hasattr(value, "__len__") else float(value)
    except TypeError:
        return float(value)


def _modality(arr: np.ndarray, ds: Any) -> np.ndarray:
    """Stored values -> modality values (RescaleSlope/Intercept or a Modality LUT), float64."""
    if "ModalityLUTSequence" in ds:
        return np.asarray(_pydicom_fn("apply_modality_lut")(arr, ds), dtype=np.float64)
    slope = _first(ds.get("RescaleSlope", 1.0) or 1.0)
    intercept = _first(ds.get("RescaleIntercept", 0.0) or 0.0)
    return arr.astype(np.float64) * slope + intercept


def _window(values: np.ndarray, ds: Any, notes: list[str]) -> np.ndarray | None:
    """The first WindowCenter/WindowWidth pair -> [0, 1] (DICOM PS3.3 C.11.2.1.2/3)."""
    c, w = _first(ds.WindowCenter), _first(ds.WindowWidth)
    function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
    if function == "SIGMOID":
        if w <= 0:
            notes.append(f"invalid WindowWidth {w:g}; window ignored")
            return None
        return (1.0 / (1.0 + np.exp(-4.0 * (values - c) / w))).astype(np.float32)
    if function == "LINEAR_EXACT":
        if w <= 0:
            notes.append(f"invalid WindowWidth {w:g}; window ignored")
            return None
        return np.clip((values - c) / w + 0.5, 0.0, 1.0).astype(np.float32)
    if function != "LINEAR":
        notes.append(f"unknown VOILUTFunction {function!r}; used LINEAR")
    if w < 1:
        notes.append(f"invalid WindowWidth {w:g} for LINEAR (must be >= 1); window ignored")
        return None
    if w == 1:
        return (values > c - 0.5).astype(np.float32)
    return np.clip((values - (c - 0.5)) / (w - 1) + 0.5, 0.0, 1.0).astype(np.float32)


def _voi_lut(values: np.ndarray, ds: Any, path: Path, notes: list[str]) -> np.ndarray | None:
    """The first VOI LUT of the VOILUTSequence -> [0, 1] by the LUT's output bit depth
    (values below the first mapped value take the first entry, above the last the last)."""
    item = ds.VOILUTSequence[0]
    try:
        n_entries, first, bits = (int(v) for v in item.LUTDescriptor)
        n_entries = n_entries or 65536
        data = item.LUTData
        if isinstance(data, (bytes, bytearray)):
            ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
            little = True if ts is None else bool(getattr(ts, "is_little_endian", True))
            lut = np.frombuffer(bytes(data), dtype="<u2" if little else ">u2").astype(np.float64)
        else:
            lut = np.asarray(data if hasattr(data, "__len__") else [data], dtype=np.float64)
        if lut.size == 0:
            raise ValueError("empty LUTData")
    except Exception as exc:  # noqa: BLE001
        notes.append(f"unusable VOI LUT ({type(exc).__name__}: {exc}); window ignored")
        return None
    last = min(n_entries, lut.size) - 1
    index = np.clip(np.rint(values).astype(np.int64) - first, 0, last)
    out = lut[index]
    scale = float(2 ** bits - 1) if 1 <= bits <= 16 else 0.0
    top = float(lut.max())
    if top > scale:  # some writers declare fewer bits than the LUT data use
        scale = top
    return np.clip(out / max(scale, 1.0), 0.0, 1.0).astype(np.float32)


# ============================================================================================
# margins, sanity check, resize
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


def intensity_warnings(pixels: np.ndarray, *, kind: str = "", raw_max: float | None = None) -> list[str]:
    """Robust checks that an image's intensities look like a usable radiograph; the messages
    of the ones that fail (empty list: all fine).  Computed on every 2nd pixel (deterministic).

    * near-constant: 1st..99th percentile spread < ``NEAR_CONSTANT_SPREAD`` (0.02);
    * low contrast: spread < ``LOW_CONTRAST_SPREAD`` (0.10) - usually a wrong bit depth/window;
    * clipped at both ends: >= ``CLIP_BOTH_FRACTION`` (20 %) of pixels at 0 and as many at 1;
    * saturated: >= ``CLIP_ONE_FRACTION`` (50 %) of pixels at 0 or at 1;
    * low bits: an integer container deeper than 8 bits (``kind == "16-bit"``) whose stored
      maximum is <= 255 - an 8-bit image saved as 16-bit or truncated data.

    Inversion (MONOCHROME1 read as MONOCHROME2) is not checked: no robust rule exists without
    anatomy; the DICOM tag is trusted.
    """
    out: list[str] = []
    if kind == "16-bit" and raw_max is not None and raw_max <= LOW_BITS_MAX:
        out.append(f"16-bit image uses only the low 8 bits (max stored value {raw_max:g}): "
                   "an 8-bit image saved as 16-bit, or truncated data?")
    sample = pixels[::2, ::2] if min(pixels.shape) >= 4 else pixels
    if sample.size == 0:
        return out + ["empty image"]
    p1, p99 = (float(v) for v in np.percentile(sample, (1, 99)))
    spread = p99 - p1
    if spread < NEAR_CONSTANT_SPREAD:
        out.append(f"nearly constant image (1st-99th percentile spread {spread:.3f}): blank, or all clipped?")
    elif spread < LOW_CONTRAST_SPREAD:
        out.append(f"very low contrast (1st-99th percentile spread {spread:.3f} of the range): "
                   "wrong bit depth or window?")
    black = float(np.mean(sample <= CLIP_TOLERANCE))
    white = float(np.mean(sample >= 1.0 - CLIP_TOLERANCE))
    if spread >= NEAR_CONSTANT_SPREAD:
        if black >= CLIP_BOTH_FRACTION and white >= CLIP_BOTH_FRACTION:
            out.append(f"clipped at both ends ({black:.0%} black, {white:.0%} white): window too narrow?")
        elif max(black, white) >= CLIP_ONE_FRACTION:
            end = "black (0)" if black >= white else "white (1)"
            out.append(f"saturated: {max(black, white):.0%} of the pixels are {end}")
    return out


_warned: set[str] = set()
_warned_lock = threading.Lock()


def warn_once(path: str | Path, messages: list[str] | tuple[str, ...]) -> bool:
    """``logging.warning`` the messages about ``path`` in one line, once per file and process.
    Returns whether it logged."""
    if not messages:
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


def to_uint8(pixels: np.ndarray) -> np.ndarray:
    """Float [0, 1] -> uint8 by ``round(clip(x, 0, 1) * 255)``."""
    return np.rint(np.clip(pixels, 0.0, 1.0) * 255.0).astype(np.uint8)


# ============================================================================================
# the pipeline
# ============================================================================================

@dataclass(frozen=True)
class Preprocess:
    """The X-ray preprocessing of the paper, as one callable: decode -> cut uniform margins ->
    intensity sanity check -> keep-aspect resize (longer side ``image_size``) + centred black
    padding -> 8-bit.  See the module docstring for every convention.

    ``image_size``: output side in pixels (paper: 512).  ``crop_margins``: cut uniform borders
    (paper: yes).  ``window``: DICOM VOI handling, ``"auto"`` (VOI LUT / window tags when
    present) or ``"none"`` (min-max).  ``crop_threshold`` / ``max_crop``: see
    :func:`crop_margins`.  ``check_intensity``: run :func:`intensity_warnings` (does not change
    pixels, so it is not part of :meth:`settings`).
    """

    image_size: int = 512
    crop_margins: bool = True
    window: str = "auto"
    crop_threshold: float = CROP_THRESHOLD
    max_crop: float = MAX_CROP
    check_intensity: bool = True

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
                warnings += intensity_warnings(pixels, kind=decoded.kind, raw_max=decoded.raw_max)
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
