"""Reference training of every method in the catalogue, into a checkpoint.

AdamW, linear warm-up then linear decay, gradient clipping, the LoRA+ learning-rate ratio applied once
(lr(B) = ratio * lr(A)), the classification head trained for every method, validation each epoch, and at
the end train / validation / test loss and accuracy in eval mode over the full splits with the empirical
gap G = L_test - L_train (skipped with ``final_eval=False``, ``--no-final-eval``: the checkpoint then records
that it holds no losses). Chains of k links are spread evenly over the step budget: at each boundary every
adapter merges its link into the base weight and starts fresh factors with fresh optimizer state.

Every random choice comes from ``seed`` (head, factors, selectors, data order, dropout) or ``split_seed``
(the split), both recorded in the checkpoint.

Resumable: every ``save_every`` steps (default 50) and at the end of every epoch the full training state
(genbound.checkpoints.resume) is written atomically beside the checkpoint, in ``<parent>/.<name>.state``; it is deleted
once the checkpoint is written. ``train(..., resume=True)`` (``genbound train --resume``) continues a killed
run from its last state and ends, on the same device and thread count, with a ``tensors.safetensors`` that
is byte-identical to an uninterrupted run's and a ``genbound.json`` identical except for ``metrics`` (wall
time, memory, and ``resumed_at``, the steps at which the run was resumed).

Across processes (``group``: torchrun, :mod:`genbound.core.distributed`) every process takes its slice of each
global batch, the gradients are summed with 1/B weights per example (the global batch's mean gradient), and
every process steps and merges chain links on the same numbers; rank 0 alone evaluates, saves the state and
writes the checkpoint.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from .. import __version__
from ..checkpoints.checkpoint import CheckpointMeta, LayerInfo, is_checkpoint, load_meta, save_checkpoint
from ..checkpoints.claims import backbone_layout
from ..checkpoints.provenance import sources_record
from ..checkpoints.resume import (
    TrainState,
    changing_tensors,
    check_config,
    check_progress,
    load_state,
    remove_state,
    restore_tensors,
    save_state,
)
from ..checkpoints.resume import state_dir_for as state_dir_for
from ..core import distributed as dist_train
from ..core.atomic import clean_stale
from ..core.device import resolve_device
from ..core.errors import GenboundError, NonFiniteError
from ..core.output import check_free_space, check_replaceable, check_writable, may_replace, resolve_out, run_lock
from ..core.validation import MAX_ALPHA
from ..data.datasets import default_dataset_for, get_dataset
from ..data.prior_split import check_prior_fraction, prior_splits
from ..diagnostics.evaluate import evaluate, sharded_evaluate
from ..methods.adapters import AdaptedLinear, attach_adapters, trained_tensors
from ..methods.catalogue import METHODS, get_method, layer_generator
from ..methods.subspace import (
    SUBSPACE_FILE,
    attach_subspace,
    detach_subspace,
    link_dims,
    next_link_subspace,
    subspace_record,
)
from ..models.backbones import BACKBONES, get_backbone
from ..models.losses import mean_loss
from ..models.precision import cast_base, check_precision
from .sharded import place_model

DEFAULT_SAVE_EVERY = 50


@dataclass
class TrainConfig:
    """Everything that determines a run; recorded whole in the checkpoint's hyperparameters."""

    method: str = "lora"
    backbone: str = "minilm"
    dataset: str | None = None  # default: bbc for text backbones, digits for mlp; or a data file / folder path
    text_columns: list[str] | None = None  # data files: one text column or a pair (default: "text")
    label_column: str | None = None  # data files: default "label"
    split_column: str | None = None  # data files: train / validation / test per row (default: seeded split)
    task: str | None = None  # model folders: seq-cls (default for text), image-cls (vision), causal-lm or pooled
    rank: int = 16
    alpha: float = 32.0
    chain: int = 1
    epochs: int | None = 1
    steps: int | None = None  # overrides epochs when given
    lr: float = 5e-4
    lr_ratio: float | None = None  # LoRA+ ratio lr(B) / lr(A); default from the catalogue (16)
    batch_size: int = 32
    eval_batch_size: int = 64
    max_length: int = 128
    warmup: float = 0.1  # fraction of steps
    weight_decay: float = 0.0
    clip: float = 1.0
    seed: int = 0
    split_seed: int = 0
    targets: list[str] | str | None = None  # default: the backbone's (MiniLM: query, value); a str is a regex
    exclude: list[str] | str | None = None  # modules never adapted (same semantics as targets)
    paca_columns: str = "random"  # "random" (from the seed) or "first"
    subspace_dim: int | None = None  # train only w in theta = theta_0 + P w (genbound.methods.subspace)
    prior_fraction: float | None = None  # train on the prior part of a seeded split only (genbound.data.prior_split)
    prior_seed: int = 0  # that split's seed
    device: str = "cpu"
    base_dtype: str = "float32"  # the frozen base's precision (genbound.models.precision); trained tensors float32
    save_trajectory: bool = False
    trajectory_every: int | None = None  # steps between snapshots; default once per epoch
    progress: bool | None = None  # tqdm; None hides it when not a terminal

    def validate(self) -> None:
        method = get_method(self.method)
        if self.rank < 1 and method.adapter:
            raise GenboundError(f"rank must be at least 1, got {self.rank}")
        if not 0 < self.alpha <= MAX_ALPHA:
            raise GenboundError(f"alpha must be positive and at most {MAX_ALPHA:g} (s = alpha / r), got {self.alpha}")
        if not self.lr > 0 or not math.isfinite(self.lr):
            raise GenboundError(f"learning rate must be positive, got {self.lr}")
        if self.steps is not None and self.steps <= 0:
            raise GenboundError(f"steps must be positive, got {self.steps}")
        if self.steps is None and (self.epochs is None or self.epochs <= 0):
            raise GenboundError(f"epochs must be positive, got {self.epochs}")
        if self.batch_size <= 0:
            raise GenboundError(f"batch size must be positive, got {self.batch_size}")
        if self.lr_ratio is not None and not method.has_lr_ratio:
            with_ratio = [m for m, spec in METHODS.items() if spec.has_lr_ratio]
            raise GenboundError(f"--lr-ratio sets lr(B) / lr(A), which method '{self.method}' does not have; drop it "
                                f"or use {' / '.join(with_ratio)}")
        if self.lr_ratio is not None and not self.lr_ratio > 0:
            raise GenboundError(f"the LoRA+ ratio must be positive, got {self.lr_ratio}")
        if not 0 <= self.warmup < 1:
            raise GenboundError(f"warm-up is a fraction of the steps in [0, 1), got {self.warmup}")
        if self.paca_columns not in ("random", "first"):
            raise GenboundError(f"paca columns must be 'random' or 'first', got '{self.paca_columns}'")
        method.effective_chain(self.chain)
        if self.steps is not None:
            check_chain_steps(method.name, self.chain, self.steps)
        if self.subspace_dim is not None:
            if self.subspace_dim < 1:
                raise GenboundError(f"the subspace dimension must be at least 1, got {self.subspace_dim}; pass "
                                    "--subspace-dim d > 0")
            if self.save_trajectory:
                raise GenboundError("--save-trajectory is not available with --subspace-dim; drop one of them")
        if self.prior_fraction is not None:
            check_prior_fraction(self.prior_fraction)


