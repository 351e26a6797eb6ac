"""Hostile and careless inputs on the new surfaces (issue 32, items 3-5): model folders, data files, images, the
token cache, seeds. Each case of a corpus generated here is refused with one GenboundError line (exit 2 from
the CLI), or, where the issue says the input is fine, accepted with the right result."""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import shutil
import struct
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from genbound.core.errors import GenboundError
from genbound.models.backbones import get_backbone

sys.path.insert(0, str(Path(__file__).resolve().parent))

import rss  # noqa: E402  (tests/rss.py)

# -- helpers ----------------------------------------------------------------------------------------------


def cli(*argv: str) -> tuple[int, str, str]:
    from genbound.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(argv))
        except SystemExit as exc:  # argparse's own errors
            code = exc.code
    return code, out.getvalue(), err.getvalue()


def one_line(fn, match: str | None = None, seconds: float = 10.0) -> str:
    """``fn()`` raises one GenboundError of one line (matching ``match``) within ``seconds``."""
    t0 = time.process_time()  # CPU time: a loaded machine must not fail the check; a blocked read never returns
    with pytest.raises(GenboundError) as info:
        fn()
    assert time.process_time() - t0 < seconds
    text = str(info.value)
    assert "\n" not in text
    if match:
        assert __import__("re").search(match, text), text
    return text


@pytest.fixture(scope="module")
def bert(tmp_path_factory) -> Path:
    from genbound.models.tinymodels import make_text_model

    return make_text_model(tmp_path_factory.mktemp("m") / "bert", "bert")


def copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def edit_config(folder: Path, **changes) -> Path:
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(changes)
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def split_st(data: bytes):
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + n]), data[8 + n:]


def join_st(header: dict, body: bytes) -> bytes:
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + body


def drop_tensors(folder: Path, pred) -> None:
    """Rewrite model.safetensors without the tensors whose name satisfies ``pred`` (a partial file)."""
    from safetensors.torch import load_file, save_file

    t = load_file(str(folder / "model.safetensors"))
    save_file({k: v for k, v in t.items() if not pred(k)}, str(folder / "model.safetensors"), metadata={"format": "pt"})


# -- item 3: model folders validated before building ---------------------------------------------------------

MODEL_CASES = {
    # weights file
    "pickle": ("weights", lambda f: (f / "model.safetensors").write_bytes(
        b"\x80\x04\x95" + __import__("pickle").dumps({"w": list(range(10))})), "header claims|truncated|corrupt"),
    "truncated": ("weights", lambda f: (f / "model.safetensors").write_bytes(
        (f / "model.safetensors").read_bytes()[:5000]), "byte range|corrupt|truncated"),
    "empty": ("weights", lambda f: (f / "model.safetensors").write_bytes(b""), "truncated"),
    "1TiB-offsets": ("weights", lambda f: _claim(f, offsets=(0, 1 << 40)), "byte range"),
    "huge-tensor": ("weights", lambda f: _claim(f, shape=[1 << 31, 1 << 31]), "byte range|malformed"),
    "header-empty": ("weights", lambda f: (f / "model.safetensors").write_bytes(join_st({}, b"")), "describes a model"),
    # config sizes
    "hidden-1e9": ("config", lambda f: edit_config(f, hidden_size=1e9), "hidden_size"),
    "hidden-int-1e9": ("config", lambda f: edit_config(f, hidden_size=10**9), "hidden_size"),
    "hidden-8192": ("config", lambda f: edit_config(f, hidden_size=8192, num_attention_heads=4),
                    "describes a model of at least"),
    "layers-1e5": ("config", lambda f: edit_config(f, num_hidden_layers=100_000), "num_hidden_layers"),
    "positions-1e9": ("config", lambda f: edit_config(f, max_position_embeddings=10**9), "max_position_embeddings"),
    "vocab-1e9": ("config", lambda f: edit_config(f, vocab_size=10**9), "vocab_size"),
    "vocab-10x": ("config", lambda f: edit_config(f, vocab_size=300_000), "describes a model"),
    "heads-0": ("config", lambda f: edit_config(f, num_attention_heads=0), "num_attention_heads"),
    "heads-3": ("config", lambda f: edit_config(f, num_attention_heads=3), "multiple"),
    "intermediate-negative": ("config", lambda f: edit_config(f, intermediate_size=-64), "intermediate_size"),
    "hidden-string": ("config", lambda f: edit_config(f, hidden_size="32"), "hidden_size"),
    "hidden-bool": ("config", lambda f: edit_config(f, hidden_size=True), "hidden_size"),
    "text-config-bad": ("config", lambda f: edit_config(f, text_config={"hidden_size": -1}), "text_config"),
    "deep-config": ("config", lambda f: (f / "config.json").write_bytes(b'{"a":' * 100_000 + b"1" + b"}" * 100_000),
                    "not valid JSON"),
    "bad-utf8-config": ("config", lambda f: (f / "config.json").write_bytes(b'{"model_type": "\xff\xfe"}'),
                        "not valid JSON"),
    "nan-config": ("config", lambda f: (f / "config.json").write_text(
        (f / "config.json").read_text().replace('"hidden_size": 32', '"hidden_size": NaN')), "not valid JSON"),
    "bitsandbytes": ("config", lambda f: edit_config(f, quantization_config={"quant_method": "bitsandbytes",
                                                                             "load_in_8bit": True}), "quantized"),
    "gptq": ("config", lambda f: edit_config(f, quantization_config={"quant_method": "gptq", "bits": 4}),
             "quantized.*gptq"),
    "dtype-number": ("config", lambda f: edit_config(f, torch_dtype=0.5), "torch_dtype"),
    "hidden-null": ("config", lambda f: edit_config(f, hidden_size=None), "null"),
    "act-number": ("config", lambda f: edit_config(f, hidden_act=3), "hidden_act|configuration"),
    "config-fifo": ("config", lambda f: ((f / "config.json").unlink(), os.mkfifo(f / "config.json")),
                    "config.json"),
    "weights-fifo": ("weights", lambda f: ((f / "model.safetensors").unlink(), os.mkfifo(f / "model.safetensors")),
                     "model.safetensors"),
}


