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
from genbound.checkpoint import load_checkpoint
from genbound.cli import main
from genbound.errors import GenboundError
from genbound.subspace import KroneckerProjection, link_dims


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
    assert d["bits_breakdown"]["hyperparameters"] == DECLARED_GRID.bits
    assert math.isclose(recompute_bound(d), d["bound"], rel_tol=0, abs_tol=1e-9)
    assert d["bound"] > d["train_error"]
    assert d["vacuous"] == (d["bound"] >= 1 - 1 / ck.meta.num_labels)
    # the reported message decodes to a model with exactly the reported training error
    cfg, links = decode((bytes.fromhex(d["message_hex"]), d["bits"]), DECLARED_GRID)
    assert cfg["levels"] == 3 and cfg["subspace_dim"] == 250
    from genbound.evaluate import evaluate

    rep = Replay(ck)
    rep.set_w(links[0].values())
    assert evaluate(rep.model, ck.load_splits().train).error == d["train_error"]
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
    assert "at least 1" in capsys.readouterr().err
    assert main([*base, "--subspace-dim", "10000000", "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "exceeds" in err
    assert not (tmp_path / "b").exists()
