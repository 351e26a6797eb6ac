"""Llama-shaped model folders and peft LoRA adapters written straight to disk, for the memory-mapped W0 tests.

The weights file is written tensor by tensor (a safetensors header, then each tensor's bytes drawn from a
seeded generator), so that a base of gigabytes is made without holding it in memory; the adapter is written in
peft's own format (adapter_config.json and adapter_model.safetensors with peft's key names). tests/test_mmap_w0.py
checks both against transformers' and peft's own loaders on a small case.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import torch

_ST = {torch.bfloat16: "BF16", torch.float32: "F32", torch.float16: "F16"}


def llama_tensors(hidden: int, layers: int, ffn: int, vocab: int, heads: int, kv: int) -> dict[str, tuple[int, int] |
                                                                                                    tuple[int]]:
    """transformers' LlamaForCausalLM key -> shape (untied embeddings, no biases)."""
    hd = hidden // heads
    out: dict = {"model.embed_tokens.weight": (vocab, hidden)}
    for i in range(layers):
        p = f"model.layers.{i}."
        out.update({p + "self_attn.q_proj.weight": (hidden, hidden), p + "self_attn.k_proj.weight": (kv * hd, hidden),
                    p + "self_attn.v_proj.weight": (kv * hd, hidden), p + "self_attn.o_proj.weight": (hidden, hidden),
                    p + "mlp.gate_proj.weight": (ffn, hidden), p + "mlp.up_proj.weight": (ffn, hidden),
                    p + "mlp.down_proj.weight": (hidden, ffn), p + "input_layernorm.weight": (hidden,),
                    p + "post_attention_layernorm.weight": (hidden,)})
    out["model.norm.weight"] = (hidden,)
    out["lm_head.weight"] = (vocab, hidden)
    return out


def write_safetensors(path: Path, shapes: dict, dtype: torch.dtype, seed: int, std: float = 0.02,
                      drawn: set[str] | None = None) -> None:
    """A safetensors file of seeded N(0, std^2) tensors (norm weights 1), written one tensor at a time; with
    ``drawn``, only those keys are drawn and every other tensor is written as zeros (a base of gigabytes
    written at the disk's speed; genbound refuses sparse files, so the zeros are real bytes)."""
    size = torch.empty((), dtype=dtype).element_size()
    header, off = {}, 0
    for key, shape in shapes.items():
        n = 1
        for d in shape:
            n *= d
        header[key] = {"dtype": _ST[dtype], "shape": list(shape), "data_offsets": [off, off + n * size]}
        off += n * size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    g = torch.Generator().manual_seed(seed)
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(raw)))
        fh.write(raw)
        for key, shape in shapes.items():
            if drawn is not None and key not in drawn:
                nbytes = header[key]["data_offsets"][1] - header[key]["data_offsets"][0]
                for start in range(0, nbytes, 1 << 26):
                    fh.write(bytes(min(1 << 26, nbytes - start)))
                continue
            t = torch.ones(shape) if key.endswith("norm.weight") else torch.randn(shape, generator=g) * std
            fh.write(t.to(dtype).contiguous().view(torch.uint8).numpy().tobytes())


def write_llama_base(folder: Path, hidden: int = 64, layers: int = 2, ffn: int = 128, heads: int = 4, kv: int = 2,
                     dtype: torch.dtype = torch.bfloat16, seed: int = 0, drawn: set[str] | None = None) -> Path:
    """A LlamaForCausalLM folder (config.json, a tokenizer, model.safetensors) with seeded random weights (only
    the keys ``drawn`` where given, zeros elsewhere: :func:`write_safetensors`)."""
    from transformers import LlamaConfig

    from genbound.models.tinymodels import _tokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tok = _tokenizer("llama")
    vocab = tok.vocab_size
    LlamaConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, intermediate_size=ffn,
                num_attention_heads=heads, num_key_value_heads=kv, tie_word_embeddings=False,
                max_position_embeddings=256, pad_token_id=tok.pad_token_id, bos_token_id=tok.cls_token_id,
                eos_token_id=tok.sep_token_id, architectures=["LlamaForCausalLM"],
                dtype=str(dtype).removeprefix("torch.")).save_pretrained(folder)
    tok.save_pretrained(folder)
    write_safetensors(folder / "model.safetensors", llama_tensors(hidden, layers, ffn, vocab, heads, kv), dtype, seed,
                      drawn=drawn)
    return folder


def write_lora_adapter(folder: Path, base: Path, modules: dict[str, tuple[int, int]], r: int = 8, alpha: float = 16.0,
                       seed: int = 1) -> Path:
    """A peft LoRA adapter (CAUSAL_LM) on ``modules`` (peft module path -> (out, in)), A and B seeded and nonzero."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    targets = sorted({m.rsplit(".", 1)[-1] for m in modules})
    cfg = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": r, "lora_alpha": alpha, "lora_dropout": 0.0,
           "target_modules": targets, "base_model_name_or_path": str(base), "bias": "none", "fan_in_fan_out": False,
           "use_rslora": False, "use_dora": False, "modules_to_save": None, "rank_pattern": {}, "alpha_pattern": {},
           "init_lora_weights": True, "inference_mode": True,
           "layers_to_transform": sorted({int(m.split(".")[2]) for m in modules})}
    (folder / "adapter_config.json").write_text(json.dumps(cfg, indent=1))
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for m, (n_out, n_in) in modules.items():
        tensors[f"base_model.model.{m}.lora_A.weight"] = torch.randn(r, n_in, generator=g) / n_in**0.5
        tensors[f"base_model.model.{m}.lora_B.weight"] = torch.randn(n_out, r, generator=g) * 0.05
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    return folder
