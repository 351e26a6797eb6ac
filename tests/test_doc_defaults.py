"""Numbers that README.md and docs/ quote as defaults are the code's defaults.

Each claim is a pattern over one document whose groups are the quoted numbers, paired with where the code
keeps each default (a command-line option, a function's keyword default or a dataclass field). A census
then makes sure that every line of prose that mentions a default next to a number is covered by a claim
(or listed as not being about a default), so a new quoted default cannot drift unchecked.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def option(command: str, dest: str):
    """The default of ``genbound COMMAND``'s option ``dest``, from the real parser."""
    from genbound.cli import build_parser

    parser = build_parser(command, all_arguments=False)
    sub = next(a for a in parser._actions if a.dest == "command")
    return sub.choices[command].get_default(dest)


def keyword(func: Callable, name: str):
    return inspect.signature(func).parameters[name].default


def field(cls, name: str):
    return next(f.default for f in dataclasses.fields(cls) if f.name == name)


def _lazy(module: str, attr: str) -> Callable:
    def get():
        import importlib

        obj = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
        return obj
    return get


def _demo(dest):
    return lambda: option("demo", dest)


TrainConfig = _lazy("genbound.training.train", "TrainConfig")

# (document, pattern, [code default of each group])
CLAIMS: list[tuple[str, str, list[Callable[[], object]]]] = [
    ("docs/getting-started.md",
     r"Each run uses rank (\d+), alpha (\d+), (\d+) steps, learning rate ([\de.-]+), (\d+) tokens per\s+article, "
     r"seed (\d+)",
     [_demo("rank"), _demo("alpha"), _demo("steps"), _demo("lr"), _demo("max_length"), _demo("seed")]),
    ("README.md", r"\(rank (\d+),\s+(\d+) steps of (\d+) articles at (\d+) tokens",
     [_demo("rank"), _demo("steps"), lambda: field(TrainConfig(), "batch_size"), _demo("max_length")]),
    ("docs/concepts.md", r"The defaults are r = (\d+) and alpha = (\d+)",
     [lambda: option("train", "rank"), lambda: option("train", "alpha")]),
    ("docs/concepts.md", r"The ratio is (\d+) by default",
     [lambda: _lazy("genbound.methods.catalogue", "get_method")()("lora_plus").b_lr_ratio]),
    ("docs/concepts.md", r"\*\*sigma\*\* defaults to (\d+/\d+), the value for the 0-1 loss",
     [lambda: _lazy("genbound.bounds.common", "sigma_for_loss")()("01", None)]),
    ("docs/concepts.md", r"delta = ([\d.]+) by default \(--delta\)", [lambda: option("bounds", "delta")]),
    ("docs/concepts.md", r"(\d+) posterior draws per s by default \(`--pb-samples`\)",
     [lambda: option("bounds", "pb_samples")]),
    ("docs/concepts.md", r"\(k = (\d+) by default, `--top-k`\)", [lambda: option("spectra", "top_k")]),
    ("docs/concepts.md", r"defaults k = (\d+), eps = ([\d.]+)",
     [lambda: option("spectra", "top_k"), lambda: float(option("spectra", "eps"))]),
    ("docs/concepts.md", r"their mean \(k = (\d+) by default\)",
     [lambda: keyword(_lazy("genbound.diagnostics.similarity", "compare_updates")(), "k")]),
    ("docs/concepts.md", r"The defaults are (\d+) training examples", [lambda: option("hessian", "samples")]),
    ("docs/concepts.md", r"The defaults\s+are top-k (\d+), tol ([\de.-]+) and at most (\d+) steps",
     [lambda: option("hessian", "top_k"), lambda: option("hessian", "tol"), lambda: option("hessian", "max_steps")]),
    ("docs/concepts.md",
     r"half-width is at most (\d+) % of \|estimate\| \(`--trace-rtol ([\d.]+)`\), after at least (\d+) and at most "
     r"(\d+)\s+probes",
     [lambda: 100 * option("hessian", "trace_rtol"), lambda: option("hessian", "trace_rtol"),
      lambda: keyword(_lazy("genbound.diagnostics.hessian.trace", "hutchinson")(), "min_probes"),
      lambda: keyword(_lazy("genbound.diagnostics.hessian.trace", "hutchinson")(), "max_probes")]),
    ("docs/concepts.md", r"\(or a (\d+)-step Lanczos run when",
     [lambda: keyword(_lazy("genbound.diagnostics.hessian.spectrum", "hessian_spectrum")(), "trace_sketch")]),
    ("docs/concepts.md", r"random sketch \((\d+) columns, 2 x (\d+) products\)",
     [lambda: keyword(_lazy("genbound.diagnostics.hessian.spectrum", "hessian_spectrum")(), "trace_sketch"),
      lambda: keyword(_lazy("genbound.diagnostics.hessian.spectrum", "hessian_spectrum")(), "trace_sketch")]),
    ("docs/concepts.md", r"There are (\d+) Rademacher probes of (\d+) Lanczos steps each",
     [lambda: option("hessian", "density_probes"), lambda: option("hessian", "density_steps")]),
    ("docs/concepts.md", r"The defaults are (\d+) points and span (\d+) in the command \((\d+) points in\s+`compare`\)",
     [lambda: option("landscape", "grid"), lambda: 1.0,
      lambda: keyword(_lazy("genbound.report.compare", "compare")(), "grid")]),
    ("docs/concepts.md", r"L <= L\(0\) \+ ([\d.]+) \(`--basin-rise`\)", [lambda: option("landscape", "basin_rise")]),
    ("docs/benchmarks.md", r"MiniLM on BBC News, the defaults: batch (\d+), (\d+) tokens, r = (\d+) on query",
     [lambda: field(TrainConfig(), "batch_size"), lambda: option("train", "max_length"),
      lambda: option("train", "rank")]),
    ("docs/scale.md", r"Ray retries the task \(`--max-retries`, default (\d+)\)",
     [lambda: field(_lazy("analysis.executors", "RayExecutor")(), "max_retries")]),
    ("docs/scale.md", r"without a result \(`--max-retries`, default (\d+)\)",
     [lambda: field(_lazy("analysis.executors", "SubmititExecutor")(), "max_retries")]),
    ("docs/scale.md", r"polls the jobs' states every (\d+) seconds",
     [lambda: field(_lazy("analysis.executors", "SubmititExecutor")(), "poll_s")]),
    ("docs/scale.md", r"the owner touches the file every\s+(\d+) s\. On the owner's host, a dead pid makes the lock "
     r"stale at once\. From another host, the lock becomes\s+stale after (\d+) missed heartbeats",
     [_lazy("analysis.locks", "HEARTBEAT"), _lazy("analysis.locks", "STALE_BEATS")]),
]

