"""Spectra, intruder dimensions and subspace similarity, each against an independent dense computation."""

from __future__ import annotations

import argparse
import json
import math

import pytest
import torch

from genbound.core.errors import GenboundError, NonFiniteError
from genbound.diagnostics.intruders import BaseSVDCache, brute_force_scores, eps_sweep, intruders, layer_scores
from genbound.diagnostics.similarity import compare_updates, layer_similarity, principal_angles, subspace_overlap
from genbound.diagnostics.spectra import (
    effective_rank,
    energy_top_k,
    fit_power_law,
    layer_spectrum,
    singular_values,
    spectra,
    stable_rank,
    svd_factors,
)
from genbound.methods.catalogue import METHODS, column_indices, get_method
from genbound.methods.update import LayerUpdate


def _dense_sv(u: LayerUpdate) -> torch.Tensor:
    return torch.linalg.svdvals(u.materialize().double())


def _assert_sv_close(got: torch.Tensor, u: LayerUpdate, rel: float = 1e-5) -> None:
    want = _dense_sv(u)
    top = float(want[0]) if want.numel() else 0.0
    n = got.numel()
    assert torch.all((got.double() - want[:n]).abs() <= rel * max(top, 1e-300)), (got[:4], want[:4])
    assert torch.all(want[n:] <= rel * max(top, 1e-300))  # the rest of the dense spectrum is zero


def synthetic_update(method: str, n: int = 48, m: int = 40, r: int = 4, k: int = 3, seed: int = 0,
                     dtype=torch.float64) -> LayerUpdate:
    """A LayerUpdate shaped as ``method`` stores it (chains: k links concatenated)."""
    g = torch.Generator().manual_seed(seed)
    spec = get_method(method)
    if spec.family == "full":
        return LayerUpdate("layer", n, m, dense=torch.randn(n, m, generator=g, dtype=dtype) * 0.01)
    links = k if spec.chained else 1
    R = links * r
    B = torch.randn(n, R, generator=g, dtype=dtype)
    if spec.uses_columns:
        cols = torch.cat([column_indices(spec, seed, "layer", m, r, link=j) for j in range(links)])
        A = torch.zeros(R, m, dtype=dtype)
        A[torch.arange(R), cols] = 1.0
        return LayerUpdate("layer", n, m, 2.0, B, A, cols)
    A = torch.randn(R, m, generator=g, dtype=dtype) / m**0.5
    return LayerUpdate("layer", n, m, 2.0, B, A)


# --------------------------------------------------------------------------------------------------
# factored singular values


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_factored_singular_values_equal_dense_svd_synthetic(method, dtype):
    for n, m in ((48, 40), (30, 64)):
        u = synthetic_update(method, n, m, dtype=dtype)
        _assert_sv_close(singular_values(u), u)
        # the columns-only form (A left out) gives the same answer
        if u.columns is not None:
            v = LayerUpdate(u.name, n, m, u.scale, u.B, None, u.columns)
            _assert_sv_close(singular_values(v), u)


@pytest.fixture(scope="module")
def real_checkpoints(tmp_path_factory):
    from genbound.testing import make_checkpoint

    root = tmp_path_factory.mktemp("ckpts")
    cache: dict[str, object] = {}

    def get(method: str):
        if method not in cache:
            cache[method] = make_checkpoint(root, method, steps=5)
        return cache[method]

    return get


@pytest.mark.parametrize("method", list(METHODS))
def test_factored_singular_values_equal_dense_svd_real(method, real_checkpoints):
    from genbound.checkpoints.checkpoint import load_checkpoint

    ck = load_checkpoint(real_checkpoints(method))
    for u in ck.layer_updates().values():
        _assert_sv_close(singular_values(u), u)
        U, S, Vh = svd_factors(u)
        torch.testing.assert_close(U @ torch.diag(S) @ Vh, u.materialize().double(), rtol=1e-5, atol=1e-6)


