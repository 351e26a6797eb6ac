"""The architecture conformance matrix: which Hugging Face architectures genbound is proven on, and how.

Each architecture is one line of :data:`ARCHITECTURES`: a tiny randomly initialised model of it
(genbound.models.tinymodels, saved with ``save_pretrained``), the task kinds it is checked on, and any target modules
its default ones miss. tests/test_architectures.py runs every check of :data:`CHECKS` on every cell
(architecture x task kind), on genbound checkpoints trained with lora, cla and c3la and on a LoRA adapter
trained by peft itself; docs/architectures.md holds :func:`table_markdown`, the table of this matrix (a test
checks that the docs equal it). A check that cannot hold for a cell is declared in :data:`EXPECTED_FAILURES`
with its reason, and the test marks it ``xfail(strict=True)``: it must fail, and the table says why.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Task kinds: what a cell trains and evaluates.
TEXT = "text classification"  # an encoder's own sequence classifier, single texts
PAIRS = "sentence pairs"  # the same on (text, text) pairs: segment ids where the tokenizer gives them
CAUSAL = "causal LM"  # AutoModelForCausalLM, next-token loss
LAST_TOKEN = "sequence classification (last token)"  # a decoder's own classifier, pooled at the last token
IMAGE = "image classification"
TASK_KINDS = (TEXT, PAIRS, CAUSAL, LAST_TOKEN, IMAGE)

ENCODER = (TEXT, PAIRS)
DECODER = (CAUSAL, LAST_TOKEN)
VISION = (IMAGE,)

METHODS = ("lora", "cla", "c3la")  # trained in every cell; c3la is the chained method
# (check, source): source "ckpt" is a genbound checkpoint, "peft" a LoRA adapter trained with peft itself.
CHECKS = (
    ("train", "ckpt"),  # lora, cla and c3la train and write a checkpoint that loads
    ("evaluate", "ckpt"),  # logits = PeftModel's on the export fed the processor's output (1e-5), losses equal
    ("export", "ckpt"),  # export --peft loads in PeftModel with equal test loss
    ("spectra", "ckpt"),  # singular values = svdvals of peft's get_delta_weight
    ("bounds", "ckpt"),
    ("hessian", "ckpt"),  # --top-k 2
    ("landscape", "ckpt"),  # a 3 x 3 grid; its centre is the evaluated loss
    ("compare", "ckpt"),  # checkpoint vs peft adapter
    ("certify", "ckpt"),  # on a subspace run (train --subspace-dim)
    ("evaluate", "peft"),  # losses = PeftModel's fed the processor's output
    ("spectra", "peft"),
    ("bounds", "peft"),
    ("hessian", "peft"),
    ("landscape", "peft"),
    ("certify", "peft"),
)

PEFT_NOT_A_SUBSPACE_RUN = ("certify codes the d coordinates of a subspace run (genbound train --subspace-dim); a peft "
                           "adapter has none")


@dataclass(frozen=True)
class Architecture:
    name: str  # as the docs name it
    kind: str  # genbound.models.tinymodels kind
    tasks: tuple[str, ...]
    targets: tuple[str, ...] | None = None  # where the default targets (query and value projections) miss
    expected_failures: dict = field(default_factory=dict)  # (task, check, source) -> reason


ARCHITECTURES: tuple[Architecture, ...] = (
    Architecture("BERT", "bert", ENCODER),
    Architecture("RoBERTa", "roberta", ENCODER),
    Architecture("DistilBERT", "distilbert", ENCODER),
    Architecture("DeBERTa-v2", "deberta-v2", ENCODER),
    Architecture("ELECTRA", "electra", ENCODER),
    Architecture("GPT-2", "gpt2", DECODER),
    Architecture("GPT-NeoX", "gpt-neox", DECODER),
    Architecture("Llama", "llama", DECODER),
    Architecture("Qwen2", "qwen2", DECODER),
    Architecture("Mistral", "mistral", DECODER),
    Architecture("Gemma", "gemma", DECODER),
    Architecture("OPT", "opt", DECODER),
    Architecture("ViT", "vit", VISION),
    Architecture("Swin", "swin", VISION),
    Architecture("ConvNeXt", "convnext", VISION, targets=("pwconv1", "pwconv2"),
                 expected_failures={(VISION[0], "certify", "ckpt"): (
                     "the declared certificate grid (genbound/assets/certificate-grid.json) names no target list, so "
                     "a certified run adapts the query and value projections; ConvNeXt has none and trains with "
                     "--targets pwconv1 pwconv2, which the grid would have to declare first")}),
)


CAUSAL_NOT_CERTIFIED = ("the certificate bounds the 0-1 error of one label per example; a causal LM predicts every "
                        "token, and certify refuses it in one line")


def expected_failure(arch: Architecture, task: str, check: str, source: str) -> str | None:
    """Why (arch, task, check, source) is expected to fail, or None where it must pass."""
    if check == "certify" and source == "peft":
        return PEFT_NOT_A_SUBSPACE_RUN
    if check == "certify" and task == CAUSAL:
        return CAUSAL_NOT_CERTIFIED
    return arch.expected_failures.get((task, check, source))


def cells() -> list[tuple[Architecture, str]]:
    """Every (architecture, task kind) of the matrix, in table order."""
    return [(a, t) for a in ARCHITECTURES for t in a.tasks]


def table_markdown() -> str:
    """The supported-architecture table: one row per cell, one column per check (genbound checkpoint and peft
    adapter), ``pass`` or ``xfail`` with a numbered reason below the table."""
    head = ["architecture", "task"] + [f"{c}{' (peft)' if s == 'peft' else ''}" for c, s in CHECKS]
    rows, reasons = [], []
    for arch, task in cells():
        row = [arch.name, task]
        for check, source in CHECKS:
            why = expected_failure(arch, task, check, source)
            if why is None:
                row.append("pass")
                continue
            if why not in reasons:
                reasons.append(why)
            row.append(f"xfail [{reasons.index(why) + 1}]")
        rows.append(row)
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines.append("")
    lines += [f"[{i + 1}] {why}" + ("" if i == len(reasons) - 1 else "  ") for i, why in enumerate(reasons)]
    archs = len(ARCHITECTURES)
    kinds = len({t for _, t in cells()})
    lines += ["", f"{archs} architectures, {kinds} task kinds, {len(cells())} cells, {len(CHECKS)} checks each; "
              f"methods trained per cell: {', '.join(METHODS)}."]
    return "\n".join(lines) + "\n"
