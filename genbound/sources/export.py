"""Export a genbound checkpoint as a Hugging Face peft LoRA adapter (``genbound export CKPT --peft OUT``).

Every genbound adapter's update is dW = s B A per layer (docs/concepts.md, "The methods"), which is exactly a
peft LoRA layer with lora_B = B (n, R), lora_A = A (R, m) and lora_alpha / r = s:

==================  ============================================================================
lora, lora_plus,    A and B as trained; r = rank, lora_alpha = alpha
asym
cola, rac           the k links concatenated: B = [B_1 .. B_k], A = [A_1; ..; A_k]; r = k rank,
                    lora_alpha = s k rank (so that lora_alpha / r = s)
cla, rcla, c3la,    A = the one-hot selector of the chosen input columns (of all links), B as trained
rc3la
paca                B = P - P0 (the change of the trained columns), A = their selector; s = 1
vera, pissa         their factored dW relative to W0 as the layer's update reports it (VeRA's
                    diag(b) B diag(d) A; PiSSA's B A - B0 A0 with 2 r columns), r and lora_alpha
                    per layer (``rank_pattern`` / ``alpha_pattern`` where they differ)
dora                peft's own DoRA: ``use_dora`` with A, B and the magnitude as
                    ``lora_magnitude_vector`` (W = m (W0 + s B A) / ||W0 + s B A||_row in both)
fft                 refused: a full fine-tune is not an adapter
==================  ============================================================================

DoRA is written as peft's own type. PiSSA is written as the rank-2r LoRA of dW relative to the unmodified W0,
which is the form peft itself converts a PiSSA adapter to for sharing (``save_pretrained(...,
path_initial_model_for_weight_conversion=...)``): peft's other PiSSA form stores A and B relative to a residual
base W0 - s B0 A0 that peft recomputes with its own float32 SVD when loading, so the base it rebuilds is not
bit-for-bit genbound's. VeRA is written as the exact LoRA of its dW: peft's VeRA type shares one frozen pair
vera_A (r, max in) / vera_B (max out, r) across all layers, sliced to each layer's shape, while genbound draws
one pair per layer shape (docs/concepts.md, ``vera``), so layers of different shapes have unrelated
projections that peft's single shared pair cannot hold.

The trained head goes to ``modules_to_save``: for a model folder's own task model the whole ``classifier`` /
``score`` module (its untrained parts at their seeded values, so the export does not depend on how peft
initialises them), named as in the Hugging Face model, and every other module peft wraps with it (peft wraps
each module whose name ends with ``classifier`` or ``score``: DistilBERT's frozen ``pre_classifier`` is saved at
its values too, else peft cannot load the adapter), with ``task_type`` SEQ_CLS and
``base_model_name_or_path`` the folder; for ``minilm`` and ``mlp`` genbound's own model (module names as in
genbound, ``head``), which peft wraps as any torch module. GPT-2 Conv1D layers are written with
``fan_in_fan_out``. A causal language model (genbound.models.causal_lm) trains no head: its export has task_type
CAUSAL_LM and no ``modules_to_save``. adapter_config.json also records, under the key ``genbound`` (peft
ignores it), the method, rank, chain, alpha, the data-dependent parameter count D and the training data, so
that reading the export back
(genbound.sources.peft_import) keeps the method's identity and its D rather than calling it LoRA.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor

from ..checkpoints.checkpoint import load_checkpoint
from ..core.atomic import atomic_directory
from ..core.errors import GenboundError
from ..core.output import PEFT_EXPORT, check_replaceable, check_writable, replaceable, resolve_out, run_lock
from ..models.backbones import TaskClassifier
from ..models.causal_lm import is_causal_model

PEFT_PREFIX = "base_model.model."


def export_peft(checkpoint, out: str | Path, overwrite: bool = False, backbone: str | None = None,
                dataset: str | None = None) -> dict:
    """Write ``checkpoint`` (a path or a loaded genbound Checkpoint) as a peft adapter folder ``out``;
    returns the adapter config written. ``backbone`` / ``dataset``: where a moved run's model folder and data
    are now (checked by fingerprint, genbound.checkpoints.provenance); the adapter's base_model_name_or_path is then the
    model folder's new place."""
    from safetensors.torch import save_file

    ck = load_checkpoint(checkpoint, backbone, dataset)
    if not ck.method.adapter:
        raise GenboundError(f"{ck.path}: method {ck.meta.method} trains every weight, so it has no adapter to "
                            "export; export an adapter method's checkpoint")
    # One output policy with train (genbound.core.output): --overwrite replaces only an earlier genbound export,
    # never a user's folder or file, a device, the checkpoint itself or a folder holding it; one lock per OUT.
    out = resolve_out(out, option="--peft")
    check_writable(out, option="--peft")
    with run_lock(out):
        check_replaceable(out, overwrite, PEFT_EXPORT, sources=[ck.path])
        config, tensors = _adapter(ck)
        try:
            with atomic_directory(out, overwrite=overwrite, may_replace=replaceable(PEFT_EXPORT)) as tmp:
                save_file(tensors, str(Path(tmp) / "adapter_model.safetensors"), metadata={"format": "pt"})
                (Path(tmp) / "adapter_config.json").write_text(json.dumps(config, indent=2))
        except FileExistsError:
            raise GenboundError(f"{out} was filled by someone else while exporting and was kept as it is; choose "
                                "another --peft") from None
    return config