def test_summaries_match_their_formulas():
    s = torch.tensor([4.0, 2.0, 1.0, 1.0, 0.0], dtype=torch.float64)
    U = torch.linalg.qr(torch.randn(7, 5, dtype=torch.float64))[0]
    V = torch.linalg.qr(torch.randn(6, 5, dtype=torch.float64))[0]
    u = LayerUpdate("x", 7, 6, dense=U @ torch.diag(s) @ V.T)
    spec = layer_spectrum(u, top_k=2)
    assert spec.spectral_norm == pytest.approx(4.0)
    assert spec.frobenius_norm == pytest.approx(math.sqrt(22.0))
    assert spec.stable_rank == pytest.approx(22.0 / 16.0)
    p = torch.tensor([4, 2, 1, 1]) / 8.0
    assert spec.effective_rank == pytest.approx(math.exp(float(-(p * p.log()).sum())))
    assert spec.energy_top_k == pytest.approx(20.0 / 22.0)
    assert spec.numerical_rank == 4
    assert spec.density.n_eigenvalues == 4 and sum(spec.density.counts) == 4
    assert spec.density.power_law is None and spec.density.power_law_status.startswith("not fitted")
    # equal singular values: effective rank = stable rank = their number
    eq = torch.ones(6, dtype=torch.float64)
    assert effective_rank(eq) == pytest.approx(6.0) and stable_rank(eq) == pytest.approx(6.0)
    assert energy_top_k(eq, 3) == pytest.approx(0.5)
    # a zero update has no ranks rather than 0/0
    z = LayerUpdate("z", 5, 4, 1.0, torch.zeros(5, 2), torch.randn(2, 4))
    zs = layer_spectrum(z)
    assert zs.spectral_norm == 0.0 and zs.stable_rank is None and zs.effective_rank is None
    assert zs.density.power_law_status == "not fitted: the update is zero"


def test_power_law_only_from_enough_eigenvalues():
    g = torch.Generator().manual_seed(0)
    alpha = 2.5
    x = (1.0 - torch.rand(1500, generator=g, dtype=torch.float64)) ** (-1.0 / (alpha - 1.0))  # Pareto, xmin 1
    fit, status = fit_power_law(x)
    assert status == "fitted" and fit.n_tail >= 50
    assert abs(fit.alpha - alpha) < 4 * fit.alpha_stderr + 0.05
    fit, status = fit_power_law(x[:49])
    assert fit is None and "49" in status
    fit, status = fit_power_law(x[:8])
    assert fit is None and status.startswith("not fitted")


def test_spectra_report_overall_is_the_block_diagonal_operator():
    ups = {f"l{i}": synthetic_update("lora", 20 + i, 18, seed=i) for i in range(3)}
    rep = spectra(ups, top_k=3, progress=False)
    blocks = torch.block_diag(*[u.materialize() for u in ups.values()])
    sv = torch.linalg.svdvals(blocks)
    assert rep.overall.spectral_norm == pytest.approx(float(sv[0]), rel=1e-9)
    assert rep.overall.frobenius_norm == pytest.approx(float(blocks.norm()), rel=1e-9)
    assert rep.overall.stable_rank == pytest.approx(float((sv**2).sum() / sv[0] ** 2), rel=1e-9)
    assert rep.overall.energy_top_k == pytest.approx(float((sv[:3] ** 2).sum() / (sv**2).sum()), rel=1e-9)
    assert rep.overall.density.power_law is None  # 12 eigenvalues: never a fit
    assert [lay.name for lay in rep.layers] == list(ups)


