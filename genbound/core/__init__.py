"""The bottom layer: errors, atomic writes, output folders, tables and JSON, progress, devices, JSON validation,
safe tensor readers, process groups. Imports nothing else of genbound.

The names below are the package's public surface; they are imported on first use (PEP 562), so importing one
module of the package does not import the others (``genbound --help`` stays free of torch).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .lazy import lazy_surface

if TYPE_CHECKING:
    from .atomic import atomic_directory, atomic_file, write_json, write_text
    from .device import resolve_device, where
    from .distributed import Group, launched
    from .errors import CheckpointError, GenboundError, NonFiniteError
    from .fingerprint import file_fingerprint
    from .progress import bar
    from .readers import read_safetensors
    from .render import latex_table, markdown_table, print_json, text_table, to_jsonable

_SURFACE = {
    "GenboundError": "errors",
    "CheckpointError": "errors",
    "NonFiniteError": "errors",
    "atomic_file": "atomic",
    "atomic_directory": "atomic",
    "write_json": "atomic",
    "write_text": "atomic",
    "where": "device",
    "resolve_device": "device",
    "print_json": "render",
    "to_jsonable": "render",
    "text_table": "render",
    "markdown_table": "render",
    "latex_table": "render",
    "read_safetensors": "readers",
    "bar": "progress",
    "Group": "distributed",
    "launched": "distributed",
    "file_fingerprint": "fingerprint",
}
__all__ = [
    "CheckpointError",
    "GenboundError",
    "Group",
    "NonFiniteError",
    "atomic_directory",
    "atomic_file",
    "bar",
    "file_fingerprint",
    "latex_table",
    "launched",
    "markdown_table",
    "print_json",
    "read_safetensors",
    "resolve_device",
    "text_table",
    "to_jsonable",
    "where",
    "write_json",
    "write_text",
]


__getattr__ = lazy_surface(__name__, _SURFACE, globals())
