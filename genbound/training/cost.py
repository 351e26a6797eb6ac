"""What one training step of a method costs, counted exactly rather than timed under load.

Three measures of one optimizer step of genbound's own training (:mod:`genbound.training.train`: the backbone and
adapters built by :func:`genbound.methods.adapters.attach_adapters`, the loss :func:`genbound.models.losses.mean_loss`,
gradient clipping, AdamW over :func:`genbound.training.train.param_groups`), on the batch the run would see first:

**Memory** (:func:`memory_cost`). Every tensor autograd keeps for the backward pass is seen by
``torch.autograd.graph.saved_tensors_hooks`` during the forward. Bytes are counted per *storage*
(``untyped_storage().data_ptr()`` with its ``nbytes()``): a view keeps its whole storage alive, and several
views of one storage (q and v adapters reading the same LayerNorm output) are counted once. A saved tensor
that aliases a parameter or buffer (the frozen W that a Linear keeps for its input gradient) is not an
activation: it is listed apart (``saved_parameter_alias_bytes``) and already in the parameter bytes.

Ownership of a saved storage: genbound hooks every module's forward to know which modules are running. A
storage is *adapter-owned* when every op that saved it ran inside an :class:`~genbound.methods.adapters.AdaptedLinear`'s
forward (LoRA's input x kept for A's gradient, the r-dimensional A x kept for B's, cLA's gathered columns
x[idx]); it is *frozen-backbone* when at least one op outside any adapter saved it (a GELU's input, a
LayerNorm's input, the softmax of attention, dropout masks, the head's input), since then the backbone keeps
it whatever the adapter does. Adapter-owned bytes are also given per adapted layer (a storage shared by
several adapters goes to the first that saved it). The frozen part is not "what the backbone costs without
adapters": a frozen network with no trained tensor keeps nothing; it is what back-propagating through the
frozen network to the adapters costs, the same for every method that adapts the same layers.

Besides activations: parameter bytes (frozen and trained), buffer bytes, gradient bytes (``p.grad`` after
the backward) and optimizer-state bytes, read from ``optimizer.state`` after one real ``AdamW.step()``
(exp_avg and exp_avg_sq per trained tensor plus its step counter, as torch allocates them). The
*predicted peak* is parameters + buffers + gradients + optimizer state + saved activations: the memory held
at the end of the forward of a step after the first. It leaves out the transient buffers of single ops and
the allocator's rounding, which is why on CUDA the allocator's own peak is reported beside it.

**FLOPs** (:func:`flop_cost`). ``torch.utils.flop_counter.FlopCounterMode`` around the forward and the
backward, one counter so that the backward is attributed to modules too; the forward count is read before
the backward starts, the backward is the difference. A Linear y = W x on a batch of T rows of m inputs and n
outputs counts 2 T m n (a multiply and an add per weight and row). Only the ops FlopCounterMode knows are
counted (matrix products, convolutions, attention kernels): elementwise ops, norms and the optimizer are not.

**Time** (:func:`paired_timing`). The methods of one comparison are built side by side in one process and
stepped in alternation on the same batch, the order flipped every pair (A B, B A, A B, ...) so that neither
always runs second; each step is timed with the process CPU clock (``time.process_time``: every thread's CPU
seconds, so a busy machine that preempts the process does not add time) or, on CUDA, with CUDA events. The
ratio is mean(B) / mean(A) over the pairs, with a seeded percentile bootstrap interval over the pairs
(resampling whole pairs). The noise floor of a comparison is the same measure for two methods with the same
computation (lora against lora_plus), or a method against itself.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields

import torch
from torch import Tensor, nn

from ..core.device import resolve_device
from ..core.errors import GenboundError
from ..data.datasets import default_dataset_for, get_dataset
from ..methods.adapters import AdaptedLinear, attach_adapters
from ..methods.catalogue import get_method
from ..models.backbones import get_backbone
from ..models.losses import mean_loss
from ..models.precision import cast_base, check_precision
from .train import TrainConfig, epoch_order, param_groups

__all__ = ["FlopCost", "MemoryCost", "Setting", "TimingCost", "as_dict", "build_setting", "config_from_checkpoint",
           "flop_cost", "load_splits_for", "memory_cost", "paired_timing", "saved_tensor_bytes", "train_step"]


# -- building a setting ---------------------------------------------------------------------------------


@dataclass
class Setting:
    """One method built as ``genbound train`` builds it, with its optimizer and one batch; nothing trained."""

    config: TrainConfig
    model: nn.Module
    adapters: dict[str, AdaptedLinear]
    optimizer: torch.optim.Optimizer
    features: dict[str, Tensor]
    labels: Tensor
    device: torch.device

    @property
    def method(self) -> str:
        return self.config.method

    def describe(self) -> dict:
        return {"method": self.config.method, "backbone": self.config.backbone, "dataset": self.config.dataset,
                "rank": self.config.rank, "alpha": self.config.alpha, "chain": self.config.chain,
                "batch_size": int(self.labels.shape[0]),
                "feature_shapes": {k: list(v.shape) for k, v in self.features.items()},
                "adapted_layers": list(self.adapters), "device": str(self.device), "seed": self.config.seed,
                "base_dtype": self.config.base_dtype}


def config_from_checkpoint(path) -> TrainConfig:
    """The TrainConfig a checkpoint was trained with (its recorded hyperparameters)."""
    from ..checkpoints.format import load_meta

    meta = load_meta(path)
    names = {f.name for f in fields(TrainConfig)}
    hp = {k: v for k, v in (meta.hyperparameters or {}).items() if k in names}
    if "method" not in hp:
        hp["method"] = meta.method
    return TrainConfig(**hp)


def load_splits_for(config: TrainConfig, progress: bool | None = False):
    """The splits ``genbound train`` would load for ``config`` (and fill in its default dataset)."""
    backbone = get_backbone(config.backbone, config.task)
    config.dataset = config.dataset or default_dataset_for(backbone)
    return get_dataset(config.dataset, config.text_columns, config.label_column,
                       config.split_column).load(backbone, config.split_seed, config.max_length, progress=progress)


def build_setting(config: TrainConfig, splits=None, device: torch.device | str | None = None) -> Setting:
    """Model, adapters, AdamW and the first training batch of ``config``, as
    :func:`genbound.training.train.train` builds them (same seed use: the head and factors from ``config.seed``,
    the batch from ``epoch_order``). ``device`` None: the config's own (``--device``, auto by default)."""
    config.validate()
    if config.subspace_dim:
        raise GenboundError("genbound cost measures adapter training; drop --subspace-dim")
    device = resolve_device(config.device) if device is None else torch.device(device)
    method = get_method(config.method)
    backbone = get_backbone(config.backbone, config.task)
    if splits is None:
        splits = load_splits_for(config)
    config.dataset = config.dataset or default_dataset_for(backbone)
    torch.manual_seed(config.seed)
    model = backbone.build(splits.num_labels, config.seed)
    layers = backbone.adaptable_layers(model, config.targets, config.exclude)
    modules = dict(model.named_modules())
    method.check_rank([(modules[n].out_features, modules[n].in_features) for n in layers], config.rank,
                      config.chain)
    adapters = attach_adapters(model, method, layers, config.rank, config.alpha, config.seed, config.paca_columns)
    cast_base(model, check_precision(config.base_dtype, device))  # as train does: the trained tensors stay float32
    model.to(device)
    model.train()
    b_ratio = (config.lr_ratio or method.b_lr_ratio) if method.has_lr_ratio else 1.0
    optimizer = torch.optim.AdamW(param_groups(model, adapters, config.lr, b_ratio, config.weight_decay),
                                  lr=config.lr, weight_decay=config.weight_decay)
    idx = epoch_order(len(splits.train), config.seed, 0)[: config.batch_size]
    features = {k: v[idx].to(device) for k, v in splits.train.features.items()}
    labels = splits.train.labels[idx].to(device)
    return Setting(config, model, adapters, optimizer, features, labels, device)


