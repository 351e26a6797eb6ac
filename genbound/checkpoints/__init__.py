"""genbound's checkpoint: the format, writing and reading it, rebuilding the model, the trajectory, the resumable
training state and the size claims checked before reading.

The names below are the package's public surface; they are imported on first use (PEP 562), so importing one
module of the package does not import the others (``genbound --help`` stays free of torch).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..core.lazy import lazy_surface

if TYPE_CHECKING:
    from .checkpoint import Checkpoint, load_checkpoint, save_checkpoint
    from .format import CheckpointMeta, LayerInfo, is_checkpoint, load_meta
    from .resume import state_dir_for
    from .trajectory import trajectory_updates

_SURFACE = {
    "Checkpoint": "checkpoint",
    "load_checkpoint": "checkpoint",
    "save_checkpoint": "checkpoint",
    "CheckpointMeta": "format",
    "LayerInfo": "format",
    "load_meta": "format",
    "is_checkpoint": "format",
    "trajectory_updates": "trajectory",
    "state_dir_for": "resume",
}
__all__ = [
    "Checkpoint",
    "CheckpointMeta",
    "LayerInfo",
    "is_checkpoint",
    "load_checkpoint",
    "load_meta",
    "save_checkpoint",
    "state_dir_for",
    "trajectory_updates",
]


__getattr__ = lazy_surface(__name__, _SURFACE, globals())
