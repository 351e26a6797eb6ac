"""Hostile checkpoints (issue 9): hypothesis mutates REAL checkpoints and checks the only two outcomes.

Sources: genbound checkpoints of four methods trained on the mlp backbone (lora with a trajectory, asym
with a frozen A, rc3la with a chain of column blocks, fft with every parameter) and a peft LoRA adapter
that peft itself saved for the same backbone (safetensors, and a legacy pickle ``adapter_model.bin``).

Mutations: truncation, bit flips (biased towards the headers), overwritten / inserted / deleted spans,
garbage appended, emptied or deleted files; JSON edits of ``genbound.json``, ``adapter_config.json`` and
the safetensors header (a field set to a value of another type, huge, negative, deleted or added) written
back so that the file still parses; semantic edits that keep the file valid but wrong (a layer the
backbone lacks, a class list of the wrong length, another seed, so that frozen factors no longer match,
a huge rank, another method or dataset); tensor values set to NaN, Inf or 3e38.

Oracle: either the checkpoint loads, its layer updates have finite spectra, its model builds and
evaluates to a finite loss on the recorded split (and its trajectory, if any, loads), or one GenboundError
is raised. Anything else (another exception, a hang past the alarm, memory growth) fails the test.
"""

from __future__ import annotations

import json
import math
import os
import resource
import shutil
import signal
import struct
import tempfile
import time
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from genbound.checkpoint import load_checkpoint
from genbound.errors import GenboundError
from genbound.evaluate import evaluate
from genbound.peft_import import load_peft
from genbound.testing import make_checkpoint

MAX_EXAMPLES = 200
PER_EXAMPLE_SECONDS = 20  # an alarm, so a hang fails instead of blocking the suite


class Hang(Exception):
    pass


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    from peft import LoraConfig, get_peft_model

    from genbound.backbones import get_backbone
    from genbound.datasets import get_dataset

    root = tmp_path_factory.mktemp("fuzz-sources")
    out = {
        "lora": make_checkpoint(root, "lora", steps=12, save_trajectory=True, trajectory_every=6),
        "asym": make_checkpoint(root, "asym", steps=8),
        "rc3la": make_checkpoint(root, "rc3la", steps=9),
        "fft": make_checkpoint(root, "fft", steps=6),
    }
    torch.manual_seed(0)
    model = get_backbone("mlp").build(5, 0)
    pm = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["fc1", "fc2"]))
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    pm.save_pretrained(root / "peft")
    pm.save_pretrained(root / "peft-bin", safe_serialization=False)
    out["peft"], out["peft-bin"] = root / "peft", root / "peft-bin"
    splits = get_dataset("digits").load(get_backbone("mlp"), 0, 128)
    return out, splits


# -- mutations -------------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.sampled_from([0, -1, 1, 2**31, 2**63, 10**30])
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12)
    | st.sampled_from(["fc1", "fc9", "nope", "lora", "fft", "float64", "int8", "bbc", "F32", "I64", "U8"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)


def _paths(obj, prefix=()):
    """Every (path) to a value inside a JSON document."""
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj[:6]):
            yield from _paths(v, (*prefix, i))


def _set(obj, path, value, delete=False):
    if not path:
        return value
    parent = obj
    for p in path[:-1]:
        parent = parent[p]
    if delete:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return obj


def _split_safetensors(data: bytes):
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + n]), data[8 + n:]


def _join_safetensors(header, body: bytes) -> bytes:
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + body