def _adapter(ck) -> tuple[dict, dict[str, Tensor]]:
    """The peft adapter config and tensors of loaded checkpoint ``ck``."""
    meta = ck.meta
    backbone = ck.load_backbone()
    pristine = ck.initial_model("cpu")
    causal = is_causal_model(pristine)  # a causal LM trains no head: nothing goes to modules_to_save
    task_model = isinstance(pristine, TaskClassifier) or causal
    model = ck.build_model("cpu")
    fifo = set(getattr(pristine, "fan_in_fan_out", []))
    adapted = [li.name for li in meta.layers]
    if fifo and any((n in fifo) != (adapted[0] in fifo) for n in adapted):
        raise GenboundError(f"{ck.path}: the adapted layers mix Conv1D and Linear modules, which one peft adapter "
                            "cannot hold (fan_in_fan_out is global); train on one kind of target")

    def peft_name(name: str) -> str:
        return name[len("backbone."):] if task_model and name.startswith("backbone.") else name

    tensors, ranks, alphas = _lora_tensors(ck, peft_name)
    if causal:
        saved, base_name, task_type = None, str(Path(backbone.folder).resolve()), "CAUSAL_LM"
    elif task_model:
        saved = _task_model_saved(model, tensors)
        base_name = str(Path(backbone.folder).resolve())
        # peft's SEQ_CLS wrapper calls forward with text inputs (input_ids=None, ...), which an image model's
        # modules may not take: an image classifier's adapter is peft's plain PeftModel, as peft saves one
        task_type = "SEQ_CLS" if backbone.task == "seq-cls" else None
    else:
        saved = ["head"]
        for k, v in model.head.state_dict().items():
            tensors[f"{PEFT_PREFIX}head.{k}"] = v.detach().to(torch.float32).contiguous()
        base_name, task_type = meta.backbone, None
    first = next(iter(ranks))
    R, lora_alpha = ranks[first], alphas[first]
    config = {
        "peft_type": "LORA", "task_type": task_type, "base_model_name_or_path": base_name,
        "r": R, "lora_alpha": lora_alpha, "lora_dropout": 0.0, "use_rslora": False,
        "use_dora": ck.method.factor.peft_dora, "fan_in_fan_out": bool(fifo), "bias": "none",
        "target_modules": sorted({peft_name(n) for n in adapted}), "modules_to_save": saved or None,
        "rank_pattern": {k: v for k, v in ranks.items() if v != R},
        "alpha_pattern": {k: v for k, v in alphas.items() if v != lora_alpha},
        "init_lora_weights": True,
        "inference_mode": True,
        "genbound": {
            "method": meta.method, "rank": meta.rank, "chain": meta.chain, "alpha": meta.alpha,
            "scale": float(meta.scale), "data_dependent": int(meta.params.get("data_dependent", 0)),
            "params": dict(meta.params), "backbone": meta.backbone, "fingerprint": meta.fingerprint,
            "dataset": meta.dataset, "n_train": meta.n_train, "split_seed": meta.split_seed,
            "split_digest": meta.split_digest, "seed": meta.seed, "paca_columns": meta.paca_columns,
            "genbound_names": task_model, "sources": meta.sources,
        },
    }
    return config, tensors


