"""The genbound checkpoint: a directory holding ``genbound.json`` and ``tensors.safetensors``.

Layout
------
``genbound.json``          metadata: format version, genbound version, method, rank, alpha, scale, chain,
                           every adapted layer (name, out_features n, in_features m), backbone name and
                           weight fingerprint, dataset, split seed and sizes (N = training examples), stored
                           dtype, all hyperparameters, seed, metrics and final results.
``tensors.safetensors``    the trained tensors: per adapted layer ``<layer>.B`` (n, k r) with ``<layer>.A``
                           (k r, m) for low-rank methods or ``<layer>.columns`` (k r,) for column methods (all
                           links concatenated; for PaCA B = P - P0, the change of the trained columns); the
                           head as ``head.weight`` / ``head.bias``; for fft every parameter as ``model.<name>``.
``trajectory.safetensors`` optional: the same tensors at saved steps, keys ``step<S>/<key>``.

Loading reads only JSON and safetensors (never pickle), checks every key, shape and dtype against the
metadata, refuses non-finite values, and refuses a backbone whose fingerprint or layer shapes differ.
Hostile input (truncated or bit-flipped files, absurd header sizes, deep or huge JSON, wrong types, a
metadata field changed so that the frozen factors or the class list no longer match) ends in one
:class:`~genbound.errors.CheckpointError` before any allocation larger than the file itself.
Writing is atomic: the directory is assembled beside its target and renamed into place. The safetensors
metadata holds a single key, because safetensors stores it in a hash map whose order, and so the file's
bytes, would otherwise vary between processes (a resumed run must write the same bytes as an
uninterrupted one).
"""

from __future__ import annotations

import dataclasses
import json
import math
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from . import __version__
from .atomic import atomic_directory
from .backbones import Backbone, get_backbone
from .claims import check_meta_claims, layout_for, max_tensor_bytes
from .device import where
from .errors import CheckpointError, GenboundError
from .factors import LayerContext
from .methods import Method, get_method
from .update import LayerUpdate
from .validation import parse_json, read_json, validate_checkpoint_meta

META_FILE = "genbound.json"
TENSOR_FILE = "tensors.safetensors"
TRAJECTORY_FILE = "trajectory.safetensors"
FORMAT = "genbound-checkpoint"
FORMAT_VERSION = 1
MAX_META_BYTES = 16 << 20
MAX_HEADER_BYTES = 64 << 20
MAX_TENSORS = 1 << 17
MAX_SEED = (1 << 63) - 1
# No trained or pretrained weight comes near this; a flipped exponent bit of a float32 does (up to 3e38),
# and such a value overflows every product that a model or a spectrum computes from it.
MAX_ABS_VALUE = 1e12
DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
          "I64": torch.int64}


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
    head_bias: bool = True  # False for heads without a bias (decoders' score layer)
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    params: dict[str, int] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)
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


# -- validation of untrusted metadata (types and ranges: genbound.validation) -------------------------


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


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

    if len(meta.classes) != meta.num_labels:
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


def check_values(tensors: dict[str, Tensor], where: Path | str, max_abs: float | None = MAX_ABS_VALUE) -> None:
    """Refuse NaN, Inf and (with ``max_abs``) implausibly large values in floating-point tensors."""
    for key, t in tensors.items():
        if not t.is_floating_point() or not t.numel():
            continue
        if not torch.isfinite(t).all():
            raise CheckpointError(f"{where}: tensor '{key}' contains NaN or Inf")
        if max_abs is not None:
            peak = float(t.detach().abs().max())
            if peak > max_abs:
                raise CheckpointError(f"{where}: tensor '{key}' holds a value of magnitude {peak:.3g}, beyond any "
                                      f"trained weight ({max_abs:.0e}); the file is corrupt")


