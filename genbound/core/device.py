"""One device policy for the whole library.

* Library functions take ``device: torch.device | None``. ``None`` means "where the inputs are": the device
  of the first tensor (or module parameter) handed in, or the CPU when the inputs are not tensors yet (a
  checkpoint read from disk). :func:`where` implements that rule.
* The word "auto" (CUDA when available, else the CPU) is a user-facing choice: it is resolved only at the
  boundary, by the CLI's ``--device`` and by configuration objects (``TrainConfig.device``), with
  :func:`resolve_device`. Passed to a library function it is refused with a one-line error.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from .errors import GenboundError

__all__ = ["resolve_device", "where"]


def resolve_device(name: str | torch.device | None) -> torch.device:
    """The CLI / config boundary: 'auto' (or None) picks CUDA when available; an unavailable CUDA or an
    unknown name is a one-line :class:`GenboundError`, not a crash."""
    if isinstance(name, torch.device):
        name = str(name)
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError, TypeError) as exc:
        raise GenboundError(f"unknown device '{name}'; use cpu, cuda, cuda:N or auto") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise GenboundError(f"device '{name}' asked for but CUDA is not available here; use --device cpu")
    return dev


def _first_device(obj: Any) -> torch.device | None:
    if isinstance(obj, torch.Tensor):
        return obj.device
    if isinstance(obj, torch.nn.Module):
        for p in obj.parameters():
            return p.device
        for b in obj.buffers():
            return b.device
        return None
    if isinstance(obj, dict):
        obj = obj.values()
    if isinstance(obj, (list, tuple)) or (isinstance(obj, Iterable) and not isinstance(obj, (str, bytes))
                                          and hasattr(obj, "__len__")):
        for x in obj:
            d = _first_device(x)
            if d is not None:
                return d
        return None
    for attr in ("B", "dense", "weight", "W0"):  # a LayerUpdate (factors B, A) or a layer-like object
        t = getattr(obj, attr, None)
        if isinstance(t, torch.Tensor):
            return t.device
    return None


def where(device: torch.device | str | None, *inputs: Any) -> torch.device:
    """The library's device rule: ``device`` if given, else the device of the first tensor found in
    ``inputs`` (tensors, modules, LayerUpdates, or lists / dicts of them), else the CPU.

    A string naming a device ("cpu", "cuda:0") is accepted for convenience; "auto" is not: it is resolved
    at the CLI and config boundary (:func:`resolve_device`), never silently inside a computation.
    """
    if device is None:
        for x in inputs:
            d = _first_device(x)
            if d is not None:
                return d
        return torch.device("cpu")
    if isinstance(device, torch.device):
        return device
    if str(device) == "auto":
        raise GenboundError("device 'auto' is resolved by the command line or a config; library functions take "
                            "a torch.device or None (where the inputs are): use genbound.core.device.resolve_device")
    try:
        return torch.device(device)
    except (RuntimeError, ValueError, TypeError) as exc:
        raise GenboundError(f"unknown device '{device}'; use cpu, cuda or cuda:N") from exc
