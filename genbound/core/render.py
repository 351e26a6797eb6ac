"""One render layer for every table genbound prints or writes: plain text, Markdown, LaTeX (booktabs) and JSON.

The compare report (genbound.report.compare), the bounds report (genbound.bounds.report), the CLI commands and the
paper tables (analysis/tables.py) all go through these functions, so a number looks the same wherever it
appears and every format escapes what it must.

* :func:`cell` turns one value into its text: ``None`` is "-", floats get 4 significant digits (scientific
  outside [1e-3, 1e5)), integers get thousands separators.
* :func:`text_table` (tabulate's ``simple`` layout: no trailing spaces, numbers right-aligned),
  :func:`markdown_table` (pipe tables, ``|`` escaped) and :func:`latex_table` (booktabs; LaTeX special
  characters escaped unless the caller passes cells that are already LaTeX) take the same rows and header
  (tabulate's order).
* :func:`to_jsonable` / :func:`json_text` / :func:`print_json`: strict JSON (non-finite floats become null).

tabulate lays out text and Markdown; LaTeX is written here because tabulate's booktabs layout escapes every
cell, and the paper tables need math (``$\\pm$``) in theirs. This module does not import torch: the CLI
imports it to print ``--help`` (a tensor can only reach :func:`to_jsonable` once torch is loaded).
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

__all__ = ["cell", "is_number", "json_text", "latex_table", "markdown_table", "md_escape", "print_json",
           "tex_escape", "text_table", "to_jsonable"]


def cell(v: Any, digits: int = 4) -> str:
    """The text of one table cell: "-" for None, "nan" / "inf" / "-inf" for non-finite floats, ``digits``
    significant digits (scientific below 1e-3 or from 1e5 on), integers with thousands separators."""
    if v is None:
        return "-"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
            return f"{v:.{max(1, digits - 1)}e}"
        return f"{v:.{digits}g}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def is_number(v: Any) -> bool:
    """True for ints and floats (not bools): the columns :func:`text_table` right-aligns by default."""
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _aligns(rows: Sequence[Sequence[Any]], n: int, align: Sequence[str] | None) -> list[str]:
    if align is not None:
        if len(align) != n:
            raise ValueError(f"align has {len(align)} entries for {n} columns")
        return ["right" if a in ("r", "right") else "left" for a in align]
    out = []
    for i in range(n):
        values = [r[i] for r in rows if i < len(r) and r[i] is not None]
        out.append("right" if values and all(is_number(v) for v in values) else "left")
    return out


def _cells(rows: Sequence[Sequence[Any]], n: int) -> list[list[str]]:
    return [[v if isinstance(v, str) else cell(v) for v in list(r) + [None] * (n - len(r))] for r in rows]


def text_table(rows: Sequence[Sequence[Any]], header: Sequence[str], align: Sequence[str] | None = None) -> str:
    """An aligned plain-text table with a dashed rule under the header; no line ends in a space.

    ``align`` gives "l" or "r" per column; by default a column of numbers is right-aligned, anything else
    left-aligned. Cells that are strings are printed as they are (pre-formatted), others through :func:`cell`.
    """
    from tabulate import tabulate  # here, not at the top: the CLI's --help imports this module

    n = len(header)
    # preserve_whitespace: a caller may pad a cell on purpose (compare pads unmarked values where others
    # carry " *", so that the digits of a right-aligned column stay aligned).
    text = tabulate(_cells(rows, n), headers=list(header), tablefmt="simple", disable_numparse=True,
                    colalign=_aligns(rows, n, align), preserve_whitespace=True)
    return "\n".join(line.rstrip() for line in text.splitlines())


def md_escape(s: str) -> str:
    """A string safe inside a Markdown table cell: ``|`` escaped, line breaks folded to spaces."""
    return str(s).replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: Sequence[Sequence[Any]], header: Sequence[str], align: Sequence[str] | None = None) -> str:
    """A Markdown (pipe) table; ``|`` in cells is escaped. Alignment as in :func:`text_table`."""
    from tabulate import tabulate

    n = len(header)
    body = [[md_escape(c) for c in r] for r in _cells(rows, n)]
    text = tabulate(body, headers=[md_escape(h) for h in header], tablefmt="pipe", disable_numparse=True,
                    colalign=_aligns(rows, n, align))
    return "\n".join(line.rstrip() for line in text.splitlines())


_TEX = (("\\", r"\textbackslash{}"), ("_", r"\_"), ("%", r"\%"), ("&", r"\&"), ("#", r"\#"), ("$", r"\$"),
        ("{", r"\{"), ("}", r"\}"), ("^", r"\^{}"), ("~", r"\~{}"))


def tex_escape(s: str) -> str:
    """Plain text made safe for LaTeX: the ten special characters escaped (backslash first)."""
    s = str(s)
    out = []
    for ch in s:
        for k, v in _TEX:
            if ch == k:
                out.append(v)
                break
        else:
            out.append(ch)
    return "".join(out)


def latex_table(rows: Sequence[Sequence[Any]], header: Sequence[str], colspec: str | None = None, *,
                escape: bool = True, rules_before: Sequence[int] = (), caption: str | None = None,
                label: str | None = None, float_env: bool = False, small: bool = False) -> str:
    """A booktabs tabular (\\toprule, \\midrule, \\bottomrule).

    ``escape`` escapes header and cells as plain text; pass ``escape=False`` when they already are LaTeX
    (math, \\checkmark). ``rules_before`` lists row indices that start a new group (a \\midrule above them).
    ``float_env`` wraps the tabular in a ``table`` environment with ``caption`` and ``label``.
    """
    n = len(header)
    body = _cells(rows, n)
    if escape:
        header = [tex_escape(h) for h in header]
        body = [[tex_escape(c) for c in r] for r in body]
    if colspec is None:
        colspec = "".join("r" if a == "right" else "l" for a in _aligns(rows, n, None))
    out = []
    if float_env:
        out += [r"\begin{table}[t]", r"\centering"] + ([r"\small"] if small else [])
    out += [rf"\begin{{tabular}}{{{colspec}}}", r"\toprule", " & ".join(header) + r" \\", r"\midrule"]
    starts = set(rules_before)
    for i, r in enumerate(body):
        if i in starts and i > 0:
            out.append(r"\midrule")
        out.append(" & ".join(r) + r" \\")
    out += [r"\bottomrule", r"\end{tabular}"]
    if float_env:
        if caption is not None:
            out.append(rf"\caption{{{caption}}}")
        if label is not None:
            out.append(rf"\label{{{label}}}")
        out.append(r"\end{table}")
    return "\n".join(out) + "\n"


def to_jsonable(obj: Any) -> Any:
    """Dataclasses, tensors, paths and numpy scalars to plain JSON types; non-finite floats to None."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    torch = sys.modules.get("torch")  # a tensor exists only if torch is loaded; never import it here
    if torch is not None and isinstance(obj, torch.Tensor):
        return to_jsonable(obj.detach().cpu().tolist())
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalar
        return to_jsonable(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def json_text(obj: Any, indent: int | None = 2) -> str:
    """Strict JSON text of ``obj`` (after :func:`to_jsonable`; NaN and infinities are null)."""
    return json.dumps(to_jsonable(obj), indent=indent, allow_nan=False)


def print_json(obj: Any, file: IO[str] | None = None) -> None:
    """Write :func:`json_text` and a newline to ``file`` (stdout by default)."""
    out = sys.stdout if file is None else file
    out.write(json_text(obj))
    out.write("\n")
