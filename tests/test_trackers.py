"""genbound train --report-to: the scalars TensorBoard's event files and MLflow's local file store hold equal the
checkpoint's own results and the diagnostics genbound computes from the checkpoint (genbound.diagnostics.spectra,
genbound.diagnostics.intruders), read back with each tracker's own reader. Nothing reaches the network."""

from __future__ import annotations

import json

import pytest
from trainer_setup import SplitRows, lora_bert

from genbound.checkpoints.checkpoint import load_checkpoint
from genbound.cli import main
from genbound.diagnostics.intruders import intruders
from genbound.diagnostics.spectra import spectra

ARGS = ["train", "--method", "lora", "--backbone", "mlp", "--dataset", "digits", "--rank", "4", "--steps", "12",
        "--batch-size", "32", "--lr", "1e-2", "--seed", "0", "--device", "cpu", "--no-progress", "--json",
        "--log-every", "4", "--diagnostics-every", "6"]


def _expected(ckpt_path) -> dict[str, float]:
    ck = load_checkpoint(ckpt_path)
    ups = ck.layer_updates()
    sp = spectra(ups, top_k=10)
    want = {f"final/{k}": v for k, v in ck.meta.results.items()}
    for layer in sp.layers:
        want[f"dW/{layer.name}/spectral_norm"] = layer.spectral_norm
        want[f"dW/{layer.name}/frobenius_norm"] = layer.frobenius_norm
        want[f"dW/{layer.name}/stable_rank"] = layer.stable_rank
    want["intruders/total"] = float(intruders(ck.base_weights(), ups, k=10, eps=0.5).total)
    return want


def _final_step(ckpt_path) -> int:
    return int(load_checkpoint(ckpt_path).meta.metrics["steps"])


