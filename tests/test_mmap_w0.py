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
    # krylov on W0's SVD gives the dense path's scores
    kr = intruders(bw, updates, k=k, method="krylov")
    dense = intruders(bw, updates, k=k, method="dense")
    for a, b in zip(kr.layers, dense.layers):
        torch.testing.assert_close(torch.tensor(a.scores), torch.tensor(b.scores), rtol=1e-5, atol=1e-5)


CHILD = r"""
import io, json, resource, sys
from contextlib import redirect_stdout
from genbound.cli import main
import genbound.commands.spectra, genbound.diagnostics.intruders, genbound.sources.source
import transformers.models.llama.modeling_llama

def rss():
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmRSS:"))

mode, adapter, base = sys.argv[1:4]
before = rss()
with open("/proc/self/clear_refs", "w") as fh:  # the peak RSS (ru_maxrss) restarts from the current RSS
    fh.write("5")
with redirect_stdout(io.StringIO()) as buf:
    if mode == "w0":  # every W0, one at a time, as the intruder diagnostic uses them
        from genbound.sources.source import load_source
        src = load_source(adapter, base)
        sums = [float(w.sum()) for w in src.base_weights().values()]
        rc = 0
    else:
        rc = main(["spectra", adapter, "--backbone", base, "--json", "--intruders"])
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"rc": rc, "delta": peak - before, "out": buf.getvalue()[-200:]}))
"""


def _child_delta(mode: str, adapter: Path, base: Path) -> int:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    out = subprocess.run([sys.executable, "-c", CHILD, mode, str(adapter), str(base)], capture_output=True, text=True,
                         env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    rec = json.loads(out.stdout.strip().splitlines()[-1])
    assert rec["rc"] == 0, rec
    return int(rec["delta"])


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's peak-RSS reset")
def test_two_gigabyte_base_costs_its_adapted_matrices_only(tmp_path):
    """Writes 1.9 GB of zeros and runs four children. The base (1.9 GB, bf16) is never loaded: reading every
    W0 costs under 4 float32 copies of the largest adapted matrix, and ``spectra --intruders`` under 14
    float64 copies: at 1024 x 1024 the dense path holds W0's SVD (U and V, 2 copies) and W0 + dW (1) while
    LAPACK's divide-and-conquer SVD of W0 + dW takes about 7.75 more (measured), plus W0 in float32 and
    float64 (1.5); 91 MiB = 11.4 copies was measured. Both bounds are far below the base (240 such copies),
    and a run that kept every layer's SVD would pass the second one."""
    h, layers = 1024, 32
    mods = _modules([0, layers - 1], h, h)
    big = write_llama_base(tmp_path / "big", hidden=h, layers=layers, ffn=8192, heads=16, kv=16,
                           drawn={m + ".weight" for m in mods})
    big_adapter = write_lora_adapter(tmp_path / "big-adapter", big, mods)
    tiny = write_llama_base(tmp_path / "tiny", hidden=64, layers=2, ffn=128, heads=4, kv=4)
    tiny_adapter = write_lora_adapter(tmp_path / "tiny-adapter", tiny, _modules([0, 1], 64, 64))
    size = (big / "model.safetensors").stat().st_size
    try:
        assert size > 1.8e9
        matrix = h * h  # elements of the largest adapted matrix
        w0 = _child_delta("w0", big_adapter, big) - _child_delta("w0", tiny_adapter, tiny)
        full = _child_delta("spectra", big_adapter, big) - _child_delta("spectra", tiny_adapter, tiny)
    finally:
        (big / "model.safetensors").unlink()
    assert w0 < 4 * 4 * matrix, f"reading W0 took {w0 / 2**20:.1f} MiB"
    assert full < 14 * 8 * matrix, f"spectra --intruders took {full / 2**20:.1f} MiB"
