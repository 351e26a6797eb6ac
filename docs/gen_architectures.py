"""Write the supported-architecture table of docs/architectures.md from the matrix (genbound.models.architectures).

    python docs/gen_architectures.py            rewrite the table between the markers (atomically)
    python docs/gen_architectures.py --check    exit 1 if the table differs from the matrix

The table is ``genbound.models.architectures.table_markdown()``: one row per (architecture, task) cell, one column
per check, as tests/test_architectures.py runs them; that test fails when the committed table is stale.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "architectures.md"
BEGIN, END = "<!-- matrix:begin -->\n", "<!-- matrix:end -->"


def generate(current: str) -> str:
    """``current`` with the text between the markers replaced by the matrix's table."""
    sys.path.insert(0, str(ROOT))
    from genbound.models.architectures import table_markdown

    head, rest = current.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return head + BEGIN + table_markdown() + END + tail


def main(argv: list[str]) -> int:
    current = OUT.read_text(encoding="utf-8")
    new = generate(current)
    if "--check" in argv:
        return 0 if new == current else 1
    from genbound.core.atomic import atomic_file

    with atomic_file(OUT) as tmp:
        Path(tmp).write_text(new, encoding="utf-8")
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
