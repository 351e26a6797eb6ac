"""The methods beyond the paper against peft's own implementations, the registry, and refused options.

VeRA, DoRA and PiSSA are checked the way docs/concepts.md defines them: the same forward as peft's layer on
the same weights (peft is the reference implementation the papers point to), and PiSSA's residual base and
principal factors equal to peft's ``init_lora_weights="pissa"``.
"""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch
from torch import nn

from genbound.core.errors import GenboundError
from genbound.methods.adapters import AdaptedLinear
from genbound.methods.catalogue import METHODS, Method, get_method, register_method, unregister_method
from genbound.training.train import TrainConfig, train

peft = pytest.importorskip("peft")


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(12, 8)

    def forward(self, x):
        return self.fc(x)


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    return _Tiny(), torch.randn(5, 12)


def test_dora_forward_equals_peft_dora(tiny):
    base, x = tiny
    pm = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(r=4, lora_alpha=8, target_modules=["fc"],
                                                                  use_dora=True))
    layer = pm.base_model.model.fc
    ad = AdaptedLinear(copy.deepcopy(base.fc), get_method("dora"), "fc", 4, 8.0, 0)
    with torch.no_grad():
        torch.testing.assert_close(ad(x), base(x), rtol=0, atol=1e-6)  # m = ||W0||_row: DoRA starts at W0
        ad.A.normal_()
        ad.B.normal_()
        ad.magnitude.add_(torch.rand(8))
        layer.lora_A["default"].weight.copy_(ad.A)
        layer.lora_B["default"].weight.copy_(ad.B)
        layer.lora_magnitude_vector["default"].weight.copy_(ad.magnitude)
        torch.testing.assert_close(ad(x), pm(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ad.merged()(x), pm(x), rtol=1e-5, atol=1e-5)


def test_vera_forward_equals_peft_vera_and_a_b_are_shared_per_shape(tiny):
    base, x = tiny
    pm = peft.get_peft_model(copy.deepcopy(base), peft.VeraConfig(r=4, target_modules=["fc"]))
    layer = pm.base_model.model.fc
    ad = AdaptedLinear(copy.deepcopy(base.fc), get_method("vera"), "fc", 4, 8.0, 0)
    other = AdaptedLinear(nn.Linear(12, 8), get_method("vera"), "another.layer", 4, 8.0, 0)
    assert torch.equal(ad.vera_A, other.vera_A) and torch.equal(ad.vera_B, other.vera_B)
    assert not torch.equal(ad.vera_A, AdaptedLinear(nn.Linear(12, 8), get_method("vera"), "fc", 4, 8.0, 1).vera_A)
    assert torch.equal(ad.lambda_b, torch.zeros(8)) and torch.equal(ad.lambda_d, torch.full((4,), 0.1))
    with torch.no_grad():
        ad.lambda_b.normal_()
        ad.lambda_d.normal_()
        pm.base_model.vera_A["default"].copy_(ad.vera_A)
        pm.base_model.vera_B["default"].copy_(ad.vera_B)
        layer.vera_lambda_b["default"].copy_(ad.lambda_b)
        layer.vera_lambda_d["default"].copy_(ad.lambda_d)
        torch.testing.assert_close(ad(x), pm(x), rtol=1e-6, atol=1e-6)
        dW = torch.diag(ad.lambda_b) @ ad.vera_B @ torch.diag(ad.lambda_d) @ ad.vera_A
        torch.testing.assert_close(ad.update().materialize(), dW, rtol=1e-6, atol=1e-7)


def test_pissa_start_equals_peft_pissa(tiny):
    base, x = tiny
    pm = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(r=4, lora_alpha=8, target_modules=["fc"],
                                                                  init_lora_weights="pissa"))
    layer = pm.base_model.model.fc
    ad = AdaptedLinear(copy.deepcopy(base.fc), get_method("pissa"), "fc", 4, 8.0, 0)
    with torch.no_grad():
        torch.testing.assert_close(ad.base.weight, layer.base_layer.weight, rtol=0, atol=1e-6)
        ours = ad.scale * ad.B @ ad.A
        theirs = layer.scaling["default"] * layer.lora_B["default"].weight @ layer.lora_A["default"].weight
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)
        U, S, Vh = torch.linalg.svd(base.fc.weight.double())
        torch.testing.assert_close(ours.double(), U[:, :4] @ torch.diag(S[:4]) @ Vh[:4], rtol=0, atol=1e-6)
        torch.testing.assert_close(ad(x), base(x), rtol=0, atol=1e-5)  # theta_0 is the pretrained function
        assert float(ad.update().materialize().abs().max()) < 1e-6  # dW = s (B A - B0 A0) = 0 at start


def test_registry_adds_and_removes_a_method():
    spec = Method(name="lora_copy_test", title="LoRA copy", factor=get_method("lora").factor)
    register_method(spec)
    try:
        assert get_method("lora_copy_test") is spec
        with pytest.raises(GenboundError, match="already registered"):
            register_method(spec)
    finally:
        unregister_method("lora_copy_test")
    assert "lora_copy_test" not in METHODS
    with pytest.raises(GenboundError, match="cannot chain"):
        Method(name="bad", title="bad", factor=get_method("vera").factor, chained=True)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "genbound.cli", *args], capture_output=True, text=True, timeout=300)


def test_a_chain_with_fewer_steps_than_links_stops_before_training(tmp_path):
    out = tmp_path / "x"
    res = _cli("train", "--method", "c3la", "--backbone", "mlp", "--rank", "4", "--chain", "3", "--steps", "2",
               "--out", str(out))
    assert res.returncode == 2, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "at least 3 training steps" in res.stderr
    assert not out.exists()
    # The same rule holds when the step budget comes from epochs.
    with pytest.raises(GenboundError, match="at least 3 training steps"):
        train(TrainConfig(method="c3la", backbone="mlp", rank=2, chain=3, epochs=1, batch_size=1000,
                          progress=False), tmp_path / "y")
    assert not (tmp_path / "y").exists()


def test_lr_ratio_is_refused_for_methods_without_one(tmp_path):
    res = _cli("train", "--method", "lora", "--backbone", "mlp", "--steps", "2", "--lr-ratio", "4",
               "--out", str(tmp_path / "x"))
    assert res.returncode == 2
    assert len(res.stderr.strip().splitlines()) == 1 and "--lr-ratio" in res.stderr and "lora_plus" in res.stderr
    assert not (tmp_path / "x").exists()
    TrainConfig(method="lora_plus", backbone="mlp", steps=2, lr_ratio=4.0).validate()


def test_no_module_branches_on_a_method_name_or_family():
    """Behaviour lives in the method's factor kind: outside the catalogue nothing compares a method's name,
    family or A-initialisation to a literal (docs/concepts.md, "The methods")."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    names = "|".join(sorted(METHODS, key=len, reverse=True))
    patterns = [re.compile(r"\.family\b\s*(==|!=|\bin\b)"), re.compile(r"\ba_init\b"),
                re.compile(rf"(method|\.name)\s*(==|!=|\bin\b)\s*[\(\[]?\s*[\"']({names})[\"']")]
    hits = []
    for folder in ("genbound", "analysis"):
        for path in (root / folder).rglob("*.py"):
            if path.name in ("methods.py", "factors.py") and path.parent.name == "genbound":
                continue
            for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if any(p.search(line) for p in patterns):
                    hits.append(f"{path.relative_to(root)}:{i}: {line.strip()}")
    assert not hits, "\n".join(hits)
