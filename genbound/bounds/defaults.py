"""The certificate's default settings and its declared grid file, in a module that imports only the standard
library, so that ``genbound certify --help`` and ``genbound train --help`` quote them without importing torch
(genbound.bounds.certificate uses the same names)."""

import json
from pathlib import Path
from typing import Any

# The declared grid: a versioned file that ships with the package (genbound.bounds.codec.HyperGrid reads its axes).
GRID_FILE = Path(__file__).resolve().parent.parent / "assets" / "certificate-grid.json"

DEFAULT_LEVELS = 5
DEFAULT_QAT_STEPS = 30
DEFAULT_QAT_LR = 0.01
DEFAULT_RATE = 0.0  # entropy-constrained assignment: penalty = rate * mean(w^2) per bit
DEFAULT_POSTERIOR_STEPS = 0  # data-dependent centre: no posterior training after it (genbound.bounds.ddprior)
DEFAULT_POSTERIOR_LR = 0.01


def grid_section(name: str, path: str | Path = GRID_FILE) -> Any:
    """The top-level section ``name`` of the declared grid file (None where it has none), read as plain JSON."""
    return json.loads(Path(path).read_text(encoding="utf-8")).get(name)
