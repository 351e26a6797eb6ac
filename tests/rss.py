"""Peak resident memory of this process from a point on, for tests that bound what an operation allocates.

Linux's VmHWM (``/proc/self/status``) is reset to the current RSS by writing 5 to ``/proc/self/clear_refs``, so
``peak() - start()`` is what was allocated since :func:`start`. ``ru_maxrss``, the portable fallback, cannot be
reset (and Linux carries it across exec from the parent): inside a pytest worker that peaked higher earlier, a
bound on its growth would check nothing.
"""

from __future__ import annotations

import resource
from pathlib import Path

_STATUS = Path("/proc/self/status")
_CLEAR = Path("/proc/self/clear_refs")


def _field(name: str) -> int:
    for line in _STATUS.read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(name)


def resettable() -> bool:
    return _STATUS.exists() and _CLEAR.exists()


def start() -> int:
    """Reset the peak to the current RSS (where Linux allows) and return the baseline to subtract."""
    if resettable():
        _CLEAR.write_text("5")
        return _field("VmRSS")
    return peak()


def peak() -> int:
    """The peak RSS since the last :func:`start` (Linux), else the process's lifetime peak."""
    return _field("VmHWM") if resettable() else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
