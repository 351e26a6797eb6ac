"""genbound.diagnostics.hessian against the exact dense Hessian, pyhessian 0.1, and the properties it must keep."""

from __future__ import annotations

import argparse
import copy
import json

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call

from genbound.core.errors import GenboundError, NonFiniteError
from genbound.data.evalset import EvalSet
from genbound.diagnostics.hessian import (
    HessianOperator,
    hessian_spectrum,
    hutchinson,
    hutchpp,
    select_parameters,
    trace_estimate,
)


class Net(nn.Module):
    """A small tanh MLP (smooth, so its Hessian has negative eigenvalues too), with an unused layer."""

    def __init__(self, d_in=6, h=12, c=4, dropout=0.0, norm=False):
        super().__init__()
        self.fc1 = nn.Linear(d_in, h)
        self.norm = nn.BatchNorm1d(h) if norm else nn.Identity()
        self.drop = nn.Dropout(dropout)
        self.fc2 = nn.Linear(h, h)
        self.head = nn.Linear(h, c)
        self.unused = nn.Linear(3, 2)

    def forward(self, x):
        z = self.drop(torch.tanh(self.norm(self.fc1(x))))
        return self.head(torch.tanh(self.fc2(z)))


def make(n=90, seed=0, dtype=torch.float64, **kw):
    torch.manual_seed(seed)
    model = Net(**kw).to(dtype)
    x = torch.randn(n, 6, dtype=dtype)
    y = torch.randint(0, 4, (n,))
    return model, EvalSet({"x": x}, y)


def dense_hessian(model, evalset, names):
    """The exact Hessian of the mean cross-entropy w.r.t. ``names`` (torch.func.hessian, flat theta)."""
    params = dict(model.named_parameters())
    shapes = [params[n].shape for n in names]
    sizes = [params[n].numel() for n in names]
    rest = {k: v.detach() for k, v in params.items() if k not in names}
    rest.update(dict(model.named_buffers()))
    model = model.eval()

    def loss(theta):
        state = dict(rest)
        state.update({n: t.reshape(s) for n, t, s in zip(names, torch.split(theta, sizes), shapes)})
        logits = functional_call(model, state, (), evalset.features)
        return nn.functional.cross_entropy(logits, evalset.labels)

    theta = torch.cat([params[n].detach().reshape(-1) for n in names])
    return torch.func.hessian(loss)(theta)


@pytest.fixture(scope="module")
def small():
    model, es = make()
    names = select_parameters(model, "all")
    H = dense_hessian(model, es, names)
    return model, es, names, H