def _lora_tensors(ck, peft_name) -> tuple[dict[str, Tensor], dict[str, int], dict[str, float]]:
    """Every adapted layer's update as peft's LoRA factors (and DoRA magnitude), keyed by peft's names, with
    each layer's rank and alpha (alpha = scale * r, so that peft's alpha / r is the update's own scale)."""
    meta = ck.meta
    scale = float(meta.scale)
    tensors: dict[str, Tensor] = {}
    ranks: dict[str, int] = {}
    alphas: dict[str, float] = {}
    # DoRA (W = m (W0 + s B A) / ||W0 + s B A||_row) is peft's LoRA with use_dora: A, B and the magnitude m
    # as peft's lora_magnitude_vector, the same one-norm-per-output-row convention
    # (genbound.methods.factors.dora_weight).
    dora = ck.method.factor.peft_dora
    for name, u in ck.layer_updates().items():
        if dora:
            t = ck.layer_tensors(name)
            r = int(t["A"].shape[0])
            ranks[peft_name(name)], alphas[peft_name(name)] = r, scale * r
            for key, v in (("lora_A.weight", t["A"]), ("lora_B.weight", t["B"]),
                           ("lora_magnitude_vector", t["magnitude"])):
                tensors[f"{PEFT_PREFIX}{peft_name(name)}.{key}"] = v.detach().to(torch.float32).contiguous()
            continue
        if u.B is None or u.A is None:
            raise GenboundError(f"{ck.path}: method {meta.method}'s update of layer {name} is not a product B A "
                                "(it depends on W0 nonlinearly), so it has no LoRA form; export a factored method")
        # The update's own factor width and scale (PiSSA's dW = B A - B0 A0 has 2r columns).
        ranks[peft_name(name)] = int(u.B.shape[1])
        alphas[peft_name(name)] = float(u.scale) * int(u.B.shape[1])
        tensors[f"{PEFT_PREFIX}{peft_name(name)}.lora_A.weight"] = u.A.detach().to(torch.float32).contiguous()
        tensors[f"{PEFT_PREFIX}{peft_name(name)}.lora_B.weight"] = u.B.detach().to(torch.float32).contiguous()
    return tensors, ranks, alphas


def _task_model_saved(model, tensors: dict[str, Tensor]) -> list[str]:
    """A task model's modules_to_save, their tensors added to ``tensors``: peft's SEQ_CLS adapter wraps every
    module whose name ends with classifier or score (DistilBERT's pre_classifier too) and loads each one's
    tensors, so all are saved at their frozen values, plus the trained head's."""
    head_top = model.head_path.split(".")[0]
    ends = (head_top, "classifier", "score")
    wrapped = [n for n, _ in model.backbone.named_modules() if n and n.endswith(ends)]
    saved = sorted(n for n in wrapped if not any(n.startswith(p + ".") for p in wrapped))  # outermost ones
    for name in saved:
        for k, v in model.backbone.get_submodule(name).state_dict().items():
            tensors[f"{PEFT_PREFIX}{name}.{k}"] = v.detach().to(torch.float32).contiguous()
    for k, v in model.head.state_dict().items():
        tensors[f"{PEFT_PREFIX}{model.head_path}.{k}"] = v.detach().to(torch.float32).contiguous()
    return saved
