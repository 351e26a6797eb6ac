"""Generalization bounds for every fine-tuning method (docs/concepts.md, "Bounds").

mi          the mutual-information bound and the paper's Table 1 (configurations, presets)
theorem1    Theorem 1's correction terms: O(L) recursion (default), printed form, brute-force enumeration
transformer which chain of maps Theorem 1 sees, and why it does not apply to a transformer
common      kl, kl-inverse, Hoeffding, sigma from the loss range, q from the dtype
occam       compression (Occam) bound on the quantized model
certificate subspace checkpoint -> quantized, arithmetic-coded message -> Occam bound on the decoded model
smoothed    the prediction-smoothed cross-entropy bound from the same message (SubLoRA)
ddprior     the same certificate around a data-dependent centre: a prior part trains it, the rest is counted
pacbayes    PAC-Bayes bound with the prior at the data-independent initialization
hypothesis  the coded tensors of a checkpoint and their data-independent start
report      dataclasses for a configuration or checkpoints; Markdown / LaTeX Table 1

The names below are the package's public surface; they are imported on first use (PEP 562), so importing one
module of the package does not import the others (`genbound certify --help` reads its defaults without torch).
The function ``theorem1`` is not among them: its name is its module's (``genbound.bounds.theorem1.theorem1``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..core.lazy import lazy_surface

if TYPE_CHECKING:
    from .common import binary_kl, bits_for_dtype, hoeffding_gap, kl_inverse_upper, sigma_for_loss
    from .mi import BoundConfig, MIBound, load_config, method_bound, mi_gap_bound, parse_layers, table1
    from .theorem1 import ChainLayer, Theorem1Result, output_deviation, phi_enumerated, phi_printed, phi_recursion

_SURFACE = {
    "binary_kl": "common",
    "bits_for_dtype": "common",
    "hoeffding_gap": "common",
    "kl_inverse_upper": "common",
    "sigma_for_loss": "common",
    "BoundConfig": "mi",
    "MIBound": "mi",
    "load_config": "mi",
    "method_bound": "mi",
    "mi_gap_bound": "mi",
    "parse_layers": "mi",
    "table1": "mi",
    "ChainLayer": "theorem1",
    "Theorem1Result": "theorem1",
    "output_deviation": "theorem1",
    "phi_enumerated": "theorem1",
    "phi_printed": "theorem1",
    "phi_recursion": "theorem1",
}
__all__ = [
    "BoundConfig",
    "ChainLayer",
    "MIBound",
    "Theorem1Result",
    "binary_kl",
    "bits_for_dtype",
    "hoeffding_gap",
    "kl_inverse_upper",
    "load_config",
    "method_bound",
    "mi_gap_bound",
    "output_deviation",
    "parse_layers",
    "phi_enumerated",
    "phi_printed",
    "phi_recursion",
    "sigma_for_loss",
    "table1",
]


__getattr__ = lazy_surface(__name__, _SURFACE, globals())
