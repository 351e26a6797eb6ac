"""Shared by every claim: the methods compared (sparse variant -> matched baseline, the noise pair, the training
order) and the gathered runs they read."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

# Sparse variant -> its parameter-matched baseline (docs/concepts.md, the method catalogue): the unchained
# variants share asym's trainable count, the chained ones rac's.
BASELINE = {"cla": "asym", "rcla": "asym", "paca": "asym", "c3la": "rac", "rc3la": "rac"}
SPARSE = tuple(BASELINE)
NOISE_PAIR = ("lora_plus", "lora")  # identical arithmetic per step: their time / memory ratio is noise
COMPETITIVE_MARGIN = 1.0  # accuracy points; fixed before any run (module docstring, claim (a))
# Order of training: the pairs of claim (a) over every seed first, then LoRA and LoRA+ (claim (b)), then the
# methods only claim (c) needs, so that a budget cut short leaves the most useful runs finished.
PRIORITY = ("asym", "cla", "rcla", "paca", "rac", "c3la", "rc3la", "lora", "lora_plus", "cola", "fft")
TIERS = (("asym", "cla", "rcla", "paca", "rac", "c3la", "rc3la"), ("lora", "lora_plus"))
TWEETS_SUBSET_SEED = 0


# -- gathering ------------------------------------------------------------------------------------------


@dataclass
class Run:
    """One finished (cell, method, seed) with everything the claims read."""

    cell: str
    method: str
    seed: int
    path: str
    test_accuracy: float
    gap_01: float
    gap: float
    seconds_per_step: float | None
    peak_memory_bytes: int | None
    peak_memory_kind: str | None
    measures: dict[str, float | None]
    notes: dict[str, str] = field(default_factory=dict)


@dataclass
class Gathered:
    runs: list[Run]
    method_measures: dict[str, dict[str, float]]  # cell -> {method: f-CMI estimate}
    status: dict[str, dict[str, str]]  # cell -> run name -> status
    trained: int  # runs trained (or resumed) by this invocation, f-CMI and certificate runs included


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None
