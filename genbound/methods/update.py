"""The weight update of one adapted layer, kept in factored form.

Every method's update of a layer W0 (shape (n, m) = (out, in)) is written

    dW = s * B @ A,      B: (n, R),  A: (R, m),  R = k r for a chain of k links of rank r,

with the links' factors concatenated (sum_j s B_j A_j = s [B_1 .. B_k][A_1; ..; A_k]). Selector methods
(cla, rcla, c3la, rc3la) and PaCA have A = rows of the identity (``columns`` holds their indices), so dW is
supported on those input columns. Full fine-tuning gives a ``dense`` dW instead.

The singular values come from the factors without forming dW (docs/concepts.md, "Factored update spectra"):
with B = Q_B R_B and
A^T = Q_A R_A, dW = Q_B (s R_B R_A^T) Q_A^T, so they are those of the R x R core, in O((m + n) R^2).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

from ..core.errors import NonFiniteError


def one_hot_selector(idx: Tensor, m: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """The dense (R, m) A that a column index vector stands for: row j is e_{idx[j]}^T."""
    A = torch.zeros(idx.numel(), m, dtype=dtype, device=idx.device)
    A[torch.arange(idx.numel(), device=idx.device), idx] = 1.0
    return A


@dataclass
class LayerUpdate:
    """dW of one layer: ``scale * B @ A`` (factored) or ``dense``."""

    name: str
    out_features: int  # n
    in_features: int  # m
    scale: float = 1.0
    B: Tensor | None = None  # (n, R)
    A: Tensor | None = None  # (R, m)
    columns: Tensor | None = None  # (R,) int64, when A is a column selector
    dense: Tensor | None = None  # (n, m), when not factored

    @property
    def factored(self) -> bool:
        return self.dense is None

    @property
    def shape(self) -> tuple[int, int]:
        return (self.out_features, self.in_features)

    @property
    def rank_bound(self) -> int:
        """An upper bound on rank(dW): R for a factored update, min(n, m) for a dense one."""
        return int(self.B.shape[1]) if self.factored else min(self.shape)

    def renamed(self, name: str) -> LayerUpdate:
        """The same update (tensors shared) under another layer name."""
        return replace(self, name=name)

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> LayerUpdate:
        def mv(t: Tensor | None) -> Tensor | None:
            if t is None:
                return None
            return t.to(device) if not t.is_floating_point() or dtype is None else t.to(device, dtype)

        return LayerUpdate(
            self.name, self.out_features, self.in_features, self.scale,
            mv(self.B), mv(self.A), mv(self.columns), mv(self.dense),
        )

    def materialize(self) -> Tensor:
        """The dense (n, m) dW. Use only where a dense matrix is really needed (tests, fft)."""
        if not self.factored:
            return self.dense
        return self.scale * (self.B @ self.A)

    def check_finite(self) -> None:
        for label, t in (("B", self.B), ("A", self.A), ("dense update", self.dense)):
            if t is not None and t.is_floating_point() and not torch.isfinite(t).all():
                raise NonFiniteError(f"layer {self.name}: {label} contains NaN or Inf")

    def svd_core(self) -> tuple[Tensor, Tensor, Tensor]:
        """Thin SVD of dW from the factors: (U (n, R), S (R,), Vh (R, m)), S descending.

        dW = Q_B (s R_B R_A^T) Q_A^T; SVD of the core C = U_c S V_c^T gives U = Q_B U_c, V = Q_A V_c.
        """
        if not self.factored:
            U, S, Vh = torch.linalg.svd(self.dense, full_matrices=False)
            return U, S, Vh
        B, A = self.B, self.A
        work = torch.float64 if B.dtype == torch.float64 else torch.float32
        B, A = B.to(work), A.to(work)
        Qb, Rb = torch.linalg.qr(B)
        Qa, Ra = torch.linalg.qr(A.T)
        core = self.scale * (Rb @ Ra.T)
        Uc, S, Vhc = torch.linalg.svd(core)
        return Qb @ Uc, S, (Qa @ Vhc.T).T

    def singular_values(self) -> Tensor:
        """Singular values of dW, descending (length R for factored updates, min(n, m) for dense)."""
        if not self.factored:
            return torch.linalg.svdvals(self.dense)
        B, A = self.B, self.A
        work = torch.float64 if B.dtype == torch.float64 else torch.float32
        Rb = torch.linalg.qr(B.to(work), mode="r")[1]
        Ra = torch.linalg.qr(A.to(work).T, mode="r")[1]
        return torch.linalg.svdvals(self.scale * (Rb @ Ra.T))

    def spectral_norm(self) -> float:
        """||dW||_2 from the factors."""
        s = self.singular_values()
        return float(s[0]) if s.numel() else 0.0
