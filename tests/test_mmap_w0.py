"""W0 of a peft adapter's layers read memory-mapped from the base's safetensors file, never building the model.

Small case: the base weights, the updates, the spectra and the intruder scores that ``genbound spectra
--intruders`` computes equal those from transformers' own model and peft's own merge (``merge_and_unload``),
while building the model is forbidden. Large case (slow): a ~2 GB Llama-shaped base of which the adapted
matrices are 0.4 %; the peak memory of a child process running the command, minus that of the same command
on a tiny base (the interpreter, its imports and the command's fixed costs), is bounded by the largest adapted
matrix, not by the base.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from contextlib import redirect_stdout
from pathlib import Path

import pytest
import torch

from genbound.cli import main
from genbound.core.readers import LazyTensors
from genbound.diagnostics.intruders import intruders
from genbound.models import backbones
from genbound.sources.source import load_source

sys.path.insert(0, str(Path(__file__).resolve().parent))

from llama_files import write_llama_base, write_lora_adapter  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _modules(layers, hidden, kv_out):
    return {f"model.layers.{i}.self_attn.{p}": (hidden if p == "q_proj" else kv_out, hidden)
            for i in layers for p in ("q_proj", "v_proj")}


@pytest.fixture()
def small(tmp_path):
    base = write_llama_base(tmp_path / "base", hidden=64, layers=2, ffn=128, heads=4, kv=2)
    mods = _modules([0, 1], 64, 32)
    adapter = write_lora_adapter(tmp_path / "adapter", base, mods, r=8, alpha=16.0)
    return base, adapter, mods


def _reference(base, adapter, mods):
    """W0 from transformers' model, W0 + dW from peft's merge."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32, local_files_only=True)
    w0 = {m: model.get_submodule(m).weight.detach().clone() for m in mods}
    merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    w = {m: merged.get_submodule(m).weight.detach().clone() for m in mods}
    return w0, w


