"""What a checkpoint claims about sizes, checked against its backbone before anything is allocated.

A checkpoint's metadata names its backbone and lists the adapted layers with their shapes, the head's input
width, the stored dtype and the tokenizer length. Every later allocation follows from these numbers (a
column selector of R x m, an fft tensor of n x m, a token batch of max_length), so a file that claims a
1024 x 2^20 layer or 20,000 tokens would make a reader allocate gigabytes before anything else refuses it.
Here they are compared with the backbone's own layout, asked of the model: genbound's model built from its
configuration on the meta device (genbound.models.hfmodels; names and shapes, nothing allocated, no tensor read):
each adapted layer must be a Linear of that model with the same shape, the head's width the width of the
model's head, the dtype the one the backbone is built in, the length at most its position table. The total
bytes a tensor file may claim are bounded by a small multiple
of the backbone's weights (:func:`max_tensor_bytes`).

A backbone that is not available here (a local model folder that was moved) is not checked against; the
readers that need it refuse it later with their own message.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..core.errors import CheckpointError, GenboundError
from ..core.shards import weights_bytes
from ..models.backbones import get_backbone
from ..models.layout import model_layout

# A checkpoint holds at most the backbone's weights (fft) plus a trajectory of snapshots; the tensor file
# itself at most this multiple of the backbone, plus a fixed allowance for small models.
TENSOR_BYTES_FACTOR = 4
TENSOR_BYTES_SLACK = 64 << 20
BUILD_DTYPE = "float32"  # Backbone.build makes float32 models (transformers' default dtype, the mlp asset)


@dataclass(frozen=True)
class BackboneLayout:
    name: str
    kind: str
    linears: dict[str, tuple[int, int]]  # Linear module of genbound's model (``backbone.<path>``) -> (out, in)
    head_in_features: int
    max_positions: int | None  # tokens per example (text backbones)
    weights_bytes: int
    dtype: str = BUILD_DTYPE

    def linear(self, name: str) -> tuple[int, int] | None:
        """The (out, in) of the built model's Linear ``name``, or None where it has no such Linear."""
        return self.linears.get(name)


def backbone_layout(backbone) -> BackboneLayout:
    """The layout of a :class:`genbound.models.backbones.Backbone`, asked of the model itself: its modules built on the
    meta device (genbound.models.hfmodels.empty_model: names and shapes, nothing allocated), the head's input width
    from the head, the position table from ``config.get_text_config()``; only the byte size comes from the
    weights file. The answers are cached on disk per backbone file and installed versions
    (genbound.models.layout)."""
    try:
        layout = model_layout(backbone)  # cached on disk: building it imports transformers' modeling code
    except GenboundError:
        raise
    except Exception as exc:  # noqa: BLE001 - transformers' own failure, in one line
        raise GenboundError(f"backbone '{backbone.name}': transformers cannot build it from its config "
                            f"({str(exc).splitlines()[0][:100]})") from None
    linears = {n: s for n, s in layout.linears.items() if n != "head" and not n.startswith("head.")}
    return BackboneLayout(backbone.name, backbone.kind, linears, layout.head_in_features, layout.max_positions,
                          weights_bytes(Path(backbone.weights)))


def layout_for(name: str, task: str | None = None) -> BackboneLayout | None:
    """The layout of the backbone a checkpoint names (built for its recorded ``task``), or None where it is
    not available here."""
    try:
        return backbone_layout(get_backbone(name, task))
    except (GenboundError, OSError, ValueError, KeyError):
        return None


def max_tensor_bytes(layout: BackboneLayout | None) -> int | None:
    """The most bytes a tensor file for this backbone may claim (None: no backbone to compare with)."""
    if layout is None:
        return None
    return TENSOR_BYTES_FACTOR * layout.weights_bytes + TENSOR_BYTES_SLACK


def check_meta_claims(meta, where: Path | str) -> BackboneLayout | None:
    """Refuse a checkpoint whose claimed shapes, head width, dtype or length do not fit its backbone."""
    layout = layout_for(meta.backbone, (getattr(meta, "hyperparameters", None) or {}).get("task") or "pooled")
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