def _claim(folder: Path, shape=None, offsets=None) -> None:
    f = folder / "model.safetensors"
    header, body = split_st(f.read_bytes())
    key = next(k for k in header if k != "__metadata__")
    if shape is not None:
        header[key]["shape"] = shape
    if offsets is not None:
        header[key]["data_offsets"] = list(offsets)
    f.write_bytes(join_st(header, body))


@pytest.mark.parametrize("case", sorted(MODEL_CASES))
def test_hostile_model_folder_is_refused_before_building(bert, tmp_path, case):
    _, mutate, needle = MODEL_CASES[case]
    folder = copy_model(bert, tmp_path / case)
    mutate(folder)
    one_line(lambda: get_backbone(str(folder)).build(3, 0), needle)


def test_sparse_weights_claiming_more_than_memory_are_refused(bert, tmp_path):
    """A sparse file of more than this machine's memory whose header claims it all: refused from the header."""
    from genbound.models.checks import machine_memory

    folder = copy_model(bert, tmp_path / "sparse")
    f = folder / "model.safetensors"
    header, body = split_st(f.read_bytes())
    rows = machine_memory() // 4 // 4096 + 1
    n = rows * 4096
    header["huge"] = {"dtype": "F32", "shape": [rows, 4096], "data_offsets": [len(body), len(body) + 4 * n]}
    data = join_st(header, body)
    f.write_bytes(data)
    with open(f, "r+b") as fh:
        fh.truncate(len(data) + 4 * n)
    one_line(lambda: get_backbone(str(folder)), "claims? .* GiB")


def test_cli_exits_2_with_one_line_for_a_quantized_folder(bert, tmp_path):
    folder = edit_config(copy_model(bert, tmp_path / "q"), quantization_config={"quant_method": "gptq"})
    data = tmp_path / "d.csv"
    from genbound.models.tinymodels import make_pairs_csv

    make_pairs_csv(data)
    code, _, err = cli("train", "--method", "lora", "--backbone", str(folder), "--dataset", str(data),
                       "--text-columns", "s1,s2", "--out", str(tmp_path / "out"), "--steps", "1")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "quantized" in err, err


