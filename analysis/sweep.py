"""The analysis sweep: every method over seeds on one configuration, then the paper's tables and answer.

    python -m analysis.sweep --preset mlp --seeds 0 1 --out runs/sweep
    python -m analysis.sweep --preset paper-minilm --seeds 0 1 2 --out runs/paper --device cuda --compression
    python -m analysis.sweep --preset paper-minilm --out runs/paper --executor ray --address auto --gpus-per-run 1
    python -m analysis.sweep --preset paper-minilm --out runs/paper --executor submitit --partition gpu --gpus-per-run 1

``--executor`` says where the runs are trained (analysis.executors, docs/scale.md): this process (local, the
default), one Ray task per run, or one Slurm job array through submitit; the tables are computed here from the
checkpoints on disk, the same whichever executor trained them.

Layout of ``--out``::

    runs/<method>-s<seed>/      one genbound checkpoint per run (written atomically by genbound.training.train)
    runs/.<name>.sweep.lock     held while a process works on that run (see analysis.locks)
    runs/.<name>.state          a killed run's training state (genbound.training.train resumes it)
    derived/<name>.json         the bounds computed for a checkpoint (reused while the checkpoint is unchanged)
    tables.md, results.tex, bounds.tex, kendall.tex, summary.md, summary.json, figures/*.pdf|png

Resumable: a run whose directory holds a checkpoint whose recorded hyperparameters equal the run's
configuration is not trained again (a different configuration is an error unless ``--overwrite``); a run
killed part-way continues from its saved state. Several processes may work on one ``--out`` at once: each
run is claimed with a lock file, runs held by another live process are waited for (``--no-wait`` leaves them
out), and a dead process's lock is taken over.

Then, over the finished runs: accuracy and the empirical gaps (test - train cross-entropy; test - train
error), the Table 1 bound with and without the head, optionally the Occam compression bound
(``--compression``) and Theorem 1 (``--theorem1``, mlp only), each as mean ± std over seeds with n, in Markdown
and LaTeX (booktabs); the figures bound-against-gap and accuracy per method; and Kendall's tau-b (with its
p-value) between each bound's ordering of the methods and the measured gaps (analysis.tables).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from genbound.bounds.mi import method_bound
from genbound.bounds.report import config_from_meta, report_for_checkpoint
from genbound.checkpoints.checkpoint import META_FILE, TENSOR_FILE, load_meta
from genbound.core.atomic import write_json, write_text
from genbound.core.device import resolve_device
from genbound.core.errors import GenboundError
from genbound.core.render import print_json, to_jsonable
from genbound.diagnostics.evaluate import evaluate_source
from genbound.methods.catalogue import METHODS, get_method

from . import tables as T
from .executors import LocalExecutor, make_executor, require
from .presets import PRESETS, Preset, get_preset, train_config, with_budget
from .runs import EXECUTORS, RunSpec, finished_run

# The run machinery lives in analysis.runs (below this module and analysis.executors); its names stay
# importable from analysis.sweep, where callers and the README have always found them.
from .runs import _SplitCache as _SplitCache  # noqa: F401
from .runs import config_mismatch as config_mismatch  # noqa: F401
from .runs import run_one as run_one  # noqa: F401
from .runs import train_runs as train_runs  # noqa: F401
from .tables import BOUNDS, RunRecord, correlation_table, headline, results_table, summary_dict


@dataclass
class SweepResult:
    """What a sweep did and found: its runs, the per-method rows, the correlations and the files written."""

    preset: Preset
    seeds: list[int]
    methods: list[str]
    out: Path
    records: list[RunRecord]
    rows: list = field(default_factory=list)  # analysis.tables.MethodRow
    correlations: list = field(default_factory=list)  # analysis.tables.Correlation
    files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"preset": self.preset.to_dict(), "seeds": self.seeds, "methods": self.methods, "out": str(self.out),
                **summary_dict(self.rows, self.correlations), "runs": [asdict(r) for r in self.records],
                "notes": self.notes, "files": [str(p) for p in self.files]}


def plan(preset: Preset, methods: list[str], seeds: list[int], out: str | Path, device: str = "cpu",
         progress: bool | None = False) -> list[RunSpec]:
    """One RunSpec per (method, seed), in method-major order."""
    runs = Path(out) / "runs"
    specs = []
    for m in methods:
        for s in seeds:
            name = f"{m}-s{s}"
            specs.append(RunSpec(m, int(s), name, runs / name, train_config(preset, m, s, device, progress)))
    return specs


def checkpoint_bounds(path: str | Path, compression: bool = False, theorem1: bool = False,
                      device: str = "cpu", seed: int = 0) -> tuple[dict[str, float | None], dict[str, bool]]:
    """The bounds of one checkpoint: Table 1 with and without the head (sigma = 1/2 for the 0-1 loss, q from
    the stored dtype), the trainable count, and on request the Occam bound and Theorem 1 (mlp only)."""
    meta = load_meta(path)
    cfg = config_from_meta(meta, source=str(path))
    method = get_method(meta.method)
    values: dict[str, float | None] = {}
    vacuous: dict[str, bool] = {}
    for key, head in (("mi", True), ("mi_paper", False)):
        row = method_bound(method, cfg, include_head=head)
        values[key], vacuous[key] = row.value, row.vacuous
    values["trainable"] = float(meta.params.get("trainable")) if meta.params.get("trainable") is not None else None
    want_t1 = theorem1 and meta.backbone == "mlp"
    if compression or want_t1:
        rep = report_for_checkpoint(path, theorem=want_t1, compression=compression, device=device, seed=seed,
                                    progress=False)
        if compression and rep.compression is not None:
            values["compression"], vacuous["compression"] = rep.compression.bound, rep.compression.vacuous
        if want_t1 and rep.theorem1 is not None and rep.theorem1.applicable:
            values["theorem1"], vacuous["theorem1"] = rep.theorem1.bound, rep.theorem1.vacuous
    return values, vacuous


def read_cache(cache: Path, key: dict[str, Any], *fields: str) -> dict[str, Any] | None:
    """The record ``{"key": key, field: ...}`` that a derived-result cache holds for ``key``, or None when the file is
    missing, unreadable (invalid UTF-8, deep nesting), written for another key or lacks one of ``fields`` as a JSON
    object (then the result is computed again). A folder in the cache file's place is refused in one line, since
    the result could not be written there either."""
    if cache.is_dir():
        raise GenboundError(f"the cache file {cache} is a folder; remove it so that the result can be cached")
    try:
        data = json.loads(cache.read_bytes().decode("utf-8"))
    except (OSError, ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return None
    if not isinstance(data, dict) or data.get("key") != key or any(not isinstance(data.get(f), dict) for f in fields):
        return None
    return data


def _meta_digest(path: Path) -> str:
    h = hashlib.sha256((path / META_FILE).read_bytes())
    st = (path / TENSOR_FILE).stat()
    h.update(f"{st.st_size}".encode())
    return h.hexdigest()


def cached_bounds(spec: RunSpec, out: Path, compression: bool, theorem1: bool, device: str
                  ) -> tuple[dict[str, float | None], dict[str, bool]]:
    """:func:`checkpoint_bounds`, cached in ``derived/<name>.json`` while the checkpoint and options are the
    same (the compression bound takes seconds to minutes per checkpoint)."""
    cache = out / "derived" / f"{spec.name}.json"
    key = {"checkpoint": _meta_digest(spec.path), "compression": compression, "theorem1": theorem1, "seed": 0}
    if (data := read_cache(cache, key, "bounds", "vacuous")) is not None:
        return data["bounds"], data["vacuous"]
    values, vacuous = checkpoint_bounds(spec.path, compression, theorem1, device)
    write_json(cache, {"key": key, "bounds": values, "vacuous": vacuous})
    return values, vacuous


def cached_results(spec: RunSpec, out: Path, device: str) -> dict[str, Any]:
    """The fit and gap of a run trained with ``--no-final-eval`` (whose checkpoint records none), measured by
    genbound.diagnostics.evaluate.evaluate_source and cached in ``derived/<name>.fit.json`` while the checkpoint
    is the same."""
    cache = out / "derived" / f"{spec.name}.fit.json"
    key = {"checkpoint": _meta_digest(spec.path)}
    if (data := read_cache(cache, key, "results")) is not None:
        return data["results"]
    rep = evaluate_source(spec.path, resolve_device(device))
    results = {k: v for k, v in rep.items() if k.endswith(("_loss", "_accuracy")) or k in ("gap", "gap_01")}
    write_json(cache, {"key": key, "results": results})
    return results


def collect(specs: list[RunSpec], status: dict[str, str], out: Path, compression: bool = False,
            theorem1: bool = False, device: str = "cpu", progress: bool | None = None) -> list[RunRecord]:
    """A RunRecord per run: measured values from the checkpoint, bounds computed (or read from the cache)."""
    from tqdm.auto import tqdm

    records = []
    for spec in tqdm(specs, desc="bounds", unit="run", disable=None if progress is None else not progress):
        st = status.get(spec.name)
        done, mismatch = finished_run(spec)
        if st is None:
            st = "skipped" if done and mismatch is None else "missing"
        rec = RunRecord(spec.method, spec.seed, spec.name, str(spec.path), st.split()[0].rstrip(":"))
        if st.startswith(("failed", "locked")):
            rec.error = st
        if rec.finished and not (done and mismatch is None):
            rec.status, rec.error = "missing", f"no matching checkpoint at {spec.path}"
        if rec.finished:
            meta = load_meta(spec.path)
            results = meta.results if meta.final_eval else cached_results(spec, out, device)
            rec.results = {k: v for k, v in results.items() if isinstance(v, (int, float))}
            rec.params = {k: int(v) for k, v in meta.params.items() if isinstance(v, (int, float))}
            rec.train_seconds = meta.metrics.get("train_seconds")
            rec.bounds, rec.vacuous = cached_bounds(spec, out, compression, theorem1, device)
        records.append(rec)
    return records


# -- the whole sweep --------------------------------------------------------------------------------------


def run_sweep(preset: str | Preset, seeds: list[int], out: str | Path, methods: list[str] | None = None,
              device: str = "auto", steps: int | None = None, epochs: int | None = None,
              compression: bool = False, theorem1: bool = False, train: bool = True, overwrite: bool = False,
              wait: bool = True, wait_timeout: float | None = None, progress: bool | None = None,
              figures: bool = True, executor=None, backbone: str | None = None,
              dataset: str | None = None) -> SweepResult:
    """Train (unless ``train=False``) every (method, seed) of ``preset`` into ``out``, then write the tables,
    figures and summary there. Returns the :class:`SweepResult`.

    ``executor`` (analysis.executors: local, Ray or submitit) is where the runs are trained; None is this
    process (``wait`` / ``wait_timeout`` apply to it). Bounds and tables are computed here from the
    checkpoints on disk whichever executor trained them. With a cluster executor ``device="auto"`` means
    cuda when it requests GPUs per run and cpu otherwise (this machine's devices say nothing of the workers').
    ``backbone`` / ``dataset`` replace the preset's (a registry name, a model folder, a data file): one sweep
    directory per (model, dataset) cell of a grid (docs/scale.md).
    """

    preset = get_preset(preset) if isinstance(preset, str) else preset
    preset = with_budget(preset, steps, epochs)
    if backbone is not None or dataset is not None:
        from dataclasses import replace

        preset = replace(preset, backbone=backbone or preset.backbone, dataset=dataset or preset.dataset)
    methods = list(METHODS) if not methods or methods == ["all"] else [get_method(m).name for m in methods]
    if len(set(methods)) != len(methods):
        raise GenboundError(f"--methods lists a method twice: {' '.join(methods)}")
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise GenboundError("no seeds given; pass --seeds 0 1 2")
    if len(set(seeds)) != len(seeds):
        raise GenboundError(f"--seeds lists a seed twice: {' '.join(map(str, seeds))}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise GenboundError(f"--out {out} is a file; choose a directory")
    if executor is None:
        executor = LocalExecutor(wait=wait, wait_timeout=wait_timeout)
    if executor.name != "local" and device == "auto":
        dev = "cuda" if executor.gpus_per_run else "cpu"
    else:
        dev = str(resolve_device(device))
    specs = plan(preset, methods, seeds, out, dev, progress=False)
    status = executor.run(specs, overwrite=overwrite, progress=progress) if train else {}
    records = collect(specs, status, out, compression, theorem1, dev, progress)
    rows = T.aggregate(records, methods)
    corrs = T.correlations(rows)
    notes = _notes(preset, records, rows, compression, theorem1)
    result = SweepResult(preset, seeds, methods, out, records, rows, corrs, notes=notes)
    files = T.write_tables(rows, corrs, out)
    if figures:
        files += T.write_figures(rows, out / "figures")
    context = [f"preset `{preset.name}`: {preset.description}"
               + (f" (backbone {preset.backbone}, dataset {preset.dataset} in its place)" if backbone or dataset
                  else ""),
               f"methods: {', '.join(methods)}; seeds: {', '.join(map(str, seeds))}; device {dev}; "
               f"executor {executor.name}",
               f"runs: {sum(r.finished for r in records)} of {len(records)} finished "
               f"({', '.join(f'{k} {v}' for k, v in _count(records).items())})"]
    files.append(out / "summary.md")
    files.append(out / "summary.json")
    result.files = files
    write_text(out / "summary.md", T.summary_markdown("Sweep summary", context, rows, corrs, notes))
    write_json(out / "summary.json", to_jsonable(result.to_dict()))
    return result


def _count(records: list[RunRecord]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in records:
        counts[r.status] = counts.get(r.status, 0) + 1
    return counts


def _notes(preset: Preset, records: list[RunRecord], rows: list, compression: bool, theorem1: bool) -> list[str]:
    notes = []
    for r in records:
        if not r.finished:
            notes.append(f"{r.name}: {r.status}" + (f" ({r.error})" if r.error else "") + "; left out of the tables")
    n = sorted({row.n for row in rows})
    if n and max(n) < 2:
        notes.append("one seed per method: no spread over seeds (std needs n >= 2)")
    elif n and max(n) < 5:
        notes.append(f"{max(n)} seeds per method: the standard deviations are rough")
    notes.append("Table 1 bounds are vacuous whenever they reach 2 sigma = 1 (the largest possible 0-1 gap); "
                 "they depend only on the configuration, so they do not vary over seeds")
    if theorem1 and preset.backbone != "mlp":
        notes.append("Theorem 1 was asked for but does not apply to a transformer backbone (see genbound bounds)")
    if not compression:
        notes.append("the Occam compression bound was not computed (pass --compression)")
    return notes


# -- command line ---------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m analysis.sweep",
        description="Train every method over seeds on a preset configuration (resumable; several processes may "
                    "share --out), then write paper-style tables (Markdown, LaTeX), figures and the Kendall tau "
                    "between each bound's ordering of the methods and the measured gaps.")
    p.add_argument("--preset", default="paper-minilm",
                   help="; ".join(f"{k}: {v.description}" for k, v in PRESETS.items()) + " (default paper-minilm)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="run seeds (default 0 1 2)")
    p.add_argument("--out", required=True, help="sweep directory (created; reused to resume)")
    p.add_argument("--methods", nargs="+", default=None, help="methods to train (default: all eleven)")
    p.add_argument("--backbone", default=None,
                   help="replace the preset's backbone: a registry name or a local Hugging Face model folder")
    p.add_argument("--dataset", default=None,
                   help="replace the preset's dataset: a registry name or a data file / folder")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--steps", type=int, default=None, help="override the preset's budget with N steps")
    budget.add_argument("--epochs", type=int, default=None, help="override the preset's budget with N epochs")
    p.add_argument("--compression", action="store_true", help="also compute the Occam compression bound per run")
    p.add_argument("--theorem1", action="store_true", help="also compute Theorem 1's bound (mlp backbone only)")
    p.add_argument("--tables-only", action="store_true", help="train nothing: tables from the finished runs")
    p.add_argument("--overwrite", action="store_true",
                   help="retrain runs whose checkpoint was made with another configuration")
    p.add_argument("--no-wait", action="store_true",
                   help="leave out runs that another live process is training instead of waiting for them")
    p.add_argument("--wait-timeout", type=float, default=None, help="stop waiting for other processes after S s")
    p.add_argument("--no-figures", action="store_true", help="write the tables and summary but no figures")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_executor_arguments(p)
    add_progress_arguments(p)
    return p


def add_progress_arguments(p: argparse.ArgumentParser) -> None:
    """``--progress`` / ``--no-progress`` into ``args.progress`` (None: tqdm decides from the terminal)."""
    prog = p.add_mutually_exclusive_group()
    prog.add_argument("--progress", dest="progress", action="store_true", default=None, help="always show tqdm")
    prog.add_argument("--no-progress", dest="progress", action="store_false", help="never show tqdm")


def add_executor_arguments(p: argparse.ArgumentParser) -> None:
    """The ``--executor`` options (shared by analysis.sweep and analysis.claims)."""
    c = p.add_argument_group("executor", "where the runs are trained (docs/scale.md); install the cluster ones "
                                         "with pip install 'genbound[cluster]'")
    c.add_argument("--executor", choices=EXECUTORS, default="local",
                   help="local: this process (default); ray: one Ray task per run; submitit: a Slurm job array")
    c.add_argument("--address", default=None,
                   help="ray: the cluster to join (auto, or ray://HOST:10001); default a new local Ray instance")
    c.add_argument("--cpus-per-run", type=float, default=None, help="ray / submitit: CPUs per run (default 1)")
    c.add_argument("--gpus-per-run", type=float, default=None, help="ray / submitit: GPUs per run (default 0)")
    c.add_argument("--mem-gb", type=float, default=None, help="ray / submitit: memory per run in GiB")
    c.add_argument("--max-retries", type=int, default=None,
                   help="ray / submitit: times a run whose worker died is retried (default 3 ray, 2 submitit)")
    c.add_argument("--partition", default=None, help="submitit: the Slurm partition")
    c.add_argument("--time-min", type=int, default=None, help="submitit: the Slurm time limit per run (default 120)")
    c.add_argument("--array-parallelism", type=int, default=None,
                   help="submitit: at most this many runs of the array at once")
    c.add_argument("--submitit-cluster", choices=("auto", "slurm", "local", "debug"), default="auto",
                   help="submitit: slurm, local processes or debug (in this process); auto picks slurm when "
                        "sbatch exists (default)")
    c.add_argument("--submitit-folder", default=None, help="submitit: its logs and pickles (default OUT/submitit)")


_ONLY = {"ray": ("address",),
         "submitit": ("partition", "time_min", "array_parallelism", "submitit_folder")}


def _executor(args: argparse.Namespace):
    """The executor analysis.sweep's command line asks for."""
    return executor_from_args(args, Path(args.out), wait=not args.no_wait,
                              wait_timeout=0.0 if args.no_wait else args.wait_timeout,
                              need_package=not args.tables_only)


