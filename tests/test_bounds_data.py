"""Data-dependent bounds on a real small checkpoint: kl inversion, compression (Occam), PAC-Bayes,
Theorem 1 on the mlp chain, and the ``genbound bounds`` command."""

from __future__ import annotations

import argparse
import json
import math

import pytest
import torch

from genbound.bounds.common import binary_kl, kl_inverse_upper
from genbound.bounds.occam import code_length, occam_bound, occam_kl_budget, prefix_free_bits, quantize
from genbound.bounds.pacbayes import gaussian_kl
from genbound.core.errors import GenboundError


@pytest.mark.parametrize("bits, expected", [(1000, 0.25), (4000, 0.54), (8000, 0.75)])
def test_theory_worked_numbers(bits, expected):
    # docs/concepts.md, "Occam / compression bound": N = 5000, delta = 0.05, train error 0.05 (rounded up to
    # 2 decimals there).
    bound = occam_bound(0.05, bits, 5000, 0.05)
    assert math.ceil(bound * 100) / 100 == expected
    assert math.ceil(occam_bound(0.05, prefix_free_bits(bits), 5000, 0.05) * 100) / 100 == expected


def test_large_codes_are_vacuous_and_inversion_is_exact():
    assert occam_bound(0.05, 20000, 5000, 0.05) > 0.95
    for p in (0.0, 0.01, 0.3, 0.77):
        for c in (1e-4, 0.05, 0.5, 1.5):
            q = kl_inverse_upper(p, c)
            if q < 1.0:
                assert binary_kl(p, q) == pytest.approx(c, abs=1e-9)
                assert binary_kl(p, min(1.0, q + 1e-7)) > c
            else:
                assert binary_kl(p, 1.0) <= c
    with pytest.raises(GenboundError):
        kl_inverse_upper(1.5, 0.1)
    with pytest.raises(GenboundError, match="--n"):
        occam_kl_budget(10, 0, 0.05)


def test_quantizer_and_code_length():
    t = torch.tensor([0.0, 0.0, 1.0, 1.0, 3.0, 3.0, 3.0, 3.0])
    centers, sym = quantize(t, 3, "kmeans")
    assert torch.equal(centers[sym].float(), t)
    cl = code_length(sym, 3)
    counts = torch.tensor([2.0, 2.0, 4.0])
    assert cl.data_bits == pytest.approx(float(-(counts * torch.log2(counts / 8)).sum()))
    assert cl.codebook_bits == 96 and cl.counts_bits == 3 * math.ceil(math.log2(9))
    c1, s1 = quantize(t, 1, "uniform")
    assert c1.numel() == 1 and code_length(s1, 1).data_bits == 0.0


def test_gaussian_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    mu, mu0 = torch.randn(7, generator=g, dtype=torch.float64), torch.randn(7, generator=g, dtype=torch.float64)
    s2, lam = 0.3, 1.7
    ref = torch.distributions.kl_divergence(
        torch.distributions.Normal(mu, math.sqrt(s2)), torch.distributions.Normal(mu0, math.sqrt(lam))).sum()
    assert gaussian_kl(float(((mu - mu0) ** 2).sum()), 7, s2, lam) == pytest.approx(float(ref), rel=1e-10)


# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ckpt_path(tmp_path_factory):
    from genbound.testing import make_checkpoint

    return make_checkpoint(tmp_path_factory.mktemp("ck"), "lora", steps=40)


@pytest.fixture(scope="module")
def loaded(ckpt_path):
    from genbound.checkpoints.checkpoint import load_checkpoint
    from genbound.sources.hypothesis import from_checkpoint

    ckpt = load_checkpoint(ckpt_path)
    return ckpt, ckpt.load_splits(), from_checkpoint(ckpt)


def test_hypothesis_rebuilds_the_merged_model(loaded):
    ckpt, splits, hyp = loaded
    from torch.func import functional_call

    model = ckpt.build_model(merged=True)
    with torch.no_grad():
        direct = model(**splits.train.features)
        rebuilt = functional_call(hyp.model, hyp.to_params(hyp.trained), args=(), kwargs=splits.train.features)
    assert torch.allclose(direct, rebuilt, atol=1e-5)
    assert hyp.num_params == ckpt.meta.params["data_dependent"]
    # theta_0: B0 = 0 and A0 is the seeded Kaiming draw.
    assert all(float(v.abs().max()) == 0 for k, v in hyp.reference.items() if k.endswith(".B"))


