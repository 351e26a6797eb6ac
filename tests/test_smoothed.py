"""The prediction-smoothed cross-entropy bound (SubLoRA; genbound.bounds.smoothed), checked against a
recomputation written here with scipy's root finder, its properties, and a coverage simulation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import brentq

from genbound.bounds.smoothed import (
    ALPHA_GRID,
    hoeffding_form,
    kl_form,
    loss_interval,
    mean_smoothed,
    recompute_smoothed,
    smoothed_bound,
    smoothed_losses,
)
from genbound.core.errors import GenboundError


def _kl(p: float, q: float) -> float:
    out = p * math.log(p / q) if p > 0 else 0.0
    return out + ((1 - p) * math.log((1 - p) / (1 - q)) if p < 1 else 0.0)


def independent_bound(cert: dict) -> float:
    """min over alpha and form, each at delta / (2 |A|), with the kl inverse found by brentq."""
    n, k, delta, v = cert["n"], cert["bits"], cert["delta"], cert["classes"]
    each = delta / (2 * len(cert["per_alpha"]))
    values = []
    for row in cert["per_alpha"]:
        a = row["alpha"]
        hi = -math.log(a / v)
        lo = -math.log((1 - a) * 1.0 + a / v)  # the loss of a prediction with p = 1
        values.append(row["train_loss"] + (hi - lo) * math.sqrt((k * math.log(2) - math.log(each)) / (2 * n)))
        budget = (k * math.log(2) + math.log(2 * math.sqrt(n)) - math.log(each)) / n
        p = (row["train_loss"] - lo) / (hi - lo)
        q = 1.0 if _kl(p, 1 - 1e-15) <= budget else brentq(lambda q, p=p, c=budget: _kl(p, q) - c, p, 1 - 1e-15,
                                                            xtol=1e-14)
        values.append(lo + (hi - lo) * q)
    return min(values)


def test_smoothed_loss_matches_its_definition_and_stays_in_its_interval():
    torch.manual_seed(0)
    for v in (2, 3, 5, 50):
        for a in ALPHA_GRID:
            p = torch.rand(1000, dtype=torch.float64)
            p[:3] = torch.tensor([1.0, 0.0, 1e-300])
            got = smoothed_losses(torch.log(p), a, v)
            want = -torch.log((1 - a) * p + a / v)
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
            lo, hi = loss_interval(a, v)
            assert math.isclose(float(got[0]), lo, rel_tol=1e-12) and math.isclose(float(got[1]), hi, rel_tol=1e-12)
            assert float(got.min()) >= lo - 1e-12 and float(got.max()) <= hi + 1e-12
            # the range is ln(1 + (1 - alpha) V / alpha), the paper's Delta
            assert math.isclose(hi - lo, math.log(1 + (1 - a) * v / a), rel_tol=1e-12)


def test_bound_recomputes_from_its_parts():
    rng = np.random.default_rng(0)
    log_p = torch.tensor(np.log(rng.beta(5, 1, size=1558)))
    train = mean_smoothed(log_p, 5)
    cert = smoothed_bound(train, 5, bits=503, n=1558, delta=0.05)
    assert math.isclose(independent_bound(cert), cert["bound"], rel_tol=1e-9)
    assert math.isclose(recompute_smoothed(cert), cert["bound"], rel_tol=1e-9)
    assert cert["alpha"] in ALPHA_GRID and cert["form"] in ("kl", "hoeffding")
    assert cert["bound"] == cert["per_alpha"][ALPHA_GRID.index(cert["alpha"])][cert["form"]]
    assert cert["delta_each"] == 0.05 / (2 * len(ALPHA_GRID))
    assert cert["vacuous"] == (cert["bound"] >= math.log(5))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=50), st.integers(2, 20),
       st.integers(0, 5000), st.integers(0, 5000), st.integers(1, 100_000), st.floats(1e-4, 0.5))
def test_bound_exceeds_the_empirical_loss_and_grows_with_bits(ps, v, k1, k2, n, delta):
    log_p = torch.log(torch.tensor(ps, dtype=torch.float64))
    train = mean_smoothed(log_p, v)
    small, large = sorted((k1, k2))
    a = smoothed_bound(train, v, small, n, delta)
    b = smoothed_bound(train, v, large, n, delta)
    for row in a["per_alpha"]:
        assert row["kl"] >= row["train_loss"] - 1e-12 and row["hoeffding"] >= row["train_loss"]
        assert row["kl"] <= row["hi"] + 1e-12
    assert a["bound"] >= a["train_loss"] - 1e-12
    assert a["bound"] <= b["bound"] + 1e-12
    # a larger delta (less confidence) never gives a larger bound
    assert smoothed_bound(train, v, small, n, min(2 * delta, 0.99))["bound"] <= a["bound"] + 1e-12


@pytest.mark.parametrize("form", [kl_form, hoeffding_form])
def test_each_form_covers_the_true_smoothed_loss(form):
    """A fixed predictor (K = 0) whose label probabilities follow a known law: over many fresh samples of N,
    the bound falls below the true expected smoothed loss in at most about a delta share of them."""
    rng = np.random.default_rng(1)
    v, a, n, delta, trials = 5, 0.1, 200, 0.1, 2000
    population = torch.tensor(np.log(rng.beta(2, 1, size=2_000_000)))
    true = float(smoothed_losses(population, a, v).mean())
    fails = 0
    for _ in range(trials):
        sample = population[torch.from_numpy(rng.integers(0, population.numel(), n))]
        fails += form(float(smoothed_losses(sample, a, v).mean()), a, v, 0, n, delta) < true
    # binomial(2000, 0.1) exceeds 240 with probability < 0.002; the bounds are conservative, so far fewer fail
    assert fails <= 240


def test_bad_input_is_refused():
    with pytest.raises(GenboundError, match="alpha"):
        loss_interval(0.0, 5)
    with pytest.raises(GenboundError, match="alpha"):
        smoothed_losses(torch.zeros(3), 1.0, 5)
    with pytest.raises(GenboundError, match="2 classes"):
        smoothed_losses(torch.zeros(3), 0.1, 1)
    with pytest.raises(GenboundError, match="delta"):
        smoothed_bound({0.1: 1.0}, 5, 10, 100, 1.0)
    with pytest.raises(GenboundError, match="bits"):
        smoothed_bound({0.1: 1.0}, 5, -1, 100, 0.05)
