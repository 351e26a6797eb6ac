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
