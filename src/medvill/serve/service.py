"""What the web demo does, apart from HTTP: uploads, inference calls, overlays, the report pool.

:class:`DemoService` holds one :class:`~medvill.inference.Pipeline` (every model loaded once,
at start-up), the report pool for retrieval, and the uploaded images (copied to a private
temporary folder, least recently used dropped beyond ``max_uploads``).  Its methods are plain
blocking functions: the web app (:mod:`medvill.serve.app`) runs them in a worker thread, one at
a time.  Bad input raises :class:`UserError` with the HTTP status and a message meant for the
page; anything else is a bug the app logs.
"""

from __future__ import annotations

import base64
import io
import logging
import os
import re
import secrets
import shutil
import tempfile
import threading
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..checkpoint_files import training_root
from ..config import ConfigError
from ..data.common import parse_json_lines
from ..inference import EXPLAIN_ORDER, TASKS, AttentionMaps, MissingTaskError, Pipeline, image_from_tensor

log = logging.getLogger(__name__)

MB = 1024 * 1024
#: File name endings kept on the server copy of an upload (the decoder sniffs the content; the
#: ending only matters for DICOM files without the ``DICM`` preamble).
KEPT_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".webp", ".dcm", ".dicom")
#: Smallest side of an overlay image in pixels (small models see 64-128 px images).
OVERLAY_MIN_SIZE = 320
MAX_QUESTION_CHARS = 500
MAX_TEXT_CHARS = 5000


class UserError(Exception):
    """Bad input: ``status`` is the HTTP status, the message is shown on the page."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class ServeConfig:
    """Settings of ``medvill serve``.

    ``checkpoint``: a fine-tuned checkpoint folder or a folder holding several (a ``medvill
    demo`` output).  ``pool``: a file of reports for retrieval (``.txt``: one report a line;
    ``.jsonl``: objects with a ``text`` or ``report`` key); None = the ``pool_split`` split of
    the data set the retrieval checkpoint was trained on.  ``pool_size``: at most this many
    distinct reports (the first ones).  ``max_upload_mb``: larger uploads are refused;
    ``max_pixels``: images with more pixels are refused before decoding.  ``beams``: beam
    width of report generation (1 = greedy) and ``no_repeat_ngram`` its ban on repeated
    n-grams (0 = none), as in ``medvill generate``.
    """

    checkpoint: Path
    model: str | None = None
    device: str | None = None
    pool: Path | None = None
    pool_split: str = "test"
    pool_size: int = 200
    max_upload_mb: float = 25.0
    max_pixels: int = 50_000_000
    max_uploads: int = 64
    beams: int = 1
    no_repeat_ngram: int = 0

    def __post_init__(self) -> None:
        if self.pool_size < 1:
            raise ValueError(f"pool_size must be >= 1, got {self.pool_size}")
        if not self.max_upload_mb > 0:
            raise ValueError(f"max_upload_mb must be > 0, got {self.max_upload_mb}")
        if self.max_pixels < 1:
            raise ValueError(f"max_pixels must be >= 1, got {self.max_pixels}")
        if self.max_uploads < 1:
            raise ValueError(f"max_uploads must be >= 1, got {self.max_uploads}")
        if self.beams < 1:
            raise ValueError(f"beams must be >= 1, got {self.beams}")
        if self.no_repeat_ngram < 0:
            raise ValueError(f"no_repeat_ngram must be >= 0, got {self.no_repeat_ngram}")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * MB)


# ============================================================================================
# the report pool
# ============================================================================================

@dataclass
class ReportPool:
    """Reports that retrieval ranks, with the positive observations of each, and where they
    came from (``source``, shown on the page)."""

    texts: list[str]
    findings: list[list[str]]
    source: str


def read_pool_file(path: str | Path) -> list[str]:
    """Reports of a pool file: ``.txt`` one report a line (blank lines skipped), ``.jsonl`` one
    object a line with a ``text`` or ``report`` string.  Errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"report pool file not found: {path}")
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    texts: list[str] = []
    if path.suffix.lower() == ".jsonl":
        for n, obj in parse_json_lines("\n".join(lines), path, ConfigError):
            text = obj.get("text", obj.get("report")) if isinstance(obj, dict) else None
            if not isinstance(text, str):
                raise ConfigError(f"{path}:{n}: expected an object with a 'text' or 'report' string")
            if text.strip():
                texts.append(text.strip())
    elif path.suffix.lower() == ".txt":
        texts = [line.strip() for line in lines if line.strip()]
    else:
        raise ConfigError(f"{path}: a report pool is a .txt file (one report a line) or .jsonl (a 'text' key a line)")
    if not texts:
        raise ConfigError(f"{path}: the report pool is empty")
    return texts


