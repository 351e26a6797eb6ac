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

With trackers (``report_to``; by default the Trainer's own ``TrainingArguments.report_to`` among tensorboard,
mlflow and wandb) the callback also logs the cheap diagnostics of the adapter every ``diagnostics_every`` steps
and at the end, through genbound.training.trackers: ||dW||_2, ||dW||_F and the stable rank per layer (read from the
adapter state exactly as a saved adapter is read, genbound.sources.peft_import), the intruder count against the base
layers' weights, and at each evaluation ``val/loss`` and ``gap/val_minus_train`` (the evaluation loss minus
the last logged training loss). TensorBoard writes under ``<logging_dir or output_dir>/genbound/tensorboard``;
MLflow logs into the run
the Trainer's MLflowCallback opened.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from torch import Tensor

from ..core.atomic import atomic_file, write_json
from ..core.errors import GenboundError
from ..sources.peft_import import load_peft

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
                 output_dir: str | Path | None = None, report_to: str | list[str] | None = None,
                 diagnostics_every: int | None = None, top_k: int = 10, eps: float = 0.5):
        if every < 1:
            raise GenboundError(f"snapshot interval must be a positive number of steps, got {every}")
        if diagnostics_every is not None and diagnostics_every < 1:
            raise GenboundError(f"diagnostics_every must be a positive number of steps, got {diagnostics_every}")
        self.report_to = [report_to] if isinstance(report_to, str) else report_to
        self.diagnostics_every = diagnostics_every
        self.top_k, self.eps = top_k, eps
        self.trackers: list = []
        self.logged: dict[int, dict[str, float]] = {}  # every value sent to the trackers, by step
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

    # -- trackers ------------------------------------------------------------------------------------------

    def _open_trackers(self, args, state) -> None:
        from .trackers import TRACKERS, open_trackers

        if not state.is_world_process_zero:
            return
        names = self.report_to
        if names is None:  # the Trainer's own choice, where genbound has a logger for it
            chosen = args.report_to if isinstance(args.report_to, list) else [args.report_to]
            names = [n for n in chosen if n in TRACKERS]
        if names:
            # newer transformers have no logging_dir: then the output folder
            folder = Path(getattr(args, "logging_dir", None) or args.output_dir) / SUBDIR
            self.trackers = open_trackers(names, folder, Path(args.output_dir).name,
                                          {"genbound_diagnostics_every": self.diagnostics_every})

    def _log(self, scalars: dict, step: int) -> None:
        if not self.trackers or not scalars:
            return
        self.logged.setdefault(int(step), {}).update(scalars)
        for t in self.trackers:
            t.log(scalars, step)

    def _diagnostics(self, model, step: int) -> None:
        if self.trackers and model is not None and hasattr(model, "peft_config"):
            from .trackers import update_diagnostics

            updates, base = live_peft_updates(model)
            self._log(update_diagnostics(updates, base, top_k=self.top_k, eps=self.eps), step)

    def on_train_begin(self, args, state, control, model=None, train_dataloader=None, **kwargs):
        if self.n_train is None and train_dataloader is not None:
            try:
                self.n_train = len(train_dataloader.dataset)
            except TypeError:
                pass
        self._snapshot(args, state, model)
        self._open_trackers(args, state)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every == 0:
            self._snapshot(args, state, model)
        if self.diagnostics_every is not None and state.global_step % self.diagnostics_every == 0:
            self._diagnostics(model, int(state.global_step))

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        loss = (metrics or {}).get("eval_loss")
        if loss is None:
            return
        train = next((h["loss"] for h in reversed(state.log_history) if "loss" in h), None)
        scalars = {"val/loss": float(loss)}
        if train is not None:
            scalars["gap/val_minus_train"] = float(loss) - float(train)
        self._log(scalars, int(state.global_step))

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self._snapshot(args, state, model)
        self._diagnostics(model, int(state.global_step))
        for t in self.trackers:
            t.close()
        self.trackers = []


def live_peft_updates(model) -> tuple[dict, dict | None]:
    """({layer: LayerUpdate}, {layer: W0} or None) of a live peft model: its adapter state and config written
    to a temporary folder and read by genbound.sources.peft_import, the reader of a saved adapter (so the values equal
    those of the adapter ``save_pretrained`` writes); W0 from each adapted module's base layer where its
    weight has dW's (out, in) shape, else None (no intruder count)."""
    import tempfile

    from safetensors.torch import save_file

    from ..sources.peft_import import load_peft

    name = getattr(model, "active_adapter", "default")
    name = name if isinstance(name, str) else name[0]
    with tempfile.TemporaryDirectory() as tmp:
        model.peft_config[name].save_pretrained(tmp)
        save_file(_trained_state(model), str(Path(tmp) / "adapter_model.safetensors"))
        updates = load_peft(tmp, resolve=False).layer_updates()
    modules = {n: m for n, m in model.named_modules() if hasattr(m, "base_layer")}
    base = {}
    for layer, u in updates.items():
        hit = next((m for n, m in modules.items() if n == layer or n.endswith("." + layer)), None)
        w = getattr(getattr(hit, "base_layer", None), "weight", None)
        if w is None or tuple(w.shape) != tuple(u.shape):
            return updates, None
        base[layer] = w.detach().cpu()
    return updates, base


def read_run(output_dir: str | Path) -> dict:
    """The metadata :class:`GenboundCallback` wrote into a Trainer output folder."""
    path = Path(output_dir) / SUBDIR / "run.json"
    if not path.is_file():
        raise GenboundError(f"{output_dir} holds no {SUBDIR}/run.json; train with genbound.training.hf_trainer."
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
                            "genbound.training.hf_trainer.GenboundCallback in the Trainer's callbacks (or "
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
