"""Import Hugging Face peft LoRA adapters, so that spectra, intruders and bounds read them like genbound's own.

A peft adapter directory (``save_pretrained``) holds ``adapter_config.json`` and ``adapter_model.safetensors``
(older ones: ``adapter_model.bin``, a pickle, read here only with ``torch.load(weights_only=True)``).
Tensors are keyed ``base_model.model.<module>.lora_A.weight`` (r, in) and ``...lora_B.weight`` (out, r);
embeddings use ``lora_embedding_A`` (r, num_embeddings) and ``lora_embedding_B`` (dim, r); DoRA adds
``lora_magnitude_vector`` (out,); ``modules_to_save`` modules and trained biases are stored whole.

Each adapted module becomes a :class:`LayerUpdate` dW = s B A in the (out, in) orientation of the linear map
it adds to (LoRA: Hu et al. 2021; docs/concepts.md, "Hugging Face peft"):

* s = lora_alpha / r, or lora_alpha / sqrt(r) with ``use_rslora`` (Kalajdzievski 2023), where r and alpha
  are per module from ``rank_pattern`` / ``alpha_pattern`` (a pattern key P matches module path M when M
  matches the regular expression ``(.*\\.)?(P)$``; the first matching key wins, as in peft);
* ``fan_in_fan_out`` (GPT-2's Conv1D stores its weight as (in, out)): the stored weight's update is dW^T;
* an embedding is the linear map from a one-hot token (in = num_embeddings) to its vector (out = dim), so
  B = lora_embedding_B, A = lora_embedding_A and the stored (num_embeddings, dim) update is (B A)^T s;
* DoRA (Liu et al. 2024) is a weight-dependent rescaling, W' = diag(m / ||V||_row) V with
  V = W0 + s B A (row norms of the (out, in) matrix; :func:`genbound.methods.factors.dora_weight`, the same
  definition genbound's own ``dora`` method trains with): dW = W' - W0 is exact but needs W0 and has full
  rank, so it is returned dense, only when the base weights are available; embeddings with DoRA are refused.

Singular values and intruder dimensions are invariant to which orientation is used up to swapping left and
right; genbound uses (out, in) throughout, and :meth:`PeftCheckpoint.base_weights` returns W0 in the same
orientation. :meth:`PeftCheckpoint.stored_delta` gives dW in the stored orientation (what peft's
``get_delta_weight`` returns), for merging.

Names. Module paths are those of the model peft wrapped. Where the base model is a genbound backbone
(MiniLM by its hub name ``sentence-transformers/all-MiniLM-L6-v2`` or its local folder, ``mlp``, a local
Hugging Face folder, or ``backbone=`` given explicitly), a path is mapped onto the name of a module of
genbound's model of that backbone, built on the meta device from its config (genbound.models.hfmodels: the names
the installed transformers gives the loaded model, not the keys of the weights file, which may be older):
the path under ``backbone.`` for a transformer, less leading components where the model lacks them
(``bert.encoder.layer.0.attention.self.query`` on MiniLM's pooled encoder becomes
``backbone.encoder.layer.0.attention.self.query``). Without a backbone, names stay peft's module paths.

What peft does not record: the number of training examples N (bounds take it as an option) and the data.
Refused with a one-line message: a non-LoRA peft type, LoRA on convolutions, variants whose dW is not
s B A relative to the recorded base (PiSSA / OLoRA / CorDA / LoftQ initialisations, which modify the base
weights; VeLoRA, MonteCLoRA, KaSA, BD-LoRA, Arrow, QALoRA, target_parameters, layer_replication), and any
tensor that is neither a LoRA factor, a DoRA magnitude, a trained bias nor a modules_to_save copy.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..checkpoints.claims import backbone_layout, max_tensor_bytes
from ..core.errors import CheckpointError, GenboundError
from ..core.readers import check_values, read_safetensors
from ..core.validation import check_pattern_work, read_json, validate_peft_config
from ..methods.catalogue import METHODS, get_method
from ..methods.factors import dora_weight
from ..methods.update import LayerUpdate
from ..models.backbones import Backbone, get_backbone
from ..models.checks import find_weights, refuse_sparse

CONFIG_FILE = "adapter_config.json"
SAFETENSORS_FILE = "adapter_model.safetensors"
BIN_FILE = "adapter_model.bin"
MINILM_HUB_NAMES = ("sentence-transformers/all-minilm-l6-v2", "all-minilm-l6-v2")
_PREFIX = "base_model.model."
_KINDS = ("lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B", "lora_magnitude_vector")
# Config fields whose presence means dW is not s B A on the recorded base weights.
_REFUSED_FIELDS = {
    "velora_config": "VeLoRA", "monteclora_config": "MonteCLoRA", "kasa_config": "KaSA",
    "use_bdlora": "BD-LoRA", "arrow_config": "Arrow", "use_qalora": "QALoRA",
    "target_parameters": "target_parameters (LoRA on raw parameters)", "layer_replication": "layer_replication",
}
_BASE_MODIFYING_INITS = ("pissa", "olora", "corda", "loftq")


def is_peft_dir(path: str | Path) -> bool:
    """True if ``path`` is a directory with a peft ``adapter_config.json``."""
    return (Path(path) / CONFIG_FILE).is_file()


@dataclass
class PeftLayer:
    """One adapted module: its genbound name, peft's module path, kind and per-module rank / alpha / scale."""

    name: str
    module: str  # peft's module path (without "base_model.model.")
    kind: str  # "linear", "conv1d" (fan_in_fan_out) or "embedding"
    out_features: int
    in_features: int
    rank: int
    alpha: float
    scale: float
    transposed: bool  # the stored weight is (in, out): Conv1D / fan_in_fan_out, embeddings
    dora: bool = False


