"""The Hugging Face Trainer: GenboundCallback records snapshots and metadata; a Trainer output folder reads
back as a trajectory whose last point is the final adapter's dW."""

from __future__ import annotations

import pytest
import torch
from trainer_setup import SplitRows, lora_bert

from genbound.core.errors import GenboundError
from genbound.sources.peft_import import load_peft
from genbound.training.hf_trainer import GenboundCallback, read_run, read_trajectory

peft = pytest.importorskip("peft")


def test_trainer_run_is_a_trajectory(tmp_path):
    from transformers import Trainer, TrainingArguments

    folder, splits, pm = lora_bert(tmp_path)
    out = tmp_path / "run"
    args = TrainingArguments(output_dir=str(out), max_steps=4, per_device_train_batch_size=8, save_steps=2,
                             logging_steps=100, report_to=[], seed=3, use_cpu=True, learning_rate=1e-2,
                             save_strategy="steps", disable_tqdm=True)
    cb = GenboundCallback(every=1, data_digest=splits.digest())
    Trainer(model=pm, args=args, train_dataset=SplitRows(splits.train), callbacks=[cb]).train()
    run = read_run(out)
    assert run["steps"] == [0, 1, 2, 3, 4] and run["seed"] == 3 and run["n_train"] == len(splits.train)
    assert run["data_digest"] == splits.digest()
    traj = read_trajectory(out)
    assert [s for s, _ in traj] == [0, 1, 2, 3, 4]
    assert all(u.materialize().abs().max() == 0 for u in traj[0][1].values())  # B = 0 at the start
    final = load_peft(out / "checkpoint-4", resolve=False).layer_updates()
    for name, u in final.items():
        torch.testing.assert_close(traj[-1][1][name].materialize(), u.materialize())
    # Without the callback's snapshots: the checkpoint-* folders.
    import shutil

    shutil.rmtree(out / "genbound")
    assert [s for s, _ in read_trajectory(out)] == [2, 4]
    with pytest.raises(GenboundError, match="run.json"):
        read_run(out)
    with pytest.raises(GenboundError, match="neither genbound snapshots"):
        read_trajectory(tmp_path)


def test_trainer_run_saved_without_checkpoints(tmp_path):
    """save_strategy="no" and trainer.save_model(out): the snapshots are read with the final adapter's
    adapter_config.json in the output folder itself; the last snapshot equals that adapter's dW."""
    from transformers import Trainer, TrainingArguments

    folder, splits, pm = lora_bert(tmp_path)
    out = tmp_path / "run"
    args = TrainingArguments(output_dir=str(out), max_steps=3, per_device_train_batch_size=8, save_strategy="no",
                             logging_steps=100, report_to=[], seed=3, use_cpu=True, learning_rate=1e-2,
                             disable_tqdm=True)
    trainer = Trainer(model=pm, args=args, train_dataset=SplitRows(splits.train),
                      callbacks=[GenboundCallback(every=1)])
    trainer.train()
    trainer.save_model(str(out))
    assert (out / "adapter_config.json").is_file() and not list(out.glob("checkpoint-*"))
    traj = read_trajectory(out)
    assert [s for s, _ in traj] == [0, 1, 2, 3]
    final = load_peft(out, resolve=False).layer_updates()
    assert set(final) == set(traj[-1][1])
    for name, u in final.items():
        torch.testing.assert_close(traj[-1][1][name].materialize(), u.materialize())
        assert u.materialize().abs().max() > 0
    import shutil

    shutil.rmtree(out / "genbound")  # without the callback: one adapter, no trajectory, and it says so
    with pytest.raises(GenboundError, match="only the final adapter"):
        read_trajectory(out)
