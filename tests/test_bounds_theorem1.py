"""Theorem 1: the O(L) recursion against 2^L enumeration, the printed form's counterexample, sampled
output differences of random networks, Hoeffding, and where the theorem does not apply."""

from __future__ import annotations

import math
import random

import pytest
import torch
from torch import nn

from genbound.bounds.common import hoeffding_gap
from genbound.bounds.theorem1 import (
    ChainLayer,
    network_forward,
    output_deviation,
    phi_enumerated,
    phi_printed,
    phi_recursion,
    theorem1,
)
from genbound.bounds.transformer import applicability
from genbound.core.errors import GenboundError


@pytest.mark.parametrize("L", range(1, 13))
@pytest.mark.parametrize("branch", ["dW", "W0"])
def test_recursion_equals_brute_force_enumeration(L, branch):
    rng = random.Random(1000 * L + (branch == "W0"))
    for _ in range(3 if L > 9 else 10):
        a = [rng.uniform(0.05, 3) for _ in range(L)]
        b = [rng.uniform(0, 1.5) for _ in range(L)]
        lam = [rng.choice([1.0, 0.25, 1.1289, rng.uniform(0.1, 2)]) for _ in range(L)]
        off = [rng.choice([0.0, rng.uniform(0, 2)]) for _ in range(L)]
        C, Ll = rng.uniform(0, 5), rng.uniform(0.1, 2)
        rec = phi_recursion(a, b, lam, off, C, Ll, branch)
        enum = phi_enumerated(a, b, lam, off, C, Ll, branch)
        assert enum == pytest.approx(rec, rel=1e-10)
        # The C term alone: C Lam (prod(a + b) - prod(ref)).
        ref = a if branch == "dW" else b
        closed = 2 * Ll * C * math.prod(lam) * (math.prod(x + y for x, y in zip(a, b)) - math.prod(ref))
        assert phi_recursion(a, b, lam, None, C, Ll, branch) == pytest.approx(closed, rel=1e-10)


def test_printed_form_agrees_when_offsets_vanish_and_p_exponent_is_read_per_layer():
    # With every s_l(0) = 0 only the C term is left; as printed its P ignores j, so it differs in general.
    a, b, lam = [1.0, 2.0, 0.5], [0.1, 0.3, 0.2], [1.0, 1.0, 1.0]
    with pytest.warns(UserWarning):
        printed = phi_printed(a, b, lam, None, 1.0, 1.0, "dW")
    assert printed != pytest.approx(phi_recursion(a, b, lam, None, 1.0, 1.0, "dW"))


def test_counterexample_where_printed_phi_w0_fails():
    # L = 2, s_1(z) = z + 1, s_2 = identity, x = 0, a = (1, 2), b = (0.1, 0.1), lam = (1, 1).
    a, b, lam, off = [1.0, 2.0], [0.1, 0.1], [1.0, 1.0], [1.0, 0.0]
    W0 = [torch.tensor([[1.0]], dtype=torch.float64), torch.tensor([[2.0]], dtype=torch.float64)]
    dW = [torch.tensor([[0.1]], dtype=torch.float64), torch.tensor([[0.1]], dtype=torch.float64)]
    beta = [torch.tensor([1.0], dtype=torch.float64), None]
    x = torch.zeros(1, 1, dtype=torch.float64)
    full = network_forward(x, [w + d for w, d in zip(W0, dW)], beta, ["identity", "identity"])
    only_dw = network_forward(x, dW, beta, ["identity", "identity"])
    true_sup = float((full - only_dw).norm())
    assert true_sup == pytest.approx(2.0)
    with pytest.warns(UserWarning, match="printed"):
        printed = phi_printed(a, b, lam, off, C=0.0, loss_lipschitz=0.5, branch="W0")
    assert printed == pytest.approx(0.1)  # Phi_W0 / (2 L_l) with L_l = 1/2
    assert printed < true_sup  # the printed bound fails
    assert phi_recursion(a, b, lam, off, 0.0, 0.5, "W0") == pytest.approx(2.0)
    assert output_deviation(a, b, lam, off, 0.0, "W0") >= true_sup - 1e-12


ACTS = {"relu": torch.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid, "identity": lambda z: z}
LIP = {"relu": 1.0, "tanh": 1.0, "sigmoid": 0.25, "identity": 1.0}