@dataclass
class TrainResult:
    path: Path
    meta: CheckpointMeta
    history: list[dict] = field(default_factory=list)


# -- pieces ------------------------------------------------------------------------------------------


def param_groups(model: nn.Module, adapters: dict[str, AdaptedLinear], lr: float, b_ratio: float,
                 weight_decay: float) -> list[dict]:
    """AdamW groups: B factors at ``b_ratio * lr`` (LoRA+, applied once), everything else at ``lr``."""
    b_params = [ad.B for ad in adapters.values() if "B" in ad.trained_parameters()]
    b_ids = {id(p) for p in b_params}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in b_ids]
    groups = [{"params": rest, "lr": lr, "name": "A/head/other"}]
    if b_params:
        groups.append({"params": b_params, "lr": lr * b_ratio, "name": "B"})
    return [g for g in groups if g["params"]]


def warmup_linear(total: int, warmup_frac: float):
    warm = int(round(warmup_frac * total))

    def factor(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        return max(0.0, (total - step) / max(1, total - warm))

    return factor


def check_chain_steps(method: str, k: int, total_steps: int) -> None:
    """A chain of k links needs k distinct boundaries, so at least k steps (one per link)."""
    if k > total_steps:
        raise GenboundError(f"{method} with chain {k} needs at least {k} training steps (one per link), got "
                            f"{total_steps}; raise --steps / --epochs or lower --chain")


def chain_boundaries(total_steps: int, k: int) -> list[int]:
    """Steps after which link j (1..k-1) ends: k links spread evenly over the budget."""
    return [round(j * total_steps / k) for j in range(1, k)]


def epoch_order(n: int, seed: int, epoch: int) -> Tensor:
    return torch.randperm(n, generator=layer_generator(seed, "data-order", f"epoch{epoch}"))


class PeakMemory:
    """Peak memory of a region: CUDA's allocator peak (reset at start) or, on CPU, the process's peak
    resident set (VmHWM, reset through /proc/self/clear_refs where Linux allows it)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cpu_reset = False

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
            self.cpu_reset = True
        except OSError:
            self.cpu_reset = False

    def peak_bytes(self) -> int | None:
        if self.device.type == "cuda":
            return int(torch.cuda.max_memory_allocated(self.device))
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024

    def kind(self) -> str:
        if self.device.type == "cuda":
            return "cuda max_memory_allocated (reset at start of run)"
        return "cpu peak RSS of the process" + (" (reset at start of run)" if self.cpu_reset else " (since start)")


# -- the loop ------------------------------------------------------------------------------------------


def _bytes_written(model: nn.Module, adapters: dict[str, AdaptedLinear], adapter: bool, trajectory: bool) -> int:
    """A generous estimate of the disk space a run needs at its peak: the saved state (the changing tensors
    and Adam's two moments, twice while a new state replaces the old) plus the checkpoint, plus 1 MiB of
    metadata. Trajectory snapshots are not counted (their number depends on the schedule)."""
    changing = sum(v.numel() * v.element_size() for v in changing_tensors(model, list(adapters), not adapter).values())
    trained = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    return 2 * (changing + 2 * trained) + changing + (1 << 20) + (changing if trajectory else 0)


def _clean_stale(out: Path) -> None:
    clean_stale(out)
    clean_stale(state_dir_for(out))


def _absolute_paths(config: TrainConfig) -> None:
    """A model folder or data file given by a relative path is recorded by its absolute path, so that the run
    does not depend on the directory it was started from (genbound.checkpoints.provenance); registered names stay."""
    from ..checkpoints.provenance import absolute
    from ..data.datasets import DATASETS

    if config.backbone not in BACKBONES and Path(config.backbone).exists():
        config.backbone = absolute(config.backbone, BACKBONES)
    if config.dataset and config.dataset not in DATASETS and Path(config.dataset).exists():
        config.dataset = absolute(config.dataset, DATASETS)


def train(config: TrainConfig, out: str | Path, overwrite: bool = False, splits=None, resume: bool = False,
          save_every: int | None = None, group: dist_train.Group | None = None, monitor=None,
          final_eval: bool = True, shard: str | None = None) -> TrainResult:
    """Train ``config`` and write the checkpoint to ``out`` (atomically). ``splits`` may be passed to reuse
    an already tokenized dataset.

    The training state is saved every ``save_every`` steps (default 50; 0 disables) and at each epoch's end
    into ``state_dir_for(out)``. With ``resume`` a saved state is continued (its options must equal
    ``config``'s), a finished checkpoint at ``out`` is returned as it is, and with neither the run starts
    fresh. Without ``resume`` an existing state is refused unless ``overwrite`` discards it. ``group``: this
    process's place among torchrun's processes (data-parallel, module docstring); None: one process.
    ``monitor``: a genbound.training.trackers.TrainMonitor that logs the loss and diagnostics to experiment trackers
    (rank 0 only). ``final_eval=False`` (``--no-final-eval``) skips the final evaluation of the full splits, for
    sweeps that evaluate later: the checkpoint then records ``final_eval: false`` and no losses (never invented
    ones), and whatever reads them measures them itself or says they are missing. ``shard="fsdp"`` (with
    ``group``): the frozen base is sharded over the processes (genbound.training.sharded).
    """
    config.validate()
    _absolute_paths(config)
    save_every = DEFAULT_SAVE_EVERY if save_every is None else int(save_every)
    if config.subspace_dim:
        save_every = 0  # subspace runs are short; their state (w per link) is not saved
    if save_every < 0:
        raise GenboundError(f"--save-every must be 0 (never) or a positive number of steps, got {save_every}")
    if resume and overwrite:
        raise GenboundError("--resume continues a saved run and --overwrite discards it; pass one of them")
    out = resolve_out(out)
    check_writable(out)
    if group is not None:
        return dist_train.train_replica(group, out, run_lock,
                                        lambda: _train(config, out, overwrite, splits, resume, save_every, group,
                                                       monitor, final_eval, shard))
    with run_lock(out):
        return _train(config, out, overwrite, splits, resume, save_every, monitor=monitor, final_eval=final_eval,
                      shard=shard)


# -- the run's phases: prepare the output, build, loop (with its events), finish -----------------------------


@dataclass
class _Run:
    """Everything the phases share: what :func:`_build` made, and the loop's progress (what a saved state
    holds and a resumed run restores)."""

    config: TrainConfig
    out: Path
    state_dir: Path
    save_every: int
    overwrite: bool
    group: dist_train.Group | None
    monitor: object
    device: torch.device
    method: object
    backbone: object
    splits: object
    model: nn.Module
    layers: list[str]
    shapes: list[tuple[int, int]]
    adapters: dict[str, AdaptedLinear]
    state: TrainState | None
    spaces: list = field(default_factory=list)
    dims: list[int] = field(default_factory=list)
    n_train: int = 0
    steps_per_epoch: int = 0
    total_steps: int = 0
    boundaries: set[int] = field(default_factory=set)
    b_ratio: float = 1.0
    counts: dict[str, int] = field(default_factory=dict)  # trainable / total / head parameters, as trained
    optimizer: torch.optim.Optimizer | None = None
    scheduler: object = None
    # progress
    step: int = 0
    epoch: int = 0
    position: int = 0
    running: float = 0.0
    step_times: list[float] = field(default_factory=list)
    seconds_before: float = 0.0
    resumed_at: list[int] = field(default_factory=list)
    history: list[dict] = field(default_factory=list)
    traj_steps: list[int] = field(default_factory=list)
    snapshots: dict[str, Tensor] = field(default_factory=dict)
    t_start: float = 0.0
    train_seconds: float = 0.0  # the whole run's training time, resumed parts included; set when the loop ends
    sharded: bool = False  # the frozen base is sharded with FSDP (genbound.training.sharded)

    @property
    def is_main(self) -> bool:
        """This process evaluates for the trackers, saves the state and writes the checkpoint."""
        return self.group is None or self.group.is_main


def _train(config: TrainConfig, out: Path, overwrite: bool, splits, resume: bool, save_every: int,
           group: dist_train.Group | None = None, monitor=None, final_eval: bool = True,
           shard: str | None = None) -> TrainResult:
    """:func:`train` once the output is resolved and its lock held: the four phases in order."""
    finished = _prepare_output(config, out, overwrite, resume, group)
    if finished is not None:
        return finished
    run = _build(config, out, overwrite, splits, resume, save_every, group, monitor, shard)
    score = evaluate if group is None else sharded_evaluate(group, lockstep=run.sharded)
    memory = PeakMemory(run.device)
    _loop(run, score, memory)
    return _finish(run, score, memory, final_eval)


# -- phase 1: the output -------------------------------------------------------------------------------


def _prepare_output(config: TrainConfig, out: Path, overwrite: bool, resume: bool,
                    group: dist_train.Group | None) -> TrainResult | None:
    """Check that ``out`` may be written, and settle what is there: a finished checkpoint is returned as it
    is under ``resume``; a saved state is kept for ``resume``, discarded under ``overwrite``, else refused;
    stale temporaries of killed writes are removed."""
    main = group is None or group.is_main
    if os.path.lexists(out) and not out.is_dir():
        check_replaceable(out, overwrite)  # a file, a device, a FIFO: refused in genbound.core.output's words
    state_dir = state_dir_for(out)
    if resume and not overwrite and is_checkpoint(out):
        meta = load_meta(out)
        check_config(meta.hyperparameters, {**asdict(config), "dataset": config.dataset or meta.dataset}, out,
                     keys=asdict(config))
        if main:
            remove_state(state_dir)  # left over if a run was killed between its checkpoint and the cleanup
        return TrainResult(out, meta, meta.history)
    check_replaceable(out, overwrite)
    if state_dir.exists() and not resume:
        if not overwrite:
            raise GenboundError(f"an interrupted run of {out} saved its state in {state_dir}; pass --resume "
                                "(resume=True from Python) to continue it or --overwrite (overwrite=True) to discard "
                                "it and start again")
        if main:
            remove_state(state_dir)
    if main:
        _clean_stale(out)
    return None


# -- phase 2: build ------------------------------------------------------------------------------------


def _build(config: TrainConfig, out: Path, overwrite: bool, splits, resume: bool, save_every: int,
           group: dist_train.Group | None, monitor, shard: str | None = None) -> _Run:
    """The backbone, the data, the model with its adapters (and subspace), a saved state restored into them,
    the step budget and the optimizer: everything the loop needs, in the order the random draws are made."""
    state_dir = state_dir_for(out)
    device = resolve_device(config.device)
    if group is not None:
        device = group.device(device)  # cuda: this process's GPU (cuda:LOCAL_RANK)
    method = get_method(config.method)
    backbone = _backbone(config, group)
    config.dataset = config.dataset or default_dataset_for(backbone)
    state: TrainState | None = load_state(state_dir) if resume and state_dir.exists() else None
    if state is not None:
        check_config(state.config, asdict(config), state_dir)
    if splits is None:
        splits = get_dataset(config.dataset, config.text_columns, config.label_column,
                             config.split_column).load(backbone, config.split_seed, config.max_length,
                                                       progress=config.progress)
    if config.prior_fraction is not None:  # a data-dependent centre sees the prior part only (bounds.ddprior)
        splits = prior_splits(splits, config.prior_fraction, config.prior_seed)
    torch.manual_seed(config.seed)  # dropout; everything else has its own generator
    model = backbone.build(splits.num_labels, config.seed)
    layers = backbone.adaptable_layers(model, config.targets, config.exclude)
    modules = dict(model.named_modules())
    shapes = [(modules[n].out_features, modules[n].in_features) for n in layers]
    method.check_rank(shapes, config.rank, config.chain)
    adapters = attach_adapters(model, method, layers, config.rank, config.alpha, config.seed, config.paca_columns)
    cast_base(model, check_precision(config.base_dtype, device))  # after attach: the trained tensors stay float32
    run = _Run(config=config, out=out, state_dir=state_dir, save_every=save_every, overwrite=overwrite,
               group=group, monitor=monitor, device=device, method=method, backbone=backbone, splits=splits,
               model=model, layers=layers, shapes=shapes, adapters=adapters, state=state)
    if state is not None:
        _restore_tensors(run)
    if config.subspace_dim:
        if state is not None:
            raise GenboundError(f"{state_dir} holds a saved state, but subspace runs do not resume; pass --overwrite")
        run.dims = link_dims(config.subspace_dim, config.chain if method.chained else 1)
        run.spaces.append(attach_subspace(model, run.dims[0], config.seed, 0))
    run.sharded = place_model(model, device, shard, group, method, bool(run.spaces), monitor)  # to device, or FSDP
    check_free_space(out, _bytes_written(model, adapters, method.adapter, config.save_trajectory))
    _budget(run)
    run.optimizer = torch.optim.AdamW(param_groups(model, adapters, config.lr, run.b_ratio, config.weight_decay),
                                      lr=config.lr, weight_decay=config.weight_decay)
    run.scheduler = torch.optim.lr_scheduler.LambdaLR(run.optimizer, warmup_linear(run.total_steps, config.warmup))
    # Counted as trained: a subspace run trains only w (its d scalars), before finish bakes theta_0 + P w in.
    run.counts = {"trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
                  "total": sum(p.numel() for p in model.parameters()),
                  "head": sum(p.numel() for p in model.head.parameters())}
    return run


def _backbone(config: TrainConfig, group: dist_train.Group | None):
    """The backbone, refused early where the run cannot use it (before the data is tokenized)."""
    backbone = get_backbone(config.backbone, config.task)
    # A registry backbone (minilm, paraphrase-minilm-l3) records the task it was given (None), so that a sweep's
    # planned configuration equals the recorded one; a model folder records the task it was built for.
    config.task = backbone.task if backbone.kind == "hf" and backbone.name not in BACKBONES else config.task
    if group is not None and backbone.task == "causal-lm":
        # The process-sharded loss and evaluation weight examples, not target tokens.
        raise GenboundError("a causal LM trains in one process (its token-level loss is not yet sharded over "
                            "processes); run genbound train without torchrun")
    if backbone.kind == "hf" and backbone.task == "pooled":  # before tokenizing: 20,000 tokens took minutes
        positions = backbone_layout(backbone).max_positions
        if not 2 <= config.max_length <= (positions or config.max_length):
            raise GenboundError(f"--max-length {config.max_length} is outside 2..{positions}, the positions of "
                                f"backbone '{config.backbone}'")
    return backbone


def _restore_tensors(run: _Run) -> None:
    """A saved state's trained tensors and chain links into the freshly built model, refused when the state
    was not made by this model."""
    state, state_dir = run.state, run.state_dir
    if set(state.links) != set(run.adapters):
        raise GenboundError(f"{state_dir} holds adapters {sorted(state.links)}, this run {sorted(run.adapters)}; "
                            "pass --overwrite (overwrite=True from Python) to discard the state")
    expected = changing_tensors(run.model, list(run.adapters), not run.method.adapter)
    if set(expected) != set(state.model):
        raise GenboundError(f"{state_dir} does not hold this model's trained tensors; pass --overwrite "
                            "(overwrite=True from Python) to discard the state")
    restore_tensors(run.model, state.model, state_dir)
    for name, ad in run.adapters.items():
        ad.link = state.links[name]


def _budget(run: _Run) -> None:
    """Steps per epoch, the total, the chain's boundaries and the LoRA+ ratio; a saved state must fit them."""
    config, method = run.config, run.method
    run.n_train = len(run.splits.train)
    run.steps_per_epoch = math.ceil(run.n_train / config.batch_size)
    run.total_steps = config.steps or config.epochs * run.steps_per_epoch
    check_chain_steps(method.name, config.chain, run.total_steps)
    run.boundaries = set(chain_boundaries(run.total_steps, config.chain)) if method.chained else set()
    run.b_ratio = (config.lr_ratio or method.b_lr_ratio) if method.has_lr_ratio else 1.0
    if run.state is not None:
        check_progress(run.state, run.n_train, config.batch_size, run.total_steps,
                       config.chain if method.chained else 1, run.state_dir)


def _restore_progress(run: _Run) -> None:
    """A saved state's optimizer, schedule, position, history, snapshots and random state."""
    state = run.state
    try:
        run.optimizer.load_state_dict(state.optimizer)
        run.scheduler.load_state_dict(state.scheduler)
    except (KeyError, ValueError, TypeError, RuntimeError) as exc:
        raise GenboundError(f"{run.state_dir}: the optimizer state does not fit this run ({exc}); pass --overwrite "
                            "(overwrite=True from Python) to discard the state") from None
    run.step, run.epoch, run.position, run.running = state.step, state.epoch, state.position, state.running
    run.history, run.traj_steps, run.snapshots = list(state.history), list(state.traj_steps), dict(state.snapshots)
    run.seconds_before, run.resumed_at = state.train_seconds, [*state.resumed_at, state.step]
    torch.set_rng_state(state.rng_cpu)
    if state.rng_cuda is not None and run.device.type == "cuda":
        torch.cuda.set_rng_state(state.rng_cuda, run.device)


# -- phase 3: the loop and its events ------------------------------------------------------------------


def _loop(run: _Run, score, memory: PeakMemory) -> None:
    """Epochs of shuffled batches until the step budget is spent, each step followed by its events
    (:func:`_after_step`), each epoch by validation and a saved state (:func:`_end_epoch`)."""
    from tqdm.auto import tqdm

    config = run.config
    run.model.train()
    if run.state is None:
        _snapshot(run)
    else:
        _restore_progress(run)
    if run.monitor is not None and run.is_main:
        run.monitor.attach(run.model, run.splits.train, run.device)
    memory.start()
    bar = tqdm(total=run.total_steps, initial=run.step, desc=f"train {run.method.name}",
               disable=None if config.progress is None else not config.progress, leave=False)
    run.t_start = time.perf_counter()
    # A state saved after the last step of an epoch but before its validation resumes inside that epoch.
    in_epoch = run.position > 0
    while run.step < run.total_steps or in_epoch:
        in_epoch = False
        order = epoch_order(run.n_train, config.seed, run.epoch)
        for start in range(run.position, run.n_train, config.batch_size):
            if run.step >= run.total_steps:
                break
            t0 = time.perf_counter()
            value = _train_step(run, order[start : start + config.batch_size])
            run.step += 1
            if run.device.type == "cuda":
                torch.cuda.synchronize(run.device)
            run.step_times.append(time.perf_counter() - t0)
            run.running = 0.9 * run.running + 0.1 * value if run.step > 1 else value
            bar.update(1)
            bar.set_postfix(loss=f"{run.running:.3f}")
            _after_step(run, start + config.batch_size)
        _end_epoch(run, score)
    run.train_seconds = run.seconds_before + time.perf_counter() - run.t_start
    bar.close()


def _train_step(run: _Run, idx: Tensor) -> float:
    """One optimizer step on the batch ``idx`` (this process's slice of it under torchrun); returns the
    batch's mean loss (the global batch's across processes). A non-finite loss or gradient norm stops the run."""
    config, model, group = run.config, run.model, run.group
    where = f"at step {run.step} (epoch {run.epoch}); lower --lr"
    n_batch = len(idx)
    if group is not None:  # this process's slice of the global batch
        idx = dist_train.local_batch(group, idx)
    feats = {k: v[idx].to(run.device, non_blocking=True) for k, v in run.splits.train.features.items()}
    labels = run.splits.train.labels[idx].to(run.device, non_blocking=True)
    if group is None:
        loss = mean_loss(model(**feats), labels)  # per example, or per target token (causal LM)
    else:
        trained = [p for p in model.parameters() if p.requires_grad]
        loss = dist_train.slice_loss(model, feats, labels, n_batch, trained, lockstep=run.sharded)
    if group is None and not torch.isfinite(loss):
        raise NonFiniteError(f"training loss became {float(loss.detach())} {where}")
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if group is not None:  # the global batch's mean gradient and loss, alike in every process
        loss = dist_train.reduce_gradients(group, trained, loss)
        if not torch.isfinite(loss):
            raise NonFiniteError(f"training loss became {float(loss)} {where}")
    if config.clip:
        norm = nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], config.clip)
        if not torch.isfinite(norm):
            raise NonFiniteError(f"the gradient norm became {float(norm)} {where}")
    run.optimizer.step()
    run.scheduler.step()
    return float(loss.detach())