@dataclass
class PeftMeta:
    """What the adapter records, in the field names of genbound's CheckpointMeta where they mean the same."""

    method: str  # "lora", "lora (rsLoRA)", "lora (DoRA)", "lora (rsLoRA, DoRA)"
    rank: int  # the config's default r (per-layer ranks in ``layers``)
    alpha: float
    scale: float  # the default s; per-layer in ``layers``
    chain: int
    layers: list[PeftLayer]
    backbone: str | None  # genbound backbone name or folder, when resolved
    fingerprint: str | None
    base_model: str | None  # base_model_name_or_path as recorded
    peft_type: str
    peft_version: str | None
    use_rslora: bool
    use_dora: bool
    fan_in_fan_out: bool
    target_modules: Any
    modules_to_save: list[str]
    rank_pattern: dict[str, int]
    alpha_pattern: dict[str, float]
    bias: str
    task_type: str | None
    tensor_file: str
    n_train: int | None = None  # peft does not record N: bounds take it as an option
    params: dict[str, int] = field(default_factory=dict)
    extra_trained: list[str] = field(default_factory=list)  # biases and modules_to_save tensors
    sources: dict[str, Any] = field(default_factory=dict)  # the resolved base model by path and fingerprint

    @property
    def shapes(self) -> list[tuple[int, int]]:
        return [(li.out_features, li.in_features) for li in self.layers]


_MAX_MODULE_CHARS = 256  # peft module paths are ~30-100 characters
_MAX_PATTERN_QUANTIFIERS = 2


def _check_pattern(key: str) -> None:
    """Refuse patterns whose backtracking could hang (re has no timeout): a quantified group such as
    ``(a+)+`` is exponential, and each unbounded quantifier multiplies the work by the name's length (three
    ``.*`` on 500 characters took 8 s). Real rank / alpha patterns are module names or ``^...\\.q_proj$``."""
    quantifiers = sum(key.count(c) for c in "*+?{")
    if (not isinstance(key, str) or len(key) > _MAX_MODULE_CHARS or re.search(r"\)[*+?{]", key)
            or quantifiers > _MAX_PATTERN_QUANTIFIERS):
        raise GenboundError(
            f"adapter_config.json: pattern '{str(key)[:60]}' is too complex to match safely (at most "
            f"{_MAX_PATTERN_QUANTIFIERS} quantifiers, none on a group); use module names"
        )


