"""Sweep configurations: which backbone, data and budget every method of a sweep is trained with.

A preset fixes everything except the method and the seed; :func:`train_config` turns (preset, method,
seed) into the :class:`genbound.training.train.TrainConfig` of that run. The chained methods (cola, rac, c3la, rc3la)
use the preset's chain length, the others k = 1; full fine-tuning gets its own (smaller) learning rate, as in
the paper's reference hyperparameters (docs/concepts.md, "Reference hyperparameters": PEFT 3e-4, full fine-tuning 1e-5
on RoBERTa).

==============  ========  =======  ====  =====  =====  =============  =====================================
preset          backbone  data     r     alpha  chain  budget         use
==============  ========  =======  ====  =====  =====  =============  =====================================
paper-minilm    minilm    bbc      16    32     3      9 epochs       the paper's setting on a GPU (long)
cpu-minilm      minilm    bbc      16    32     3      30 steps       MiniLM on CPU, a few minutes per run
mlp             mlp       digits   4     8      3      60 steps       seconds per run; tests, notebooks
==============  ========  =======  ====  =====  =====  =============  =====================================

paper-minilm: 9 epochs with k = 3 links gives one link per 3 epochs, the paper's chain segment length.
cpu-minilm: LoRA reached 94% test accuracy in its 30 steps (lr 2e-3, batch 32; about 8 s a step on two
shared CPU cores).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from genbound.core.errors import GenboundError
from genbound.methods.catalogue import get_method
from genbound.training.train import TrainConfig


@dataclass(frozen=True)
class Preset:
    """Everything a sweep fixes; ``lr_full`` is the learning rate of fft, ``lr`` that of every adapter."""

    name: str
    description: str
    backbone: str
    dataset: str
    rank: int
    alpha: float
    chain: int
    lr: float
    lr_full: float
    epochs: int | None = None
    steps: int | None = None
    batch_size: int = 32
    max_length: int = 128
    warmup: float = 0.1
    split_seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)  # any other TrainConfig field

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in [
        Preset("paper-minilm", "all-MiniLM-L6-v2 on BBC News, r = 16, alpha = 32, chains of 3, 9 epochs "
               "(one link per 3 epochs); a GPU run", backbone="minilm", dataset="bbc", rank=16, alpha=32.0,
               chain=3, lr=3e-4, lr_full=1e-5, epochs=9, batch_size=32, max_length=128),
        Preset("cpu-minilm", "all-MiniLM-L6-v2 on BBC News with 64 tokens and 30 steps of 32: the paper's "
               "adapters on a CPU, a few minutes per run", backbone="minilm", dataset="bbc", rank=16, alpha=32.0,
               chain=3, lr=2e-3, lr_full=5e-5, steps=30, batch_size=32, max_length=64),
        Preset("mlp", "the pretrained 64-128-128 mlp on digits 5-9, r = 4, chains of 3, 60 steps: seconds per "
               "run (tests and notebooks)", backbone="mlp", dataset="digits", rank=4, alpha=8.0, chain=3,
               lr=1e-2, lr_full=1e-3, steps=60, batch_size=32),
    ]
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise GenboundError(f"unknown preset '{name}'; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]


def with_budget(preset: Preset, steps: int | None = None, epochs: int | None = None) -> Preset:
    """``preset`` with its training budget replaced (``steps`` wins over ``epochs``)."""
    if steps is not None and steps <= 0:
        raise GenboundError(f"--steps must be positive, got {steps}")
    if epochs is not None and epochs <= 0:
        raise GenboundError(f"--epochs must be positive, got {epochs}")
    if steps is not None:
        return replace(preset, steps=steps, epochs=None)
    if epochs is not None:
        return replace(preset, epochs=epochs, steps=None)
    return preset


def train_config(preset: Preset, method: str, seed: int, device: str = "cpu",
                 progress: bool | None = False) -> TrainConfig:
    """The run (``method``, ``seed``) of ``preset`` as a validated TrainConfig."""
    spec = get_method(method)
    config = TrainConfig(
        method=spec.name, backbone=preset.backbone, dataset=preset.dataset, rank=preset.rank, alpha=preset.alpha,
        chain=preset.chain if spec.chained else 1, epochs=preset.epochs, steps=preset.steps,
        lr=preset.lr if spec.adapter else preset.lr_full, batch_size=preset.batch_size,
        max_length=preset.max_length, warmup=preset.warmup, seed=int(seed), split_seed=preset.split_seed,
        device=device, progress=progress, **preset.extra,
    )
    config.validate()
    return config