def test_bad_updates_are_one_line_errors_naming_the_layer():
    u = synthetic_update("lora")
    bad = LayerUpdate("enc.q", 48, 41, u.scale, u.B, u.A)  # A has 40 columns, metadata says 41
    with pytest.raises(GenboundError, match="enc.q.*factor A") as e:
        singular_values(bad)
    assert "\n" not in str(e.value)
    with pytest.raises(GenboundError, match="enc.q.*factor B"):
        singular_values(LayerUpdate("enc.q", 47, 40, u.scale, u.B, u.A))
    B = u.B.clone()
    B[3, 1] = float("inf")
    with pytest.raises(NonFiniteError, match="enc.q.*NaN or Inf"):
        singular_values(LayerUpdate("enc.q", 48, 40, u.scale, B, u.A))
    c = synthetic_update("cla")
    with pytest.raises(GenboundError, match="layer.*column"):
        singular_values(LayerUpdate("layer", 48, 40, 1.0, c.B, None, c.columns + 100))
    with pytest.raises(GenboundError, match="enc.q.*dense update"):
        singular_values(LayerUpdate("enc.q", 4, 5, dense=torch.zeros(5, 4)))
    with pytest.raises(GenboundError, match="top-k"):
        spectra({"a": u}, top_k=0)


# --------------------------------------------------------------------------------------------------
# intruder dimensions


def _w0(n, m, seed, decay=0.97):
    """A W0 with distinct, decaying singular values (like a pretrained weight: no ties at the top)."""
    g = torch.Generator().manual_seed(seed)
    U = torch.linalg.qr(torch.randn(n, min(n, m), generator=g, dtype=torch.float64))[0]
    V = torch.linalg.qr(torch.randn(m, min(n, m), generator=g, dtype=torch.float64))[0]
    s = decay ** torch.arange(min(n, m), dtype=torch.float64) * (1 + 0.01 * torch.rand(min(n, m), generator=g))
    return U @ torch.diag(torch.sort(s, descending=True).values) @ V.T


@pytest.mark.parametrize("shape", [(40, 40), (60, 30), (30, 60), (90, 70)])
@pytest.mark.parametrize("method", ["krylov", "dense", "auto", "gram"])
def test_intruder_scores_equal_brute_force(shape, method):
    n, m = shape
    for seed, size in ((0, 0.05), (1, 0.6), (2, 3.0)):  # small to dominant updates: 0 to many intruders
        W0 = _w0(n, m, seed)
        g = torch.Generator().manual_seed(100 + seed)
        u = LayerUpdate("l", n, m, size, torch.randn(n, 5, generator=g, dtype=torch.float64),
                        torch.randn(5, m, generator=g, dtype=torch.float64) / m**0.5)
        ref, Sref = brute_force_scores(W0, u.materialize(), 10)
        sc, S, used, res, _ = layer_scores(W0, u, 10, method, cache=BaseSVDCache(), tol=1e-12)
        torch.testing.assert_close(S, Sref, rtol=1e-8, atol=1e-10)
        torch.testing.assert_close(sc, ref, rtol=0, atol=1e-6)
        for eps in eps_sweep(20):
            assert int((sc < eps).sum()) == int((ref < eps).sum())
        if method == "krylov":
            assert used.startswith("krylov")
        if method == "gram":
            assert used == "gram"


@pytest.mark.parametrize("n, m", [(50, 40), (40, 50)])
def test_gram_path_finds_the_planted_intruder(n, m):
    """The Gram path's two orientations: n > m (the right Gram and the division by sigma_i) and n < m."""
    W0 = _w0(n, m, 7)
    U, S0, Vh = torch.linalg.svd(W0, full_matrices=True)
    # a dominant update along W0's weakest input direction, written out along a direction W0 misses (n > m) or,
    # where U0 spans everything (n < m), along an even mix of its 5 weakest (|cos| 1/sqrt(5) with each);
    # brute force is the reference either way
    out = U[:, -1:] if n > m else U[:, -5:].sum(1, keepdim=True) / 5**0.5
    u = LayerUpdate("p", n, m, 1.0, 5.0 * out, Vh[-1:, :])
    rep = intruders({"p": W0}, {"p": u}, k=10, eps=0.5, method="gram", progress=False)
    ref, Sref = brute_force_scores(W0, u.materialize(), 10)
    assert rep.layers[0].method == "gram" and rep.layers[0].null_directions == 0
    torch.testing.assert_close(torch.tensor(rep.layers[0].scores, dtype=torch.float64), ref, rtol=0, atol=1e-9)
    torch.testing.assert_close(torch.tensor(rep.layers[0].singular_values, dtype=torch.float64), Sref)
    assert rep.total == int((ref < 0.5).sum()) >= 1