def _distinct(texts: Sequence[str], labels: Sequence[Any], limit: int) -> tuple[list[str], list[Any]]:
    seen: set[str] = set()
    out_t, out_l = [], []
    for t, lab in zip(texts, labels, strict=True):
        key = " ".join(t.lower().split())
        if key in seen:
            continue
        seen.add(key)
        out_t.append(t)
        out_l.append(lab)
        if len(out_t) == limit:
            break
    return out_t, out_l


def load_pool(config: ServeConfig, pipe: Pipeline) -> ReportPool:
    """The report pool: ``config.pool`` (labelled by the built-in labeler), else the distinct
    reports of the retrieval checkpoint's ``pool_split`` split with their data set labels."""
    from ..figures import label_names

    if config.pool is not None:
        from ..labeler import label_reports

        texts = read_pool_file(config.pool)
        texts, _ = _distinct(texts, texts, config.pool_size)
        found = label_reports(texts)
        return ReportPool(texts, [label_names(row) for row in found],
                          f"{config.pool} ({len(texts)} distinct reports; findings by the built-in labeler)")
    from ..figures import checkpoint_records

    ckpt = pipe.checkpoint_path("retrieval")
    try:
        records = checkpoint_records(ckpt, config.pool_split)
    except FileNotFoundError:
        root = training_root(ckpt)  # a relative root found from the checkpoint's parent folders
        if root is None:
            raise
        records = checkpoint_records(ckpt, config.pool_split, root=root)
    texts, labels = _distinct([r.text for r in records], [r.labels for r in records], config.pool_size)
    return ReportPool(texts, [label_names(row) for row in labels],
                      f"the {config.pool_split} split of the retrieval model's training data ({len(texts)} distinct "
                      f"reports of {len(records)}; findings from the data set's labels)")


# ============================================================================================
# uploads
# ============================================================================================

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


def _safe_name(name: str) -> str:
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


# ============================================================================================
# attention overlays
# ============================================================================================

@dataclass
class Word:
    """A word of an explained text: its display ``text`` and the indices of its WordPiece
    tokens in :attr:`AttentionMaps.tokens`; ``clickable`` for words with a letter or digit."""

    text: str
    tokens: list[int]
    clickable: bool


def group_words(tokens: Sequence[str]) -> list[Word]:
    """WordPiece tokens -> words (a ``##`` continuation joins the token before it)."""
    words: list[Word] = []
    for i, tok in enumerate(tokens):
        if tok.startswith("##") and words:
            words[-1].text += tok[2:]
            words[-1].tokens.append(i)
        else:
            words.append(Word(tok.removeprefix("##"), [i], False))
    for w in words:
        w.clickable = any(c.isalnum() for c in w.text)
    return words