def train_step(setting: Setting) -> Tensor:
    """One optimizer step as genbound.training.train takes it: forward, zero_grad, backward, clip, AdamW step."""
    model, opt = setting.model, setting.optimizer
    loss = mean_loss(model(**setting.features), setting.labels)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if setting.config.clip:
        nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], setting.config.clip)
    opt.step()
    return loss.detach()


# -- saved activations ----------------------------------------------------------------------------------


def _storage_key(t: Tensor) -> tuple[str, int, int]:
    s = t.untyped_storage()
    return (str(t.device), s.data_ptr(), s.nbytes())


@dataclass
class SavedBytes:
    """Saved-for-backward storages of one forward, split by owner (see the module docstring)."""

    frozen: int
    adapter: int
    parameter_alias: int
    adapter_by_layer: dict[str, int]
    storages: int
    square: int = 0  # frozen activation bytes of storages saved as (..., L, L) views, when asked

    @property
    def activations(self) -> int:
        return self.frozen + self.adapter


def saved_tensor_bytes(model: nn.Module, forward: Callable[[], Tensor],
                       square: int | None = None) -> tuple[Tensor, SavedBytes]:
    """Run ``forward()`` (returning the loss) under saved-tensor hooks and count what autograd keeps.

    Returns the loss (its graph still holds the saved tensors; call backward on it or drop it) and the byte
    counts. A storage is adapter-owned when every op that saved it ran inside an AdaptedLinear's forward.
    With ``square=L``, also the frozen activation bytes of storages saved as a view whose last two dimensions
    are (L, L): the attention probabilities and masks a math attention path keeps, which a flash kernel
    does not."""
    names = {id(m): n for n, m in model.named_modules()}
    alias = {_storage_key(t) for t in [*model.parameters(), *model.buffers()]}
    running: list[nn.Module] = []  # modules whose forward is running, outermost first
    seen: dict[tuple, dict] = {}

    def pre(module, args):
        running.append(module)

    def post(module, args, output):
        if running and running[-1] is module:
            running.pop()

    def pack(t: Tensor):
        key = _storage_key(t)
        adapter = next((m for m in reversed(running) if isinstance(m, AdaptedLinear)), None)
        entry = seen.setdefault(key, {"bytes": key[2], "outside": False, "layer": None, "square": False})
        if square is not None and t.dim() >= 2 and tuple(t.shape[-2:]) == (square, square):
            entry["square"] = True
        if adapter is None:
            entry["outside"] = True
        elif entry["layer"] is None:
            entry["layer"] = names.get(id(adapter), adapter.layer)
        return t

    handles = []
    for m in model.modules():
        handles.append(m.register_forward_pre_hook(pre))
        handles.append(m.register_forward_hook(post, always_call=True))
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = forward()
    finally:
        for h in handles:
            h.remove()
    frozen = adapter_bytes = alias_bytes = square_bytes = 0
    by_layer: dict[str, int] = {}
    for key, entry in seen.items():
        if key in alias:
            alias_bytes += entry["bytes"]
        elif entry["outside"]:
            frozen += entry["bytes"]
            square_bytes += entry["bytes"] if entry["square"] else 0
        else:
            adapter_bytes += entry["bytes"]
            by_layer[entry["layer"]] = by_layer.get(entry["layer"], 0) + entry["bytes"]
    return loss, SavedBytes(frozen, adapter_bytes, alias_bytes, by_layer, len(seen), square_bytes)