def _pattern_value(patterns: dict, module: str, default):
    """peft's rule: the first key P with ``re.match(r"(.*\\.)?(P)$", module)`` gives the value."""
    if len(module) > _MAX_MODULE_CHARS:
        raise GenboundError(f"module path '{module[:60]}...' is implausibly long; the adapter is corrupt")
    for key, value in patterns.items():
        _check_pattern(key)
        try:
            if re.match(rf"(.*\.)?({key})$", module):
                if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) \
                        or value <= 0:
                    raise GenboundError(f"adapter_config.json: pattern '{key}' gives {value!r}, not a positive number")
                return value
        except re.error:
            raise GenboundError(f"adapter_config.json: pattern '{key}' is not a valid regular expression") from None
    return default


def _read_config(path: Path) -> dict:
    cfg = read_json(path / CONFIG_FILE, CONFIG_FILE)
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{path / CONFIG_FILE} is not a JSON object")
    return cfg


def _check_config(cfg: dict, path: Path) -> None:
    ptype = str(cfg.get("peft_type", "")).upper()
    if ptype != "LORA":
        raise GenboundError(
            f"{path}: peft adapter type '{cfg.get('peft_type')}' is not supported; genbound imports LoRA adapters "
            "(peft_type LORA) only"
        )
    for key, label in _REFUSED_FIELDS.items():
        if cfg.get(key):
            raise GenboundError(f"{path}: the LoRA variant {label} is not supported (its update is not s B A)")
    init = cfg.get("init_lora_weights", True)
    if isinstance(init, str) and init.lower().startswith(_BASE_MODIFYING_INITS):
        raise GenboundError(
            f"{path}: init_lora_weights='{init}' modifies the base weights, so dW is not s B A on the recorded base "
            "model; save it with path_initial_model_for_weight_conversion to get a plain LoRA adapter"
        )
    validate_peft_config(cfg, path)  # types and ranges of r, lora_alpha, the patterns, names (validation.py)


def _check_archive(bn: Path, max_bytes: int | None) -> None:
    """Refuse a pickle archive whose entries would inflate: torch.save stores its zip entries uncompressed,
    so a compressed entry, or entries claiming more bytes than the file holds (or than ``max_bytes``), is a
    zip bomb, refused before torch.load allocates anything."""
    import zipfile

    size = bn.stat().st_size
    if not zipfile.is_zipfile(bn):
        return  # torch's legacy format: nothing inflates, the file's size bounds what it holds
    try:
        with zipfile.ZipFile(bn) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, RuntimeError):
        raise CheckpointError(f"{bn}: not a readable torch archive; the file is corrupt") from None
    claimed = sum(i.file_size for i in infos)
    if any(i.compress_type != zipfile.ZIP_STORED for i in infos) or claimed > size \
            or (max_bytes is not None and claimed > max_bytes):
        raise CheckpointError(f"{bn}: its entries claim {claimed / 2**20:.0f} MiB in a {size / 2**20:.1f} MiB file "
                              "(torch.save never compresses); the file is a zip bomb or corrupt")