def executor_from_args(args: argparse.Namespace, out: Path, wait: bool = True, wait_timeout: float | None = None,
                       need_package: bool = True):
    """The executor named by the options of :func:`add_executor_arguments`; an option of another executor is
    refused (it would be silently ignored), and a missing cluster package fails before any work."""

    for name, keys in _ONLY.items():
        for key in keys:
            if getattr(args, key) is not None and args.executor != name:
                raise GenboundError(f"--{key.replace('_', '-')} applies to --executor {name} only")
    if args.executor == "local":
        for key in ("cpus_per_run", "gpus_per_run", "mem_gb", "max_retries"):
            if getattr(args, key) is not None:
                raise GenboundError(f"--{key.replace('_', '-')} applies to --executor ray or submitit only")
    for key in ("cpus_per_run", "gpus_per_run", "mem_gb", "max_retries", "time_min", "array_parallelism"):
        v = getattr(args, key)
        if v is not None and (v < 0 or (v == 0 and key not in ("gpus_per_run", "max_retries"))):
            raise GenboundError(f"--{key.replace('_', '-')} must be positive, got {v}")
    if args.executor == "submitit" and args.gpus_per_run is not None and args.gpus_per_run != int(args.gpus_per_run):
        raise GenboundError(f"--gpus-per-run {args.gpus_per_run}: Slurm allocates whole GPUs; give an integer")
    opts = {"address": args.address, "cpus_per_run": args.cpus_per_run, "gpus_per_run": args.gpus_per_run,
            "mem_gb": args.mem_gb, "max_retries": args.max_retries, "partition": args.partition,
            "time_min": args.time_min, "array_parallelism": args.array_parallelism,
            "cluster": None if args.submitit_cluster == "auto" else args.submitit_cluster,
            "folder": args.submitit_folder, "wait": wait, "wait_timeout": wait_timeout}
    if args.executor == "submitit":
        for key in ("cpus_per_run", "gpus_per_run"):
            if opts[key] is not None:
                opts[key] = int(opts[key])
    executor = make_executor(args.executor, out, **opts)
    if args.executor != "local" and need_package:
        require(args.executor, args.executor)  # fail before any work when the package is missing
    return executor


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        executor = _executor(args)
        result = run_sweep(args.preset, args.seeds, args.out, args.methods, args.device, args.steps, args.epochs,
                           args.compression, args.theorem1, train=not args.tables_only, overwrite=args.overwrite,
                           wait=not args.no_wait, wait_timeout=args.wait_timeout, progress=args.progress,
                           figures=not args.no_figures, executor=executor, backbone=args.backbone,
                           dataset=args.dataset)
    except GenboundError as exc:
        print(f"analysis.sweep: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("analysis.sweep: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    if args.json:
        print_json(result.to_dict())
        return 0

    print(results_table(result.rows))
    print()
    print(correlation_table([c for c in result.correlations if c.bound in BOUNDS]))
    print()
    print(headline(result.correlations, result.rows))
    for n in result.notes:
        print(f"note: {n}")
    print(f"\nwrote {result.out / 'summary.md'}, {result.out / 'tables.md'}, LaTeX tables and "
          f"{result.out / 'figures'}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
