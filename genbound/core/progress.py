"""Progress on stderr for every step that takes more than a few seconds, and time estimates before long ones.

One rule for the whole package: ``progress=None`` shows tqdm bars only when stderr is a terminal, ``True``
always, ``False`` never (the CLI's ``--no-progress``). Estimates follow the same rule, so a log file or a
pipe gets neither. An estimate is a measured unit cost (one forward pass, one Hessian-vector product) times
the number of units the step will need; it is printed before the step starts, with how it was made.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable
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


def timed(fn, *args, repeat: int = 1, **kw) -> float:
    """Seconds per call of ``fn(*args, **kw)``: the mean of ``repeat`` calls after one warm-up call."""
    fn(*args, **kw)
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn(*args, **kw)
    return (time.perf_counter() - t0) / repeat
