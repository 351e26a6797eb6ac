"""A checkpoint's trajectory: the trained tensors at saved steps (``trajectory.safetensors``).

The file holds the checkpoint's keys under ``step<S>/`` for every step in ``meta.trajectory_steps``
(docs/checkpoint-format.md, "trajectory.safetensors"). A chain's snapshot holds the links reached by then
(1..chain), so its widths are checked per step rather than against the final shapes. The updates dW at each
step feed the PCA directions of the loss landscape (docs/concepts.md, "Loss landscapes").
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..core.errors import CheckpointError
from ..core.readers import read_safetensors
from ..methods.update import LayerUpdate
from .claims import layout_for, max_tensor_bytes
from .format import TRAJECTORY_FILE, expected_tensors


def check_trajectory(ckpt, tensors: dict[str, Tensor]) -> None:
    """Every saved step holds the checkpoint's keys with the links reached by then; refuse anything else."""
    where = ckpt.path / TRAJECTORY_FILE
    meta, factor = ckpt.meta, ckpt.method.factor
    first = meta.layers[0].name if meta.layers else None
    want: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
    model_shapes = None
    for step in meta.trajectory_steps:
        prefix = f"step{step}/"
        links = (factor.links_in(ckpt.layer_tensors(first, tensors, prefix + factor.key_prefix), meta.rank) or 0
                 ) if first else 0
        if first and not 1 <= links <= meta.chain:
            raise CheckpointError(f"{where}: step {step} holds no valid factors of layer {first}")
        if factor.extra_prefix is not None and model_shapes is None:  # a kind that stores every parameter
            model_shapes = {k: tuple(p.shape) for k, p in ckpt.initial_model().named_parameters()}
        for k, v in expected_tensors(meta, model_shapes, chain_links=links or 1).items():
            want[f"{prefix}{k}"] = v
    if set(tensors) != set(want):
        odd = sorted(set(tensors) ^ set(want))[0]
        raise CheckpointError(f"{where}: tensor '{odd}' is missing or unexpected; the file is corrupt")
    for k, (shape, dtype) in want.items():
        if tuple(tensors[k].shape) != shape or tensors[k].dtype != dtype:
            raise CheckpointError(f"{where}: tensor '{k}' has shape {tuple(tensors[k].shape)} and dtype "
                                  f"{tensors[k].dtype}, expected {shape} and {dtype}")
    for step in meta.trajectory_steps:
        for li in meta.layers:
            factor.check_tensors(ckpt.layer_context(li),
                                 ckpt.layer_tensors(li.name, tensors, f"step{step}/{factor.key_prefix}"), where)


def read_trajectory(ckpt) -> dict[str, Tensor]:
    """The checked tensors of ``ckpt``'s trajectory file (bounded by the backbone's size per step)."""
    if not ckpt.meta.has_trajectory:
        raise CheckpointError(
            f"{ckpt.path} was saved without a trajectory; retrain with --save-trajectory to use PCA directions"
        )
    limit = max_tensor_bytes(layout_for(ckpt.meta.backbone))
    tensors = read_safetensors(ckpt.path / TRAJECTORY_FILE,
                               max_bytes=None if limit is None else limit * (len(ckpt.meta.trajectory_steps) + 1))
    check_trajectory(ckpt, tensors)
    return tensors


def trajectory_updates(ckpt) -> list[dict[str, LayerUpdate]]:
    """dW of every adapted layer at each saved step (``meta.trajectory_steps``), oldest first."""
    tensors = read_trajectory(ckpt)
    return [ckpt.updates_from(tensors, f"step{step}/") for step in ckpt.meta.trajectory_steps]
