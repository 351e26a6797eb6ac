"""Claim (c): Kendall tau-b between each measure and the measured gap, with seeded BCa bootstrap intervals."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from genbound.core.stats import holm, tau_interval

from ..tables import kendall
from .common import Run
from .measures import MEASURES

# -- claim (c): rank correlation ----------------------------------------------------------------------------


@dataclass
class Tau:
    cell: str
    measure: str
    tau: float | None
    p_value: float | None
    low: float | None
    high: float | None
    n_methods: int
    note: str
    predicts: bool
    p_holm: float | None = None  # Holm-adjusted over the measures of the cell
    interval_method: str = "BCa"  # "BCa", or "BCa widened to the estimate"


BOOTSTRAP = 1000
BOOTSTRAP_SEED = 0


def taus(runs: list[Run], method_measures: dict[str, dict[str, float]], bootstrap: int = BOOTSTRAP,
         seed: int = BOOTSTRAP_SEED) -> list[Tau]:
    """Claim (c): per cell and measure, Kendall tau-b (analysis.tables.kendall) between the per-method means
    of the measure and of the 0-1 gap; the interval is the BCa interval (:func:`tau_interval`) over ``bootstrap``
    resamples (each method's seeds drawn with replacement, numpy default_rng(seed))."""

    rng = np.random.default_rng(seed)
    out = []
    for c in dict.fromkeys(r.cell for r in runs):
        mine = [r for r in runs if r.cell == c]
        methods = list(dict.fromkeys(r.method for r in mine))
        fam: list[Tau] = []
        for key in MEASURES:
            per: dict[str, list[tuple[float, float | None]]] = {}
            for m in methods:
                rs = [r for r in mine if r.method == m]
                if key == "fcmi":
                    v = method_measures.get(c, {}).get(m)
                    per[m] = [(r.gap_01, v) for r in rs]
                else:
                    per[m] = [(r.gap_01, r.measures.get(key)) for r in rs]
            per = {m: [(g, v) for g, v in xs if v is not None] for m, xs in per.items()}
            per = {m: xs for m, xs in per.items() if xs}
            if not per:
                continue
            gm = {m: float(np.mean([g for g, _ in xs])) for m, xs in per.items()}
            vm = {m: float(np.mean([v for _, v in xs])) for m, xs in per.items()}
            k = kendall(vm, gm, key, "gap_01")
            lo = hi = None
            how = "none"
            if k.tau is not None and bootstrap:
                lo, hi, how = tau_interval(per, float(k.tau), bootstrap, int(rng.integers(0, 2 ** 31)))
            fam.append(Tau(c, key, k.tau, k.p_value, lo, hi, k.n_methods, k.note, False, None, how))
        for t, p in zip(fam, holm([t.p_value for t in fam])):
            t.p_holm = p
            t.predicts = bool(t.tau is not None and t.tau > 0 and p is not None and p < 0.05
                              and t.low is not None and t.low > 0)
        out += fam
    return out
