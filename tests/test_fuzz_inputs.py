"""Hostile inputs on the surfaces added after the checkpoint fuzz (issue 32, item 6): data files, model folders
and peft adapters on a model folder. Hypothesis mutates REAL inputs (a JSON Lines / CSV / Parquet file, a tiny
BERT folder that transformers saved, a LoRA adapter that peft saved for it) and each outcome must be one of two:
the input works (the model builds and gives finite logits; the data loads into splits with labels 0..C-1), or
one GenboundError of one line. Anything else, a hang past 10 s or memory growth past 2 GiB fails the test. The
counts are printed in ``make test``'s summary (tests/conftest.py), like the checkpoint fuzz's."""

from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_fuzz_checkpoints import Tally, _join_safetensors, _paths, _set, _split_safetensors, json_values

DATA_EXAMPLES = 120
MODEL_EXAMPLES = 120
PEFT_EXAMPLES = 120
SECONDS = 10
MAX_GROWTH = 2 << 30


class FastTally(Tally):
    seconds = SECONDS


SETTINGS = dict(deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny BERT folder, a labelled JSON Lines file for it, and a peft LoRA adapter saved for the folder."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    from genbound.models.tinymodels import WORDS, make_text_model

    root = tmp_path_factory.mktemp("fuzz-inputs")
    folder = make_text_model(root / "bert", "bert", num_labels=3)
    rng = __import__("random").Random(0)
    rows = [{"text": " ".join(rng.choice(WORDS) for _ in range(5)), "label": i % 3} for i in range(60)]
    data = root / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    base = AutoModelForSequenceClassification.from_pretrained(str(folder), local_files_only=True)
    pm = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"], task_type="SEQ_CLS"))
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    pm.save_pretrained(str(root / "adapter"))
    return {"folder": folder, "data": data, "rows": rows, "adapter": root / "adapter"}


@pytest.fixture(autouse=True)
def _no_token_cache(monkeypatch):
    monkeypatch.setenv("GENBOUND_CACHE", "off")  # every example tokenizes its own texts


def _finite(t: torch.Tensor, what: str) -> None:
    assert torch.isfinite(t).all(), f"{what}: non-finite values from an accepted input"


# -- data files -----------------------------------------------------------------------------------------------

hostile_labels = st.one_of(json_values, st.sampled_from([2**64 - 1, 2**63, -(2**63), 1e300, 10**9, 2**40, 0.5,
                                                         "", "x" * 1000, True, [], {}, [[1]]]))


@st.composite
def data_mutation(draw):
    kind = draw(st.sampled_from(["label-value", "label-column", "text-value", "bitflip", "truncate", "bad-utf8",
                                 "long-row", "csv", "parquet-label", "fifo", "drop-column", "deep-row",
                                 "few-rows", "many-labels"]))
    return kind, draw(st.randoms(use_true_random=False)), draw(hostile_labels)


def _write_data(d: Path, rows: list[dict], kind: str, rnd, value) -> tuple[Path, str]:
    rows = [dict(r) for r in rows]
    p = d / "data.jsonl"
    if kind == "label-value":
        for i in rnd.sample(range(len(rows)), rnd.choice([1, 3, len(rows)])):
            rows[i]["label"] = value
    elif kind == "label-column":
        for i, r in enumerate(rows):
            r["label"] = value if not isinstance(value, (int, float)) or isinstance(value, bool) else value + i % 2
    elif kind == "text-value":
        rows[rnd.randrange(len(rows))]["text"] = value
    elif kind == "drop-column":
        for r in rows:
            r.pop(rnd.choice(["text", "label"]), None)
    elif kind == "few-rows":
        rows = rows[: rnd.randrange(0, 6)]
    elif kind == "many-labels":
        rows = [{"text": f"t{i}", "label": rnd.choice([i, f"s{i}", i * 10**12])} for i in range(rnd.choice([50, 3000]))]
    if kind == "fifo":
        os.mkfifo(p)
        return p, kind
    if kind == "csv":
        import csv

        p = d / "data.csv"
        with open(p, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["text", "label"])
            for r in rows:
                w.writerow([r["text"], value if rnd.random() < 0.2 else r["label"]])
        if rnd.random() < 0.5:
            raw = bytearray(p.read_bytes())
            for _ in range(rnd.choice([1, 4])):
                raw[rnd.randrange(len(raw))] = rnd.randrange(256)
            p.write_bytes(bytes(raw))
        return p, f"csv:{_short(value)}"
    if kind == "parquet-label":
        import pyarrow as pa
        import pyarrow.parquet as pq

        p = d / "data.parquet"
        labels = [value if rnd.random() < 0.3 else r["label"] for r in rows]
        try:
            pq.write_table(pa.table({"text": [r["text"] for r in rows], "label": labels}), str(p))
        except (pa.ArrowException, OverflowError, TypeError, ValueError):  # not a table pyarrow writes: lists instead
            pq.write_table(pa.table({"text": [r["text"] for r in rows], "label": [[r["label"]] for r in rows]}), str(p))
        return p, f"parquet:{_short(value)}"
    text = "".join(json.dumps(r) + "\n" for r in rows).encode()
    if kind == "bitflip":
        raw = bytearray(text)
        for _ in range(rnd.choice([1, 2, 8])):
            raw[rnd.randrange(len(raw))] ^= 1 << rnd.randrange(8)
        text = bytes(raw)
    elif kind == "truncate":
        text = text[: rnd.randrange(len(text))]
    elif kind == "bad-utf8":
        at = rnd.randrange(len(text))
        text = text[:at] + rnd.choice([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf0\x28\x8c"]) + text[at:]
    elif kind == "long-row":
        text += json.dumps({"text": "word " * rnd.choice([300_000, 2_000_000]), "label": 1}).encode() + b"\n"
    elif kind == "deep-row":
        text += b'{"text": "x", "label": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n"
    p.write_bytes(text)
    return p, f"{kind}:{_short(value)}"


def _short(v) -> str:
    text = repr(v)
    return text if len(text) < 30 else text[:27] + "..."


def _use_data(path: Path, backbone) -> None:
    from genbound.data.datasets import FileDatasetSpec

    splits = FileDatasetSpec(str(path)).load(backbone, 0, 16, progress=False)
    c = splits.num_labels
    assert 2 <= c <= max(2, splits.info["examples"] // 2), c
    for part in (splits.train, splits.val, splits.test):
        assert int(part.labels.min()) >= 0 and int(part.labels.max()) < c


def _campaign(name: str, mutation, examples: int, trial, record_property) -> tuple[FastTally, int]:
    """Run ``examples`` hypothesis draws of ``mutation`` (kind, rnd, value); each gets a fresh temporary folder,
    in which ``trial(tmp, kind, rnd, value)`` writes its input and returns (what was done, the use to tally).
    Returns the tally and the memory growth it recorded."""
    tally = FastTally(name)

    @settings(max_examples=examples, **SETTINGS)
    @given(m=mutation)
    def one(m):
        with tempfile.TemporaryDirectory() as tmp:
            what, use = trial(Path(tmp), *m)
            tally.run(what, use)

    one()
    return tally, tally.finish(record_property)


def test_fuzzed_data_files_load_or_raise_one_line(world, record_property):
    from genbound.models.backbones import get_backbone

    backbone = get_backbone(str(world["folder"]))

    def trial(tmp, kind, rnd, value):
        path, what = _write_data(tmp, world["rows"], kind, rnd, value)
        return what, lambda: _use_data(path, backbone)

    tally, grown = _campaign("data files", data_mutation(), DATA_EXAMPLES, trial, record_property)
    assert tally.counts["refused"] > 0 and tally.counts["accepted"] > 0
    assert grown < MAX_GROWTH


# -- model folders ----------------------------------------------------------------------------------------------

SIZE_KEYS = ["hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "max_position_embeddings",
             "vocab_size", "type_vocab_size", "pad_token_id", "model_type", "architectures", "quantization_config",
             "layer_norm_eps", "hidden_act", "num_labels", "id2label", "torch_dtype", "dtype"]
HOSTILE_NUMBERS = [0, -1, 1, 3, 8192, 10**5, 10**9, 2**40, 1e9, 1e300, 0.5, "32", True, None, [32], {"a": 1}]


@st.composite
def model_mutation(draw):
    kind = draw(st.sampled_from(["config-set", "config-number", "config-delete", "config-bytes", "st-header-set",
                                 "st-header-length", "st-truncate", "st-bitflip", "st-drop", "no-tokenizer",
                                 "tokenizer-bytes", "sparse-claim", "fifo"]))
    return kind, draw(st.randoms(use_true_random=False)), draw(json_values)


def _mutate_folder(f: Path, kind: str, rnd, value) -> str:
    cfg_path, st_path = f / "config.json", f / "model.safetensors"
    if kind.startswith("config-") and kind != "config-bytes":
        cfg = json.loads(cfg_path.read_text())
        key = rnd.choice(SIZE_KEYS)
        if kind == "config-delete":
            cfg.pop(key, None)
        else:
            cfg[key] = value if kind == "config-set" else rnd.choice(HOSTILE_NUMBERS)
        cfg_path.write_text(json.dumps(cfg))
        return f"{kind}:{key}={_short(cfg.get(key))}"
    if kind == "config-bytes":
        raw = bytearray(cfg_path.read_bytes())
        for _ in range(rnd.choice([1, 3])):
            raw[rnd.randrange(len(raw))] = rnd.randrange(256)
        cfg_path.write_bytes(bytes(raw))
        return kind
    if kind == "no-tokenizer":
        for name in rnd.sample(["tokenizer.json", "vocab.txt", "tokenizer_config.json"], rnd.randrange(1, 4)):
            (f / name).unlink(missing_ok=True)
        return kind
    if kind == "tokenizer-bytes":
        p = f / "tokenizer.json"
        raw = bytearray(p.read_bytes())
        for _ in range(rnd.choice([1, 8])):
            raw[rnd.randrange(len(raw))] = rnd.randrange(256)
        p.write_bytes(bytes(raw))
        return kind
    if kind == "fifo":
        victim = f / rnd.choice(["tokenizer.json", "vocab.txt", "model.safetensors", "config.json"])
        victim.unlink(missing_ok=True)
        os.mkfifo(victim)
        return f"fifo:{victim.name}"
    data = st_path.read_bytes()
    if kind == "st-truncate":
        st_path.write_bytes(data[: rnd.randrange(len(data))])
        return kind
    if kind == "st-bitflip":
        raw = bytearray(data)
        for _ in range(rnd.choice([1, 8])):
            raw[rnd.randrange(min(len(raw), 4096))] ^= 1 << rnd.randrange(8)
        st_path.write_bytes(bytes(raw))
        return kind
    if kind == "st-header-length":
        st_path.write_bytes(struct.pack("<Q", rnd.choice([0, 7, 1 << 40, (1 << 64) - 1])) + data[8:])
        return kind
    header, body = _split_safetensors(data)
    keys = [k for k in header if k != "__metadata__"]
    key = rnd.choice(keys)
    if kind == "st-drop":
        from safetensors.torch import load_file, save_file

        t = load_file(str(st_path))
        drop = set(rnd.sample(sorted(t), rnd.choice([1, 3, len(t)])))
        save_file({k: v for k, v in t.items() if k not in drop}, str(st_path), metadata={"format": "pt"})
        return f"st-drop:{len(drop)}"
    if kind == "sparse-claim":
        n = rnd.choice([1 << 28, 1 << 33])
        header["extra.weight"] = {"dtype": "F32", "shape": [n // 4096, 4096],
                                  "data_offsets": [len(body), len(body) + 4 * n]}
        out = _join_safetensors(header, body)
        st_path.write_bytes(out)
        with open(st_path, "r+b") as fh:
            fh.truncate(len(out) + 4 * n)
        return f"sparse-claim:{n}"
    field = rnd.choice(["dtype", "shape", "data_offsets"])
    header[key][field] = value if rnd.random() < 0.5 else rnd.choice(
        [[1 << 40], [1 << 31, 1 << 31], [0], [-1, 4], [0, 1 << 60], "F64", "BOOL", "U8", [3, 5, 7]])
    st_path.write_bytes(_join_safetensors(header, body))
    return f"st-header-set:{field}"


def _use_model(folder: Path, task: str | None = None) -> None:
    from genbound.data.datasets import featurize
    from genbound.models.backbones import get_backbone

    bb = get_backbone(str(folder), task)
    model = bb.build(3, 0).eval()
    feats = featurize(["good cat", "a sad dog went home"], bb, 16)
    with torch.no_grad():
        _finite(model(**feats), "logits")


def test_fuzzed_model_folders_build_or_raise_one_line(world, record_property):
    def trial(tmp, kind, rnd, value):
        f = tmp / "model"
        shutil.copytree(world["folder"], f)
        return _mutate_folder(f, kind, rnd, value), lambda: _use_model(f)

    tally, grown = _campaign("model folders", model_mutation(), MODEL_EXAMPLES, trial, record_property)
    assert tally.counts["refused"] > 0
    assert grown < MAX_GROWTH


# -- peft adapters on a model folder ----------------------------------------------------------------------------

PEFT_EDITS = {
    "rank": lambda c: c.update(r=c["r"] + 1),
    "rank-float": lambda c: c.update(r=4.5),
    "alpha-zero": lambda c: c.update(lora_alpha=0),
    "alpha-huge": lambda c: c.update(lora_alpha=1e308),
    "targets-other": lambda c: c.update(target_modules=["key"]),
    "targets-regex-bomb": lambda c: c.update(target_modules="(a+)+b"),
    "rank-pattern": lambda c: c.update(rank_pattern={"query": 2}),
    "dora": lambda c: c.update(use_dora=True),
    "fan-in-fan-out": lambda c: c.update(fan_in_fan_out=True),
    "type": lambda c: c.update(peft_type="IA3"),
    "task-causal": lambda c: c.update(task_type="CAUSAL_LM"),
    "modules-to-save": lambda c: c.update(modules_to_save=["classifier", "bert.pooler"]),
    "base-model-dir": lambda c: c.update(base_model_name_or_path="/"),
}


@st.composite
def peft_mutation(draw):
    kind = draw(st.sampled_from(["json-set", "json-delete", "semantic", "st-header-set", "st-truncate", "st-bitflip",
                                 "values", "sparse-claim", "base-broken"]))
    return kind, draw(st.randoms(use_true_random=False)), draw(json_values)


def _mutate_adapter(ad: Path, base: Path, kind: str, rnd, value) -> str:
    cfg_path, st_path = ad / "adapter_config.json", ad / "adapter_model.safetensors"
    if kind in ("json-set", "json-delete", "semantic"):
        cfg = json.loads(cfg_path.read_text())
        if kind == "semantic":
            name = rnd.choice(sorted(PEFT_EDITS))
            PEFT_EDITS[name](cfg)
            what = f"semantic:{name}"
        else:
            path = rnd.choice([p for p in _paths(cfg) if p])
            cfg = _set(cfg, path, value, delete=kind == "json-delete")
            what = f"{kind}:{path}"
        cfg_path.write_text(json.dumps(cfg))
        return what
    if kind == "base-broken":
        return "base:" + _mutate_folder(base, rnd.choice(["config-number", "st-drop", "no-tokenizer"]), rnd, value)
    data = st_path.read_bytes()
    if kind == "st-truncate":
        st_path.write_bytes(data[: rnd.randrange(len(data))])
        return kind
    if kind == "st-bitflip":
        raw = bytearray(data)
        for _ in range(rnd.choice([1, 8])):
            raw[rnd.randrange(len(raw))] ^= 1 << rnd.randrange(8)
        st_path.write_bytes(bytes(raw))
        return kind
    header, body = _split_safetensors(data)
    key = rnd.choice([k for k in header if k != "__metadata__"])
    if kind == "values":
        start = header[key]["data_offsets"][0]
        v = rnd.choice([float("nan"), float("inf"), 3e38, 1e13])
        raw = data[: len(data) - len(body)] + body[:start] + struct.pack("<f", v) + body[start + 4:]
        st_path.write_bytes(raw)
        return f"values:{v}"
    if kind == "sparse-claim":
        n = 1 << 29
        header[key] = {"dtype": "F32", "shape": [n // 4096, 4096], "data_offsets": [len(body), len(body) + 4 * n]}
        out = _join_safetensors(header, body)
        st_path.write_bytes(out)
        with open(st_path, "r+b") as fh:
            fh.truncate(len(out) + 4 * n)
        return "sparse-claim"
    field = rnd.choice(["dtype", "shape", "data_offsets"])
    header[key][field] = value if rnd.random() < 0.5 else rnd.choice([[1 << 40], [0], [-1, 4], [3, 5, 7], "F64"])
    st_path.write_bytes(_join_safetensors(header, body))
    return f"st-header-set:{field}"


def _use_adapter(ad: Path, base: Path) -> None:
    from genbound.data.datasets import featurize
    from genbound.sources.peft_source import PeftSource

    src = PeftSource(ad, str(base))
    feats = featurize(["good cat", "a sad dog went home"], src.backbone, 16)
    for merged in (False, True):
        with torch.no_grad():
            _finite(src.build_model(merged=merged)(**feats), "logits")
    for name, u in src.layer_updates().items():
        _finite(u.singular_values(), f"singular values of {name}")


def test_fuzzed_peft_adapters_on_a_model_folder_build_or_raise_one_line(world, record_property):
    def trial(tmp, kind, rnd, value):
        ad, base = tmp / "adapter", tmp / "model"
        shutil.copytree(world["adapter"], ad)
        shutil.copytree(world["folder"], base)
        return _mutate_adapter(ad, base, kind, rnd, value), lambda: _use_adapter(ad, base)

    tally, grown = _campaign("peft adapters on model folders", peft_mutation(), PEFT_EXAMPLES, trial,
                             record_property)
    assert tally.counts["refused"] > 0 and tally.counts["accepted"] > 0
    assert grown < MAX_GROWTH
