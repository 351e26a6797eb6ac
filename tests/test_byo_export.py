"""genbound export --peft: peft loads the adapter and its forward equals genbound's; reading it back keeps the
method and its data-dependent count."""

from __future__ import annotations

import json

import pytest
import torch

from genbound.checkpoints.checkpoint import load_checkpoint
from genbound.cli import main
from genbound.methods.catalogue import METHODS
from genbound.models.tinymodels import make_pairs_csv, make_text_model
from genbound.sources.export import export_peft
from genbound.sources.peft_import import load_peft
from genbound.training.train import TrainConfig, train

peft = pytest.importorskip("peft")
from peft import PeftModel  # noqa: E402


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    return root, make_text_model(root / "rob", "roberta"), make_text_model(root / "gpt2", "gpt2"), \
        make_pairs_csv(root / "pairs.csv", n=90)


def _train(root, folder, data, method, name):
    chain = 2 if METHODS[method].chained else 1
    cfg = TrainConfig(method=method, backbone=str(folder), dataset=str(data), text_columns=["s1", "s2"],
                      split_column="split", rank=2, chain=chain, steps=4, batch_size=16, max_length=16,
                      progress=False, lr=5e-3, targets=["query", "value", "c_attn"])
    return train(cfg, root / name, save_every=0).meta


# Every adapter method; DoRA as peft's own DoRA (use_dora with lora_magnitude_vector).
EXPORTABLE = [m for m in METHODS if METHODS[m].adapter]


@pytest.mark.parametrize("method", EXPORTABLE)
def test_export_loads_in_peft_with_equal_logits(setup, method):
    from transformers import AutoModelForSequenceClassification

    root, rob, gpt2, data = setup
    for folder in (rob, gpt2) if method in ("cla", "lora", "dora") else (rob,):
        name = f"{method}-{folder.name}"
        meta = _train(root, folder, data, method, name)
        out = root / f"{name}-peft"
        assert main(["export", str(root / name), "--peft", str(out)]) == 0
        ck = load_checkpoint(root / name)
        test = ck.load_splits().test
        with torch.no_grad():
            ours = ck.build_model()(**test.features)
            base = AutoModelForSequenceClassification.from_pretrained(str(folder), local_files_only=True)
            pm = PeftModel.from_pretrained(base, str(out)).eval()
            theirs = pm(**test.features).logits
            merged = pm.merge_and_unload()(**test.features).logits
        torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(merged, ours, rtol=1e-5, atol=1e-5)
        back = load_peft(out, resolve=False)
        assert back.meta.method == method and back.method.name == method
        assert back.meta.params["data_dependent"] == meta.params["data_dependent"]
        assert back.meta.n_train == meta.n_train


def test_export_of_dora_is_peft_dora(ckpt_dir, tmp_path):
    """DoRA goes out as peft's own DoRA: use_dora with the trained magnitude, and comes back as dora."""
    ck = load_checkpoint(ckpt_dir("dora"))
    cfg = export_peft(ck, tmp_path / "d")
    assert cfg["use_dora"] is True and cfg["peft_type"] == "LORA"
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "d" / "adapter_model.safetensors"))
    for li in ck.meta.layers:
        torch.testing.assert_close(saved[f"base_model.model.{li.name}.lora_magnitude_vector"],
                                   ck.tensors[f"{li.name}.magnitude"].float())
    pm = PeftModel.from_pretrained(ck.initial_model(), str(tmp_path / "d")).eval()
    x = ck.load_splits().test.features["x"]
    with torch.no_grad():
        torch.testing.assert_close(pm(x), ck.build_model()(x=x), rtol=1e-5, atol=1e-5)
    back = load_peft(tmp_path / "d", resolve=False)
    assert back.method.name == "dora" and back.meta.params["data_dependent"] == ck.meta.params["data_dependent"]


def test_export_refuses_fft_and_existing_folder(setup, ckpt_dir, tmp_path, capsys):
    fft = ckpt_dir("fft")
    assert main(["export", str(fft), "--peft", str(tmp_path / "p")]) == 2
    assert "has no adapter to export" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()
    (tmp_path / "q").mkdir()
    (tmp_path / "q" / "x").write_text("keep")
    assert main(["export", str(ckpt_dir("lora")), "--peft", str(tmp_path / "q")]) == 2
    assert (tmp_path / "q" / "x").read_text() == "keep"


def test_export_of_mlp_checkpoint_wraps_genbound_model(ckpt_dir, tmp_path):
    ck = load_checkpoint(ckpt_dir("c3la", chain=2))
    cfg = export_peft(ck, tmp_path / "p")
    assert cfg["modules_to_save"] == ["head"] and cfg["r"] == ck.meta.rank * 2
    model = ck.initial_model()
    pm = PeftModel.from_pretrained(model, str(tmp_path / "p")).eval()
    x = ck.load_splits().test.features["x"]
    with torch.no_grad():
        torch.testing.assert_close(pm(x), ck.build_model()(x=x), rtol=1e-5, atol=1e-5)
    rec = json.loads((tmp_path / "p" / "adapter_config.json").read_text())["genbound"]
    assert rec["method"] == "c3la" and rec["data_dependent"] == ck.meta.params["data_dependent"]


@pytest.mark.parametrize("method", ["lora", "cla"])
def test_export_of_own_model_evaluates_as_its_checkpoint(ckpt_dir, tmp_path, capsys, method):
    """`genbound export` then `genbound evaluate` on the export: an adapter written for genbound's own model
    (module names as in genbound, the head saved as ``head``) is rebuilt on that model, not on a Hugging Face
    folder, and gives the checkpoint's own losses."""
    src = ckpt_dir(method)
    export_peft(load_checkpoint(src), tmp_path / "p")
    assert main(["evaluate", str(src), "--json"]) == 0
    want = json.loads(capsys.readouterr().out)
    assert main(["evaluate", str(tmp_path / "p"), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    for key in ("train_loss", "test_loss", "gap", "train_accuracy", "test_accuracy"):
        assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-6), key
