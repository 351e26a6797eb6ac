"""Checkpoints written by genbound before the method objects (format version 1, commit ae2bb4c) still load.

tests/fixtures/format-v1 holds four small mlp checkpoints trained then (a chain with stored frozen A, a chain of
random column blocks, PaCA, LoRA+) and ``expected.json``: what that code computed from them (logits of the
rebuilt model on 16 test inputs, unmerged and merged, and ||dW||_F per layer).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from genbound.checkpoints.checkpoint import load_checkpoint
from genbound.diagnostics.evaluate import evaluate

ROOT = Path(__file__).parent / "fixtures" / "format-v1"
EXPECTED = json.loads((ROOT / "expected.json").read_text())


@pytest.mark.parametrize("method", sorted(EXPECTED))
def test_version1_checkpoint_loads_and_rebuilds_the_same_model(method):
    ck = load_checkpoint(ROOT / method)
    want = EXPECTED[method]
    x = ck.load_splits().test.features["x"][:16]
    with torch.no_grad():
        out = ck.build_model("cpu")(x=x)
        merged = ck.build_model("cpu", merged=True)(x=x)
    assert float(out.double().sum()) == pytest.approx(want["logits_sum"], rel=1e-6)
    assert float(merged.double().sum()) == pytest.approx(want["merged_logits_sum"], rel=1e-6)
    for name, u in ck.layer_updates().items():
        assert float(u.materialize().double().norm()) == pytest.approx(want["dW_fro"][name], rel=1e-6)
    splits = ck.load_splits()
    ev = evaluate(ck.build_model("cpu"), splits.test, 64, torch.device("cpu"), "test")
    assert ev.accuracy == ck.meta.results["test_accuracy"]
    assert ev.loss == pytest.approx(ck.meta.results["test_loss"], rel=1e-6)
