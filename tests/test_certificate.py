"""Subspace training, the prefix-free code and the compression certificate (docs/concepts.md, "Certificates")."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch

from genbound.bounds.certificate import DECLARED_GRID, Replay, certify, load_w, recompute_bound
from genbound.bounds.codec import (
    HyperGrid,
    QuantizedVector,
    decode,
    encode,
    rank_composition,
    unrank_composition,
)
from genbound.bounds.smoothed import recompute_smoothed
from genbound.checkpoints.checkpoint import load_checkpoint
from genbound.cli import main
from genbound.core.errors import GenboundError
from genbound.methods.subspace import KroneckerProjection, link_dims


@pytest.mark.parametrize("D,d", [(1, 1), (37, 5), (120, 17), (500, 500)])
def test_projection_equals_its_dense_matrix_and_slices_agree(D, d):
    P = KroneckerProjection(D, d, seed=3)
    w = torch.randn(d, dtype=torch.float32)
    dense = P.dense()
    assert dense.shape == (D, d)
    torch.testing.assert_close(P(w), dense @ w, rtol=1e-5, atol=1e-6)
    cuts = sorted({0, D, *np.random.default_rng(0).integers(0, D, 4).tolist()})
    pieces = torch.cat([P.rows(w, a, b) for a, b in zip(cuts, cuts[1:]) if b > a])
    torch.testing.assert_close(pieces, P(w), rtol=1e-5, atol=1e-6)
    # seeded: same seed, same P; another seed or link, another P
    assert torch.equal(KroneckerProjection(D, d, seed=3).dense(), dense)
    if D > 1:
        assert not torch.equal(KroneckerProjection(D, d, seed=4).dense(), dense)
        assert not torch.equal(KroneckerProjection(D, d, seed=3, link=1).dense(), dense)


def test_projection_columns_have_unit_norm_on_average():
    P = KroneckerProjection(40_000, 100, seed=0).dense()
    norms = P.norm(dim=0)
    assert 0.8 < float(norms.mean()) < 1.2


def test_bad_dimensions_are_refused():
    with pytest.raises(GenboundError, match="at least 1"):
        KroneckerProjection(10, 0, 0)
    with pytest.raises(GenboundError, match="exceeds"):
        KroneckerProjection(10, 11, 0)
    assert link_dims(10, 3) == [4, 3, 3]
    with pytest.raises(GenboundError):
        link_dims(2, 3)


def test_composition_ranks_are_a_bijection():
    for n, parts in [(6, 3), (7, 1), (5, 5), (9, 4)]:
        seen = set()
        for cuts in itertools.combinations(range(n - 1), parts - 1):
            bounds = [-1, *cuts, n - 1]
            comp = [bounds[j + 1] - bounds[j] for j in range(parts)]
            r = rank_composition(comp)
            assert 0 <= r < math.comb(n - 1, parts - 1)
            assert unrank_composition(r, n, parts) == comp
            seen.add(r)
        assert len(seen) == math.comb(n - 1, parts - 1)


GRID = HyperGrid.of({"method": ["lora", "cola"], "chain": [1, 3], "subspace_dim": [50, 250],
                     "levels": [2, 5, 16], "lr": [0.1, 0.3]})


@pytest.mark.parametrize("seed", range(6))
def test_decode_encode_is_exact_bit_for_bit(seed):
    rng = np.random.default_rng(seed)
    chain = [1, 3][seed % 2]
    d = [50, 250][(seed // 2) % 2]
    levels = [2, 5, 16][seed % 3]
    links = []
    for n in link_dims(d, chain):
        L = int(rng.integers(1, levels + 1))
        centers = torch.tensor(rng.normal(size=L) * 10 ** rng.uniform(-3, 1))
        probs = rng.dirichlet(np.ones(L) * 0.5)
        links.append(QuantizedVector.from_tensors(centers, torch.tensor(rng.choice(L, size=n, p=probs))))
    config = {"method": "cola" if chain == 3 else "lora", "chain": chain, "subspace_dim": d, "levels": levels,
              "lr": 0.3}
    msg = encode(links, GRID, config)
    assert msg.nbits == msg.bits.total
    assert len(msg.data) == math.ceil(msg.nbits / 8)
    cfg, back = decode((msg.data, msg.nbits), GRID)
    assert cfg == config
    for a, b in zip(links, back):
        assert np.array_equal(a.values().numpy().view(np.uint32), b.values().numpy().view(np.uint32))
        assert np.array_equal(a.symbols, b.symbols)
    # the range coder gets close to the ideal length sum_c -n_c log2(n_c / n)
    assert msg.bits.symbols <= msg.bits.ideal_symbols + 64 * len(links)
    with pytest.raises(GenboundError):
        decode((msg.data, msg.nbits - 1), GRID)


def test_grid_index_round_trips_and_refuses_undeclared_values():
    for i, cfg in enumerate(GRID):
        assert GRID.index(cfg) == i
        assert GRID.config(i) == cfg
    assert GRID.bits == math.ceil(math.log2(GRID.size))
    with pytest.raises(GenboundError, match="not in the hyperparameter grid"):
        GRID.index({"method": "lora", "chain": 1, "subspace_dim": 51, "levels": 2, "lr": 0.1})


def _sub(ckpt_dir, method="lora", **kw):
    settings = dict(subspace_dim=250, lr=0.3, steps=120)
    settings.update(kw)
    return ckpt_dir(method, **settings)


@pytest.mark.parametrize("method", ["lora", "cola", "paca", "fft"])
def test_replaying_w_rebuilds_the_trained_tensors(ckpt_dir, method):
    ck = load_checkpoint(_sub(ckpt_dir, method, steps=30))
    ws = load_w(ck)
    assert sum(w.numel() for w in ws) == 250 and ck.meta.params["data_dependent"] == 250
    rep = Replay(ck)
    rep.set_w(ws[0])
    for w in ws[1:]:
        rep.next_link()
        rep.set_w(w)
    got = rep.tensors()
    for k, v in ck.tensors.items():
        torch.testing.assert_close(got[k], v, rtol=0, atol=1e-6, msg=k)
    # the model is theta_0 + P w: moving w moves the tensors, w = 0 gives back theta_0
    rep.set_w(torch.zeros_like(ws[-1]))
    assert any(not torch.allclose(rep.tensors()[k], v) for k, v in ck.tensors.items())


def test_subspace_training_learns(ckpt_dir):
    ck = load_checkpoint(_sub(ckpt_dir))
    assert ck.meta.results["train_accuracy"] > 0.85
    assert ck.meta.params["trainable"] == 250


def test_certificate_parts_recompute_and_decode(ckpt_dir):
    ck = load_checkpoint(_sub(ckpt_dir))
    cert = certify(ck, levels=3, qat_steps=60, progress=False)
    d = cert.to_dict()
    assert d["bits"] == d["bits_breakdown"]["total"]
    assert d["bits_breakdown"]["hyperparameters"] == DECLARED_GRID.length(d["config"]) <= DECLARED_GRID.bits
    assert math.isclose(recompute_bound(d), d["bound"], rel_tol=0, abs_tol=1e-9)
    # and by hand: the bound is where kl(train_error || q) reaches (K ln 2 + ln(2 sqrt(N) / delta)) / N
    budget = (d["bits"] * math.log(2) + math.log(2 * math.sqrt(d["n"]) / d["delta"])) / d["n"]

    def kl(p, q):
        return (p * math.log(p / q) if p else 0.0) + (1 - p) * math.log((1 - p) / (1 - q))

    assert math.isclose(kl(d["train_error"], d["bound"]), budget, rel_tol=1e-7)
    assert kl(d["train_error"], d["bound"] - 1e-6) < budget
    assert d["n"] == len(ck.load_splits().train) and d["delta"] == 0.05
    assert d["bound"] > d["train_error"]
    assert d["vacuous"] == (d["bound"] >= 1 - 1 / ck.meta.num_labels)
    # the reported message decodes to a model with exactly the reported training error
    cfg, links = decode((bytes.fromhex(d["message_hex"]), d["bits"]), DECLARED_GRID)
    assert cfg["levels"] == 3 and cfg["subspace_dim"] == 250
    from genbound.diagnostics.evaluate import evaluate

    rep = Replay(ck)
    rep.set_w(links[0].values())
    train_eval = evaluate(rep.model, ck.load_splits().train)
    assert train_eval.error == d["train_error"]
    # the smoothed cross-entropy certificate: same K, N and delta; its losses come from the decoded model
    sm = d["smoothed"]
    assert (sm["bits"], sm["n"], sm["delta"], sm["classes"]) == (d["bits"], d["n"], d["delta"],
                                                                 ck.meta.num_labels)
    assert math.isclose(sm["train_cross_entropy"], train_eval.loss, rel_tol=1e-5)
    assert math.isclose(recompute_smoothed(sm), sm["bound"], rel_tol=1e-9)
    assert sm["train_loss"] <= sm["bound"] and sm["test_loss"] is not None
    for row in sm["per_alpha"]:  # every smoothed loss lies in its interval [lo, hi]
        assert row["lo"] <= row["train_loss"] <= row["hi"]
    # non-vacuous on digits (N = 628, chance 0.8)
    assert not d["vacuous"]
    # quantization-aware fine-tuning helps over k-means alone
    plain = certify(ck, levels=3, qat_steps=0, progress=False)
    assert cert.train_error <= plain.train_error


def test_certificate_of_a_chain(ckpt_dir):
    ck = load_checkpoint(_sub(ckpt_dir, "cola"))
    cert = certify(ck, levels=5, qat_steps=20, progress=False)
    assert len(cert.dims) == 3 and sum(cert.dims) == 250
    assert math.isclose(recompute_bound(cert.to_dict()), cert.bound, abs_tol=1e-9)


def test_certificate_pac_bayes(ckpt_dir):
    ck = load_checkpoint(_sub(ckpt_dir))
    cert = certify(ck, levels=3, qat_steps=0, progress=False, pac_bayes=True,
                   pac_bayes_options={"steps": 20, "mc_batches": 50})
    pb = cert.pac_bayes
    assert pb["mc_error"] <= pb["mc_error_upper"] <= pb["bound"] <= 1


def test_cli_certify_json_and_bad_input(ckpt_dir, capsys):
    path = str(_sub(ckpt_dir))
    assert main(["certify", path, "--levels", "3", "--qat-steps", "5", "--json", "--no-progress"]) == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("bound", "bits", "train_error", "n", "delta", "vacuous", "test_error", "bits_breakdown"):
        assert key in out
    for key in ("symbols", "codebook", "counts", "hyperparameters"):
        assert key in out["bits_breakdown"]
    for key in ("bound", "alpha", "form", "train_loss", "test_loss", "bits", "n", "delta", "per_alpha", "vacuous"):
        assert key in out["smoothed"]
    assert out["smoothed"]["bits"] == out["bits"]
    for argv, msg in [(["certify", path, "--levels", "1"], "at least 2 levels"),
                      (["certify", path, "--delta", "0"], "delta"),
                      (["certify", path, "--delta", "1"], "delta"),
                      (["certify", path, "--levels", "6"], "not in the hyperparameter grid"),
                      (["certify", str(ckpt_dir("lora"))], "not trained in a subspace")]:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and msg in err


def test_cli_train_refuses_bad_subspace_dims(tmp_path, capsys):
    base = ["train", "--method", "lora", "--backbone", "mlp", "--rank", "4", "--steps", "2"]
    assert main([*base, "--subspace-dim", "0", "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "at least 1" in err
    assert main([*base, "--subspace-dim", "10000000", "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "exceeds" in err
    assert not (tmp_path / "b").exists()


def test_certificates_cover_fresh_held_out_errors(tmp_path):
    """Over fresh splits and seeds (each a new training sample and held-out sample), the certified error
    falls below the held-out error of the decoded model in at most a delta share of the trials. With 6
    trials and delta = 0.05, two or more failures would have probability < 0.04 if the bound holds."""
    from genbound.training.train import TrainConfig, train

    failures, trials = 0, 6
    for t in range(trials):
        cfg = TrainConfig(method="lora", backbone="mlp", dataset="digits", rank=4, alpha=8.0, steps=80, lr=0.3,
                          subspace_dim=100, seed=t, split_seed=100 + t, progress=False)
        path = train(cfg, tmp_path / f"t{t}").path
        cert = certify(load_checkpoint(path), levels=3, qat_steps=20, progress=False)
        failures += cert.bound < cert.test_error
        assert cert.train_error <= cert.bound
    assert failures <= 1


def test_plugin_mutual_information_and_fcmi():
    from genbound.bounds.fcmi import SupersampleRuns, fcmi_bound, plugin_mutual_information

    u = [0, 1] * 50
    assert plugin_mutual_information(u, [7] * 100) == 0.0
    assert math.isclose(plugin_mutual_information(u, [("a", x) for x in u]), math.log(2), rel_tol=1e-12)
    # against a direct computation from the joint table
    rng = np.random.default_rng(0)
    uu = rng.integers(0, 2, 200).tolist()
    ff = [int(x) if rng.random() < 0.7 else int(rng.integers(0, 3)) for x in uu]
    joint = np.zeros((2, 3))
    for a, b in zip(uu, ff):
        joint[a, b] += 1
    joint /= joint.sum()
    pu, pf = joint.sum(1, keepdims=True), joint.sum(0, keepdims=True)
    nz = joint > 0
    direct = float((joint[nz] * np.log(joint[nz] / (pu @ pf)[nz])).sum())
    assert math.isclose(plugin_mutual_information(uu, ff), direct, rel_tol=1e-10)
    # a memorizing learner (right on its training half, wrong on the other) has I = ln 2 per pair and gap 1
    m, n = 8, 5
    masks = rng.integers(0, 2, (m, n))
    labels = np.zeros((n, 2), dtype=int)
    preds = np.stack([np.where(np.arange(2)[None, :] == masks[k][:, None], 0, 1) for k in range(m)])
    est = fcmi_bound([SupersampleRuns(masks, preds, labels)])
    assert math.isclose(est.mean_gap, 1.0)
    for i in range(n):
        col = masks[:, i]
        expected = 0.0 if col.min() == col.max() else None
        got = SupersampleRuns(masks, preds, labels).per_example_mi()[i]
        if expected is not None:
            assert got == 0.0
        else:
            p = col.mean()
            assert math.isclose(got, -(p * math.log(p) + (1 - p) * math.log(1 - p)), rel_tol=1e-9)
    # a learner that ignores its data has I = 0 and gap 0
    const = np.zeros((m, n, 2), dtype=int)
    est0 = fcmi_bound([SupersampleRuns(masks, const, labels)])
    assert est0.bound == 0.0 and est0.mean_gap == 0.0


def test_fcmi_planner_runs_and_resumes(tmp_path):
    from analysis import fcmi

    argv = ["--preset", "mlp", "--out", str(tmp_path), "--methods", "lora", "--n", "30", "--masks", "2",
            "--supersamples", "1"]
    assert fcmi.main(argv) == 0
    first = json.loads((tmp_path / "fcmi.json").read_text())
    stamp = (tmp_path / "derived" / "lora-z0-u0.json").stat().st_mtime_ns
    assert fcmi.main(argv) == 0
    assert (tmp_path / "derived" / "lora-z0-u0.json").stat().st_mtime_ns == stamp  # reused, not retrained
    assert json.loads((tmp_path / "fcmi.json").read_text())["results"] == first["results"]
    assert "expected" in first["results"]["lora"]["label"].lower()
    assert fcmi.main([*argv[:-2], "--supersamples", "0"]) == 2


def test_certificate_report_lists_both_certificates(tmp_path):
    """analysis.certificates end to end on one mlp run: the doc holds the 0-1 and the smoothed certificate,
    each equal to what its cached certificate says, and the figure is named after the doc."""
    from analysis import certificates

    doc = tmp_path / "docs" / "results" / "cert.md"
    argv = ["--preset", "mlp", "--out", str(tmp_path / "out"), "--methods", "lora", "--doc", str(doc)]
    assert certificates.main(argv) == 0
    text = doc.read_text()
    cert = json.loads((tmp_path / "out" / "certificates.json").read_text())["certificates"]["lora"]
    assert f"**{cert['bound']:.3f}**" in text and f"**{cert['smoothed']['bound']:.3f}**" in text
    assert "prediction-smoothed cross-entropy" in text and "../images/cert.png" in text
    assert (tmp_path / "docs" / "images" / "cert.png").is_file()
    assert certificates.main([*argv[:-2], "--methods", "vera"]) == 2  # outside the declared grid
    assert certificates.main([*argv[:-2], "--levels", "6"]) == 2  # 6 levels are outside the declared grid

    # Several levels: each certified from its own cache entry, the smallest bound kept, every one listed.
    assert certificates.main([*argv[:-2], "--levels", "2", "3"]) == 0
    many = json.loads((tmp_path / "out" / "certificates.json").read_text())["certificates"]["lora"]
    tried = many["levels_tried"]
    assert set(tried) == {"2", "3"}
    assert tried["3"]["bound"] == cert["bound"]  # the preset's own level reuses the cache written above
    assert many["bound"] == min(t["bound"] for t in tried.values())
    assert str(many["levels"]) == min(tried, key=lambda lv: tried[lv]["bound"])
    assert (tmp_path / "out" / "derived" / "lora-s0.L2.cert.json").is_file()
