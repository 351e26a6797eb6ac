"""Pieces shared by every bound: input checks, the binary kl and its inverse, Hoeffding, vacuity.

Sources: the kl-inverse form of the Occam / PAC-Bayes bounds is Langford & Seeger (2001) and Maurer (2004);
Hoeffding (1963) for a fixed, data-independent hypothesis. See docs/concepts.md, "Hoeffding on G(W0)" and
"The binary kl and its inverse".
"""

from __future__ import annotations

import math

from ..core.errors import GenboundError

DTYPE_BITS = {
    "float64": 64, "double": 64, "float32": 32, "float": 32, "tfloat32": 32,
    "float16": 16, "half": 16, "bfloat16": 16, "int8": 8, "uint8": 8, "float8_e4m3fn": 8, "float8_e5m2": 8,
}


def check_positive(value: float | int | None, name: str, option: str) -> float:
    """``value`` as a float if it is finite and > 0; otherwise a one-line GenboundError naming ``option``."""
    if value is None:
        raise GenboundError(f"the bound needs {name} but none is known; pass {option}")
    try:
        v = float(value)
    except (TypeError, ValueError) as exc:
        raise GenboundError(f"{name} must be a number, got {value!r}; pass {option}") from exc
    if not math.isfinite(v) or v <= 0:
        raise GenboundError(f"{name} must be positive and finite, got {value}; pass a positive {option}")
    return v


def check_probability(value: float, name: str, option: str) -> float:
    v = float(value)
    if not (0.0 < v < 1.0):
        raise GenboundError(f"{name} must lie strictly between 0 and 1, got {value}; pass {option}")
    return v


def bits_for_dtype(dtype: str | object) -> int:
    """Bits per stored parameter (q of Table 1) for a dtype name such as "float32" or a torch.dtype."""
    name = str(dtype).removeprefix("torch.")
    if name not in DTYPE_BITS:
        raise GenboundError(f"unknown storage dtype '{dtype}' for q; pass --q BITS")
    return DTYPE_BITS[name]


def binary_kl(p: float, q: float) -> float:
    """kl(p || q) = p ln(p/q) + (1-p) ln((1-p)/(1-q)) in nats, with 0 ln 0 = 0 (inf where q hits 0 or 1)."""
    if not (0.0 <= p <= 1.0 and 0.0 <= q <= 1.0):
        raise GenboundError(f"binary kl needs probabilities in [0, 1], got p={p}, q={q}")
    out = 0.0
    if p > 0:
        out += math.inf if q == 0 else p * math.log(p / q)
    if p < 1:
        out += math.inf if q == 1 else (1 - p) * math.log((1 - p) / (1 - q))
    return out


def kl_inverse_upper(p_hat: float, c: float, tol: float = 1e-12) -> float:
    """sup { q in [p_hat, 1] : kl(p_hat || q) <= c } by bisection to ``tol``.

    kl(p_hat || .) is continuous and increasing on [p_hat, 1], so the set is an interval [p_hat, q*].
    Returns 1.0 when kl(p_hat || 1) <= c (the bound is vacuous). Bisection runs to float resolution
    (finer than ``tol``) and returns the upper end of the final bracket, so the result is never below q*.
    """
    if not 0.0 <= p_hat <= 1.0:
        raise GenboundError(f"an empirical risk must lie in [0, 1], got {p_hat}")
    if c < 0 or math.isnan(c):
        raise GenboundError(f"the kl budget must be non-negative, got {c}")
    if c == 0 or p_hat >= 1.0:
        return p_hat
    if binary_kl(p_hat, 1.0) <= c:
        return 1.0
    lo, hi = p_hat, 1.0
    # Bisect to float resolution (at least ``tol``): near q = 1 kl is steep, so a 1e-12 interval in q
    # could still be 1e-9 in kl. Return the upper end: kl(p_hat || hi) >= c, so hi >= q* (conservative).
    for _ in range(2000):
        mid = 0.5 * (lo + hi)
        if mid <= lo or mid >= hi:
            break
        if binary_kl(p_hat, mid) > c:
            hi = mid
        else:
            lo = mid
    assert hi - lo <= max(tol, 4e-16)
    return hi


def hoeffding_gap(n: int, delta: float, loss_range: float = 1.0) -> float:
    """One-sided Hoeffding: for a fixed (data-independent) predictor with loss in [a, b],
    L_pop - L_train <= (b - a) sqrt( ln(1/delta) / (2N) ) with probability >= 1 - delta."""
    n = check_positive(n, "the number of training examples N", "--n")
    delta = check_probability(delta, "delta", "--delta")
    loss_range = check_positive(loss_range, "the loss range b - a", "--clip or --loss")
    return loss_range * math.sqrt(math.log(1.0 / delta) / (2.0 * n))


def sigma_for_loss(loss: str = "01", clip: float | None = None) -> float:
    """Sub-Gaussian parameter of a bounded loss: (b - a) / 2. 0-1 loss: 1/2; cross-entropy clipped at M: M/2."""
    if loss in ("01", "0-1", "zero_one", "error"):
        return 0.5
    if loss in ("ce", "cross_entropy", "cross-entropy"):
        if clip is None:
            raise GenboundError("cross-entropy is unbounded, so its sigma needs a clip level; pass --clip M")
        return check_positive(clip, "the cross-entropy clip level M", "--clip") / 2.0
    raise GenboundError(f"unknown loss '{loss}' for sigma; use --loss 01, --loss ce --clip M, or --sigma S")


def vacuity_note(value: float | None, limit: float, what: str) -> str:
    if value is None or not math.isfinite(value):
        return f"not a finite number: vacuous ({what} is at most {limit:g} anyway)"
    if value >= limit:
        return f"vacuous: {value:.4g} >= {limit:g}, the largest possible {what}"
    return f"non-vacuous: {value:.4g} < {limit:g}"