def _after_step(run: _Run, next_position: int) -> None:
    """The events after a step, in order: the trackers, a chain link's end, a trajectory snapshot, a saved
    state (``next_position``: where in this epoch's order a resumed run goes on)."""
    config = run.config
    if run.monitor is not None and run.is_main:
        run.monitor.on_step(run.step, run.running, run.adapters)
    if run.step in run.boundaries:
        _next_link(run)
    if config.save_trajectory and run.step % (config.trajectory_every or run.steps_per_epoch) == 0:
        _snapshot(run)
    if run.save_every and run.step % run.save_every == 0:
        _save_state(run, next_position)


def _next_link(run: _Run) -> None:
    """A chain boundary: every adapter merges its link into the base and starts fresh factors with fresh
    optimizer state; a subspace run draws the next link's subspace instead."""
    if run.spaces:
        run.spaces.append(next_link_subspace(run.model, run.adapters, run.optimizer, run.dims[len(run.spaces)],
                                             run.config.seed, len(run.spaces)))
        return
    for ad in run.adapters.values():
        ad.next_link()
        for p in ad.trained_parameters().values():
            run.optimizer.state.pop(p, None)  # fresh optimizer state for the new link


def _snapshot(run: _Run) -> None:
    """The trained tensors at this step into the trajectory (once per step; only with save_trajectory)."""
    if run.config.save_trajectory and run.step not in run.traj_steps:
        for k, v in trained_tensors(run.model, run.adapters, not run.method.adapter).items():
            run.snapshots[f"step{run.step}/{k}"] = v.cpu()
        run.traj_steps.append(run.step)


