"""The Hugging Face Trainer: GenboundCallback records snapshots and metadata; a Trainer output folder reads
back as a trajectory whose last point is the final adapter's dW."""

from __future__ import annotations

import pytest
import torch

from genbound.core.errors import GenboundError
from genbound.data.datasets import get_dataset
from genbound.models.backbones import get_backbone
from genbound.models.tinymodels import make_pairs_csv, make_text_model
from genbound.sources.peft_import import load_peft
from genbound.training.hf_trainer import GenboundCallback, read_run, read_trajectory

peft = pytest.importorskip("peft")


def test_trainer_run_is_a_trajectory(tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification, Trainer, TrainingArguments

    folder = make_text_model(tmp_path / "bert", "bert")
    splits = get_dataset(str(make_pairs_csv(tmp_path / "p.csv", n=60)), ["s1", "s2"], "label", "split").load(
        get_backbone(str(folder)), 0, 16)

    class Rows(torch.utils.data.Dataset):
        def __len__(self):
            return len(splits.train)

        def __getitem__(self, i):
            return {**{k: v[i] for k, v in splits.train.features.items()}, "labels": splits.train.labels[i]}

    base = AutoModelForSequenceClassification.from_pretrained(str(folder), local_files_only=True)
    pm = get_peft_model(base, LoraConfig(r=2, lora_alpha=4, target_modules=["query", "value"], task_type="SEQ_CLS"))
    out = tmp_path / "run"
    args = TrainingArguments(output_dir=str(out), max_steps=4, per_device_train_batch_size=8, save_steps=2,
                             logging_steps=100, report_to=[], seed=3, use_cpu=True, learning_rate=1e-2,
                             save_strategy="steps", disable_tqdm=True)
    cb = GenboundCallback(every=1, data_digest=splits.digest())
    Trainer(model=pm, args=args, train_dataset=Rows(), callbacks=[cb]).train()
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
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification, Trainer, TrainingArguments

    folder = make_text_model(tmp_path / "bert", "bert")
    splits = get_dataset(str(make_pairs_csv(tmp_path / "p.csv", n=60)), ["s1", "s2"], "label", "split").load(
        get_backbone(str(folder)), 0, 16)

    class Rows(torch.utils.data.Dataset):
        def __len__(self):
            return len(splits.train)

        def __getitem__(self, i):
            return {**{k: v[i] for k, v in splits.train.features.items()}, "labels": splits.train.labels[i]}

    base = AutoModelForSequenceClassification.from_pretrained(str(folder), local_files_only=True)
    pm = get_peft_model(base, LoraConfig(r=2, lora_alpha=4, target_modules=["query", "value"], task_type="SEQ_CLS"))
    out = tmp_path / "run"
    args = TrainingArguments(output_dir=str(out), max_steps=3, per_device_train_batch_size=8, save_strategy="no",
                             logging_steps=100, report_to=[], seed=3, use_cpu=True, learning_rate=1e-2,
                             disable_tqdm=True)
    trainer = Trainer(model=pm, args=args, train_dataset=Rows(), callbacks=[GenboundCallback(every=1)])
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