def test_gram_path_on_a_rank_deficient_tall_base_leaves_out_its_null_directions():
    """W0 of rank 20 in 60 x 30: the 10 null u0_i are arbitrary in a thin SVD, so they are counted, left out of
    the maximum, and the scores are finite, in [0, 1], and equal the brute-force ones over the resolved u0_i."""
    g = torch.Generator().manual_seed(3)
    W0 = torch.randn(60, 20, generator=g, dtype=torch.float64) @ torch.randn(20, 30, generator=g, dtype=torch.float64)
    u = LayerUpdate("d", 60, 30, 0.5, torch.randn(60, 4, generator=g, dtype=torch.float64),
                    torch.randn(4, 30, generator=g, dtype=torch.float64))
    rep = intruders({"d": W0}, {"d": u}, k=5, method="gram", progress=False)
    lay = rep.layers[0]
    assert lay.null_directions == 10
    sc = torch.tensor(lay.scores, dtype=torch.float64)
    assert torch.isfinite(sc).all() and (sc >= 0).all() and (sc <= 1 + 1e-9).all()
    U0 = torch.linalg.svd(W0, full_matrices=False)[0][:, :20]
    Uw = torch.linalg.svd(W0 + u.materialize(), full_matrices=False)[0][:, :5]
    torch.testing.assert_close(sc, (Uw.T @ U0).abs().amax(dim=1), rtol=0, atol=1e-8)


def test_auto_takes_gram_for_one_use_and_krylov_for_a_kept_svd(monkeypatch):
    import genbound.diagnostics.intruders as mod

    monkeypatch.setattr(mod, "DENSE_MAX", 16)
    W0, u = _w0(40, 40, 2), synthetic_update("lora", 40, 40)
    assert layer_scores(W0, u, 5, "auto", cache=BaseSVDCache(maxsize=0))[2] == "gram"
    assert layer_scores(W0, u, 5, "auto", cache=BaseSVDCache())[2].startswith("krylov")
    assert layer_scores(W0, u, None, "gram")[2] == "dense"  # k = all: nothing to save
    assert layer_scores(W0, synthetic_update("fft", 40, 40), 5, "gram")[2] == "dense"  # dW is itself dense


def test_intruders_found_where_planted_and_k_all():
    n, m = 50, 40
    W0 = _w0(n, m, 7)
    U, S0, Vh = torch.linalg.svd(W0, full_matrices=True)
    # n > m leaves directions orthogonal to every left singular vector of W0: plant a dominant one along
    # W0's weakest input direction v. W v = S0_min u0_min + 5 free, so the new top vector has
    # |cos| with u0_min equal to S0_min / sqrt(S0_min^2 + 25) and is orthogonal to every other u0_i.
    free = U[:, -1:]
    u = LayerUpdate("p", n, m, 1.0, 5.0 * free, Vh[-1:, :])
    rep = intruders({"p": W0}, {"p": u}, k=10, eps=0.5, sweep=[0.1, 0.9], progress=False)
    smin = float(S0[-1])
    assert rep.layers[0].scores[0] == pytest.approx(smin / math.sqrt(smin**2 + 25.0), abs=1e-9)
    assert rep.total == 1 and rep.layers[0].singular_values[0] == pytest.approx(math.sqrt(smin**2 + 25.0))
    ref, _ = brute_force_scores(W0, u.materialize(), None)
    sc, *_ = layer_scores(W0, u, None)
    torch.testing.assert_close(sc, ref, rtol=0, atol=1e-8)
    assert rep.total_by_eps["0.1"] <= rep.total_by_eps["0.5"] <= rep.total_by_eps["0.9"]