def _save_state(run: _Run, next_position: int) -> None:
    """The full training state, atomically (genbound.checkpoints.resume); rank 0 alone, as every process
    holds the same numbers."""
    # Sharded: the base weights are gathered whole, which every process must take part in.
    tensors = changing_tensors(run.model, list(run.adapters), not run.method.adapter) if run.sharded or \
        run.is_main else None
    if not run.is_main:
        return
    device = run.device
    save_state(run.state_dir, TrainState(
        config=asdict(run.config), step=run.step, epoch=run.epoch, position=min(next_position, run.n_train),
        running=run.running, history=run.history, traj_steps=run.traj_steps,
        links={n: ad.link for n, ad in run.adapters.items()}, optimizer=run.optimizer.state_dict(),
        scheduler=run.scheduler.state_dict(), rng_cpu=torch.get_rng_state(),
        rng_cuda=torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        model=tensors, snapshots=run.snapshots,
        train_seconds=run.seconds_before + time.perf_counter() - run.t_start, resumed_at=run.resumed_at,
    ))


def _end_epoch(run: _Run, score) -> None:
    """An epoch's end: validation into the history (and the trackers), then a saved state."""
    config = run.config
    run.position = 0
    run.epoch += 1
    val = score(run.model, run.splits.val, config.eval_batch_size, run.device, "validation",
                progress=config.progress)
    run.history.append({"epoch": run.epoch, "step": run.step, "train_loss_running": run.running,
                        "val_loss": val.loss, "val_accuracy": val.accuracy})
    if run.monitor is not None and run.is_main:
        run.monitor.on_epoch(run.step, val.loss, val.accuracy, run.adapters)
    run.model.train()
    if run.save_every:
        _save_state(run, 0)