@pytest.mark.parametrize("seed", range(8))
def test_recursion_bounds_sampled_output_differences(seed):
    g = torch.Generator().manual_seed(seed)
    L = 1 + seed % 4
    widths = [int(torch.randint(2, 7, (1,), generator=g)) for _ in range(L + 1)]
    acts = [list(ACTS)[int(torch.randint(0, 4, (1,), generator=g))] for _ in range(L)]
    W0 = [torch.randn(widths[i + 1], widths[i], generator=g, dtype=torch.float64) for i in range(L)]
    dW = [0.3 * torch.randn(widths[i + 1], 2, generator=g, dtype=torch.float64)
          @ torch.randn(2, widths[i], generator=g, dtype=torch.float64) for i in range(L)]
    beta = [torch.randn(widths[i + 1], generator=g, dtype=torch.float64) for i in range(L)]
    dbeta = [0.1 * torch.randn(widths[i + 1], generator=g, dtype=torch.float64) for i in range(L)]
    C = 2.0
    x = torch.randn(4000, widths[0], generator=g, dtype=torch.float64)
    x = C * x / x.norm(dim=1, keepdim=True) * torch.rand(4000, 1, generator=g, dtype=torch.float64) ** 0.2
    a = [float(torch.linalg.matrix_norm(w, 2)) for w in W0]
    b = [float(torch.linalg.matrix_norm(d, 2)) for d in dW]
    lam = [LIP[s] for s in acts]
    off = [float(ACTS[s](bt).norm()) for s, bt in zip(acts, beta)]
    shift = [float(d.norm()) for d in dbeta]
    trained = network_forward(x, [w + d for w, d in zip(W0, dW)], [bt + d for bt, d in zip(beta, dbeta)], acts)
    for branch, ref_w in (("dW", W0), ("W0", dW)):
        ref = network_forward(x, ref_w, beta, acts)
        sampled = float((trained - ref).norm(dim=1).max())
        bound = output_deviation(a, b, lam, off, C, branch, shift)
        assert sampled <= bound * (1 + 1e-9)
        # Without the trained-bias shift, the paper's setting: still a bound for equal biases.
        same_bias = network_forward(x, [w + d for w, d in zip(W0, dW)], beta, acts)
        assert float((same_bias - ref).norm(dim=1).max()) <= output_deviation(a, b, lam, off, C, branch) * (1 + 1e-9)


def test_theorem1_result_and_hoeffding():
    layers = [ChainLayer("l1", 3, 2, 1.5, 0.2, "relu", 1.0, 0.0),
              ChainLayer("l2", 2, 3, 1.2, 0.1, "identity", 1.0, 0.0)]
    res = theorem1(layers, input_bound=1.0, n_train=1000, loss_lipschitz=math.sqrt(2), loss_range=2.0, delta=0.05)
    assert res.hoeffding_w0 == pytest.approx(2.0 * math.sqrt(math.log(20) / 2000))
    assert res.phi_dw == pytest.approx(2 * math.sqrt(2) * ((1.7 * 1.3) - 1.5 * 1.2))
    assert res.bound == pytest.approx(res.hoeffding_w0 + res.phi_dw)
    assert res.vacuous == (res.bound >= 2.0)
    assert hoeffding_gap(100, 0.1) == pytest.approx(math.sqrt(math.log(10) / 200))
    with pytest.raises(GenboundError, match="--n"):
        hoeffding_gap(0, 0.1)


def test_bad_chain_input():
    with pytest.raises(GenboundError):
        phi_recursion([1.0], [1.0, 2.0], [1.0], None)
    with pytest.raises(GenboundError):
        phi_recursion([-1.0], [1.0], [1.0], None)
    with pytest.raises(GenboundError, match="branch"):
        phi_recursion([1.0], [1.0], [1.0], None, branch="X")
    with pytest.raises(GenboundError, match="recursion"):
        phi_enumerated([1.0] * 30, [1.0] * 30, [1.0] * 30)


def test_transformer_is_not_applicable_and_mlp_is():
    from genbound.models.backbones import MLPClassifier

    assert applicability(MLPClassifier()).applicable
    block = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    res = applicability(block)
    assert not res.applicable and any("residual" in r for r in res.reasons)
    assert any("LayerNorm" in r for r in res.reasons) and any("attention" in r for r in res.reasons)
    assert not applicability(nn.Sequential(nn.Linear(2, 2))).applicable


@pytest.mark.slow
def test_real_minilm_is_not_applicable():
    from genbound.models.backbones import get_backbone

    model = get_backbone("minilm").build(5, seed=0)
    res = applicability(model)
    assert not res.applicable and res.architecture == "transformer" and len(res.reasons) == 5