def test_estimate_is_a_lower_bound_of_real_models(tmp_path):
    """The parameter estimate never exceeds the parameters transformers builds (else genuine folders would be
    refused): checked against the built models of every tiny kind."""
    from transformers import AutoModelForSequenceClassification

    from genbound.models.checks import ConfigSizes, estimate_parameters
    from genbound.models.tinymodels import TEXT_KINDS, _config

    for kind in TEXT_KINDS:
        cfg = _config(kind, 1000, 0, 2)
        model = AutoModelForSequenceClassification.from_config(cfg)
        built = sum(p.numel() for p in model.parameters())
        est = estimate_parameters(ConfigSizes.model_validate(cfg.to_dict()), cfg.model_type)
        assert 0.5 * built < est <= built, (kind, est, built)


# -- item 5: weights that do not cover the model, a missing tokenizer ----------------------------------------


def test_partial_weights_are_refused_never_trained_from_random_values(bert, tmp_path):
    folder = copy_model(bert, tmp_path / "partial")
    drop_tensors(folder, lambda k: ".layer.1.attention.self.query." in k)
    text = one_line(lambda: get_backbone(str(folder)).build(3, 0), "lacks 2 of")
    assert "query" in text


def test_wrong_shape_weights_are_refused(bert, tmp_path):
    folder = edit_config(copy_model(bert, tmp_path / "shape"), intermediate_size=48)
    one_line(lambda: get_backbone(str(folder)).build(3, 0), "shape")


def test_the_new_head_alone_may_be_drawn(bert, tmp_path):
    """A base model saved without its classifier (BertModel) still builds: only the task head is new."""
    from transformers import AutoModel

    base = tmp_path / "base"
    AutoModel.from_pretrained(str(bert)).save_pretrained(base)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (bert / name).exists():
            shutil.copy(bert / name, base / name)
    model = get_backbone(str(base)).build(3, 0)
    ref = AutoModel.from_pretrained(str(bert))
    got = dict(model.backbone.bert.named_parameters())
    for name, p in ref.named_parameters():
        assert torch.equal(got[name], p), name  # every pretrained weight loaded, none drawn


def test_pooled_and_causal_builds_refuse_missing_weights(tmp_path):
    from genbound.models.tinymodels import make_causal_lm

    folder = make_causal_lm(tmp_path / "lm")
    get_backbone(str(folder), "causal-lm").build(2, 0)  # complete: builds
    drop_tensors(folder, lambda k: k.endswith("h.0.mlp.c_fc.weight"))
    one_line(lambda: get_backbone(str(folder), "causal-lm").build(2, 0), "lacks 1 of")


def test_folder_without_tokenizer_is_refused(bert, tmp_path):
    folder = copy_model(bert, tmp_path / "notok")
    for name in ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        (folder / name).unlink(missing_ok=True)
    one_line(lambda: get_backbone(str(folder)).tokenizer(), "no tokenizer")


def test_special_tokens_only_vocabulary_is_refused(bert, tmp_path):
    folder = copy_model(bert, tmp_path / "tiny-vocab")
    (folder / "tokenizer.json").unlink(missing_ok=True)
    (folder / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n")
    one_line(lambda: get_backbone(str(folder)).tokenizer(), "all special")


def test_vision_folder_without_processor_is_refused(tmp_path):
    from genbound.models.tinymodels import make_vit

    folder = make_vit(tmp_path / "vit")
    (folder / "preprocessor_config.json").unlink()
    one_line(lambda: get_backbone(str(folder)).image_features([]), "no image processor")


# -- item 4: data files -----------------------------------------------------------------------------------------


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _parquet(path: Path, columns: dict) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table(columns), str(path))
    return path


TEXTS = [f"text number {i}" for i in range(40)]


def _fifo(p: Path) -> Path:
    os.mkfifo(p)
    return p