# -- phase 4: finish -----------------------------------------------------------------------------------


def _finish(run: _Run, score, memory: PeakMemory, final_eval: bool = True) -> TrainResult:
    """The final evaluation over the full splits (unless ``final_eval`` is False: then no results, and the
    record says so), the checkpoint's record, and the checkpoint written (rank 0) with the saved state removed."""
    peak = memory.peak_bytes()
    if run.spaces:
        detach_subspace(run.model)  # theta_0 + P w baked into plain parameters: the checkpoint's usual tensors
    _snapshot(run)
    results = _final_evaluation(run, score) if final_eval else {}
    if run.monitor is not None and run.is_main:
        run.monitor.on_end(run.step, results, run.adapters)
    meta = _checkpoint_meta(run, results, peak, memory.kind())
    meta.final_eval = final_eval
    extra = None
    if run.spaces:
        meta.params.update(subspace_record(run.spaces))
        extra = {SUBSPACE_FILE: {f"w.link{j}": sp.w.detach().cpu().clone() for j, sp in enumerate(run.spaces)}}
    if not run.is_main:
        run.group.barrier()  # rank 0 writes the checkpoint, the same for every process
        return TrainResult(run.out, meta, run.history)
    _write_checkpoint(run, meta, extra)
    remove_state(run.state_dir)
    if run.group is not None:
        run.group.barrier()
    return TrainResult(run.out, meta, run.history)