def test_base_svd_is_computed_once_per_backbone_layer():
    cache = BaseSVDCache()
    W0 = _w0(70, 70, 3)
    for seed in range(3):
        u = synthetic_update("lora", 70, 70, seed=seed)
        layer_scores(W0, u, 5, "krylov", cache=cache)
    assert cache.misses == 1 and cache.hits == 2


@pytest.mark.parametrize("path", ["krylov", "gram"])
def test_intruders_on_selector_and_fft_updates(path):
    W0 = _w0(48, 40, 5)
    for method in ("cla", "rc3la", "paca", "fft", "cola"):
        u = synthetic_update(method, 48, 40)
        ref, _ = brute_force_scores(W0, u.materialize(), 10)
        sc, *_ = layer_scores(W0, u, 10, path, cache=BaseSVDCache(), tol=1e-12)
        torch.testing.assert_close(sc, ref, rtol=0, atol=1e-6)


def test_intruder_bad_input():
    u = synthetic_update("lora", 48, 40)
    with pytest.raises(GenboundError, match="layer.*base weight of shape"):
        layer_scores(torch.zeros(40, 48), u)
    with pytest.raises(GenboundError, match="eps must be in"):
        intruders({"layer": _w0(48, 40, 0)}, {"layer": u}, eps=0.0)
    with pytest.raises(GenboundError, match="--backbone"):
        intruders({}, {"layer": u})
    W = _w0(48, 40, 0)
    W[0, 0] = float("nan")
    with pytest.raises(GenboundError, match="layer.*NaN"):
        layer_scores(W, u)


# --------------------------------------------------------------------------------------------------
# similarity


def test_principal_angles_of_a_subspace_with_itself_are_zero():
    Q = torch.linalg.qr(torch.randn(30, 5, dtype=torch.float64))[0]
    R = torch.linalg.qr(torch.randn(5, 5, dtype=torch.float64))[0]
    ang = principal_angles(Q, Q @ R)  # another basis of the same subspace
    assert float(ang.abs().max()) < 1e-12
    assert subspace_overlap(Q, Q @ R) == pytest.approx(1.0, abs=1e-12)
    u = synthetic_update("lora", 40, 30)
    sim = layer_similarity(u, u, k=4)
    assert max(sim.left_angles + sim.right_angles) < 1e-7 and sim.overlap == pytest.approx(1.0, abs=1e-12)


def test_principal_angles_match_scipy():
    scipy_linalg = pytest.importorskip("scipy.linalg")
    g = torch.Generator().manual_seed(0)
    for k1, k2 in ((4, 4), (6, 3), (2, 5)):
        A = torch.linalg.qr(torch.randn(25, k1, generator=g, dtype=torch.float64))[0]
        B = torch.linalg.qr(torch.randn(25, k2, generator=g, dtype=torch.float64))[0]
        want = sorted(scipy_linalg.subspace_angles(A.numpy(), B.numpy()))
        torch.testing.assert_close(principal_angles(A, B), torch.tensor(want, dtype=torch.float64), atol=1e-10,
                                   rtol=0)
        cos2 = torch.cos(torch.tensor(want)) ** 2
        assert subspace_overlap(A, B) == pytest.approx(float(cos2.sum()) / min(k1, k2), abs=1e-10)
    E = torch.eye(6, dtype=torch.float64)
    assert torch.allclose(principal_angles(E[:, :2], E[:, 2:4]), torch.full((2,), math.pi / 2, dtype=torch.float64))