def _nbytes(tensors) -> int:
    """Bytes of distinct storages among ``tensors``."""
    keys = {_storage_key(t) for t in tensors if t is not None and t.device.type != "meta"}
    return sum(k[2] for k in keys)


@dataclass
class MemoryCost:
    """Bytes of one training step (see the module docstring); ``predicted_peak_bytes`` = parameters + buffers
    + gradients + optimizer state + saved activations."""

    saved_frozen_bytes: int
    saved_adapter_bytes: int
    saved_activation_bytes: int
    saved_parameter_alias_bytes: int
    saved_adapter_bytes_by_layer: dict[str, int]
    parameter_bytes_frozen: int
    parameter_bytes_trained: int
    buffer_bytes: int
    gradient_bytes: int
    optimizer_state_bytes: int
    predicted_peak_bytes: int
    cuda_peak_bytes: int | None = None
    saved_square_bytes: int | None = None  # frozen activations saved as (..., L, L) views, with square=L


def memory_cost(setting: Setting, square: int | None = None) -> MemoryCost:
    """Saved activations of one step (split frozen / adapter-owned), and parameter, gradient and AdamW state
    bytes after one real step. On CUDA, the allocator's peak over a second step (state already allocated)."""
    model = setting.model
    cuda = setting.device.type == "cuda"
    setting.optimizer.zero_grad(set_to_none=True)
    loss, saved = saved_tensor_bytes(model, lambda: mean_loss(model(**setting.features), setting.labels), square)
    loss.backward()
    del loss
    trained = [p for p in model.parameters() if p.requires_grad]
    frozen = [p for p in model.parameters() if not p.requires_grad]
    grads = _nbytes([p.grad for p in trained])
    if setting.config.clip:
        nn.utils.clip_grad_norm_(trained, setting.config.clip)
    setting.optimizer.step()
    state = [v for s in setting.optimizer.state.values() for v in s.values() if isinstance(v, Tensor)]
    optimizer_bytes = _nbytes(state)
    p_frozen, p_trained, buffers = _nbytes(frozen), _nbytes(trained), _nbytes(list(model.buffers()))
    cuda_peak = None
    if cuda:
        torch.cuda.synchronize(setting.device)
        torch.cuda.reset_peak_memory_stats(setting.device)
        train_step(setting)
        torch.cuda.synchronize(setting.device)
        cuda_peak = int(torch.cuda.max_memory_allocated(setting.device))
    return MemoryCost(
        saved_frozen_bytes=saved.frozen, saved_adapter_bytes=saved.adapter, saved_activation_bytes=saved.activations,
        saved_parameter_alias_bytes=saved.parameter_alias, saved_adapter_bytes_by_layer=saved.adapter_by_layer,
        parameter_bytes_frozen=p_frozen, parameter_bytes_trained=p_trained, buffer_bytes=buffers,
        gradient_bytes=grads, optimizer_state_bytes=optimizer_bytes,
        predicted_peak_bytes=p_frozen + p_trained + buffers + grads + optimizer_bytes + saved.activations,
        cuda_peak_bytes=cuda_peak, saved_square_bytes=None if square is None else saved.square)


