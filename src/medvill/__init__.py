"""medvill: MedViLL vision-language pre-training for chest X-rays and radiology reports."""

from typing import TYPE_CHECKING

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .inference import Pipeline

__all__ = ["Pipeline"]


def __getattr__(name: str) -> "type[Pipeline]":
    # imported on first use: `import medvill` stays light (the CLI and data workers import it)
    if name == "Pipeline":
        from .inference import Pipeline

        return Pipeline
    raise AttributeError(f"module 'medvill' has no attribute {name!r}")
