"""Progress on stderr for every step that takes more than a few seconds, and time estimates before long ones.

One rule for the whole package: ``progress=None`` shows tqdm bars only when stderr is a terminal, ``True``
always, ``False`` never (the CLI's ``--no-progress``). Estimates follow the same rule, so a log file or a
pipe gets neither. An estimate is a measured unit cost (one forward pass, one Hessian-vector product) times
the number of units the step will need; it is printed before the step starts, with how it was made.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

from tqdm.auto import tqdm


def shown(progress: bool | None) -> bool:
    """Whether bars and estimates are shown: the explicit choice, else only on a terminal."""
    if progress is not None:
        return bool(progress)
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # a closed or replaced stderr
        return False


def bar(iterable: Iterable | None = None, *, progress: bool | None = None, **kw: Any) -> tqdm:
    """A tqdm bar on stderr under the package's rule (``disable=None`` is tqdm's own not-a-terminal test)."""
    kw.setdefault("leave", False)
    return tqdm(iterable, disable=None if progress is None else not progress, file=sys.stderr, **kw)


def duration(seconds: float) -> str:
    """3 s, 45 s, 2.5 min, 1.2 h."""
    if seconds < 90:
        return f"{max(seconds, 1):.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def say(progress: bool | None, text: str) -> None:
    """One line on stderr (an estimate, a stage) under the same rule as the bars."""
    if shown(progress):
        print(f"genbound: {text}", file=sys.stderr, flush=True)


@dataclass
class Estimate:
    """How long a piece of long work will take: ``units`` units of work (Hessian-vector products, forward
    passes) at the measured cost of the first ones (:class:`FirstCall`), part of the work, not a trial. The
    count is expected, not promised where the work stops on convergence (``units_min``..``units_max``).
    Wall-clock and process CPU seconds of the unit are both kept: the printed time is wall-clock (what the
    user waits for), the CPU figure is what a single-threaded run on a busy machine can be checked against."""

    task: str  # "hessian", "landscape", ...
    unit: str  # "Hessian-vector product", "forward pass"
    units: int  # the expected count, the measured one included
    unit_seconds: float  # wall-clock seconds of the measured unit
    unit_cpu_seconds: float  # process CPU seconds of the measured unit
    units_min: int | None = None
    units_max: int | None = None
    note: str = ""  # what the count is made of

    @property
    def seconds(self) -> float:
        return self.units * self.unit_seconds

    @property
    def cpu_seconds(self) -> float:
        return self.units * self.unit_cpu_seconds

    def line(self) -> str:
        """One line for stderr: ``hessian: about 2.5 min (~300 Hessian-vector products, at 0.5 s each, ...)``."""
        span = ""
        if self.units_min is not None and self.units_max is not None and self.units_min != self.units_max:
            span = f", {self.units_min:,} to {self.units_max:,}"
        note = f"; {self.note}" if self.note else ""
        return (f"{self.task}: about {duration(self.seconds)} (~{self.units:,} {self.unit}s{span}, at "
                f"{self.unit_seconds:.2g} s each, measured on the first products{note})")

    def record(self) -> dict[str, Any]:
        """The estimate for --json output."""
        out = asdict(self)
        out["seconds"], out["cpu_seconds"] = self.seconds, self.cpu_seconds
        return out


class FirstCall:
    """Wraps a unit of work (one Hessian-vector product, one forward) and times its first ``measure`` calls
    with both clocks; ``then(wall, cpu)`` runs once, right after them, with the cheapest per unit, and the
    results of the timed calls are kept (the measurement is part of the work). The first call alone can
    carry one-time costs (allocations, lazy initialization: 0.46 s against 0.015 s for the second on a small
    MLP), hence two. Later calls only count (``calls``) and tick ``bar`` when set."""

    def __init__(self, fn: Callable[..., Any], then: Callable[[float, float], None], weight=None, measure: int = 2):
        self.fn, self.then, self.weight, self.measure = fn, then, weight, max(1, int(measure))
        self.calls = 0
        self.timed: list[tuple[float, float]] = []
        self.bar: tqdm | None = None
        self.estimate: Estimate | None = None  # set by ``then`` where the caller makes one

    def __call__(self, *args: Any, **kw: Any) -> Any:
        timing = len(self.timed) < self.measure
        t0, c0 = time.perf_counter(), time.process_time()
        out = self.fn(*args, **kw)
        n = int(self.weight(*args)) if self.weight is not None else 1
        self.calls += n
        if timing:
            self.timed.append(((time.perf_counter() - t0) / n, (time.process_time() - c0) / n))
            if len(self.timed) == self.measure:
                self.then(min(t[0] for t in self.timed), min(t[1] for t in self.timed))
        if self.bar is not None:
            if self.calls > self.bar.total:  # ran past the expected count (no convergence yet): widen the bar
                self.bar.total = self.calls
            self.bar.update(self.calls - self.bar.n)
        return out


def announce(est: Estimate, progress: bool | None, *, desc: str | None = None) -> tqdm:
    """Say the estimate (stderr, under the package's rule) and open the task's overall bar over its expected
    units, whose ETA starts from the measured unit (the one already done is counted)."""
    say(progress, est.line())
    b = bar(total=est.units, progress=progress, desc=desc or est.task, unit=" " + _short(est.unit))
    return b


def _short(unit: str) -> str:
    return {"Hessian-vector product": "HVP", "forward pass": "fwd"}.get(unit, unit)
