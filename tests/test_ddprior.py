"""The certificate with a data-dependent coding centre (genbound.bounds.ddprior, genbound.data.prior_split):
sound by construction checks on the pretrained mlp / digits."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch

from genbound.bounds.certificate import DECLARED_GRID, Replay, load_w
from genbound.bounds.codec import decode
from genbound.bounds.ddprior import DECLARED_PRIOR, centre_digest, certify_prior, recompute_prior_bound
from genbound.checkpoints.checkpoint import load_checkpoint
from genbound.checkpoints.restore import full_splits
from genbound.cli import main
from genbound.core.errors import GenboundError
from genbound.data.evalset import EvalSet
from genbound.data.prior_split import prior_splits, split_train
from genbound.diagnostics.evaluate import evaluate
from genbound.training.train import TrainConfig, train


def _config(**kw) -> TrainConfig:
    settings = dict(method="lora", backbone="mlp", dataset="digits", rank=4, alpha=8.0, steps=120, lr=0.3,
                    subspace_dim=250, prior_fraction=0.5, progress=False)
    settings.update(kw)
    return TrainConfig(**settings)


@pytest.fixture(scope="module")
def centre_run(tmp_path_factory):
    """A subspace run of the mlp trained on the prior half of digits' training split (the centre)."""
    path = train(_config(), tmp_path_factory.mktemp("centre") / "c").path
    ck = load_checkpoint(path)
    return ck, full_splits(ck.meta, ck.load_backbone())


def test_split_is_seeded_disjoint_and_complete():
    a = split_train(101, 0.3, 7)
    assert a.n_prior == 30 and a.n_bound == 71
    both = torch.cat([a.prior, a.bound]).sort().values
    assert torch.equal(both, torch.arange(101))
    assert torch.equal(a.prior, split_train(101, 0.3, 7).prior) and a.digest() == split_train(101, 0.3, 7).digest()
    assert not torch.equal(a.prior, split_train(101, 0.3, 8).prior)
    for bad in (0, 1, 1.5, -0.1, True, 0.001):
        with pytest.raises(GenboundError):
            split_train(101, bad, 0)


def test_centre_depends_only_on_the_prior_part(tmp_path, centre_run):
    """Changing every bound-part example (features and labels) changes neither the recorded split of the run nor
    its w, bit for bit; changing one prior-part example does."""
    ck, splits = centre_run
    part = split_train(len(splits.train), 0.5, DECLARED_PRIOR["split_seed"])
    tr = splits.train
    feats = {k: v.clone() for k, v in tr.features.items()}
    labels = tr.labels.clone()
    g = torch.Generator().manual_seed(1)
    for v in feats.values():
        v[part.bound] = torch.randn(v[part.bound].shape, generator=g).to(v.dtype)
    labels[part.bound] = (labels[part.bound] + 1) % len(splits.classes)
    other = replace(splits, train=EvalSet(feats, labels), info={})
    run = train(_config(), tmp_path / "other", splits=other).path
    again = load_checkpoint(run)
    assert again.meta.split_digest == ck.meta.split_digest == prior_splits(splits, 0.5, 0).digest()
    assert prior_splits(splits, 0.5, 0).info is not splits.info  # no cached digest of the full splits carried over
    assert torch.equal(load_w(again)[0], load_w(ck)[0])
    # a prior-part example does move it
    labels2 = tr.labels.clone()
    labels2[part.prior[:20]] = (labels2[part.prior[:20]] + 1) % len(splits.classes)
    moved = train(_config(), tmp_path / "moved", splits=replace(splits, train=EvalSet(tr.features, labels2),
                                                                  info={})).path
    assert not torch.equal(load_w(load_checkpoint(moved))[0], load_w(ck)[0])


