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
import shutil
import signal
import struct
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from genbound.checkpoints.checkpoint import load_checkpoint
from genbound.core.errors import GenboundError
from genbound.diagnostics.evaluate import evaluate
from genbound.sources.peft_import import load_peft
from genbound.testing import make_checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parent))

import rss  # noqa: E402  (tests/rss.py)

MAX_EXAMPLES = 200
PER_EXAMPLE_SECONDS = 20  # an alarm, so a hang fails instead of blocking the suite


class Hang(Exception):
    pass


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    from peft import LoraConfig, get_peft_model

    from genbound.data.datasets import get_dataset
    from genbound.models.backbones import get_backbone

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
    # Size claims (issue 16): each would allocate gigabytes if believed.
    "claim-huge-layer": lambda m: m["layers"][0].update(out_features=23170, in_features=23170),
    "claim-wide-layer": lambda m: (m.update(rank=1024, layers=[{"name": m["layers"][0]["name"], "out_features": 1024,
                                                                 "in_features": 1 << 20}])),
    "claim-max-length": lambda m: m.update(max_length=20_000),
    "claim-head-width": lambda m: m.update(head_in_features=1 << 20),
    "alpha-huge": lambda m: m.update(alpha=1e300, scale=1e300 / m["rank"]),
    "alpha-negative": lambda m: m.update(alpha=-m["alpha"], scale=-m["scale"]),
    "class-escape": lambda m: m["classes"].__setitem__(0, "\x1b[2J"),
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
    "alpha-huge": lambda c: c.update(lora_alpha=1e308),
    "alpha-pattern-huge": lambda c: c.update(alpha_pattern={"fc1": 1e308}),
    "rank-pattern-bomb": lambda c: c.update(rank_pattern={f"[a.]*[a.]*z{i}": 4 for i in range(300)}),
}


@st.composite
def mutation(draw):
    source = draw(st.sampled_from(["lora", "asym", "rc3la", "fft", "peft", "peft-bin"]))
    kind = draw(st.sampled_from(["truncate", "bitflip", "bitflip-header", "overwrite", "insert", "delete-span",
                                 "append", "empty", "remove-file", "json-set", "json-delete", "json-add",
                                 "st-header-set", "st-header-delete", "st-header-length", "values",
                                 "semantic", "sparse-claim"]))
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
    if kind == "sparse-claim":
        return _sparse_claim(d, source, rnd)
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


def _sparse_claim(d: Path, source: str, rnd) -> str:
    """A tensor file that claims gigabytes in kilobytes: a safetensors header with a hole for its data, or
    (peft-bin) a deflated zip whose zero tensor inflates to 64 MiB."""
    if source == "peft-bin":
        plain = d / "plain.bin"
        torch.save({"base_model.model.fc1.lora_A.weight": torch.zeros(16 << 20)}, plain)
        with zipfile.ZipFile(plain) as src, zipfile.ZipFile(d / "adapter_model.bin", "w", zipfile.ZIP_DEFLATED) as dst:
            for info in src.infolist():
                dst.writestr(info.filename, src.read(info.filename))
        plain.unlink()
        return "zip-bomb"
    f = rnd.choice([p for p in _files(d) if p.suffix == ".safetensors"])
    header, _ = _split_safetensors(f.read_bytes())
    key = rnd.choice([k for k in header if k != "__metadata__"] + ["model.extra.weight"])
    shape = rnd.choice([[23170, 23170], [1024, 1 << 20], [1 << 15, 1 << 15]])
    nbytes = math.prod(shape) * 4
    header = {key: {"dtype": "F32", "shape": shape, "data_offsets": [0, nbytes]}}
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    f.write_bytes(struct.pack("<Q", len(text)) + text)
    with open(f, "r+b") as fh:
        fh.truncate(8 + len(text) + nbytes)
    return f"sparse-claim:{f.name}:{key}:{shape}"


# -- the oracle ---------------------------------------------------------------------------------------------


def use(d: Path, source: str, splits) -> None:
    """Everything a user does with a checkpoint; must either work with finite numbers or raise GenboundError."""
    if source.startswith("peft"):
        ck = load_peft(d, backbone="mlp")
        updates = ck.layer_updates()
        base = ck.base_weights()
        from genbound.models.backbones import get_backbone

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
    raise Hang("a hostile input made loading hang")


