"""Shared fixtures: small real checkpoints (the pretrained mlp backbone fine-tuned on digits 5-9)."""

from __future__ import annotations

import os
import tempfile

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Tokenized data is cached per test session, not in the user's ~/.cache (genbound.data.tokcache).
os.environ.setdefault("GENBOUND_CACHE", tempfile.mkdtemp(prefix="genbound-cache-"))
torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def ckpt_dir(tmp_path_factory):
    """A directory of small checkpoints, one per method, trained once per test session on demand."""
    from genbound.testing import make_checkpoint

    root = tmp_path_factory.mktemp("checkpoints")
    cache: dict[tuple, object] = {}

    def get(method: str = "lora", **kw):
        key = (method, tuple(sorted(kw.items())))
        if key not in cache:
            name = f"{method}-" + "-".join(f"{k}{v}" for k, v in sorted(kw.items())) if kw else None
            cache[key] = make_checkpoint(root, method, name=name, **kw)
        return cache[key]

    return get


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Print the fuzz campaigns' counts (tests/test_fuzz_checkpoints.py records them as the user property
    ``fuzz_summary``), so that ``make test`` shows them even with -q and xdist workers."""
    lines = []
    for key in ("passed", "failed"):
        for report in terminalreporter.stats.get(key, []):
            if getattr(report, "when", "call") != "call":
                continue
            lines += [v for k, v in getattr(report, "user_properties", []) if k == "fuzz_summary"]
    if lines:
        terminalreporter.write_sep("-", "fuzz counts (crashed and hung must be 0)")
        for line in sorted(lines):
            terminalreporter.write_line(line)
