"""The f-CMI plug-in estimate's bias (genbound.bounds.fcmi_bias), checked against simulation: over 200 synthetic
draws the estimator's mean lies where the closed form says, i.e. within its stated bias of the exact value."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from genbound.bounds.fcmi import SupersampleRuns, bias_statement, fcmi_bound
from genbound.bounds.fcmi_bias import (
    bias,
    bias_markdown,
    eps_for_information,
    expected_estimate,
    true_bound,
    true_gap,
    true_information,
)

ROOT = Path(__file__).resolve().parent.parent


def _draw(rng, masks: int, n: int, eps: float) -> SupersampleRuns:
    """m runs of the learner F = U xor Z on n pairs: labels 0; prediction 0 (right) on the element it 'trains'
    on when Z = 0, on the other one when Z = 1."""
    u = rng.integers(0, 2, (masks, n))
    z = (rng.random((masks, n)) < eps).astype(int)
    right = u ^ z  # the element predicted right
    preds = np.stack([np.where(right == 0, 0, 1), np.where(right == 1, 0, 1)], axis=-1)
    return SupersampleRuns(u, preds, np.zeros((n, 2), dtype=int))


def test_closed_form_values():
    assert math.isclose(true_bound(0.0), math.sqrt(2 * math.log(2)))
    assert true_gap(0.1) == pytest.approx(0.8) and true_bound(0.1) == pytest.approx(0.858, abs=5e-4)
    # memorizing, 2 masks by hand: the masks agree (p = 1/2, I_hat = 0) or differ (I_hat = ln 2)
    assert expected_estimate(2, 0.0) == pytest.approx(0.5 * math.sqrt(2 * math.log(2)), rel=1e-12)
    # memorizing, 4 masks: k ones ~ Bin(4, 1/2), I_hat = H(k / 4)
    h = [0.0, -(0.25 * math.log(0.25) + 0.75 * math.log(0.75)), math.log(2)]
    by_hand = (8 * math.sqrt(2 * h[1]) + 6 * math.sqrt(2 * h[2])) / 16
    assert expected_estimate(4, 0.0) == pytest.approx(by_hand, rel=1e-12)
    assert bias(4, 0.0) < -0.2 and bias(4, 0.1) < 0 and bias(4, 0.5) > 0  # down when I is high, up when low
    assert abs(bias(64, 0.0)) < abs(bias(16, 0.0)) < abs(bias(4, 0.0))
    assert true_information(eps_for_information(0.3)) == pytest.approx(0.3, abs=1e-9)


@pytest.mark.parametrize("eps,masks", [(0.0, 4), (0.1, 4), (0.0, 8), (0.25, 4)])
def test_estimator_mean_over_200_draws_is_within_its_stated_bias_of_the_exact_value(eps, masks):
    rng = np.random.default_rng(int(1000 * eps) + masks)
    n = 20
    draws = np.array([fcmi_bound([_draw(rng, masks, n, eps)]).bound for _ in range(200)])
    mean, se = float(draws.mean()), float(draws.std(ddof=1) / math.sqrt(len(draws)))
    exact, stated = true_bound(eps), bias(masks, eps)
    # where the closed form puts it (4 standard errors) ...
    assert abs(mean - (exact + stated)) < 4 * se
    # ... so within the stated bias of the exact value, on the stated side
    assert abs(mean - exact) <= abs(stated) + 4 * se
    if abs(stated) > 8 * se:
        assert np.sign(mean - exact) == np.sign(stated)


def test_the_output_says_when_the_estimate_is_biased_down():
    rng = np.random.default_rng(0)
    est = fcmi_bound([_draw(rng, 4, 30, 0.0), _draw(rng, 4, 30, 0.0), _draw(rng, 4, 30, 0.0)])
    assert est.bias is not None and est.bias < 0 and "biased DOWN" in est.bias_note
    lo, hi = est.interval
    assert lo <= est.bound <= hi and est.supersamples == 3
    assert fcmi_bound([_draw(rng, 4, 30, 0.0)]).interval is None  # one supersample: no interval
    noise = fcmi_bound([_draw(rng, 4, 30, 0.5)])
    assert noise.bias > 0 and "biased up" in noise.bias_note
    assert bias_statement(200, 0.3)[0] is None


def test_docs_carry_the_current_bias_table_and_no_upward_claim():
    text = (ROOT / "docs" / "concepts.md").read_text()
    table = text.split("<!-- fcmi-bias-table -->\n", 1)[1].split("\n<!-- /fcmi-bias-table -->", 1)[0]
    assert table == bias_markdown()
    for path in (ROOT / "genbound" / "bounds" / "fcmi.py", ROOT / "docs" / "concepts.md",
                 ROOT / "analysis" / "fcmi.py"):
        assert "biased upwards" not in path.read_text()
