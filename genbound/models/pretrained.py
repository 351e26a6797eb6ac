"""Pretrained weights W0 of single layers, read straight from a backbone's safetensors file.

Intruder dimensions, the hypotheses of PiSSA / DoRA / fft and the straight line between two checkpoints need
W0 of the adapted layers only (docs/concepts.md, "Intruder dimensions"). Building the whole Hugging Face
model for that spends most of the time in ``from_pretrained``; here the few tensors are memory-mapped from
the weights file instead, with the header checks of :mod:`genbound.core.readers`.

A layer of the built model is named ``backbone.<path>`` (transformers) or ``<path>`` (mlp). Its key in the
weights file is ``<path>.weight``, or that path less a leading component the file lacks (a task model's
``bert.`` over a base model's file), or with one the file has (``bert.encoder...`` for ``encoder...``). The
stored matrix is (out, in), except in a transformers ``Conv1D`` (GPT-2), which stores (in, out): genbound
holds it as the equal Linear, so it is transposed here. Where a model type's modeling code uses Conv1D and a
layer is square, the orientation cannot be read from the shape, and :func:`pretrained_weights` returns None
so that the caller takes W0 from the built model.
"""

from __future__ import annotations

import importlib.util
import json
import re
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import torch
from torch import Tensor

from ..core.errors import CheckpointError
from ..core.readers import read_header, read_tensors

# transformers' Conv1D constructed in a modeling file (SeparableConv1D and the like are other modules)
_CONV1D = re.compile(r"(?<![A-Za-z0-9_])Conv1D\(")


@lru_cache(maxsize=32)
def may_hold_conv1d(folder: str) -> bool:
    """Whether the transformers modeling code of the model in ``folder`` constructs ``Conv1D`` layers (read
    from its source, nothing imported); True where that cannot be told."""
    try:
        model_type = str(json.loads((Path(folder) / "config.json").read_text()).get("model_type") or "")
        spec = importlib.util.find_spec("transformers")
    except (OSError, ValueError, ImportError):
        return True
    if not model_type or spec is None or spec.origin is None:
        return True
    d = {"openai-gpt": "openai"}.get(model_type, model_type.replace("-", "_"))
    source = Path(spec.origin).parent / "models" / d / f"modeling_{d}.py"
    if not source.is_file():
        return True
    return bool(_CONV1D.search(source.read_text(errors="replace")))


def weight_key(name: str, keys: set[str], kind: str) -> str | None:
    """The key in a weights file holding the weight of the built model's layer ``name``, or None."""
    if kind == "mlp":
        return f"{name}.weight" if f"{name}.weight" in keys else None
    if not name.startswith("backbone."):
        return None
    rest = name[len("backbone."):]
    parts = rest.split(".")
    for i in range(len(parts)):  # the path, then less its leading components
        key = ".".join(parts[i:]) + ".weight"
        if key in keys:
            return key
    tail = "." + rest + ".weight"  # a leading component the file has and the model lacks
    return next((k for k in sorted(keys) if k.endswith(tail)), None)


def pretrained_weights(backbone, layers: Sequence[tuple[str, int, int]]) -> dict[str, Tensor] | None:
    """W0 (float32, (out, in)) of each ``(name, out, in)`` layer from ``backbone.weights``, or None where a
    layer's orientation or key cannot be told from the file (the caller builds the model instead). A key
    found with a shape that fits neither orientation is a :class:`~genbound.core.errors.CheckpointError`."""
    path = Path(backbone.weights)
    header = read_header(path)
    keys = set(header)
    conv = backbone.kind != "mlp" and backbone.folder is not None and may_hold_conv1d(str(backbone.folder))
    found: dict[str, tuple[str, bool]] = {}
    for name, n, m in layers:
        key = weight_key(name, keys, backbone.kind)
        if key is None:
            return None
        shape = tuple(header[key]["shape"])
        if shape == (n, m) and not (conv and n == m):
            found[name] = (key, False)
        elif shape == (m, n) and conv and n != m:
            found[name] = (key, True)
        elif conv and shape == (n, m):
            return None  # square, and the model may store it either way
        else:
            raise CheckpointError(f"{path}: weight '{key}' of layer {name} is {shape}, not {n}x{m}; the "
                                  "checkpoint was made for another backbone")
    tensors = read_tensors(path, sorted({k for k, _ in found.values()}))
    out = {}
    for name, (key, transposed) in found.items():
        W = tensors[key]
        out[name] = (W.T if transposed else W).to(torch.float32).contiguous().clone()
    return out