def test_spectra_and_intruders_from_mapped_w0_equal_peft_merge(small, monkeypatch):
    base, adapter, mods = small
    w0, w = _reference(base, adapter, mods)

    def refuse(*a, **k):
        raise AssertionError("the model was built")

    monkeypatch.setattr(backbones.Backbone, "build", refuse)
    src = load_source(adapter, str(base))
    bw = src.base_weights()
    assert isinstance(bw, LazyTensors)
    updates = src.layer_updates()
    for m in mods:
        name = f"backbone.{m}"
        assert torch.equal(bw[name], w0[m])
        torch.testing.assert_close(updates[name].materialize().float(), w[m] - w0[m], rtol=1e-5, atol=1e-6)

    buf = io.StringIO()
    with redirect_stdout(buf):
        assert main(["spectra", str(adapter), "--backbone", str(base), "--intruders", "--intruder-method", "dense",
                     "--json"]) == 0
    out = json.loads(buf.getvalue())
    k = 10
    by_layer = {lay["name"]: lay for lay in out["intruders"]["layers"]}
    spec = {lay["name"]: lay for lay in out["spectra"]["layers"]}
    for m in mods:
        W0, W = w0[m].double(), w[m].double()
        s = torch.linalg.svdvals(W - W0)
        assert spec[f"backbone.{m}"]["spectral_norm"] == pytest.approx(float(s[0]), rel=1e-5)
        U0 = torch.linalg.svd(W0)[0]
        U = torch.linalg.svd(W)[0][:, :k]
        scores = (U.T @ U0).abs().amax(dim=1)
        got = torch.tensor(by_layer[f"backbone.{m}"]["scores"], dtype=torch.float64)
        torch.testing.assert_close(got, scores, rtol=1e-4, atol=1e-4)
    # krylov on W0's SVD, and the Gram path on the stored (bf16) views of the mapped file, give the dense scores
    kr = intruders(bw, updates, k=k, method="krylov")
    gram = intruders(bw.as_stored(), updates, k=k, method="gram")
    dense = intruders(bw, updates, k=k, method="dense")
    for a, b, c in zip(kr.layers, dense.layers, gram.layers):
        torch.testing.assert_close(torch.tensor(a.scores), torch.tensor(b.scores), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(torch.tensor(c.scores), torch.tensor(b.scores), rtol=1e-5, atol=1e-5)


def test_stored_views_are_the_mapped_file_and_membership_reads_nothing(small, monkeypatch):
    import genbound.core.readers as readers

    base, adapter, mods = small
    bw = load_source(adapter, str(base)).base_weights()
    stored = bw.as_stored()
    name = f"backbone.{next(iter(mods))}"
    view = stored[name]
    assert view.dtype == torch.bfloat16 and torch.equal(view.float(), bw[name])
    # no copy: the tensor's memory is a mapping of the file (Linux lists them in /proc/self/maps)
    maps = Path("/proc/self/maps")
    if maps.exists():
        ptr, file = view.data_ptr(), str((base / "model.safetensors").resolve())
        spans = [tuple(int(x, 16) for x in line.split()[0].split("-")) for line in maps.read_text().splitlines()
                 if line.endswith(file)]
        assert any(lo <= ptr < hi for lo, hi in spans), "the view is not on the mapped file"

    def refuse(*a, **k):
        raise AssertionError("a tensor was read")

    monkeypatch.setattr(readers, "read_tensors", refuse)
    monkeypatch.setattr(LazyTensors, "_mapped", refuse)
    assert name in bw and name in stored and "no.such.layer" not in bw


def test_a_misaligned_tensor_is_read_by_copy(tmp_path):
    """safetensors does not promise aligned offsets: a bf16 tensor at an odd byte offset is copied, not viewed."""
    import struct

    data = torch.arange(6, dtype=torch.bfloat16).reshape(2, 3)
    header = json.dumps({"w": {"dtype": "BF16", "shape": [2, 3], "data_offsets": [0, 12]}}).encode()
    header += b" " * ((8 + len(header) + 1) % 2)  # trailing spaces are allowed: an odd header makes the offset odd
    path = tmp_path / "odd.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + data.view(torch.uint8).numpy().tobytes())
    lazy = LazyTensors(path, {"w": "w"}).as_stored()
    assert (8 + len(header)) % 2 == 1 and lazy._mapped("w") is None
    torch.testing.assert_close(lazy["w"], data)


CHILD = r"""
import io, json, sys, time
from contextlib import redirect_stdout
from genbound.cli import main
import genbound.commands.spectra, genbound.diagnostics.intruders, genbound.sources.source
import scipy.linalg  # imported by the Gram path on the large base only: a fixed cost, like the others
import transformers.models.llama.modeling_llama

def status(field):
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith(field + ":"))

mode, adapter, base, method = sys.argv[1:5]
before = status("VmRSS")
with open("/proc/self/clear_refs", "w") as fh:  # the peak RSS (VmHWM) restarts from the current RSS
    fh.write("5")
cpu = time.process_time()
with redirect_stdout(io.StringIO()) as buf:
    if mode == "w0":  # every W0, one at a time, as the intruder diagnostic uses them
        from genbound.sources.source import load_source
        src = load_source(adapter, base)
        sums = [float(w.sum()) for w in src.base_weights().values()]
        rc = 0
    else:
        rc = main(["spectra", adapter, "--backbone", base, "--json", "--intruders", "--intruder-method", method])
# VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec, so a child of a large pytest reports the parent
peak = status("VmHWM")
out = json.loads(buf.getvalue()) if mode != "w0" else None
print(json.dumps({"rc": rc, "delta": peak - before, "cpu": time.process_time() - cpu,
                  "scores": out and {lay["name"]: lay["scores"] for lay in out["intruders"]["layers"]}}))
"""


def child_run(mode: str, adapter: Path, base: Path, method: str = "auto") -> dict:
    """One child process: ``mode`` "w0" (read every W0) or "spectra" (``spectra --intruders`` by ``method``);
    its peak resident memory beyond its start (bytes), CPU seconds and intruder scores."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    out = subprocess.run([sys.executable, "-c", CHILD, mode, str(adapter), str(base), method], capture_output=True,
                         text=True, env=env, timeout=1200)
    assert out.returncode == 0, out.stderr[-2000:]
    rec = json.loads(out.stdout.strip().splitlines()[-1])
    assert rec["rc"] == 0, rec
    return rec


def _child_delta(mode: str, adapter: Path, base: Path) -> int:
    return int(child_run(mode, adapter, base)["delta"])


def write_two_gigabyte_base(folder: Path) -> tuple[Path, Path, Path, Path, int]:
    """(big base, its adapter, tiny base, its adapter, elements of the largest adapted matrix): a 2.1 GB bf16
    Llama base (hidden 2048, 18 layers, MLP 5632) with q and v of two layers and the first layer's up
    projection (5632 x 2048) adapted, and a tiny one with the same structure for the fixed costs."""
    h, layers, ffn = 2048, 18, 5632
    mods = {**_modules([0, layers - 1], h, h), "model.layers.0.mlp.up_proj": (ffn, h)}
    big = write_llama_base(folder / "big", hidden=h, layers=layers, ffn=ffn, heads=16, kv=16,
                           drawn={m + ".weight" for m in mods})
    big_adapter = write_lora_adapter(folder / "big-adapter", big, mods)
    tiny = write_llama_base(folder / "tiny", hidden=64, layers=2, ffn=128, heads=4, kv=4)
    tiny_adapter = write_lora_adapter(folder / "tiny-adapter", tiny, _modules([0, 1], 64, 64))
    return big, big_adapter, tiny, tiny_adapter, ffn * h


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's peak-RSS reset")
def test_two_gigabyte_base_costs_its_adapted_matrices_only(tmp_path):
    """Writes the 2.1 GB base (:func:`write_two_gigabyte_base`) and runs four children. The base is never
    loaded: reading every W0 costs under 4 float32 copies of the largest adapted matrix, and the whole of
    ``spectra --intruders`` (its Gram path on views of the mapped file: one float64 Gram of the shorter side,
    0.73 copies here, 2 for a square matrix) under 4 as well; about 2 were measured, against 10 for the
    Krylov path and 15 for the dense one, which hold W0's SVD and LAPACK's workspace
    (benchmarks/bench_intruder_memory.py). The matrices are kept above glibc's largest dynamic mmap threshold
    (32 MiB), so that freed buffers go back to the system instead of the heap and the peak measures the
    computation, not the allocator's history."""
    big, big_adapter, tiny, tiny_adapter, matrix = write_two_gigabyte_base(tmp_path)
    size = (big / "model.safetensors").stat().st_size
    try:
        assert size > 1.8e9
        w0 = _child_delta("w0", big_adapter, big) - _child_delta("w0", tiny_adapter, tiny)
        full = _child_delta("spectra", big_adapter, big) - _child_delta("spectra", tiny_adapter, tiny)
    finally:
        (big / "model.safetensors").unlink()
    assert w0 < 4 * 4 * matrix, f"reading W0 took {w0 / 2**20:.1f} MiB"
    assert full < 4 * 4 * matrix, f"spectra --intruders took {full / 2**20:.1f} MiB"
