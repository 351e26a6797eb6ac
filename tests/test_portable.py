"""Portable runs (genbound.checkpoints.provenance): a checkpoint records its model and data by absolute path and content
fingerprint; a run moved with its model and data is pointed at them with --backbone / --dataset and gives the
same losses; a different model or data file is refused naming both fingerprints; compare tells one model by
content, not by how each side names it.

Independent references: hashlib's sha256 of the files (the fingerprints), the losses recorded at training time
(the moved run's evaluation), and peft's own export read back (compare)."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest

from genbound.checkpoints.checkpoint import load_checkpoint, load_meta
from genbound.cli import main
from genbound.core.errors import CheckpointError
from genbound.models.tinymodels import make_causal_lm, make_text_model, make_texts_jsonl

MAX_LEN = 10


def _json(capsys, argv):
    capsys.readouterr()
    assert main(argv) == 0, argv
    return json.loads(capsys.readouterr().out)


def _sha(path) -> str:
    return "sha256:" + hashlib.sha256(open(path, "rb").read()).hexdigest()


def _labelled_csv(path, n=60):
    import random

    rng = random.Random(0)
    words = "good bad fine great awful nice poor happy sad".split()
    with open(path, "w") as fh:
        fh.write("text,label\n")
        for i in range(n):
            t = " ".join(rng.choice(words) for _ in range(5))
            fh.write(f"{t},{'pos' if i % 2 else 'neg'}\n")
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two runs trained from inside their folder with relative paths, then the folder moved elsewhere."""
    import os

    old = tmp_path_factory.mktemp("portable-old")
    make_causal_lm(old / "gpt2", "gpt2")
    make_texts_jsonl(old / "texts.jsonl", n=40)
    make_text_model(old / "bert", "bert")
    _labelled_csv(old / "labels.csv")
    cwd = os.getcwd()
    os.chdir(old)
    try:
        assert main(["train", "--method", "lora", "--task", "causal-lm", "--backbone", "gpt2", "--dataset",
                     "texts.jsonl", "--max-length", str(MAX_LEN), "--steps", "3", "--rank", "2", "--out", "lm",
                     "--no-progress"]) == 0
        assert main(["train", "--method", "cla", "--backbone", "bert", "--dataset", "labels.csv", "--max-length",
                     str(MAX_LEN), "--steps", "3", "--rank", "2", "--out", "cls", "--no-progress"]) == 0
        # A subspace run's settings come from the declared certificate grid (max length 32, not MAX_LEN).
        assert main(["train", "--method", "lora", "--backbone", "bert", "--dataset", "labels.csv", "--max-length",
                     "32", "--steps", "2", "--rank", "2", "--subspace-dim", "50", "--lr", "0.1", "--out",
                     "sub", "--no-progress"]) == 0
    finally:
        os.chdir(cwd)
    recorded = {name: load_meta(old / name) for name in ("lm", "cls")}
    new = tmp_path_factory.mktemp("portable-new") / "moved"
    shutil.move(str(old), str(new))  # the whole folder: runs, models and data
    return {"old": old, "new": new, "meta": recorded}


def test_paths_are_absolute_and_fingerprints_are_sha256(runs):
    old = runs["old"]
    for name, model, data in (("lm", "gpt2", "texts.jsonl"), ("cls", "bert", "labels.csv")):
        meta = runs["meta"][name]
        assert meta.backbone == str(old / model) and meta.dataset == str(old / data)
        assert meta.hyperparameters["backbone"] == str(old / model)
        src = meta.sources
        assert src["backbone"]["path"] == str(old / model) and src["dataset"]["path"] == str(old / data)
        # the data fingerprint is the file's sha256, equal to the dataset card's digest
        assert src["dataset"]["fingerprint"] == _sha(runs["new"] / data) == meta.dataset_card["digest"]
        files = src["backbone"]["files"]
        assert {"model.safetensors", "config.json", "tokenizer_config.json"} <= set(files)
        for f, digest in files.items():
            assert digest == _sha(runs["new"] / model / f)
        # the model fingerprint: sha256 over the sorted "name NUL digest LF" lines
        lines = b"".join(f.encode() + b"\0" + files[f].encode() + b"\n" for f in sorted(files))
        assert src["backbone"]["fingerprint"] == "sha256:" + hashlib.sha256(lines).hexdigest()
        assert meta.fingerprint == files["model.safetensors"]  # the weights file's own, as before


