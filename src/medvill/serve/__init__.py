"""The web demo: ``medvill serve --checkpoint DIR`` (see ``docs/guide/web-demo.md``).

Upload a chest X-ray and see the 14 observation probabilities, a generated report, the
attention of a clicked report word on the image, the answer to a question and the most similar
reports of a pool, from the fine-tuned checkpoints of one folder (a ``medvill demo`` output
works as it is).  :mod:`medvill.serve.service` does the work, :mod:`medvill.serve.app` is the
HTTP layer (Starlette + uvicorn; the ``serve`` extra).
"""

from collections.abc import Callable
from typing import Any

from .service import DemoService, ServeConfig, UserError

__all__ = ["DemoService", "ServeConfig", "UserError", "create_app", "serve"]


def __getattr__(name: str) -> Callable[..., Any]:
    # the web framework is imported only when the app is built (the `serve` extra)
    if name in ("create_app", "serve"):
        from . import app

        return getattr(app, name)
    raise AttributeError(f"module 'medvill.serve' has no attribute {name!r}")
