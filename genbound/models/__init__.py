"""Backbones (the registry, pretrained encoders, causal LMs, the ONNX conversion, tiny test models) and the losses
computed on their outputs.

The names below are the package's public surface; they are imported on first use (PEP 562), so importing one
module of the package does not import the others (``genbound --help`` stays free of torch).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..core.lazy import lazy_surface

if TYPE_CHECKING:
    from .backbones import BACKBONES, Backbone, get_backbone
    from .causal_lm import build_causal_lm, is_causal_model
    from .losses import mean_loss
    from .pretrained import pretrained_weights

_SURFACE = {
    "Backbone": "backbones",
    "BACKBONES": "backbones",
    "get_backbone": "backbones",
    "build_causal_lm": "causal_lm",
    "is_causal_model": "causal_lm",
    "pretrained_weights": "pretrained",
    "mean_loss": "losses",
}
__all__ = [
    "BACKBONES",
    "Backbone",
    "build_causal_lm",
    "get_backbone",
    "is_causal_model",
    "mean_loss",
    "pretrained_weights",
]


__getattr__ = lazy_surface(__name__, _SURFACE, globals())