def test_hvp_equals_dense_in_both_modes_and_any_batching(small):
    model, es, names, H = small
    V = torch.randn(3, H.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    for mode in ("cached", "forward", "reverse"):
        for bs, pb in ((None, 1), (37, 3)):  # 37 does not divide 90: exact 1/N weighting is needed
            op = HessianOperator(model, es, "all", batch_size=bs, mode=mode, probe_batch=pb)
            out = op.matmat(V)
            assert torch.allclose(out, V @ H, rtol=1e-10, atol=1e-12), (mode, bs)
            assert torch.allclose(op.matvec(V[0]), H @ V[0], rtol=1e-10, atol=1e-12)
            assert op.stats.n_hvp == 4


def test_auto_mode_caches_within_budget_only(small):
    model, es, _, H = small
    v = torch.ones(H.shape[0], dtype=torch.float64)
    big = HessianOperator(model, es, "all", batch_size=30)
    tiny = HessianOperator(model, es, "all", batch_size=30, cache_bytes=1000)
    for op in (big, tiny):
        assert torch.allclose(op.matvec(v), H @ v, rtol=1e-10, atol=1e-12)
        assert torch.allclose(op.matvec(v), H @ v, rtol=1e-10, atol=1e-12)
    assert big.mode == "cached" and tiny.mode == "forward"


def test_extreme_eigenvalues_trace_density_match_dense(small):
    model, es, names, H = small
    lam = np.linalg.eigvalsh(H.numpy())
    d = len(lam)
    rep = hessian_spectrum(model, "all", es, top_k=5, bottom_k=3, trace=True, density=True, batch_size=None,
                           seed=3, progress=False, trace_probes=15, density_probes=2, density_steps=30)
    top, bottom = np.array(rep.eigen.top), np.array(rep.eigen.bottom)
    assert rep.eigen.converged
    assert lam[0] < -1e-3  # the check below is of genuinely negative eigenvalues
    np.testing.assert_allclose(top, lam[::-1][:5], rtol=1e-4)
    np.testing.assert_allclose(bottom, lam[:3], rtol=1e-4)
    # The stated error bounds hold.
    assert np.all(np.abs(top - lam[::-1][:5]) <= np.array(rep.eigen.top_errors) + 1e-12)
    tr = float(np.trace(H.numpy()))
    assert rep.trace.ci_low <= tr <= rep.trace.ci_high
    assert rep.trace.ci_high - rep.trace.ci_low < 0.5 * abs(tr)  # an interval that says something
    dens = rep.density
    assert dens.n_probes == 2 and dens.seed == 3
    assert abs(sum(dens.weights) - d) < 1e-9 * d
    assert abs(np.trapezoid(dens.curve, dens.grid) - d) < 1e-3 * d
    assert lam[0] - 1e-6 <= min(dens.nodes) and max(dens.nodes) <= lam[-1] + 1e-6  # Ritz values interlace
    assert rep.n_hvp == rep.eigen.n_hvp + rep.trace.n_hvp + dens.n_hvp
    assert rep.dim == d and rep.params == names and rep.seed == 3


def test_trace_estimators_cover_the_dense_trace(small):
    model, es, names, H = small
    tr = float(np.trace(H.numpy()))
    op = HessianOperator(model, es, "all", batch_size=None)
    plain = hutchinson(op.matmat, op.dim, seed=0, probes=30, dtype=op.dtype)
    pp = hutchpp(op.matmat, op.dim, seed=0, sketch=8, probes=10, dtype=op.dtype)
    auto = trace_estimate(op, seed=0, sketch=16, probes=10)
    for r in (plain, pp, auto):
        assert r.ci_low <= tr <= r.ci_high, r
    assert pp.n_hvp == 26 and pp.sketch_dim == 8 and plain.n_hvp == 30
    assert auto.n_hvp == 26 and auto.sketch_dim == 16 and auto.method == "hutch++ (krylov sketch)"


def test_dense_trace_exact_when_sketch_spans_everything():
    model, es = make(n=40)
    names = ["head.weight", "head.bias"]
    H = dense_hessian(model, es, names)
    op = HessianOperator(model, es, names, batch_size=None)
    r = trace_estimate(op, sketch=op.dim, probes=2)  # Krylov basis = whole space: nothing left to sample
    assert r.estimate == pytest.approx(float(torch.trace(H)), rel=1e-8)


def test_linear_operator_float64_agrees_with_scipy_eigsh(small):
    from scipy.sparse.linalg import eigsh

    model, es, names, H = small
    op = HessianOperator(copy.deepcopy(model).float(), EvalSet({"x": es.features["x"].float()}, es.labels), "all")
    A = op.as_linear_operator()
    assert A.dtype == np.float64 and A.shape == (op.dim, op.dim)
    x = np.random.default_rng(0).standard_normal(op.dim)
    np.testing.assert_allclose(A @ x, H.numpy() @ x, rtol=1e-4, atol=1e-5)
    top = eigsh(A, k=2, which="LA", return_eigenvectors=False, tol=1e-6)
    rep = hessian_spectrum(model, "all", es, top_k=2, trace=False, progress=False)
    np.testing.assert_allclose(np.sort(top)[::-1], rep.eigen.top, rtol=1e-4)


def test_callers_model_left_exactly_as_it_was():
    model, es = make(dropout=0.3, norm=True)
    model.train()
    model.fc2.eval()  # a mixed state must come back as it was
    model.fc1.bias.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = {n: m.training for n, m in model.named_modules()}
    req = {n: p.requires_grad for n, p in model.named_parameters()}
    rep = hessian_spectrum(model, "all", es, top_k=2, trace=True, trace_probes=4, progress=False)
    assert rep.eigen.top[0] > 0
    assert {n: m.training for n, m in model.named_modules()} == flags
    assert {n: p.requires_grad for n, p in model.named_parameters()} == req
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BatchNorm statistics included
    assert all(p.grad is None for p in model.parameters())
    # Eval mode is used: the dropout model gives the same top eigenvalue on every call.
    rep2 = hessian_spectrum(model, "all", es, top_k=2, trace=False, progress=False)
    assert rep2.eigen.top[0] == pytest.approx(rep.eigen.top[0], rel=1e-10)


def test_unused_parameters_give_zero_rows(small):
    model, es, names, H = small
    op = HessianOperator(model, es, ["unused", "head"], batch_size=None)
    assert op.names == ["head.weight", "head.bias", "unused.weight", "unused.bias"]
    for mode in ("cached", "forward", "reverse"):
        op.mode = mode
        hv = op.unflatten(op.matvec(torch.ones(op.dim, dtype=torch.float64)))
        assert torch.count_nonzero(hv["unused.weight"]) == 0 and torch.count_nonzero(hv["unused.bias"]) == 0
        assert hv["head.weight"].abs().sum() > 0
    only = hessian_spectrum(model, ["unused"], es, top_k=1, trace=True, trace_probes=3, progress=False)
    assert only.eigen.top == [0.0] and only.trace.estimate == 0.0


def test_parameter_selection():
    model, _ = make()
    assert select_parameters(model, "fc1") == ["fc1.weight", "fc1.bias"]
    assert select_parameters(model, "head.bias,fc1.weight") == ["fc1.weight", "head.bias"]
    assert select_parameters(model, None, trained=["head.bias"]) == ["head.bias"]
    for p in model.parameters():
        p.requires_grad_(False)
    model.head.weight.requires_grad_(True)
    assert select_parameters(model, "trained") == ["head.weight"]
    model.head.weight.requires_grad_(False)
    with pytest.raises(GenboundError, match="empty"):
        select_parameters(model, "trained")
    with pytest.raises(GenboundError, match="no parameter or module named 'fc9'"):
        select_parameters(model, ["fc9"])


def test_bad_input_is_a_one_line_error():
    model, es = make()
    with torch.no_grad():
        model.head.bias[0] = float("nan")
    with pytest.raises(NonFiniteError, match="loss is nan"):
        hessian_spectrum(model, "all", es, top_k=1, progress=False)
    with pytest.raises(GenboundError, match="unknown trace method"):
        trace_estimate(HessianOperator(make()[0], es, "head"), method="exact")
    with pytest.raises(GenboundError, match="nothing to compute"):
        hessian_spectrum(make()[0], "all", es, top_k=0, trace=False, progress=False)
    with pytest.raises(GenboundError, match="evaluation set is empty"):
        hessian_spectrum(make()[0], "all", es.index(torch.arange(0)), top_k=1, progress=False)


def test_seeds_recorded_and_reproducible(small):
    model, es, _, _ = small
    kw = dict(top_k=1, trace=True, trace_probes=5, trace_method="hutchinson", progress=False)
    a = hessian_spectrum(model, "all", es, seed=11, **kw)
    b = hessian_spectrum(model, "all", es, seed=11, **kw)
    c = hessian_spectrum(model, "all", es, seed=12, **kw)
    assert a.trace.estimate == b.trace.estimate != c.trace.estimate
    assert a.seed == a.eigen.seed == 11 and a.trace.seed != c.trace.seed


def test_pyhessian_agrees_on_top_eigenvalue_and_trace():
    """pyhessian 0.1 (cuda=False; its density() calls the removed torch.eig and is not used)."""
    from pyhessian import hessian as pyh

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 24), nn.ReLU(), nn.Linear(24, 4))
    x, y = torch.randn(128, 8), torch.randint(0, 4, (128,))
    torch.manual_seed(5)
    ph = pyh(copy.deepcopy(model), nn.CrossEntropyLoss(), data=(x, y), cuda=False)
    top, _ = ph.eigenvalues(top_n=1, maxIter=200, tol=1e-6)
    samples = ph.trace(maxIter=200, tol=0.0)  # tol 0: no early stop, 200 Rademacher probes
    es = EvalSet({"input": x}, y)
    rep = hessian_spectrum(model, "all", es, top_k=1, trace=True, trace_probes=40, progress=False)
    # pyhessian's power iteration stops on a relative change of tol (1e-6 here): agree to 1e-4.
    assert rep.eigen.top[0] == pytest.approx(top[0], rel=1e-4)
    # Two unbiased estimates: their difference within 3 joint standard errors.
    se_theirs = np.std(samples, ddof=1) / np.sqrt(len(samples))
    assert abs(rep.trace.estimate - np.mean(samples)) <= 3 * np.hypot(se_theirs, rep.trace.std_error)


