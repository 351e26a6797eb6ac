"""``genbound evaluate SOURCE``: train / validation / test loss and accuracy and the gap, for any source."""

from __future__ import annotations

from .common import add_device, add_dtype, add_json, format_table, print_json, resolve_device
from .dataopts import add_data_options, add_source_options, source_from_args

HELP = "loss, accuracy and gap G = L_test - L_train of a genbound checkpoint or a peft adapter"
DESCRIPTION = (
    "Evaluate SOURCE (a genbound checkpoint, or a peft LoRA adapter on its base model folder) in eval mode on "
    "the full train, validation and test splits: mean cross-entropy per sequence (one label per example), "
    "accuracy, and the empirical gap G = L_test - L_train. For a causal language model (--task causal-lm, or a "
    "peft adapter with task_type CAUSAL_LM) the loss is next-token cross-entropy and the accuracy next-token "
    "top-1, both means over the split's target tokens; N (what a bound counts) is the number of sequences. A "
    "checkpoint is evaluated on the data it recorded; a peft adapter, which records none, on --dataset (with "
    "its column options)."
)


def add_arguments(p) -> None:
    p.add_argument("source", help="a genbound checkpoint directory or a peft adapter directory")
    add_source_options(p)
    add_data_options(p)
    p.add_argument("--batch-size", type=int, default=64)
    add_device(p)
    add_dtype(p)
    add_json(p)


def run(args) -> int:
    from ..diagnostics.evaluate import evaluate_source

    src = source_from_args(args)
    report = evaluate_source(src, resolve_device(args.device), args.batch_size, base_dtype=args.dtype)
    if args.json:
        print_json(report)
        return 0
    causal = report["unit"] == "token"
    rows = [[s, report[f"{s}_loss"], report[f"{s}_accuracy"], report["sizes"][s]]
            + ([report["target_tokens"][s]] if causal else []) for s in ("train", "val", "test")]
    print(format_table(rows, ["split", "loss", "accuracy", "sequences" if causal else "examples"]
                       + (["target tokens"] if causal else [])))
    print(f"\ngap G = L_test - L_train = {report['gap']:.6g} (per {report['unit']}); source: {report['kind']} "
          f"{report['source']}, dataset {report['dataset']}, base weights {report['base_dtype']}")
    if causal:
        print(f"causal LM: {report['note']}")
    return 0