def test_tensorboard_scalars_equal_the_checkpoint(tmp_path, capsys):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, logs = tmp_path / "run", tmp_path / "logs"
    assert main(ARGS + ["--out", str(out), "--report-to", "tensorboard", "--log-dir", str(logs)]) == 0
    json.loads(capsys.readouterr().out)
    acc = EventAccumulator(str(logs / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    step = _final_step(out)
    for key, value in _expected(out).items():
        assert key in tags, key
        last = [e for e in acc.Scalars(key) if e.step == step][-1]
        assert last.value == pytest.approx(value, rel=1e-6, abs=1e-6), key
    running = [e.step for e in acc.Scalars("train/loss_running")]
    assert running == [4, 8, 12]
    assert 6 in {e.step for e in acc.Scalars("intruders/total")}  # the --diagnostics-every schedule


def test_mlflow_file_store_equals_the_checkpoint(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")  # before mlflow is imported: no network
    pytest.importorskip("mlflow")
    import mlflow

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out, logs = tmp_path / "run", tmp_path / "logs"
    assert main(ARGS + ["--out", str(out), "--report-to", "mlflow", "--log-dir", str(logs)]) == 0
    capsys.readouterr()
    client = mlflow.MlflowClient(tracking_uri=(logs / "mlruns").resolve().as_uri())
    exp = client.get_experiment_by_name("genbound")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED" and run.data.params["method"] == "lora"
    step = _final_step(out)
    for key, value in _expected(out).items():
        hist = [m for m in client.get_metric_history(run.info.run_id, key) if m.step == step]
        assert hist and hist[-1].value == pytest.approx(value, rel=1e-6, abs=1e-6), key


def test_unknown_tracker_is_one_line(tmp_path, capsys):
    assert main(ARGS + ["--out", str(tmp_path / "r"), "--report-to", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "tensorboard" in err and not (tmp_path / "r").exists()


def test_trainer_callback_logs_to_tensorboard(tmp_path):
    """The HF Trainer with report_to=["tensorboard"]: GenboundCallback's dW scalars at the last step equal the
    spectra of the adapter the Trainer saved there (read by genbound.sources.peft_import)."""
    pytest.importorskip("peft")
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from transformers import Trainer, TrainingArguments

    from genbound.sources.peft_import import load_peft
    from genbound.training.hf_trainer import GenboundCallback

    folder, splits, pm = lora_bert(tmp_path)
    out = tmp_path / "run"
    args = TrainingArguments(output_dir=str(out), max_steps=4, per_device_train_batch_size=8, save_steps=4,
                             logging_steps=2, eval_strategy="steps", eval_steps=2, report_to=["tensorboard"],
                             seed=3, use_cpu=True, learning_rate=1e-2,
                             save_strategy="steps", disable_tqdm=True)
    cb = GenboundCallback(every=100, diagnostics_every=2)
    Trainer(model=pm, args=args, train_dataset=SplitRows(splits.train), eval_dataset=SplitRows(splits.val),
            callbacks=[cb]).train()
    acc = EventAccumulator(str(out / "genbound" / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    from genbound.diagnostics.spectra import spectra

    sp = spectra(load_peft(out / "checkpoint-4", resolve=False).layer_updates(), top_k=10)
    assert sp.layers
    for layer in sp.layers:
        for attr in ("spectral_norm", "frobenius_norm", "stable_rank"):
            key = f"dW/{layer.name}/{attr}"
            assert key in tags
            last = [e for e in acc.Scalars(key) if e.step == 4][-1]
            assert last.value == pytest.approx(getattr(layer, attr), rel=1e-6, abs=1e-6), key
    assert {2, 4} <= {e.step for e in acc.Scalars("dW/overall/spectral_norm")}
    assert "intruders/total" in tags and "val/loss" in tags and "gap/val_minus_train" in tags
    assert [e.value for e in acc.Scalars("val/loss")] == pytest.approx([cb.logged[s]["val/loss"] for s in (2, 4)])


def test_wandb_is_offline(tmp_path, monkeypatch):
    """wandb runs in offline mode only: the run is a local offline-run folder (nothing is sent)."""
    pytest.importorskip("wandb")
    from genbound.training.trackers import open_trackers

    monkeypatch.setenv("WANDB_SILENT", "true")
    (t,) = open_trackers(["wandb"], tmp_path, "smoke", {"method": "lora"})
    assert t.run.settings.mode == "offline"
    t.log({"final/gap": 0.25}, 3)
    t.close()
    assert list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))


def test_hessian_every_k_steps_leaves_training_unchanged(tmp_path):
    """--hessian-every: the logged top eigenvalue at the last step is the checkpoint's own (genbound hessian on the
    same seeded 256 training examples), and the training run is bit-identical to one without the monitor."""
    import torch

    from genbound.diagnostics.hessian import hessian_from_checkpoint
    from genbound.training.trackers import TrainMonitor
    from genbound.training.train import TrainConfig, train

    cfg = dict(method="lora", backbone="mlp", rank=4, alpha=8.0, steps=12, lr=1e-2, seed=0, progress=False)
    plain = train(TrainConfig(**cfg), tmp_path / "plain")
    monitor = TrainMonitor([], log_every=4, hessian_every=6)
    watched = train(TrainConfig(**cfg), tmp_path / "watched", monitor=monitor)
    assert sorted(s for s, v in monitor.logged.items() if "hessian/top_eigenvalue" in v) == [6, 12]
    a, b = load_checkpoint(plain.path), load_checkpoint(watched.path)
    assert a.meta.results == b.meta.results
    for k, v in a.tensors.items():
        assert torch.equal(v, b.tensors[k]), k
    want = hessian_from_checkpoint(watched.path, samples=256, seed=0, top_k=1, trace=False).eigen.top[0]
    assert monitor.logged[12]["hessian/top_eigenvalue"] == pytest.approx(float(want), rel=1e-3)


def test_trainer_callback_logs_into_the_trainers_mlflow_run(tmp_path, monkeypatch):
    """report_to=["mlflow"]: the Trainer's MLflowCallback opens the run (local file store), GenboundCallback logs
    the adapter's dW into that same run; the values equal the spectra of the adapter saved at the last step."""
    pytest.importorskip("peft")
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    mlflow = pytest.importorskip("mlflow")
    from transformers import Trainer, TrainingArguments

    from genbound.diagnostics.spectra import spectra
    from genbound.sources.peft_import import load_peft
    from genbound.training.hf_trainer import GenboundCallback

    uri = (tmp_path / "mlruns").resolve().as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "trainer")
    folder, splits, pm = lora_bert(tmp_path)
    out = tmp_path / "run"
    args = TrainingArguments(output_dir=str(out), max_steps=4, per_device_train_batch_size=8, save_steps=4,
                             logging_steps=2, report_to=["mlflow"], seed=3, use_cpu=True, learning_rate=1e-2,
                             save_strategy="steps", disable_tqdm=True)
    Trainer(model=pm, args=args, train_dataset=SplitRows(splits.train),
            callbacks=[GenboundCallback(every=100)]).train()
    client = mlflow.MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("trainer").experiment_id])
    sp = spectra(load_peft(out / "checkpoint-4", resolve=False).layer_updates(), top_k=10)
    for layer in sp.layers:
        hist = client.get_metric_history(run.info.run_id, f"dW/{layer.name}/spectral_norm")
        assert [m.step for m in hist] == [4]
        assert hist[0].value == pytest.approx(layer.spectral_norm, rel=1e-6, abs=1e-6)
    assert "loss" in run.data.metrics  # the Trainer's own logging went to the same run
