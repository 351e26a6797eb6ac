"""The fine-tuning methods: the catalogue (name -> recipe), the factor kinds, the adapters that put them on a layer,
subspace training, and a layer's update.

The names below are the package's public surface; they are imported on first use (PEP 562), so importing one
module of the package does not import the others (``genbound --help`` stays free of torch).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..core.lazy import lazy_surface

if TYPE_CHECKING:
    from .adapters import AdaptedLinear, attach_adapters, merge_adapters
    from .catalogue import METHODS, Method, get_method, layer_generator
    from .subspace import attach_subspace, detach_subspace
    from .update import LayerUpdate

_SURFACE = {
    "METHODS": "catalogue",
    "Method": "catalogue",
    "get_method": "catalogue",
    "layer_generator": "catalogue",
    "AdaptedLinear": "adapters",
    "attach_adapters": "adapters",
    "merge_adapters": "adapters",
    "LayerUpdate": "update",
    "attach_subspace": "subspace",
    "detach_subspace": "subspace",
}
__all__ = [
    "AdaptedLinear",
    "LayerUpdate",
    "METHODS",
    "Method",
    "attach_adapters",
    "attach_subspace",
    "detach_subspace",
    "get_method",
    "layer_generator",
    "merge_adapters",
]


__getattr__ = lazy_surface(__name__, _SURFACE, globals())
