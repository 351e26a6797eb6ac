"""The genbound checkpoint: a directory holding ``genbound.json`` and ``tensors.safetensors``.

A loaded :class:`Checkpoint` is a source (:mod:`genbound.sources.source`): metadata, the factored updates dW (no model
needed), the pretrained W0, the data it was trained on and the fine-tuned model. The work is split by job:

* the on-disk format and the validation of the metadata: :mod:`genbound.checkpoints.format`;
* the defensive safetensors readers (shared with :mod:`genbound.checkpoints.resume` and
:mod:`genbound.sources.peft_import`):
  :mod:`genbound.core.readers`;
* the backbone, data, W0 and model a checkpoint describes: :mod:`genbound.checkpoints.restore`;
* the saved trajectory: :mod:`genbound.checkpoints.trajectory`.

Every public name of those modules that callers used from here is still importable from here.

Loading reads only JSON and safetensors (never pickle), checks every key, shape and dtype against the
metadata, refuses non-finite values, and refuses a backbone whose fingerprint or layer shapes differ.
Hostile input (truncated or bit-flipped files, absurd header sizes, deep or huge JSON, wrong types, a
metadata field changed so that the frozen factors or the class list no longer match) ends in one
:class:`~genbound.core.errors.CheckpointError` before any allocation larger than the file itself.
Writing is atomic: the directory is assembled beside its target and renamed into place. The safetensors
metadata holds a single key, because safetensors stores it in a hash map whose order, and so the file's
bytes, would otherwise vary between processes (a resumed run must write the same bytes as an
uninterrupted one). See docs/checkpoint-format.md.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor, nn

from ..core.atomic import atomic_directory
from ..core.device import where
from ..core.errors import CheckpointError
from ..core.readers import DTYPES, MAX_ABS_VALUE, MAX_HEADER_BYTES, MAX_TENSORS, check_values, read_safetensors
from ..methods.catalogue import Method, get_method
from ..methods.factors import LayerContext
from ..methods.update import LayerUpdate
from ..models.backbones import Backbone
from . import restore
from .claims import check_meta_claims, max_tensor_bytes
from .format import (
    FORMAT,
    FORMAT_VERSION,
    MAX_META_BYTES,
    MAX_SEED,
    META_FILE,
    TENSOR_FILE,
    TRAJECTORY_FILE,
    CheckpointMeta,
    LayerInfo,
    expected_tensors,
    is_checkpoint,
    load_meta,
)
from .provenance import relocate
from .trajectory import trajectory_updates

__all__ = [
    "DTYPES", "FORMAT", "FORMAT_VERSION", "MAX_ABS_VALUE", "MAX_HEADER_BYTES", "MAX_META_BYTES", "MAX_SEED",
    "MAX_TENSORS", "META_FILE", "TENSOR_FILE", "TRAJECTORY_FILE", "Checkpoint", "CheckpointMeta", "LayerInfo",
    "check_values", "expected_tensors", "is_checkpoint", "load_checkpoint", "load_meta", "read_safetensors",
    "save_checkpoint",
]


class Checkpoint:
    """A loaded checkpoint: metadata, trained tensors, and the means to rebuild the fine-tuned model.

    Nothing is cached across calls except W0 (read once, from the weights file where possible); a run
    context (:class:`genbound.sources.context.RunContext`) caches the backbone, the data and the models."""

    kind = "genbound"

    def __init__(self, path: Path, meta: CheckpointMeta, tensors: dict[str, Tensor]):
        self.path = path
        self.meta = meta
        self.tensors = tensors
        self.method: Method = get_method(meta.method)
        self._base_cache: dict[str, Tensor] | None = None

    def __repr__(self) -> str:
        return f"Checkpoint({str(self.path)!r}, method={self.meta.method}, rank={self.meta.rank})"

    # -- factored updates, no model needed ---------------------------------------------------------

    def layer_context(self, li: LayerInfo, links: int | None = None) -> LayerContext:
        """What the method's factor needs to read layer ``li`` (W0 is read only if the factor asks)."""
        m = self.meta
        return LayerContext(li.name, li.out_features, li.in_features, m.rank, float(m.scale), m.seed,
                            m.chain if links is None else links, {"paca_columns": m.paca_columns},
                            base=lambda: self._base_weight(li.name))

    def layer_tensors(self, name: str, tensors: dict[str, Tensor] | None = None, prefix: str = "") -> dict[str, Tensor]:
        """The stored tensors of layer ``name`` by suffix (``<prefix><layer>.<suffix>``)."""
        tensors = self.tensors if tensors is None else tensors
        head = f"{prefix}{name}."
        return {k[len(head):]: v for k, v in tensors.items() if k.startswith(head) and "." not in k[len(head):]}

    def _base_weight(self, name: str) -> Tensor:
        if self._base_cache is None:
            self._base_cache = self.base_weights()
        return self._base_cache[name]

    def updates_from(self, tensors: dict[str, Tensor], prefix: str = "") -> dict[str, LayerUpdate]:
        """dW of each adapted layer from ``tensors`` (the checkpoint's, or a trajectory step's under
        ``prefix``), as the method's factor kind reads them."""
        factor, out = self.method.factor, {}
        for li in self.meta.layers:
            layer = self.layer_tensors(li.name, tensors, prefix + factor.key_prefix)
            links = factor.links_in(layer, self.meta.rank) or self.meta.chain
            out[li.name] = factor.layer_update(self.layer_context(li, links), layer)
        return out

    def layer_updates(self) -> dict[str, LayerUpdate]:
        """dW of each adapted layer, factored (fft: dense, W_trained - W0)."""
        return self.updates_from(self.tensors)

    # -- backbone, data, model (genbound.checkpoints.restore) ------------------------------------------------------

    def load_backbone(self) -> Backbone:
        """The recorded backbone, refused if its weights' fingerprint differs from the checkpoint's."""
        return restore.load_backbone(self.meta, self.path)

    def load_splits(self):
        """The dataset split the checkpoint was trained on (same name, split seed and max length)."""
        return restore.load_splits(self.meta, self.path, self.load_backbone())

    def _pristine(self, device: torch.device | str) -> tuple[Backbone, nn.Module]:
        """(backbone, pristine model on ``device``): the pair the bounds' certificate starts from."""
        backbone = self.load_backbone()
        return backbone, restore.pristine_model(self.meta, self.path, backbone).to(device)

    def initial_model(self, device: torch.device | None = None) -> nn.Module:
        """The data-independent starting point: the pretrained backbone with the head drawn from the seed."""
        return restore.pristine_model(self.meta, self.path, self.load_backbone()).to(where(device)).eval()

    def base_weights(self) -> dict[str, Tensor]:
        """The pretrained W0 of every adapted layer, read from the backbone's weights file where it can be."""
        backbone = self.load_backbone()
        return restore.base_weights(self.meta, backbone,
                                    lambda: restore.pristine_model(self.meta, self.path, backbone))

    def build_model(self, device: torch.device | None = None, merged: bool = False) -> nn.Module:
        """The fine-tuned model in eval mode: backbone + adapters with the trained factors (the past links of
        a chain re-merged in training order, so the weights are bit-identical to training's), or with
        ``merged`` a plain model whose adapted weights are W0 + dW."""
        pristine = restore.pristine_model(self.meta, self.path, self.load_backbone())
        return restore.build_model(self, pristine, device, merged)

    def trained_parameter_names(self, model: nn.Module) -> list[str]:
        """Names in ``model.named_parameters()`` of the trained tensors (for a merged model: the adapted
        layers' weights and the head)."""
        return [n for n, p in model.named_parameters() if p.requires_grad]

    def data_spec(self):
        """The recorded dataset (name or data file with its column options; genbound.sources.source)."""
        return restore.dataset_spec(self.meta)

    def trajectory(self) -> list[dict[str, LayerUpdate]]:
        """dW of every adapted layer at each saved step (``meta.trajectory_steps``), oldest first."""
        return trajectory_updates(self)


