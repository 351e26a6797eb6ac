"""The trace's 95% interval holds: over 300 seeded runs on a matrix with a known trace and a network-like
spectrum (a power-law decay, some negative eigenvalues, random eigenvectors), Hutch++ with a Lanczos sketch at
the default tolerance contains the exact trace in at least 94% of the runs (genbound.diagnostics.hessian.trace: a pilot
fixes the probe count once, and a rounding term covers what the spread cannot show)."""

from __future__ import annotations

import numpy as np
import torch

from genbound.diagnostics.hessian.lanczos import lanczos
from genbound.diagnostics.hessian.trace import hutchinson, hutchpp, rademacher


def _matrix(dim: int = 300, seed: int = 0) -> tuple[torch.Tensor, float]:
    g = np.random.default_rng(seed)
    i = np.arange(1, dim + 1)
    ev = 100 * i**-1.5 * np.where(g.random(dim) < 0.15, -0.3, 1.0)
    q, _ = np.linalg.qr(g.normal(size=(dim, dim)))
    return torch.tensor((q * ev) @ q.T), float(ev.sum())


def test_default_interval_covers_the_exact_trace_in_300_runs():
    H, exact = _matrix()
    matmat = lambda Z: Z @ H  # noqa: E731
    runs, hits, probes = 300, 0, []
    for s in range(runs):
        start = rademacher(1, H.shape[0], torch.Generator().manual_seed(10_000 + s), torch.float64, "cpu")
        sketch = lanczos(matmat, start, 10, keep_basis=True, progress=False)[0]
        r = hutchpp(matmat, H.shape[0], basis=sketch.basis, exact_part=float(np.sum(sketch.alpha)), seed=s,
                    dtype=torch.float64, progress=False)
        hits += r.ci_low <= exact <= r.ci_high
        probes.append(r.n_probes)
    # Measured 0.957 (287 / 300); the rule it replaced (stop at the first narrow interval) gave 0.937.
    assert hits / runs >= 0.94, (hits, runs, np.mean(probes))
    assert min(probes) >= 10  # the pilot


def test_a_systematic_sample_gets_a_rounding_width():
    # Rademacher probes of a diagonal matrix all give exactly tr(H): zero spread, yet float32 sums round.
    d = torch.linspace(0.1, 5.0, 1000, dtype=torch.float32)
    r = hutchinson(lambda Z: Z * d, 1000, probes=4, dtype=torch.float32, progress=False)
    exact = float(d.double().sum())
    assert r.ci_low <= exact <= r.ci_high
    assert 0 < r.ci_high - r.ci_low < 1e-3 * exact