# -- FLOPs -------------------------------------------------------------------------------------------------


@dataclass
class FlopCost:
    """FLOPs of one step's forward and backward (FlopCounterMode), in total and per adapted layer (the layer's
    whole forward: the frozen W x and the adapter's path; its backward likewise)."""

    forward: int
    backward: int
    total: int
    by_layer: dict[str, dict[str, int]] = field(default_factory=dict)


def flop_cost(setting: Setting) -> FlopCost:
    """Count the FLOPs of one forward and backward of ``setting`` (no optimizer step is taken)."""
    from torch.utils.flop_counter import FlopCounterMode

    model = setting.model
    setting.optimizer.zero_grad(set_to_none=True)
    counter = FlopCounterMode(display=False)
    with counter:
        loss = mean_loss(model(**setting.features), setting.labels)
        fwd = {k: sum(v.values()) for k, v in counter.get_flop_counts().items()}
        loss.backward()
        tot = {k: sum(v.values()) for k, v in counter.get_flop_counts().items()}
    setting.optimizer.zero_grad(set_to_none=True)
    root = type(model).__name__
    by_layer = {}
    for name in setting.adapters:
        key = f"{root}.{name}"
        f, t = int(fwd.get(key, 0)), int(tot.get(key, 0))
        by_layer[name] = {"forward": f, "backward": t - f}
    forward, total = int(fwd.get("Global", 0)), int(tot.get("Global", 0))
    return FlopCost(forward=forward, backward=total - forward, total=total, by_layer=by_layer)


