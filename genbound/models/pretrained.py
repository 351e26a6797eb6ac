"""Pretrained weights W0 of single layers, read straight from a backbone's safetensors file.

Intruder dimensions, the hypotheses of PiSSA / DoRA / fft and the straight line between two checkpoints need
W0 of the adapted layers only (docs/concepts.md, "Intruder dimensions"). Building the whole Hugging Face
model for that spends most of the time in ``from_pretrained``; here the few tensors are memory-mapped from
the weights file instead, with the header checks of :mod:`genbound.core.readers`.

Which key of the file holds a layer's weight is asked of transformers (genbound.models.hfmodels.checkpoint_names: its
own key conversion, as ``from_pretrained`` applies it: ViT's ``vit.encoder.layer.0.attention.attention.query``
loads into ``vit.layers.0.attention.q_proj``), and the orientation of the model itself: a layer genbound holds
as the Linear of a transformers ``Conv1D`` (GPT-2; the model's ``fan_in_fan_out``) is stored (in, out) and
transposed here. Where a weight reaches its layer only through a tensor conversion (a fused or split
projection), :func:`pretrained_weights` returns None so that the caller takes W0 from the built model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from torch import Tensor

from ..core.errors import CheckpointError
from ..core.readers import LazyTensors, model_header
from .layout import model_layout


def pretrained_weights(backbone, layers: Sequence[tuple[str, int, int]]) -> Mapping[str, Tensor] | None:
    """W0 (float32, (out, in)) of each ``(name, out, in)`` layer from ``backbone.weights`` (a
    :class:`~genbound.core.readers.LazyTensors`: each read when it is used), or None where a
    layer's weight is not stored as it is (the caller builds the model instead). A key found with a shape that
    is not the layer's is a :class:`~genbound.core.errors.CheckpointError`."""
    path = Path(backbone.weights)
    header = model_header(path)  # of the file, or of every shard of a sharded checkpoint
    layout = model_layout(backbone)  # checkpoint_names and the transposed layers, cached on disk
    by_param = {param: key for key, param in layout.names.items() if param is not None}
    fifo = set(layout.fan_in_fan_out)
    found: dict[str, tuple[str, bool]] = {}
    for name, n, m in layers:
        key = by_param.get(f"{name}.weight")
        if key is None:
            return None
        shape = tuple(header[key]["shape"])
        transposed = name in fifo  # a Conv1D stores (in, out)
        if shape != ((m, n) if transposed else (n, m)):
            raise CheckpointError(f"{path}: weight '{key}' of layer {name} is {shape}, not {n}x{m}"
                                  f"{' (stored transposed)' if transposed else ''}; the checkpoint was made for "
                                  "another backbone")
        found[name] = (key, transposed)
    # read as each layer is used, one at a time: W0 of a base of gigabytes costs one matrix, not all of them
    return LazyTensors(path, {name: key for name, (key, _) in found.items()},
                       [name for name, (_, transposed) in found.items() if transposed])