class Tally:
    """Counts of one fuzz campaign: inputs tried, accepted (worked, finite), refused cleanly (one
    GenboundError of one line), crashed (anything else), hung (past the alarm); and the peak memory growth.
    The counts are printed by tests/conftest.py's terminal summary (``make test`` shows them)."""

    seconds = PER_EXAMPLE_SECONDS

    def __init__(self, name: str):
        self.name = name
        self.counts = {"tried": 0, "accepted": 0, "refused": 0, "crashed": 0, "hung": 0}
        self.failures: list[str] = []
        self.rss_before = rss.start()
        self.t0 = time.perf_counter()

    def run(self, what: str, fn) -> None:
        self.counts["tried"] += 1
        old = signal.signal(signal.SIGALRM, _alarm)
        signal.alarm(self.seconds)
        try:
            fn()
            self.counts["accepted"] += 1
        except GenboundError as exc:
            if "\n" in str(exc):
                self.counts["crashed"] += 1
                self.failures.append(f"{what}: a message of several lines")
            else:
                self.counts["refused"] += 1
        except Hang:
            self.counts["hung"] += 1
            self.failures.append(f"{what}: hung past {self.seconds} s")
        except Exception as exc:
            self.counts["crashed"] += 1
            self.failures.append(f"{what}: {type(exc).__name__}: {str(exc)[:200]}")
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, old)

    def finish(self, record_property) -> int:
        grown = max(0, rss.peak() - self.rss_before)
        c = self.counts
        line = (f"fuzz {self.name}: {c['tried']} inputs tried in {time.perf_counter() - self.t0:.0f} s: "
                f"{c['refused']} refused cleanly, {c['accepted']} accepted, {c['crashed']} crashed, {c['hung']} hung; "
                f"peak memory grew {grown / 2**20:.0f} MiB")
        record_property("fuzz_summary", line)
        print("\n" + line)
        assert not self.failures, self.failures[:5]
        return grown


def test_mutated_checkpoints_load_cleanly_or_raise_one_genbound_error(sources, record_property):
    """Hypothesis drives MAX_EXAMPLES mutations through :func:`use`; the counts are printed at the end of the
    run, and no header may make a large allocation."""
    paths, splits = sources
    tally = Tally("checkpoints")

    @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(m=mutation())
    def one(m):
        source, kind, rnd, value = m
        with tempfile.TemporaryDirectory() as tmp:
            d = Path(tmp) / "ck"
            shutil.copytree(paths[source], d)
            what = apply(d, source, kind, rnd, value)
            tally.run(f"{source} / {what}", lambda: use(d, source, splits))

    one()
    grown = tally.finish(record_property)
    assert tally.counts["tried"] >= MAX_EXAMPLES // 2 and tally.counts["refused"] > 0
    assert grown < 1 << 30, "a hostile header made a large allocation"


# -- the training state and bounds configurations ---------------------------------------------------------------


STATE_EXAMPLES = 60
BOUNDS_EXAMPLES = 200


class _Killed(BaseException):
    pass


@pytest.fixture(scope="module")
def saved_state(tmp_path_factory):
    """A run of 12 steps killed right after its state of step 5 was saved."""
    import genbound.training.train as train_module
    from genbound.checkpoints.resume import state_dir_for
    from genbound.training.train import TrainConfig, train

    out = tmp_path_factory.mktemp("fuzz-state") / "run"
    original = train_module.save_state

    def save_then_die(path, state):
        original(path, state)
        raise _Killed

    config = TrainConfig(method="lora", backbone="mlp", dataset="digits", rank=4, alpha=8.0, steps=12, lr=1e-2,
                         progress=False)
    train_module.save_state = save_then_die
    try:
        with pytest.raises(_Killed):
            train(config, out, save_every=5)
    finally:
        train_module.save_state = original
    return config, state_dir_for(out)


@st.composite
def state_mutation(draw):
    kind = draw(st.sampled_from(["json-set", "json-delete", "json-add", "json-number", "truncate", "bitflip",
                                 "st-header-set", "values", "rng-short"]))
    return kind, draw(st.randoms(use_true_random=False)), draw(json_values)


