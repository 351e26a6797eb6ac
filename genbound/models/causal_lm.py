"""Causal language modelling: a local ``AutoModelForCausalLM`` folder fine-tuned on text, next-token loss.

``genbound train --task causal-lm --backbone DIR --dataset TEXTS`` builds the folder's
``AutoModelForCausalLM`` (never from the hub) as :class:`CausalLM`: ``logits = model(input_ids,
attention_mask)`` of shape (N, T, V), the transformer at ``.backbone`` (module names are peft's paths prefixed
by ``backbone.``), GPT-2's ``Conv1D`` held as the equal ``nn.Linear`` (named in ``fan_in_fan_out``). The
pretrained output layer predicts the next token; nothing new is added, so the model has no trained head
(:class:`NoHead`): the methods train their adapters only, as peft's CAUSAL_LM adapters do.

Data: the examples are texts (a registered text dataset's texts, its labels unused, or a data file's
``--text-columns``; no label column). Each is tokenized to ``--max-length`` tokens, padded on the right; the
labels are the token ids with padding set to -100 (genbound.models.losses.lm_labels) and the loss is next-token
cross-entropy over the target tokens (genbound.models.losses). Splits: the data's own (``--split-column`` or a
DatasetDict), else a seeded 70 / 10 / 20 permutation of the texts (texts have no class to stratify by).

Units (docs/concepts.md, "Causal language modelling: tokens and sequences"): losses, accuracies and the gap
are means over target tokens; N, the number of i.i.d. samples that every bound uses, is the number of
training sequences.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from ..core.errors import GenboundError

TASK = "causal-lm"


class NoHead(nn.Module):
    """Where a classifier has its trained head: a causal LM trains none (the pretrained output layer predicts
    the next token). It holds no parameters; ``in_features`` / ``out_features`` describe the output layer
    (hidden size, vocabulary) for the checkpoint's record."""

    weight = None
    bias = None

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.in_features = int(in_features)
        self.out_features = int(out_features)

    def forward(self, x: Tensor) -> Tensor:  # pragma: no cover - never called
        raise GenboundError("a causal language model has no classification head")


class CausalLM(nn.Module):
    """A Hugging Face ``AutoModelForCausalLM`` as a genbound model: ``logits = model(**features)`` (N, T, V)."""

    task = TASK

    def __init__(self, model: nn.Module):
        super().__init__()
        from .backbones import _conv1d_to_linear

        self.backbone = model
        out = model.get_output_embeddings()
        if out is None or not hasattr(out, "weight"):
            raise GenboundError(f"{type(model).__name__} has no output embedding layer; it is not a causal LM")
        vocab, hidden = out.weight.shape
        if hasattr(out, "nf"):  # a Conv1D output layer stores (in, out)
            hidden, vocab = vocab, hidden
        self.head = NoHead(hidden, vocab)
        self.fan_in_fan_out: list[str] = _conv1d_to_linear(model, prefix="backbone.")

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return self.backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits


def is_causal_model(model: nn.Module) -> bool:
    return getattr(model, "task", None) == TASK


def is_causal_meta(meta) -> bool:
    """A checkpoint's (or a peft source's) record says causal language modelling."""
    return (getattr(meta, "hyperparameters", None) or {}).get("task") == TASK


def build_causal_lm(backbone, seed: int = 0, attn_implementation: str = "sdpa") -> CausalLM:
    """The folder's ``AutoModelForCausalLM`` (weights from model.safetensors, never the hub) as a CausalLM.
    Weights the folder lacks (none, for a model saved as a causal LM) would be drawn from ``seed``."""
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    folder = str(backbone.folder)
    try:
        config = AutoConfig.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise GenboundError(f"cannot read {backbone.folder}/config.json: {str(exc).splitlines()[0]}; save the "
                            "model with save_pretrained") from None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        try:
            try:
                model = AutoModelForCausalLM.from_pretrained(folder, config=config, local_files_only=True,
                                                             use_safetensors=True,
                                                             attn_implementation=attn_implementation)
            except (TypeError, ValueError) as exc:
                if "attn_implementation" not in str(exc) and "sdpa" not in str(exc).lower():
                    raise
                model = AutoModelForCausalLM.from_pretrained(folder, config=config, local_files_only=True,
                                                             use_safetensors=True)
        except ValueError as exc:
            raise GenboundError(f"{backbone.folder}: model type '{config.model_type}' has no causal-LM class in "
                                f"transformers ({str(exc).splitlines()[0][:80]}); use a decoder (GPT-2, Llama, "
                                "Mistral, Qwen2) or drop --task causal-lm") from None
    return CausalLM(model)


