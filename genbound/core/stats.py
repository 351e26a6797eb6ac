"""Small statistics shared by the report over many runs (genbound.report.runs) and analysis.claims.

* :func:`t_interval`: mean +- t_{(1+c)/2, n-1} s / sqrt(n), the Student-t interval over replicates (seeds);
* :func:`one_sided_p` / :func:`paired_p`: one-sided test of mean <= -margin, two-sided paired t test of mean = 0;
* :func:`holm`: Holm's (1979) step-down adjustment for a family of tests;
* :func:`kendall_tau`: Kendall's tau-b (scipy.stats.kendalltau) with its two-sided p;
* :func:`tau_interval`: the BCa bootstrap interval (Efron 1987) of tau between per-group means, each group's
  replicates resampled with replacement.

The library owns these; analysis/ imports them from here (never the other way round).
"""

from __future__ import annotations

import math
import warnings

import numpy as np


def t_interval(xs: list[float], confidence: float = 0.95) -> tuple[float | None, float | None, float | None]:
    """(mean, low, high): mean +- t_{(1+c)/2, n-1} s / sqrt(n) (s with ddof = 1); no interval for n < 2."""
    from scipy.stats import t

    if not xs:
        return None, None, None
    mean = math.fsum(xs) / len(xs)
    if len(xs) < 2:
        return mean, None, None
    sd = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (len(xs) - 1))
    half = float(t.ppf((1 + confidence) / 2, len(xs) - 1)) * sd / math.sqrt(len(xs))
    return mean, mean - half, mean + half


def one_sided_p(xs: list[float], margin: float) -> float | None:
    """P(T >= t) for t = (mean + margin) / (s / sqrt(n)), T ~ t_{n-1}: the one-sided test of mean <= -margin;
    p < 0.025 exactly when the 95% t interval's lower end lies above -margin. None for n < 2."""
    from scipy.stats import t

    if len(xs) < 2:
        return None
    mean = math.fsum(xs) / len(xs)
    sd = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (len(xs) - 1))
    if sd == 0:
        return 0.0 if mean > -margin else 1.0
    return float(t.sf((mean + margin) / (sd / math.sqrt(len(xs))), len(xs) - 1))


def paired_p(ds: list[float]) -> float | None:
    """Two-sided p of the paired t test of mean(d) = 0 over the per-seed differences ``ds``:
    2 P(T >= |mean| / (s / sqrt(n))), T ~ t_{n-1}. None for n < 2; with s = 0, 1 for mean 0 and 0 otherwise."""
    from scipy.stats import t

    if len(ds) < 2:
        return None
    mean = math.fsum(ds) / len(ds)
    sd = math.sqrt(math.fsum((x - mean) ** 2 for x in ds) / (len(ds) - 1))
    if sd == 0:
        return 1.0 if mean == 0 else 0.0
    return float(2.0 * t.sf(abs(mean) / (sd / math.sqrt(len(ds))), len(ds) - 1))


def holm(ps: list[float | None]) -> list[float | None]:
    """Holm's (1979) step-down adjusted p-values: sorted ascending, p_(i) (m - i + 1), running maximum, capped
    at 1; None stays None (and does not count in m)."""
    idx = sorted((i for i, p in enumerate(ps) if p is not None), key=lambda i: ps[i])
    m = len(idx)
    out: list[float | None] = [None] * len(ps)
    running = 0.0
    for rank, i in enumerate(idx):
        running = max(running, min(1.0, (m - rank) * float(ps[i])))
        out[i] = running
    return out


def kendall_tau(x: list[float], y: list[float]) -> tuple[float | None, float | None]:
    """(tau-b, two-sided p) of scipy.stats.kendalltau; (None, None) with fewer than 2 pairs or a constant side."""
    from scipy.stats import kendalltau

    if len(x) < 2 or len(set(x)) == 1 or len(set(y)) == 1:
        return None, None
    res = kendalltau(x, y)
    tau, p = float(res.statistic), float(res.pvalue)
    return (tau if math.isfinite(tau) else None), (p if math.isfinite(p) else None)


def tau_interval(per: dict[str, list[tuple[float, float]]], estimate: float, resamples: int, seed: int
                 ) -> tuple[float | None, float | None, str]:
    """(low, high, method): the BCa 95% interval of Kendall's tau-b between the per-method means of the measure
    and of the gap, each method's (gap, measure) pairs resampled with replacement (scipy.stats.bootstrap over
    one index sample per method). An interval that excludes ``estimate`` is widened to reach it and marked;
    a method with a single seed, or a degenerate resample distribution, gives no BCa interval (None)."""
    from scipy.stats import bootstrap, kendalltau

    names = list(per)
    if any(len(per[m]) < 2 for m in names):
        return None, None, "no interval (a method with one seed)"
    arrays = [np.array(per[m], dtype=np.float64) for m in names]

    def stat(*idx):
        g = [float(a[np.asarray(i, dtype=np.int64), 0].mean()) for a, i in zip(arrays, idx)]
        v = [float(a[np.asarray(i, dtype=np.int64), 1].mean()) for a, i in zip(arrays, idx)]
        t = kendalltau(v, g).statistic
        return float(t) if math.isfinite(t) else 0.0  # a resample with no order in it: no association

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = bootstrap(tuple(np.arange(len(a)) for a in arrays), stat, n_resamples=resamples, vectorized=False,
                        paired=False, confidence_level=0.95, method="BCa", random_state=np.random.default_rng(seed))
    lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        dist = np.asarray(res.bootstrap_distribution, dtype=np.float64)
        if dist.size and np.all(dist == dist[0]):  # every resample gives one tau: the interval is that point
            lo = hi = float(dist[0])
        else:
            return None, None, "no interval (degenerate bootstrap)"
    lo, hi = max(-1.0, lo), min(1.0, hi)
    if lo <= estimate <= hi:
        return lo, hi, "BCa"
    return min(lo, estimate), max(hi, estimate), "BCa widened to the estimate"
