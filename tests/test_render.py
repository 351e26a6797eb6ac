"""genbound.core.render: one layer for text, Markdown, LaTeX and JSON output, checked against independent parses."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch

from genbound.core.render import cell, json_text, latex_table, markdown_table, tex_escape, text_table, to_jsonable

ROWS = [["lora", 12345, 0.5, None], ["a|b_c", 7, float("nan"), "note with spaces"], ["x", -3, 1.5e-7, ""]]
HEADER = ["method", "D", "bound", "note"]


def test_cell_formats():
    assert cell(None) == "-" and cell(True) == "True" and cell(1234567) == "1,234,567"
    assert cell(0.123456) == "0.1235" and cell(2.5e6) == "2.500e+06" and cell(1.5e-7) == "1.500e-07"
    assert cell(0.0) == "0" and cell(float("nan")) == "nan" and cell(-math.inf) == "-inf"


def test_text_table_is_aligned_without_trailing_spaces():
    text = text_table(ROWS, HEADER)
    lines = text.splitlines()
    assert all(line == line.rstrip() for line in lines)
    assert lines[0].split() == HEADER and set(lines[1].replace(" ", "")) == {"-"}
    # numbers right-aligned: the D column's cells end in the same column, text starts in one
    d_ends = {lines[2].index("12,345") + 6, lines[3].index(" 7 ") + 2, lines[4].index("-3") + 2}
    assert len(d_ends) == 1
    assert "note with spaces" in lines[3] and "1.500e-07" in lines[4]


def _md_cells(line: str) -> list[str]:
    parts = re.split(r"(?<!\\)\|", line.strip())[1:-1]
    return [p.strip().replace("\\|", "|") for p in parts]


def test_markdown_table_round_trips():
    text = markdown_table(ROWS, HEADER)
    lines = text.splitlines()
    assert _md_cells(lines[0]) == HEADER
    assert re.fullmatch(r"\|(:?-+:?\|)+", lines[1].replace(" ", ""))
    assert [_md_cells(x) for x in lines[2:]] == [[v if isinstance(v, str) else cell(v) for v in r] for r in ROWS]


def _tex_unescape(s: str) -> str:
    table = {r"\textbackslash{}": "\\", r"\^{}": "^", r"\~{}": "~", r"\_": "_", r"\%": "%", r"\&": "&",
             r"\#": "#", r"\$": "$", r"\{": "{", r"\}": "}"}
    out, i = [], 0
    while i < len(s):
        for k, v in table.items():
            if s.startswith(k, i):
                out.append(v)
                i += len(k)
                break
        else:
            out.append(s[i])
            i += 1
    return "".join(out)


@pytest.mark.parametrize("text", ["a_b", "50% & more", r"\alpha{x}", "#1 $5 ^ ~", r"\\{}"])
def test_tex_escape_inverts(text):
    escaped = tex_escape(text)
    assert _tex_unescape(escaped) == text
    # no special character is left bare
    bare = re.sub(r"\\textbackslash\{\}|\\\^\{\}|\\~\{\}|\\[_%&#${}]", "", escaped)
    assert not set(bare) & set("\\_%&#${}^~")


def test_latex_table_is_booktabs_with_groups():
    tex = latex_table(ROWS, HEADER, rules_before=[2], caption="c", label="tab:x", float_env=True)
    lines = tex.splitlines()
    assert lines[0] == r"\begin{table}[t]" and r"\begin{tabular}{lrrl}" in lines
    assert lines.count(r"\midrule") == 2 and r"\toprule" in lines and r"\bottomrule" in lines
    body = [x for x in lines if x.endswith(r"\\")]
    assert len(body) == 1 + len(ROWS) and all(x.count(" & ") == 3 for x in body)
    assert r"a\|b\_c" not in tex and r"a|b\_c" in tex and r"\label{tab:x}" in tex


def test_json_is_strict():
    obj = {"t": torch.tensor([1.0, float("inf")]), "x": float("nan"), "n": [1, (2, 3)]}
    assert to_jsonable(obj) == {"t": [1.0, None], "x": None, "n": [1, [2, 3]]}
    assert json.loads(json_text(obj)) == {"t": [1.0, None], "x": None, "n": [1, [2, 3]]}


def test_compare_text_is_narrow_aligned_and_keeps_every_note():
    from genbound.report.compare import CompareReport, Row, to_text

    long = "vacuous: 26.46 >= 3.21888, the largest possible gap of the clipped loss; " * 3
    rows = [Row("fit", "train loss", 1.98, 1.984, "a", ""), Row("fit", "gap", -0.02621, -0.02643, "b", "short"),
            Row("bounds", "Theorem 1 bound", 26.46, 35.08, "a", long.strip()),
            Row("bounds", "Table 1", 6.56, 5.429, "b", "short")]
    text = to_text(CompareReport("runs/a", "runs/b", ["lora", "cla"], rows, ["run note"]))
    lines = text.splitlines()
    assert all(line == line.rstrip() for line in lines) and max(map(len, lines)) <= 100
    table = [line for line in lines if line.startswith(("fit", "bounds", " "))][:4]
    # B's digits end in one column whether or not the value carries the '*' mark
    b_ends = {len(line.split("  [")[0].rstrip(" *")) for line in table}
    assert len(b_ends) == 1, (b_ends, table)
    notes = " ".join(line.strip() for line in lines if not line.startswith(("fit", "bounds", "section", "-")))
    assert "[1] short" in notes and long.strip() in notes.replace("  ", " ") and "note: run note" in notes
    assert text.count("[1]") == 3  # the same note is one footnote, cited by both rows