# -- data ----------------------------------------------------------------------------------------------


def random_split(n: int, seed: int, fractions=(0.7, 0.1, 0.2)) -> dict[str, np.ndarray]:
    """Rows of train / val / test: a seeded permutation cut by ``fractions``, each part sorted."""
    perm = np.random.default_rng([int(seed), 2]).permutation(n)
    n_val = int(round(fractions[1] * n))
    n_test = int(round(fractions[2] * n))
    return {"val": np.sort(perm[:n_val]), "test": np.sort(perm[n_val:n_val + n_test]),
            "train": np.sort(perm[n_val + n_test:])}


def tokenize_texts(texts: list[str], backbone, max_length: int, progress: bool | None = None) -> dict[str, Tensor]:
    """Token ids (right-padded to ``max_length``), attention masks and labels (ids, -100 at padding)."""
    from ..data.datasets import featurize
    from .losses import lm_labels

    feats = featurize(texts, backbone, max_length, progress=progress)
    labels = lm_labels(feats["input_ids"], feats["attention_mask"])
    lengths = feats["attention_mask"].sum(1)
    short = torch.nonzero(lengths < 2).flatten()
    if short.numel():
        raise GenboundError(f"text {int(short[0])} has {int(lengths[short[0]])} token(s) after tokenization; a "
                            "next-token loss needs at least 2: drop empty texts")
    return {**feats, "labels": labels}


def load_lm_splits(spec, backbone, split_seed: int, max_length: int, progress: bool | None = None):
    """A text dataset (registered or a file) as causal-LM splits: features input_ids / attention_mask,
    labels the (N, T) token targets, classes empty."""
    from ..data.datasets import FileDatasetSpec, Splits
    from ..data.evalset import EvalSet

    card: dict = {}
    if isinstance(spec, FileDatasetSpec):
        from ..data.datafiles import read_texts

        texts, parts, card = read_texts(spec.path, spec.text_columns, spec.split_column, split_seed)
    else:
        if spec.data_kind != "text":
            raise GenboundError(f"dataset '{spec.name}' holds no texts; a causal LM trains on a text dataset")
        texts = list(spec.loader()[0])
        parts = None
    if not texts:
        raise GenboundError(f"dataset '{spec.name}' holds no texts; a causal LM needs some")
    if parts is None:
        parts = random_split(len(texts), split_seed)
        how = f"seeded 70/10/20 permutation of the texts (split seed {split_seed})"
    else:
        how = card.get("splits", "from the data's splits")
    for part, rows in parts.items():
        if len(rows) == 0:
            raise GenboundError(f"dataset {spec.name}: the {part} split is empty; add texts or give the splits "
                                "in a column")
    feats = tokenize_texts(texts, backbone, max_length, progress)
    labels = feats.pop("labels")
    full = EvalSet(feats, labels)
    tr, va, te = (torch.as_tensor(parts[k]) for k in ("train", "val", "test"))
    sizes = {k: int(len(v)) for k, v in parts.items()}
    tokens = {k: int((labels[torch.as_tensor(parts[k])][:, 1:] != -100).sum()) for k in parts}
    card = {**card, "task": TASK, "splits": how, "sizes": sizes, "target_tokens": tokens, "examples": len(texts),
            "max_length": max_length}
    info = {"examples": len(texts), "max_length": max_length, "card": card, "task": TASK}
    return Splits(spec.name, [], full.index(tr), full.index(va), full.index(te), split_seed, info)
