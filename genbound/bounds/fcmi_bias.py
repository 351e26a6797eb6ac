"""The bias of the plug-in f-CMI estimate, in closed form, on synthetic learners (genbound.bounds.fcmi).

The learner of pair i predicts the pair "right on the training element, wrong on the held-out one" when Z = 0
and the reverse when Z = 1, Z ~ Bernoulli(eps) independent of the mask bit U ~ Bernoulli(1/2). So F = U xor Z:

* eps = 0 is the **memorizing** learner: expected 0-1 gap 1, I(F; U) = ln 2, bound sqrt(2 ln 2) = 1.177;
* 0 < eps < 1/2 a **noisy** one: gap 1 - 2 eps, I = ln 2 - H(eps) (H the binary entropy in nats), bound
  sqrt(2 (ln 2 - H(eps))); eps = 0.1: gap 0.8, bound 0.858;
* eps = 1/2 ignores its data: gap 0, I = 0, bound 0.

The plug-in estimate of I from m masks is the mutual information of the empirical joint of the m pairs
(U_k, F_k), whose four cell counts are multinomial(m; (1 - eps)/2, eps/2, eps/2, (1 - eps)/2). The expected
estimate of the bound per pair, E[sqrt(2 I_hat)], is therefore a finite sum over the C(m + 3, 3) count tables,
computed exactly here; its difference from the true sqrt(2 I) is the estimator's bias. It is *negative* (the
estimate is biased down, so it can fall below the true gap) when the information is high, as on a memorizing
learner (m = 4: 0.972 against 1.177 and a gap of 1), and positive when it is low (eps = 1/2: 0 is the truth
and every estimate is >= 0).
"""

from __future__ import annotations

import math
from functools import cache

from ..core.errors import GenboundError

LN2 = math.log(2.0)


def binary_entropy(p: float) -> float:
    """H(p) in nats."""
    if p <= 0.0 or p >= 1.0:
        return 0.0
    return -(p * math.log(p) + (1 - p) * math.log(1 - p))


def true_information(eps: float) -> float:
    """I(F; U) = ln 2 - H(eps) nats of the learner with flip probability ``eps``."""
    _check_eps(eps)
    return LN2 - binary_entropy(eps)


def true_bound(eps: float) -> float:
    return math.sqrt(2.0 * true_information(eps))


def true_gap(eps: float) -> float:
    """Expected held-out minus training 0-1 error: 1 - 2 eps."""
    _check_eps(eps)
    return 1.0 - 2.0 * eps


def _check_eps(eps: float) -> None:
    if not 0.0 <= eps <= 0.5:
        raise GenboundError(f"the flip probability eps must lie in [0, 1/2], got {eps}")


def _plugin(a: int, b: int, c: int, d: int) -> float:
    """Plug-in I of the 2x2 table [[a, b], [c, d]] (rows U = 0, 1; columns F = 0, 1) in nats."""
    m = a + b + c + d
    rows, cols = (a + b, c + d), (a + c, b + d)
    out = 0.0
    for n, r, s in ((a, 0, 0), (b, 0, 1), (c, 1, 0), (d, 1, 1)):
        if n:
            out += n / m * math.log(n * m / (rows[r] * cols[s]))
    return max(0.0, out)


@cache
def expected_estimate(masks: int, eps: float) -> float:
    """E[sqrt(2 I_hat)] over the m = ``masks`` draws, exactly (the sum over every count table)."""
    _check_eps(eps)
    if masks < 1 or masks > 400:
        raise GenboundError(f"the exact expectation is computed for 1..400 masks, got {masks}")
    p = ((1 - eps) / 2, eps / 2, eps / 2, (1 - eps) / 2)  # (U, F) = (0,0), (0,1), (1,0), (1,1)
    logp = [math.log(x) if x > 0 else None for x in p]
    lf = [math.lgamma(k + 1) for k in range(masks + 1)]
    total = 0.0
    for a in range(masks + 1):
        for b in range(masks + 1 - a):
            for c in range(masks + 1 - a - b):
                d = masks - a - b - c
                counts = (a, b, c, d)
                if any(n and lp is None for n, lp in zip(counts, logp)):
                    continue
                logw = lf[masks] - sum(lf[n] for n in counts) + sum(n * lp for n, lp in zip(counts, logp) if n)
                total += math.exp(logw) * math.sqrt(2.0 * _plugin(a, b, c, d))
    return total


def bias(masks: int, eps: float) -> float:
    """E[sqrt(2 I_hat)] - sqrt(2 I): negative when the estimate is biased down."""
    return expected_estimate(masks, eps) - true_bound(eps)


def eps_for_information(info: float) -> float:
    """The flip probability whose learner has information ``info`` nats (bisection; info clipped to [0, ln 2])."""
    info = min(max(float(info), 0.0), LN2)
    lo, hi = 0.0, 0.5  # true_information decreases from ln 2 to 0
    for _ in range(60):
        mid = (lo + hi) / 2
        if true_information(mid) > info:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def bias_at(masks: int, info: float) -> float:
    """The bias of the per-pair estimate with ``masks`` masks on the synthetic learner of information ``info``:
    how far the estimate is expected to fall below (negative) or above the truth at that level of information."""
    return bias(int(masks), eps_for_information(info))


TABLE_EPS = (0.0, 0.05, 0.1, 0.25, 0.5)
TABLE_MASKS = (2, 4, 8, 16, 32, 64)


def bias_table(masks=TABLE_MASKS, eps=TABLE_EPS) -> list[dict[str, float]]:
    """One row per (eps, m): true gap, true I, true bound, expected estimate and bias."""
    return [{"eps": e, "masks": m, "gap": true_gap(e), "information": true_information(e), "bound": true_bound(e),
             "expected_estimate": expected_estimate(m, e), "bias": bias(m, e)} for e in eps for m in masks]


def bias_markdown() -> str:
    """The table of :func:`bias_table` in Markdown (docs/concepts.md quotes it; a test checks it is current)."""
    lines = ["| learner | eps | true gap | true I (nats) | true bound | " +
             " | ".join(f"E estimate, m = {m}" for m in TABLE_MASKS) + " |",
             "|---|---:|---:|---:|---:|" + "---:|" * len(TABLE_MASKS)]
    for e in TABLE_EPS:
        name = "memorizing" if e == 0 else "ignores its data" if e == 0.5 else "noisy"
        cells = " | ".join(f"{expected_estimate(m, e):.3f} ({bias(m, e):+.3f})" for m in TABLE_MASKS)
        lines.append(f"| {name} | {e:g} | {true_gap(e):.2f} | {true_information(e):.3f} | {true_bound(e):.3f} | "
                     f"{cells} |")
    return "\n".join(lines)
