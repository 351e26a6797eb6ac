"""Loss and accuracy of a model over an EvalSet, in eval mode, averaged exactly by example count.

The empirical generalization gap (docs/concepts.md, "Empirical generalization gap") is G = L_test - L_train
with both losses computed
this way: the same per-example cross-entropy over the full splits at the same checkpoint, never a running
training-loss average.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from .device import where as device_of
from .errors import NonFiniteError
from .evalset import EvalSet


@dataclass
class Evaluation:
    loss: float  # mean cross-entropy (nats)
    accuracy: float
    error: float  # 1 - accuracy (the 0-1 loss)
    n: int


@torch.no_grad()
def evaluate(
    model: nn.Module, data: EvalSet, batch_size: int = 64, device: torch.device | None = None,
    where: str = "evaluation",
    progress: bool | None = False,
) -> Evaluation:
    """Mean cross-entropy and accuracy over ``data`` in eval mode; the model's mode is restored. ``progress``
    shows a bar over the examples (genbound.progress: None only on a terminal)."""
    from .progress import bar

    device = device_of(device, model)  # None: where the model is
    was_training = model.training
    model.eval()
    total_loss, correct = 0.0, 0
    shown = bar(total=len(data), desc=f"evaluate {where}", unit="ex", progress=progress)
    try:
        for feats, labels in data.batches(batch_size, device):
            shown.update(len(labels))
            logits = model(**feats)
            total_loss += float(F.cross_entropy(logits.float(), labels, reduction="sum"))
            correct += int((logits.argmax(-1) == labels).sum())
    finally:
        shown.close()
        model.train(was_training)
    n = len(data)
    loss = total_loss / n
    if not math.isfinite(loss):
        raise NonFiniteError(f"the loss is not finite in {where}; the model or its inputs hold NaN or Inf")
    return Evaluation(loss=loss, accuracy=correct / n, error=1 - correct / n, n=n)


def evaluate_source(source, device: torch.device | None = None, batch_size: int = 64) -> dict:
    """Train / val / test loss and accuracy and the gap G = L_test - L_train of a genbound checkpoint or a
    peft source (genbound.peft_source), in eval mode over the full splits. Every example is one sequence (or
    image) with one label, so losses and the gap are per sequence. ``source`` may be a run context
    (genbound.context)."""
    from .context import context_for

    source = context_for(source, device)
    model = source.build_model(device)
    device = next(model.parameters()).device
    splits = source.load_splits()
    out: dict = {"source": str(source.path), "kind": getattr(source, "kind", "genbound"),
                 "method": source.meta.method, "dataset": splits.name, "unit": "sequence",
                 "sizes": splits.sizes, "n_train": len(splits.train), "classes": list(splits.classes)}
    for split in ("train", "val", "test"):
        ev = evaluate(model, splits.split(split), batch_size, device, f"the {split} split")
        out[f"{split}_loss"], out[f"{split}_accuracy"] = ev.loss, ev.accuracy
    out["gap"] = out["test_loss"] - out["train_loss"]
    out["gap_01"] = out["train_accuracy"] - out["test_accuracy"]
    return out
