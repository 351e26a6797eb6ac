"""Where trained updates come from: the source protocol, peft adapters (import, export, the Trainer callback), the
run context that builds model and data from a source, and the trained hypothesis.

The names below are the package's public surface; they are imported on first use (PEP 562), so importing one
module of the package does not import the others (``genbound --help`` stays free of torch).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..core.lazy import lazy_surface

if TYPE_CHECKING:
    from .context import BuildCache, RunContext, context_for, contexts_for
    from .export import export_peft
    from .hypothesis import Hypothesis
    from .peft_import import PeftCheckpoint, is_peft_dir, load_peft
    from .peft_source import PeftSource
    from .source import FullSource, Source, is_full, load_any, load_source

_SURFACE = {
    "Source": "source",
    "FullSource": "source",
    "is_full": "source",
    "load_source": "source",
    "load_any": "source",
    "PeftSource": "peft_source",
    "PeftCheckpoint": "peft_import",
    "load_peft": "peft_import",
    "is_peft_dir": "peft_import",
    "export_peft": "export",
    "RunContext": "context",
    "BuildCache": "context",
    "context_for": "context",
    "contexts_for": "context",
    "Hypothesis": "hypothesis",
}
__all__ = [
    "BuildCache",
    "FullSource",
    "Hypothesis",
    "PeftCheckpoint",
    "PeftSource",
    "RunContext",
    "Source",
    "context_for",
    "contexts_for",
    "export_peft",
    "is_full",
    "is_peft_dir",
    "load_any",
    "load_peft",
    "load_source",
]


__getattr__ = lazy_surface(__name__, _SURFACE, globals())