def read_safetensors(path: Path, expected: dict[str, tuple[tuple[int, ...], torch.dtype]] | None = None,
                     allow_extra_prefix: str | None = None, max_abs: float | None = MAX_ABS_VALUE,
                     max_bytes: int | None = None) -> dict[str, Tensor]:
    """Read a safetensors file defensively: header size bounded and consistent with the file, every
    tensor's byte range inside the file, the claimed total at most ``max_bytes`` (a sparse file can claim
    gigabytes in kilobytes), keys / shapes / dtypes equal to ``expected``, values finite and (unless
    ``max_abs`` is None) at most ``max_abs`` in magnitude."""
    if not path.is_file():
        raise CheckpointError(f"{path} is missing")
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path}: file is truncated (no safetensors header)")
        (hlen,) = struct.unpack("<Q", head)
        if hlen > MAX_HEADER_BYTES or 8 + hlen > size:
            raise CheckpointError(f"{path}: safetensors header claims {hlen} bytes; the file is corrupt")
        header = parse_json(fh.read(hlen), path, "the safetensors header")
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: safetensors header is not a JSON object")
    header.pop("__metadata__", None)
    if len(header) > MAX_TENSORS:
        raise CheckpointError(f"{path}: safetensors header lists {len(header)} tensors; the file is corrupt")
    data_len = size - 8 - hlen
    for key, info in header.items():
        if not isinstance(info, dict) or not isinstance(info.get("dtype"), str) or info["dtype"] not in DTYPES:
            raise CheckpointError(f"{path}: tensor '{key}' has an unsupported or missing dtype")
        shape, offs = info.get("shape"), info.get("data_offsets")
        if (not isinstance(shape, list) or not all(isinstance(d, int) and 0 <= d <= 1 << 32 for d in shape)
                or not isinstance(offs, list) or len(offs) != 2
                or not all(isinstance(o, int) and 0 <= o <= data_len for o in offs) or offs[0] > offs[1]):
            raise CheckpointError(f"{path}: tensor '{key}' has a malformed shape or byte range")
        nbytes = math.prod(shape) * DTYPES[info["dtype"]].itemsize
        if offs[1] - offs[0] != nbytes:
            raise CheckpointError(f"{path}: tensor '{key}' byte range does not match its shape and dtype")
    claimed = sum(info["data_offsets"][1] - info["data_offsets"][0] for info in header.values())
    if max_bytes is not None and claimed > max_bytes:
        raise CheckpointError(f"{path}: the tensors claim {claimed / 2**20:.0f} MiB, more than a file for this "
                              f"backbone can hold ({max_bytes / 2**20:.0f} MiB); the file is corrupt or hostile")
    if expected is not None:
        keys = set(header)
        missing = sorted(set(expected) - keys)
        extra = sorted(k for k in keys - set(expected) if not (allow_extra_prefix and k.startswith(allow_extra_prefix)))
        if missing:
            raise CheckpointError(f"{path}: missing tensor '{missing[0]}' ({len(missing)} missing)")
        if extra:
            raise CheckpointError(f"{path}: unexpected tensor '{extra[0]}' ({len(extra)} extra)")
        for key, (shape, dtype) in expected.items():
            if tuple(header[key]["shape"]) != tuple(shape):
                raise CheckpointError(
                    f"{path}: tensor '{key}' has shape {tuple(header[key]['shape'])}, metadata says {tuple(shape)}"
                )
            if DTYPES[header[key]["dtype"]] != dtype:
                raise CheckpointError(f"{path}: tensor '{key}' has dtype {header[key]['dtype']}, expected {dtype}")
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
    except (SafetensorError, Exception) as exc:  # any parser failure on untrusted bytes is a corrupt file
        first = (str(exc).splitlines() or [exc.__class__.__name__])[0]
        raise CheckpointError(f"{path}: cannot be read as safetensors ({first})") from None
    check_values(tensors, path, max_abs)
    return tensors


# -- the checkpoint ------------------------------------------------------------------------------------


def expected_tensors(meta: CheckpointMeta, model_shapes: dict[str, tuple[int, ...]] | None = None,
                     chain_links: int | None = None) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """The keys, shapes and dtypes a checkpoint with ``meta`` must hold."""
    method = get_method(meta.method)
    dtype = getattr(torch, meta.dtype)
    out: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
    if not method.adapter:
        if model_shapes is None:
            # Without the model: the tensors every reader uses (adapted layers and head) must be there.
            out = {f"model.{li.name}.weight": ((li.out_features, li.in_features), dtype) for li in meta.layers}
            out["model.head.weight"] = ((meta.num_labels, meta.head_in_features), dtype)
            if meta.head_bias:
                out["model.head.bias"] = ((meta.num_labels,), dtype)
            return out
        return {f"model.{k}": (tuple(s), dtype) for k, s in model_shapes.items()}
    links = chain_links if chain_links is not None else meta.chain
    out["head.weight"] = ((meta.num_labels, meta.head_in_features), dtype)
    if meta.head_bias:
        out["head.bias"] = ((meta.num_labels,), dtype)
    for li in meta.layers:
        spec = method.factor.tensor_spec(li.out_features, li.in_features, meta.rank, links, dtype)
        out.update({f"{li.name}.{suffix}": v for suffix, v in spec.items()})
    return out


