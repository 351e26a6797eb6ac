"""A package's public surface imported on first use (PEP 562), so that importing one module of a package does
not import its siblings (``genbound --help`` stays free of torch)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_surface(package: str, surface: dict[str, str], namespace: dict[str, Any]) -> Callable[[str], Any]:
    """The module ``__getattr__`` of ``package``: ``surface`` maps each public name to the submodule that holds
    it; a name is imported when first asked for and then kept in the package's ``namespace``."""

    def __getattr__(name: str) -> Any:
        if name not in surface:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{surface[name]}"), name)
        namespace[name] = value
        return value

    return __getattr__
