"""One comparison of a saved configuration with the current one, shared by resume, train and the sweep."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import pytest

from genbound.checkpoints.resume import check_config, config_difference
from genbound.core.errors import GenboundError
from genbound.training.train import TrainConfig


def test_config_difference_rules():
    saved = {"rank": 4, "targets": ["query", "value"], "device": "cuda", "progress": True, "lr": 0.01}
    assert config_difference(saved, {**saved, "targets": ("query", "value")}) is None  # as JSON stores it
    assert config_difference(saved, {**saved, "device": "cpu", "progress": False}) is None  # not what is computed
    assert config_difference(saved, {**saved, "lr": 0.02, "rank": 8}) == ("lr", 0.01, 0.02)  # first by name
    assert config_difference(saved, {**saved, "extra": 1}) == ("extra", None, 1)
    assert config_difference({**saved, "old": 1}, saved, keys=saved) is None  # keys limit the comparison


def test_every_caller_uses_it(tmp_path):
    from analysis.sweep import config_mismatch

    cfg = TrainConfig(method="lora", backbone="mlp", rank=4, steps=3)
    saved = {**asdict(cfg), "rank": 8, "recorded_only": 1, "device": "cuda"}
    assert config_mismatch(saved, cfg) == "rank=8 (this sweep: 4)"
    assert config_mismatch({**asdict(cfg), "recorded_only": 1}, cfg) is None
    with pytest.raises(GenboundError, match=r"rank=8, this run has rank=4.*overwrite=True"):
        check_config(saved, asdict(cfg), Path(tmp_path), keys=asdict(cfg))
    check_config({**asdict(cfg), "recorded_only": 1}, asdict(cfg), Path(tmp_path), keys=asdict(cfg))
