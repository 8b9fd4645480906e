"""Inference on fine-tuned checkpoints: :class:`Pipeline`, the one entry point.

::

    from medvill import Pipeline

    pipe = Pipeline.from_pretrained("demo-output")          # every task of a `medvill demo` run
    pipe.classify("cxr.png", report="...")                   # {"No Finding": 0.03, ...}
    pipe.generate("cxr.png", num_beams=3)                    # "the heart is enlarged . ..."
    pipe.answer("cxr.png", "is there a pleural effusion?")   # Answer(answer="yes", probability=0.91, ...)
    pipe.retrieve("cxr.png", ["report 1", "report 2"], k=1)  # [RetrievalHit(rank=1, index=..., ...)]
    pipe.explain("cxr.png", "small left pleural effusion")   # AttentionMaps (token x layer x head x grid)

**Checkpoints.** :meth:`Pipeline.from_pretrained` takes one fine-tuned task checkpoint
(``medvill finetune ... --output DIR``) or a folder holding several, such as a ``medvill demo``
output (``DIR/finetune/<task>-<model>/``).  Where a task has several checkpoints, the one named
``MedViLL-BAR`` is used unless ``model=`` names another (a folder name, or the part after
``<task>-``).  Models are loaded on first use.  A method whose task has no checkpoint raises
:class:`MissingTaskError` naming the task and the checkpoints that were found.

**Images** may be file paths (PNG, JPEG, DICOM, 16-bit PNG/TIFF, ...), Pillow images or numpy
arrays (``uint8`` or ``uint16`` gray, ``uint8`` RGB/RGBA, floats in [0, 1]).  Every image goes
through :func:`medvill.data.transforms.load_image`, the very function training reads images
with (decode, cut uniform margins, keep-aspect resize and pad, 8-bit, ImageNet normalisation).
When the model was trained on a prepared-image cache (``medvill prepare``), an original image is
first given the cache's preprocessing, as the cache did (``preprocess.json`` beside the
checkpoint records which).  An in-memory image decodes exactly like the file it was read from,
except for what only a file holds: a PNG's ``sBIT`` bit depth and JPEG draft scaling (pass the
path to have those).

**Batches.** Every method takes one input or a list; a list is processed in batches of
``batch_size`` and gives a list of results in the same order.  ``device`` picks the CPU or a GPU.

**Texts.** The classification model of the paper reads the image *and* its report (that is how
it is fine-tuned and evaluated); :meth:`Pipeline.classify` without a report gives the model an
empty report, so those probabilities rest on the image alone (a model fine-tuned with
``finetune.image_only_prob`` > 0 was trained on that input; see its ``image_only_*`` metrics).
VQA reads the question; retrieval scores (image, report) pairs with
the matching head; generation reads only the image.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast, overload

import numpy as np
import torch
from PIL import Image

from .checkpoint_files import (
    ANSWERS_FILE,
    CONFIG_NAME,
    FINETUNE_INFO,
    INPUT_INFO,
    CheckpointInfo,
    read_json_file,
    read_run_config,
    training_root,
)
from .config import ConfigError, MaskScheme
from .data.collate import encode_reports, pad_stack
from .data.prepare import training_input_settings
from .data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    PIPELINE_VERSION,
    Decoded,
    Preprocess,
    load_image,
    to_tensor,
    to_uint8,
)
from .generation import GenerationConfig
from .generation import generate as generate_ids
from .labels import CHEXPERT_OBSERVATIONS
from .modeling.heads import MedViLLForClassification, MedViLLForPretraining, MedViLLForRetrieval, MedViLLForVQA
from .modeling.pretrained import PreTrainedModel
from .tasks.registry import task_spec
from .tasks.vqa import read_answers
from .tokenization import MedTokenizer

log = logging.getLogger(__name__)

#: An image as the Pipeline accepts it: a file path, a Pillow image or a numpy array.
ImageInput = str | os.PathLike | Image.Image | np.ndarray
#: A batch as the Pipeline's methods take it: a list or a tuple (anything else is one input).
Batch = list[Any] | tuple[Any, ...]

#: the tasks a Pipeline runs (each has its method: classify, retrieve, answer, generate)
TASKS = ("classification", "retrieval", "vqa", "generation")
#: The model picked where a folder holds several checkpoints of a task.
DEFAULT_MODEL = "MedViLL-BAR"
#: A task's model: one of :data:`MODEL_CLASSES`.
TaskModel = MedViLLForClassification | MedViLLForRetrieval | MedViLLForVQA | MedViLLForPretraining
#: each task's MedViLL model class, from the task registry (medvill.tasks.registry)
MODEL_CLASSES: dict[str, type[TaskModel]] = {
    task: cast("type[TaskModel]", task_spec(task).medvill.model_class) for task in TASKS}
#: older checkpoints without finetune.json: the task from the architecture (generation's
#: MedViLLForPretraining is also the pre-training model, so it cannot say)
_ARCHITECTURE_TASK = {MODEL_CLASSES[t].__name__: t for t in ("classification", "retrieval", "vqa")}
#: explain() without ``task=``: the first of these that is available.
EXPLAIN_ORDER = ("classification", "retrieval", "vqa", "generation")


class MissingTaskError(LookupError):
    """A method needs a task whose checkpoint the Pipeline does not have."""


# ============================================================================================
# results
# ============================================================================================

@dataclass
class Answer:
    """:meth:`Pipeline.answer`: the predicted answer, its softmax probability over the answer
    vocabulary of the training set, and the ``top`` answers as ``(answer, probability)``."""

    answer: str
    probability: float
    top: list[tuple[str, float]] = field(default_factory=list)


@dataclass
class RetrievalHit:
    """One ranked pool item of :meth:`Pipeline.retrieve`.

    ``rank`` 1 is the best match; ``index`` is the item's position in the pool and ``item``
    the item as given; ``score`` is the matching head's logit and ``probability`` its sigmoid
    (the model's probability that query and item belong together)."""

    rank: int
    index: int
    item: Any
    score: float
    probability: float


@dataclass
class AttentionMaps:
    """:meth:`Pipeline.explain`: how much each text token attends each cell of the visual grid.

    ``maps[l, h, t]`` is the ``(grid, grid)`` attention of text token ``t`` onto the visual
    tokens in layer ``l``, head ``h`` (softmax probabilities; the rest of each row's mass goes to
    the special and text tokens, so a map sums to at most 1).  Grid cell ``(i, j)`` covers image
    rows ``i * stride .. (i + 1) * stride`` and columns likewise, ``stride = image_size / grid``.
    ``tokens`` are the WordPiece tokens of the text (the closing [SEP] excluded); ``image`` is the
    preprocessed 8-bit image the model saw; ``task`` the checkpoint used and ``scheme`` its mask.
    """

    tokens: list[str]
    maps: np.ndarray  # (L, H, N, g, g) float32
    image: np.ndarray  # (S, S) uint8
    task: str
    scheme: str

    @property
    def num_layers(self) -> int:
        return int(self.maps.shape[0])

    @property
    def num_heads(self) -> int:
        return int(self.maps.shape[1])

    @property
    def grid_size(self) -> int:
        return int(self.maps.shape[-1])

    def token_index(self, token: int | str) -> int:
        """Position of ``token``: an index (negative counts from the end) or the first token
        equal to the string (case-insensitive, ``##`` continuation marks ignored)."""
        if isinstance(token, (int, np.integer)):
            n = len(self.tokens)
            if not -n <= int(token) < n:
                raise IndexError(f"token index {token} out of range for {n} tokens")
            return int(token) % n
        want = str(token).lower().removeprefix("##")
        for i, t in enumerate(self.tokens):
            if t.lower().removeprefix("##") == want:
                return i
        raise KeyError(f"token {token!r} is not among the text's tokens: {self.tokens}")

    def map(self, token: int | str, layer: int | None = None, head: int | None = None) -> np.ndarray:
        """The ``(grid, grid)`` map of one token; ``layer`` / ``head`` None = the mean over
        layers / heads."""
        m = self.maps[:, :, self.token_index(token)]  # (L, H, g, g)
        m = m.mean(0) if layer is None else m[_check_index(layer, self.num_layers, "layer")]
        return m.mean(0) if head is None else m[_check_index(head, self.num_heads, "head")]


def _check_index(i: int, n: int, what: str) -> int:
    if not -n <= i < n:
        raise IndexError(f"{what} {i} out of range (the model has {n})")
    return i


# ============================================================================================
# finding checkpoints
# ============================================================================================

@dataclass(frozen=True)
class TaskCheckpoint:
    """A fine-tuned checkpoint folder, its task and its model name (e.g. ``MedViLL-BAR``)."""

    task: str
    name: str
    path: Path


def _supported(info: CheckpointInfo, task: str) -> bool:
    """Whether the Pipeline can run the checkpoint (a MedViLL task model, not a baseline: the
    CNN & Transformer baseline uses MedViLL's task classes on another trunk)."""
    return info.architecture == MODEL_CLASSES[task].__name__ and info.trunk == "medvill"


def checkpoint_task(path: str | Path | CheckpointInfo) -> str:
    """The task of a fine-tuned checkpoint (from ``finetune.json``, else its architecture)."""
    info = path if isinstance(path, CheckpointInfo) else CheckpointInfo.read(path)
    task = info.task
    if task is not None:
        if task not in TASKS:
            raise ConfigError(f"{info.directory / FINETUNE_INFO}: unknown task {task!r}; expected one of "
                              f"{', '.join(TASKS)}")
        return task
    arch = info.architecture
    if arch in _ARCHITECTURE_TASK:
        return _ARCHITECTURE_TASK[arch]
    raise ConfigError(f"{info.directory} holds a {arch} without {FINETUNE_INFO}: a pre-training checkpoint, not a "
                      f"fine-tuned task checkpoint; fine-tune it first (medvill finetune TASK --init {info.directory} "
                      "...)")


def find_checkpoints(directory: str | Path, max_depth: int = 3) -> list[TaskCheckpoint]:
    """Fine-tuned MedViLL checkpoints in ``directory``: the folder itself when it is one, else
    every sub-folder (up to ``max_depth`` levels) holding ``config.json`` and ``finetune.json``
    (baseline models, which the Pipeline does not run, are left out)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"checkpoint folder not found: {directory}")
    if (directory / CONFIG_NAME).is_file():
        info = CheckpointInfo.read(directory)
        task = checkpoint_task(info)
        if not _supported(info, task):
            arch = "CNN & Transformer baseline" if info.trunk == "cnn_transformer" else info.architecture
            raise ConfigError(f"{directory} holds a {arch} {task} model; the Pipeline runs MedViLL task models "
                              f"({MODEL_CLASSES[task].__name__})")
        return [TaskCheckpoint(task, _model_name(directory, task), directory)]
    found: list[TaskCheckpoint] = []

    def walk(folder: Path, depth: int) -> None:
        for child in sorted(folder.iterdir()):
            if child.name.startswith(".") or not child.is_dir():
                continue
            if (child / CONFIG_NAME).is_file():  # a checkpoint: never look inside (step-N saves)
                if (child / FINETUNE_INFO).is_file():
                    info = CheckpointInfo.read(child)
                    task = checkpoint_task(info)
                    if _supported(info, task):  # baselines (TieNet, CNN & Transformer) are left out
                        found.append(TaskCheckpoint(task, _model_name(child, task), child))
            elif depth < max_depth:
                walk(child, depth + 1)

    walk(directory, 1)
    return found


def _model_name(path: Path, task: str) -> str:
    return path.name[len(task) + 1:] if path.name.startswith(f"{task}-") else path.name


def select_checkpoints(found: Sequence[TaskCheckpoint], model: str | None = None,
                       source: str | Path = "") -> dict[str, TaskCheckpoint]:
    """One checkpoint per task: the one named ``model`` (folder name or the part after
    ``<task>-``); without ``model``, a task's only checkpoint or its ``MedViLL-BAR`` one."""
    by_task: dict[str, list[TaskCheckpoint]] = {}
    for c in found:
        by_task.setdefault(c.task, []).append(c)
    chosen: dict[str, TaskCheckpoint] = {}
    for task, cands in by_task.items():
        if model is not None:
            match = [c for c in cands if model in (c.name, c.path.name)]
        elif len(cands) == 1:
            match = cands
        else:
            match = [c for c in cands if c.name == DEFAULT_MODEL]
            if not match:
                raise ConfigError(f"{source} holds several {task} checkpoints ({', '.join(c.name for c in cands)}) "
                                  f"and none named {DEFAULT_MODEL}; choose one with model=NAME (CLI: --model NAME)")
        if len(match) > 1:
            raise ConfigError(f"{source}: {len(match)} {task} checkpoints match {model or DEFAULT_MODEL!r}: "
                              f"{', '.join(str(c.path) for c in match)}")
        if match:
            chosen[task] = match[0]
    if model is not None and not chosen:
        names = sorted({c.name for c in found})
        raise FileNotFoundError(f"no checkpoint named {model!r} in {source}; available: {', '.join(names) or 'none'}")
    return chosen


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
            info = read_json_file(path)
            try:
                cache, size = info["cache"], int(info["image_size"])
                if cache is not None and not isinstance(cache, dict):
                    raise TypeError(f"'cache' must be an object or null, got {type(cache).__name__}")
            except (KeyError, TypeError, ValueError) as exc:
                raise ConfigError(f"{path}: not a medvill {INPUT_INFO} ({type(exc).__name__}: {exc})") from None
            if size != image_size:
                raise ConfigError(f"{path}: image_size {size} differs from the model's {image_size}")
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


def _training_root(directory: Path) -> str | None:
    """The data root of an older checkpoint's run (None: not recorded or no longer there)."""
    root = training_root(directory)
    if root is None and ((read_run_config(directory) or {}).get("data") or {}).get("root"):
        log.warning("%s has no %s and its training data is not here: cannot check whether training read a "
                    "prepared-image cache; using the default preprocessing", directory, INPUT_INFO)
    return root


def image_from_tensor(x: torch.Tensor) -> np.ndarray:
    """The 8-bit image ``(S, S)`` behind a model input tensor (inverts the normalisation)."""
    c0 = x[0].detach().float().cpu().numpy()
    return to_uint8(c0 * IMAGENET_STD[0] + IMAGENET_MEAN[0])


# ============================================================================================
# the pipeline
# ============================================================================================

@dataclass
class _Loaded:
    model: TaskModel
    tokenizer: MedTokenizer
    inputs: ModelInput
    label_names: list[str] = field(default_factory=list)
    answers: list[str] = field(default_factory=list)


def _as_list(x: Any) -> tuple[list, bool]:
    """``(items, single)``: a list/tuple is a batch, anything else one item."""
    if isinstance(x, (list, tuple)):
        return list(x), False
    return [x], True


def _chunks(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


def _check_image(x: Any, what: str = "image") -> None:
    if not isinstance(x, (str, os.PathLike, Image.Image, np.ndarray)):
        raise TypeError(f"{what}: expected a file path, a PIL image or a numpy array, got {type(x).__name__}")


def _is_image_query(x: Any) -> bool:
    if isinstance(x, (os.PathLike, Image.Image, np.ndarray)):
        return True
    if isinstance(x, str):
        try:
            return len(x) < 4096 and "\n" not in x and Path(x).is_file()
        except OSError:  # e.g. a long report is no valid file name
            return False
    raise TypeError(f"query: expected an image (path, PIL image, array) or a report (str), got {type(x).__name__}")


class Pipeline:
    """Fine-tuned MedViLL models behind one object; see the module docstring.

    Build it with :meth:`from_pretrained`.  ``device``: ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or a
    ``torch.device`` (default: CUDA when available).  ``batch_size``: images per forward pass.
    ``feature_cache_size``: CNN features kept for :meth:`retrieve` (entries, least recently
    used dropped first).  Methods never train; models run in eval mode without gradients.
    """

    def __init__(self, checkpoints: dict[str, TaskCheckpoint], device: str | torch.device | None = None,
                 batch_size: int = 16, feature_cache_size: int = 256, source: str | Path = ""):
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        unknown = set(checkpoints) - set(TASKS)
        if unknown:
            raise ConfigError(f"unknown tasks {sorted(unknown)}; expected some of {', '.join(TASKS)}")
        self.checkpoints = dict(checkpoints)
        self.source = str(source)
        self.device = torch.device(device) if device is not None else torch.device(
            "cuda" if torch.cuda.is_available() else "cpu")
        self.batch_size = batch_size
        self.feature_cache_size = feature_cache_size
        self._loaded: dict[str, _Loaded] = {}
        self._features: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        self.cnn_passes = 0  # images through the retrieval CNN (feature cache misses)

    @classmethod
    def from_pretrained(cls, directory: str | Path, model: str | None = None, device: str | torch.device | None = None,
                        batch_size: int = 16, feature_cache_size: int = 256) -> Pipeline:
        """Checkpoints from one fine-tuned checkpoint folder or a folder holding several (a
        ``medvill demo`` output: ``finetune/<task>-<model>/``).  ``model``: which model's
        checkpoints to use where there are several (default ``MedViLL-BAR``)."""
        found = find_checkpoints(directory)
        if not found:
            raise FileNotFoundError(f"no fine-tuned checkpoint (config.json + {FINETUNE_INFO}) in {directory}; pass "
                                    "a folder written by medvill finetune, or a medvill demo output folder")
        return cls(select_checkpoints(found, model, directory), device=device, batch_size=batch_size,
                   feature_cache_size=feature_cache_size, source=directory)

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
        if task in self._loaded:
            return self._loaded[task]
        self.checkpoint_path(task)
        ckpt = self.checkpoints[task]
        model = PreTrainedModel.from_pretrained(ckpt.path)
        if not isinstance(model, MODEL_CLASSES[task]):
            raise ConfigError(f"{ckpt.path}: a {task} checkpoint should hold a {MODEL_CLASSES[task].__name__}, "
                              f"not a {type(model).__name__}")
        model.to(self.device).eval()
        lm = _Loaded(model, MedTokenizer.from_pretrained(ckpt.path),
                     ModelInput.for_checkpoint(ckpt.path, model.config.image_size))
        if isinstance(model, MedViLLForClassification):  # the classification task (checked above)
            n = model.num_labels
            lm.label_names = (list(CHEXPERT_OBSERVATIONS) if n == len(CHEXPERT_OBSERVATIONS)
                              else [f"label_{i}" for i in range(n)])
        if isinstance(model, MedViLLForVQA):  # the VQA task
            path = ckpt.path / ANSWERS_FILE
            if not path.is_file():
                raise FileNotFoundError(f"{ckpt.path} has no {ANSWERS_FILE}: not a VQA checkpoint")
            lm.answers = read_answers(path)
            if len(lm.answers) != model.num_answers:
                raise ConfigError(f"{path}: {len(lm.answers)} answers, the model has {model.num_answers} classes")
        self._loaded[task] = lm
        return lm

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
        for t in texts:
            if not isinstance(t, str):
                raise TypeError(f"expected text (str), got {type(t).__name__}")
        ids = encode_reports(lm.tokenizer, list(texts), lm.model.config.max_text_len)
        lengths = torch.tensor([len(i) for i in ids])
        text_ids = pad_stack(ids, lm.tokenizer.pad_id)
        valid = torch.arange(text_ids.shape[1])[None] < lengths[:, None]
        return text_ids.to(self.device), valid.to(self.device)

    @staticmethod
    def _pair(images: Any, texts: Any, what: str, default: str | None = None) -> tuple[list, list[str], bool]:
        """Images and texts as equal-length lists (a single one is repeated); ``single`` when
        neither was a list."""
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
        imgs, reports, single = self._pair(images, report, "reports", default="")
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
        the model's ``max_text_len - 1``); see :class:`~medvill.generation.GenerationConfig`."""
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
        imgs, questions, single = self._pair(images, question, "questions")
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
        scores = self._match(lm, feats, texts, pairs)
        order = sorted(range(len(pool)), key=lambda j: (-scores[j], j))
        if k is not None:
            order = order[:max(k, 0)]
        return [RetrievalHit(rank=r + 1, index=j, item=pool[j], score=scores[j],
                             probability=float(1.0 / (1.0 + np.exp(-scores[j])))) for r, j in enumerate(order)]

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
