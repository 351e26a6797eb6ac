"""``python -m analysis.claims``: run the claims (or only some cells) and write the report."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from genbound.core.atomic import write_json, write_text
from genbound.core.device import resolve_device
from genbound.core.errors import GenboundError
from genbound.core.render import print_json, to_jsonable

from ..sweep import add_executor_arguments, add_progress_arguments, executor_from_args
from .cells import CLAIMS_PRESETS, ClaimsPreset, check_cells, get_claims_preset, select_cells
from .gather import gather
from .report import Report, build_report


def run_claims(preset: str | ClaimsPreset, out: str | Path, device: str = "cpu", train: bool = True,
               doc: str | Path | None = None, command: str | None = None,
               progress: bool | None = None, executor=None) -> Report:
    """Train what is missing (on ``executor``, see :func:`gather`), then write ``<out>/paper-claims.md``,
    ``claims.json``, ``claims_{a,b,c}.tex`` and the figures (and, with ``doc``, the same Markdown at ``doc``
    with its figures in docs/images)."""
    t0 = time.perf_counter()
    preset = get_claims_preset(preset) if isinstance(preset, str) else preset
    check_cells(preset)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise GenboundError(f"--out {out} is a file; choose a directory")
    dev = str(resolve_device(device))
    g = gather(preset, out, dev, train=train, progress=progress, executor=executor)
    command = command or f"python -m analysis.claims --preset {preset.name} --out {out}"
    if doc is not None:
        doc = Path(doc)
        stem = doc.parent.parent / "images" / f"{doc.stem.replace('-', '_')}"
        ref = f"../images/{stem.name}"
    else:
        stem, ref = out / "figures" / "claims", "figures/claims"
    rep = build_report(preset, out, g, command, time.perf_counter() - t0, dev, stem, ref)
    if str(out.resolve()) != str(out):  # data files are recorded by absolute path; the report names --out
        rep.markdown = rep.markdown.replace(str(out.resolve()), str(out))
    write_text(out / "paper-claims.md", rep.markdown.replace(ref, "figures/claims") if doc else rep.markdown)
    write_json(out / "claims.json", to_jsonable(rep.summary))
    for k, t in rep.tex.items():
        write_text(out / f"claims_{k}.tex", t)
    if doc is not None:
        write_text(doc, rep.markdown)
        if stem.parent != out / "figures":
            import shutil

            for f in rep.figures:
                (out / "figures").mkdir(parents=True, exist_ok=True)
                shutil.copyfile(f, out / "figures" / f"claims{f.name[len(stem.name):]}")
    return rep


FINISHED = ("trained", "resumed", "skipped")


def run_cells(preset: str | ClaimsPreset, out: str | Path, cells: list[str], device: str = "cpu",
              progress: bool | None = None, executor=None) -> dict[str, Any]:
    """Train what is missing in ``cells`` of the preset and compute their runs' measures (:func:`gather` on
    those cells only), writing no report: a worker beside other processes that share ``out``. Returns the
    cells, the runs trained, each cell's finished / total runs and the seconds taken."""
    t0 = time.perf_counter()
    preset = get_claims_preset(preset) if isinstance(preset, str) else preset
    part = select_cells(preset, list(cells))
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise GenboundError(f"--out {out} is a file; choose a directory")
    g = gather(part, out, str(resolve_device(device)), train=True, progress=progress, executor=executor)
    done = {c: sum(1 for v in st.values() if v.split()[0] in FINISHED) for c, st in g.status.items()}
    return {"preset": preset.name, "cells": [c.name for c in part.cells], "trained": g.trained,
            "finished": done, "runs": {c: len(st) for c, st in g.status.items()}, "status": g.status,
            "seconds": time.perf_counter() - t0}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m analysis.claims",
        description="Train every method x seed x cell of a claims preset (resumable: finished runs are never "
                    "trained again; several processes may share --out), then test the paper's three claims and "
                    "write the report (Markdown, LaTeX tables, figures, JSON).")
    p.add_argument("--preset", default="tiny", help="; ".join(f"{k}: {v.description}" for k, v in
                                                            CLAIMS_PRESETS.items()) + " (default tiny)")
    p.add_argument("--out", required=True, help="run directory (created; reused to resume)")
    p.add_argument("--doc", default=None, help="also write the report here (e.g. docs/results/paper-claims.md), "
                   "its figures in the docs' images folder")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default cpu)")
    p.add_argument("--report-only", action="store_true", help="train nothing: the report from the finished runs")
    p.add_argument("--cells", nargs="+", metavar="NAME", default=None,
                   help="train and measure only these cells of the preset and write no report (a worker beside "
                        "others sharing --out); run again without it for the report")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")

    add_executor_arguments(p)
    add_progress_arguments(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv
    try:
        if args.cells is not None and (args.report_only or args.doc):
            raise GenboundError("--cells trains part of the preset and writes no report; drop "
                                + ("--report-only" if args.report_only else "--doc") + " or --cells")
        executor = executor_from_args(args, Path(args.out), need_package=not args.report_only)
        if args.cells is not None:
            res = run_cells(args.preset, args.out, args.cells, args.device, progress=args.progress,
                            executor=executor)
            if args.json:
                print_json(res)
            else:
                for c in res["cells"]:
                    print(f"{c}: {res['finished'][c]} / {res['runs'][c]} runs finished")
                print(f"trained {res['trained']} run(s) in {res['seconds']:.0f} s; for the report run the same "
                      "command without --cells")
            return 0
        rep = run_claims(args.preset, args.out, args.device, train=not args.report_only, doc=args.doc,
                         command="python -m analysis.claims " + " ".join(argv), progress=args.progress,
                         executor=executor)
    except GenboundError as exc:
        print(f"analysis.claims: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("analysis.claims: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    if args.json:
        print_json(rep.summary)
        return 0
    print(rep.markdown)
    return 0
