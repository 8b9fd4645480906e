"""Decoding X-ray image files (PNG, JPEG, TIFF, BMP, DICOM) to one float image, and the checks of what was read.

Step 1 of the preprocessing of :mod:`medvill.data.transforms`: :func:`decode_image` reads a
file (and :func:`decode_pil_image` an in-memory image) to a 2-D ``float32`` array in
``[0, 1]``, ``0`` = black, ``1`` = white, as the image is meant to be *displayed* (bone bright,
air dark).  Full precision is kept until the final 8-bit conversion (:func:`to_uint8`).  The
file type is found from the file's content (a DICOM ``DICM`` preamble or a
``.dcm``/``.dicom``/``.dic`` name; anything else goes to Pillow), not from its name alone.

Conventions
-----------
* 8-bit images (PNG, JPEG, ...; palette/RGB are converted to luminance): ``value / 255``.
* 16-bit grayscale PNG/TIFF: ``value / (2**bits - 1)`` where ``bits`` is the PNG ``sBIT``
  significant-bit depth when present and consistent with the data, otherwise the smallest of
  8, 10, 12, 14, 16 that holds the image's maximum.  So 12-bit data stored in 16 bits fills
  ``[0, 1]`` instead of coming out 16x too dark; an image is never stretched beyond that.
  Values outside 0..65535 (32-bit containers) are min-max stretched, with a warning.
* DICOM (pydicom): bit masking, the modality transform, the VOI LUT or window and
  ``MONOCHROME1`` inversion, as described in :mod:`medvill.data.dicom`.
* A PNG written by the prepared-image cache (it carries a ``medvill-prepared`` text chunk)
  is already preprocessed: it is neither cropped nor checked again, only resized when another
  ``image_size`` is asked for.
* JPEG is decoded with Pillow's DCT scaling (``draft``) to no less than twice the target size
  (a fast, antialiased reduction by 2, 4 or 8; deterministic).

Suspicious images: decoders add notes to :class:`Decoded` (values stretched, frames dropped, a
window ignored, ...), and :func:`intensity_warnings` checks that the intensities look like a
usable radiograph (step 3 of the preprocessing, run on the cropped image).

Errors: a missing file is a ``FileNotFoundError`` naming it; a corrupt or unreadable one a
``ValueError`` naming it (:class:`MissingDecoderError` when a pydicom plugin is missing).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image

#: PNG text-chunk key marking an image written by the prepared-image cache.
PREPARED_KEY = "medvill-prepared"
WINDOW_MODES = ("auto", "none")
DICOM_SUFFIXES = (".dcm", ".dicom", ".dic")

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
# decoding files
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
            from .dicom import decode_dicom  # here, not above: medvill.data.dicom imports this module

            return decode_dicom(path, window)
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



def to_uint8(pixels: np.ndarray) -> np.ndarray:
    """Float [0, 1] -> uint8 by ``round(clip(x, 0, 1) * 255)``."""
    return np.rint(np.clip(pixels, 0.0, 1.0) * 255.0).astype(np.uint8)


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


# ============================================================================================
# intensity sanity check
# ============================================================================================

#: a CT or MR slice's surround: pixels at most this bright (JPEG noise around 0 included),
#: connected to the image's border
SURROUND_LEVEL = 0.05


def _outside_black(black: np.ndarray) -> np.ndarray:
    """The pixels of ``black`` connected to the image's border: the surround of a slice."""
    from scipy import ndimage

    labels, _ = ndimage.label(black)
    edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    return np.isin(labels, edge[edge > 0])


def intensity_warnings(pixels: np.ndarray, *, kind: str = "", raw_max: float | None = None,
                       cross_sectional: bool = False) -> list[str]:
    """Robust checks that an image's intensities look like a usable radiograph; the messages
    of the ones that fail (empty list: all fine).  Computed on every 2nd pixel (deterministic).

    * near-constant: 1st..99th percentile spread < ``NEAR_CONSTANT_SPREAD`` (0.02);
    * low contrast: spread < ``LOW_CONTRAST_SPREAD`` (0.10) - usually a wrong bit depth/window;
    * clipped at both ends: >= ``CLIP_BOTH_FRACTION`` (20 %) of pixels at 0 and as many at 1;
    * saturated: >= ``CLIP_ONE_FRACTION`` (50 %) of pixels at 0 or at 1;
    * low bits: an integer container deeper than 8 bits (``kind == "16-bit"``) whose stored
      maximum is <= 255 - an 8-bit image saved as 16-bit or truncated data.

    ``cross_sectional`` (a CT or MR slice, e.g. VQA-RAD's head and abdominal images): the black
    surround of the body (pixels up to ``SURROUND_LEVEL`` connected to the image border) is
    normal there and does not count towards "saturated" or "clipped"; black inside the body
    still does.  On VQA-RAD's 314 training images (256 px) this flags 0 of the 207 head and
    abdominal images, against 19 (all "saturated") with the radiograph rule; the 107 chest
    radiographs are checked as before (0 flagged).

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
    dark = sample <= CLIP_TOLERANCE
    if cross_sectional and dark.any():
        dark = dark & ~_outside_black(sample <= SURROUND_LEVEL)
    black = float(np.mean(dark))
    white = float(np.mean(sample >= 1.0 - CLIP_TOLERANCE))
    if spread >= NEAR_CONSTANT_SPREAD:
        if black >= CLIP_BOTH_FRACTION and white >= CLIP_BOTH_FRACTION:
            out.append(f"clipped at both ends ({black:.0%} black, {white:.0%} white): window too narrow?")
        elif max(black, white) >= CLIP_ONE_FRACTION:
            end = "black (0)" if black >= white else "white (1)"
            out.append(f"saturated: {max(black, white):.0%} of the pixels are {end}")
    return out
