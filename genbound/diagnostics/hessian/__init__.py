"""Hessian spectra of (fine-tuned) models: extreme eigenvalues, trace and spectral density.

Matrix-free Hessian-vector products of the mean cross-entropy on a fixed evaluation set
(:class:`HessianOperator`), Lanczos with partial re-orthogonalization (:func:`lanczos`), Hutch++ /
Hutchinson traces with confidence intervals, and stochastic Lanczos quadrature densities, combined by
:func:`hessian_spectrum` and :func:`hessian_from_checkpoint`.

The names below are imported on first use (PEP 562), so that importing the operator alone (``genbound compare``
without ``--hessian``) does not import the Lanczos, trace and density modules and their SciPy parts. The
function ``lanczos`` is not among them: its name is its module's (``genbound.diagnostics.hessian.lanczos.lanczos``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...core.lazy import lazy_surface

if TYPE_CHECKING:
    from .density import DensityResult, slq_measure, smooth_density
    from .lanczos import LanczosRun, ritz_bounds, tridiagonal_eigh
    from .operator import HessianOperator, eval_mode, select_parameters
    from .spectrum import (
        EigenResult,
        HessianReport,
        extreme_eigenvalues,
        hessian_from_checkpoint,
        hessian_spectrum,
        planned_products,
        spectral_density,
        trace_estimate,
    )
    from .trace import TraceResult, hutchinson, hutchpp, rademacher

_SURFACE = {
    "DensityResult": "density",
    "slq_measure": "density",
    "smooth_density": "density",
    "LanczosRun": "lanczos",
    "ritz_bounds": "lanczos",
    "tridiagonal_eigh": "lanczos",
    "HessianOperator": "operator",
    "eval_mode": "operator",
    "select_parameters": "operator",
    "EigenResult": "spectrum",
    "HessianReport": "spectrum",
    "extreme_eigenvalues": "spectrum",
    "hessian_from_checkpoint": "spectrum",
    "hessian_spectrum": "spectrum",
    "planned_products": "spectrum",
    "spectral_density": "spectrum",
    "trace_estimate": "spectrum",
    "TraceResult": "trace",
    "hutchinson": "trace",
    "hutchpp": "trace",
    "rademacher": "trace",
}
__all__ = [
    "DensityResult",
    "EigenResult",
    "HessianOperator",
    "HessianReport",
    "LanczosRun",
    "TraceResult",
    "eval_mode",
    "extreme_eigenvalues",
    "hessian_from_checkpoint",
    "hessian_spectrum",
    "hutchinson",
    "hutchpp",
    "planned_products",
    "rademacher",
    "ritz_bounds",
    "select_parameters",
    "slq_measure",
    "smooth_density",
    "spectral_density",
    "trace_estimate",
    "tridiagonal_eigh",
]


__getattr__ = lazy_surface(__name__, _SURFACE, globals())
