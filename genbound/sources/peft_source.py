"""A peft LoRA adapter as a full source: the researcher's model rebuilt, evaluated and analysed like a checkpoint.

:func:`genbound.sources.peft_import.load_peft` reads an adapter's factors; this module puts them back on the base
model, so that ``evaluate``, ``bounds``, ``hessian``, ``landscape`` and ``compare`` run on it:

* the base is the local model folder given as ``backbone`` (``--backbone DIR``) or recorded in the adapter's
  ``base_model_name_or_path`` (never the hub), built as its own task model
  (:class:`genbound.models.backbones.TaskClassifier`: the model's own pooling and head), or, for an adapter with
  ``task_type`` CAUSAL_LM, as its ``AutoModelForCausalLM`` (:class:`genbound.models.causal_lm.CausalLM`) evaluated
  with the next-token loss on the texts of ``--dataset``;
* every adapted Linear (GPT-2's Conv1D included: genbound holds it as the equal Linear, so a
  ``fan_in_fan_out`` update is applied transposed back) becomes an :class:`~genbound.methods.adapters.AdaptedLinear`
  with the adapter's A and B and its per-layer scale (alpha / r, alpha / sqrt(r) with rsLoRA, ``rank_pattern``
  and ``alpha_pattern`` resolved as peft does), or, with ``merged``, a plain Linear with W0 + s B A;
* ``modules_to_save`` tensors (the classifier, or any other module copied whole) and trained biases are
  restored; they count as trained, like the factors.

The forward then equals peft's ``PeftModel`` forward (the tests check it to 1e-5 in the logits on BERT-,
RoBERTa-, GPT-2-, Llama- and ViT-style models). peft records neither the data nor N: the dataset comes from
the caller (``--dataset``), and N is its training split's size.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..checkpoints.checkpoint import load_checkpoint
from ..checkpoints.provenance import backbone_record
from ..core.device import where
from ..core.errors import CheckpointError, GenboundError
from ..data.datafiles import MissingColumnError
from ..data.datasets import default_dataset_for, get_dataset
from ..methods.adapters import AdaptedLinear
from ..methods.catalogue import METHODS, get_method
from ..methods.update import LayerUpdate
from ..models.backbones import BACKBONES, get_backbone
from ..models.hfmodels import empty_model
from ..models.pretrained import pretrained_weights
from .hypothesis import Hypothesis
from .peft_import import PeftCheckpoint, is_peft_dir, load_peft
from .tasks import check_checkpoint_task, peft_task, task_hint


@dataclass
class DataChoice:
    """The dataset a source without recorded data is evaluated on (the CLI's --dataset and its options)."""

    dataset: str | None = None
    text_columns: list[str] | None = None
    label_column: str | None = None
    split_column: str | None = None
    split_seed: int = 0
    max_length: int = 128

    def load(self, backbone):
        name = self.dataset or default_dataset_for(backbone)
        return get_dataset(name, self.text_columns, self.label_column, self.split_column).load(
            backbone, self.split_seed, self.max_length)


@dataclass
class PeftSourceMeta:
    """What a peft source says about itself, in the field names genbound's reports read."""

    method: str
    rank: int
    alpha: float
    scale: float
    chain: int
    layers: list
    backbone: str
    fingerprint: str
    dataset: str | None
    split_seed: int
    max_length: int | None
    num_labels: int
    classes: list[str]
    n_train: int | None
    sizes: dict[str, int]
    seed: int = 0
    dtype: str = "float32"
    head_in_features: int | None = None
    params: dict[str, int] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)
    history: list = field(default_factory=list)
    trajectory_steps: list[int] = field(default_factory=list)
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    peft: Any = None  # the adapter's PeftMeta
    sources: dict[str, Any] = field(default_factory=dict)  # the base model by path and fingerprint

    @property
    def shapes(self) -> list[tuple[int, int]]:
        return [(li.out_features, li.in_features) for li in self.layers]

    @property
    def has_trajectory(self) -> bool:
        return False


