"""Sweeps over methods and seeds, and the paper-style tables, figures and rank correlations built from them.

``python -m analysis.sweep --preset mlp --seeds 0 1 --out runs/sweep`` trains every method of a preset
(:mod:`analysis.presets`) over the seeds, resumably and safely shared between processes (:mod:`analysis.locks`),
then writes Markdown / LaTeX tables, figures and the Kendall tau between each bound's ordering of the methods
and the measured gaps (:mod:`analysis.tables`).
"""

from .presets import PRESETS, Preset, get_preset, train_config
from .tables import Correlation, MethodRow, RunRecord, Stat, aggregate, correlations, kendall, stat

_SWEEP = ("RunSpec", "SweepResult", "plan", "run_sweep")


def __getattr__(name: str):
    # analysis.sweep is also run as ``python -m analysis.sweep``; importing it here eagerly would make runpy
    # warn that the module was imported before it was executed.
    if name in _SWEEP:
        from . import sweep

        return getattr(sweep, name)
    raise AttributeError(f"module 'analysis' has no attribute {name!r}")


__all__ = ["PRESETS", "Correlation", "MethodRow", "Preset", "RunRecord", "RunSpec", "Stat", "SweepResult",
           "aggregate", "correlations", "get_preset", "kendall", "plan", "run_sweep", "stat", "train_config"]
