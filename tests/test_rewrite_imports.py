"""tools/rewrite_imports.py, which ports code written against the flat layout (docs/changelog.md's tables):
each rewrite checked against the module that now holds the name, and a second run changes nothing."""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("rewrite_imports", ROOT / "tools" / "rewrite_imports.py")
rw = importlib.util.module_from_spec(spec)
sys.modules["rewrite_imports"] = rw
spec.loader.exec_module(rw)

TABLE = ROOT / "docs" / "changelog.md"
MAPPER = rw.Mapper(rw.read_table(TABLE), rw.modules_on_disk(ROOT), rw.read_table(TABLE, "### Moved names"))


def _rewrite(text: str, at: str | None = None) -> str:
    ctx = rw.FileContext(MAPPER, ROOT / at if at else None)
    once = rw.rewrite_text(text, MAPPER, ctx)
    assert rw.rewrite_text(once, MAPPER, ctx) == once, "a second run changed the text again"
    return once


@pytest.mark.parametrize("old, new", [
    ("from genbound.train import TrainConfig, train\n", "from genbound.training.train import TrainConfig, train\n"),
    ("from genbound import spectra, __version__\n",
     "from genbound.diagnostics import spectra\nfrom genbound import __version__\n"),
    ("from genbound import methods\n", "from genbound.methods import catalogue as methods\n"),
    ("from genbound.methods import METHODS, get_method\n",
     "from genbound.methods.catalogue import METHODS, get_method\n"),
    ("from genbound.hessian.operator import (\n    HessianOperator,  # the operator\n)\n",
     "from genbound.diagnostics.hessian.operator import (\n    HessianOperator,  # the operator\n)\n"),
    ("import genbound.hessian.operator as op\n", "import genbound.diagnostics.hessian.operator as op\n"),
    ('with mock.patch("genbound.train._train"):\n', 'with mock.patch("genbound.training.train._train"):\n'),
    ("from genbound.peft_import import load_any, is_peft_dir\n",
     "from genbound.sources.source import load_any\nfrom genbound.sources.peft_import import is_peft_dir\n"),
    (">>> from genbound.compare import compare\n", ">>> from genbound.report.compare import compare\n"),
    ("see genbound/spectra.py and genbound/hessian/, not genbound/bounds/mi.py\n",
     "see genbound/diagnostics/spectra.py and genbound/diagnostics/hessian/, not genbound/bounds/mi.py\n"),
    ("monkeypatch.setattr(sweep, 'x', 1); monkeypatch.setattr('analysis.sweep._train_one', f)\n",
     "monkeypatch.setattr(sweep, 'x', 1); monkeypatch.setattr('analysis.runs._train_one', f)\n"),
    ("from genbound.bounds.mi import method_bound\n", "from genbound.bounds.mi import method_bound\n"),
])
def test_absolute_imports_names_and_paths(old, new):
    assert _rewrite(old) == new


@pytest.mark.parametrize("at, old, new", [
    # an old copy of a module that moved: its relative imports were written from genbound/
    ("genbound/diagnostics/spectra.py", "from .errors import GenboundError\nfrom .update import LayerUpdate\n",
     "from ..core.errors import GenboundError\nfrom ..methods.update import LayerUpdate\n"),
    ("genbound/sources/context.py", "from . import restore\nfrom .device import where\n",
     "from ..checkpoints import restore\nfrom ..core.device import where\n"),
    ("genbound/diagnostics/hessian/operator.py", "from ..device import where\nfrom .lanczos import lanczos\n",
     "from ...core.device import where\nfrom .lanczos import lanczos\n"),
    # a module that did not move, importing ones that did
    ("genbound/bounds/report.py", "from ..methods import get_method\nfrom ..context import context_for\n",
     "from ..methods.catalogue import get_method\nfrom ..sources.context import context_for\n"),
    # already in the new layout: untouched
    ("genbound/training/train.py", "from .. import __version__\nfrom ..methods import factors\n",
     "from .. import __version__\nfrom ..methods import factors\n"),
])
def test_relative_imports(at, old, new):
    assert _rewrite(old, at) == new


def test_every_rewritten_module_and_name_exists():
    # The tables point at modules and names that are there (an independent check: import them).
    for old, new in {**MAPPER.table, **MAPPER.names}.items():
        if new in MAPPER.table.values():
            importlib.import_module(new)
        else:
            module, _, name = new.rpartition(".")
            assert hasattr(importlib.import_module(module), name), f"{old} -> {new}: no such name"


def test_notebook_cells_are_rewritten(tmp_path):
    nb = {"cells": [{"cell_type": "code", "source": ["from genbound.train import train\n", "train()"],
                     "metadata": {}, "outputs": [], "execution_count": None}],
          "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    path = tmp_path / "a.ipynb"
    path.write_text(json.dumps(nb, indent=1) + "\n")
    assert rw.main([str(path)]) == 0
    cells = json.loads(path.read_text())["cells"]
    assert cells[0]["source"] == ["from genbound.training.train import train\n", "train()"]
    assert rw.main(["--check", str(path)]) == 0  # nothing left to change
