"""Uploaded images: the checks before decoding (format, pixel count) and the notes on how one was read."""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from .settings import UserError

#: File name endings kept on the server copy of an upload (the decoder sniffs the content; the
#: ending only matters for DICOM files without the ``DICM`` preamble).
KEPT_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".webp", ".dcm", ".dicom")


@dataclass
class Upload:
    """An uploaded image: ``name`` as the user's browser gave it (display only), ``path`` the
    server's private copy, ``width`` / ``height`` / ``kind`` of the original and ``notes``
    about how it was read."""

    id: str
    name: str
    path: Path
    width: int
    height: int
    kind: str
    notes: list[str] = field(default_factory=list)


def safe_name(name: str) -> str:
    """The browser's file name without folders and odd characters (display only)."""
    name = Path(name.replace("\\", "/")).name.strip() or "upload"
    return re.sub(r"[^\w.\- ()]+", "_", name)[:120]


def _image_size(path: Path, name: str, max_pixels: int) -> tuple[int, int] | None:
    """``(width, height)`` from the file header without decoding the pixels (None: not a
    format Pillow reads, e.g. DICOM).  Too many pixels is a :class:`UserError`."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                width, height = im.size
    except Image.DecompressionBombError:
        raise UserError(413, f"{name}: the image has too many pixels to be decoded safely") from None
    except UnidentifiedImageError:
        return None
    except Exception as exc:  # noqa: BLE001 - a header Pillow recognises but cannot parse
        raise UserError(422, f"{name} could not be read: {type(exc).__name__}: {exc} (a damaged file?)") from None
    if width * height > max_pixels:
        raise UserError(413, f"{name} is {width} x {height} pixels ({width * height / 1e6:.1f} MP); the limit is "
                             f"{max_pixels / 1e6:.1f} MP")
    return width, height


#: File signatures of the formats Pillow reads here (a file that starts with one but does not open is damaged).
SIGNATURES = {b"\x89PNG\r\n\x1a\n": "PNG", b"\xff\xd8\xff": "JPEG", b"II*\x00": "TIFF", b"MM\x00*": "TIFF",
              b"GIF8": "GIF", b"RIFF": "WebP"}


def _claimed_format(path: Path) -> str | None:
    with path.open("rb") as fh:
        head = fh.read(8)
    return next((fmt for sig, fmt in SIGNATURES.items() if head.startswith(sig)), None)


def _is_dicom(path: Path) -> bool:
    with path.open("rb") as fh:
        head = fh.read(132)
    return (len(head) == 132 and head[128:132] == b"DICM") or path.suffix.lower() in (".dcm", ".dicom")


def _dicom_size(path: Path, name: str, max_pixels: int) -> tuple[int, int]:
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        width, height = int(ds.Columns), int(ds.Rows)
    except Exception as exc:  # noqa: BLE001 - any header failure: unreadable
        raise UserError(422, f"{name} could not be read as DICOM: {type(exc).__name__}: {exc}") from None
    if width * height > max_pixels:
        raise UserError(413, f"{name} is {width} x {height} pixels; the limit is {max_pixels / 1e6:.1f} MP")
    return width, height


def describe_decoding(decoded: Any) -> list[str]:
    """Notes for the page on how an image was read (bit depth, DICOM handling); the decoder's
    own warnings are not repeated (:meth:`~medvill.data.transforms.Preprocess.process` returns them)."""
    notes = []
    if decoded.kind == "16-bit":
        depth = f"{decoded.bits}-bit values" if decoded.bits else "its values"
        notes.append(f"16-bit image: read as {depth} (largest stored value {decoded.raw_max:g}) and scaled to 8 bits, "
                     "as training reads 16-bit files")
    elif decoded.kind == "dicom":
        notes.append("DICOM: read with its rescale, VOI window and photometric interpretation, as training reads DICOM")
    elif decoded.kind == "float":
        notes.append("floating-point image: scaled to 8 bits as in training")
    return notes



def read_upload(upload_id: str, name: str, path: Path, max_pixels: int) -> Upload:
    """Header checks (format, pixel count), then a full decode for the notes."""
    from ..data.transforms import Preprocess, decode_image

    size = _image_size(path, name, max_pixels)
    if size is None:
        fmt = _claimed_format(path)
        if fmt is not None:
            raise UserError(422, f"{name} starts like a {fmt} file but cannot be read: a damaged or "
                                 "truncated file?")
        if not _is_dicom(path):
            raise UserError(415, f"{name} is not an image that can be read: upload a PNG, JPEG, TIFF, BMP or "
                                 "DICOM chest X-ray")
        size = _dicom_size(path, name, max_pixels)
    decoded = decode_image(path)
    _, checks = Preprocess(image_size=64).process(decoded)  # decoder notes + intensity checks after the crop
    notes = describe_decoding(decoded) + checks
    notes = [clean_message(n, path, name) for n in notes]
    return Upload(upload_id, name, path, size[0], size[1], decoded.kind, notes)


def clean_message(message: str, path: Path, name: str) -> str:
    """A message without the server's file paths."""
    return message.replace(str(path), name).replace(str(path.parent) + os.sep, "")