# Lines that mention a default next to a number but quote no default value of genbound's.
NOT_A_DEFAULT = [
    ("docs/concepts.md", "M defaults to 2 ln(classes)"),  # a formula, checked in test_bounds_theorem1
    ("docs/concepts.md", "q** defaults to the bit width"),  # float32: 32 is the dtype's width
    ("docs/concepts.md", "takes the dense path up to min(n, m) = 512"),  # the auto crossover, test_spectra
    ("docs/concepts.md", "the span defaults to 1.2 x its reach"),  # PCA span rule, test_landscape
    ("docs/concepts.md", "The default `cuda=True` fails"),  # pyhessian's default, not genbound's
    ("docs/concepts.md", "Kaiming-uniform like peft's default"),
    ("docs/concepts.md", "`deepcopy_model=False` by default"),  # loss-landscapes' default
    ("docs/concepts.md", "the default form), starting from G_0 = C"),
    ("docs/concepts.md", "The trained head is counted by default"),
    ("docs/benchmarks.md", "pyhessian runs its defaults"),
    # the --no-final-eval rows: "default" names the variant measured, the numbers are measurements
    ("docs/benchmarks.md", "| ratio default / `--no-final-eval` |"),
    ("docs/benchmarks.md", "| default (final evaluation of train / validation / test) |"),
    ("docs/benchmarks.md", "(per run, CPU s: default: "),
]


def _text(doc: str) -> str:
    return (ROOT / doc).read_text(encoding="utf-8")


def _number(s: str) -> float:
    num, _, den = s.replace(",", "").partition("/")
    return float(num) / (float(den) if den else 1.0)


@pytest.mark.parametrize("doc, pattern, defaults", CLAIMS, ids=[f"{d}:{p[:40]}" for d, p, _ in CLAIMS])
def test_quoted_default_equals_the_code(doc, pattern, defaults):
    m = re.search(pattern, _text(doc))
    assert m, f"{doc} no longer says /{pattern}/: update the claim with the text"
    for i, get in enumerate(defaults, 1):
        quoted, actual = _number(m.group(i)), get()
        assert quoted == pytest.approx(float(actual), rel=1e-12), (
            f"{doc} quotes {m.group(i)!r} as a default but the code's default is {actual!r}: {m.group(0)!r}")


def test_every_quoted_default_is_checked():
    """Every prose line in README.md and docs/ (not the generated cli.md, not code blocks) that says
    'default' next to a digit lies inside a claim's match or is listed as not quoting a default."""
    docs = ["README.md"] + sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md")
                                  if p.name != "cli.md")
    covered: dict[str, list[tuple[int, int]]] = {}
    for doc, pattern, _ in CLAIMS:
        m = re.search(pattern, _text(doc))
        if m:
            covered.setdefault(doc, []).append(m.span())
    unchecked = []
    for doc in docs:
        text = _text(doc)
        fenced = [m.span() for m in re.finditer(r"^```.*?^```", text, flags=re.S | re.M)]
        offset = 0
        for line in text.splitlines(keepends=True):
            start, end = offset, offset + len(line)
            offset = end
            if not re.search(r"default", line, re.I) or not re.search(r"(?<![\w.-])\d", line):
                continue
            if any(a <= start < b for a, b in fenced):
                continue
            if any(a < end and start < b for a, b in covered.get(doc, [])):
                continue
            if any(d == doc and s in line for d, s in NOT_A_DEFAULT):
                continue
            unchecked.append(f"{doc}: {line.strip()}")
    assert not unchecked, ("these lines quote a default that no claim in tests/test_doc_defaults.py checks; add a "
                           "claim (or list the line in NOT_A_DEFAULT):\n" + "\n".join(unchecked))


def test_a_drifted_number_is_caught():
    # The check itself: the text of getting-started before it was fixed (80 steps, 96 tokens) fails.
    doc, pattern, defaults = CLAIMS[0]
    old = "Each run uses rank 8, alpha 16, 80 steps, learning rate 2e-3, 96 tokens per\narticle, seed 0"
    m = re.search(pattern, old)
    assert m and [_number(g) for g in m.groups()] != [float(d()) for d in defaults]
