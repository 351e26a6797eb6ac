"""Empirical diagnostics of trained updates: evaluation, singular spectra, intruder dimensions, subspace similarity,
the Hessian (hessian/) and the loss landscape (landscape/).

The names below are the package's public surface; they are imported on first use (PEP 562), so importing one
module of the package does not import the others (``genbound --help`` stays free of torch).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..core.lazy import lazy_surface

if TYPE_CHECKING:
    from .evaluate import Evaluation, evaluate_source, source_results
    from .hessian import hessian_from_checkpoint
    from .intruders import eps_sweep
    from .landscape import landscape_from_checkpoints
    from .similarity import compare_updates

_SURFACE = {
    "Evaluation": "evaluate",
    "evaluate_source": "evaluate",
    "source_results": "evaluate",
    "eps_sweep": "intruders",
    "compare_updates": "similarity",
    "hessian_from_checkpoint": "hessian",
    "landscape_from_checkpoints": "landscape",
}
__all__ = [
    "Evaluation",
    "compare_updates",
    "eps_sweep",
    "evaluate_source",
    "hessian_from_checkpoint",
    "landscape_from_checkpoints",
    "source_results",
]


__getattr__ = lazy_surface(__name__, _SURFACE, globals())