class Checkpoint:
    """A loaded checkpoint: metadata, trained tensors, and the means to rebuild the fine-tuned model."""

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

    def _updates_from(self, tensors: dict[str, Tensor], prefix: str = "") -> dict[str, LayerUpdate]:
        out = {}
        for li in self.meta.layers:
            layer = self.layer_tensors(li.name, tensors, prefix)
            links = self.method.factor.links_in(layer, self.meta.rank) or self.meta.chain
            out[li.name] = self.method.factor.layer_update(self.layer_context(li, links), layer)
        return out

    def layer_updates(self) -> dict[str, LayerUpdate]:
        """dW of each adapted layer, factored (fft: dense, W_trained - W0)."""
        if self.method.adapter:
            return self._updates_from(self.tensors)
        base = self.base_weights()
        return {
            li.name: LayerUpdate(li.name, li.out_features, li.in_features,
                                 dense=self.tensors[f"model.{li.name}.weight"] - base[li.name])
            for li in self.meta.layers
        }

    def head(self) -> dict[str, Tensor]:
        prefix = "model." if not self.method.adapter else ""
        return {k: self.tensors[f"{prefix}head.{k}"] for k in ("weight", "bias") if f"{prefix}head.{k}" in self.tensors}

    # -- backbone, data, model -------------------------------------------------------------------------

    def load_backbone(self) -> Backbone:
        """The recorded backbone, refused if its weights' fingerprint differs from the checkpoint's."""
        # A model folder trained before task models existed records no task: it was the pooled encoder.
        backbone = get_backbone(self.meta.backbone, self.meta.hyperparameters.get("task") or "pooled")
        if backbone.fingerprint != self.meta.fingerprint:
            raise CheckpointError(
                f"{self.path}: backbone '{self.meta.backbone}' has weights {backbone.fingerprint[:19]}… but the "
                f"checkpoint was trained on {self.meta.fingerprint[:19]}…; use the backbone it was trained on"
            )
        return backbone

    def load_splits(self):
        """The dataset split the checkpoint was trained on (same name, split seed and max length)."""
        from .datasets import get_dataset

        hp = self.meta.hyperparameters
        spec = get_dataset(self.meta.dataset, hp.get("text_columns"), hp.get("label_column"), hp.get("split_column"))
        splits = spec.load(self.load_backbone(), self.meta.split_seed, self.meta.max_length or 128)
        if list(splits.classes) != list(self.meta.classes):
            raise CheckpointError(
                f"{self.path}: dataset '{self.meta.dataset}' has classes {list(splits.classes)[:6]}, the checkpoint "
                f"recorded {list(self.meta.classes)[:6]}; it was trained on other data or edited"
            )
        if splits.sizes["train"] != self.meta.n_train:
            raise CheckpointError(
                f"{self.path}: dataset '{self.meta.dataset}' now has {splits.sizes['train']} training examples, "
                f"the checkpoint recorded {self.meta.n_train}; the data changed since training"
            )
        if self.meta.split_digest and splits.digest() != self.meta.split_digest:
            raise CheckpointError(
                f"{self.path}: the rebuilt '{self.meta.dataset}' split (split seed {self.meta.split_seed}) differs "
                "from the one the checkpoint was trained on; the split seed, tokenizer or data changed since training"
            )
        return splits

    def _pristine(self, device: torch.device | str) -> tuple[Backbone, nn.Module]:
        backbone = self.load_backbone()
        model = backbone.build(self.meta.num_labels, self.meta.seed).to(device)
        names = dict(model.named_modules())
        for li in self.meta.layers:
            mod = names.get(li.name)
            shape = (li.out_features, li.in_features)
            if not isinstance(mod, nn.Linear) or (mod.out_features, mod.in_features) != shape:
                got = f"{mod.out_features}x{mod.in_features}" if isinstance(mod, nn.Linear) else "no Linear"
                raise CheckpointError(
                    f"{self.path}: layer {li.name} is {li.out_features}x{li.in_features} in the checkpoint but "
                    f"{got} in backbone '{self.meta.backbone}'"
                )
        return backbone, model

    def initial_model(self, device: torch.device | None = None) -> nn.Module:
        """The data-independent starting point: the pretrained backbone with the head drawn from the seed."""
        return self._pristine(where(device))[1].eval()

    def base_weights(self) -> dict[str, Tensor]:
        """The pretrained W0 of every adapted layer."""
        _, model = self._pristine("cpu")
        mods = dict(model.named_modules())
        return {li.name: mods[li.name].weight.detach().clone() for li in self.meta.layers}

    def build_model(self, device: torch.device | None = None, merged: bool = False) -> nn.Module:
        """The fine-tuned model in eval mode: backbone + adapters with the trained factors (the past links of
        a chain re-merged in training order, so the weights are bit-identical to training's), or with
        ``merged`` a plain model whose adapted weights are W0 + dW."""
        from .adapters import attach_adapters, merge_adapters

        _, model = self._pristine("cpu")
        m = self.meta
        if not self.method.adapter:
            state = {k[len("model."):]: v for k, v in self.tensors.items()}
            params = dict(model.named_parameters())
            missing, extra = set(params) - set(state), set(state) - set(params)
            if missing:
                raise CheckpointError(f"{self.path}: fft checkpoint lacks parameter '{sorted(missing)[0]}'")
            if extra:
                raise CheckpointError(f"{self.path}: fft checkpoint has tensor 'model.{sorted(extra)[0]}' that "
                                      f"backbone '{m.backbone}' does not have")
            for k, p in params.items():
                if tuple(state[k].shape) != tuple(p.shape):
                    raise CheckpointError(f"{self.path}: tensor 'model.{k}' has shape {tuple(state[k].shape)}, "
                                          f"backbone '{m.backbone}' has {tuple(p.shape)}")
            model.load_state_dict(state, strict=False)
            for p in model.parameters():
                p.requires_grad_(True)
        else:
            adapters = attach_adapters(model, self.method, [li.name for li in m.layers], m.rank, m.alpha, m.seed,
                                       m.paca_columns)
            with torch.no_grad():
                for name, ad in adapters.items():
                    layer = self.layer_tensors(name)
                    for link in range(m.chain):
                        ad.factor.load_link(ad, layer, link, self.path)
                        if link < m.chain - 1:
                            ad.next_link()
                for k, p in model.head.named_parameters():
                    p.copy_(self.tensors[f"head.{k}"])
            if merged:
                merge_adapters(model)
                for li in m.layers:
                    model.get_submodule(li.name).weight.requires_grad_(True)
        model.to(where(device))
        model.eval()
        return model

    def trained_parameter_names(self, model: nn.Module) -> list[str]:
        """Names in ``model.named_parameters()`` of the trained tensors (for a merged model: the adapted
        layers' weights and the head)."""
        return [n for n, p in model.named_parameters() if p.requires_grad]

    def _check_trajectory(self, tensors: dict[str, Tensor]) -> None:
        """Every saved step holds the checkpoint's keys; a chain's snapshot holds the links reached by then
        (1..chain), so its widths are checked per step rather than against the final shapes."""
        where = self.path / TRAJECTORY_FILE
        if self.method.adapter:
            want: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
            for step in self.meta.trajectory_steps:
                first = self.meta.layers[0].name if self.meta.layers else None
                links = (self.method.factor.links_in(self.layer_tensors(first, tensors, f"step{step}/"),
                                                     self.meta.rank) or 0) if first else 0
                if first and not 1 <= links <= self.meta.chain:
                    raise CheckpointError(f"{where}: step {step} holds no valid factors of layer {first}")
                for k, v in expected_tensors(self.meta, chain_links=links or 1).items():
                    want[f"step{step}/{k}"] = v
        else:
            _, model = self._pristine("cpu")
            keys = expected_tensors(self.meta, {k: tuple(p.shape) for k, p in model.named_parameters()})
            want = {f"step{s}/{k}": v for s in self.meta.trajectory_steps for k, v in keys.items()}
        if set(tensors) != set(want):
            odd = sorted(set(tensors) ^ set(want))[0]
            raise CheckpointError(f"{where}: tensor '{odd}' is missing or unexpected; the file is corrupt")
        for k, (shape, dtype) in want.items():
            if tuple(tensors[k].shape) != shape or tensors[k].dtype != dtype:
                raise CheckpointError(f"{where}: tensor '{k}' has shape {tuple(tensors[k].shape)} and dtype "
                                      f"{tensors[k].dtype}, expected {shape} and {dtype}")
        if self.method.adapter:
            for step in self.meta.trajectory_steps:
                for li in self.meta.layers:
                    self.method.factor.check_tensors(self.layer_context(li),
                                                     self.layer_tensors(li.name, tensors, f"step{step}/"), where)

    def trajectory(self) -> list[dict[str, LayerUpdate]]:
        """dW of every adapted layer at each saved step (``meta.trajectory_steps``), oldest first."""
        if not self.meta.has_trajectory:
            raise CheckpointError(
                f"{self.path} was saved without a trajectory; retrain with --save-trajectory to use PCA directions"
            )
        limit = max_tensor_bytes(layout_for(self.meta.backbone))
        tensors = read_safetensors(self.path / TRAJECTORY_FILE,
                                   max_bytes=None if limit is None else limit * (len(self.meta.trajectory_steps) + 1))
        self._check_trajectory(tensors)
        out = []
        for step in self.meta.trajectory_steps:
            prefix = f"step{step}/"
            if self.method.adapter:
                out.append(self._updates_from(tensors, prefix))
            else:
                base = self.base_weights()
                out.append({
                    li.name: LayerUpdate(li.name, li.out_features, li.in_features,
                                         dense=tensors[f"{prefix}model.{li.name}.weight"] - base[li.name])
                    for li in self.meta.layers
                })
        return out


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