def load_checkpoint(path: str | Path | Checkpoint, backbone: str | None = None,
                    dataset: str | None = None) -> Checkpoint:
    """Load a checkpoint directory; reads only JSON and safetensors and validates both. A checkpoint
    already loaded (or any other source, or a run context: genbound.sources.source, genbound.sources.context) is
    returned as it is, so that functions may take either without reading twice. ``backbone`` / ``dataset``
    point a moved run at its model folder and data, each accepted only if its fingerprint is the recorded one
    (genbound.checkpoints.provenance.relocate)."""
    if isinstance(path, Checkpoint):
        return path
    if hasattr(path, "build_model") and hasattr(path, "load_splits") and hasattr(path, "meta"):
        return path  # another full source (a peft adapter on its base model, a run context)
    path = Path(path)
    meta = relocate(load_meta(path), path, backbone, dataset)
    limit = max_tensor_bytes(check_meta_claims(meta, path))  # shapes against the backbone, before reading
    factor = get_method(meta.method).factor
    tensors = read_safetensors(path / TENSOR_FILE, expected_tensors(meta), allow_extra_prefix=factor.extra_prefix,
                               max_bytes=limit)
    if factor.extra_prefix is not None:  # the tensors beyond the expected ones: the run's dtype too
        dtype = getattr(torch, meta.dtype)
        wrong = [k for k, t in tensors.items() if t.dtype != dtype]
        if wrong:
            raise CheckpointError(f"{path}: tensor '{wrong[0]}' has dtype {tensors[wrong[0]].dtype}, expected {dtype}")
    ckpt = Checkpoint(path, meta, tensors)
    for li in meta.layers:
        factor.check_tensors(ckpt.layer_context(li), ckpt.layer_tensors(li.name, prefix=factor.key_prefix), path)
    return ckpt


def save_checkpoint(path: str | Path, meta: CheckpointMeta, tensors: dict[str, Tensor],
                    trajectory: dict[str, Tensor] | None = None, overwrite: bool = False,
                    may_replace=None, extra: dict[str, dict[str, Tensor]] | None = None) -> Path:
    """Write a checkpoint directory atomically (temporary directory, then rename). Two writers of one path:
    without ``overwrite`` the first wins and the second gets a CheckpointError; with it the last wins whole.
    ``extra`` maps further safetensors file names to their tensors (the subspace run's w: genbound.methods.subspace)."""
    from safetensors.torch import save_file

    path = Path(path)
    clean = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    text = json.dumps(meta.to_json(), indent=2, allow_nan=False) + "\n"
    try:
        with atomic_directory(path, overwrite=overwrite, may_replace=may_replace) as tmp:
            save_file(clean, str(tmp / TENSOR_FILE), metadata={"format": FORMAT})
            if trajectory:
                traj = {k: v.detach().to("cpu").contiguous() for k, v in trajectory.items()}
                save_file(traj, str(tmp / TRAJECTORY_FILE), metadata={"format": FORMAT})
            for fname, group in (extra or {}).items():
                save_file({k: v.detach().to("cpu").contiguous() for k, v in group.items()}, str(tmp / fname),
                          metadata={"format": FORMAT})
            (tmp / META_FILE).write_text(text)
    except FileExistsError:
        raise CheckpointError(f"{path} was written meanwhile (by another process, or files were put there); it "
                              "was kept as it is (pass --overwrite, overwrite=True from Python, to replace a "
                              "checkpoint, or choose another --out)"
                              ) from None
    return path
