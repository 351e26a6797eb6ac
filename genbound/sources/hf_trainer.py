"""The Hugging Face Trainer: record a peft run's trajectory and metadata, and read a Trainer output folder.

:class:`GenboundCallback` (a ``transformers.TrainerCallback``) saves, every ``every`` optimizer steps and at
the start and end of training, the trained tensors of the model (peft's adapter state dict: LoRA factors and
modules_to_save; for a model without peft, every parameter that requires a gradient) as
``<output_dir>/genbound/trajectory/step-XXXXXXX.safetensors``, and the run's metadata as
``<output_dir>/genbound/run.json``: N (the training set's size), the seed, the data digest given to it (for
example :meth:`genbound.data.datasets.Splits.digest` or a file's :func:`genbound.data.datafiles.content_digest`), the
steps saved, the learning rate and batch size. These are what a trajectory-PCA landscape needs
(docs/concepts.md, "Loss landscapes").

:func:`read_trajectory` reads either those snapshots or, without them, the Trainer's own ``checkpoint-*``
folders (each a peft adapter written by ``save_pretrained``), ordered by step, as a list of
``(step, {layer: LayerUpdate})``; :func:`read_run` returns the metadata.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from torch import Tensor

from ..core.atomic import atomic_file, write_json
from ..core.errors import GenboundError
from .peft_import import load_peft

try:  # transformers is a dependency; the callback base class only exists where it imports
    from transformers import TrainerCallback
except ImportError:  # pragma: no cover
    TrainerCallback = object  # type: ignore[assignment,misc]

SUBDIR = "genbound"
_STEP = re.compile(r"^step-(\d+)\.safetensors$")
_CKPT = re.compile(r"^checkpoint-(\d+)$")


def _trained_state(model) -> dict[str, Tensor]:
    """peft's adapter state dict (the keys ``save_pretrained`` writes) for a peft model, else every parameter
    that requires a gradient. A peft model object means peft is loaded, so it is taken from ``sys.modules``
    rather than imported: genbound does not depend on peft."""
    import sys

    save_and_load = sys.modules.get("peft.utils.save_and_load")
    if hasattr(model, "peft_config") and save_and_load is not None:
        state = save_and_load.get_peft_model_state_dict(model)
        return {k: v.detach().cpu().clone().contiguous() for k, v in state.items()}
    return {n: p.detach().cpu().clone().contiguous() for n, p in model.named_parameters() if p.requires_grad}


class GenboundCallback(TrainerCallback):
    """Record adapter snapshots (every ``every`` steps, and at the start and the end) and run metadata."""

    def __init__(self, every: int = 10, n_train: int | None = None, data_digest: str | None = None,
                 output_dir: str | Path | None = None):
        if every < 1:
            raise GenboundError(f"snapshot interval must be a positive number of steps, got {every}")
        self.every = int(every)
        self.n_train = n_train
        self.data_digest = data_digest
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.steps: list[int] = []

    def _dir(self, args) -> Path:
        return (self.output_dir or Path(args.output_dir)) / SUBDIR

    def _snapshot(self, args, state, model) -> None:
        from safetensors.torch import save_file

        step = int(state.global_step)
        if step in self.steps or model is None or not state.is_world_process_zero:
            return
        folder = self._dir(args) / "trajectory"
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_file(folder / f"step-{step:07d}.safetensors") as tmp:
            save_file(_trained_state(model), str(tmp), metadata={"step": str(step)})
        self.steps.append(step)
        self._write_run(args, state, model)

    def _write_run(self, args, state, model) -> None:
        n = self.n_train
        info = {
            "n_train": n, "seed": int(args.seed), "data_digest": self.data_digest, "steps": sorted(self.steps),
            "every": self.every, "learning_rate": float(args.learning_rate),
            "per_device_train_batch_size": int(args.per_device_train_batch_size),
            "max_steps": int(state.max_steps), "num_train_epochs": float(args.num_train_epochs),
            "model": type(model).__name__ if model is not None else None,
        }
        write_json(self._dir(args) / "run.json", info)

    def on_train_begin(self, args, state, control, model=None, train_dataloader=None, **kwargs):
        if self.n_train is None and train_dataloader is not None:
            try:
                self.n_train = len(train_dataloader.dataset)
            except TypeError:
                pass
        self._snapshot(args, state, model)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every == 0:
            self._snapshot(args, state, model)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self._snapshot(args, state, model)


def read_run(output_dir: str | Path) -> dict:
    """The metadata :class:`GenboundCallback` wrote into a Trainer output folder."""
    path = Path(output_dir) / SUBDIR / "run.json"
    if not path.is_file():
        raise GenboundError(f"{output_dir} holds no {SUBDIR}/run.json; train with genbound.sources.hf_trainer."
                            "GenboundCallback in the Trainer's callbacks")
    try:
        out = json.loads(path.read_text())
    except ValueError:
        raise GenboundError(f"{path} is not valid JSON; the run was interrupted while writing it") from None
    if not isinstance(out, dict):
        raise GenboundError(f"{path} is not a JSON object")
    return out


def read_trajectory(output_dir: str | Path) -> list[tuple[int, dict]]:
    """(step, {layer: LayerUpdate}) for each snapshot of a Trainer output folder, ordered by step: the
    callback's snapshots when present, else the Trainer's ``checkpoint-*`` peft adapters. Layer names are
    peft's module paths; dW = s B A with each adapter's own scale (rank_pattern, rsLoRA). The snapshots are read
    with the adapter_config.json of the last ``checkpoint-*`` folder or, for a run saved with
    ``save_strategy="no"`` and ``trainer.save_model(output_dir)``, of the final adapter in the folder itself."""
    root = Path(output_dir)
    if not root.is_dir():
        raise GenboundError(f"{root} is not a folder; pass a Trainer output_dir")
    snaps = sorted((int(m.group(1)), p) for p in (root / SUBDIR / "trajectory").glob("*.safetensors")
                   if (m := _STEP.match(p.name)))
    ckpts = sorted((int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _CKPT.match(p.name)))
    if snaps:
        # The config of the last checkpoint-* adapter, else of the final save_model / save_pretrained output.
        candidates = [p for _, p in reversed(ckpts)] + [root]
        template = next((p for p in candidates if (p / "adapter_config.json").is_file()), None)
        if template is None:
            raise GenboundError(f"{root}: the snapshots need a saved adapter_config.json to be read (a Trainer "
                                "checkpoint-* folder, or the final adapter: trainer.save_model(output_dir))")
        return [(step, _updates_from(template, path)) for step, path in snaps]
    ckpts = [(s, p) for s, p in ckpts if (p / "adapter_config.json").is_file()]
    if not ckpts and (root / "adapter_config.json").is_file():
        raise GenboundError(f"{root} holds only the final adapter, one point, not a trajectory; train with "
                            "genbound.sources.hf_trainer.GenboundCallback in the Trainer's callbacks (or "
                            "save_steps) to record one")
    if not ckpts:
        raise GenboundError(f"{root} has neither genbound snapshots nor checkpoint-* peft adapter folders; train "
                            "with GenboundCallback or save_steps")
    return [(step, load_peft(p, resolve=False).layer_updates()) for step, p in ckpts]


def _updates_from(template: Path, tensors_file: Path) -> dict:
    """A snapshot's layer updates, read with a saved adapter's config."""
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(template / "adapter_config.json", Path(tmp) / "adapter_config.json")
        shutil.copy(tensors_file, Path(tmp) / "adapter_model.safetensors")
        return load_peft(tmp, resolve=False).layer_updates()


__all__ = ["GenboundCallback", "read_run", "read_trajectory"]