def _load_tensors(path: Path, max_bytes: int | None = None) -> tuple[dict[str, Tensor], str]:
    st, bn = path / SAFETENSORS_FILE, path / BIN_FILE
    if max_bytes is None:  # no base model bounds the claim: at least refuse a file of holes
        refuse_sparse(st if st.is_file() else bn)
    if st.is_file():
        return read_safetensors(st, max_bytes=max_bytes), st.name
    if bn.is_file():
        _check_archive(bn, max_bytes)
        import warnings

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch's own two-line warning says nothing the message below does not
                obj = torch.load(str(bn), map_location="cpu", weights_only=True)
        except Exception as exc:  # an unpickling refusal or a corrupt file: one line, no traceback
            # torch's message advises weights_only=False, i.e. running the file's code: never repeat that.
            raise CheckpointError(
                f"{bn}: refused by the safe tensor loader ({exc.__class__.__name__}): it is corrupt or holds more than "
                "tensors; save the adapter with safe_serialization=True (adapter_model.safetensors)"
            ) from None
        if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()):
            raise CheckpointError(f"{bn}: not a dictionary of tensors")

        check_values(obj, bn)  # the same value checks as the safetensors path
        return dict(obj), bn.name
    raise CheckpointError(f"{path}: no {SAFETENSORS_FILE} or {BIN_FILE} beside {CONFIG_FILE}")


def _split_key(key: str) -> tuple[str, str, str | None] | None:
    """'<module>.<kind>[.<adapter>][.weight|.bias]' -> (module, kind, param) for LoRA tensors, else None."""
    parts = key.split(".")
    for i in range(len(parts) - 1, 0, -1):
        if parts[i] in _KINDS:
            tail = parts[i + 1:]
            param = tail[-1] if tail and tail[-1] in ("weight", "bias") else None
            if len(tail) - (param is not None) > 1:
                return None
            return ".".join(parts[:i]), parts[i], param
    return None


def _saved_module(module: str, modules_to_save: list[str]) -> bool:
    """Whether a tensor of ``module`` belongs to a modules_to_save copy: peft wraps every module whose name ends
    with an entry (a plain string suffix: ``classifier`` also wraps DistilBERT's ``pre_classifier``), and a
    wrapped module's tensors are those of its submodules too."""
    parts = module.split(".")
    prefixes = [".".join(parts[:i]) for i in range(1, len(parts) + 1)]
    return any(p.endswith(m) for p in prefixes for m in modules_to_save)


def _resolve_backbone(backbone, base_model: str | None):
    if isinstance(backbone, Backbone):
        return backbone
    if backbone:
        return get_backbone(str(backbone))
    if not base_model:
        return None
    if base_model.strip().lower() in MINILM_HUB_NAMES or base_model.strip().lower().endswith("/all-minilm-l6-v2"):
        return get_backbone("minilm")
    p = Path(base_model)
    if p.is_dir():
        try:
            minilm = get_backbone("minilm")
            if minilm.folder is not None and p.resolve() == Path(minilm.folder).resolve():
                return minilm
        except GenboundError:
            pass
        if (p / "config.json").is_file() and find_weights(p) is not None:
            return get_backbone(str(p))
    return None


def _module_kinds(backbone) -> dict[str, str]:
    """Module name -> "linear" / "embedding" for every Linear and Embedding of genbound's model of
    ``backbone``, built on the meta device (genbound.models.hfmodels): the names the loaded model has, whatever the
    keys of its weights file are."""
    from torch import nn

    from ..models.hfmodels import empty_model

    out = {}
    for name, mod in empty_model(backbone).named_modules():
        if isinstance(mod, nn.Linear):
            out[name] = "linear"
        elif isinstance(mod, nn.Embedding):
            out[name] = "embedding"
    return out


def _map_name(module: str, modules: dict[str, str], backbone) -> str | None:
    """peft's module path -> the name of that module in genbound's model: the path under ``backbone.`` (a
    transformers model) less as many leading components as it takes (an adapter on a task model
    ``bert.encoder...`` or on genbound's own export ``backbone.encoder...``), else the one module whose name
    ends with it (an adapter trained on the bare encoder, applied to the task model)."""
    prefix = "" if backbone.kind == "mlp" else "backbone."
    parts = module.split(".")
    for i in range(len(parts)):
        name = prefix + ".".join(parts[i:])
        if name in modules:
            return name
    ends = [n for n in modules if n.endswith("." + module)]
    return ends[0] if len(ends) == 1 else None


