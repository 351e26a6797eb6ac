"""Claim (a): the sparse variants are competitive with their parameter-matched baselines (paired differences,
Student-t intervals, Holm-corrected one-sided tests)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from genbound.core.stats import holm, one_sided_p, t_interval

from .common import BASELINE, COMPETITIVE_MARGIN, SPARSE, Run

# -- claim (a): paired differences ------------------------------------------------------------------------


@dataclass
class Paired:
    """acc(variant) - acc(baseline) in accuracy points over the seeds both have, with the t-interval."""

    cell: str  # a cell's name or "pooled"
    variant: str
    baseline: str
    n: int
    differences: list[float]  # per seed; for "pooled" one mean difference per cell
    mean: float | None
    low: float | None
    high: float | None
    verdict: str
    p_value: float | None = None  # one-sided, H0: mean <= -COMPETITIVE_MARGIN (t with n - 1 df)
    p_holm: float | None = None  # Holm-adjusted over the variants of the same cell (or the pooled rows)
    unit: str = "seeds"  # what the n values are: seeds of a cell, or cell means


ALPHA_A = 0.025  # one-sided level of claim (a): a 95% two-sided interval's lower end above -margin


def verdict_a(low: float | None, high: float | None, n: int, p_holm: float | None = None) -> str:
    """Competitive when the Holm-adjusted one-sided p is below ALPHA_A (given), else when the lower end of the
    95% interval lies above -margin; worse when the upper end lies below it; otherwise not shown."""
    if low is None or high is None:
        return f"no interval (n = {n})"
    if (p_holm < ALPHA_A) if p_holm is not None else (low > -COMPETITIVE_MARGIN):
        return "competitive"
    if high < -COMPETITIVE_MARGIN:
        return "worse"
    return "not shown"


def _with_holm(rows: list[Paired]) -> list[Paired]:
    """The rows of one family (the variants of one cell, or the pooled rows) with Holm-adjusted p-values and
    the verdicts they give."""
    adj = holm([r.p_value for r in rows])
    for r, p in zip(rows, adj):
        r.p_holm = p
        r.verdict = verdict_a(r.low, r.high, r.n, p)
    return rows


def paired_differences(runs: list[Run]) -> list[Paired]:
    """Claim (a) per cell (over seeds), then pooled over cells on the cell means (t with cells - 1 df), each
    family Holm-corrected over its variants."""
    acc = {(r.cell, r.method, r.seed): r.test_accuracy for r in runs}
    cells = list(dict.fromkeys(r.cell for r in runs))
    out: list[Paired] = []
    pooled: dict[str, list[float]] = {v: [] for v in SPARSE}
    for c in cells:
        family = []
        for v, b in BASELINE.items():
            seeds = sorted(s for (cc, m, s) in acc if cc == c and m == v and (c, b, s) in acc)
            d = [100.0 * (acc[(c, v, s)] - acc[(c, b, s)]) for s in seeds]
            if not d:
                continue
            pooled[v].append(math.fsum(d) / len(d))
            mean, lo, hi = t_interval(d)
            family.append(Paired(c, v, b, len(d), d, mean, lo, hi, "", one_sided_p(d, COMPETITIVE_MARGIN)))
        out += _with_holm(family)
    family = []
    for v, d in pooled.items():
        if d:
            mean, lo, hi = t_interval(d)
            family.append(Paired("pooled", v, BASELINE[v], len(d), d, mean, lo, hi, "",
                                 one_sided_p(d, COMPETITIVE_MARGIN), unit="cell means"))
    return out + _with_holm(family)