def _resolve_base(ck: PeftCheckpoint, backbone: str | None, task: str | None = None):
    """(the base model folder as a task-model Backbone: ``backbone`` or the adapter's local base path, why it was
    built for its task: genbound.sources.tasks.peft_task)."""
    base = backbone or ck.meta.base_model
    own = _own_model(ck, base)
    if own is not None:
        if task is not None and task != own.task:
            raise GenboundError(f"{ck.path} is an export of genbound's {own.name} model ({own.task}); drop --task")
        return own, f"genbound's own {own.name} model"
    if base == "minilm" or (ck.meta.backbone == "minilm" and not backbone):
        base = str(BACKBONES["minilm"]().folder)
    if not base or not Path(base).is_dir():
        raise GenboundError(
            f"{ck.path}: base model '{ck.meta.base_model}' is not a local folder; pass --backbone DIR (the model "
            "folder the adapter was trained on; genbound never downloads it)"
        )
    # --task, else the adapter's task_type, its saved classifier, the base config's architectures.
    saved = [k.removeprefix("base_model.model.") for k in ck.meta.extra_trained]
    task, why = peft_task(ck.meta.task_type, saved, base, task)
    if task == "pooled":
        raise GenboundError(f"{ck.path}: a peft adapter is evaluated on its model's own head; pass --task seq-cls, "
                            "image-cls or causal-lm")
    bb = get_backbone(str(base), task)
    if bb.task not in ("seq-cls", "image-cls", "causal-lm"):
        raise GenboundError(f"{base}: a peft adapter is evaluated on its model's own classifier; use a model folder")
    return bb, why


def _own_model(ck: PeftCheckpoint, base: str | None):
    """genbound's own model for a registered backbone name (``minilm``, ``mlp``, ...) when every adapted module
    of the adapter is one of its modules: what ``genbound export`` writes for those backbones (module names as
    in genbound, the head saved as ``head``), so that an export is evaluated on the model it was trained as."""
    if not base or base not in BACKBONES:
        return None
    bb = get_backbone(base)
    modules = dict(empty_model(bb).named_modules())
    if not all(li.module in modules for li in ck.meta.layers):
        return None
    return bb


def _is_own(backbone) -> bool:
    return backbone.name in BACKBONES


