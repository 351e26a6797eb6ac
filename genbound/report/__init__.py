"""Reports over several runs: the side-by-side comparison of two sources and the paper's figures.

The names below are the package's public surface; they are imported on first use (PEP 562), so importing one
module of the package does not import the others (``genbound --help`` stays free of torch).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..core.lazy import lazy_surface

if TYPE_CHECKING:
    from .compare import CompareReport, to_latex, to_markdown, to_text
    from .figures import save

_SURFACE = {
    "CompareReport": "compare",
    "to_text": "compare",
    "to_markdown": "compare",
    "to_latex": "compare",
    "save": "figures",
}
__all__ = [
    "CompareReport",
    "save",
    "to_latex",
    "to_markdown",
    "to_text",
]


__getattr__ = lazy_surface(__name__, _SURFACE, globals())
