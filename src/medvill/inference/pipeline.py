"""The :class:`Pipeline`: fine-tuned MedViLL models behind one object, a method per task.

**Batches.** Every method takes one input or a list; a list is processed in batches of
``batch_size`` and gives a list of results in the same order (:meth:`Pipeline.generate` decodes
each batch together; a report that ends leaves it).  ``device`` picks the CPU or a GPU.

**Weights.** ``weights="bf16"`` or ``"int8"`` runs the models' Linear layers with smaller
weights (:mod:`medvill.modeling.weights`): faster on a CPU, outputs close to but not always
identical to ``"fp32"`` (BENCHMARKS.md measures how close for generation).

**Texts.** The classification model of the paper reads the image *and* its report (that is how
it is fine-tuned and evaluated); :meth:`Pipeline.classify` without a report gives the model an
empty report, so those probabilities rest on the image alone (a model fine-tuned with
``finetune.image_only_prob`` > 0 was trained on that input; see its ``image_only_*`` metrics).
VQA reads the question; retrieval scores (image, report) pairs with
the matching head; generation reads only the image.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, overload

import numpy as np
import torch

from ..checkpoint_files import FINETUNE_INFO
from ..config import ConfigError, MaskScheme
from ..generation import GenerationConfig
from ..generation import generate as generate_ids
from ..modeling.heads import MedViLLForPretraining
from ..modeling.weights import check_weights
from .checkpoints import (
    TASKS,
    MissingTaskError,
    TaskCheckpoint,
    _load_task,
    _Loaded,
    find_checkpoints,
    select_checkpoints,
)
from .inputs import (
    Batch,
    ImageInput,
    _as_list,
    _check_image,
    _chunks,
    _encode_texts,
    _is_image_query,
    _pair_inputs,
    _path_key,
    image_from_tensor,
)
from .outputs import Answer, AttentionMaps, RetrievalHit

#: explain() without ``task=``: the first of these that is available.
EXPLAIN_ORDER = ("classification", "retrieval", "vqa", "generation")


class Pipeline:
    """Fine-tuned MedViLL models behind one object; see :mod:`medvill.inference`.

    Build it with :meth:`from_pretrained`.  ``device``: ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or a
    ``torch.device`` (default: CUDA when available).  ``batch_size``: images per forward pass.
    ``feature_cache_size``: CNN features kept for :meth:`retrieve` (entries, least recently
    used dropped first).  ``weights``: ``"fp32"`` (as trained), ``"bf16"`` or ``"int8"`` (CPU
    only) Linear layers (:func:`~medvill.modeling.weights.convert_weights`).  Methods never
    train; models run in eval mode without gradients.
    """

    def __init__(self, checkpoints: dict[str, TaskCheckpoint], device: str | torch.device | None = None,
                 batch_size: int = 16, feature_cache_size: int = 256, source: str | Path = "",
                 weights: str = "fp32"):
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        unknown = set(checkpoints) - set(TASKS)
        if unknown:
            raise ConfigError(f"unknown tasks {sorted(unknown)}; expected some of {', '.join(TASKS)}")
        self.checkpoints = dict(checkpoints)
        self.source = str(source)
        self.device = torch.device(device) if device is not None else torch.device(
            "cuda" if torch.cuda.is_available() else "cpu")
        self.weights = check_weights(weights, self.device)
        self.batch_size = batch_size
        self.feature_cache_size = feature_cache_size
        self._loaded: dict[str, _Loaded] = {}
        self._features: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        self.cnn_passes = 0  # images through the retrieval CNN (feature cache misses)

    @classmethod
    def from_pretrained(cls, directory: str | Path, model: str | None = None, device: str | torch.device | None = None,
                        batch_size: int = 16, feature_cache_size: int = 256, weights: str = "fp32") -> Pipeline:
        """Checkpoints from one fine-tuned checkpoint folder or a folder holding several (a
        ``medvill demo`` output: ``finetune/<task>-<model>/``).  ``model``: which model's
        checkpoints to use where there are several (default ``MedViLL-BAR``); ``weights``: see
        :class:`Pipeline`."""
        check_weights(weights, device)
        found = find_checkpoints(directory)
        if not found:
            raise FileNotFoundError(f"no fine-tuned checkpoint (config.json + {FINETUNE_INFO}) in {directory}; pass "
                                    "a folder written by medvill finetune, or a medvill demo output folder")
        return cls(select_checkpoints(found, model, directory), device=device, batch_size=batch_size,
                   feature_cache_size=feature_cache_size, source=directory, weights=weights)

    # ------------------------------------------------------------------ bookkeeping
    @property
    def tasks(self) -> tuple[str, ...]:
        """The tasks this pipeline can run, in :data:`TASKS` order."""
        return tuple(t for t in TASKS if t in self.checkpoints)

    def describe(self) -> dict[str, dict[str, str]]:
        """``{task: {"model": name, "path": folder}}`` of the checkpoints in use."""
        return {t: {"model": c.name, "path": str(c.path)} for t, c in self.checkpoints.items()}

    def to(self, device: str | torch.device) -> Pipeline:
        """Move every loaded model (and later loads) to ``device``."""
        check_weights(self.weights, device)
        self.device = torch.device(device)
        for lm in self._loaded.values():
            lm.model.to(self.device)
        self._features.clear()
        return self

    def load(self, tasks: Sequence[str] | None = None) -> Pipeline:
        """Load the models of ``tasks`` (default: every task this pipeline has) now instead of on
        first use, e.g. once when a server starts; returns the pipeline."""
        for task in self.tasks if tasks is None else tasks:
            self._get(task)
        return self

    def checkpoint_path(self, task: str) -> Path:
        """The checkpoint folder used for ``task``; :class:`MissingTaskError` when there is none."""
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
        if task not in self.checkpoints:
            have = ", ".join(f"{t} ({c.path})" for t, c in self.checkpoints.items()) or "none"
            raise MissingTaskError(f"no {task} checkpoint: {self.source or 'this pipeline'} holds {have}. Fine-tune "
                                   f"one (medvill finetune {task} --output DIR ...) and load a folder that holds it")
        return self.checkpoints[task].path

    def _get(self, task: str) -> _Loaded:
        if task not in self._loaded:
            self.checkpoint_path(task)
            self._loaded[task] = _load_task(task, self.checkpoints[task], self.device, self.weights)
        return self._loaded[task]

    # ------------------------------------------------------------------ inputs
    def preprocess(self, image: ImageInput, task: str | None = None) -> torch.Tensor:
        """The model input ``(3, S, S)`` of one image for ``task`` (default: the first available),
        on the CPU: exactly what training fed the model for the same file."""
        _check_image(image)
        return self._get(task or self._first_task()).inputs(image)

    def _first_task(self) -> str:
        if not self.checkpoints:
            raise MissingTaskError("this pipeline holds no checkpoint")
        return self.tasks[0]

    def _images(self, lm: _Loaded, images: Sequence[ImageInput]) -> torch.Tensor:
        for x in images:
            _check_image(x)
        return torch.stack([lm.inputs(x) for x in images]).to(self.device)  # (B, 3, S, S)

    def _texts(self, lm: _Loaded, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        text_ids, valid = _encode_texts(lm.tokenizer, texts, lm.model.config.max_text_len)
        return text_ids.to(self.device), valid.to(self.device)

    # ------------------------------------------------------------------ tasks
    @overload
    def classify(self, images: ImageInput, report: str | None = None) -> dict[str, float]: ...

    @overload
    def classify(self, images: Batch, report: str | Batch | None = None) -> list[dict[str, float]]: ...

    @overload
    def classify(self, images: ImageInput | Batch, report: Batch) -> list[dict[str, float]]: ...

    @overload
    def classify(self, images: ImageInput | Sequence[ImageInput], report: str | Sequence[str] | None = None
                 ) -> dict[str, float] | list[dict[str, float]]: ...

    @torch.no_grad()
    def classify(self, images: ImageInput | Sequence[ImageInput], report: str | Sequence[str] | None = None
                 ) -> dict[str, float] | list[dict[str, float]]:
        """``{observation: probability}`` for the 14 CheXpert observations (sigmoid of each
        label's logit).  ``report``: the report that goes with the image (the paper's
        classification reads both); None gives the model an empty report (the image alone; a
        model fine-tuned with ``finetune.image_only_prob`` > 0 was trained on that input)."""
        lm = self._get("classification")
        imgs, reports, single = _pair_inputs(images, report, "reports", default="")
        out: list[dict[str, float]] = []
        for s in _chunks(len(imgs), self.batch_size):
            ids, valid = self._texts(lm, reports[s])
            logits = lm.model(ids, valid, images=self._images(lm, imgs[s])).logits.float()
            out += [dict(zip(lm.label_names, map(float, row), strict=True))
                    for row in torch.sigmoid(logits).cpu().numpy()]
        return out[0] if single else out

    @overload
    def generate(self, images: ImageInput, num_beams: int = 1, max_length: int | None = None,
                 length_penalty: float = 1.0, no_repeat_ngram_size: int = 0, min_length: int = 1) -> str: ...

    @overload
    def generate(self, images: Batch, num_beams: int = 1, max_length: int | None = None,
                 length_penalty: float = 1.0, no_repeat_ngram_size: int = 0, min_length: int = 1) -> list[str]: ...

    @overload
    def generate(self, images: ImageInput | Sequence[ImageInput], num_beams: int = 1, max_length: int | None = None,
                 length_penalty: float = 1.0, no_repeat_ngram_size: int = 0, min_length: int = 1
                 ) -> str | list[str]: ...

    @torch.no_grad()
    def generate(self, images: ImageInput | Sequence[ImageInput], num_beams: int = 1, max_length: int | None = None,
                 length_penalty: float = 1.0, no_repeat_ngram_size: int = 0, min_length: int = 1) -> str | list[str]:
        """A free-running report per image (:func:`medvill.generation.generate`, KV-cached;
        never teacher-forced).  ``num_beams`` 1 = greedy; ``max_length``: report tokens (default
        the model's ``max_text_len - 1``); see :class:`~medvill.generation.GenerationConfig`.
        The images of a batch (``batch_size``) are decoded together; with fp32 weights each report
        is the one its image would get alone (with bf16 or int8 it can depend on the batch)."""
        lm = self._get("generation")
        model = lm.model
        assert isinstance(model, MedViLLForPretraining)  # _get checked the class of the generation checkpoint
        limit = model.config.max_text_len - 1
        if max_length is not None and not 1 <= max_length <= limit:
            raise ValueError(f"max_length must lie in 1..{limit} (the model's max_text_len - 1), got {max_length}")
        if num_beams < 1:
            raise ValueError(f"num_beams must be >= 1, got {num_beams}")
        cfg = GenerationConfig(max_length=max_length or limit, num_beams=num_beams, length_penalty=length_penalty,
                               no_repeat_ngram_size=no_repeat_ngram_size, min_length=min_length)
        imgs, single = _as_list(images)
        out: list[str] = []
        for s in _chunks(len(imgs), self.batch_size):
            out += [lm.tokenizer.decode(ids) for ids in generate_ids(model, self._images(lm, imgs[s]), cfg)]
        return out[0] if single else out

    @overload
    def answer(self, images: ImageInput, question: str, top_k: int = 3) -> Answer: ...

    @overload
    def answer(self, images: Batch, question: str | Batch, top_k: int = 3) -> list[Answer]: ...

    @overload
    def answer(self, images: ImageInput | Batch, question: Batch, top_k: int = 3) -> list[Answer]: ...

    @overload
    def answer(self, images: ImageInput | Sequence[ImageInput], question: str | Sequence[str],
               top_k: int = 3) -> Answer | list[Answer]: ...

    @torch.no_grad()
    def answer(self, images: ImageInput | Sequence[ImageInput], question: str | Sequence[str],
               top_k: int = 3) -> Answer | list[Answer]:
        """The answer to a question about an image (one class of the training answers), its
        probability and the ``top_k`` most probable answers."""
        lm = self._get("vqa")
        imgs, questions, single = _pair_inputs(images, question, "questions")
        out: list[Answer] = []
        for s in _chunks(len(imgs), self.batch_size):
            ids, valid = self._texts(lm, questions[s])
            probs = lm.model(ids, valid, images=self._images(lm, imgs[s])).logits.float().softmax(-1).cpu()
            values, index = probs.topk(min(max(top_k, 1), probs.shape[-1]), dim=-1)
            for v, i in zip(values.tolist(), index.tolist(), strict=True):
                top = [(lm.answers[j], p) for j, p in zip(i, v, strict=True)]
                out.append(Answer(top[0][0], top[0][1], top))
        return out[0] if single else out

    @torch.no_grad()
    def retrieve(self, query: ImageInput | str, pool: Sequence[Any], k: int | None = 5,
                 query_type: Literal["auto", "image", "report"] = "auto") -> list[RetrievalHit]:
        """Rank ``pool`` against ``query`` with the retrieval checkpoint's matching head.

        An image query ranks a pool of reports (I2R); a report query ranks a pool of images
        (R2I).  ``query_type="auto"``: a ``str`` naming an existing file, a ``Path``, a PIL image
        or an array is an image, any other ``str`` a report.  Returns the best ``k`` hits (None:
        the whole pool) best first; ties keep pool order.  Each image's CNN features are computed
        once and cached (see ``feature_cache_size``), so a pool scored again costs no CNN pass.
        """
        lm = self._get("retrieval")
        if query_type not in ("auto", "image", "report"):
            raise ValueError(f"query_type must be auto, image or report, got {query_type!r}")
        pool = list(pool)
        if not pool:
            raise ValueError("the retrieval pool is empty")
        is_image = _is_image_query(query) if query_type == "auto" else query_type == "image"
        scores = self._score_pool(lm, query, pool, is_image)
        order = sorted(range(len(pool)), key=lambda j: (-scores[j], j))
        if k is not None:
            order = order[:max(k, 0)]
        return [RetrievalHit(rank=r + 1, index=j, item=pool[j], score=scores[j],
                             probability=float(1.0 / (1.0 + np.exp(-scores[j])))) for r, j in enumerate(order)]

    def _score_pool(self, lm: _Loaded, query: Any, pool: list[Any], is_image: bool) -> list[float]:
        """Matching logit of ``query`` with each pool item: an image query against a pool of
        reports, a report query against a pool of images."""
        if is_image:
            _check_image(query, "query")
            bad = [i for i, p in enumerate(pool) if not isinstance(p, str)]
            if bad:
                raise TypeError(f"an image query ranks reports: pool item {bad[0]} is a {type(pool[bad[0]]).__name__}")
            feats = self._cnn_features(lm, [query])
            pairs = [(0, j) for j in range(len(pool))]
            texts = pool
        else:
            if not isinstance(query, str):
                raise TypeError(f"a report query must be a str, got {type(query).__name__}")
            for i, p in enumerate(pool):
                _check_image(p, f"pool item {i}")
            feats = self._cnn_features(lm, pool)
            pairs = [(j, 0) for j in range(len(pool))]
            texts = [query]
        return self._match(lm, feats, texts, pairs)

    def _match(self, lm: _Loaded, feats: list[torch.Tensor], texts: Sequence[str],
               pairs: list[tuple[int, int]]) -> list[float]:
        """Matching logits of (image i, text j) pairs, in batches."""
        out: list[float] = []
        for s in _chunks(len(pairs), self.batch_size):
            chunk = pairs[s]
            ids, valid = self._texts(lm, [texts[j] for _, j in chunk])
            f = torch.stack([feats[i] for i, _ in chunk])  # (B, K, C)
            out += lm.model(ids, valid, visual_features=f).logits.float().cpu().tolist()
        return out

    def _cnn_features(self, lm: _Loaded, images: Sequence[ImageInput]) -> list[torch.Tensor]:
        """CNN features ``(K, C)`` per image, from the cache or computed once (in batches)."""
        feats: list[torch.Tensor | None] = [None] * len(images)
        pending: OrderedDict[tuple, tuple[list[int], torch.Tensor | None]] = OrderedDict()
        for i, x in enumerate(images):
            key, tensor = _path_key(x), None
            if key is None:
                tensor = lm.inputs(x)
                key = ("pixels", hashlib.sha1(tensor.numpy().tobytes()).hexdigest())
            if key in self._features:
                self._features.move_to_end(key)
                feats[i] = self._features[key]
            elif key in pending:
                pending[key][0].append(i)
            else:
                pending[key] = ([i], tensor)
        todo = list(pending.items())
        for s in _chunks(len(todo), self.batch_size):
            chunk = todo[s]
            pixels = torch.stack([t if t is not None else lm.inputs(images[idx[0]]) for _, (idx, t) in chunk])
            out = lm.model.medvill.encode_image(pixels.to(self.device))  # (B, K, C)
            self.cnn_passes += len(chunk)
            for (key, (idx, _)), f in zip(chunk, out, strict=True):
                for i in idx:
                    feats[i] = f
                if self.feature_cache_size > 0:
                    self._features[key] = f
                    while len(self._features) > self.feature_cache_size:
                        self._features.popitem(last=False)
        return feats  # type: ignore[return-value]

    @torch.no_grad()
    def explain(self, image: ImageInput, text: str, task: str | None = None) -> AttentionMaps:
        """Attention of every text token onto the visual grid, per layer and head (the paper's
        Fig. 5a), for one image and text (a report; for the VQA model, a question).  ``task``:
        the checkpoint to look into (default: the first of classification, retrieval, VQA,
        generation that is available).  Understanding tasks use the bidirectional mask they are
        fine-tuned with, generation its S2S mask."""
        if task is None:
            task = next((t for t in EXPLAIN_ORDER if t in self.checkpoints), None)
            if task is None:
                raise MissingTaskError(f"explain needs a checkpoint of one of {', '.join(EXPLAIN_ORDER)}; none loaded")
        lm = self._get(task)
        _check_image(image)
        if not isinstance(text, str) or not text.strip():
            raise ValueError("explain needs a non-empty text")
        scheme = MaskScheme.S2S if task == "generation" else MaskScheme.BI
        x = self._images(lm, [image])
        ids, valid = self._texts(lm, [text])
        n = ids.shape[1] - 1  # without the closing SEP_L
        out = lm.model.medvill(ids, valid, scheme, images=x, output_attentions=True)
        lay, g = out.layout, lm.model.config.grid_size
        rows = slice(lay.text_start, lay.text_start + n)
        att = torch.stack([a[0, :, rows, lay.visual_slice()] for a in out.attentions])  # (L, H, N, K)
        maps = att.reshape(att.shape[0], att.shape[1], n, g, g).float().cpu().numpy()
        tokens = lm.tokenizer.convert_ids_to_tokens(ids[0, :n].tolist())
        return AttentionMaps(tokens=tokens, maps=maps, image=image_from_tensor(x[0]), task=task, scheme=scheme.value)
