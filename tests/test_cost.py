"""genbound.training.cost against hand counts: the bytes autograd saves for LoRA and cLA on a tiny two-layer network,
the FLOPs of one adapted Linear (2 T m n for the frozen product), AdamW's two states per trained tensor, the
paired timing of a method against itself, and the ``genbound cost`` command."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from genbound.cli import main
from genbound.methods.adapters import attach_adapters
from genbound.methods.catalogue import get_method
from genbound.training.cost import (
    Setting,
    _ratio_interval,
    as_dict,
    flop_cost,
    memory_cost,
    paired_timing,
    saved_tensor_bytes,
)
from genbound.training.train import TrainConfig, param_groups

T, M_IN, HIDDEN, OUT, R = 5, 8, 6, 4, 2  # batch rows, l1 inputs, l1 outputs = l2 inputs, l2 outputs, rank
F32 = 4


class _Net(nn.Module):
    """x -> l1 -> tanh -> l2 -> head: l1's input is the data (no gradient), l2's input is tanh's output,
    which tanh itself keeps for its backward (d tanh = 1 - tanh^2)."""

    def __init__(self, m: int = M_IN, hidden: int = HIDDEN, out: int = OUT):
        super().__init__()
        self.l1, self.act = nn.Linear(m, hidden), nn.Tanh()
        self.l2, self.head = nn.Linear(hidden, out), nn.Linear(out, 2)

    def forward(self, x):
        return self.head(self.l2(self.act(self.l1(x))))


def _adapted(method: str, layers=("l1", "l2"), **kw) -> tuple[nn.Module, dict]:
    torch.manual_seed(0)
    model = _Net(**kw)
    adapters = attach_adapters(model, get_method(method), list(layers), R, 2.0 * R, seed=0)
    return model, adapters


def _setting(method: str, batch: int = T, layers=("l1", "l2"), **kw) -> Setting:
    model, adapters = _adapted(method, layers, **kw)
    config = TrainConfig(method=method, backbone="mlp", rank=R, alpha=2.0 * R)
    opt = torch.optim.AdamW(param_groups(model, adapters, config.lr, 1.0, 0.0), lr=config.lr)
    g = torch.Generator().manual_seed(1)
    m = model.l1.base.in_features
    x = torch.randn(batch, m, generator=g)
    labels = torch.randint(0, 2, (batch,), generator=g)
    return Setting(config, model, adapters, opt, {"x": x}, labels, torch.device("cpu"))


def _saved(method: str):
    model, _ = _adapted(method)
    x = torch.randn(T, M_IN)
    loss, saved = saved_tensor_bytes(model, lambda: model(x).sum())  # sum's backward keeps nothing
    loss.backward()
    return saved


def test_lora_saved_bytes_equal_a_hand_count():
    saved = _saved("lora")
    # Adapter-owned: l1's input x, kept only for A1's gradient (the frozen W1 x needs nothing: neither W1 nor the
    # data takes a gradient), and each layer's r-dimensional A x, kept for B's gradient.
    assert saved.adapter == F32 * (T * M_IN + 2 * T * R)
    assert saved.adapter_by_layer == {"l1": F32 * (T * M_IN + T * R), "l2": F32 * T * R}
    # Frozen: tanh's output (also l2's adapter input x, counted once since it is one storage) and the head's input.
    assert saved.frozen == F32 * (T * HIDDEN + T * OUT)
    # B^T (both layers), A2^T and W2^T, W_head^T: views of parameters, not activations.
    assert saved.parameter_alias == F32 * (HIDDEN * R + OUT * HIDDEN + R * HIDDEN + OUT * R + 2 * OUT)


def test_cla_keeps_only_the_selected_columns():
    saved = _saved("cla")
    # cLA gathers x[:, idx] (T x r) and keeps only that for B's gradient: index_select's backward needs the indices
    # alone (a buffer), so neither layer's full input is kept on the adapter's account.
    assert saved.adapter == F32 * 2 * T * R
    assert saved.adapter_by_layer == {"l1": F32 * T * R, "l2": F32 * T * R}
    assert saved.frozen == F32 * (T * HIDDEN + T * OUT)
    lora = _saved("lora")
    assert lora.adapter - saved.adapter == F32 * T * M_IN  # the full input LoRA's A needs, cLA does not


def test_saved_bytes_count_a_shared_storage_once():
    model, _ = _adapted("lora", layers=("l2",))
    x = torch.randn(T, M_IN)

    def forward():
        h = model.act(model.l1(x))  # nothing before l2 trains: tanh keeps nothing, h is kept by l2's A alone
        return (model.head(model.l2(h)) + model.head(model.l2(h))).sum()  # l2 applied twice to the same h

    loss, saved = saved_tensor_bytes(model, forward)
    loss.backward()
    # h once (one storage, saved by both calls of A), each call's A h (T x r); the head's two inputs are frozen.
    assert saved.adapter == F32 * (T * HIDDEN + 2 * T * R)
    assert saved.frozen == F32 * 2 * T * OUT


def test_flops_of_one_adapted_linear_equal_a_hand_count():
    m, n = M_IN, HIDDEN
    lora = flop_cost(_setting("lora", layers=("l1",)))
    cla = flop_cost(_setting("cla", layers=("l1",)))
    # Forward: the frozen W x is 2 T m n; LoRA adds A x (2 T m r) and B (A x) (2 T r n); cLA's gather is free.
    assert lora.by_layer["l1"]["forward"] == 2 * T * m * n + 2 * T * m * R + 2 * T * R * n
    assert cla.by_layer["l1"]["forward"] == 2 * T * m * n + 2 * T * R * n
    # Backward of the first layer (its input is data): LoRA forms grad(A x) = g B (2 T n r), grad B (2 n T r) and
    # grad A (2 r T m); cLA only grad B. The frozen W takes no gradient and the data none either.
    assert lora.by_layer["l1"]["backward"] == 2 * T * n * R + 2 * n * T * R + 2 * R * T * m
    assert cla.by_layer["l1"]["backward"] == 2 * n * T * R
    # Totals add l2 and the head: 2 T (n * OUT + OUT * 2) forward, their input gradients backward.
    assert lora.forward == lora.by_layer["l1"]["forward"] + 2 * T * (n * OUT + OUT * 2)
    assert lora.total == lora.forward + lora.backward


def test_memory_cost_counts_adamw_state_and_gradients():
    s = _setting("lora")
    cost = memory_cost(s)
    trained = [p for p in s.model.parameters() if p.requires_grad]
    trained_bytes = sum(p.numel() * F32 for p in trained)
    assert cost.parameter_bytes_trained == trained_bytes
    assert cost.gradient_bytes == trained_bytes
    # AdamW: exp_avg and exp_avg_sq per trained tensor, plus a float32 step counter each (CPU default).
    assert cost.optimizer_state_bytes == 2 * trained_bytes + F32 * len(trained)
    held = cost.parameter_bytes_frozen + cost.parameter_bytes_trained + cost.buffer_bytes + cost.gradient_bytes
    assert cost.predicted_peak_bytes == held + cost.optimizer_state_bytes + cost.saved_activation_bytes
    assert cost.cuda_peak_bytes is None


def test_reruns_give_identical_bytes_and_flops():
    for method in ("lora", "cla", "paca", "c3la"):
        a, b = _setting(method), _setting(method)
        assert as_dict(memory_cost(a)) == as_dict(memory_cost(b))
        assert as_dict(flop_cost(a)) == as_dict(flop_cost(b))


def test_ratio_interval_is_exact_for_a_constant_ratio():
    ta = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    lo, hi = _ratio_interval(ta, 2 * ta, 0.95, 500, seed=0)
    assert lo == pytest.approx(2.0) and hi == pytest.approx(2.0)


def test_paired_timing_of_a_method_against_itself_contains_one():
    kw = {"m": 256, "hidden": 256, "out": 256}  # a few milliseconds a step: well above the clock's resolution
    a, b = _setting("lora", batch=64, **kw), _setting("lora", batch=64, **kw)
    t = paired_timing(a, b, pairs=30, warmup=3, level=0.99, seed=0)
    assert len(t.seconds_a) == len(t.seconds_b) == 30
    assert t.interval[0] <= t.ratio <= t.interval[1]
    assert t.interval[0] <= 1.0 <= t.interval[1], t


def test_paired_timing_refuses_one_pair():
    from genbound.core.errors import GenboundError

    s = _setting("lora")
    with pytest.raises(GenboundError, match="at least 2 pairs"):
        paired_timing(s, s, pairs=1)


def test_cost_command_json(capsys):
    code = main(["cost", "--backbone", "mlp", "--pair", "lora", "cla", "--rank", "4", "--timing-pairs", "3",
                 "--device", "cpu", "--json"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["methods"]) == {"lora", "cla"}
    lora, cla = out["methods"]["lora"]["memory"], out["methods"]["cla"]["memory"]
    assert lora["saved_frozen_bytes"] == cla["saved_frozen_bytes"]
    assert cla["saved_adapter_bytes"] < lora["saved_adapter_bytes"]
    assert out["methods"]["cla"]["flops"]["backward"] < out["methods"]["lora"]["flops"]["backward"]
    assert out["timing"]["a"] == "lora" and out["timing"]["b"] == "cla" and out["timing"]["pairs"] == 3


def test_cost_command_of_a_checkpoint_matches_its_setting(ckpt_dir, capsys):
    path = ckpt_dir("cla")
    assert main(["cost", str(path), "--device", "cpu", "--json"]) == 0
    from_ckpt = json.loads(capsys.readouterr().out)["methods"]["cla"]
    rank = from_ckpt["setting"]["rank"]
    assert main(["cost", "--backbone", "mlp", "--method", "cla", "--rank", str(rank), "--batch-size",
                 str(from_ckpt["setting"]["batch_size"]), "--device", "cpu", "--json"]) == 0
    direct = json.loads(capsys.readouterr().out)["methods"]["cla"]
    assert from_ckpt["memory"]["saved_adapter_bytes"] == direct["memory"]["saved_adapter_bytes"]


def test_cost_command_needs_something_to_measure(capsys):
    assert main(["cost", "--backbone", "mlp"]) == 2
    assert "--method" in capsys.readouterr().err


def test_square_saved_tensors_are_counted_apart():
    model, _ = _adapted("lora", layers=("l1",))
    x = torch.randn(T, M_IN)

    def forward():
        h = model.act(model.l1(x))
        return torch.softmax(h @ h.T, dim=-1).sum()  # softmax keeps its (T x T) output: what flash attention avoids

    loss, saved = saved_tensor_bytes(model, forward, square=T)
    loss.backward()
    assert saved.square == F32 * T * T
    assert saved.frozen == F32 * (T * HIDDEN + T * T)  # tanh's output (also the product's input) and the softmax


def test_cost_of_a_bfloat16_base_is_measured_in_it(capsys):
    # cost builds the step as train does, --dtype included: the frozen base in bfloat16 (trained tensors float32)
    runs = {}
    for dtype in ("float32", "bfloat16"):
        assert main(["cost", "--backbone", "mlp", "--method", "lora", "--rank", "4", "--device", "cpu",
                     "--dtype", dtype, "--json"]) == 0
        runs[dtype] = json.loads(capsys.readouterr().out)["methods"]["lora"]
    assert runs["bfloat16"]["setting"]["base_dtype"] == "bfloat16"
    assert runs["float32"]["setting"]["base_dtype"] == "float32"
    assert runs["bfloat16"]["memory"]["saved_frozen_bytes"] < runs["float32"]["memory"]["saved_frozen_bytes"]
