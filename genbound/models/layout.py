"""What genbound reads of a backbone's model without building it, cached on disk.

The size checks of a checkpoint (genbound.checkpoints.claims) and the W0 reader (genbound.models.pretrained) need
the names and shapes of the model's Linear layers, the head's input width, the layers stored transposed (GPT-2's
``Conv1D``), the length of the position table and the parameter each key of the weights file loads into; the
Theorem-1 description (genbound.bounds.architecture) needs the configuration's attributes. All come from genbound's
model built on the meta device (:func:`genbound.models.hfmodels.empty_model`) and from transformers' key conversion
(:func:`genbound.models.hfmodels.checkpoint_names`); building it imports transformers' modeling code, and reading
the configuration imports transformers itself (which indexes every model it ships); together more CPU than
everything else `genbound compare` does on two MiniLM checkpoints. So the answers are kept as JSON under
``$GENBOUND_CACHE/layouts`` (``~/.cache/genbound``; ``GENBOUND_CACHE=off`` disables it), keyed by everything they
depend on: the backbone's name, kind, task, weights file (path, size, modification time), config.json's modification
time, the installed torch and transformers versions and the source of genbound.models. A missing, unreadable or
malformed entry is recomputed; tests/test_startup.py checks a cached layout equals the one computed from the model.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from functools import lru_cache
from importlib import metadata
from pathlib import Path

from ..core.atomic import write_text
from ..core.cachedir import cache_dir
from .hfmodels import checkpoint_names, empty_model, linear_shapes, max_positions, state_key, text_config

LAYOUT_VERSION = 2


@dataclass(frozen=True)
class ModelLayout:
    linears: dict[str, tuple[int, int]]  # every Linear of genbound's model (head included) -> (out, in)
    head_in_features: int
    fan_in_fan_out: tuple[str, ...]  # Linear layers whose weight the file stores (in, out)
    max_positions: int | None  # tokens per sequence of the position table (None: no limit, or not text)
    names: dict[str, str | None]  # weights-file key -> genbound parameter it loads into (checkpoint_names)
    # transformers' configuration as plain data (kind "hf"): model_type, architectures and the text part's
    # attributes ("text": config.get_text_config().to_dict()); None for the mlp
    config: dict | None = None


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "-"


@lru_cache(maxsize=1)
def _source_digest() -> str:
    """sha256 of genbound.models' source: a change to how a model is built makes a new key."""
    h = hashlib.sha256()
    for f in sorted(Path(__file__).resolve().parent.glob("*.py")):
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def _entry(backbone) -> Path | None:
    cache = cache_dir("layouts")
    if cache is None:
        return None
    key = json.dumps([LAYOUT_VERSION, list(state_key(backbone)), _version("torch"), _version("transformers"),
                      _source_digest()])
    return cache / (hashlib.sha256(key.encode()).hexdigest() + ".json")


def _plain(config) -> dict:
    """A transformers configuration as JSON data: model_type, architectures and its text part's attributes."""
    text = text_config(config)
    return json.loads(json.dumps({"model_type": getattr(config, "model_type", None),
                                  "architectures": list(getattr(config, "architectures", None) or []),
                                  "text": text.to_dict()}, default=str))


def compute_layout(backbone) -> ModelLayout:
    """The layout asked of the model built on the meta device (imports transformers' modeling code)."""
    model = empty_model(backbone)
    config = backbone.config() if backbone.kind == "hf" else None
    return ModelLayout(linear_shapes(model), int(model.head.in_features),
                       tuple(getattr(model, "fan_in_fan_out", ())),
                       max_positions(config) if config is not None else None,
                       checkpoint_names(backbone), _plain(config) if config is not None else None)


def _from_json(d: dict) -> ModelLayout:
    return ModelLayout({str(k): (int(v[0]), int(v[1])) for k, v in d["linears"].items()},
                       int(d["head_in_features"]), tuple(str(x) for x in d["fan_in_fan_out"]),
                       None if d["max_positions"] is None else int(d["max_positions"]),
                       {str(k): None if v is None else str(v) for k, v in d["names"].items()},
                       None if d["config"] is None else dict(d["config"]))


_MEMO: dict[Path, ModelLayout] = {}


def model_layout(backbone) -> ModelLayout:
    """The backbone's :class:`ModelLayout`: from the disk cache, else computed and stored (module docstring)."""
    entry = _entry(backbone)
    if entry is None:
        return compute_layout(backbone)
    if entry in _MEMO:
        return _MEMO[entry]
    try:
        layout = _from_json(json.loads(entry.read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError):
        layout = compute_layout(backbone)
        try:
            write_text(entry, json.dumps(asdict(layout)))
        except OSError:
            pass  # a read-only or full disk: the cache is an optimisation only
    _MEMO[entry] = layout
    return layout