DATA_CASES = {
    "jsonl-bad-utf8": (lambda d: (d / "a.jsonl").write_bytes(b'{"text": "ok", "label": 0}\n{"text": "\xff\xfe", '
                                                          b'"label": 1}\n') and d / "a.jsonl", "line 2 .*UTF-8"),
    "csv-bad-utf8": (lambda d: (d / "a.csv").write_bytes(b"text,label\nfine,0\n\xc3\x28,1\n") and d / "a.csv",
                     "line 3 .*UTF-8"),
    "labels-lists": (lambda d: _parquet(d / "a.parquet", {"text": TEXTS, "label": [[i % 2, 1] for i in range(40)]}),
                     "holds lists"),
    "labels-maps": (lambda d: _parquet(d / "a.parquet", {"text": TEXTS, "label": [{"a": i % 2} for i in range(40)]}),
                    "holds maps"),
    "labels-inf": (lambda d: _parquet(d / "a.parquet", {"text": TEXTS, "label": [0.0] * 39 + [math.inf]}),
                   r"label inf "),
    "labels-nan": (lambda d: _parquet(d / "a.parquet", {"text": TEXTS, "label": [0.0] * 39 + [math.nan]}),
                   r"label nan "),
    "labels-fraction": (lambda d: _parquet(d / "a.parquet", {"text": TEXTS, "label": [0.5, 1.0] * 20}),
                        "non-integer"),
    "labels-uint64": (lambda d: _parquet(d / "a.parquet", {"text": TEXTS, "label": __import__("pyarrow").array(
        [0, 2**64 - 1] * 20, type=__import__("pyarrow").uint64())}), "label 18446744073709551615 "),
    "labels-only-class-1": (lambda d: _jsonl(d / "a.jsonl", [{"text": t, "label": 1} for t in TEXTS]), "one class"),
    "labels-mixed": (lambda d: _jsonl(d / "a.jsonl", [{"text": t, "label": [1, "x"][i % 2]}
                                                      for i, t in enumerate(TEXTS)]), "changed from number to string"),
    "labels-negative": (lambda d: _jsonl(d / "a.jsonl", [{"text": t, "label": i % 2 - 1} for i, t in enumerate(TEXTS)]),
                        "label -1"),
    "labels-all-distinct": (lambda d: _jsonl(d / "a.jsonl", [{"text": t, "label": f"c{i}"}
                                                             for i, t in enumerate(TEXTS)]), "40 distinct values"),
    "fifo": (lambda d: _fifo(d / "a.csv"), "FIFO"),
    "device": (lambda d: Path("/dev/zero"), "device"),
    "deep-dataset-dict": (lambda d: _deep_datasets(d), "not valid JSON"),
    "arrow-fifo": (lambda d: _arrow_fifo(d), "FIFO"),
}


def _datasets_folder(d: Path) -> Path:
    import datasets

    out = d / "ds"
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": TEXTS, "label": [i % 2 for i in range(40)]}),
                          "test": datasets.Dataset.from_dict({"text": TEXTS[:10], "label": [0, 1] * 5})}
                         ).save_to_disk(str(out))
    return out


def _deep_datasets(d: Path) -> Path:
    out = _datasets_folder(d)
    (out / "dataset_dict.json").write_bytes(b'{"splits": ' + b"[" * 200_000 + b"]" * 200_000 + b"}")
    return out


def _arrow_fifo(d: Path) -> Path:
    out = _datasets_folder(d)
    arrow = next((out / "train").glob("*.arrow"))
    arrow.unlink()
    os.mkfifo(arrow)
    return out


@pytest.mark.parametrize("case", sorted(DATA_CASES))
def test_hostile_data_file_is_refused_in_one_line(tmp_path, case):
    from genbound.data.datafiles import read_data

    make, needle = DATA_CASES[case]
    path = make(tmp_path)
    one_line(lambda: read_data(path), needle)


def test_integer_labels_are_the_values_the_data_holds(tmp_path):
    from genbound.data.datafiles import read_data

    big = read_data(_jsonl(tmp_path / "a.jsonl", [{"text": t, "label": [10**9, 2**40][i % 2]}
                                                  for i, t in enumerate(TEXTS)]))
    assert big.classes == [str(10**9), str(2**40)] and big.labels.tolist() == [0, 1] * 20
    assert big.card["classes"] == big.classes
    kept = read_data(_jsonl(tmp_path / "b.jsonl", [{"text": t, "label": i % 3} for i, t in enumerate(TEXTS)]))
    assert kept.classes == ["0", "1", "2"] and kept.labels.tolist() == [i % 3 for i in range(40)]
    gap = read_data(_jsonl(tmp_path / "c.jsonl", [{"text": t, "label": [1, 4][i % 2]} for i, t in enumerate(TEXTS)]))
    assert gap.classes == ["1", "4"] and gap.labels.tolist() == [0, 1] * 20


