"""The prediction-smoothed bound on the cross-entropy of a coded model (SubLoRA: Lotfi et al. 2023, "Non-vacuous
generalization bounds for large language models"; docs/concepts.md, section "Certificates").

Cross-entropy is unbounded, so no finite-sample bound holds for it directly. Smoothing the prediction with the
uniform distribution over the V classes,

    p_alpha(y | x) = (1 - alpha) p(y | x) + alpha / V,

makes the loss l_alpha = -ln p_alpha(y | x) bounded:

    lo_alpha = -ln(1 - alpha + alpha / V)  <=  l_alpha  <=  ln(V / alpha) = hi_alpha,
    Delta_alpha = hi_alpha - lo_alpha = ln(1 + (1 - alpha) V / alpha).

For a hypothesis coded in K bits by a prefix-free code (the certificate's message, genbound.bounds.codec),
each alpha of a grid A declared before any run (``ALPHA_GRID``) and each of two forms, with probability
>= 1 - delta over the draw of the N training examples, simultaneously:

    Hoeffding (the paper's form):
        R_alpha <= R_hat_alpha + Delta_alpha sqrt( (K ln 2 + ln(2 |A| / delta)) / (2 N) )
    kl (Maurer 2004, the loss rescaled to [0, 1]):
        R_alpha <= lo_alpha + Delta_alpha kl^{-1}( (R_hat_alpha - lo_alpha) / Delta_alpha,
                                                  (K ln 2 + ln(2 sqrt(N) 2 |A| / delta)) / N )

R_alpha is the expected smoothed cross-entropy on a fresh example and R_hat_alpha its mean on the training
split. Each of the 2 |A| statements is made at delta / (2 |A|) (a union bound: SubLoRA pays for its alpha grid
the same way), so the smallest of them, the reported ``bound``, holds with probability >= 1 - delta. It bounds
the smoothed loss of the decoded model, so it is also an upper bound on the expected smoothed loss; the
uniform prediction has loss ln V, which is the line a useful bound must fall below (``chance_loss``).

This is a second certificate made from the same message as the 0-1 certificate; each holds with probability
>= 1 - delta, so both hold together with probability >= 1 - 2 delta.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from ..core.device import where
from ..core.errors import GenboundError
from .common import check_positive, check_probability, kl_inverse_upper

# Declared before any smoothed certificate was computed; the bound pays ln(2 |A|) for choosing among them.
ALPHA_GRID = (0.001, 0.01, 0.03, 0.1, 0.3)
FORMS = ("kl", "hoeffding")


def check_alpha(alpha: float) -> float:
    return check_probability(alpha, "the smoothing weight alpha", "an alpha in (0, 1)")


def smoothed_losses(log_p: Tensor, alpha: float, classes: int) -> Tensor:
    """-ln((1 - alpha) p + alpha / V) per example, from ln p of the true label; computed with logaddexp in
    float64 so that p near 0 or 1 loses nothing."""
    alpha = check_alpha(alpha)
    v = int(classes)
    if v < 2:
        raise GenboundError(f"the smoothed loss needs at least 2 classes, got {classes}")
    lp = log_p.to(torch.float64)
    return -torch.logaddexp(lp + math.log1p(-alpha), torch.full_like(lp, math.log(alpha / v)))


def loss_interval(alpha: float, classes: int) -> tuple[float, float]:
    """(lo, hi) = (-ln(1 - alpha + alpha / V), ln(V / alpha)): the range of the smoothed cross-entropy."""
    alpha = check_alpha(alpha)
    v = int(classes)
    return -math.log1p(-alpha + alpha / v), math.log(v / alpha)


def hoeffding_form(train_loss: float, alpha: float, classes: int, bits: float, n: int, delta: float) -> float:
    """R_hat + Delta sqrt((K ln 2 + ln(1 / delta)) / (2 N)) at the given (already split) delta."""
    lo, hi = loss_interval(alpha, classes)
    return train_loss + (hi - lo) * math.sqrt((bits * math.log(2.0) + math.log(1.0 / delta)) / (2.0 * n))


def kl_form(train_loss: float, alpha: float, classes: int, bits: float, n: int, delta: float) -> float:
    """lo + Delta kl^{-1}((R_hat - lo) / Delta, (K ln 2 + ln(2 sqrt(N) / delta)) / N) at the given delta."""
    lo, hi = loss_interval(alpha, classes)
    scaled = min(max((train_loss - lo) / (hi - lo), 0.0), 1.0)  # rounding can step a hair outside [0, 1]
    budget = (bits * math.log(2.0) + math.log(2.0 * math.sqrt(n) / delta)) / n
    return lo + (hi - lo) * kl_inverse_upper(scaled, budget)


def smoothed_bound(train_losses: Mapping[float, float], classes: int, bits: float, n: int, delta: float,
                   test_losses: Mapping[float, float] | None = None) -> dict[str, Any]:
    """The certificate of the module docstring from the mean smoothed training loss at each alpha of the grid
    (``train_losses``: alpha -> R_hat_alpha, nats); ``test_losses`` (measured) are reported, never used."""
    n = int(check_positive(n, "the number of training examples N", "--n"))
    delta = check_probability(delta, "delta", "--delta")
    if bits < 0:
        raise GenboundError(f"a code length must be >= 0 bits, got {bits}")
    if not train_losses:
        raise GenboundError("the smoothed bound needs at least one smoothing weight alpha")
    per_split = delta / (len(FORMS) * len(train_losses))
    rows = []
    for alpha, r_hat in sorted(train_losses.items()):
        lo, hi = loss_interval(alpha, classes)
        row = {"alpha": float(alpha), "lo": lo, "hi": hi, "range": hi - lo, "train_loss": float(r_hat),
               "kl": kl_form(r_hat, alpha, classes, bits, n, per_split),
               "hoeffding": hoeffding_form(r_hat, alpha, classes, bits, n, per_split)}
        if test_losses is not None and alpha in test_losses:
            row["test_loss"] = float(test_losses[alpha])
        rows.append(row)
    best_row, best_form = min(((r, f) for r in rows for f in FORMS), key=lambda rf: rf[0][rf[1]])
    chance = math.log(classes)
    bound = best_row[best_form]
    return {
        "loss": "cross-entropy (nats) of the smoothed prediction (1 - alpha) p + alpha / V",
        "bound": bound, "alpha": best_row["alpha"], "form": best_form, "train_loss": best_row["train_loss"],
        "test_loss": best_row.get("test_loss"), "classes": int(classes), "bits": bits, "n": n, "delta": delta,
        "delta_each": per_split, "alpha_grid": [r["alpha"] for r in rows], "forms": list(FORMS), "per_alpha": rows,
        "chance_loss": chance, "vacuous": bound >= chance,
        "verdict": (f"vacuous: {bound:.4g} >= ln {classes} = {chance:.4g}, the loss of the uniform prediction"
                    if bound >= chance else f"non-vacuous: {bound:.4g} < ln {classes} = {chance:.4g} (uniform)"),
    }


@torch.no_grad()
def label_log_probs(model, data, batch_size: int = 64, device: torch.device | None = None
                    ) -> tuple[Tensor, Tensor]:
    """(ln p(y | x) of the true label, whether the arg-max is right) for every example of ``data`` (an
    EvalSet), in eval mode; the model's mode is restored."""
    from torch.nn import functional as F

    device = where(device, model)
    was = model.training
    model.eval()
    lps, right = [], []
    try:
        for feats, labels in data.batches(batch_size, device):
            logits = model(**feats).float()
            lps.append(F.log_softmax(logits, -1).gather(1, labels[:, None])[:, 0].double().cpu())
            right.append((logits.argmax(-1) == labels).cpu())
    finally:
        model.train(was)
    return torch.cat(lps), torch.cat(right)


