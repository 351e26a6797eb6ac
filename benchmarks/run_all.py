"""Run every benchmark, then assemble docs/benchmarks.md from benchmarks/results/*.md.

    python benchmarks/run_all.py            # full runs (tens of minutes on 2 CPU cores)
    python benchmarks/run_all.py --quick    # smoke runs
    python benchmarks/run_all.py --collect  # only rebuild docs/benchmarks.md from the existing results

Each bench_<topic>.py compares genbound with its peer in the same run and writes its own section, with the
machine, the date and the command, to benchmarks/results/<topic>.md.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
ORDER = ["training", "spectra", "hessian", "landscape"]

HEADER = """# Benchmarks

Measured numbers only. Each section below was written by the script named in it, which compares genbound
with the peer library in the same run: pyhessian 0.1 for Hessian spectra, loss-landscapes 3.0.6 for
landscapes, and a dense SVD for update spectra. The sections also give the machine, the date and the exact
command. The development machines are shared by several processes, so absolute times drift; the ratios
against the peer, measured in one run, are what to read. Rebuild this page with
`python benchmarks/run_all.py` (all benchmarks) or `python benchmarks/run_all.py --collect` (this page only).

"""


def collect() -> Path:
    sys.path.insert(0, str(ROOT))
    from genbound.core.atomic import write_text

    parts = [HEADER]
    names = sorted(p.stem for p in RESULTS.glob("*.md"))
    for name in sorted(names, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n)):
        parts.append((RESULTS / f"{name}.md").read_text().strip() + "\n\n")
    out = ROOT / "docs" / "benchmarks.md"
    write_text(out, "".join(parts))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--collect", action="store_true")
    args = ap.parse_args()
    if not args.collect:
        for script in sorted((ROOT / "benchmarks").glob("bench_*.py")):
            cmd = [sys.executable, str(script)] + (["--quick"] if args.quick else [])
            print("+", " ".join(cmd), flush=True)
            subprocess.run(cmd, check=True)
    print(f"wrote {collect()}")


if __name__ == "__main__":
    main()