def _final_evaluation(run: _Run, score) -> dict:
    """Train / validation / test loss and accuracy in eval mode over the full splits, and the gaps
    G = L_test - L_train and G_01 = acc_train - acc_test. ``score`` (genbound.diagnostics.evaluate) runs under
    torch.no_grad at the inference batch size (``eval_batch_size``) on the already tokenized splits."""
    results = {}
    for split in ("train", "val", "test"):
        ev = score(run.model, run.splits.split(split), run.config.eval_batch_size, run.device,
                   f"the {split} split", progress=run.config.progress)
        results[f"{split}_loss"] = ev.loss
        results[f"{split}_accuracy"] = ev.accuracy
    results["gap"] = results["test_loss"] - results["train_loss"]
    results["gap_01"] = results["train_accuracy"] - results["test_accuracy"]
    return results


def _checkpoint_meta(run: _Run, results: dict, peak: int | None, peak_kind: str) -> CheckpointMeta:
    """The checkpoint's record: the method, the model's layers, the data, every option, the parameter counts,
    the cost of the run, the final evaluation and the history."""
    config, method, backbone, model, splits = run.config, run.method, run.backbone, run.model, run.splits
    step, train_seconds = run.step, run.train_seconds
    trainable, total_params, head_params = run.counts["trainable"], run.counts["total"], run.counts["head"]
    stored = next((p for p in model.parameters() if p.requires_grad), next(model.parameters()))
    dtype = str(stored.dtype).replace("torch.", "")  # of the stored (trained) tensors, not a low-precision base
    # Causal LM: results are per target token; the dataset card records the target-token counts.
    causal = backbone.task == "causal-lm"
    return CheckpointMeta(
        method=method.name, rank=config.rank, alpha=config.alpha,
        scale=method.scale(config.alpha, config.rank), chain=config.chain,
        layers=[LayerInfo(n, o, i) for n, (o, i) in zip(run.layers, run.shapes)],
        backbone=config.backbone, fingerprint=backbone.fingerprint, dataset=config.dataset,
        split_seed=config.split_seed, max_length=config.max_length if backbone.kind == "hf" else None,
        # A causal LM's "classes" are its vocabulary: num_labels is its size, the class list stays empty.
        num_labels=model.head.out_features if causal else splits.num_labels,
        head_in_features=model.head.in_features, classes=splits.classes,
        n_train=run.n_train, sizes=splits.sizes, dtype=dtype, seed=config.seed, paca_columns=config.paca_columns,
        split_digest=splits.digest(), dataset_card=splits.info.get("card", {}),
        sources=sources_record(config.backbone, backbone, config.dataset),
        head_bias=getattr(model.head, "bias", None) is not None,
        hyperparameters={**asdict(config), "total_steps": run.total_steps, "steps_per_epoch": run.steps_per_epoch,
                         "b_lr_ratio_applied": run.b_ratio, "chain_boundaries": sorted(run.boundaries),
                         # what the model was fed (the processor's output it accepts): rebuilt alike
                         "model_inputs": sorted(splits.train.features)},
        params={"trainable": trainable, "total": total_params, "head": head_params,
                "data_dependent": method.data_dependent_params(run.shapes, config.rank, config.chain, head_params,
                                                               total_params)},
        metrics={"device": str(run.device), "steps": step, "train_seconds": train_seconds,
                 "seconds_per_step": train_seconds / max(step, 1),
                 "median_seconds_per_step": sorted(run.step_times)[len(run.step_times) // 2]
                 if run.step_times else None,
                 "examples_per_second": step * config.batch_size / train_seconds if train_seconds else None,
                 "peak_memory_bytes": peak, "peak_memory_kind": peak_kind,
                 "torch": torch.__version__, "genbound": __version__, "resumed_at": run.resumed_at,
                 **({"processes": run.group.world, "shard": "fsdp" if run.sharded else "none"}
                    if run.group is not None else {})},
        results=results, history=run.history, trajectory_steps=sorted(run.traj_steps),
    )


def _write_checkpoint(run: _Run, meta: CheckpointMeta, extra: dict | None) -> None:
    """The checkpoint, atomically; when it cannot be written the saved state is kept for ``--resume``."""
    tensors = trained_tensors(run.model, run.adapters, not run.method.adapter)
    try:
        save_checkpoint(run.out, meta, tensors, run.snapshots if run.config.save_trajectory else None,
                        overwrite=run.overwrite, may_replace=may_replace, extra=extra)
    except GenboundError as exc:
        if run.save_every and run.state_dir.is_dir() and not is_checkpoint(run.out):
            # The finished run's state: --resume writes it without training again.
            raise GenboundError(f"{exc}; the trained state is kept in {run.state_dir}: move the files out of "
                                f"{run.out} and rerun with --resume to write the checkpoint without training "
                                "again") from None
        raise