def test_compare_updates_layers_and_zero_update():
    a = {"x": synthetic_update("lora", 30, 20, seed=0), "y": synthetic_update("lora", 30, 20, seed=1)}
    b = {"x": synthetic_update("lora", 30, 20, seed=2),
         "y": LayerUpdate("y", 30, 20, 1.0, torch.zeros(30, 4), torch.randn(4, 20)), "z": a["x"]}
    rep = compare_updates(a, b, k=4)
    by = {lay.name: lay for lay in rep.layers}
    assert 0.0 < by["x"].overlap < 1.0 and by["y"].overlap is None
    assert rep.only_in_second == ["z"] and rep.mean_overlap == pytest.approx(by["x"].overlap)
    with pytest.raises(GenboundError, match="same backbone"):
        compare_updates(a, {"x": synthetic_update("lora", 31, 20)})


# --------------------------------------------------------------------------------------------------
# the command


def _run(argv: list[str]) -> int:
    from genbound.commands import spectra as cmd

    p = argparse.ArgumentParser()
    cmd.add_arguments(p)
    return cmd.run(p.parse_args(argv))


def test_command_on_a_genbound_checkpoint(real_checkpoints, capsys):
    path = real_checkpoints("lora")
    assert _run([str(path), "--intruders", "--eps", "sweep:4", "--json", "--device", "cpu"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["format"] == "genbound" and out["method"] == "lora"
    assert [lay["name"] for lay in out["spectra"]["layers"]] == ["fc1", "fc2"]
    assert out["intruders"]["eps_sweep"] == [0.25, 0.5, 0.75, 1.0]
    assert _run([str(path), "--intruders", "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "overall" in text and "intruders (eps 0.5)" in text and "not fitted" in text


def test_command_on_a_peft_adapter_and_errors(tmp_path, capsys):
    peft = pytest.importorskip("peft")
    from genbound.models.backbones import get_backbone

    model = get_backbone("mlp").build(num_labels=5)
    pm = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["fc1", "fc2"]))
    with torch.no_grad():
        for name, prm in pm.named_parameters():
            if "lora_B" in name:
                prm.normal_(0, 0.1)
    pm.save_pretrained(tmp_path / "ad")
    assert _run([str(tmp_path / "ad"), "--backbone", "mlp", "--intruders", "--intruder-k", "all", "--json",
                 "--device", "cpu"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["format"] == "peft" and out["intruders"]["k"] == "all"
    assert out["intruders"]["layers"][0]["k"] == 64
    with pytest.raises(GenboundError, match="--backbone"):
        _run([str(tmp_path / "ad"), "--intruders", "--device", "cpu"])
    with pytest.raises(GenboundError, match="not a directory"):
        _run([str(tmp_path / "nope"), "--device", "cpu"])
    with pytest.raises(GenboundError, match="eps"):
        _run([str(tmp_path / "ad"), "--backbone", "mlp", "--intruders", "--eps", "abc", "--device", "cpu"])


def test_cli_exit_code_2_when_registered(tmp_path, capsys):
    from genbound import cli

    if "spectra" not in cli.COMMANDS:
        pytest.skip("`spectra` is not yet registered in genbound/cli.py (the lead's file)")
    assert cli.main(["spectra", str(tmp_path / "missing")]) == 2
    assert "genbound: error:" in capsys.readouterr().err


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    u = synthetic_update("rc3la", 64, 48)
    torch.testing.assert_close(singular_values(u, "cuda").cpu(), singular_values(u))
    W0 = _w0(64, 48, 1)
    a = layer_scores(W0, u, 10, "krylov", device="cuda", cache=BaseSVDCache())[0].cpu()
    b = layer_scores(W0, u, 10, "dense")[0]
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    c = layer_scores(W0, u, 10, "gram", device="cuda")[0].cpu()
    torch.testing.assert_close(c, b, rtol=0, atol=1e-6)
    sim = layer_similarity(u, u, device="cuda")
    assert sim.overlap == pytest.approx(1.0)
