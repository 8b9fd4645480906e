"""Decoding the pixel data of DICOM files (pydicom), for :func:`medvill.data.decode.decode_image`.

Conventions (the output is float32 in ``[0, 1]``, ``0`` = black, as displayed): unused high
bits beyond ``BitsStored`` are masked (sign-extended when ``PixelRepresentation`` is 1); the
modality transform (``RescaleSlope``/``RescaleIntercept`` or a Modality LUT) is applied; then,
with ``window="auto"``, the first VOI LUT of a ``VOILUTSequence`` (normalised by its output bit
depth), else the first ``WindowCenter``/``WindowWidth`` pair with the ``VOILUTFunction`` (LINEAR
as in DICOM PS3.3 C.11.2.1.2, LINEAR_EXACT or SIGMOID), else a min-max stretch of the modality
values.  ``window="none"`` always min-max stretches.  ``MONOCHROME1`` is inverted
(``1 - value``) after the VOI step; ``PresentationLUTShape`` is not used.  Multi-frame files use
frame 0 (with a warning).  Compressed transfer syntaxes need pydicom pixel-data plugins; when
none is installed, :class:`~medvill.data.decode.MissingDecoderError` names the file, the
transfer syntax and the packages to install.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .decode import Decoded, MissingDecoderError, _minmax


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


def decode_dicom(path: Path, window: str) -> Decoded:
    """One DICOM file to float32 [0, 1] (frame 0; see the module docstring for every convention).

    ``window``: ``"auto"`` (VOI LUT / window tags when present) or ``"none"`` (min-max).
    """
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
