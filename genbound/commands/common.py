"""Helpers shared by the CLI commands: argument types, ``--json`` / ``--device``, and the render layer's
printers (genbound.core.render) under the names the commands use. Nothing here imports torch."""

from __future__ import annotations

from ..core.argtypes import size_arg
from ..core.errors import GenboundError
from ..core.render import print_json, to_jsonable
from ..core.render import text_table as format_table

__all__ = ["add_device", "add_dtype", "add_json", "add_max_memory", "add_shard_argument", "count_or_all",
           "format_table", "positive_int", "print_json", "resolve_device", "sample_count", "to_jsonable"]


def add_json(parser) -> None:
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON instead of a table")


def add_progress(parser) -> None:
    parser.add_argument("--no-progress", action="store_true",
                        help="hide progress bars and time estimates (they are hidden anyway when stderr is not a "
                             "terminal)")


def progress_of(args) -> bool | None:
    """None (bars on a terminal only) unless --no-progress."""
    return False if getattr(args, "no_progress", False) else None


def add_device(parser) -> None:
    parser.add_argument(
        "--device", default="auto", help="cpu, cuda, cuda:N, or auto (cuda when available; default)"
    )


# genbound.core.sharding.SHARD_CHOICES, written out here so the parser needs no torch (tests/test_startup.py
# checks that the two agree).
SHARD_CHOICES = ("none", "fsdp")


def add_shard_argument(parser) -> None:
    parser.add_argument("--shard", choices=SHARD_CHOICES, default="none",
                        help="under torchrun: fsdp shards the frozen base model over the processes "
                             "(torch FSDP2 fully_shard; docs/scale.md, 'Sharded models (FSDP)'); none (default) "
                             "keeps a whole copy in every process")
# The frozen base's precision (genbound.models.precision.BASE_DTYPES; listed here so the parser needs no torch,
# and checked against it by tests/test_startup.py).
BASE_DTYPES = ("float32", "bfloat16", "float16")


def add_dtype(parser) -> None:
    parser.add_argument(
        "--dtype", default="float32", choices=BASE_DTYPES,
        help="precision of the frozen base weights and of the products through them (mixed precision: the "
             "trained tensors, losses, gradients and the diagnostics' sums stay float32); default float32",
    )


def add_max_memory(parser) -> None:
    parser.add_argument(
        "--max-memory", type=size_arg, default=None, metavar="SIZE",
        help="memory budget (e.g. 2GiB) for the model, its activations and cached graphs: picks the batch of "
             "each forward and Hessian-vector product from a one-batch probe (results are unchanged: the sums "
             "over the data are exact in any chunking); default: no budget",
    )


def positive_int(text: str) -> int:
    """An argparse type: a positive integer, else a one-line error (exit code 2)."""
    try:
        v = int(text)
    except ValueError:
        raise GenboundError(f"expected a positive integer, got '{text}'") from None
    if v < 1:
        raise GenboundError(f"expected a positive integer, got {v}")
    return v


def count_or_all(text: str, option: str = "--samples") -> int | None:
    """A positive integer, or 'all' (None: no limit); else a one-line error naming ``option``."""
    if str(text).lower() == "all":
        return None
    try:
        return positive_int(text)
    except GenboundError:
        raise GenboundError(f"{option} must be a positive integer or 'all', got '{text}'") from None


def sample_count(text: str) -> int | None:
    """An argparse type for ``--samples``: a positive integer, or 'all' (None) for the whole split."""
    return count_or_all(text, "--samples")


def resolve_device(name: str | None):
    """``--device`` to a torch.device ('auto': CUDA when available); see genbound.core.device.resolve_device.
    Imported lazily so that building the parser (``genbound --help``) does not load torch."""
    from ..core.device import resolve_device as resolve

    return resolve(name)