@pytest.mark.parametrize("name,model,data", [("lm", "gpt2", "texts.jsonl"), ("cls", "bert", "labels.csv")])
def test_moved_run_evaluates_to_the_recorded_losses(runs, name, model, data, capsys):
    new, meta = runs["new"], runs["meta"][name]
    run = str(new / name)
    assert main(["evaluate", run, "--json"]) == 2  # the recorded model folder is gone
    err = capsys.readouterr().err
    assert "not here (moved?)" in err and "--backbone" in err and meta.sources["backbone"]["fingerprint"] in err
    ev = _json(capsys, ["evaluate", run, "--backbone", str(new / model), "--dataset", str(new / data), "--json"])
    for split in ("train", "val", "test"):
        assert ev[f"{split}_loss"] == pytest.approx(meta.results[f"{split}_loss"], abs=1e-6)
        assert ev[f"{split}_accuracy"] == pytest.approx(meta.results[f"{split}_accuracy"], abs=1e-9)


def test_every_read_side_command_takes_the_new_places(runs, tmp_path, capsys):
    new = runs["new"]
    run = str(new / "cls")
    where = ["--backbone", str(new / "bert"), "--dataset", str(new / "labels.csv")]
    assert _json(capsys, ["spectra", run, *where, "--json", "--no-progress"])["layers"] > 0
    assert _json(capsys, ["bounds", run, *where, "--no-theorem", "--no-compression", "--json"])["reports"]
    assert _json(capsys, ["hessian", run, *where, "--top-k", "1", "--samples", "8", "--json", "--no-progress"])
    assert _json(capsys, ["landscape", run, *where, "--dims", "1", "--grid", "3", "--samples", "8", "--json",
                          "--no-progress"])
    exported = _json(capsys, ["export", run, *where, "--peft", str(tmp_path / "peft"), "--json"])
    assert exported["config"]["base_model_name_or_path"] == str((new / "bert").resolve())
    # compare a moved run with its own export: one model by content (the adapter names its folder by path)
    rep = _json(capsys, ["compare", str(tmp_path / "peft"), run, *where, "--json", "--no-progress"])
    assert not rep["banner"]
    cert = _json(capsys, ["certify", str(new / "sub"), *where, "--levels", "3", "--qat-steps", "0", "--json",
                          "--no-progress"])
    assert cert["source"]["backbone"] == str(new / "bert") and cert["source"]["dataset"] == str(new / "labels.csv")
    assert main(["certify", str(new / "sub"), "--levels", "3", "--qat-steps", "0", "--no-progress"]) == 2


