"""Which Open-I image is frontal: views from the projections table and the DICOM metadata.

The rules (and how well the DICOM fields predict the view) are described in
:mod:`medvill.data.openi`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from .common import RowPolicy, read_csv
from .records import SkipReport

log = logging.getLogger("medvill.data.openi")  # the logger of every Open-I module

_LATERAL_POSITIONS = {"LL", "RL", "LATERAL", "LARGE LATERAL", "LAT", "XTABLE LATERAL"}
_FUJI_LATERAL_CODE = "60003"


def dicom_view(row: dict[str, str]) -> str:
    """``"frontal"`` / ``"lateral"`` / ``"unknown"`` from one row of the Open-I DICOM metadata.

    Lateral: ``View Position`` LL / RL / LATERAL / ... or a ``Patient Orientation`` whose row
    direction is A or P (the image's x axis runs front-back).  Frontal: ``View Position`` PA or
    AP, except with ``Acquisition Device Processing Code`` 60003 (a Fuji exposure-menu code
    that, in this collection, marks lateral images written with the default PA tag: 1,342 of
    the 1,359 such images are lateral in the projections table).  Anything else: unknown.
    """
    vp = " ".join(row.get("View Position", "").upper().split())
    orient = re.findall(r"[A-Z]+", row.get("Patient Orientation", "").upper())
    if vp in _LATERAL_POSITIONS or (orient and orient[0] in ("A", "P")):
        return "lateral"
    if vp in ("PA", "AP"):
        if row.get("Acquisition Device Processing Code", "").strip() == _FUJI_LATERAL_CODE:
            return "lateral"
        return "frontal"
    return "unknown"


_IMAGE_KEY = re.compile(r"(?:CXR)?(\d+)_(?:\d+_)?(IM-[\d-]+)")


def image_key(name: str) -> str:
    """The key that matches one Open-I image across the three sources, ``"<uid>/IM-...``.

    The XML ``parentImage`` id (``CXR1_1_IM-0001-4001``, also the PNG name), the DICOM
    metadata ``imageid`` (``CXR1_IM-0001-4001``) and the projections ``filename``
    (``1_IM-0001-4001.dcm.png``) all give ``"1/IM-0001-4001"``.  A name of another form is
    returned without extension.
    """
    base = name.strip().replace("\\", "/").rsplit("/", 1)[-1]
    for suffix in (".dcm.png", ".png", ".dcm", ".jpg"):
        if base.lower().endswith(suffix):
            base = base[: -len(suffix)]
            break
    m = _IMAGE_KEY.fullmatch(base)
    return f"{m.group(1)}/{m.group(2)}" if m else base


def read_image_views(*, projections: str | Path | None = None, dicom_metadata: str | Path | None = None,
                     policy: str = "skip", skips: SkipReport | None = None) -> dict[str, str]:
    """:func:`image_key` -> ``"frontal"`` / ``"lateral"`` / ``"unknown"`` from the projections table
    (preferred) and / or the DICOM metadata (for images the table lacks)."""
    views: dict[str, str] = {}
    if dicom_metadata is not None:
        path = Path(dicom_metadata)
        rows = RowPolicy(policy, skips, path)
        for _, row in read_csv(path, ("imageid", "View Position"), rows,
                               optional=("Patient Orientation", "Acquisition Device Processing Code")):
            views[image_key(row["imageid"])] = dicom_view(row)
        rows.finish(log)
    if projections is not None:
        path = Path(projections)
        rows = RowPolicy(policy, skips, path)
        for lineno, row in read_csv(path, ("filename", "projection"), rows, optional=()):
            proj = row["projection"].strip().lower()
            if proj not in ("frontal", "lateral"):
                rows.bad(f"unknown projection {row['projection']!r} (expected Frontal or Lateral)", f"{path}:{lineno}")
                continue
            views[image_key(row["filename"])] = proj
        rows.finish(log)
    return views


def report_image_views(image_ids: Iterable[str], *, projections: Path | None, dicom_metadata: Path | None,
                       policy: str, skips: SkipReport) -> dict[str, str]:
    """:func:`image_key` -> view for the reports' ``image_ids``: the projections table
    (when given), and the DICOM metadata (when given) for the images the table lacks - read
    only when some image is not in the table."""
    views = read_image_views(projections=projections, policy=policy, skips=skips) if projections else {}
    keys = {image_key(i) for i in image_ids}
    if dicom_metadata is not None and not keys <= views.keys():  # DICOM metadata only where needed
        dicom = read_image_views(dicom_metadata=dicom_metadata, policy=policy, skips=skips)
        views = {**dicom, **views}
    return views


def frontal_image(images: Sequence[str], views: Mapping[str, str]) -> tuple[str | None, bool]:
    """A report's image among its ``images`` (XML order): the first frontal one, else the
    first of unknown view (then the second value is True), else None (only lateral images)."""
    kinds = [views.get(image_key(i), "unknown") for i in images]
    if "frontal" in kinds:
        return images[kinds.index("frontal")], False
    if "unknown" in kinds:
        return images[kinds.index("unknown")], True
    return None, False
