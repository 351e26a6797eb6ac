"""The package, the registries, offline loading, the split and the CLI's handling of bad input."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from genbound.cli import COMMANDS, main
from genbound.core.errors import GenboundError
from genbound.data.datasets import DatasetSpec, get_dataset, stratified_split
from genbound.data.evalset import EvalSet
from genbound.diagnostics.evaluate import evaluate
from genbound.models.backbones import get_backbone


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "genbound.cli", *args], capture_output=True, text=True, timeout=300)


def test_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out


def test_each_subcommand_has_help(capsys):
    for name in COMMANDS:
        with pytest.raises(SystemExit) as exc:
            main([name, "--help"])
        assert exc.value.code == 0
        assert "usage: genbound " + name in capsys.readouterr().out


def test_list_json_reports_sizes(capsys):
    assert main(["list", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    sizes = {d["name"]: d["examples"] for d in out["datasets"]}
    assert sizes == {"bbc": 2122, "bbc-raw": 2225, "digits": 896, "tweets": 37185}
    assert {b["name"] for b in out["backbones"]} == {"minilm", "paraphrase-minilm-l3", "mlp"}
    from genbound.methods.catalogue import METHODS

    assert [m["name"] for m in out["methods"]] == list(METHODS)
    assert {"vera", "pissa", "dora"} <= set(METHODS) and len(METHODS) >= 14


def test_split_is_deterministic_stratified_and_disjoint():
    labels = np.repeat(np.arange(5), [510, 386, 417, 511, 401])
    a = stratified_split(labels, seed=3)
    b = stratified_split(labels, seed=3)
    c = stratified_split(labels, seed=4)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert any(not np.array_equal(x, y) for x, y in zip(a, c))
    allidx = np.concatenate(a)
    assert len(allidx) == len(labels) == len(np.unique(allidx))
    for part, frac in zip(a, (0.7, 0.1, 0.2)):
        counts = np.bincount(labels[part], minlength=5)
        np.testing.assert_allclose(counts / np.bincount(labels), frac, atol=0.01)


def test_digits_split_and_sizes():
    bb = get_backbone("mlp")
    s1 = get_dataset("digits").load(bb, split_seed=0)
    s2 = get_dataset("digits").load(bb, split_seed=0)
    assert s1.sizes == {"train": 628, "val": 89, "test": 179}
    assert torch.equal(s1.train.labels, s2.train.labels) and torch.equal(s1.test.features["x"], s2.test.features["x"])
    assert s1.classes == ["5", "6", "7", "8", "9"]


def test_mlp_backbone_is_really_pretrained_on_the_source_task():
    from genbound.data.datasets import load_digits_raw

    bb = get_backbone("mlp")
    model = bb.build(5, seed=0)
    from safetensors.torch import load_file

    model.head.load_state_dict({k[5:]: v for k, v in load_file(str(bb.weights)).items() if k.startswith("head.")})
    x, y, _ = load_digits_raw(source=True)
    ev = evaluate(model, EvalSet({"x": torch.tensor(np.asarray(x))}, torch.tensor(y)))
    assert ev.accuracy > 0.95


def test_fingerprint_names_the_weights(tmp_path):
    bb = get_backbone("mlp")
    assert bb.fingerprint.startswith("sha256:") and len(bb.fingerprint) == 7 + 64
    other = tmp_path / "w.safetensors"
    other.write_bytes(bb.weights.read_bytes() + b" ")
    from genbound.core.fingerprint import file_fingerprint

    assert file_fingerprint(other) != bb.fingerprint


def test_adaptable_layers_and_bad_targets():
    bb = get_backbone("mlp")
    model = bb.build(5)
    assert bb.adaptable_layers(model) == ["fc1", "fc2"]
    with pytest.raises(GenboundError, match="choose from"):
        bb.adaptable_layers(model, ["nothing"])


def test_empty_dataset_is_an_error():
    spec = DatasetSpec("empty", "nothing", "digits", lambda: ([], np.zeros(0, dtype=np.int64), []))
    with pytest.raises(GenboundError, match="empty"):
        spec.load(get_backbone("mlp"))


def test_dataset_must_fit_backbone():
    with pytest.raises(GenboundError, match="does not fit"):
        get_dataset("bbc").load(get_backbone("mlp"))


@pytest.mark.parametrize(
    "args, needle",
    [
        (["train", "--method", "lora", "--backbone", "nope", "--out", "X"], "unknown backbone 'nope'"),
        (["train", "--method", "lora", "--backbone", "mlp", "--dataset", "nope", "--out", "X"], "unknown dataset"),
        (["train", "--method", "lora", "--backbone", "./not-a-folder", "--out", "X"], "neither a known name"),
        # argument types raise during parsing, before any command runs
        (["hessian", "X", "--samples", "abc"], "--samples must be a positive integer or 'all'"),
        (["landscape", "X", "--samples", "0"], "--samples must be a positive integer or 'all'"),
        (["hessian", "X", "--density-steps", "-3"], "expected a positive integer, got -3"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, needle):
    args = [a.replace("X", str(tmp_path / "out")) for a in args]
    proc = run_cli(*args)
    assert proc.returncode == 2
    assert needle in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_path_that_is_not_a_model_folder(tmp_path):
    (tmp_path / "model").mkdir()
    with pytest.raises(GenboundError, match="not a Hugging Face model folder"):
        get_backbone(str(tmp_path / "model"))


OFFLINE_SCRIPT = textwrap.dedent(
    """
    import socket
    def refuse(*a, **k):
        raise OSError("network disabled by the test")
    socket.socket.connect = refuse
    socket.socket.connect_ex = refuse
    socket.create_connection = refuse
    socket.getaddrinfo = refuse
    import torch
    from genbound.models.backbones import get_backbone
    from genbound.data.datasets import get_dataset
    bb = get_backbone("minilm")
    splits = get_dataset("bbc").load(bb, split_seed=0, max_length=32)
    model = bb.build(splits.num_labels, seed=0).eval()
    with torch.no_grad():
        logits = model(**{k: v[:4] for k, v in splits.test.features.items()})
    assert logits.shape == (4, 5), logits.shape
    print("OFFLINE-OK", splits.sizes)
    """
)


@pytest.mark.slow
def test_defaults_load_with_network_disabled():
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    env["HF_HUB_OFFLINE"] = "1"
    proc = subprocess.run([sys.executable, "-c", OFFLINE_SCRIPT], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "OFFLINE-OK {'train': 1486, 'val': 212, 'test': 424}" in proc.stdout  # BBC News deduplicated
