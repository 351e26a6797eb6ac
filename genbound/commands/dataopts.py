"""CLI options that describe the researcher's own data file (``--dataset PATH``) and model folder."""

from __future__ import annotations

from ..core.argtypes import seed_arg
from ..core.errors import GenboundError


def column_list(text: str) -> list[str]:
    """An argparse type for ``--text-columns a[,b]``: one column or a pair."""
    cols = [c.strip() for c in str(text).split(",")]
    if not 1 <= len(cols) <= 2 or not all(cols):
        raise GenboundError(f"--text-columns takes one column or two separated by a comma, got '{text}'")
    return cols


def add_data_options(p) -> None:
    g = p.add_argument_group("data file options (--dataset PATH)")
    g.add_argument("--text-columns", type=column_list, default=None, metavar="A[,B]",
                   help="the text column, or two for a sentence pair (default: text)")
    g.add_argument("--label-column", default=None, help="the label column (default: label)")
    g.add_argument("--split-column", default=None,
                   help="column naming each row's split: train, validation (val, dev) or test; without it the "
                        "split is seeded by --split-seed (70/10/20)")


def data_options(args) -> dict:
    return {"text_columns": args.text_columns, "label_column": args.label_column, "split_column": args.split_column}


BACKBONE_HELP = ("peft adapters: the base model folder (default: the adapter's base_model_name_or_path when that is a "
                 "local folder); genbound checkpoints: where their model folder is now, if the run was moved "
                 "(accepted when its fingerprint is the recorded one)")
DATASET_HELP = ("peft adapters: the data to evaluate on (a registered name or a data file / folder); genbound "
                "checkpoints: where their data is now, if the run was moved (accepted when its fingerprint is the "
                "recorded one)")


def add_relocation_options(p, dataset: bool = True) -> None:
    """``--backbone`` / ``--dataset`` for commands that read a checkpoint without evaluating a peft adapter."""
    p.add_argument("--backbone", default=None, help=BACKBONE_HELP)
    if dataset:
        p.add_argument("--dataset", default=None, help=DATASET_HELP)


def add_source_options(p) -> None:
    """Options that turn a peft adapter into a full source (its base model folder, the data, the task) and point
    a moved genbound checkpoint at its model and data."""
    add_relocation_options(p)
    add_task_option(p)
    p.add_argument("--max-length", type=int, default=128, help="peft adapters: tokens per example (default 128)")
    p.add_argument("--split-seed", type=seed_arg, default=0, help="peft adapters: seed of a seeded split (default 0)")


def source_from_args(args, path: str | None = None):
    """A genbound checkpoint or a peft adapter (genbound.sources.peft_source) from the parsed options."""
    from ..sources.peft_source import DataChoice, load_source

    data = DataChoice(getattr(args, "dataset", None), getattr(args, "text_columns", None),
                      getattr(args, "label_column", None), getattr(args, "split_column", None),
                      getattr(args, "split_seed", 0), getattr(args, "max_length", 128))
    return load_source(path or args.source, getattr(args, "backbone", None), data, getattr(args, "task", None))


def data_choice(args):
    """The --dataset choice for peft adapters, or None when no dataset was given."""
    if not getattr(args, "dataset", None):
        return None
    from ..sources.peft_source import DataChoice

    return DataChoice(args.dataset, args.text_columns, args.label_column, args.split_column,
                      getattr(args, "split_seed", 0), getattr(args, "max_length", 128))


# genbound.sources.tasks.READ_TASKS, repeated so that --help does not import the sources layer (its JSON
# validation imports pydantic: two thirds of `genbound --help`); tests/test_startup.py checks the two agree.
READ_TASKS = ("seq-cls", "image-cls", "causal-lm", "pooled")


def add_task_option(parser) -> None:
    """``--task`` for a read-side command."""
    parser.add_argument("--task", choices=list(READ_TASKS), default=None,
                        help="the task the source is evaluated as: seq-cls, image-cls, causal-lm or pooled (default: "
                             "the checkpoint's, or a peft adapter's task_type, its saved classifier, else the base "
                             "model's config.json architectures)")
