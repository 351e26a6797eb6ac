"""What a checkpoint claims about sizes, checked against its backbone before anything is allocated.

A checkpoint's metadata names its backbone and lists the adapted layers with their shapes, the head's input
width, the stored dtype and the tokenizer length. Every later allocation follows from these numbers (a
column selector of R x m, an fft tensor of n x m, a token batch of max_length), so a file that claims a
1024 x 2^20 layer or 20,000 tokens would make a reader allocate gigabytes before anything else refuses it.
Here they are compared with the backbone's own layout, read from the safetensors header of its weights and
its ``config.json`` (no tensor is loaded): each adapted layer must be a Linear of the backbone with the
same shape, the head's width the backbone's output width, the dtype the one the backbone is built in, the
length at most its position table. The total bytes a tensor file may claim are bounded by a small multiple
of the backbone's weights (:func:`max_tensor_bytes`).

A backbone that is not available here (a local model folder that was moved) is not checked against; the
readers that need it refuse it later with their own message.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..core.errors import CheckpointError, GenboundError
from ..models.backbones import get_backbone

# A checkpoint holds at most the backbone's weights (fft) plus a trajectory of snapshots; the tensor file
# itself at most this multiple of the backbone, plus a fixed allowance for small models.
TENSOR_BYTES_FACTOR = 4
TENSOR_BYTES_SLACK = 64 << 20
BUILD_DTYPE = "float32"  # Backbone.build makes float32 models (transformers' default dtype, the mlp asset)


@dataclass(frozen=True)
class BackboneLayout:
    name: str
    kind: str
    linears: dict[str, tuple[int, int]]  # module name in the weights file -> (out, in)
    head_in_features: int
    max_positions: int | None  # tokens per example (text backbones)
    weights_bytes: int
    dtype: str = BUILD_DTYPE

    def linear(self, name: str) -> tuple[int, int] | None:
        """The (out, in) of the built model's Linear ``name``: a transformer's modules are its weights
        file's under ``backbone.``, possibly with a leading component (``bert.``) that the file has and
        the encoder does not."""
        if self.kind == "mlp":
            return self.linears.get(name)
        if not name.startswith("backbone."):
            return None
        rest = name[len("backbone."):]
        if rest in self.linears:
            return self.linears[rest]
        return next((v for k, v in self.linears.items() if k.endswith("." + rest)), None)


@lru_cache(maxsize=8)
def _layout(name: str, kind: str, weights: str, folder: str | None, size: int, mtime_ns: int) -> BackboneLayout:
    from safetensors import safe_open

    linears: dict[str, tuple[int, int]] = {}
    head_in = None
    with safe_open(weights, "pt") as fh:
        for key in fh.keys():
            if not key.endswith(".weight"):
                continue
            shape = fh.get_slice(key).get_shape()
            if len(shape) != 2:
                continue
            module = key[: -len(".weight")]
            if kind == "mlp":
                if module == "head":
                    head_in = int(shape[1])
                    continue
                linears[module] = (int(shape[0]), int(shape[1]))
            else:
                linears[module] = (int(shape[0]), int(shape[1]))
    max_positions = None
    if kind == "hf" and folder is not None:
        cfg: dict[str, Any] = json.loads((Path(folder) / "config.json").read_text())
        head_in = int(cfg.get("hidden_size") or cfg.get("dim") or cfg.get("d_model") or 0) or None
        mp = cfg.get("max_position_embeddings")
        max_positions = int(mp) if isinstance(mp, int) and mp > 0 else None
    if head_in is None:
        raise GenboundError(f"backbone '{name}': cannot tell the width of its output from {weights}")
    return BackboneLayout(name, kind, linears, head_in, max_positions, size)


def backbone_layout(backbone) -> BackboneLayout:
    """The layout of a :class:`genbound.models.backbones.Backbone` (cached per weights file and modification)."""
    st = Path(backbone.weights).stat()
    return _layout(backbone.name, backbone.kind, str(backbone.weights),
                   None if backbone.folder is None else str(backbone.folder), st.st_size, st.st_mtime_ns)


def layout_for(name: str) -> BackboneLayout | None:
    """The layout of the backbone a checkpoint names, or None where it is not available here."""
    try:
        return backbone_layout(get_backbone(name))
    except (GenboundError, OSError, ValueError, KeyError):
        return None


def max_tensor_bytes(layout: BackboneLayout | None) -> int | None:
    """The most bytes a tensor file for this backbone may claim (None: no backbone to compare with)."""
    if layout is None:
        return None
    return TENSOR_BYTES_FACTOR * layout.weights_bytes + TENSOR_BYTES_SLACK


def check_meta_claims(meta, where: Path | str) -> BackboneLayout | None:
    """Refuse a checkpoint whose claimed shapes, head width, dtype or length do not fit its backbone."""
    layout = layout_for(meta.backbone)
    if layout is None:
        return None

    def bad(what: str) -> CheckpointError:
        return CheckpointError(f"{where}: {what}; the checkpoint is corrupt, edited or made for another backbone")

    for li in meta.layers:
        shape = layout.linear(li.name)
        if shape is None:
            raise bad(f"layer '{li.name}' is not a Linear layer of backbone '{meta.backbone}'")
        if shape != (li.out_features, li.in_features):
            raise bad(f"layer {li.name} is {li.out_features}x{li.in_features} in the checkpoint but "
                      f"{shape[0]}x{shape[1]} in backbone '{meta.backbone}'")
    if meta.head_in_features != layout.head_in_features:
        raise bad(f"head_in_features {meta.head_in_features} differs from the backbone's output width "
                  f"{layout.head_in_features}")
    if meta.dtype != layout.dtype:
        raise bad(f"stored dtype {meta.dtype} differs from the backbone's {layout.dtype}")
    if layout.kind == "hf" and meta.max_length is not None and layout.max_positions is not None \
            and meta.max_length > layout.max_positions:
        raise bad(f"max_length {meta.max_length} exceeds the backbone's {layout.max_positions} positions")
    return layout