class PeftSource:
    """A peft adapter plus its base model folder and a dataset: what a genbound checkpoint offers, rebuilt."""

    kind = "peft"

    def __init__(self, path: str | Path, backbone: str | None = None, data: DataChoice | None = None,
                 task: str | None = None):
        self.path = Path(path)
        self.peft = load_peft(self.path, None, resolve=False)
        self.backbone, self.task_reason = _resolve_base(self.peft, backbone, task)
        self._own = _is_own(self.backbone)  # genbound's own model: the adapter uses its module names
        self._rename()
        self.data = data or DataChoice()
        self._splits = None
        self._hf_cfg = None
        self._built: dict[int, nn.Module] = {}  # the base model, built once per label count (_base)
        pm = self.peft.meta
        bad = [li.name for li in pm.layers if li.kind == "embedding" or li.dora]
        self._dense_only = bad  # DoRA / embedding updates: applied merged, not as factors
        self.meta = PeftSourceMeta(
            method=pm.method if pm.method in _method_names() else "lora", rank=pm.rank, alpha=pm.alpha,
            scale=pm.scale, chain=pm.chain, layers=pm.layers,
            backbone=self.backbone.name, fingerprint=self.backbone.fingerprint, dataset=self.data.dataset,
            split_seed=self.data.split_seed, max_length=self.data.max_length, num_labels=self._num_labels(),
            classes=[], n_train=pm.n_train, sizes={}, params=dict(pm.params), peft=pm,
            hyperparameters={"task": self.backbone.task, "source": "peft", "task_reason": self.task_reason},
            sources={"backbone": backbone_record(self.backbone.name, self.backbone)},
        )
        # Table 1 counts one rank for every layer: with rank_pattern the largest, which over-counts D (a
        # looser, still valid bound); the exact D is params["data_dependent"].
        self.meta.rank = max(li.rank for li in pm.layers)
        self.meta.params.setdefault("head", int(pm.params.get("extra", 0)))

    def _rename(self) -> None:
        """peft's module paths become the names inside genbound's model (``backbone.<path>``; unchanged for
        genbound's own model), checked against the modules of the built base model (not its weights file, whose
        keys may use older names)."""
        ck = self.peft
        # _own_model checked an own model's names against its modules already
        modules = None if self._own else dict(empty_model(self.backbone).named_modules())
        renamed = {}
        for li in ck.meta.layers:
            name = li.module if self._own else f"backbone.{li.module}"
            if modules is not None and name not in modules:
                raise GenboundError(f"{self.path}: layer {li.module} is not a module of backbone "
                                    f"'{self.backbone.name}'; the adapter was made for another base model (pass "
                                    "--backbone)")
            renamed[li.name] = name
            li.name = name
        ck._factors = {renamed[k]: v for k, v in ck._factors.items()}
        ck.meta.backbone = self.backbone.name
        ck.meta.fingerprint = self.backbone.fingerprint
        ck.meta.sources = {"backbone": backbone_record(self.backbone.name, self.backbone)}
        ck.base_weights = self.base_weights  # DoRA's dW and the intruder diagnostics read W0 from the model

    # -- what the adapter implies about the model -------------------------------------------------------

    def _num_labels(self) -> int:
        """Rows of the saved classifier (modules_to_save), else the base config's num_labels; a causal LM's
        vocabulary size (its output layer's rows)."""
        from transformers import AutoConfig

        if self.backbone.task == "causal-lm":
            return int(self._base(0).head.out_features)

        head = [t for key, t in self.peft.tensors.items()
                if key.removeprefix("base_model.model.").split(".")[0] in ("classifier", "score", "head")
                and key.endswith(".weight") and t.dim() == 2]
        if head:  # the last Linear of the saved classifier gives the label count
            return int(head[-1].shape[0])
        cfg = AutoConfig.from_pretrained(str(self.backbone.folder), local_files_only=True, trust_remote_code=False)
        return int(cfg.num_labels)

    @property
    def method(self):
        return self.peft.method

    def results(self, device: torch.device | None = None) -> dict:
        """Train / val / test loss and accuracy and the gap on the data, as measured and kept in meta by
        :func:`genbound.diagnostics.evaluate.source_results` (empty until then: a source does not evaluate
        itself, evaluation is a diagnostic above the sources)."""
        return self.meta.results

    def load_backbone(self):
        return self.backbone

    def data_spec(self) -> DataChoice | None:
        """The data the caller named (--dataset), or None: peft records none."""
        return self.data if self.data.dataset else None

    def load_splits(self):
        if self._splits is None:
            try:
                splits = self.data.load(self.backbone)
            except MissingColumnError as exc:  # data of another task: say which task was assumed and why
                raise GenboundError(f"{exc}; {self.path} is {task_hint(self.backbone.task, self.task_reason)}"
                                    ) from None
            if self.backbone.task != "causal-lm" and splits.num_labels != self.meta.num_labels:
                raise GenboundError(f"dataset {splits.name} has {splits.num_labels} classes but the adapter's "
                                    f"classifier has {self.meta.num_labels} outputs; pass the data it was trained on")
            self._splits = splits
            self.meta.dataset = splits.name
            self.meta.classes = list(splits.classes)
            if self.meta.n_train is not None and self.meta.n_train != len(splits.train):
                raise GenboundError(f"{self.path} records N = {self.meta.n_train} training examples but dataset "
                                    f"{splits.name} has {len(splits.train)}; pass the data it was trained on")
            self.meta.n_train = len(splits.train)
            self.meta.sizes = splits.sizes
        return self._splits

    def layer_updates(self):
        return self.peft.layer_updates()

    def base_weights(self) -> dict[str, Tensor]:
        """W0 of each adapted module in (out, in) orientation: read from the base folder's weights file where it
        tells them (genbound.models.pretrained), else from the built base model."""
        if not any(li.kind == "embedding" for li in self.peft.meta.layers):
            try:
                fast = pretrained_weights(self.backbone, [(li.name, li.out_features, li.in_features)
                                                          for li in self.peft.meta.layers])
            except CheckpointError:  # a shape that fits no orientation: the built model's message says why
                fast = None
            if fast is not None:
                return fast
        mods = dict(self._base(self.meta.num_labels).named_modules())
        out = {}
        for li in self.peft.meta.layers:
            mod = mods[li.name]
            W = mod.weight.detach()
            W = W.T if isinstance(mod, nn.Embedding) else W
            if tuple(W.shape) != (li.out_features, li.in_features):
                raise GenboundError(f"layer {li.name}: the base weight is {tuple(W.shape)} but the adapter's factors "
                                    f"give {li.out_features}x{li.in_features}; pass the base it was trained on")
            out[li.name] = W.to(torch.float32).clone()
        return out

    # -- the model ---------------------------------------------------------------------------------------

    def initial_model(self, device: torch.device | None = None) -> nn.Module:
        """The base model with its classifier as saved in the base folder (or drawn from seed 0 where absent)."""
        return copy.deepcopy(self._base(self.meta.num_labels)).to(where(device)).eval()

    def _base(self, num_labels: int) -> nn.Module:
        """The base model as built from its folder, once per label count (a causal LM ignores the count):
        every model of this source is a copy of it, so a command builds the base once (tests/test_build_counts.py).
        Callers that change it copy it first."""
        key = 0 if self.backbone.task == "causal-lm" else int(num_labels)
        if key not in self._built:
            self._built[key] = self.backbone.build(key, 0).eval()
        return self._built[key]

    def build_model(self, device: torch.device | None = None, merged: bool = False) -> nn.Module:
        """The adapted model in eval mode: AdaptedLinear layers holding the adapter's factors (trained), or with
        ``merged`` plain Linear layers W0 + dW; modules_to_save and trained biases restored (trained)."""
        model = copy.deepcopy(self._base(self.meta.num_labels))
        for p in model.parameters():
            p.requires_grad_(False)
        pm = self.peft.meta
        factors = self.peft._factors
        mods = dict(model.named_modules())
        for li in pm.layers:
            mod = mods.get(li.name)
            if li.kind == "embedding":
                if not isinstance(mod, nn.Embedding):
                    raise GenboundError(f"{self.path}: layer {li.module} is not an embedding of the base model")
                with torch.no_grad():
                    mod.weight.add_(self.peft.stored_delta(li.name).to(mod.weight.dtype))
                continue
            if not isinstance(mod, nn.Linear) or (mod.out_features, mod.in_features) != (li.out_features,
                                                                                           li.in_features):
                raise GenboundError(f"{self.path}: target module {li.module} is not a {li.out_features}x"
                                    f"{li.in_features} Linear of the base model; pass the base it was trained on")
            if merged or li.dora:
                with torch.no_grad():
                    mod.weight.add_(self.layer_updates()[li.name].materialize().to(mod.weight.dtype))
                mod.weight.requires_grad_(True)
                continue
            # AdaptedLinear's scale is alpha / rank: give it alpha = s r so that it uses the adapter's s.
            ad = AdaptedLinear(mod, get_method("lora"), li.name, li.rank, li.scale * li.rank, seed=0)
            with torch.no_grad():
                ad.A.copy_(factors[li.name]["A"].to(ad.A.dtype))
                ad.B.copy_(factors[li.name]["B"].to(ad.B.dtype))
            model.set_submodule(li.name, ad)
        self._restore_extra(model)
        return model.to(where(device)).eval()

    def _restore_extra(self, model: nn.Module) -> None:
        """modules_to_save copies, trained biases and lora_B biases, each onto the module it belongs to."""
        for key in self.peft.meta.extra_trained:
            t = self.peft.tensors[key]
            k = key.removeprefix("base_model.model.")
            if ".lora_B." in k:  # lora_bias: y += s * b_B, i.e. a shift of the layer's bias
                module = k.split(".lora_B.")[0]
                li = next(x for x in self.peft.meta.layers if x.module == module)
                target = _hf_parameter(model, f"{module}.bias", self._own)
                with torch.no_grad():
                    target.add_(li.scale * t.to(target.dtype))
                target.requires_grad_(True)
                continue
            target = _hf_parameter(model, k, self._own)
            want = tuple(target.shape)
            value = t.t() if _is_transposed(model, k) else t
            if tuple(value.shape) != want:
                raise GenboundError(f"{self.path}: saved module tensor '{k}' has shape {tuple(t.shape)} but the base "
                                    f"model's is {want}; pass the base it was trained on")
            with torch.no_grad():
                target.copy_(value.to(target.dtype))
            target.requires_grad_(True)

    def trained_parameter_names(self, model: nn.Module) -> list[str]:
        return [n for n, p in model.named_parameters() if p.requires_grad]

    def hypothesis(self, device: torch.device | None = None):
        """The coded tensors for the data-dependent bounds: each layer's A and B and the restored
        modules_to_save / bias tensors, on the merged model (adapted weights W0 + s B A). The reference theta_0
        is B = 0, the base model's values for the saved modules, and A = 0: peft does not record A's initial
        draw, so the prior is centred at zero for it."""
        device = where(device)
        model = self.build_model(device, merged=True)
        pristine = self.initial_model(device)
        init = dict(pristine.named_parameters())
        names = {id(p): n for n, p in model.named_parameters()}
        trained, reference = {}, {}
        layers = [li for li in self.peft.meta.layers if li.kind != "embedding" and not li.dora]
        if len(layers) != len(self.peft.meta.layers):
            raise GenboundError(f"{self.path}: DoRA and embedding updates are not coded as factors; the "
                                "data-dependent bounds cover plain LoRA layers")
        base = {li.name: init[f"{li.name}.weight"].detach() for li in layers}
        for li in layers:
            for f in ("A", "B"):
                t = self.peft._factors[li.name][f].to(device, torch.float32)
                trained[f"{li.name}.{f}"] = t
                reference[f"{li.name}.{f}"] = torch.zeros_like(t)
        for key in self.peft.meta.extra_trained:
            k = key.removeprefix("base_model.model.")
            if ".lora_B." in k:
                raise GenboundError(f"{self.path}: lora_bias tensors are not coded by the bounds")
            name = names[id(_hf_parameter(model, k, self._own))]
            trained[name] = dict(model.named_parameters())[name].detach().clone()
            reference[name] = init[name].detach()
        scale = {li.name: li.scale for li in layers}

        def to_params(t: dict[str, Tensor]) -> dict[str, Tensor]:
            out = {k: v for k, v in t.items() if not k.endswith((".A", ".B"))}
            for li in layers:
                upd = LayerUpdate(li.name, li.out_features, li.in_features, scale[li.name], t[f"{li.name}.B"],
                                  t[f"{li.name}.A"])
                out[f"{li.name}.weight"] = base[li.name] + upd.materialize().to(base[li.name].dtype)
            return out

        return Hypothesis(model, trained, reference, to_params, "peft LoRA: A, B and modules_to_save")

    def trajectory(self):
        raise GenboundError(f"{self.path}: a peft adapter saves no trajectory; read a Trainer run's checkpoint-* "
                            "folders with genbound.training.hf_trainer.read_trajectory, or use random directions")