class PeftCheckpoint:
    """A loaded peft LoRA adapter: metadata, tensors, and the factored updates (a source without data:
    genbound.sources.source)."""

    kind = "peft"

    def __init__(self, path: Path, config: dict, tensors: dict[str, Tensor], meta: PeftMeta,
                 factors: dict[str, dict[str, Tensor]], backbone):
        self.path = path
        self.config = config
        self.tensors = tensors
        self.meta = meta
        self._factors = factors
        self._backbone = backbone

    def __repr__(self) -> str:
        return f"PeftCheckpoint({str(self.path)!r}, method={self.meta.method!r}, rank={self.meta.rank})"

    @property
    def method(self):
        """genbound's Method: the one a genbound export recorded, else ``dora`` for a DoRA adapter (A, B and
        the magnitude trained), else ``lora``."""
        if self.meta.method in METHODS:
            return get_method(self.meta.method)
        return get_method("dora" if self.meta.use_dora else "lora")

    def _layer(self, name: str) -> PeftLayer:
        for li in self.meta.layers:
            if li.name == name:
                return li
        raise GenboundError(f"{self.path}: no adapted layer named '{name}'")

    def _factored(self, li: PeftLayer) -> LayerUpdate:
        f = self._factors[li.name]
        return LayerUpdate(li.name, li.out_features, li.in_features, li.scale, f["B"], f["A"])

    def layer_updates(self) -> dict[str, LayerUpdate]:
        """dW of each adapted module in (out, in) orientation: factored s B A, or dense for DoRA."""
        out: dict[str, LayerUpdate] = {}
        base = None
        for li in self.meta.layers:
            if not li.dora:
                out[li.name] = self._factored(li)
                continue
            if base is None:
                if self._backbone is None:
                    raise GenboundError(
                        f"{self.path}: layer {li.name} uses DoRA, whose update depends on the base weights; "
                        "pass --backbone (minilm, mlp or a model folder) so that dW can be computed exactly"
                    )
                base = self.base_weights()
            W0 = base[li.name].to(torch.float64)
            f = self._factored(li).to("cpu", torch.float64)
            mag = self._factors[li.name]["magnitude"].to(torch.float64)
            try:
                dense = dora_weight(W0, f.B, f.A, f.scale, mag) - W0  # the catalogue's DoRA definition
            except GenboundError:
                raise GenboundError(f"layer {li.name}: a row of W0 + dW is zero, so its DoRA scaling is "
                                    "undefined") from None
            out[li.name] = LayerUpdate(li.name, li.out_features, li.in_features, dense=dense)
        return out

    def stored_delta(self, name: str) -> Tensor:
        """dW of module ``name`` in the orientation of its stored weight (peft's ``get_delta_weight``)."""
        li = self._layer(name)
        u = self.layer_updates()[name] if li.dora else self._factored(li)
        d = u.materialize()
        return d.T if li.transposed else d

    def data_spec(self) -> None:
        """peft records no data."""
        return None

    def base_weights(self) -> Mapping[str, Tensor]:
        """W0 of each adapted module, in the (out, in) orientation of :meth:`layer_updates`: memory-mapped from the
        base's weights file and read as each layer is used (:class:`~genbound.core.readers.LazyTensors`; the
        model is never built), or, where transformers converts a weight on loading, from the built model."""
        if self._backbone is None:
            raise GenboundError(
                f"{self.path}: base model '{self.meta.base_model}' is not available offline; pass --backbone "
                "(minilm, mlp or a local Hugging Face model folder)"
            )
        from torch import nn

        from ..core.readers import LazyTensors
        from ..models.hfmodels import checkpoint_names

        bb = self._backbone
        by_param = {param: key for key, param in checkpoint_names(bb).items() if param is not None}
        keys = {li.name: by_param.get(f"{li.name}.weight") for li in self.meta.layers}
        if all(keys.values()):  # every weight stored as it is: memory-mapped, each read when it is used
            lazy = LazyTensors(Path(bb.weights), keys, [li.name for li in self.meta.layers if li.transposed])
            for li in self.meta.layers:
                if lazy.shape(li.name) != (li.out_features, li.in_features):
                    raise GenboundError(
                        f"layer {li.name}: backbone weight is {lazy.shape(li.name)} but the adapter's factors give "
                        f"{li.out_features}x{li.in_features}; the adapter was made for another base model"
                    )
            return lazy
        # a weight transformers converts on loading: take it from the built model
        mods = dict(bb.build(2, 0).named_modules())
        raw = {li.name: (mods[li.name].weight.detach(), isinstance(mods[li.name], nn.Embedding))
               for li in self.meta.layers}
        out = {}
        for li in self.meta.layers:
            W, transposed = raw[li.name]
            W = W.T if transposed else W
            if tuple(W.shape) != (li.out_features, li.in_features):
                raise GenboundError(
                    f"layer {li.name}: backbone weight is {tuple(W.shape)} but the adapter's factors give "
                    f"{li.out_features}x{li.in_features}; the adapter was made for another base model"
                )
            out[li.name] = W.to(torch.float32).clone()
        return out