def test_compression_bound_on_a_real_checkpoint(loaded):
    from genbound.bounds.occam import compression_bound

    _, splits, hyp = loaded
    res = compression_bound(hyp, splits.train, 0.05, levels_grid=(1, 2, 4), kinds=("kmeans",), progress=False,
                            chance_error=0.8)
    assert math.isfinite(res.bound) and 0 < res.bound <= 1
    assert res.hyper_choices == 3 and len(res.candidates) == 3
    for cand in res.candidates:
        if cand.bound < 1:
            assert binary_kl(cand.train_error, cand.bound) == pytest.approx(cand.kl_budget, abs=1e-9)
        assert cand.kl_budget == pytest.approx(occam_kl_budget(cand.total_bits, len(splits.train), 0.05))
    # The error is measured on the quantized model: one level moves every weight, so it differs.
    one = next(c for c in res.candidates if c.levels == 1)
    assert one.train_error != pytest.approx(res.train_error_original)
    assert res.vacuous == (res.bound >= 0.8)


def test_pac_bayes_bound_on_a_real_checkpoint(loaded):
    from genbound.bounds.pacbayes import pac_bayes_bound

    _, splits, hyp = loaded
    res = pac_bayes_bound(hyp, splits.train, 0.05, s_grid=(1e-3, 1e-2), lambda_grid=(1e-4, 1e-2, 1.0),
                          mc_samples=3, seed=1, progress=False)
    assert math.isfinite(res.bound) and res.mc_error_upper >= res.mc_error
    assert res.bound >= res.mc_error_upper and res.seed == 1
    assert res.kl == pytest.approx(gaussian_kl(hyp.distance_sq(), hyp.num_params, res.s ** 2, res.prior_variance))
    again = pac_bayes_bound(hyp, splits.train, 0.05, s_grid=(1e-3, 1e-2), lambda_grid=(1e-4, 1e-2, 1.0),
                            mc_samples=3, seed=1, progress=False)
    assert again.bound == res.bound  # the seed fixes the posterior draws
    with pytest.raises(GenboundError, match="--pb-samples"):
        pac_bayes_bound(hyp, splits.train, mc_samples=0)


def test_theorem1_on_the_mlp_chain_bounds_the_real_output_change(loaded, ckpt_path):
    from genbound.bounds.report import report_for_checkpoint

    ckpt, splits, _ = loaded
    rep = report_for_checkpoint(ckpt_path, compression=False)
    t = rep.theorem1
    assert t.applicable and [lay.name for lay in t.layers] == ["fc1", "fc2", "head"]
    assert t.layers[0].dw_norm == pytest.approx(ckpt.layer_updates()["fc1"].spectral_norm(), rel=1e-6)
    _, initial = ckpt._pristine("cpu")
    trained = ckpt.build_model(merged=True)
    x = splits.train.features["x"]
    with torch.no_grad():
        diff = float((trained(x) - initial(x)).norm(dim=1).max())
    assert diff <= t.phi_dw / (2 * t.loss_lipschitz) * (1 + 1e-6)
    assert t.bound == pytest.approx(t.hoeffding_w0 + t.phi_dw) and t.vacuous
    assert rep.table1[0].method == "lora" and rep.config.n_train == ckpt.meta.n_train and rep.config.q == 32


def _cli(argv):
    from genbound.commands import bounds

    p = argparse.ArgumentParser()
    bounds.add_arguments(p)
    return bounds.run(p.parse_args(argv))


def test_cli_checkpoint_json_and_config(ckpt_path, capsys, tmp_path):
    assert _cli([str(ckpt_path), "--json", "--no-compression", "--no-theorem"]) == 0
    out = json.loads(capsys.readouterr().out)
    row = out["reports"][0]["table1"][0]
    assert row["method"] == "lora" and row["vacuous"] is True
    assert _cli(["--layers", "768x768*24", "--rank", "16", "--q", "32", "--sigma", "0.5", "--n", "3668",
                 "--method", "lora", "--no-head", "--markdown", str(tmp_path / "t.md"),
                 "--latex", str(tmp_path / "t.tex")]) == 0
    assert "42.23" in capsys.readouterr().out
    assert "42.23" in (tmp_path / "t.md").read_text() and r"\toprule" in (tmp_path / "t.tex").read_text()
    with pytest.raises(GenboundError, match="--rank"):
        _cli(["--layers", "4x4", "--n", "10"])
    with pytest.raises(GenboundError, match="--n"):
        _cli(["--config", "minilm-bbc", "--n", "0"])