def test_wrong_model_or_data_is_refused_naming_both_fingerprints(runs, tmp_path, capsys):
    new, meta = runs["new"], runs["meta"]["lm"]
    other = make_causal_lm(tmp_path / "other", "gpt2", seed=1)  # same architecture, other weights
    assert main(["evaluate", str(new / "lm"), "--backbone", str(other), "--dataset", str(new / "texts.jsonl"),
                 "--json"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    from genbound.checkpoints.provenance import model_fingerprint
    from genbound.models.backbones import get_backbone

    assert meta.sources["backbone"]["fingerprint"] in err
    assert model_fingerprint(get_backbone(str(other), "causal-lm")) in err
    assert "model.safetensors differs" in err
    texts = make_texts_jsonl(tmp_path / "texts.jsonl", n=40, seed=5)
    assert main(["evaluate", str(new / "lm"), "--backbone", str(new / "gpt2"), "--dataset", str(texts)]) == 2
    err = capsys.readouterr().err
    assert meta.sources["dataset"]["fingerprint"] in err and _sha(texts) in err
    # a changed config.json alone changes the model's fingerprint
    shutil.copytree(new / "gpt2", tmp_path / "edited")
    cfg = json.loads((tmp_path / "edited" / "config.json").read_text())
    cfg["layer_norm_epsilon"] = 1e-3
    (tmp_path / "edited" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="config.json differs"):
        load_checkpoint(new / "lm", str(tmp_path / "edited"))


def test_checkpoint_without_sources_still_loads_and_moves(runs, tmp_path, capsys):
    """A genbound.json written before ``sources`` (the key removed): it loads, and a move is checked against
    its weights fingerprint and its dataset card's digest."""
    new = runs["new"]
    old_style = tmp_path / "old-style"
    shutil.copytree(new / "cls", old_style)
    raw = json.loads((old_style / "genbound.json").read_text())
    del raw["sources"]
    (old_style / "genbound.json").write_text(json.dumps(raw))
    assert load_meta(old_style).sources == {}
    ev = _json(capsys, ["evaluate", str(old_style), "--backbone", str(new / "bert"), "--dataset",
                        str(new / "labels.csv"), "--json"])
    assert ev["test_loss"] == pytest.approx(runs["meta"]["cls"].results["test_loss"], abs=1e-6)
    other = make_text_model(tmp_path / "other-bert", "bert", seed=3)
    with pytest.raises(CheckpointError, match="weights fingerprint"):
        load_checkpoint(old_style, str(other))


def test_sources_are_validated(runs, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(runs["new"] / "cls", bad)
    raw = json.loads((bad / "genbound.json").read_text())
    raw["sources"]["backbone"]["path"] = "relative/bert"
    (bad / "genbound.json").write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match="not absolute"):
        load_meta(bad)
    raw["sources"]["backbone"]["path"] = "/abs/bert"
    raw["sources"]["backbone"]["fingerprint"] = "md5:1234"
    (bad / "genbound.json").write_text(json.dumps(raw))
    with pytest.raises(CheckpointError):
        load_meta(bad)


def test_fingerprint_cache_is_keyed_by_modification(tmp_path, monkeypatch):
    """A file rewritten in place is hashed again; an unchanged one is read from the disk cache."""
    import os

    from genbound.core import fingerprint as provenance  # the streamed, cached hashing provenance records with

    monkeypatch.setenv("GENBOUND_CACHE", str(tmp_path / "cache"))
    f = tmp_path / "data.csv"
    f.write_bytes(b"a,b\n1,2\n")
    assert provenance.file_sha256(f) == hashlib.sha256(b"a,b\n1,2\n").hexdigest()
    assert len(list((tmp_path / "cache" / "fingerprints").iterdir())) == 1
    provenance._digest.cache_clear()
    assert provenance.file_sha256(f) == hashlib.sha256(b"a,b\n1,2\n").hexdigest()  # from the disk entry
    f.write_bytes(b"a,b\n1,3\n")
    st = os.stat(f)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert provenance.file_sha256(f) == hashlib.sha256(b"a,b\n1,3\n").hexdigest()


def test_compare_decides_one_backbone_by_content(runs, tmp_path, capsys):
    """An adapter whose base_model_name_or_path names a copy of the run's model folder (another path, the same
    files) is on the run's backbone; a copy with other weights is not."""
    new = runs["new"]
    run = str(new / "cls")
    where = ["--backbone", str(new / "bert"), "--dataset", str(new / "labels.csv")]
    peft = tmp_path / "peft"
    _json(capsys, ["export", run, *where, "--peft", str(peft), "--json"])
    shutil.copytree(new / "bert", tmp_path / "bert-copy")
    cfg = json.loads((peft / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = str(tmp_path / "bert-copy")
    (peft / "adapter_config.json").write_text(json.dumps(cfg))
    from genbound.report.compare import mismatch
    from genbound.sources.source import load_source

    a = load_source(peft)
    b = load_source(run, str(new / "bert"), dataset=str(new / "labels.csv"))
    assert a.meta.backbone != b.meta.backbone and mismatch(a, b) is None
    make_text_model(tmp_path / "bert-other", "bert", seed=7)
    cfg["base_model_name_or_path"] = str(tmp_path / "bert-other")
    (peft / "adapter_config.json").write_text(json.dumps(cfg))
    assert "different backbones" in mismatch(load_source(peft), b)


def test_a_relative_path_is_the_same_option_as_its_absolute_path(tmp_path, monkeypatch):
    """Resuming, reusing a finished run and a sweep's reuse compare options: a relative model folder or data
    path and the absolute path training recorded are one option; registered names are compared as names."""
    from genbound.checkpoints.resume import config_difference

    monkeypatch.chdir(tmp_path)
    assert config_difference({"backbone": str(tmp_path / "gpt2")}, {"backbone": "gpt2"}) is None
    assert config_difference({"dataset": str(tmp_path / "t.jsonl")}, {"dataset": "./t.jsonl"}) is None
    assert config_difference({"dataset": str(tmp_path / "t.jsonl")}, {"dataset": "other.jsonl"}) is not None
    assert config_difference({"backbone": str(tmp_path / "minilm")}, {"backbone": "minilm"}) is not None
    assert config_difference({"seed": 1}, {"seed": "1"}) is not None
