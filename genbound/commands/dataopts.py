"""CLI options that describe the researcher's own data file (``--dataset PATH``) and model folder."""

from __future__ import annotations

from ..errors import GenboundError


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