SEMANTIC = {
    "layer-not-in-backbone": lambda m: m["layers"][0].update(name="fc9"),
    "layer-renamed-to-head": lambda m: m["layers"][0].update(name="head"),
    "classes-too-short": lambda m: m.update(classes=m["classes"][:-1]),
    "classes-other": lambda m: m.update(classes=list(reversed(m["classes"]))),
    "seed-changed": lambda m: m.update(seed=m["seed"] + 1),
    "split-seed-changed": lambda m: m.update(split_seed=m["split_seed"] + 1),
    "huge-rank": lambda m: m.update(rank=1 << 39),
    "rank-doubled": lambda m: m.update(rank=m["rank"] * 2),
    "chain-up": lambda m: m.update(chain=m["chain"] + 1),
    "method-lora": lambda m: m.update(method="lora"),
    "method-asym": lambda m: m.update(method="asym"),
    "method-c3la": lambda m: m.update(method="c3la"),
    "method-fft": lambda m: m.update(method="fft"),
    "dataset-bbc": lambda m: m.update(dataset="bbc"),
    "backbone-minilm": lambda m: m.update(backbone="minilm"),
    "backbone-path": lambda m: m.update(backbone="/"),
    "fingerprint": lambda m: m.update(fingerprint="sha256:" + "0" * 64),
    "num-labels-huge": lambda m: m.update(num_labels=1 << 40),
    "layer-dims-swapped": lambda m: m["layers"][0].update(out_features=m["layers"][0]["in_features"],
                                                          in_features=m["layers"][0]["out_features"]),
    "n-train": lambda m: m.update(n_train=m["n_train"] + 1),
    "dtype-f64": lambda m: m.update(dtype="float64"),
    "dtype-f16": lambda m: m.update(dtype="float16"),
    "trajectory-steps": lambda m: m.update(trajectory_steps=[0, 7, 10**12]),
    "alpha-changed": lambda m: m.update(alpha=m["alpha"] * 3),
    "max-length-negative": lambda m: m.update(max_length=-5),
    "paca-columns": lambda m: m.update(paca_columns="sideways"),
}
PEFT_SEMANTIC = {
    "rank": lambda c: c.update(r=c["r"] + 1),
    "rank-float": lambda c: c.update(r=4.5),
    "alpha-zero": lambda c: c.update(lora_alpha=0),
    "rank-pattern-regex": lambda c: c.update(rank_pattern={"(f+)+c1": 4}),
    "rank-pattern-bad-regex": lambda c: c.update(rank_pattern={"fc[": 4}),
    "rank-pattern-wrong": lambda c: c.update(rank_pattern={"fc1": 2}),
    "alpha-pattern-str": lambda c: c.update(alpha_pattern={"fc1": "big"}),
    "dora": lambda c: c.update(use_dora=True),
    "rslora": lambda c: c.update(use_rslora=True),
    "fan-in-fan-out": lambda c: c.update(fan_in_fan_out=True),
    "type": lambda c: c.update(peft_type="IA3"),
    "modules-to-save": lambda c: c.update(modules_to_save=7),
    "base-model": lambda c: c.update(base_model_name_or_path=["x"]),
    "base-model-dir": lambda c: c.update(base_model_name_or_path="/"),
    "pissa": lambda c: c.update(init_lora_weights="pissa"),
    "bias": lambda c: c.update(bias={"all": 1}),
}


@st.composite
def mutation(draw):
    source = draw(st.sampled_from(["lora", "asym", "rc3la", "fft", "peft", "peft-bin"]))
    kind = draw(st.sampled_from(["truncate", "bitflip", "bitflip-header", "overwrite", "insert", "delete-span",
                                 "append", "empty", "remove-file", "json-set", "json-delete", "json-add",
                                 "st-header-set", "st-header-delete", "st-header-length", "values",
                                 "semantic"]))
    return source, kind, draw(st.randoms(use_true_random=False)), draw(json_values)


def _files(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if p.is_file() and not p.name.startswith("README"))