def test_certificate_counts_the_bound_part_and_recomputes(centre_run, tmp_path):
    ck, splits = centre_run
    cert = certify_prior(ck, splits, levels=3, posterior_steps=30, qat_steps=10, progress=False)
    d = json.loads(json.dumps(cert.to_dict()))  # what a JSON record holds
    part = split_train(len(splits.train), 0.5, 0)
    p = d["prior"]
    # n is the bound part; the recorded split, centre and delta share are the ones used
    assert d["n"] == p["n_bound"] == part.n_bound == len(splits.train) - round(0.5 * len(splits.train))
    assert p["n_prior"] == ck.meta.n_train == part.n_prior
    assert p["prior_positions_digest"] == part.digest() and p["fraction"] == 0.5 and p["seed"] == 0
    assert p["centre_digest"] == centre_digest(load_w(ck)[0])
    assert d["delta"] == 0.05 and d["unions"] == []  # one declared fraction: no union to pay
    assert set(p["candidates"]) == {"centre", "posterior"}
    assert d["bound"] == min(c["bound"] for c in p["candidates"].values())
    assert p["candidates"]["centre"]["levels_used"] == 1
    # decode(encode): the message alone (plus the centre) rebuilds the model whose error is counted on S_b
    cfg, links = decode((bytes.fromhex(d["message_hex"]), d["bits"]), DECLARED_GRID)
    assert cfg["subspace_dim"] == 250 and cfg["levels"] == 3
    rep = Replay(ck)
    rep.set_w(load_w(ck)[0] + links[0].values())
    assert evaluate(rep.model, splits.train.index(part.bound)).error == d["train_error"]
    # the bound by hand: kl(train_error || bound) = (K ln 2 + ln(2 sqrt(n) / delta)) / n
    budget = (d["bits"] * math.log(2) + math.log(2 * math.sqrt(d["n"]) / d["delta"])) / d["n"]
    q, e = d["bound"], d["train_error"]
    kl = (e * math.log(e / q) if e else 0.0) + (1 - e) * math.log((1 - e) / (1 - q))
    assert math.isclose(kl, budget, rel_tol=1e-7) and d["bits"] == d["bits_breakdown"]["total"]
    # and independently, from the record, the checkpoint and the rebuilt data
    err, bound = recompute_prior_bound(d, ck, splits)
    assert err == d["train_error"] and math.isclose(bound, d["bound"], abs_tol=1e-9)
    assert "bound-part training images" in d["statement"] and not d["vacuous"]
    # tools/recheck_ddprior.py, which does not use bounds.ddprior, agrees (exit 0), and refuses an edited record
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("recheck_ddprior", Path(__file__).resolve().parent.parent / "tools"
                                                  / "recheck_ddprior.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    rec = tmp_path / "rec.json"
    rec.write_text(json.dumps(d))
    assert tool.main([str(rec), str(ck.path)]) == 0
    rec.write_text(json.dumps(dict(d, train_error=d["train_error"] / 2)))
    assert tool.main([str(rec), str(ck.path)]) == 1


def test_fraction_union_is_paid_by_delta(centre_run):
    """With two declared fractions the certificate is certified at delta / 2 and records the union."""
    ck, splits = centre_run
    cert = certify_prior(ck, splits, levels=3, prior={"fractions": (0.5, 0.25), "split_seed": 0}, progress=False,
                         measure_test=False)
    assert math.isclose(cert.delta, 0.025) and cert.unions[0]["axis"] == "prior_fraction"
    assert cert.unions[0]["share"] == 0.5 and cert.test_error is None


def test_refusals(centre_run, ckpt_dir):
    ck, splits = centre_run
    with pytest.raises(GenboundError, match="not declared"):
        certify_prior(ck, splits, fraction=0.3, progress=False)
    full = load_checkpoint(ckpt_dir("lora", subspace_dim=250, lr=0.3, steps=120))
    with pytest.raises(GenboundError, match="not trained on the prior part"):
        certify_prior(full, progress=False)
    with pytest.raises(GenboundError, match="at least 2 levels"):
        certify_prior(ck, splits, levels=1)


def test_cli_train_and_certify_with_a_prior_fraction(tmp_path, capsys):
    out = str(tmp_path / "c")
    assert main(["train", "--method", "lora", "--backbone", "mlp", "--rank", "4", "--alpha", "8", "--steps", "40",
                 "--lr", "0.3", "--subspace-dim", "250", "--prior-fraction", "0.5", "--out", out]) == 0
    capsys.readouterr()
    ck = load_checkpoint(out)
    assert ck.meta.hyperparameters["prior_fraction"] == 0.5 and len(ck.load_splits().train) == ck.meta.n_train
    assert main(["certify", out, "--prior-fraction", "0.5", "--levels", "3", "--json", "--no-progress"]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["n"] == rec["prior"]["n_bound"] and rec["prior"]["chosen"] == "centre"
    assert main(["certify", out, "--prior-fraction", "0.5", "--pac-bayes"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--pac-bayes" in err
    assert main(["train", "--method", "lora", "--backbone", "mlp", "--steps", "2", "--prior-fraction", "1", "--out",
                 str(tmp_path / "x")]) == 2


def test_analysis_certifies_a_prior_preset(tmp_path, monkeypatch):
    """analysis.certificates on an mlp preset with a data-dependent centre: the run is trained on the prior part,
    the report states the split, n and the ceiling, and the cached record is the certificate's."""
    from analysis import certificates
    from analysis.presets import Preset

    preset = Preset("cert-mlp-prior", "mlp on the prior half of digits", backbone="mlp", dataset="digits", rank=4,
                    alpha=8.0, chain=3, lr=0.3, lr_full=0.3, steps=120, batch_size=32,
                    extra={"subspace_dim": 250, "prior_fraction": 0.5, "prior_seed": 0})
    settings = {"levels": 3, "qat_steps": 5, "qat_lr": 0.01, "rate": 0.0, "delta": 0.05, "prior_fraction": 0.5,
                "posterior_steps": 5, "posterior_lr": 0.01}
    monkeypatch.setitem(certificates.PRESETS, "mlp-prior", (preset, settings))
    doc = tmp_path / "cert.md"
    assert certificates.main(["--preset", "mlp-prior", "--out", str(tmp_path / "out"), "--methods", "lora",
                              "--doc", str(doc)]) == 0
    cert = json.loads((tmp_path / "out" / "certificates.json").read_text())["certificates"]["lora"]
    ck = load_checkpoint(tmp_path / "out" / "runs" / "lora-s0")
    assert cert["prior"]["n_prior"] == ck.meta.n_train and cert["n"] == cert["prior"]["n_bound"]
    text = doc.read_text()
    assert f"**{cert['bound']:.3f}**" in text and "Data-dependent centre" in text
    assert f"n = {cert['n']:,} bound-part examples" in text and "Ceiling" in text