def mean_smoothed(log_p: Tensor, classes: int, grid: Sequence[float] = ALPHA_GRID) -> dict[float, float]:
    """alpha -> mean smoothed cross-entropy over the examples, for every alpha of ``grid``."""
    return {float(a): float(smoothed_losses(log_p, a, classes).mean()) for a in grid}


def recompute_smoothed(cert: Mapping[str, Any]) -> float:
    """The smoothed bound from its reported parts alone (bits, n, delta, classes and each alpha's training
    loss), with the interval, the Hoeffding term and the kl inverse written out again here."""
    n, k, delta, v = cert["n"], cert["bits"], cert["delta"], cert["classes"]
    rows = cert["per_alpha"]
    each = delta / (2 * len(rows))
    best = math.inf
    for r in rows:
        a = r["alpha"]
        lo = -math.log(1 - a + a / v)
        rng = math.log(1 + (1 - a) * v / a)
        hoeff = r["train_loss"] + rng * math.sqrt((k * math.log(2) + math.log(1 / each)) / (2 * n))
        budget = (k * math.log(2) + math.log(2 * math.sqrt(n) / each)) / n
        p = min(max((r["train_loss"] - lo) / rng, 0.0), 1.0)
        # the kl inverse by bisection on its own, not through genbound.bounds.common
        lo_q, hi_q = p, 1.0
        for _ in range(200):
            mid = (lo_q + hi_q) / 2
            kl = (p * math.log(p / mid) if p > 0 else 0.0) + ((1 - p) * math.log((1 - p) / (1 - mid)) if p < 1
                                                                 else 0.0)
            lo_q, hi_q = (mid, hi_q) if kl <= budget else (lo_q, mid)
        best = min(best, hoeff, lo + rng * hi_q)
    return best
