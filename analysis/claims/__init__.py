"""The paper's three claims, tested over tasks, backbones and seeds, in one report.

    python -m analysis.claims --preset tiny --out runs/claims-tiny       # mlp / digits, seconds (the tests)
    python -m analysis.claims --preset cpu --out runs/claims-cpu         # mlp + two MiniLMs, BBC and tweets: CPU hours
    python -m analysis.claims --preset cpu --out runs/claims-cpu --cells l3-bbc l3-tweets   # only these cells
    python -m analysis.claims --preset paper --out runs/claims-paper --device cuda

A claims preset is a list of *cells* (backbone x task, each an analysis.sweep preset) and the seeds and
methods trained in each. Every run is an analysis.sweep RunSpec in ``<out>/<cell>/runs/<method>-s<seed>``,
trained by analysis.sweep.train_runs: resumable, lock-claimed, a finished run (a checkpoint whose recorded
configuration equals the run's) never trained again. The per-run measures of claim (c) are cached beside the
runs in ``<out>/<cell>/derived/<run>.claims.json`` (keyed by the checkpoint's digest and the measure settings),
so a second invocation with every run present only reads files and rebuilds the report. ``--cells NAME ...``
trains and measures only the named cells and writes no report (a worker beside others sharing ``--out``); a later
invocation without it, or with ``--report-only``, writes the report over every cell of the preset.

Cells are named ``<backbone>-<task>`` (``minilm-bbc``, ``l3-bbc``: all-MiniLM-L6-v2 and paraphrase-MiniLM-L3-v2,
genbound.models.onnx_bert), and every table is per cell, so a task that two backbones share stays two rows; "pooled"
pools the seed pairs of every cell, backbones and tasks together.

The claims (the paper's, docs/concepts.md) and the test of each, fixed before any run was looked at:

(a) *The sparse variants are competitive with their parameter-matched baselines.* For each sparse variant v
    (cla, rcla, paca against asym; c3la, rc3la against rac) and each seed s present for both, the paired
    difference d_s = acc_test(v, s) - acc_test(baseline, s) in accuracy points (same seed: same head init,
    data order and split). Mean and the 95% Student-t interval mean +- t_{0.975, n-1} sd / sqrt(n) over the
    n seeds, per cell; pooled over cells on the cell means (one mean difference per cell, the t interval with
    cells - 1 degrees of freedom: the seeds of one cell share its data and backbone, so they are not independent
    replicates of the pooled question). **Competitive** means the one-sided test of mean <= -1 point rejects at
    0.025 after Holm's correction over the five variants (within each cell, and over the pooled rows); without
    the correction that is the interval's lower end above -1. **Not shown** means it does not (too few seeds
    or too much spread to tell, or worse); a mean below -1 with the upper end below -1 is **worse**.
(b) *They save time and memory.* Median seconds per step and peak memory (genbound.training.train's recorded
    metrics) of each sparse variant over its baseline and over LoRA, as ratios of per-cell means over seeds;
    the noise floor is the same ratio for lora_plus over lora, whose arithmetic per step is identical (only
    the learning rate of B differs): a saving smaller than that ratio's deviation from 1 is not resolved.
(c) *The information-theoretic measures order the methods by their generalization gap better than the usual
    tools.* Kendall's tau-b (scipy.stats.kendalltau, two-sided p) between each measure's per-method mean and
    the measured 0-1 gap's per-method mean, per cell, with a seeded BCa bootstrap 95% interval (Efron 1987;
    scipy.stats.bootstrap, method "BCa": each method's seeds resampled with replacement, both means and tau
    recomputed). Where the BCa interval excludes the point estimate (the bootstrap distribution lies almost
    entirely on one side of it) the interval is widened to reach the estimate and marked: every reported tau
    lies inside its interval by construction, and widening only makes the interval more conservative. A
    measure *predicts* the gap when its tau is positive with a Holm-corrected p < 0.05 (over the measures of
    the cell) and its interval lies above 0.
"""

# The package is split by claim (cells, measures, gather; competitive = (a), savings = (b), ordering = (c); report,
# cli); every name the single module had stays importable from analysis.claims.
from genbound.core.errors import GenboundError
from genbound.core.stats import holm, one_sided_p, t_interval, tau_interval

from .cells import (
    CLAIMS_PRESETS,
    CPU_CERT,
    CPU_MINILM_MEASURES,
    ENCODERS,
    SECOND_BACKBONE_NOTE,
    TINY_CERT,
    TWEETS_NOTE,
    Cell,
    ClaimsPreset,
    Measures,
    _minilm,
    _mlp,
    cell_specs,
    check_cells,
    get_claims_preset,
    resolve_cell,
    select_cells,
    tweets_subset,
)
from .cli import FINISHED, build_parser, main, run_cells, run_claims
from .common import BASELINE, COMPETITIVE_MARGIN, NOISE_PAIR, PRIORITY, SPARSE, TIERS, TWEETS_SUBSET_SEED, Gathered, Run
from .competitive import ALPHA_A, Paired, paired_differences, verdict_a
from .gather import gather
from .measures import (
    CERT_SETTINGS,
    INFORMATION_THEORETIC,
    MEASURES,
    cached_run_measures,
    certificate_specs,
    run_measures,
)
from .ordering import BOOTSTRAP, BOOTSTRAP_SEED, Tau, taus
from .report import Report, build_report, os_cpus, seed_spread, sum_train_seconds, table_a, table_b, table_c
from .savings import Cost, costs, verdict_b

__all__ = [
    "ALPHA_A",
    "BASELINE",
    "BOOTSTRAP",
    "BOOTSTRAP_SEED",
    "CERT_SETTINGS",
    "CLAIMS_PRESETS",
    "COMPETITIVE_MARGIN",
    "CPU_CERT",
    "CPU_MINILM_MEASURES",
    "Cell",
    "ClaimsPreset",
    "Cost",
    "ENCODERS",
    "FINISHED",
    "Gathered",
    "GenboundError",
    "INFORMATION_THEORETIC",
    "MEASURES",
    "Measures",
    "NOISE_PAIR",
    "PRIORITY",
    "Paired",
    "Report",
    "Run",
    "SECOND_BACKBONE_NOTE",
    "SPARSE",
    "TIERS",
    "TINY_CERT",
    "TWEETS_NOTE",
    "TWEETS_SUBSET_SEED",
    "Tau",
    "_minilm",
    "_mlp",
    "build_parser",
    "build_report",
    "cached_run_measures",
    "cell_specs",
    "certificate_specs",
    "check_cells",
    "costs",
    "gather",
    "get_claims_preset",
    "holm",
    "main",
    "one_sided_p",
    "os_cpus",
    "paired_differences",
    "resolve_cell",
    "run_cells",
    "run_claims",
    "run_measures",
    "seed_spread",
    "select_cells",
    "sum_train_seconds",
    "t_interval",
    "table_a",
    "table_b",
    "table_c",
    "tau_interval",
    "taus",
    "tweets_subset",
    "verdict_a",
    "verdict_b",
]