def _mutate_state(d: Path, kind: str, rnd, value) -> str:
    sj, st_file = d / "state.json", d / "state.safetensors"
    if kind.startswith("json-"):
        doc = json.loads(sj.read_text())
        path = rnd.choice([p for p in _paths(doc) if p])
        if kind == "json-set":
            doc = _set(doc, path, value)
        elif kind == "json-delete":
            doc = _set(doc, path, None, delete=True)
        elif kind == "json-number":
            doc = _set(doc, path, rnd.choice([10**12, -1, 1e300, 0.5, 2**63, True]))
        else:
            doc["extra_" + str(rnd.randrange(100))] = value
        text = json.dumps(doc)
        if rnd.random() < 0.2:
            text = text.replace('"running": ', '"running": NaN, "x": ')
        sj.write_text(text)
        return f"{kind}:{path}"
    if kind == "rng-short":
        from safetensors.torch import load_file, save_file

        t = load_file(str(st_file))
        t["rng/cpu"] = t["rng/cpu"][: rnd.randrange(t["rng/cpu"].numel())].contiguous()
        save_file(t, str(st_file))
        return "rng-short"
    if kind in ("st-header-set", "values"):
        header, body = _split_safetensors(st_file.read_bytes())
        key = rnd.choice([k for k in header if k != "__metadata__"])
        if kind == "values":
            info = header[key]
            if info["dtype"] != "F32" or info["data_offsets"][0] == info["data_offsets"][1]:
                return "values:skipped"
            start = info["data_offsets"][0]
            raw = st_file.read_bytes()
            off = len(raw) - len(body) + start
            st_file.write_bytes(raw[:off] + struct.pack("<f", rnd.choice([math.nan, math.inf, 3e38])) + raw[off + 4:])
            return f"values:{key}"
        header[key]["shape"] = rnd.choice([[1 << 40], [0], [3, 5, 7], value])
        st_file.write_bytes(_join_safetensors(header, body))
        return f"st-header-set:{key}"
    f = rnd.choice([sj, st_file])
    data = bytearray(f.read_bytes())
    if kind == "truncate":
        data = data[: rnd.randrange(max(len(data), 1))]
    else:
        for _ in range(rnd.choice([1, 2, 8])):
            data[rnd.randrange(len(data))] ^= 1 << rnd.randrange(8)
    f.write_bytes(bytes(data))
    return f"{kind}:{f.name}"


def test_mutated_resume_states_resume_cleanly_or_raise_one_genbound_error(saved_state, record_property):
    """A mutated training state must either resume to a finite checkpoint or be refused in one line."""
    import dataclasses

    from genbound.checkpoints.resume import state_dir_for
    from genbound.training.train import train

    config, state = saved_state
    tally = Tally("resume states")

    @settings(max_examples=STATE_EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(m=state_mutation())
    def one(m):
        kind, rnd, value = m
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "run"
            shutil.copytree(state, state_dir_for(out))
            what = _mutate_state(state_dir_for(out), kind, rnd, value)

            def resume():
                result = train(dataclasses.replace(config), out, resume=True, save_every=5)
                assert all(math.isfinite(v) for v in result.meta.results.values())

            tally.run(what, resume)

    one()
    tally.finish(record_property)
    assert tally.counts["refused"] > 0


BASE_CONFIG = {"layers": "768x768*24", "rank": 16, "chain": 1, "q": 32, "sigma": 0.5, "n": 3668, "head": 592130,
               "total": 124647170}


@st.composite
def config_mutation(draw):
    kind = draw(st.sampled_from(["json-set", "json-delete", "json-add", "json-number", "text"]))
    return kind, draw(st.randoms(use_true_random=False)), draw(json_values)


def test_mutated_bounds_configs_give_a_bound_or_one_line(tmp_path, record_property):
    """``genbound bounds --config FILE`` on a mutated configuration: exit 0 with finite JSON, or exit 2 with
    one line; never a traceback."""
    import contextlib
    import io

    from genbound.cli import main

    tally = Tally("bounds configs")
    f = tmp_path / "cfg.json"

    def run_cli():
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(["bounds", "--config", str(f), "--json"])
        if code == 2:
            lines = err.getvalue().strip().splitlines()
            if len(lines) != 1 or not lines[0].startswith("genbound: error:"):
                raise AssertionError(f"exit 2 without one error line: {err.getvalue()[:300]}")
            raise GenboundError(lines[0])
        if code != 0:
            raise AssertionError(f"exit {code}: {err.getvalue()[:300]}")
        json.loads(out.getvalue(), parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))

    @settings(max_examples=BOUNDS_EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(m=config_mutation())
    def one(m):
        kind, rnd, value = m
        doc = dict(BASE_CONFIG)
        key = rnd.choice(sorted(doc))
        if kind == "json-set":
            doc[key] = value
        elif kind == "json-delete":
            del doc[key]
        elif kind == "json-number":
            doc[key] = rnd.choice([10**400, -1, 0, 1e300, 0.5, 2**63, True, "1925x", "abc", "768x768*99999999999"])
        elif kind == "json-add":
            doc["extra_" + str(rnd.randrange(100))] = value
        text = json.dumps(doc)
        if kind == "text":
            data = bytearray(text.encode())
            for _ in range(rnd.choice([1, 2, 8])):
                data[rnd.randrange(len(data))] = rnd.randrange(256)
            f.write_bytes(bytes(data))
        else:
            f.write_text(text)
        tally.run(f"{kind}:{key}", run_cli)

    one()
    tally.finish(record_property)
    assert tally.counts["refused"] > 0 and tally.counts["accepted"] > 0


def test_known_hostile_cases_each_raise_checkpoint_error(sources, tmp_path):
    """Named cases (deterministic), each ending in a CheckpointError with its reason."""
    from genbound.core.errors import CheckpointError

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
