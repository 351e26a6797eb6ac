"""Why Theorem 1 does not apply, said of the model at hand: its chain of maps and the failed assumptions, read
from the backbone's ``config.json`` (no weight is loaded) and the adapted layers.

Theorem 1 (genbound.bounds.transformer) is proved for a plain chain s_L(W^L ... s_1(W^1 x)) with globally
Lipschitz activations, inputs of bounded norm and the adapted weights as consecutive links. A transformer
breaks these assumptions in ways that depend on the model: its normalization (LayerNorm's constant
gamma / std(h), RMSNorm's gamma sqrt(d) / ||h||), its attention (bidirectional or causal, present at all in a
convolutional network), its inputs (token sequences or image patches), its output (a pooled classifier, or a
next-token softmax at every position), and which layers carry the adapters. :func:`describe` names each from the
configuration, so that a GPT-2, a Llama or a ViT is not described as MiniLM.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

# Convolutional vision models: no self-attention (their blocks are still residual and normalized).
CONV_TYPES = ("convnext", "convnextv2", "resnet", "regnet", "mobilenet_v1", "mobilenet_v2", "efficientnet",
              "bit", "van")


def _first(cfg: Any, *names: str) -> Any:
    for n in names:
        v = getattr(cfg, n, None)
        if v is not None:
            return v
    return None


def _config(folder: Path | str | None):
    if folder is None:
        return None
    try:
        from transformers import AutoConfig

        cfg = AutoConfig.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError, KeyError):
        return None
    text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    return cfg, text


def _adapted(layers: Sequence[str]) -> str:
    kinds = sorted({n.rsplit(".", 1)[-1] for n in layers})
    return ", ".join(kinds) + f" ({len(layers)} adapted map{'s' if len(layers) != 1 else ''})"


def _plain_config(config: dict):
    """The configuration as plain data (genbound.models.layout.ModelLayout.config) seen as attributes."""
    return SimpleNamespace(model_type=config.get("model_type"), architectures=config.get("architectures")), \
        SimpleNamespace(**config.get("text", {}))


def describe(folder: Path | str | None, layers: Sequence[str], task: str,
             config: dict | None = None) -> tuple[str, list[str]]:
    """(the chain of maps, the reasons Theorem 1 does not apply) of the transformer in model folder ``folder``,
    built for ``task`` (seq-cls, image-cls, causal-lm, pooled) with adapters on ``layers``. ``config``: the
    folder's configuration already read as plain data (genbound.models.layout, cached on disk), which spares
    importing transformers; the attributes read here go by their own names or their aliases alike."""
    got = _plain_config(config) if config is not None else _config(folder)
    cfg, text = got if got is not None else (None, None)
    model_type = str(getattr(cfg, "model_type", "") or "transformer")
    arch = str((getattr(cfg, "architectures", None) or [model_type])[0])
    depth = _first(text, "num_hidden_layers", "n_layer", "n_layers", "num_layers")
    if depth is None and isinstance(getattr(text, "depths", None), (list, tuple)):
        depth = sum(text.depths)
    heads = _first(text, "num_attention_heads", "n_head", "n_heads")
    act = _first(text, "hidden_act", "activation_function", "hidden_activation", "activation") or "activation"
    rms = getattr(text, "rms_norm_eps", None) is not None
    norm = "RMSNorm" if rms else "LayerNorm"
    conv = model_type in CONV_TYPES
    vision = task == "image-cls" or conv
    causal = task == "causal-lm" or any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in
                                        (getattr(cfg, "architectures", None) or []))
    blocks = f"{depth} x " if depth else ""
    adapted = _adapted(layers)

    inputs = "pixel values -> patch embeddings" if vision and not conv else (
        "pixel values -> convolutional stem" if conv else "token ids -> token + position embeddings")
    if conv:
        block = f"h <- h + Conv/MLP_{act}({norm}(h))"
    else:
        attn = "causal self-attention" if causal else "self-attention"
        block = (f"h <- h + {attn}(h; {heads} heads) ; h <- h + MLP_{act}(h)" if heads else
                 f"h <- h + {attn}(h) ; h <- h + MLP_{act}(h)") + f", each with {norm}"
    if task == "causal-lm":
        out = "LM head at every position -> next-token softmax over the vocabulary"
    elif task == "pooled":
        out = "masked mean pooling over tokens -> linear head"
    elif vision:
        out = "pooled image representation -> classifier"
    elif causal or model_type in ("gpt2", "llama", "mistral", "qwen2", "gemma", "gpt_neox", "opt", "phi"):
        out = "the last non-pad token's state -> score head"
    else:
        out = "the first ([CLS]) token's state -> classification head"
    chain = f"{arch}: {inputs} -> {blocks}[{block}] -> {out}; adapters on {adapted}"

    reasons = [f"residual connections: each of the {depth or 'its'} blocks of this {arch} is h + F(h), not s(W h); "
               "the theorem's chain has no skip paths"]
    if not conv:
        reasons.append(f"dot-product {'causal ' if causal else ''}self-attention is not globally Lipschitz (Kim et al. "
                       "2021): queries and keys enter as a product inside a softmax, so an adapted map there is not "
                       "a link s(W x) with a Lipschitz s")
    if rms:
        reasons.append("RMSNorm is not globally Lipschitz: its constant gamma sqrt(d) / ||h|| is unbounded as "
                       "||h|| -> 0")
    else:
        reasons.append("LayerNorm is not globally Lipschitz: its constant gamma / std(h) is unbounded as the "
                       "variance -> 0")
    if vision:
        reasons.append("the inputs are images cut into patches (or convolved), and the adapted maps see hidden "
                       "states with no a-priori norm bound C")
    else:
        reasons.append("the inputs are token sequences and the adapted maps see hidden states with no a-priori "
                       "norm bound C")
    if task == "causal-lm":
        reasons.append("the loss is a mean of next-token losses over a sequence's positions, not one output of a "
                       "chain")
    reasons.append(f"the adapted layers are not consecutive links: {adapted} in {depth or 'several'} blocks, with "
                   "unadapted maps in between")
    return chain, reasons
