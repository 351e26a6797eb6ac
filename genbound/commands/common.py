"""Helpers shared by the CLI commands: output formats and device choice."""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from pathlib import Path
from typing import Any

import torch

from ..errors import GenboundError


def add_json(parser) -> None:
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON instead of a table")


def add_device(parser) -> None:
    parser.add_argument(
        "--device", default="auto", help="cpu, cuda, cuda:N, or auto (cuda when available; default)"
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


def resolve_device(name: str | None) -> torch.device:
    """'auto' picks CUDA when available; an unavailable CUDA is a clear error, not a crash."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError) as exc:
        raise GenboundError(f"unknown device '{name}'; use cpu, cuda, cuda:N or auto") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise GenboundError(f"device '{name}' asked for but CUDA is not available here; use --device cpu")
    return dev


def to_jsonable(obj: Any) -> Any:
    """Dataclasses, tensors, paths and numpy scalars to plain JSON types; non-finite floats to None."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return to_jsonable(obj.detach().cpu().tolist())
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalar
        return to_jsonable(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def print_json(obj: Any) -> None:
    json.dump(to_jsonable(obj), sys.stdout, indent=2, allow_nan=False)
    sys.stdout.write("\n")


def format_table(rows: list[list[Any]], header: list[str]) -> str:
    """A plain aligned text table."""

    def cell(v: Any) -> str:
        if isinstance(v, float):
            if v != v:
                return "nan"
            return f"{v:.4g}" if abs(v) < 1e5 else f"{v:.3e}"
        return "-" if v is None else str(v)

    body = [[cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in body)) if body else len(h) for i, h in enumerate(header)]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths))
    rule = "  ".join("-" * w for w in widths)
    out = [line, rule] + ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in body]
    return "\n".join(out)
