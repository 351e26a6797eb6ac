"""The f-CMI estimate of the expected generalization gap (Harutyunyan et al., NeurIPS 2021; Steinke &
Zakynthinou 2020; docs/concepts.md, section "Certificates").

A supersample z~ holds n pairs (z~_{i,0}, z~_{i,1}) drawn i.i.d.; a mask U in {0, 1}^n of fair coin flips picks
the training set S = (z~_{i,U_i})_i, and the other element of each pair is held out. With F_i = (f(z~_{i,0}),
f(z~_{i,1})) the trained model's predicted labels on pair i, for a loss in [0, 1] (0-1 error)

    | E[ R(W) - R_hat_S(W) ] | <= E_{z~} (1/n) sum_i sqrt( 2 I^{z~}(F_i ; U_i) ).

I^{z~}(F_i; U_i) is estimated per supersample by the plug-in mutual information over m mask draws (the
empirical joint distribution of (U_i, F_i)), in nats. It is an *estimate* of a bound on the *expected* gap,
over the draw of the data and of the training randomness: not a high-probability certificate for one trained
model.

The plug-in estimate is biased, and the sign depends on how much information there is
(genbound.bounds.fcmi_bias computes the bias in closed form on synthetic learners; docs/concepts.md has the
table): with few masks it is biased *down* when the information is high (a memorizing learner with 4 masks:
expected estimate 0.972 against a true bound of 1.177 and a true gap of 1, so the estimate can fall below the
gap it is meant to bound) and *up* when it is low (a learner that ignores its data: 0.445 against 0 with 4
masks). The output reports the bias at the measured information for the mask count used and says when it is
down. Over several supersamples the estimate carries a 95% Student-t interval over their per-supersample
values (the supersamples are independent draws).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..core.errors import GenboundError


def plugin_mutual_information(u: Sequence[int], f: Sequence[object]) -> float:
    """I(U; F) in nats of the empirical joint distribution of paired samples (u_k, f_k)."""
    if len(u) != len(f):
        raise GenboundError(f"mutual information needs paired samples, got {len(u)} and {len(f)}")
    m = len(u)
    if m == 0:
        raise GenboundError("mutual information needs at least one sample")
    joint = Counter(zip(u, f))
    pu, pf = Counter(u), Counter(f)
    return max(0.0, sum(c / m * math.log(c * m / (pu[a] * pf[b])) for (a, b), c in joint.items()))


@dataclass
class SupersampleRuns:
    """The m runs of one supersample: masks (m, n) in {0, 1} and predictions (m, n, 2) (labels predicted for
    z~_{i,0} and z~_{i,1}), plus the pair labels (n, 2)."""

    masks: np.ndarray
    predictions: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        self.masks = np.asarray(self.masks, dtype=np.int64)
        self.predictions = np.asarray(self.predictions, dtype=np.int64)
        self.labels = np.asarray(self.labels, dtype=np.int64)
        m, n = self.masks.shape
        if self.predictions.shape != (m, n, 2) or self.labels.shape != (n, 2):
            raise GenboundError(f"supersample runs have masks {self.masks.shape}, predictions "
                                f"{self.predictions.shape} and labels {self.labels.shape}; expected (m, n), "
                                "(m, n, 2), (n, 2)")

    def per_example_mi(self) -> np.ndarray:
        m, n = self.masks.shape
        return np.array([plugin_mutual_information(self.masks[:, i].tolist(),
                                                   [tuple(p) for p in self.predictions[:, i, :].tolist()])
                         for i in range(n)])

    def gaps(self) -> np.ndarray:
        """Per run: held-out error minus training error (0-1)."""
        wrong = self.predictions != self.labels[None, :, :]  # (m, n, 2)
        train = np.take_along_axis(wrong, self.masks[:, :, None], axis=2)[..., 0].mean(axis=1)
        held = np.take_along_axis(wrong, 1 - self.masks[:, :, None], axis=2)[..., 0].mean(axis=1)
        return held - train


@dataclass
class FcmiEstimate:
    bound: float  # E_z~ (1/n) sum_i sqrt(2 I_i): the estimated bound on the expected gap
    mean_gap: float  # measured: held-out minus training 0-1 error, averaged over every run
    n: int
    masks: int
    supersamples: int
    per_supersample: list[float] = field(default_factory=list)
    mean_mi: float = 0.0
    label: str = "f-CMI estimate of a bound on the EXPECTED 0-1 gap (not a certificate)"
    interval: tuple[float, float] | None = None  # 95% Student-t over supersamples (None with one)
    bias: float | None = None  # expected estimate minus truth at the measured information (fcmi_bias.bias_at)
    bias_note: str = ""


def fcmi_bound(runs: Sequence[SupersampleRuns]) -> FcmiEstimate:
    """The estimate of the module docstring over supersamples ``runs``."""
    if not runs:
        raise GenboundError("the f-CMI estimate needs at least one supersample with runs")
    per, gaps, mis = [], [], []
    for r in runs:
        mi = r.per_example_mi()
        per.append(float(np.mean(np.sqrt(2.0 * mi))))
        mis.append(float(mi.mean()))
        gaps.extend(r.gaps().tolist())
    masks = int(runs[0].masks.shape[0])
    interval = None
    if len(per) > 1:
        from scipy import stats

        half = float(stats.t.ppf(0.975, len(per) - 1) * np.std(per, ddof=1) / math.sqrt(len(per)))
        interval = (float(np.mean(per)) - half, float(np.mean(per)) + half)
    b, note = bias_statement(masks, float(np.mean(mis)))
    return FcmiEstimate(bound=float(np.mean(per)), mean_gap=float(np.mean(gaps)), n=int(runs[0].masks.shape[1]),
                        masks=masks, supersamples=len(runs), per_supersample=per, mean_mi=float(np.mean(mis)),
                        interval=interval, bias=b, bias_note=note)


MAX_EXACT_MASKS = 64  # the closed-form bias is summed over C(m + 3, 3) tables; beyond, it is not computed


def bias_statement(masks: int, mean_mi: float) -> tuple[float | None, str]:
    """(bias, a sentence) of the per-pair estimate with ``masks`` masks at the measured mean information, on the
    synthetic learner of that information (genbound.bounds.fcmi_bias)."""
    from .fcmi_bias import bias_at

    if masks > MAX_EXACT_MASKS:
        return None, (f"with {masks} masks the plug-in bias is small (it shrinks like 1/m; not computed beyond "
                      f"{MAX_EXACT_MASKS})")
    b = bias_at(masks, mean_mi)
    if b < -0.005:
        return b, (f"biased DOWN: with {masks} masks, at the measured information ({mean_mi:.3f} nats per pair), "
                   f"the plug-in estimate is expected to fall {-b:.3f} below the true value (per pair, synthetic "
                   "learner); more masks reduce this")
    if b > 0.005:
        return b, (f"biased up: with {masks} masks, at the measured information ({mean_mi:.3f} nats per pair), the "
                   f"plug-in estimate is expected to exceed the true value by {b:.3f} (per pair, synthetic learner)")
    return b, f"with {masks} masks the plug-in bias at the measured information is below 0.005"