def load_checkpoint(path: str | Path | Checkpoint) -> Checkpoint:
    """Load a checkpoint directory; reads only JSON and safetensors and validates both. A checkpoint
    already loaded is returned as it is, so that functions may take either without reading twice."""
    if isinstance(path, Checkpoint):
        return path
    if hasattr(path, "build_model") and hasattr(path, "load_splits") and hasattr(path, "meta"):
        return path  # another full source (a peft adapter on its base model: genbound.peft_source)
    path = Path(path)
    meta = load_meta(path)
    limit = max_tensor_bytes(check_meta_claims(meta, path))  # shapes against the backbone, before reading
    if get_method(meta.method).adapter:
        tensors = read_safetensors(path / TENSOR_FILE, expected_tensors(meta), max_bytes=limit)
        ckpt = Checkpoint(path, meta, tensors)
        for li in meta.layers:
            ckpt.method.factor.check_tensors(ckpt.layer_context(li), ckpt.layer_tensors(li.name), path)
        return ckpt
    else:
        tensors = read_safetensors(path / TENSOR_FILE, expected_tensors(meta), allow_extra_prefix="model.",
                                   max_bytes=limit)
        dtype = getattr(torch, meta.dtype)
        wrong = [k for k, t in tensors.items() if t.dtype != dtype]
        if wrong:
            raise CheckpointError(f"{path}: tensor '{wrong[0]}' has dtype {tensors[wrong[0]].dtype}, expected {dtype}")
        bad = [k for k in tensors if not k.startswith("model.")]
        if bad:
            raise CheckpointError(f"{path}: unexpected tensor '{bad[0]}' in an fft checkpoint")
    return Checkpoint(path, meta, tensors)


def save_checkpoint(path: str | Path, meta: CheckpointMeta, tensors: dict[str, Tensor],
                    trajectory: dict[str, Tensor] | None = None, overwrite: bool = False,
                    may_replace=None, extra: dict[str, dict[str, Tensor]] | None = None) -> Path:
    """Write a checkpoint directory atomically (temporary directory, then rename). Two writers of one path:
    without ``overwrite`` the first wins and the second gets a CheckpointError; with it the last wins whole.
    ``extra`` maps further safetensors file names to their tensors (the subspace run's w: genbound.subspace)."""
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
