"""What the web demo does, apart from HTTP: uploads, inference calls, overlays, the report pool.

:class:`DemoService` holds one :class:`~medvill.inference.Pipeline` (every model loaded once,
at start-up), the report pool for retrieval, and the uploaded images (copied to a private
temporary folder, least recently used dropped beyond ``max_uploads``).  Its methods are plain
blocking functions: the web app (:mod:`medvill.serve.app`) runs them in a worker thread, one at
a time.  Bad input raises :class:`UserError` with the HTTP status and a message meant for the
page; anything else is a bug the app logs.

The parts it uses: :mod:`~medvill.serve.settings` (:class:`ServeConfig`, :class:`UserError`),
:mod:`~medvill.serve.pool` (the report pool), :mod:`~medvill.serve.uploads` (checks of an
uploaded image) and :mod:`~medvill.serve.overlays` (attention overlays); their names are
importable from here too.
"""

from __future__ import annotations

import logging
import secrets
import shutil
import tempfile
import threading
from collections import OrderedDict
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from ..config import ConfigError
from ..inference import EXPLAIN_ORDER, TASKS, AttentionMaps, MissingTaskError, Pipeline, image_from_tensor
from .overlays import OVERLAY_MIN_SIZE, Word, group_words, image_png, png_data_url, render_overlay
from .pool import ReportPool, load_pool, read_pool_file
from .settings import MB, ServeConfig, UserError
from .uploads import KEPT_SUFFIXES, SIGNATURES, Upload, clean_message, describe_decoding, read_upload, safe_name

__all__ = [
    "KEPT_SUFFIXES", "MAX_QUESTION_CHARS", "MAX_TEXT_CHARS", "MB", "OVERLAY_MIN_SIZE", "SIGNATURES",
    "DemoService", "ReportPool", "ServeConfig", "Upload", "UserError", "Word",
    "describe_decoding", "group_words", "image_png", "load_pool", "png_data_url", "read_pool_file", "render_overlay",
]

log = logging.getLogger(__name__)

MAX_QUESTION_CHARS = 500
MAX_TEXT_CHARS = 5000


class DemoService:
    """The models, the pool and the uploads behind the web demo; see the module docstring.

    Building it loads every model of the checkpoint folder and the report pool (a pool that
    cannot be read leaves retrieval off, with the reason in :attr:`pool_note`).  Call
    :meth:`close` to delete the uploads.
    """

    def __init__(self, config: ServeConfig, pipeline: Pipeline | None = None):
        self.config = config
        self.pipe = pipeline or Pipeline.from_pretrained(config.checkpoint, model=config.model, device=config.device,
                                                         weights=config.weights)
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
            "weights": self.pipe.weights,
        }

    # ------------------------------------------------------------------ uploads
    def add_upload(self, data: bytes, filename: str) -> dict[str, Any]:
        """Check, store and describe an uploaded image; returns the upload's id, size, notes
        and a PNG preview (data URL) of the image as the model sees it."""
        name = safe_name(filename)
        if not data:
            raise UserError(400, f"{name} is empty")
        if len(data) > self.config.max_upload_bytes:
            raise UserError(413, self.too_large(name, len(data)))
        upload_id = secrets.token_urlsafe(9)
        suffix = Path(name).suffix.lower()
        path = self._dir / f"{upload_id}{suffix if suffix in KEPT_SUFFIXES else ''}"
        path.write_bytes(data)
        upload, model_input = self._read_stored(upload_id, name, path)
        self._remember(upload)
        preview = image_png(image_from_tensor(model_input))
        return {**asdict(upload), "path": None, "preview": png_data_url(preview)}

    def too_large(self, name: str, size: int | None) -> str:
        limit = f"{self.config.max_upload_mb:g} MB (medvill serve --max-upload-mb)"
        if size is None:
            return f"{name} is larger than the upload limit of {limit}"
        return f"{name} is {size / MB:.1f} MB; the limit is {limit}"

    def _read_stored(self, upload_id: str, name: str, path: Path) -> tuple[Upload, torch.Tensor]:
        """The checked upload of the server copy ``path`` and the model's input tensor; the copy
        is deleted when it cannot be used."""
        try:
            upload = read_upload(upload_id, name, path, self.config.max_pixels)
            model_input = self.pipe.preprocess(path)
        except UserError:
            path.unlink(missing_ok=True)
            raise
        except (ValueError, OSError) as exc:
            path.unlink(missing_ok=True)
            detail = clean_message(str(exc), path, name).removeprefix(f"cannot read image {name}: ")
            raise UserError(422, f"{name} could not be decoded ({detail}): a damaged or truncated file?") from None
        return upload, model_input

    def _remember(self, upload: Upload) -> None:
        """Keep ``upload``, dropping the least recently used beyond ``max_uploads``."""
        with self._lock:
            self._uploads[upload.id] = upload
            while len(self._uploads) > self.config.max_uploads:
                _, old = self._uploads.popitem(last=False)
                old.path.unlink(missing_ok=True)

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