def test_many_distinct_labels_are_refused_fast(tmp_path):
    """2 M distinct integer labels and 100 k string labels: refused with the count in seconds, not hung."""
    from genbound.data.checks import labels_from_values

    # Process CPU time, not wall time: a shared machine's load must not fail the check (it hung past 60 s).
    t0 = time.process_time()
    one_line(lambda: labels_from_values(list(range(2_000_000)), "label", None, "x"), "2000000 distinct")
    one_line(lambda: labels_from_values([f"s{i}" for i in range(100_000)], "label", None, "x"), "100000 distinct")
    assert time.process_time() - t0 < 10


def test_a_10_mb_row_is_read(tmp_path):
    from genbound.data.datafiles import read_data

    rows = [{"text": t, "label": i % 2} for i, t in enumerate(TEXTS)]
    rows[3]["text"] = "word " * 2_000_000
    data = read_data(_jsonl(tmp_path / "a.jsonl", rows))
    assert len(data.examples[3]) == 10_000_000 and len(data.examples) == 40


def _png_header(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def _tiff_header(width: int, height: int) -> bytes:
    entries = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1),
               (273, 4, 1, 8), (277, 3, 1, 1), (278, 4, 1, height), (279, 4, 1, 1)]
    ifd = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHII", *e) for e in entries) + struct.pack("<I", 0)
    return b"II*\0" + struct.pack("<I", 8 + 1) + b"\0" + ifd


@pytest.mark.parametrize("case", ["png-9e8", "tiff-1e10", "fifo", "garbage"])
def test_hostile_image_is_one_line(tmp_path, case):
    from genbound.data.checks import open_image

    p = tmp_path / ("x.tif" if case.startswith("tiff") else "x.png")
    if case == "png-9e8":
        p.write_bytes(_png_header(30_000, 30_000))
    elif case == "tiff-1e10":
        p.write_bytes(_tiff_header(100_000, 100_000))
    elif case == "fifo":
        os.mkfifo(p)
    else:
        p.write_bytes(b"\x89PNG garbage")
    one_line(lambda: open_image(p), {"fifo": "FIFO", "garbage": "not a readable image"}.get(case, "pixels"))


@pytest.mark.parametrize("length", [131, 100_000, 1_000_000_000])
def test_max_length_above_the_positions_is_refused_for_model_folders(bert, length):
    from genbound.data.datasets import featurize

    one_line(lambda: featurize(["a text"], get_backbone(str(bert)), length), f"--max-length {length} exceeds the 130")


def test_max_length_at_the_positions_is_accepted(bert):
    from genbound.data.datasets import featurize

    out = featurize(["a text"], get_backbone(str(bert)), 130)
    assert tuple(out["input_ids"].shape) == (1, 130)


@pytest.mark.parametrize("argv", [
    ("train", "--split-seed", "-1"), ("train", "--seed", str(2**70)), ("certify", "x", "--qat-lr", "nan"),
    ("certify", "x", "--qat-lr", "inf"), ("certify", "x", "--qat-lr", "-1"), ("certify", "x", "--seed", str(2**70)),
    ("landscape", "x", "--seed", "-3"),
])
def test_bad_numbers_are_refused_at_parse_time(argv, tmp_path):
    code, _, err = cli(*argv, *(["--out", str(tmp_path / "o")] if argv[0] == "train" else []))
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("genbound: error:"), err


# -- item 5: the token cache is an optimisation ---------------------------------------------------------------


def test_corrupt_cache_entry_is_rebuilt_and_unwritable_cache_skipped(bert, tmp_path, monkeypatch):
    from genbound.data import tokcache
    from genbound.data.datasets import featurize

    monkeypatch.setenv("GENBOUND_CACHE", str(tmp_path / "cache"))
    backbone = get_backbone(str(bert))
    texts = ["one text", "another text"]
    want = featurize(texts, backbone, 16)
    entries = list((tmp_path / "cache" / "tokens").glob("*.safetensors"))
    assert len(entries) == 1
    entry = entries[0]
    claim = join_st({"input_ids": {"dtype": "I64", "shape": [1 << 40], "data_offsets": [0, 8 << 40]}}, b"")
    for damage in (b"", b"\x00" * 50, entry.read_bytes()[:40], claim):
        entry.write_bytes(damage)
        got = featurize(texts, backbone, 16)
        assert torch.equal(got["input_ids"], want["input_ids"])
        assert torch.equal(tokcache._read_entry(entry, 2, 16)["input_ids"], want["input_ids"])  # rewritten
    entry.unlink()
    entry.mkdir()  # a folder in the entry's place
    with pytest.warns(RuntimeWarning, match="token cache skipped"):
        got = featurize(texts, backbone, 16)
    assert torch.equal(got["input_ids"], want["input_ids"])

    def full_disk(*a, **k):
        raise OSError(28, "No space left on device")

    entry.rmdir()
    monkeypatch.setattr("safetensors.torch.save_file", full_disk)
    with pytest.warns(RuntimeWarning, match="token cache skipped"):
        got = featurize(texts, backbone, 16)
    assert torch.equal(got["input_ids"], want["input_ids"])
    np.testing.assert_array_equal(got["attention_mask"].numpy(), want["attention_mask"].numpy())


