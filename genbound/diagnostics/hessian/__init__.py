"""Hessian spectra of (fine-tuned) models: extreme eigenvalues, trace and spectral density.

Matrix-free Hessian-vector products of the mean cross-entropy on a fixed evaluation set
(:class:`HessianOperator`), Lanczos with partial re-orthogonalization (:func:`lanczos`), Hutch++ /
Hutchinson traces with confidence intervals, and stochastic Lanczos quadrature densities, combined by
:func:`hessian_spectrum` and :func:`hessian_from_checkpoint`.
"""

from .density import DensityResult, slq_measure, smooth_density
from .lanczos import LanczosRun, lanczos, ritz_bounds, tridiagonal_eigh
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
    "lanczos",
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