@dataclass
class _LoraOptions:
    """The adapter_config.json fields that shape the factors: default rank and alpha, their per-module
    patterns, rsLoRA / DoRA / fan_in_fan_out, the bias mode and the modules saved whole."""

    r0: int
    a0: float
    rank_pattern: dict
    alpha_pattern: dict
    rslora: bool
    dora: bool
    fifo: bool
    bias_mode: str
    mts: list[str]

    @classmethod
    def from_config(cls, cfg: dict) -> _LoraOptions:
        mts = cfg.get("modules_to_save") or []
        return cls(r0=cfg["r"], a0=float(cfg["lora_alpha"]), rank_pattern=dict(cfg.get("rank_pattern") or {}),
                   alpha_pattern=dict(cfg.get("alpha_pattern") or {}), rslora=bool(cfg.get("use_rslora")),
                   dora=bool(cfg.get("use_dora")), fifo=bool(cfg.get("fan_in_fan_out")),
                   bias_mode=str(cfg.get("bias") or "none"), mts=[mts] if isinstance(mts, str) else list(mts))


def load_peft(path: str | Path, backbone=None, resolve: bool = True) -> PeftCheckpoint:
    """Read a peft LoRA adapter directory; ``backbone`` (a genbound name, folder or Backbone) overrides the
    recorded base model for naming and base weights. ``resolve=False`` keeps peft's module paths and resolves
    no base (genbound.sources.peft_source maps them onto the built model itself)."""
    path = Path(path)
    if not is_peft_dir(path):
        raise CheckpointError(f"{path} is not a peft adapter directory: it has no {CONFIG_FILE}")
    cfg = _read_config(path)
    _check_config(cfg, path)
    bb = _resolve_backbone(backbone, cfg.get("base_model_name_or_path")) if resolve else None

    # An adapter is a small fraction of its base model: its tensors may claim at most a small multiple of it.
    tensors, tensor_file = _load_tensors(path, max_tensor_bytes(backbone_layout(bb)) if bb is not None else None)
    opts = _LoraOptions.from_config(cfg)
    modules = _module_kinds(bb) if bb is not None else None
    groups, extra, extra_params = _group_tensors(tensors, opts, path)
    check_pattern_work([*opts.rank_pattern, *opts.alpha_pattern], list(groups), path / CONFIG_FILE)

    layers: list[PeftLayer] = []
    factors: dict[str, dict[str, Tensor]] = {}
    adapter_params = 0
    for module, g in groups.items():
        layer = _peft_layer(module, g, opts, path, modules, bb)
        layers.append(layer)
        factors[layer.name] = {"A": g["lora_embedding_A" if layer.kind == "embedding" else "lora_A"],
                               "B": g["lora_embedding_B" if layer.kind == "embedding" else "lora_B"]}
        if opts.dora:
            factors[layer.name]["magnitude"] = g["lora_magnitude_vector"].reshape(-1)
        adapter_params += layer.rank * (layer.out_features + layer.in_features) + (layer.out_features if opts.dora
                                                                                 else 0)
    if len({li.name for li in layers}) != len(layers):
        raise GenboundError(f"{path}: two adapted modules map onto one backbone layer")
    meta = _peft_meta(cfg, opts, bb, layers, tensor_file, adapter_params, extra, extra_params)
    _apply_genbound_record(cfg, meta, path)
    return PeftCheckpoint(path, cfg, tensors, meta, factors, bb)


