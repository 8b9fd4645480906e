"""Inference on fine-tuned checkpoints: :class:`Pipeline`, the one entry point.

::

    from medvill import Pipeline

    pipe = Pipeline.from_pretrained("demo-output")          # every task of a `medvill demo` run
    pipe.classify("cxr.png", report="...")                   # {"No Finding": 0.03, ...}
    pipe.generate("cxr.png", num_beams=3)                    # "the heart is enlarged . ..."
    pipe.answer("cxr.png", "is there a pleural effusion?")   # Answer(answer="yes", probability=0.91, ...)
    pipe.retrieve("cxr.png", ["report 1", "report 2"], k=1)  # [RetrievalHit(rank=1, index=..., ...)]
    pipe.explain("cxr.png", "small left pleural effusion")   # AttentionMaps (token x layer x head x grid)

:meth:`Pipeline.from_pretrained` takes one fine-tuned task checkpoint or a folder holding
several (a ``medvill demo`` output); images may be file paths, Pillow images or numpy arrays,
and every image gets the very preprocessing training gave it.  The modules:
:mod:`~medvill.inference.checkpoints` (finding, choosing and loading checkpoints),
:mod:`~medvill.inference.inputs` (accepted inputs and the training preprocessing),
:mod:`~medvill.inference.outputs` (the results) and :mod:`~medvill.inference.pipeline`
(the :class:`Pipeline`, batching, the retrieval feature cache); every public name is importable
from ``medvill.inference``.
"""

from ..modeling.weights import WEIGHT_FORMATS, check_weights
from .checkpoints import (
    DEFAULT_MODEL,
    MODEL_CLASSES,
    TASKS,
    MissingTaskError,
    TaskCheckpoint,
    TaskModel,
    checkpoint_task,
    find_checkpoints,
    select_checkpoints,
)
from .inputs import Batch, ImageInput, ModelInput, image_from_tensor
from .outputs import Answer, AttentionMaps, RetrievalHit
from .pipeline import EXPLAIN_ORDER, Pipeline

__all__ = [
    "DEFAULT_MODEL", "EXPLAIN_ORDER", "MODEL_CLASSES", "TASKS", "WEIGHT_FORMATS", "Answer", "AttentionMaps", "Batch",
    "ImageInput", "MissingTaskError", "ModelInput", "Pipeline", "RetrievalHit", "TaskCheckpoint", "TaskModel",
    "check_weights", "checkpoint_task", "find_checkpoints", "image_from_tensor", "select_checkpoints",
]
