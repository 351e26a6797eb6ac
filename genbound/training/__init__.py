"""The training loop (``genbound.training.train.train``): one run of one method, resumable,
on one or several processes.

The names below are the package's public surface; they are imported on first use (PEP 562), so importing one
module of the package does not import the others (``genbound --help`` stays free of torch).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .train import TrainConfig

_SURFACE = {
    "TrainConfig": "train",
}
__all__ = [
    "TrainConfig",
]


def __getattr__(name: str):
    if name not in _SURFACE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_SURFACE[name]}"), name)
    globals()[name] = value
    return value
