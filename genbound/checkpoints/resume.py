"""Training state: what a run killed at any moment needs to continue bit-identically.

A state is a directory ``<parent>/.<name>.state`` beside the checkpoint ``<parent>/<name>`` holding

``state.json``          format and version, the run's configuration (to refuse resuming with other options),
                        step, epoch, position in the epoch's data order, the running training loss, the
                        validation history, the trajectory steps, each adapter's chain position (link),
                        the optimizer's param groups and the scheduler's state, the seconds trained so far;
``state.safetensors``   the model tensors that training changes (``model/<state_dict key>``: for an adapter
                        method every tensor of every adapter, including the base weight into which past
                        links were merged, and the head; for fft every tensor), the optimizer's per-parameter
                        tensors (``optim/<index>/<name>``: Adam's step, exp_avg, exp_avg_sq), the torch RNG
                        states (``rng/cpu``, ``rng/cuda``: dropout) and saved trajectory snapshots
                        (``traj/<key>``).

Nothing else is needed: the data order of epoch e is a pure function of (seed, e) and every factor, selector
and head is drawn from the seed, so a resumed run rebuilds the same model and then overwrites what training
changed. The directory is written with :func:`genbound.core.atomic.atomic_directory` (the previous state is
replaced whole), so a kill during a save leaves the previous state intact. Reading uses the same defensive
safetensors reader as checkpoints and never unpickles.

Floats in ``state.json`` survive exactly: Python writes the shortest repr that round-trips (IEEE 754
doubles), so learning rates, the running loss and the history are restored bit for bit.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..core.atomic import atomic_directory
from ..core.errors import CheckpointError, GenboundError
from ..core.readers import read_safetensors
from ..core.validation import read_json, validate_train_state
from ..data.datasets import DATASETS
from ..models.backbones import BACKBONES

STATE_FORMAT = "genbound-train-state"
STATE_VERSION = 1
STATE_JSON = "state.json"
STATE_TENSORS = "state.safetensors"
# Options that do not change the numbers a run computes: they may differ between the killed and the
# resumed process.
IGNORED_ON_RESUME = ("progress", "device")  # where and how a run is shown, not what it computes


def state_dir_for(out: str | Path) -> Path:
    """Where the training state of checkpoint ``out`` lives: a hidden sibling ``.<name>.state``."""
    out = Path(out)
    return out.parent / f".{out.name}.state"


@dataclass
class TrainState:
    """Everything besides the rebuilt model that the training loop needs to continue."""

    config: dict[str, Any]
    step: int
    epoch: int
    position: int  # index into the epoch's data order of the next batch
    running: float
    history: list[dict[str, Any]]
    traj_steps: list[int]
    links: dict[str, int]  # adapter name -> chain position
    optimizer: dict[str, Any]  # torch optimizer state_dict
    scheduler: dict[str, Any]  # torch LR scheduler state_dict
    rng_cpu: Tensor
    rng_cuda: Tensor | None
    model: dict[str, Tensor]  # state_dict key -> tensor (only what training changes)
    snapshots: dict[str, Tensor] = field(default_factory=dict)
    train_seconds: float = 0.0
    resumed_at: list[int] = field(default_factory=list)


def changing_tensors(model: nn.Module, adapter_names: list[str], full: bool) -> dict[str, Tensor]:
    """The entries of ``model.state_dict()`` that training may change: everything for fft; otherwise every
    tensor of each adapter (factors, selectors, past links and the base weight they were merged into) and
    the head. A weight sharded over processes (an FSDP DTensor, genbound.core.sharding) is gathered whole:
    then every process must call this, alike."""
    prefixes = tuple(f"{n}." for n in adapter_names) + ("head.",)
    return {k: _whole(v.detach()).to("cpu", copy=True) for k, v in model.state_dict(keep_vars=False).items()
            if full or k.startswith(prefixes)}


def _whole(t: Tensor) -> Tensor:
    # duck-typed: importing DTensor would load torch.distributed for every run
    return t.full_tensor() if hasattr(t, "full_tensor") else t


@torch.no_grad()
def restore_tensors(model: nn.Module, tensors: dict[str, Tensor], where: Path) -> None:
    """Put saved state_dict entries back: parameters are copied in place (an optimizer built on them keeps
    them), buffers are replaced (a chain's past links grow, so their shapes differ from a fresh model's)."""
    for key, value in tensors.items():
        modname, _, attr = key.rpartition(".")
        try:
            module = model.get_submodule(modname) if modname else model
        except AttributeError:
            raise CheckpointError(f"{where}: saved tensor '{key}' is not part of the model; delete the state") from None
        if attr in module._parameters and module._parameters[attr] is not None:
            p = module._parameters[attr]
            if p.shape != value.shape or p.dtype != value.dtype:
                raise CheckpointError(f"{where}: saved tensor '{key}' has shape {tuple(value.shape)}, the model "
                                      f"{tuple(p.shape)}; delete the state")
            p.copy_(value)
        elif attr in module._buffers:
            module._buffers[attr] = value.clone()
        else:
            raise CheckpointError(f"{where}: saved tensor '{key}' is not part of the model; delete the state")


def _optimizer_split(sd: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Tensor]]:
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, st in sd["state"].items():
        for name, v in st.items():
            if isinstance(v, Tensor):
                tensors[f"optim/{idx}/{name}"] = v.detach().to("cpu", copy=True)
            else:
                scalars.setdefault(str(idx), {})[name] = v
    return {"param_groups": sd["param_groups"], "scalars": scalars}, tensors


def _optimizer_join(js: dict[str, Any], tensors: dict[str, Tensor]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        _, idx, name = key.split("/", 2)
        state.setdefault(int(idx), {})[name] = v
    for idx, d in js.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(d)
    groups = []
    for g in js["param_groups"]:
        g = dict(g)
        if isinstance(g.get("betas"), list):
            g["betas"] = tuple(g["betas"])  # as torch made them
        groups.append(g)
    return {"state": state, "param_groups": groups}


def save_state(path: str | Path, state: TrainState) -> Path:
    """Write ``state`` to the directory ``path`` atomically, replacing the previous state whole."""
    from safetensors.torch import save_file

    path = Path(path)
    optim_js, optim_t = _optimizer_split(state.optimizer)
    tensors: dict[str, Tensor] = {f"model/{k}": v for k, v in state.model.items()}
    tensors.update(optim_t)
    # safetensors has no uint8 in genbound's reader; the RNG bytes travel as int64 and return exactly.
    tensors["rng/cpu"] = state.rng_cpu.to(torch.int64)
    if state.rng_cuda is not None:
        tensors["rng/cuda"] = state.rng_cuda.to(torch.int64)
    tensors.update({f"traj/{k}": v for k, v in state.snapshots.items()})
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    js = {
        "format": STATE_FORMAT, "format_version": STATE_VERSION, "config": state.config, "step": state.step,
        "epoch": state.epoch, "position": state.position, "running": state.running, "history": state.history,
        "traj_steps": state.traj_steps, "links": state.links, "optimizer": optim_js, "scheduler": state.scheduler,
        "train_seconds": state.train_seconds, "resumed_at": state.resumed_at,
    }
    text = json.dumps(js, indent=1, allow_nan=False) + "\n"
    with atomic_directory(path, overwrite=True) as tmp:
        save_file(tensors, str(tmp / STATE_TENSORS), metadata={"format": STATE_FORMAT})
        (tmp / STATE_JSON).write_text(text)
    return path


def _require(cond: bool, where: Path, what: str) -> None:
    if not cond:
        raise CheckpointError(f"{where}: training state is corrupt ({what}); delete it to start the run again")


def load_state(path: str | Path) -> TrainState:
    """Read a state directory written by :func:`save_state` (JSON and safetensors only, validated)."""
    path = Path(path)
    meta = path / STATE_JSON
    _require(meta.is_file(), path, f"no readable {STATE_JSON}")
    try:
        js = read_json(meta, STATE_JSON, 64 << 20)
    except CheckpointError:
        _require(False, path, f"{STATE_JSON} is not valid JSON")
    _require(isinstance(js, dict) and js.get("format") == STATE_FORMAT, path, "not a genbound training state")
    _require(js.get("format_version") == STATE_VERSION, path, f"format version {js.get('format_version')!r}")
    validate_train_state(js, path)  # every field's type and range (NaN, wrong types, negative counts)
    tensors = read_safetensors(path / STATE_TENSORS, max_abs=None)  # Adam's moments may be large
    _require("rng/cpu" in tensors, path, "no RNG state")
    rng = tensors["rng/cpu"]
    _require(rng.dim() == 1 and rng.numel() == torch.get_rng_state().numel() and not rng.is_floating_point()
             and (rng.numel() == 0 or (int(rng.min()) >= 0 and int(rng.max()) <= 255)), path, "RNG state")
    if "rng/cuda" in tensors:
        rc = tensors["rng/cuda"]
        _require(rc.dim() == 1 and not rc.is_floating_point() and 0 < rc.numel() <= 1 << 16
                 and int(rc.min()) >= 0 and int(rc.max()) <= 255, path, "CUDA RNG state")
    model = {k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")}
    optim_t = {k: v for k, v in tensors.items() if k.startswith("optim/")}
    snapshots = {k[len("traj/"):]: v for k, v in tensors.items() if k.startswith("traj/")}
    try:
        optimizer = _optimizer_join(js["optimizer"], optim_t)
    except (KeyError, ValueError, TypeError):
        _require(False, path, "optimizer state")
    rng_cuda = tensors.get("rng/cuda")
    return TrainState(
        config=js["config"], step=js["step"], epoch=js["epoch"], position=js["position"], running=float(js["running"]),
        history=js["history"], traj_steps=[int(s) for s in js["traj_steps"]],
        links={str(k): int(v) for k, v in js["links"].items()}, optimizer=optimizer, scheduler=js["scheduler"],
        rng_cpu=tensors["rng/cpu"].to(torch.uint8), rng_cuda=None if rng_cuda is None else rng_cuda.to(torch.uint8),
        model=model, snapshots=snapshots, train_seconds=float(js.get("train_seconds", 0.0)),
        resumed_at=[int(s) for s in js.get("resumed_at", [])],
    )


def check_progress(state: TrainState, n_train: int, batch_size: int, total_steps: int, chain: int,
                   where: Path) -> None:
    """Refuse a state whose counters cannot come from this run: the training loop saves after step
    ``step = min(epoch * steps_per_epoch + ceil(position / batch_size), total_steps)`` with ``position`` a
    batch boundary of the epoch's data order and one history entry per finished epoch. A state edited
    elsewhere (position 10^12, a step past the budget) would otherwise resume silently into another result."""
    spe = math.ceil(n_train / batch_size)
    ok = (state.position <= n_train and (state.position % batch_size == 0 or state.position == n_train)
          and state.step <= total_steps and len(state.history) == state.epoch
          and state.step == min(state.epoch * spe + math.ceil(state.position / batch_size), total_steps)
          and all(s <= state.step for s in state.traj_steps + state.resumed_at)
          and all(0 <= v < chain for v in state.links.values()))
    _require(ok, where, f"step {state.step}, epoch {state.epoch}, position {state.position} do not fit a run of "
                        f"{total_steps} steps over {n_train} examples in batches of {batch_size}")


# Options added after runs were recorded: a record without one ran with this value.
ADDED_DEFAULTS = {"base_dtype": "float32"}


def config_difference(saved: dict[str, Any], current: dict[str, Any],
                      keys: Iterable[str] | None = None) -> tuple[str, Any, Any] | None:
    """The first option (by name) whose saved value differs from the current one, as (name, saved,
    current), both compared as JSON stores them (tuples are lists); None when they agree. ``keys`` limits
    the comparison (default: every option of either side); :data:`IGNORED_ON_RESUME` never counts.

    The one comparison behind resuming a state, reusing a finished checkpoint (genbound.training.train) and a
    sweep's reuse of its runs (analysis.sweep)."""
    saved, current = json.loads(json.dumps(saved)), json.loads(json.dumps(current))
    names = set(saved) | set(current) if keys is None else set(keys)
    for k in sorted(names - set(IGNORED_ON_RESUME)):
        was, now = saved.get(k, ADDED_DEFAULTS.get(k)), current.get(k, ADDED_DEFAULTS.get(k))
        if was != now and not _same_path(k, was, now):
            return k, was, now
    return None


def _same_path(key: str, a: Any, b: Any) -> bool:
    """A model folder or data file named by a relative path and by the absolute path it resolves to here: the
    same option (training records paths absolute, genbound.checkpoints.provenance); registered names only as
    themselves."""
    if key not in ("backbone", "dataset") or not isinstance(a, str) or not isinstance(b, str):
        return False
    if {a, b} & (set(BACKBONES) | set(DATASETS)):
        return False
    return os.path.abspath(os.path.expanduser(a)) == os.path.abspath(os.path.expanduser(b))


def check_config(saved: dict[str, Any], current: dict[str, Any], where: Path,
                 keys: Iterable[str] | None = None) -> None:
    """Refuse to resume a state with options that change the computation (a resumed run must equal an
    uninterrupted one with the same options); see :func:`config_difference` for ``keys``."""
    diff = config_difference(saved, current, keys)
    if diff is not None:
        k, was, now = diff
        raise GenboundError(
            f"{where} was saved by a run with {k}={was!r}, this run has {k}={now!r}; resume "
            "with the same options, or pass --overwrite (overwrite=True from Python) to discard the saved state and "
            "start again"
        )


def remove_state(path: str | Path) -> None:
    shutil.rmtree(Path(path), ignore_errors=True)