def _group_tensors(tensors: dict[str, Tensor], opts: _LoraOptions,
                   path: Path) -> tuple[dict[str, dict[str, Tensor]], list[str], int]:
    """The adapter's tensors sorted: LoRA factors (and DoRA magnitudes) grouped by module, and the other
    trained tensors (LoRA biases, trained biases, modules_to_save copies) listed with their scalar count;
    anything else is refused, since it could not be accounted for."""
    groups: dict[str, dict[str, Tensor]] = {}
    extra: list[str] = []
    extra_params = 0
    for key, t in tensors.items():
        k = key[len(_PREFIX):] if key.startswith(_PREFIX) else key
        split = _split_key(k)
        if split is not None:
            module, kind, param = split
            if param == "bias":
                if kind != "lora_B":
                    raise GenboundError(f"{path}: unexpected tensor '{key}'")
                extra.append(key)  # lora_bias: a trained bias beside dW
                extra_params += t.numel()
                continue
            groups.setdefault(module, {})[kind] = t
            continue
        if _saved_module(k.rsplit(".", 1)[0], opts.mts) or (k.endswith(".bias")
                                                            and opts.bias_mode in ("all", "lora_only")):
            extra.append(key)
            extra_params += t.numel()
            continue
        raise GenboundError(
            f"{path}: tensor '{key}' is neither a LoRA factor, a DoRA magnitude, a trained bias nor a modules_to_save "
            "copy; genbound cannot account for it"
        )
    if not groups:
        raise GenboundError(f"{path}: the adapter holds no LoRA factors")
    return groups, extra, extra_params


def _peft_layer(module: str, g: dict[str, Tensor], opts: _LoraOptions, path: Path, modules, bb) -> PeftLayer:
    """One adapted module's record, its factors checked against the config (rank, DoRA, finite floats) and
    its name mapped onto the backbone's modules when a backbone is resolved."""
    emb = "lora_embedding_A" in g or "lora_embedding_B" in g
    A = g.get("lora_embedding_A" if emb else "lora_A")
    B = g.get("lora_embedding_B" if emb else "lora_B")
    if A is None or B is None:
        raise GenboundError(f"{path}: layer {module} has only one of its two LoRA factors")
    if A.dim() != 2 or B.dim() != 2:
        raise GenboundError(
            f"{path}: layer {module} has {A.dim()}-D LoRA factors; LoRA on convolutions is not supported"
        )
    r = _pattern_value(opts.rank_pattern, module, opts.r0)
    alpha = float(_pattern_value(opts.alpha_pattern, module, opts.a0))
    if A.shape[0] != r or B.shape[1] != r:
        raise GenboundError(
            f"{path}: layer {module} has factors A {tuple(A.shape)} and B {tuple(B.shape)} but the config "
            f"gives rank {r}; the adapter is inconsistent"
        )
    for label, t in (("A", A), ("B", B)):
        if not t.is_floating_point():
            raise GenboundError(f"{path}: layer {module}: factor {label} is not a floating-point tensor")
        if not torch.isfinite(t).all():
            raise GenboundError(f"{path}: layer {module}: factor {label} contains NaN or Inf")
    n, m = int(B.shape[0]), int(A.shape[1])
    dora = opts.dora
    has_mag = "lora_magnitude_vector" in g
    if has_mag != dora:
        raise GenboundError(
            f"{path}: layer {module} {'has' if has_mag else 'lacks'} a DoRA magnitude but use_dora is {dora}"
        )
    if dora:
        if emb:
            raise GenboundError(f"{path}: layer {module}: DoRA on embeddings is not supported")
        mag = g["lora_magnitude_vector"].reshape(-1)
        if mag.numel() != n or not torch.isfinite(mag).all():
            raise GenboundError(f"{path}: layer {module}: DoRA magnitude has {mag.numel()} entries, expected {n}")
    scale = alpha / math.sqrt(r) if opts.rslora else alpha / r
    name = module
    if modules is not None:
        name = _map_name(module, modules, bb)
        if name is None:
            raise GenboundError(
                f"{path}: layer {module} is not a module of backbone '{bb.name}'; the adapter was made for "
                "another base model (pass --backbone)"
            )
    kind = "embedding" if emb else ("conv1d" if opts.fifo else "linear")
    return PeftLayer(name, module, kind, n, m, int(r), alpha, scale, emb or opts.fifo, dora)


