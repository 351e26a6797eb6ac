"""Small real checkpoints for tests and examples: the pretrained ``mlp`` backbone fine-tuned on digits 5-9.

A run takes about a second on CPU, so tests of every diagnostic can start from a real checkpoint.
"""

from __future__ import annotations

from pathlib import Path

from .methods.catalogue import get_method
from .training.train import TrainConfig, train


def make_checkpoint(tmp_path: str | Path, method: str = "lora", name: str | None = None, **overrides) -> Path:
    """Train the mlp backbone on digits with ``method`` and return the checkpoint directory."""
    chained = get_method(method).chained
    settings = dict(method=method, backbone="mlp", dataset="digits", rank=4, alpha=8.0,
                    chain=3 if chained else 1, steps=60, batch_size=32, lr=1e-2, seed=0, progress=False)
    if not get_method(method).adapter:
        settings["lr"] = 1e-3
    settings.update(overrides)
    out = Path(tmp_path) / (name or f"{method}-s{settings['seed']}")
    return train(TrainConfig(**settings), out).path
