"""The scaling benchmark's measurement (benchmarks/bench_scale.py) on its smallest size, and what it relies on:
genbound's LoRA over a bfloat16 frozen base with float32 factors, and the Hessian operator leaving that base
as it is. No timing is asserted: only that the record's fields are present and consistent."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_scale  # noqa: E402

from genbound.data.evalset import EvalSet  # noqa: E402
from genbound.diagnostics.hessian import HessianOperator  # noqa: E402
from genbound.methods.adapters import AdaptedLinear  # noqa: E402
from genbound.methods.catalogue import get_method  # noqa: E402


def _bf16_lora(seed: int = 0) -> AdaptedLinear:
    torch.manual_seed(seed)
    base = nn.Linear(24, 16).to(torch.bfloat16)
    ad = AdaptedLinear(base, get_method("lora"), "fc", 4, 8.0, seed)
    ad.A.data = ad.A.data.float()
    ad.B.data = torch.randn(16, 4)
    return ad


def test_lora_forward_on_bf16_base_with_float32_factors():
    ad = _bf16_lora()
    x = torch.randn(5, 24).to(torch.bfloat16)
    y = ad(x)
    assert y.dtype == torch.bfloat16
    # the reference: every product in float32 from the same (bf16-rounded) numbers
    ref = x.float() @ ad.base.weight.float().T + ad.base.bias.float() + ad.scale * (x.float() @ ad.A.T) @ ad.B.T
    torch.testing.assert_close(y.float(), ref, rtol=2e-2, atol=2e-2)


def test_hessian_operator_keeps_a_bf16_base_and_matches_autograd():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = _bf16_lora()
            self.out = nn.Linear(16, 3).to(torch.bfloat16)

        def forward(self, x):
            return self.out(torch.tanh(self.fc(x.to(torch.bfloat16)))).float()

    net = Net()
    for p in net.out.parameters():
        p.requires_grad_(False)
    x = torch.randn(6, 24)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    op = HessianOperator(net, EvalSet({"x": x}, y), "trained", mode="reverse")
    assert not op._own  # no float32 copy of the frozen base
    assert net.out.weight.dtype == torch.bfloat16
    v = torch.randn(op.dim, generator=torch.Generator().manual_seed(1))
    hv = op.matvec(v)

    names = op.names
    params = dict(net.named_parameters())

    def loss(*theta):  # the mean cross-entropy as a function of the trained factors alone
        return nn.functional.cross_entropy(torch.func.functional_call(net, dict(zip(names, theta)), (x,)), y)

    theta = tuple(params[n].detach() for n in names)
    vs = tuple(t.reshape(params[n].shape) for n, t in zip(names, op.unflatten(v).values()))
    _, ref = torch.autograd.functional.hvp(loss, theta, vs)
    ref = torch.cat([r.reshape(-1) for r in ref])
    # both are products through bf16 activations, rounded in different orders: agreement to bf16's precision
    # (eps 2^-8 ~ 4e-3), relative to the product's norm
    assert float((hv - ref).norm() / ref.norm()) < 2e-2


def test_measure_smallest_size_record():
    name = next(iter(bench_scale.SIZES))
    rec = bench_scale.measure(name, batch_size=1, seq=16, hvps=1, steps=1)
    h, n_layers, ffn, heads, kv = bench_scale.SIZES[name]
    kv_dim = h * kv // heads
    attn = 2 * h * h + 2 * h * kv_dim
    expected = 2 * bench_scale.VOCAB * h + n_layers * (attn + 3 * h * ffn + 2 * h) + h
    lora = n_layers * bench_scale.RANK * (2 * (h + h) + 2 * (h + kv_dim))  # A (r x in) + B (out x r): q, o; k, v
    assert rec["params"] == expected + lora
    assert rec["trained"] == lora
    assert rec["base_bytes"] == 2 * expected + 4 * lora  # bf16 base, float32 factors
    assert rec["hvp_mode"] in ("cached", "forward", "reverse")
    assert rec["batch"] == 1 and rec["seq"] == 16 and rec["base_dtype"] == "bfloat16"
    for phase in bench_scale.PHASES:
        assert rec[f"{phase}_wall_s"] > 0 and rec[f"{phase}_cpu_s"] >= 0
    peaks = [rec[f"{p}_peak_rss"] for p in bench_scale.PHASES]
    assert peaks == sorted(peaks)  # a running maximum
    assert rec["peak_rss"] == peaks[-1] >= rec["rss_start"] and rec["peak_rss"] > rec["base_bytes"]


@pytest.mark.parametrize("name", list(bench_scale.SIZES))
def test_configs_are_llama_shaped(name):
    cfg = bench_scale.llama_config(name)
    assert cfg.hidden_size % cfg.num_attention_heads == 0
    assert cfg.num_attention_heads % cfg.num_key_value_heads == 0