def _peft_meta(cfg: dict, opts: _LoraOptions, bb, layers: list[PeftLayer], tensor_file: str, adapter_params: int,
               extra: list[str], extra_params: int) -> PeftMeta:
    """The adapter's record: method label (rsLoRA / DoRA), default rank and scale, the config's fields, the
    base model's provenance and the trained-scalar counts (every stored scalar is data-dependent)."""
    label = ", ".join(x for x, on in (("rsLoRA", opts.rslora), ("DoRA", opts.dora)) if on)
    fingerprint, sources = None, {}
    if bb is not None:
        from ..checkpoints.provenance import backbone_record

        fingerprint = bb.fingerprint
        sources = {"backbone": backbone_record(bb.name, bb)}
    r0, a0 = opts.r0, opts.a0
    return PeftMeta(
        method=f"lora ({label})" if label else "lora",
        rank=int(r0), alpha=a0, scale=a0 / math.sqrt(r0) if opts.rslora else a0 / r0, chain=1, layers=layers,
        backbone=bb.name if bb is not None else None, fingerprint=fingerprint,
        base_model=cfg.get("base_model_name_or_path"), peft_type="LORA", peft_version=cfg.get("peft_version"),
        use_rslora=opts.rslora, use_dora=opts.dora, fan_in_fan_out=opts.fifo, target_modules=cfg.get("target_modules"),
        modules_to_save=opts.mts, rank_pattern=opts.rank_pattern, alpha_pattern=opts.alpha_pattern,
        bias=opts.bias_mode, task_type=cfg.get("task_type"), tensor_file=tensor_file,
        params={"adapter": int(adapter_params), "extra": int(extra_params),
                "trainable": int(adapter_params + extra_params),
                "data_dependent": int(adapter_params + extra_params)},
        extra_trained=extra, sources=sources,
    )


def _apply_genbound_record(cfg: dict, meta: PeftMeta, path: Path) -> None:
    """An adapter written by ``genbound export`` records its method and data-dependent count D under the key
    ``genbound``: keep them (a cLA export is cLA with D = r sum n, not a LoRA with r sum (m + n))."""
    rec = cfg.get("genbound")
    if rec is None:
        return
    if not isinstance(rec, dict) or rec.get("method") not in METHODS:
        raise GenboundError(f"{path}: adapter_config.json field 'genbound' does not name a genbound method")
    d = rec.get("data_dependent")
    total = meta.params["trainable"]
    if not isinstance(d, int) or isinstance(d, bool) or not 0 < d <= total:
        raise GenboundError(f"{path}: the recorded data-dependent count {d!r} is not a count between 1 and the "
                            f"adapter's {total} stored scalars; the adapter was edited")
    n = rec.get("n_train")
    meta.method = rec["method"]
    meta.chain = int(rec.get("chain") or 1) if isinstance(rec.get("chain"), int) else 1
    meta.params["data_dependent"] = d
    if isinstance(n, int) and not isinstance(n, bool) and n > 0:
        meta.n_train = n
