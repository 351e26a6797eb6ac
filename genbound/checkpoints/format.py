"""The on-disk format of a genbound checkpoint and the validation of its metadata (docs/checkpoint-format.md).

A checkpoint is a directory holding ``genbound.json`` and ``tensors.safetensors``:

``genbound.json``          metadata: format version, genbound version, method, rank, alpha, scale, chain,
                           every adapted layer (name, out_features n, in_features m), backbone name and
                           weight fingerprint, dataset, split seed and sizes (N = training examples), stored
                           dtype, all hyperparameters, seed, metrics and final results; the model and data
                           by absolute path and content fingerprint (``sources``, genbound.checkpoints.provenance).
``tensors.safetensors``    the trained tensors: per adapted layer the method's factors by suffix
                           (``<layer>.B`` (n, k r) with ``<layer>.A`` (k r, m) for low-rank methods,
                           ``<layer>.columns`` (k r,) for column methods, all links concatenated), the head as
                           ``head.weight`` / ``head.bias``; for fft every parameter as ``model.<name>``. Which
                           keys a method stores is its factor kind's
                           (:meth:`genbound.methods.factors.Factor.checkpoint_spec`).
``trajectory.safetensors`` optional: the same tensors at saved steps, keys ``step<S>/<key>``.

This module parses and checks ``genbound.json`` (types and ranges by the pydantic models of
:mod:`genbound.core.validation`; here the values that parse but cannot be right) and says which tensors a
checkpoint must hold. Reading the tensors is :mod:`genbound.core.readers`; the loaded checkpoint
:mod:`genbound.checkpoints.checkpoint`; rebuilding its model :mod:`genbound.checkpoints.restore`; its trajectory
:mod:`genbound.checkpoints.trajectory`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..core.errors import CheckpointError, GenboundError
from ..core.validation import read_json, validate_checkpoint_meta
from ..methods.catalogue import Method, get_method

META_FILE = "genbound.json"
TENSOR_FILE = "tensors.safetensors"
TRAJECTORY_FILE = "trajectory.safetensors"
FORMAT = "genbound-checkpoint"
FORMAT_VERSION = 1
MAX_META_BYTES = 16 << 20
MAX_SEED = (1 << 63) - 1


@dataclass
class LayerInfo:
    name: str
    out_features: int  # n
    in_features: int  # m


@dataclass
class CheckpointMeta:
    """Everything a checkpoint records besides its tensors (the parsed ``genbound.json``)."""

    method: str
    rank: int
    alpha: float
    scale: float
    chain: int
    layers: list[LayerInfo]
    backbone: str
    fingerprint: str
    dataset: str
    split_seed: int
    max_length: int | None
    num_labels: int
    head_in_features: int
    classes: list[str]
    n_train: int
    sizes: dict[str, int]
    dtype: str
    seed: int
    paca_columns: str = "random"
    split_digest: str = ""  # sha256 of the split's contents (empty in checkpoints that predate it)
    dataset_card: dict[str, Any] = field(default_factory=dict)  # data files: source, columns, classes, sizes
    # model and data by absolute path (or registry name) and content fingerprint
    # (genbound.checkpoints.provenance); empty in checkpoints that predate it
    sources: dict[str, Any] = field(default_factory=dict)
    head_bias: bool = True  # False for heads without a bias (decoders' score layer)
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    params: dict[str, int] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)
    # False: trained with --no-final-eval, so ``results`` is empty: the losses were never computed (not zero)
    final_eval: bool = True
    history: list[dict[str, Any]] = field(default_factory=list)
    trajectory_steps: list[int] = field(default_factory=list)
    genbound_version: str = __version__
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    @property
    def has_trajectory(self) -> bool:
        return bool(self.trajectory_steps)

    @property
    def shapes(self) -> list[tuple[int, int]]:
        return [(li.out_features, li.in_features) for li in self.layers]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _meta_from_json(raw: Any, where: Path) -> CheckpointMeta:
    validate_checkpoint_meta(raw, where)  # types and ranges; the values below are the file's own
    layers = [LayerInfo(li["name"], li["out_features"], li["in_features"]) for li in raw["layers"]]
    fields = {f.name for f in dataclasses.fields(CheckpointMeta)} - {"layers"}
    meta = CheckpointMeta(layers=layers, **{k: raw[k] for k in fields if k in raw})
    try:
        method = get_method(meta.method)
    except GenboundError as exc:
        raise CheckpointError(f"{where}: {exc}") from None
    if meta.chain > 1 and not method.chained:
        raise CheckpointError(f"{where}: method {meta.method} cannot have chain {meta.chain}")
    _check_meta_values(meta, method, where)
    return meta


def _check_meta_values(meta: CheckpointMeta, method: Method, where: Path) -> None:
    """Values that parse but cannot be right: each would otherwise surface later as a crash or a silently
    wrong model (a class list that does not match the head, a scale that disagrees with alpha / r)."""
    def bad(what: str) -> CheckpointError:
        return CheckpointError(f"{where}: {what}; the checkpoint is corrupt or was edited")

    causal = meta.hyperparameters.get("task") == "causal-lm"  # vocabulary-sized output, no class list
    if len(meta.classes) != (0 if causal else meta.num_labels):
        raise bad(f"the class list has {len(meta.classes)} entries but the head has {meta.num_labels} outputs")
    if meta.sizes.get("train", meta.n_train) != meta.n_train:
        raise bad(f"n_train {meta.n_train} differs from the training split size {meta.sizes.get('train')}")
    if method.adapter:
        expected_scale = method.scale(meta.alpha, meta.rank)
        if not math.isclose(meta.scale, expected_scale, rel_tol=1e-12, abs_tol=0.0):
            raise bad(f"scale {meta.scale} differs from alpha / rank = {expected_scale}")
        try:
            method.check_rank(meta.shapes, meta.rank, meta.chain)
        except GenboundError as exc:
            raise bad(str(exc)) from None


def expected_tensors(meta: CheckpointMeta, model_shapes: dict[str, tuple[int, ...]] | None = None,
                     chain_links: int | None = None) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """The keys, shapes and dtypes a checkpoint with ``meta`` must hold (``model_shapes``: every parameter of
    the model, for a kind that stores them all; ``chain_links``: the links a trajectory snapshot holds)."""
    dtype = getattr(torch, meta.dtype)
    head = {"weight": ((meta.num_labels, meta.head_in_features), dtype)}
    if meta.head_bias:
        head["bias"] = ((meta.num_labels,), dtype)
    if meta.hyperparameters.get("task") == "causal-lm":
        head = {}  # a causal LM trains no head (genbound.models.causal_lm)
    links = chain_links if chain_links is not None else meta.chain
    layers = [(li.name, li.out_features, li.in_features) for li in meta.layers]
    return get_method(meta.method).factor.checkpoint_spec(
        layers, meta.rank, links, dtype, head, None if model_shapes is None else (lambda: model_shapes))


def is_checkpoint(path: str | Path) -> bool:
    return (Path(path) / META_FILE).is_file()


def load_meta(path: str | Path) -> CheckpointMeta:
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a checkpoint directory (train one with `genbound train`)")
    meta_path = path / META_FILE
    if not meta_path.is_file():
        raise CheckpointError(f"{path} is not a genbound checkpoint: it has no {META_FILE}")
    return _meta_from_json(read_json(meta_path, META_FILE, MAX_META_BYTES), path)


