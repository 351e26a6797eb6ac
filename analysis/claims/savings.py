"""Claim (b): time and memory of each sparse variant over its baseline and over LoRA, against the lora_plus / lora
noise floor."""

from __future__ import annotations

import math
from dataclasses import dataclass

from .common import BASELINE, NOISE_PAIR, SPARSE, Run

# -- claim (b): time and memory ---------------------------------------------------------------------------


@dataclass
class Cost:
    """Per cell: a method's mean median-seconds-per-step and peak memory over seeds, as ratios to ``against``.
    For the noise pair, ``time_floor`` / ``memory_floor`` is the largest of |ratio - 1| over the ratio of means
    and the per-seed ratios (same seed, same data order): the deviation identical arithmetic shows."""

    cell: str
    method: str
    against: str
    time_ratio: float | None
    memory_ratio: float | None
    n: int
    time_floor: float | None = None
    memory_floor: float | None = None


def _mean(xs: list[float | None]) -> float | None:
    ys = [x for x in xs if x is not None]
    return math.fsum(ys) / len(ys) if ys else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b not in (None, 0) else None


def costs(runs: list[Run]) -> list[Cost]:
    """Claim (b): each sparse variant over its baseline and over LoRA, and the noise pair (lora_plus over
    lora), from the per-cell means over seeds of the recorded median step time and peak memory."""
    cells = list(dict.fromkeys(r.cell for r in runs))
    by = {(r.cell, r.method, r.seed): r for r in runs}
    out = []
    for c in cells:
        def mean(method: str, key: str, c: str = c) -> tuple[float | None, int]:
            rs = [r for r in runs if r.cell == c and r.method == method]
            return _mean([getattr(r, key) for r in rs]), len(rs)

        pairs = [(v, BASELINE[v]) for v in SPARSE] + [(v, "lora") for v in SPARSE] + [NOISE_PAIR]
        for m, against in pairs:
            tm, n = mean(m, "seconds_per_step")
            tb, _ = mean(against, "seconds_per_step")
            mm, _ = mean(m, "peak_memory_bytes")
            mb, _ = mean(against, "peak_memory_bytes")
            if not n:
                continue
            cost = Cost(c, m, against, _ratio(tm, tb), _ratio(mm, mb), n)
            if (m, against) == NOISE_PAIR:
                seeds = sorted(s for (cc, mm_, s) in by if cc == c and mm_ == m and (c, against, s) in by)
                for key, attr in (("seconds_per_step", "time"), ("peak_memory_bytes", "memory")):
                    rs = [_ratio(getattr(by[(c, m, s)], key), getattr(by[(c, against, s)], key)) for s in seeds]
                    devs = [abs(r - 1.0) for r in rs + [getattr(cost, f"{attr}_ratio")] if r is not None]
                    setattr(cost, f"{attr}_floor", max(devs) if devs else None)
            out.append(cost)
    return out


def verdict_b(cost: Cost, noise: Cost | None, key: str) -> str:
    """"saves x%" when the ratio is below 1 - floor, "costs x% more" above 1 + floor, else "within noise"."""
    r = getattr(cost, f"{key}_ratio")
    if r is None:
        return "n/a"
    floor = None if noise is None else getattr(noise, f"{key}_floor")
    if floor is None:
        return "no noise measure (lora and lora_plus both needed)"
    if r < 1.0 - floor:
        return f"saves {100 * (1 - r):.1f}%"
    if r > 1.0 + floor:
        return f"costs {100 * (r - 1):.1f}% more"
    return "within noise"