def apply(d: Path, source: str, kind: str, rnd, value) -> str:
    files = _files(d)
    meta_name = "adapter_config.json" if source.startswith("peft") else "genbound.json"
    st_files = [f for f in files if f.suffix == ".safetensors"]
    if kind == "semantic":
        f = d / meta_name
        doc = json.loads(f.read_text())
        table = PEFT_SEMANTIC if source.startswith("peft") else SEMANTIC
        name = rnd.choice(sorted(table))
        table[name](doc)
        f.write_text(json.dumps(doc))
        return f"semantic:{name}"
    if kind.startswith("json-"):
        f = d / meta_name
        doc = json.loads(f.read_text())
        paths = [p for p in _paths(doc) if p]
        path = rnd.choice(paths)
        if kind == "json-set":
            doc = _set(doc, path, value)
        elif kind == "json-delete":
            doc = _set(doc, path, None, delete=True)
        else:
            doc["extra_" + str(rnd.randrange(100))] = value
        f.write_text(json.dumps(doc))
        return f"{kind}:{path}"
    if kind.startswith("st-") or kind == "values":
        if not st_files:
            kind = "bitflip"
        else:
            f = rnd.choice(st_files)
            header, body = _split_safetensors(f.read_bytes())
            keys = [k for k in header if k != "__metadata__"]
            key = rnd.choice(keys)
            if kind == "values":
                info = header[key]
                if info["dtype"] != "F32" or info["data_offsets"][0] == info["data_offsets"][1]:
                    return "values:skipped"
                start, end = info["data_offsets"]
                i = rnd.randrange((end - start) // 4)
                v = rnd.choice([math.nan, math.inf, -math.inf, 3e38, -1e30, 1e13])
                body = body[:start + 4 * i] + struct.pack("<f", v) + body[start + 4 * i + 4:]
                raw = f.read_bytes()
                f.write_bytes(raw[: len(raw) - len(body)] + body)  # header kept byte for byte
                return f"values:{key}={v}"
            if kind == "st-header-set":
                field = rnd.choice(["dtype", "shape", "data_offsets"])
                header[key][field] = value if rnd.random() < 0.5 else rnd.choice(
                    [[1 << 40], [1 << 31, 1 << 31], [0], [-1, 4], [0, 1 << 60], "F64", "BOOL", [3, 5, 7]])
            elif kind == "st-header-delete":
                del header[key]
            else:
                f.write_bytes(struct.pack("<Q", rnd.choice([0, 7, 1 << 40, (1 << 64) - 1, len(body) + (1 << 20)]))
                              + f.read_bytes()[8:])
                return f"st-header-length:{f.name}"
            f.write_bytes(_join_safetensors(header, body))
            return f"{kind}:{f.name}:{key}"
    f = rnd.choice(files)
    data = bytearray(f.read_bytes())
    n = len(data)
    if kind == "truncate":
        data = data[: rnd.randrange(max(n, 1))]
    elif kind in ("bitflip", "bitflip-header"):
        for _ in range(rnd.choice([1, 1, 2, 8])):
            limit = min(n, 400) if kind == "bitflip-header" else n
            if limit:
                data[rnd.randrange(limit)] ^= 1 << rnd.randrange(8)
    elif kind == "overwrite":
        i = rnd.randrange(max(n, 1))
        data[i:i + 16] = bytes(rnd.randrange(256) for _ in range(16))
    elif kind == "insert":
        i = rnd.randrange(n + 1)
        data[i:i] = bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 64)))
    elif kind == "delete-span":
        i = rnd.randrange(max(n, 1))
        del data[i:i + rnd.randrange(1, 64)]
    elif kind == "append":
        data += bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 4096)))
    elif kind == "empty":
        data = bytearray()
    elif kind == "remove-file":
        f.unlink()
        return f"remove:{f.name}"
    f.write_bytes(bytes(data))
    return f"{kind}:{f.name}"


# -- the oracle ---------------------------------------------------------------------------------------------


def use(d: Path, source: str, splits) -> None:
    """Everything a user does with a checkpoint; must either work with finite numbers or raise GenboundError."""
    if source.startswith("peft"):
        ck = load_peft(d, backbone="mlp")
        updates = ck.layer_updates()
        base = ck.base_weights()
        from genbound.backbones import get_backbone

        model = get_backbone("mlp").build(5, 0)
        with torch.no_grad():
            for name, u in updates.items():
                model.get_submodule(name).weight.copy_(base[name] + u.materialize())
        evaluate(model, splits.test, where="the fuzzed peft model")
    else:
        ck = load_checkpoint(d)
        updates = ck.layer_updates()
        ck.load_splits()
        evaluate(ck.build_model(), splits.test, where="the fuzzed checkpoint")
        evaluate(ck.build_model(merged=True), splits.test, where="the fuzzed merged checkpoint")
        if ck.meta.has_trajectory:
            ck.trajectory()
    for name, u in updates.items():
        s = u.singular_values()
        assert torch.isfinite(s).all(), f"layer {name}: a loaded checkpoint gave non-finite singular values"


def _alarm(signum, frame):
    raise Hang("a hostile checkpoint made loading hang")


