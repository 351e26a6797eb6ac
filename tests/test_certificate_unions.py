"""Certificates a referee signs: one delta per question (genbound.bounds.union), every setting the decoder needs
coded from the declared grid file (genbound/assets/certificate-grid.json), and a certificate in plain words."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from genbound.bounds.certificate import DECLARED_GRID, GRID_FILE, certify, run_config
from genbound.bounds.codec import HyperGrid, QuantizedVector, decode, encode
from genbound.bounds.union import Union, best_certificate, member_delta, records
from genbound.checkpoints.checkpoint import load_checkpoint
from genbound.cli import main
from genbound.core.errors import GenboundError
from genbound.methods.subspace import link_dims


def _sub(ckpt_dir):
    return ckpt_dir("lora", subspace_dim=250, lr=0.3, steps=120)


def test_a_union_over_two_budgets_certifies_each_at_half_delta_and_a_report_refuses_a_mix(ckpt_dir):
    from analysis.certificates import QUESTIONS, split_settings

    q = QUESTIONS["bbc-budgets"]
    assert len(q.members) == 3  # the 32- and 128-token budgets and the data-dependent centre (minilm-ddprior)
    for preset in q.members:
        s = split_settings(preset)
        assert math.isclose(s["delta"], q.delta / 3)
        (rec,) = s["unions"]
        assert rec["member"] == preset and rec["share"] == 1 / 3 and rec["members"] == list(q.members)
    assert split_settings("mlp")["delta"] == 0.05 and split_settings("mlp")["unions"] == []

    # a real certificate under a two-budget union: delta / 2, the union recorded, the sentence says so
    ck = load_checkpoint(_sub(ckpt_dir))
    u = Union("two budgets", "budget", ("short", "long"), 0.05)
    half = certify(ck, levels=3, qat_steps=0, delta=member_delta([u]), unions=records([u], {"two budgets": "short"}),
                   progress=False).to_dict()
    assert half["delta"] == 0.025 and half["unions"][0]["share"] == 0.5
    assert "one of 2 budgets" in half["statement"] and "97.5%" in half["statement"]
    with pytest.raises(GenboundError, match="split delta"):  # the full delta under a union that splits it
        certify(ck, levels=3, qat_steps=0, delta=0.05, unions=records([u], {"two budgets": "short"}), progress=False)

    # the other budget at its share: the best of the two is taken; certified at the full delta it is refused
    other = dict(half, unions=records([u], {"two budgets": "long"}), bound=half["bound"] - 0.01)
    assert best_certificate([half, other]) is other
    full = dict(half, delta=0.05, unions=[], bound=0.1)
    with pytest.raises(GenboundError, match="different unions"):
        best_certificate([half, full])
    with pytest.raises(GenboundError, match="split delta"):
        best_certificate([dict(half, delta=0.05), dict(other, delta=0.05)])
    with pytest.raises(GenboundError, match="record no union"):
        best_certificate([full, dict(full, bound=0.2)])
    # a union over an axis the message does not code cannot be paid by the code
    with pytest.raises(GenboundError, match="not coded"):
        Union("x", "budget", ("a", "b"), 0.05, "code")


def _links(cfg, rng):
    return [QuantizedVector.from_tensors(torch.tensor([-0.5, 0.25, 1.0]), torch.tensor(rng.integers(0, 3, n)))
            for n in link_dims(cfg["subspace_dim"], cfg["chain"])]


def test_a_changed_max_length_changes_the_message_and_its_length(ckpt_dir):
    cfg = {"method": "lora", "chain": 1, "subspace_dim": 50, "levels": 3, "lr": 0.3, "rate": 0.0, "max_length": 32,
           "rank": 8, "alpha": 16.0, "seed": 0, "targets": None, "exclude": None,
           "paca_columns": "random"}
    links = _links(cfg, np.random.default_rng(0))
    a = encode(links, DECLARED_GRID, cfg)
    b = encode(links, DECLARED_GRID, {**cfg, "max_length": 128})
    assert a.data != b.data and b.nbits > a.nbits
    assert b.nbits - a.nbits == b.bits.hyperparameters - a.bits.hyperparameters == 2  # gamma(4) - gamma(2) = 5 - 3
    assert decode(a, DECLARED_GRID)[0]["max_length"] == 32 and decode(b, DECLARED_GRID)[0]["max_length"] == 128
    # a setting outside the grid is refused by certify, naming the grid's values
    ck = load_checkpoint(_sub(ckpt_dir))
    assert run_config(ck, 3, 0.0)["max_length"] is None  # the mlp has no token length: the grid's "none"
    ck.meta.max_length = 100
    with pytest.raises(GenboundError, match=r"max_length = 100 is not in .*\(none, 32, 64, 128, 256, 512\)"):
        certify(ck, levels=3, qat_steps=0, progress=False)


def test_the_grid_file_is_versioned_prefix_free_and_in_every_certificate(ckpt_dir):
    data = json.loads(GRID_FILE.read_text())
    assert data["version"] == DECLARED_GRID.version and data["format"] == "genbound-certificate-grid"
    names = [k for k, _ in DECLARED_GRID.values]
    for needed in ("method", "chain", "subspace_dim", "levels", "lr", "max_length", "rank", "alpha", "seed"):
        assert needed in names
    assert DECLARED_GRID.kraft_sum() <= 1.0
    # Kraft's sum by enumeration over a small mixed grid equals kraft_sum and each code round-trips
    from genbound.bounds.codec import BitReader, BitWriter

    g = HyperGrid.of({"a": [1, 2, 3], "b": [None, 32, 64, 128, 256], "c": [0.1, 0.3]}, {"b": "gamma"})
    total = 0.0
    for cfg in g:
        w = BitWriter()
        g.write(w, cfg)
        assert w.nbits == g.length(cfg)
        total += 2.0 ** -w.nbits
        assert g.read(BitReader(w.to_bytes(), w.nbits)) == cfg
    assert math.isclose(total, g.kraft_sum()) and total <= 1.0
    ck = load_checkpoint(_sub(ckpt_dir))
    cert = certify(ck, levels=3, qat_steps=0, progress=False).to_dict()
    assert cert["grid_digest"] == DECLARED_GRID.digest and cert["grid_digest"].startswith("sha256:")
    assert cert["bits_breakdown"]["hyperparameters"] == DECLARED_GRID.length(cert["config"])
    assert cert["config"]["rank"] == 4 and cert["config"]["alpha"] == 8.0 and cert["config"]["seed"] == 0


def test_package_data_ships_the_grid_file():
    from pathlib import Path

    import tomllib

    pp = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())
    globs = pp["tool"]["setuptools"]["package-data"]["genbound"]
    assert any(GRID_FILE.match(g) or g == "assets/*" for g in globs)


def test_the_default_subspace_run_certifies_and_reads_plainly(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--method", "lora", "--backbone", "mlp", "--rank", "4", "--alpha", "8", "--steps", "20",
                 "--subspace-dim", "50", "--out", str(out), "--no-progress"]) == 0
    capsys.readouterr()
    assert load_checkpoint(out).meta.hyperparameters["lr"] == dict(DECLARED_GRID.defaults)["lr"]
    assert main(["certify", str(out), "--levels", "3", "--qat-steps", "0", "--no-progress"]) == 0
    text = capsys.readouterr().out
    n = len(load_checkpoint(out).load_splits().train)
    assert text.startswith(f"With probability at least 95% over the draw of the {n:,} training images, the decoded "
                           "model's test error is at most ")
    assert str(out) in text and "Assumptions:" in text and "i.i.d." in text
    assert main(["certify", str(out), "--levels", "3", "--qat-steps", "0", "--no-progress", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["checkpoint"] == str(out) and d["statement"].endswith(".") and len(d["assumptions"]) >= 4
    shown = float(d["statement"].split("at most ")[1][:4])
    assert d["bound"] <= shown < d["bound"] + 0.01  # rounded up, never below the certified bound
    # without --subspace-dim the default learning rate stays 5e-4
    assert main(["train", "--method", "lora", "--backbone", "mlp", "--rank", "4", "--steps", "2",
                 "--out", str(tmp_path / "plain"), "--no-progress"]) == 0
    assert load_checkpoint(tmp_path / "plain").meta.hyperparameters["lr"] == 5e-4


def test_best_of_two_reports_refuses_a_mix(tmp_path, capsys):
    from analysis import certificates
    from analysis.certificates import split_settings

    def summary(name, preset, delta, unions, bound):
        cert = {"method": "lora", "bound": bound, "bits": 800, "train_error": 0.1, "delta": delta, "unions": unions,
                "statement": "s"}
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({"preset": {"name": preset}, "certificates": {"lora": cert}}))
        return str(path)

    third = split_settings("minilm")["delta"]
    short = summary("short", "cert-minilm", third, split_settings("minilm")["unions"], 0.52)
    long_ = summary("long", "cert-minilm-long", third, split_settings("minilm-long")["unions"], 0.46)
    assert certificates.main(["--best-of", short, long_]) == 0
    best = json.loads(capsys.readouterr().out)
    assert best["bound"] == 0.46 and best["delta"] == third and best["preset"] == "cert-minilm-long"
    old = summary("old", "cert-minilm", 0.05, [], 0.52)  # the short budget as first certified, at the full delta
    assert certificates.main(["--best-of", old, long_]) == 2
    err = capsys.readouterr().err
    assert "different unions" in err and len(err.strip().splitlines()) == 1