# -- certify on edited hyperparameters -------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["abc", [64], {"d": 64}, 1.5, True, -3, 10**30])
def test_certify_refuses_an_edited_subspace_dim_in_one_line(ckpt_dir, tmp_path, value):
    src = ckpt_dir("lora", subspace_dim=64, steps=4)
    ck = tmp_path / "ck"
    shutil.copytree(src, ck)
    meta = json.loads((ck / "genbound.json").read_text())
    meta["hyperparameters"]["subspace_dim"] = value
    (ck / "genbound.json").write_text(json.dumps(meta))
    code, _, err = cli("certify", str(ck), "--levels", "3", "--qat-steps", "1", "--no-progress")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "subspace" in lines[0], err


# -- estimates before allocating: a sparse adapter without a base, a huge landscape grid ------------------------


def test_sparse_adapter_without_a_base_is_refused_before_allocating(tmp_path):

    from peft import LoraConfig, get_peft_model

    from genbound.sources.peft_import import load_peft

    torch.manual_seed(0)
    pm = get_peft_model(get_backbone("mlp").build(5, 0), LoraConfig(r=4, lora_alpha=8, target_modules=["fc1"]))
    pm.save_pretrained(tmp_path / "ad")
    f = tmp_path / "ad" / "adapter_model.safetensors"
    header, body = split_st(f.read_bytes())
    n = 1 << 29  # 2 GiB of float32
    header["base_model.model.fc2.lora_A.weight"] = {"dtype": "F32", "shape": [1 << 16, 1 << 13],
                                                    "data_offsets": [len(body), len(body) + 4 * n]}
    data = join_st(header, body)
    f.write_bytes(data)
    with open(f, "r+b") as fh:
        fh.truncate(len(data) + 4 * n)
    before = rss.start()
    one_line(lambda: load_peft(tmp_path / "ad", None, resolve=False), "sparse file")
    assert rss.peak() - before < 256 << 20


def test_huge_landscape_grid_is_refused_before_allocating():
    from genbound.diagnostics.landscape.grid import check_grid

    assert check_grid(2001) == 2001
    one_line(lambda: check_grid(70_001), "points in 2-D")


@pytest.mark.parametrize("kind", ["bert", "gpt2", "llama"])
def test_cutting_long_texts_keeps_the_first_tokens_exactly(tmp_path, kind):
    """The cut of a very long text changes none of the kept tokens: checked against the tokenizer on the whole
    text, for WordPiece, byte-level BPE and SentencePiece-style tokenizers, including texts the cut must keep
    whole (a long whitespace run, a giant word)."""
    import random

    from transformers import AutoTokenizer

    from genbound.data.checks import cut_long_texts
    from genbound.models.tinymodels import WORDS, make_causal_lm, make_text_model

    folder = (make_causal_lm if kind != "bert" else make_text_model)(tmp_path / kind, kind)
    tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    rng = random.Random(0)
    words = " ".join(rng.choice(WORDS + ["naïve", "x" * 150, "3.14", "don't"]) for _ in range(6000))
    texts = [words, " " * 9000 + words, "y" * 12000 + " " + words, words[:3000], "tail " + words + "\n\t" * 3000]
    for max_length in (16, 40):
        cut = cut_long_texts(texts, tok, max_length)
        assert cut[0] != texts[0] and cut[1] == texts[1] and cut[2] == texts[2]  # cut only where provable
        want = tok(texts, truncation=True, max_length=max_length, padding="max_length")["input_ids"]
        got = tok(cut, truncation=True, max_length=max_length, padding="max_length")["input_ids"]
        assert got == want


# -- analysis: lock and cache files ------------------------------------------------------------------------------