def test_mutated_checkpoints_load_cleanly_or_raise_one_genbound_error(sources, capsys, record_property):
    """Hypothesis drives MAX_EXAMPLES mutations through :func:`use`; prints how many hostile inputs were tried
    (visible with ``-s`` or without capture) and checks that no header made a huge allocation."""
    paths, splits = sources
    tried = {"inputs": 0, "loaded": 0, "refused": 0}
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(m=mutation())
    def one(m):
        source, kind, rnd, value = m
        with tempfile.TemporaryDirectory() as tmp:
            d = Path(tmp) / "ck"
            shutil.copytree(paths[source], d)
            what = apply(d, source, kind, rnd, value)
            tried["inputs"] += 1
            old = signal.signal(signal.SIGALRM, _alarm)
            signal.alarm(PER_EXAMPLE_SECONDS)
            try:
                use(d, source, splits)
                tried["loaded"] += 1
            except GenboundError as exc:
                tried["refused"] += 1
                assert "\n" not in str(exc), f"{what}: the message is not one line"
            except Exception as exc:
                raise AssertionError(f"{source} / {what}: {type(exc).__name__}: {exc}") from exc
            finally:
                signal.alarm(0)
                signal.signal(signal.SIGALRM, old)

    t0 = time.perf_counter()
    one()
    seconds = time.perf_counter() - t0
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss_before
    record_property("fuzz_inputs", tried["inputs"])
    with capsys.disabled():
        print(f"\nfuzz: {tried['inputs']} mutated checkpoints tried in {seconds:.1f} s: {tried['loaded']} loaded and "
              f"evaluated finite, {tried['refused']} refused with one GenboundError, 0 crashes or hangs; peak memory "
              f"grew {max(grown, 0) / 2**20:.0f} MiB")
    assert tried["inputs"] >= MAX_EXAMPLES // 2 and tried["refused"] > 0
    assert grown < 1 << 30, "a hostile header made a large allocation"


def test_known_hostile_cases_each_raise_checkpoint_error(sources, tmp_path):
    """Named cases (deterministic), each ending in a CheckpointError with its reason."""
    from genbound.errors import CheckpointError

    paths, _ = sources
    cases = {
        "deep-json": ("genbound.json", lambda b: b"[" * 200_000 + b"]" * 200_000, "not valid JSON"),
        "nan-literal": ("genbound.json", lambda b: b.replace(b'"alpha": 8.0', b'"alpha": NaN'), "not valid JSON"),
        "huge-int": ("genbound.json", lambda b: b.replace(b'"rank": 4', b'"rank": ' + b"9" * 5000), "not valid JSON"),
        "absurd-header": ("tensors.safetensors", lambda b: struct.pack("<Q", 1 << 62) + b[8:], "header claims"),
        "truncated": ("tensors.safetensors", lambda b: b[: len(b) // 2], "corrupt|truncated|byte range"),
        "dtype-list": ("tensors.safetensors", lambda b: b.replace(b'"dtype":"F32"', b'"dtype":["F32"]', 1),
                       "dtype"),
    }
    for name, (fname, mutate, needle) in cases.items():
        d = tmp_path / name
        shutil.copytree(paths["lora"], d)
        (d / fname).write_bytes(mutate((d / fname).read_bytes()))
        t0 = time.perf_counter()
        with pytest.raises(CheckpointError, match=needle):
            load_checkpoint(d)
        assert time.perf_counter() - t0 < 5, name
    fifo = tmp_path / "fifo"
    shutil.copytree(paths["lora"], fifo)
    (fifo / "tensors.safetensors").unlink()
    os.mkfifo(fifo / "tensors.safetensors")  # reading a FIFO would block forever
    with pytest.raises(CheckpointError, match="missing"):
        load_checkpoint(fifo)


def test_cli_exits_2_with_one_line_on_a_hostile_checkpoint(sources, tmp_path):
    import subprocess
    import sys

    paths, _ = sources
    d = tmp_path / "flipped"
    shutil.copytree(paths["lora"], d)
    data = bytearray((d / "tensors.safetensors").read_bytes())
    data[20] ^= 0x40  # inside the header's JSON
    (d / "tensors.safetensors").write_bytes(bytes(data))
    proc = subprocess.run([sys.executable, "-m", "genbound.cli", "spectra", str(d)], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("genbound: error:") and "Traceback" not in proc.stderr
