"""``genbound train --no-final-eval`` (``train(..., final_eval=False)``): the run trains exactly as with the final
evaluation, its checkpoint says the losses were not computed (no invented numbers), and every reader of the
losses measures them itself: the measured values equal those an identical run recorded at training."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch

from genbound.bounds.certificate import certify
from genbound.bounds.report import report_for_checkpoint
from genbound.checkpoints.checkpoint import load_checkpoint, load_meta
from genbound.cli import main
from genbound.report.compare import compare
from genbound.training.train import TrainConfig, train

KEYS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "test_loss", "test_accuracy", "gap", "gap_01")


def _config(**kw) -> TrainConfig:
    settings = dict(method="lora", backbone="mlp", dataset="digits", rank=4, alpha=8.0, steps=6, batch_size=32,
                    lr=1e-2, seed=0, progress=False)
    settings.update(kw)
    return TrainConfig(**settings)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same run twice: with the final evaluation (the reference) and without."""
    root = tmp_path_factory.mktemp("final-eval")
    return train(_config(), root / "eval"), train(_config(), root / "no-eval", final_eval=False)


def _close(a: dict, b: dict) -> None:
    for k in KEYS:
        assert math.isclose(a[k], b[k], rel_tol=1e-6, abs_tol=1e-9), k


def test_the_checkpoint_records_that_the_losses_were_not_computed(runs):
    ev, skipped = runs
    raw = json.loads((skipped.path / "genbound.json").read_text())
    assert raw["final_eval"] is False and raw["results"] == {}
    assert json.loads((ev.path / "genbound.json").read_text())["final_eval"] is True
    assert set(KEYS) <= set(ev.meta.results)
    assert load_meta(skipped.path).final_eval is False and load_meta(ev.path).final_eval is True
    # only the evaluation is skipped: the training is the same, bit for bit
    assert (skipped.path / "tensors.safetensors").read_bytes() == (ev.path / "tensors.safetensors").read_bytes()
    assert skipped.meta.history == ev.meta.history  # the per-epoch validation still runs


def test_compare_measures_the_fit_the_checkpoint_lacks(runs):
    ev, skipped = runs
    report = compare(skipped.path, ev.path, progress=False)
    fit = {r.quantity: r for r in report.rows if r.section == "fit"}
    assert math.isclose(fit["train loss"].a, ev.meta.results["train_loss"], rel_tol=1e-6)
    assert math.isclose(fit["test accuracy"].a, ev.meta.results["test_accuracy"], rel_tol=1e-6)
    assert fit["train loss"].a == fit["train loss"].b  # the same model, measured here and recorded there
    assert any("--no-final-eval" in n for n in report.notes)


def test_bounds_measure_the_empirical_fit(runs):
    ev, skipped = runs
    rep = report_for_checkpoint(skipped.path, compression=False, theorem=False)
    _close(rep.empirical, ev.meta.results)


def test_a_sweep_measures_and_caches_the_fit(runs, tmp_path, monkeypatch):
    import analysis.sweep as S

    ev, skipped = runs
    spec = SimpleNamespace(name="no-eval", path=skipped.path)
    _close(S.cached_results(spec, tmp_path, "cpu"), ev.meta.results)
    assert (tmp_path / "derived" / "no-eval.fit.json").is_file()
    monkeypatch.setattr(S, "evaluate_source", lambda *a, **k: pytest.fail("measured again"))
    _close(S.cached_results(spec, tmp_path, "cpu"), ev.meta.results)  # read from the cache


def test_certify_measures_the_unquantized_errors(tmp_path):
    sub = dict(subspace_dim=50, lr=0.3, steps=12)
    ev = train(_config(**sub), tmp_path / "eval")
    skipped = train(_config(**sub), tmp_path / "no-eval", final_eval=False)
    a = certify(load_checkpoint(skipped.path), levels=3, qat_steps=0, progress=False)
    b = certify(load_checkpoint(ev.path), levels=3, qat_steps=0, progress=False)
    assert math.isclose(a.train_error_trained, b.train_error_trained, abs_tol=1e-12)
    assert math.isclose(a.test_error_trained, b.test_error_trained, abs_tol=1e-12)
    assert a.bound == b.bound


def test_cli_flag(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--method", "lora", "--backbone", "mlp", "--dataset", "digits", "--rank", "4",
                 "--steps", "3", "--out", str(out), "--no-final-eval", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "final evaluation skipped (--no-final-eval" in printed and "accuracy" not in printed  # no loss table
    assert load_meta(out).final_eval is False and load_meta(out).results == {}


def test_the_runs_report_measures_the_fit(runs):
    from genbound.report.runs import ReportOptions, measure_run
    from genbound.sources.context import BuildCache

    ev, skipped = runs
    opts = ReportOptions(data_bounds=False, figures=False)
    rec = measure_run(skipped.path, opts, torch.device("cpu"), BuildCache(), progress=False)
    for k in ("test_accuracy", "train_loss", "test_loss", "gap", "gap_01"):
        assert math.isclose(rec.values[k], ev.meta.results[k], rel_tol=1e-6, abs_tol=1e-9), k
    assert any("--no-final-eval" in n for n in rec.notes)