def test_lock_of_another_host_without_heartbeat_is_reported_not_waited_for(tmp_path):
    from analysis import locks

    lock = tmp_path / ".run.sweep.lock"
    lock.write_text(json.dumps({"host": "elsewhere.invalid", "pid": 4242, "start": "1"}))
    text = one_line(lambda: locks.try_acquire(lock), "pid 4242 on host 'elsewhere.invalid'")
    assert f"delete {lock}" in text and lock.exists()  # nothing taken over behind the user's back
    lock.unlink()  # what the message says to do
    assert locks.try_acquire(lock)
    locks.release(lock)


@pytest.mark.parametrize("content", [b"\xff\xfe{", b"[" * 100_000 + b"]" * 100_000, b'{"pid": "x", "host": [1]}',
                                     b'["not", "a", "record"]', b""])
def test_garbage_lock_files_are_taken_over(tmp_path, content):
    from analysis import locks

    lock = tmp_path / ".run.sweep.lock"
    lock.write_bytes(content)
    old = time.time() - 60
    os.utime(lock, (old, old))  # not a lock being written right now
    assert locks.try_acquire(lock)
    assert locks.read_owner(lock)["pid"] == os.getpid()
    locks.release(lock)


def test_folder_in_a_lock_or_cache_place_is_one_line(tmp_path):
    from analysis import locks
    from analysis.sweep import read_cache

    (tmp_path / "lock").mkdir()
    one_line(lambda: locks.try_acquire(tmp_path / "lock"), "not a file")
    (tmp_path / "cache.json").mkdir()
    one_line(lambda: read_cache(tmp_path / "cache.json", {"k": 1}, "value"), "is a folder")


@pytest.mark.parametrize("content", [b"\xff\xfe{", b"[" * 100_000 + b"]" * 100_000,
                                     b'{"key": {"k": 1}, "value": "abc"}', b'{"key": {"k": 1}, "value": [1, 2]}',
                                     b'{"key": {"k": 2}, "value": {}}'])
def test_garbage_cache_files_mean_compute_again(tmp_path, content):
    from analysis.sweep import read_cache

    cache = tmp_path / "c.json"
    cache.write_bytes(content)
    assert read_cache(cache, {"k": 1}, "value") is None
    cache.write_text(json.dumps({"key": {"k": 1}, "value": {"x": 1.5}}))
    assert read_cache(cache, {"k": 1}, "value")["value"] == {"x": 1.5}


# -- the same causes through the CLI: exit 2, one line ---------------------------------------------------------


def _cli_partial(folder: Path) -> None:
    drop_tensors(folder, lambda k: ".layer.0." in k)


def _cli_no_tokenizer(folder: Path) -> None:
    for name in ("tokenizer.json", "vocab.txt"):
        (folder / name).unlink(missing_ok=True)


CLI_CASES = {
    "partial-weights": (_cli_partial, None, (), "lacks"),
    "no-tokenizer": (_cli_no_tokenizer, None, (), "no tokenizer"),
    "hidden-string": (lambda f: edit_config(f, hidden_size="32"), None, (), "hidden_size"),
    "data-fifo": (None, lambda p: (p.unlink(), os.mkfifo(p)), (), "FIFO"),
    "data-bad-utf8": (None, lambda p: p.write_bytes(p.read_bytes() + b"\xff\xfe,1,train\n"), (), "UTF-8"),
    "max-length": (None, None, ("--max-length", "1000000000"), "exceeds the 130 positions"),
    "split-seed": (None, None, ("--split-seed", "-1"), "seed"),
}


@pytest.mark.parametrize("case", sorted(CLI_CASES))
def test_train_cli_exits_2_with_one_line(bert, tmp_path, case):
    from genbound.models.tinymodels import make_pairs_csv

    edit_model, edit_data, extra, needle = CLI_CASES[case]
    folder = copy_model(bert, tmp_path / "model")
    if edit_model:
        edit_model(folder)
    data = make_pairs_csv(tmp_path / "pairs.csv")
    if edit_data:
        edit_data(data)
    t0 = time.process_time()
    code, _, err = cli("train", "--method", "lora", "--backbone", str(folder), "--dataset", str(data),
                       "--text-columns", "s1,s2", "--split-column", "split", "--steps", "1", "--no-progress",
                       "--out", str(tmp_path / "out"), *extra)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("genbound: error:") and needle in lines[0], err
    assert time.process_time() - t0 < 10