def _cli(argv):
    from genbound.commands import hessian as cmd

    p = argparse.ArgumentParser()
    cmd.add_arguments(p)
    return cmd.run(p.parse_args(argv))


def test_checkpoint_and_cli(ckpt_dir, capsys, tmp_path):
    from genbound.checkpoints.checkpoint import load_checkpoint
    from genbound.diagnostics.hessian import hessian_from_checkpoint

    path = ckpt_dir("lora")
    out = tmp_path / "h.json"
    assert _cli([str(path), "--top-k", "2", "--trace", "--samples", "64", "--seed", "4", "--device", "cpu",
                 "--json", "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(out.read_text())
    assert printed["seed"] == 4 and printed["n_examples"] == 64 and printed["source"]["split"] == "train"
    ck = load_checkpoint(path)
    model = ck.build_model()
    assert printed["params"] == ck.trained_parameter_names(model)
    es = ck.load_splits().train.subset(64, 4)
    direct = hessian_spectrum(model, "trained", es, top_k=2, trace=False, seed=4, progress=False)
    np.testing.assert_allclose(printed["eigen"]["top"], direct.eigen.top, rtol=1e-5)
    # Plain-text output and the error paths.
    assert _cli([str(path), "--top-k", "1", "--params", "head", "--samples", "32", "--device", "cpu"]) == 0
    assert "eigenvalue" in capsys.readouterr().out
    with pytest.raises(GenboundError, match="nothing to compute"):
        _cli([str(path), "--top-k", "0"])
    with pytest.raises(GenboundError, match="fc9"):
        _cli([str(path), "--params", "fc9", "--device", "cpu"])

    class NoData:
        meta = ck.meta

        def build_model(self, device="cpu"):
            return ck.build_model(device)

        def load_splits(self):
            raise ImportError("No module named 'sklearn'")

    with pytest.raises(GenboundError, match="dataset 'digits' is not available"):
        hessian_from_checkpoint(NoData(), top_k=1)


@pytest.mark.cuda
def test_cuda_matches_cpu():
    model, es = make(dtype=torch.float32)
    cpu = hessian_spectrum(model, "all", es, top_k=3, trace=True, trace_probes=8, progress=False)
    gpu = hessian_spectrum(model, "all", es, top_k=3, trace=True, trace_probes=8, device="cuda", progress=False)
    np.testing.assert_allclose(gpu.eigen.top, cpu.eigen.top, rtol=1e-4)
    assert gpu.trace.estimate == pytest.approx(cpu.trace.estimate, rel=1e-4)  # same probes on any device
    assert next(model.parameters()).device.type == "cpu"


@pytest.mark.slow
def test_minilm_query_value_and_head():
    """The real MiniLM with its default (fused SDPA) attention: forward and reverse products agree."""
    from genbound.models.backbones import get_backbone

    model = get_backbone("minilm").build(3)
    ids = torch.randint(1000, 5000, (4, 12), generator=torch.Generator().manual_seed(0))
    es = EvalSet({"input_ids": ids, "attention_mask": torch.ones_like(ids)}, torch.tensor([0, 1, 2, 0]))
    names = ["backbone.encoder.layer.5.attention.self.query.weight", "head"]
    fwd = HessianOperator(model, es, names, mode="forward")
    rev = HessianOperator(model, es, names, mode="reverse")
    v = torch.randn(fwd.dim, generator=torch.Generator().manual_seed(1))
    a, b = fwd.matvec(v), rev.matvec(v)
    assert torch.allclose(a, b, rtol=1e-3, atol=1e-5 * float(b.abs().max()))
    rep = hessian_spectrum(model, names, es, top_k=1, trace=False, progress=False, tol=1e-2, max_steps=8)
    assert rep.eigen.top[0] > 0 and rep.hvp_mode == "cached"


def test_loss_and_gradient_come_from_the_caching_pass_and_equal_separate_passes():
    model, es = make(dtype=torch.float32)
    cached = HessianOperator(model, es, "all", batch_size=40, mode="auto")
    plain = HessianOperator(model, es, "all", batch_size=40, mode="forward")
    loss, grad = cached.loss_and_gradient()
    assert cached.mode == "cached" and cached._graphs is not None  # one pass built the graph and gave both
    assert abs(loss - plain.loss()) < 1e-6
    assert torch.allclose(grad, plain.gradient(), atol=1e-6)


def test_lanczos_basis_grows_and_matches_dense():
    """More steps than the first allocation (16 rows): with full re-orthogonalization the basis stays orthonormal
    and T_m = Q^T A Q."""
    from genbound.diagnostics.hessian.lanczos import lanczos

    g = torch.Generator().manual_seed(0)
    X = torch.randn(60, 60, generator=g, dtype=torch.float64)
    A = X @ X.T / 60
    run = lanczos(lambda V: V @ A, torch.randn(1, 60, generator=g, dtype=torch.float64), 40, keep_basis=True,
                  reorth="full")[0]
    Q = run.basis
    assert Q.shape == (40, 60)
    assert torch.allclose(Q @ Q.T, torch.eye(40, dtype=torch.float64), atol=1e-12)
    T = Q @ A @ Q.T
    assert np.allclose(np.diag(T.numpy()), run.alpha, atol=1e-12)
    assert np.allclose(np.diag(T.numpy(), 1), run.beta, atol=1e-12)


def test_float64_checked_bounds_cover_the_float32_error(small):
    """In float32 the Lanczos bound alone does not cover rounding; the float64-checked bound does."""
    model64, es64, names, H = small
    top = torch.linalg.eigvalsh(H).flip(0)[:3].numpy()
    model = copy.deepcopy(model64).float()
    es = EvalSet({"x": es64.features["x"].float()}, es64.labels)
    rep = hessian_spectrum(model, "all", es, top_k=3, trace=False, tol=1e-6, precision_check=True, progress=False)
    assert rep.eigen.precision == "float64-checked"
    err = np.abs(np.array(rep.eigen.top) - top)
    assert np.all(err <= np.array(rep.eigen.top_errors) * (1 + 1e-9) + 1e-12)
    assert np.all(np.array(rep.eigen.top_errors) < 1e-3 * abs(top[0]))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_partial_reorthogonalization_keeps_the_basis_semi_orthogonal_and_the_eigenvalues(dtype):
    """Simon's partial re-orthogonalization on a spectrum whose top Ritz values converge early (where plain
    Lanczos loses orthogonality and repeats eigenvalues): |q_j^T q_k| stays within 10 sqrt(eps) (the rule
    keeps its estimate below sqrt(eps); the factor covers the estimate's slack), fewer steps than all are
    re-orthogonalized, and the top-5 Ritz values agree with numpy's dense eigvalsh within the reported bound
    plus the float32 rounding of the products."""
    from genbound.diagnostics.hessian.lanczos import lanczos, ritz_bounds

    g = torch.Generator().manual_seed(3)
    n = 500
    U, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    lam = 10.0 / torch.arange(1, n + 1, dtype=torch.float64) ** 1.5  # power law: outliers, then a bulk
    A = (U * lam) @ U.T
    A = ((A + A.T) / 2).to(dtype)
    dense = np.linalg.eigvalsh(A.double().numpy())[::-1][:5]
    start = torch.randn(1, n, generator=g, dtype=torch.float64).to(dtype)
    run = lanczos(lambda V: V @ A, start, 90, keep_basis=True)[0]
    eps = float(torch.finfo(dtype).eps)
    Q = run.basis.double()
    off = (Q @ Q.T - torch.eye(run.steps, dtype=torch.float64)).abs().max().item()
    assert off <= 10 * np.sqrt(eps)
    assert 0 < run.reorthogonalizations < run.steps
    plain = lanczos(lambda V: V @ A, start, 90, keep_basis=True, orth_tol=np.inf)[0]  # no global pass at all
    assert (plain.basis.double() @ plain.basis.double().T - torch.eye(90, dtype=torch.float64)).abs().max() > 0.1
    theta, S = run.ritz()
    _, err = ritz_bounds(theta, S[-1], run.beta_last)
    top, top_err = theta[::-1][:5], err[::-1][:5]
    rounding = 0 if dtype == torch.float64 else 100 * eps * lam[0].item()
    assert np.all(np.abs(top - dense) <= top_err + rounding + 1e-12)
    assert np.all(top_err < 1e-6 * lam[0].item())  # converged, so the comparison above is a tight one
