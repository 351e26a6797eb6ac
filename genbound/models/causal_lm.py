"""Causal language modelling: a local ``AutoModelForCausalLM`` folder fine-tuned on text, next-token loss.

``genbound train --task causal-lm --backbone DIR --dataset TEXTS`` builds the folder's
``AutoModelForCausalLM`` (never from the hub) as :class:`CausalLM`: ``logits = model(**features)`` (the
tokenizer's output, as the model's forward accepts it) of shape (N, T, V), the transformer at ``.backbone``
(module names are peft's paths prefixed by ``backbone.``), GPT-2's ``Conv1D`` held as the equal ``nn.Linear``
(named in ``fan_in_fan_out``). The pretrained output layer predicts the next token; nothing new is added, so
the model has no trained head
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

import torch
from torch import Tensor, nn

from ..core.errors import GenboundError
from .checks import require_weights
from .precision import compute_precision, float_logits

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
        self.backbone = model
        out = model.get_output_embeddings()
        if out is None or not hasattr(out, "weight"):
            raise GenboundError(f"{type(model).__name__} has no output embedding layer; it is not a causal LM")
        vocab, hidden = out.weight.shape
        if hasattr(out, "nf"):  # a Conv1D output layer stores (in, out)
            hidden, vocab = vocab, hidden
        self.head = NoHead(hidden, vocab)
        self.fan_in_fan_out: list[str] = _conv1d_to_linear(model, prefix="backbone.")

    def forward(self, **features: Tensor) -> Tensor:
        with compute_precision(self, next(iter(features.values()), None)):
            return float_logits(self, self.backbone(**features, use_cache=False).logits)

    def forward_target(self):
        """What ``forward`` passes its inputs to (genbound.models.hfmodels.forward_inputs): the transformers model."""
        return self.backbone.forward


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
        config = AutoConfig.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError, KeyError) as exc:
        raise GenboundError(f"cannot read {backbone.folder}/config.json: {str(exc).splitlines()[0]}; save the "
                            "model with save_pretrained") from None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        try:
            try:
                model = require_weights(AutoModelForCausalLM.from_pretrained(
                    folder, config=config, local_files_only=True, trust_remote_code=False, use_safetensors=True,
                    attn_implementation=attn_implementation, output_loading_info=True), folder, False)
            except (TypeError, ValueError) as exc:
                if "attn_implementation" not in str(exc) and "sdpa" not in str(exc).lower():
                    raise
                model = require_weights(AutoModelForCausalLM.from_pretrained(
                    folder, config=config, local_files_only=True, trust_remote_code=False, use_safetensors=True,
                    output_loading_info=True), folder, False)
        except ValueError as exc:
            raise GenboundError(f"{backbone.folder}: model type '{config.model_type}' has no causal-LM class in "
                                f"transformers ({str(exc).splitlines()[0][:80]}); use a decoder (GPT-2, Llama, "
                                "Mistral, Qwen2) or drop --task causal-lm") from None
    return CausalLM(model)


def _conv1d_to_linear(model: nn.Module, prefix: str = "") -> list[str]:
    """Replace every transformers ``Conv1D`` (y = x W + b, W (in, out)) by the equal nn.Linear (W^T)."""
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover
        return []
    names = [n for n, m in model.named_modules() if isinstance(m, Conv1D)]
    for name in names:
        conv = model.get_submodule(name)
        m_in, n_out = conv.weight.shape
        lin = nn.Linear(m_in, n_out, bias=conv.bias is not None, device=conv.weight.device, dtype=conv.weight.dtype)
        with torch.no_grad():
            lin.weight.copy_(conv.weight.t())
            if conv.bias is not None:
                lin.bias.copy_(conv.bias)
        model.set_submodule(name, lin)
    return [prefix + n for n in names]
