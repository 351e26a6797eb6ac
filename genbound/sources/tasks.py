"""Which task a source is evaluated as: ``--task`` on the read-side commands, or what the source says.

The tasks are ``train``'s (:data:`genbound.models.backbones.TASKS`): ``seq-cls`` (the model's own sequence classifier),
``image-cls`` (its image classifier), ``causal-lm`` (next-token cross-entropy, genbound.models.causal_lm) and
``pooled`` (an encoder with genbound's mean pooling and head, how checkpoints before task models were trained).

A genbound checkpoint records the task it was trained for (``hyperparameters.task``; a registered backbone's
own task where it records none): ``--task`` may only confirm it. A peft adapter is evaluated as, in order:

1. ``--task`` when given;
2. its ``task_type`` (``CAUSAL_LM``: causal-lm; ``SEQ_CLS``: the base model's classifier);
3. a saved classifier (a ``classifier`` / ``score`` module in ``modules_to_save``): classification;
4. the base model's ``config.json``: ``architectures`` naming ``*ForCausalLM`` / ``*LMHeadModel`` give causal-lm,
   an image model image-cls, anything else seq-cls.

Each choice carries the reason it was made, so that data that does not fit the task (a label column missing
for a classifier) is reported with the task assumed and how to choose another.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..core.errors import CheckpointError, GenboundError
from ..core.validation import architectures

READ_TASKS = ("seq-cls", "image-cls", "causal-lm", "pooled")
CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")
HEAD_MODULES = ("classifier", "score")


def checkpoint_task(meta) -> str:
    """The task a genbound checkpoint was trained for (a registered backbone's own where none is recorded)."""
    from ..models.backbones import BACKBONES

    task = meta.hyperparameters.get("task")
    if task:
        return str(task)
    if meta.backbone in BACKBONES:
        try:
            return BACKBONES[meta.backbone]().task
        except GenboundError:
            return "pooled"
    return "pooled"  # a model folder trained before task models existed


def check_checkpoint_task(meta, where: Path | str, task: str) -> None:
    """Refuse ``--task`` other than the task a genbound checkpoint was trained for."""
    trained = checkpoint_task(meta)
    if task != trained:
        hint = f" (or pass --task {trained})" if trained in READ_TASKS else ""
        raise CheckpointError(f"{where} was trained as {trained}, so it cannot be evaluated as {task}; drop "
                              f"--task{hint}")


def _config(folder: Path | str | None) -> dict:
    if folder is None:
        return {}
    try:
        cfg = json.loads((Path(folder) / "config.json").read_text())
    except (OSError, ValueError, RecursionError):  # a deeply nested file: no task to read from it
        return {}
    return cfg if isinstance(cfg, dict) else {}


def peft_task(task_type: str | None, saved_modules: list[str], base_folder: Path | str | None,
              task: str | None = None) -> tuple[str | None, str]:
    """(task, why) for a peft adapter (module docstring); task None leaves classification to the base model's
    kind (image or text)."""
    if task is not None:
        return task, f"--task {task}"
    tt = str(task_type or "").upper()
    if tt == "CAUSAL_LM":
        return "causal-lm", "the adapter's task_type CAUSAL_LM"
    if tt == "SEQ_CLS":
        return None, "the adapter's task_type SEQ_CLS"
    if tt:
        raise GenboundError(f"the adapter's task_type {task_type} is not one genbound evaluates (CAUSAL_LM, SEQ_CLS "
                            "or none); pass --task seq-cls, image-cls or causal-lm")
    saved = [m for m in saved_modules if m.split(".")[0] in HEAD_MODULES]
    if saved:
        return None, f"the adapter records no task_type and saves a classifier ({saved[0]})"
    archs = architectures(_config(base_folder), Path(base_folder) / "config.json")
    if any(a.endswith(CAUSAL_SUFFIXES) for a in archs):
        return "causal-lm", f"the adapter records no task_type and the base model is a {archs[0]}"
    what = f"a {archs[0]}" if archs else "not a causal LM by its config.json"
    return None, f"the adapter records no task_type, saves no classifier and the base model is {what}"


TASK_WORDS = {"seq-cls": "a sequence classifier", "image-cls": "an image classifier",
              "causal-lm": "a causal language model", "pooled": "a mean-pooled encoder with a linear head"}


def task_hint(task: str, why: str) -> str:
    """What to say when data does not fit the task assumed: the task, why it was assumed, how to choose another."""
    other = {"seq-cls": "causal-lm", "causal-lm": "seq-cls", "image-cls": "seq-cls"}.get(task, "seq-cls")
    return (f"evaluated as {TASK_WORDS.get(task, task)} (task {task}: {why}); to evaluate it as "
            f"{TASK_WORDS[other]}, pass --task {other}")