def render_overlay(maps: AttentionMaps, token_ids: Sequence[int], layer: int | None, alpha: float = 0.45,
                   cmap: str = "jet") -> tuple[bytes, float, float]:
    """PNG of the mean attention map of ``token_ids`` (mean over heads; ``layer`` None = mean
    over layers) over the image the model saw, upsampled bilinearly; colours span the map's
    minimum to maximum, which are returned with the PNG."""
    import matplotlib

    m = np.mean([maps.map(t, layer, None) for t in token_ids], axis=0).astype(np.float32)  # (g, g)
    lo, hi = float(m.min()), float(m.max())
    base = maps.image  # (S, S) uint8
    size = base.shape[0] * max(1, -(-OVERLAY_MIN_SIZE // base.shape[0]))
    up = np.asarray(Image.fromarray(m, mode="F").resize((size, size), Image.Resampling.BILINEAR))
    norm = (up - lo) / max(hi - lo, 1e-8)
    colour = matplotlib.colormaps[cmap](np.clip(norm, 0, 1))[..., :3]  # (size, size, 3) in [0, 1]
    gray = np.asarray(Image.fromarray(base, mode="L").resize((size, size), Image.Resampling.BILINEAR),
                      dtype=np.float32)[..., None] / 255.0
    rgb = (1 - alpha) * gray + alpha * colour
    buf = io.BytesIO()
    Image.fromarray((np.clip(rgb, 0, 1) * 255).round().astype(np.uint8), mode="RGB").save(buf, format="PNG")
    return buf.getvalue(), lo, hi


def png_data_url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def image_png(pixels: np.ndarray) -> bytes:
    """PNG of an 8-bit gray image, upsampled (nearest) to at least :data:`OVERLAY_MIN_SIZE`."""
    size = pixels.shape[0] * max(1, -(-OVERLAY_MIN_SIZE // pixels.shape[0]))
    buf = io.BytesIO()
    Image.fromarray(pixels, mode="L").resize((size, size), Image.Resampling.BILINEAR).save(buf, format="PNG")
    return buf.getvalue()


# ============================================================================================
# the service
# ============================================================================================

class DemoService:
    """The models, the pool and the uploads behind the web demo; see the module docstring.

    Building it loads every model of the checkpoint folder and the report pool (a pool that
    cannot be read leaves retrieval off, with the reason in :attr:`pool_note`).  Call
    :meth:`close` to delete the uploads.
    """

    def __init__(self, config: ServeConfig, pipeline: Pipeline | None = None):
        self.config = config
        self.pipe = pipeline or Pipeline.from_pretrained(config.checkpoint, model=config.model, device=config.device)
        self.pipe.load()
        self.pool: ReportPool | None = None
        self.pool_note = ""
        if "retrieval" in self.pipe.tasks:
            try:
                self.pool = load_pool(config, self.pipe)
            except (ConfigError, FileNotFoundError, ValueError) as exc:
                self.pool_note = f"no report pool: {exc}. Pass one with --pool FILE."
                log.warning("retrieval is off: %s", self.pool_note)
        self._dir = Path(tempfile.mkdtemp(prefix="medvill-serve-"))
        self._uploads: OrderedDict[str, Upload] = OrderedDict()
        self._explained: OrderedDict[tuple[str, str, str | None], AttentionMaps] = OrderedDict()
        self._lock = threading.Lock()

    def close(self) -> None:
        shutil.rmtree(self._dir, ignore_errors=True)

    # ------------------------------------------------------------------ info
    def info(self) -> dict[str, Any]:
        """What the page needs to know: tasks (with a note for missing ones), the pool, limits."""
        described = self.pipe.describe()
        tasks = {}
        for task in TASKS:
            if task in described:
                tasks[task] = {"available": True, "model": described[task]["model"], "path": described[task]["path"]}
            else:
                tasks[task] = {"available": False, "note": f"no {task} checkpoint in {self.config.checkpoint}: "
                               f"fine-tune one (medvill finetune {task} ...) into this folder to use it here"}
        if self.pool is None and "retrieval" in described:
            tasks["retrieval"]["note"] = self.pool_note
        explain = [t for t in EXPLAIN_ORDER if t in described]
        return {
            "checkpoint": str(self.config.checkpoint),
            "tasks": tasks,
            "explain_tasks": explain,
            "pool": {"size": len(self.pool.texts), "source": self.pool.source} if self.pool else None,
            "max_upload_bytes": self.config.max_upload_bytes,
            "max_pixels": self.config.max_pixels,
            "device": str(self.pipe.device),
        }

    # ------------------------------------------------------------------ uploads
    def add_upload(self, data: bytes, filename: str) -> dict[str, Any]:
        """Check, store and describe an uploaded image; returns the upload's id, size, notes
        and a PNG preview (data URL) of the image as the model sees it."""
        name = _safe_name(filename)
        if not data:
            raise UserError(400, f"{name} is empty")
        if len(data) > self.config.max_upload_bytes:
            raise UserError(413, self.too_large(name, len(data)))
        upload_id = secrets.token_urlsafe(9)
        suffix = Path(name).suffix.lower()
        path = self._dir / f"{upload_id}{suffix if suffix in KEPT_SUFFIXES else ''}"
        path.write_bytes(data)
        try:
            upload = self._check(upload_id, name, path)
            model_input = self.pipe.preprocess(path)
        except UserError:
            path.unlink(missing_ok=True)
            raise
        except (ValueError, OSError) as exc:
            path.unlink(missing_ok=True)
            detail = self._clean(str(exc), path, name).removeprefix(f"cannot read image {name}: ")
            raise UserError(422, f"{name} could not be decoded ({detail}): a damaged or truncated file?") from None
        with self._lock:
            self._uploads[upload_id] = upload
            while len(self._uploads) > self.config.max_uploads:
                _, old = self._uploads.popitem(last=False)
                old.path.unlink(missing_ok=True)
        preview = image_png(image_from_tensor(model_input))
        return {**asdict(upload), "path": None, "preview": png_data_url(preview)}

    def too_large(self, name: str, size: int | None) -> str:
        limit = f"{self.config.max_upload_mb:g} MB (medvill serve --max-upload-mb)"
        if size is None:
            return f"{name} is larger than the upload limit of {limit}"
        return f"{name} is {size / MB:.1f} MB; the limit is {limit}"

    def _check(self, upload_id: str, name: str, path: Path) -> Upload:
        """Header checks (format, pixel count), then a full decode for the notes."""
        from ..data.transforms import Preprocess, decode_image

        size = _image_size(path, name, self.config.max_pixels)
        if size is None:
            fmt = _claimed_format(path)
            if fmt is not None:
                raise UserError(422, f"{name} starts like a {fmt} file but cannot be read: a damaged or "
                                     "truncated file?")
            if not _is_dicom(path):
                raise UserError(415, f"{name} is not an image that can be read: upload a PNG, JPEG, TIFF, BMP or "
                                     "DICOM chest X-ray")
            size = _dicom_size(path, name, self.config.max_pixels)
        decoded = decode_image(path)
        _, checks = Preprocess(image_size=64).process(decoded)  # decoder notes + intensity checks after the crop
        notes = describe_decoding(decoded) + checks
        notes = [self._clean(n, path, name) for n in notes]
        return Upload(upload_id, name, path, size[0], size[1], decoded.kind, notes)

    @staticmethod
    def _clean(message: str, path: Path, name: str) -> str:
        """A message without the server's file paths."""
        return message.replace(str(path), name).replace(str(path.parent) + os.sep, "")

    def _upload(self, upload_id: str) -> Upload:
        with self._lock:
            upload = self._uploads.get(upload_id)
            if upload is not None:
                self._uploads.move_to_end(upload_id)
        if upload is None or not upload.path.is_file():
            raise UserError(404, "this image is no longer on the server (it keeps the latest "
                                 f"{self.config.max_uploads} uploads); upload it again")
        return upload

    # ------------------------------------------------------------------ tasks
    def classify(self, upload_id: str, report: str | None = None) -> dict[str, Any]:
        upload = self._upload(upload_id)
        report = _text(report, "report", MAX_TEXT_CHARS, required=False)
        probs = self.pipe.classify(upload.path, report=report or None)
        return {"probabilities": [{"name": k, "probability": v} for k, v in probs.items()],
                "with_report": bool(report)}

    def generate(self, upload_id: str) -> dict[str, Any]:
        upload = self._upload(upload_id)
        return {"report": self.pipe.generate(upload.path, num_beams=self.config.beams,
                                             no_repeat_ngram_size=self.config.no_repeat_ngram)}

    def explain(self, upload_id: str, text: str, task: str | None = None) -> dict[str, Any]:
        """The words of ``text`` (clickable ones can be shown with :meth:`overlay`)."""
        maps = self._maps(upload_id, text, task)
        return {"words": [asdict(w) for w in group_words(maps.tokens)], "task": maps.task,
                "num_layers": maps.num_layers, "num_heads": maps.num_heads}

    def overlay(self, upload_id: str, text: str, word: int, layer: int | None = None,
                task: str | None = None) -> dict[str, Any]:
        """The attention overlay of word number ``word`` of ``text`` (PNG data URL)."""
        maps = self._maps(upload_id, text, task)
        words = group_words(maps.tokens)
        if not isinstance(word, int) or not 0 <= word < len(words):
            raise UserError(400, f"word must be an index in 0..{len(words) - 1}, got {word!r}")
        if layer is not None and (not isinstance(layer, int) or not 0 <= layer < maps.num_layers):
            raise UserError(400, f"layer must be in 0..{maps.num_layers - 1} or null (mean), got {layer!r}")
        png, lo, hi = render_overlay(maps, words[word].tokens, layer)
        where = "mean of layers" if layer is None else f"layer {layer + 1} of {maps.num_layers}"
        return {"image": png_data_url(png), "word": words[word].text, "min": lo, "max": hi,
                "caption": f'attention of "{words[word].text}" on the image ({maps.task} model, {where}, mean of '
                           f"{maps.num_heads} heads; colours span {lo:.4f} to {hi:.4f})"}

    def _maps(self, upload_id: str, text: str, task: str | None) -> AttentionMaps:
        upload = self._upload(upload_id)
        text = _text(text, "text", MAX_TEXT_CHARS)
        if task is not None and task not in TASKS:
            raise UserError(400, f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
        key = (upload_id, text, task)
        with self._lock:
            if key in self._explained:
                self._explained.move_to_end(key)
                return self._explained[key]
        maps = self.pipe.explain(upload.path, text, task=task)
        with self._lock:
            self._explained[key] = maps
            while len(self._explained) > 16:
                self._explained.popitem(last=False)
        return maps

    def answer(self, upload_id: str, question: str) -> dict[str, Any]:
        upload = self._upload(upload_id)
        question = _text(question, "question", MAX_QUESTION_CHARS)
        ans = self.pipe.answer(upload.path, question, top_k=3)
        return {"question": question, "answer": ans.answer, "probability": ans.probability,
                "top": [{"answer": a, "probability": p} for a, p in ans.top]}

    def similar(self, upload_id: str, k: int = 5) -> dict[str, Any]:
        upload = self._upload(upload_id)
        if self.pool is None:
            if "retrieval" not in self.pipe.tasks:
                raise MissingTaskError(f"no retrieval checkpoint in {self.config.checkpoint}")
            raise UserError(409, self.pool_note)
        if not isinstance(k, int) or not 1 <= k <= 50:
            raise UserError(400, f"k must be in 1..50, got {k!r}")
        hits = self.pipe.retrieve(upload.path, self.pool.texts, k=k, query_type="image")
        return {"source": self.pool.source, "hits": [
            {"rank": h.rank, "text": h.item, "probability": h.probability, "score": h.score,
             "findings": self.pool.findings[h.index]} for h in hits]}


def _text(value: Any, what: str, limit: int, required: bool = True) -> str:
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise UserError(400, f"{what} must be a string")
    value = value.strip()
    if required and not value:
        raise UserError(400, f"the {what} is empty")
    if len(value) > limit:
        raise UserError(400, f"the {what} is {len(value)} characters long; the limit is {limit}")
    return value
