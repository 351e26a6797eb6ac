"""The training loop (``genbound.training.train.train``): one run of one method, resumable,
on one or several processes; what a step costs (``cost``); the diagnostics logged to experiment trackers
while training (``trackers``) and the Hugging Face Trainer callback that records a run (``hf_trainer``).

The names below are the package's public surface; they are imported on first use (PEP 562), so importing one
module of the package does not import the others (``genbound --help`` stays free of torch).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..core.lazy import lazy_surface

if TYPE_CHECKING:
    from .hf_trainer import GenboundCallback
    from .train import TrainConfig

_SURFACE = {
    "TrainConfig": "train",
    "GenboundCallback": "hf_trainer",
}
__all__ = [
    "GenboundCallback",
    "TrainConfig",
]


__getattr__ = lazy_surface(__name__, _SURFACE, globals())
