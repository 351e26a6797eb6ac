"""argparse types for numbers that reach random generators and optimisers, checked at parse time.

Light on purpose (no numpy, no torch): ``genbound --help`` imports every command's parser.
"""

from __future__ import annotations

import math

from .errors import GenboundError

MAX_SEED = (1 << 63) - 1  # numpy's and torch's generators take no more (genbound.core.validation.MAX_SEED)


def seed_arg(text: str) -> int:
    """A seed: an integer 0..2^63-1 (a negative split seed or 2^70 is refused here, not deep in numpy)."""
    try:
        value = int(text)
    except (TypeError, ValueError):
        raise GenboundError(f"a seed must be an integer 0..{MAX_SEED}, got '{text}'") from None
    if not 0 <= value <= MAX_SEED:
        raise GenboundError(f"a seed must be an integer 0..{MAX_SEED}, got {value}")
    return value


def positive_float_arg(text: str) -> float:
    """A rate or scale: a finite number above 0 (nan, inf and negatives refused)."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise GenboundError(f"expected a positive number, got '{text}'") from None
    if not math.isfinite(value) or value <= 0:
        raise GenboundError(f"expected a finite positive number, got '{text}'")
    return value


_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kib": 1 << 10, "kb": 10**3, "m": 1 << 20, "mib": 1 << 20, "mb": 10**6,
          "g": 1 << 30, "gib": 1 << 30, "gb": 10**9, "t": 1 << 40, "tib": 1 << 40, "tb": 10**12}


def size_arg(text: str) -> int:
    """A memory size in bytes: a number with an optional unit (``2GiB``, ``512MiB``, ``1.5G``, ``4e9``; K, M,
    G, T and KiB..TiB are powers of 1024, KB..TB of 1000)."""
    s = str(text).strip().lower().replace(" ", "")
    number = s.rstrip("kmgtib")
    unit = s[len(number):]
    try:
        value = float(number) * _UNITS[unit]
    except (ValueError, KeyError):
        raise GenboundError(f"expected a memory size such as 2GiB or 512MiB, got '{text}'") from None
    if not math.isfinite(value) or value < 1:
        raise GenboundError(f"expected a positive memory size such as 2GiB, got '{text}'")
    return int(value)