def _method_names() -> set[str]:
    return set(METHODS)


def _hf_parameter(model: nn.Module, key: str, own: bool = False) -> Tensor:
    """The parameter of a :class:`~genbound.models.backbones.TaskClassifier` named ``key`` in the Hugging Face model
    (the head's path maps onto ``head``; an adapted layer's weight is its base layer's), or with ``own`` the
    parameter of genbound's own model named ``key``."""
    head_path = getattr(model, "head_path", None)
    module, _, pname = key.rpartition(".")
    module = module.removesuffix(".base_layer")  # peft's wrapper's own copy of the layer it adapts
    if head_path is not None and module == head_path:
        owner = model.head
    else:
        path = module if own else f"backbone.{module}"  # a task model holds the HF model as ``backbone``
        try:
            owner = model.get_submodule(path)
        except AttributeError:
            raise GenboundError(f"saved tensor '{key}' names no module of the base model; pass the base the "
                                "adapter was trained on") from None
        if isinstance(getattr(owner, "base", None), nn.Linear):
            owner = owner.base
    p = getattr(owner, pname, None)
    if not isinstance(p, Tensor):
        raise GenboundError(f"saved tensor '{key}' names no parameter of the base model")
    return p


def _is_transposed(model: nn.Module, key: str) -> bool:
    """A Conv1D's weight is held transposed (as a Linear) by genbound but saved (in, out) by peft."""
    module = key.rpartition(".")[0]
    return key.endswith(".weight") and f"backbone.{module}" in getattr(model, "fan_in_fan_out", [])


def load_source(path: str | Path, backbone: str | None = None, data: DataChoice | None = None,
                task: str | None = None):
    """A genbound checkpoint (moved: pointed at ``backbone`` and ``data.dataset``, checked by fingerprint), or a
    peft adapter rebuilt on its base model folder as ``task`` (:class:`PeftSource`; the default
    :class:`DataChoice` where ``data`` is None)."""
    data = data or DataChoice()
    if is_peft_dir(path):
        return PeftSource(path, backbone, data, task)
    ckpt = load_checkpoint(path, backbone, data.dataset)
    if task is not None:
        check_checkpoint_task(ckpt.meta, ckpt.path, task)
    return ckpt
