"""Where genbound keeps what it computes once and reuses (tokens, fingerprints, model layouts, converted
backbones): ``$GENBOUND_CACHE/<kind>``, or ``~/.cache/genbound/<kind>`` when the variable is unset;
``GENBOUND_CACHE=off`` (or ``0``, ``none``) turns every disk cache off."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(kind: str) -> Path | None:
    """The folder of the disk cache ``kind`` (not created here), or None when the caches are off."""
    root = os.environ.get("GENBOUND_CACHE")
    if root and root.lower() in ("off", "0", "none"):
        return None
    return (Path(root) if root else Path.home() / ".cache" / "genbound") / kind