# -- paired timing -----------------------------------------------------------------------------------------


@dataclass
class TimingCost:
    """Paired interleaved step times of ``a`` and ``b`` and the ratio mean(b) / mean(a) with its bootstrap
    interval over the pairs."""

    a: str
    b: str
    device: str
    clock: str
    pairs: int
    warmup: int
    seconds_a: list[float]
    seconds_b: list[float]
    mean_a: float
    mean_b: float
    ratio: float
    interval: tuple[float, float]
    level: float
    bootstrap: int
    seed: int


def _ratio_interval(ta: Tensor, tb: Tensor, level: float, resamples: int, seed: int) -> tuple[float, float]:
    """Percentile bootstrap of mean(tb) / mean(ta), resampling whole pairs with a seeded generator."""
    g = torch.Generator().manual_seed(int(seed))
    idx = torch.randint(0, len(ta), (resamples, len(ta)), generator=g)
    ratios = tb[idx].mean(1) / ta[idx].mean(1)
    lo, hi = torch.quantile(ratios, torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=ratios.dtype))
    return float(lo), float(hi)


def paired_timing(a: Setting, b: Setting, pairs: int = 20, warmup: int = 2, level: float = 0.95,
                  resamples: int = 2000, seed: int = 0) -> TimingCost:
    """Step ``a`` and ``b`` in alternation (A B, B A, ...) ``pairs`` times after ``warmup`` unrecorded pairs;
    CPU: process CPU seconds per step, CUDA: CUDA-event milliseconds / 1000. Both settings must be on one
    device. The interval is a seeded percentile bootstrap of the ratio of means over the pairs."""
    if pairs < 2:
        raise GenboundError(f"paired timing needs at least 2 pairs, got {pairs}; pass --timing-pairs 2 or more")
    if a.device != b.device:
        raise GenboundError(f"the two settings are on {a.device} and {b.device}; time them on one device")
    if not 0 < level < 1:
        raise GenboundError(f"the interval level must be in (0, 1), got {level}")
    device = a.device
    cuda = device.type == "cuda"

    def timed(s: Setting) -> float:
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            train_step(s)
            end.record()
            torch.cuda.synchronize(device)
            return start.elapsed_time(end) / 1000.0
        t0 = time.process_time()
        train_step(s)
        return time.process_time() - t0

    ta: list[float] = []
    tb: list[float] = []
    for i in range(warmup + pairs):
        first, second = (a, b) if i % 2 == 0 else (b, a)
        t1, t2 = timed(first), timed(second)
        if i >= warmup:
            ta.append(t1 if first is a else t2)
            tb.append(t2 if first is a else t1)
    xa, xb = torch.tensor(ta, dtype=torch.float64), torch.tensor(tb, dtype=torch.float64)
    if float(xa.min()) <= 0 or float(xb.min()) <= 0:
        raise GenboundError("a step took no measurable CPU time (the clock is too coarse for this model); use a "
                            "larger --batch-size or more layers")
    ratio = float(xb.mean() / xa.mean())
    lo, hi = _ratio_interval(xa, xb, level, resamples, seed)
    return TimingCost(a=a.method, b=b.method, device=str(device), clock="cuda-events" if cuda else "process_time",
                      pairs=pairs, warmup=warmup, seconds_a=ta, seconds_b=tb, mean_a=float(xa.mean()),
                      mean_b=float(xb.mean()), ratio=ratio, interval=(lo, hi), level=level, bootstrap=resamples,
                      seed=seed)


def as_dict(obj) -> dict:
    """A cost dataclass as plain JSON-ready values."""
    out = asdict(obj)
    for k, v in out.items():
        if isinstance(v, float) and not math.isfinite(v):
            out[k] = None
    return out
