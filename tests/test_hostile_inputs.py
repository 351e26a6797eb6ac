"""Hostile inputs that got through before issue 16: each one is refused in one line, before it allocates.

Every case starts from a real artefact (a checkpoint trained on the mlp backbone, a peft adapter, a saved
training state, a bounds configuration), changes what the issue lists, and checks that the reader refuses it
with one GenboundError (the command line: exit 2, one line, no traceback), and for the size bombs that it
does so before allocating what the file claims.
"""

from __future__ import annotations

import json
import math
import shutil
import signal
import struct
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from genbound.checkpoints.checkpoint import load_checkpoint, read_safetensors
from genbound.cli import main
from genbound.core.errors import CheckpointError, GenboundError
from genbound.sources.peft_import import load_peft

sys.path.insert(0, str(Path(__file__).resolve().parent))

import rss  # noqa: E402  (tests/rss.py)


def _copy(src: Path, dst: Path, edit=None, tensors=None) -> Path:
    shutil.copytree(src, dst)
    if edit is not None:
        meta = json.loads((dst / "genbound.json").read_text())
        edit(meta)
        (dst / "genbound.json").write_text(json.dumps(meta))
    if tensors is not None:
        t = load_file(str(dst / "tensors.safetensors"))
        tensors(t)
        save_file(t, str(dst / "tensors.safetensors"))
    return dst


def _cli_one_line(capsys, *argv: str) -> str:
    code = main(list(argv))
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("genbound: error: "), (code, err)
    return lines[0]


class _Alarm:
    """A hang fails the test instead of blocking the suite."""

    def __init__(self, seconds: int):
        self.seconds = seconds

    def __enter__(self):
        def fire(*_):
            raise TimeoutError(f"took more than {self.seconds} s")

        self.old = signal.signal(signal.SIGALRM, fire)
        signal.alarm(self.seconds)

    def __exit__(self, *exc):
        signal.alarm(0)
        signal.signal(signal.SIGALRM, self.old)
        return False

# -- genbound.json -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("alpha", [1e300, 0.0, -8.0])
def test_alpha_out_of_range_is_refused(ckpt_dir, tmp_path, capsys, alpha):
    def edit(m):
        m["alpha"] = alpha
        m["scale"] = alpha / m["rank"]

    d = _copy(ckpt_dir("lora"), tmp_path / "ck", edit)
    with pytest.raises(CheckpointError, match="alpha"):
        load_checkpoint(d)
    _cli_one_line(capsys, "spectra", str(d))

def test_training_refuses_zero_or_negative_alpha(tmp_path, capsys):
    for alpha in ("0", "-8"):
        line = _cli_one_line(capsys, "train", "--method", "lora", "--backbone", "mlp", "--alpha", alpha,
                             "--steps", "2", "--out", str(tmp_path / "x"))
        assert "alpha" in line

def test_dtype_other_than_the_backbones_is_refused(ckpt_dir, tmp_path):
    def to64(t):
        for k in list(t):
            if t[k].is_floating_point():
                t[k] = t[k].double()

    d = _copy(ckpt_dir("lora"), tmp_path / "ck", lambda m: m.update(dtype="float64"), to64)
    with pytest.raises(CheckpointError, match="dtype float64 differs from the backbone's float32"):
        load_checkpoint(d)

def test_head_width_contradicting_the_backbone_is_refused(ckpt_dir, tmp_path):
    def head64(t):
        t["head.weight"] = t["head.weight"][:, :64].contiguous()

    d = _copy(ckpt_dir("lora"), tmp_path / "ck", lambda m: m.update(head_in_features=64), head64)
    with pytest.raises(CheckpointError, match="head_in_features 64"):
        load_checkpoint(d)

def test_a_layer_named_like_the_head_is_refused(ckpt_dir, tmp_path):
    def extra(t):
        t["head.B"] = torch.zeros(5, 4)
        t["head.A"] = torch.zeros(4, 128)

    d = _copy(ckpt_dir("lora"), tmp_path / "ck",
              lambda m: m["layers"].append({"name": "head", "out_features": 5, "in_features": 128}), extra)
    with pytest.raises(CheckpointError, match="named like the classification head"):
        load_checkpoint(d)

@pytest.mark.parametrize("max_length", [1000, 20_000, 1 << 20])
def test_max_length_beyond_the_position_table_is_refused_before_tokenizing(max_length):
    from genbound.checkpoints.checkpoint import LayerInfo
    from genbound.checkpoints.claims import check_meta_claims

    class Meta:
        backbone, dtype, head_in_features = "minilm", "float32", 384
        layers = [LayerInfo("backbone.encoder.layer.0.attention.self.query", 384, 384)]

    Meta.max_length = max_length
    with pytest.raises(CheckpointError, match="exceeds the backbone's 512 positions"):
        check_meta_claims(Meta, "ck")
    Meta.max_length = 512
    assert check_meta_claims(Meta, "ck").max_positions == 512

def test_escape_sequences_from_metadata_never_reach_the_terminal(ckpt_dir, tmp_path, capsys):
    d = _copy(ckpt_dir("lora"), tmp_path / "ck", lambda m: m.update(method="\x1b[2J\x1b[31mlora"))
    line = _cli_one_line(capsys, "spectra", str(d))
    assert "\x1b" not in line and "control character" in line
    err = GenboundError("unknown method '\x1b[31mx'")
    assert "\x1b" not in str(err) and "\\x1b" in str(err)

def test_duplicate_selector_columns_are_refused_at_load(ckpt_dir, tmp_path, capsys):
    def dup(t):
        c = t["fc1.columns"].clone()
        c[1] = c[0]
        t["fc1.columns"] = c

    d = _copy(ckpt_dir("cla"), tmp_path / "ck", tensors=dup)
    with pytest.raises(CheckpointError, match="selects a column twice"):
        load_checkpoint(d)
    _cli_one_line(capsys, "spectra", str(d))

def test_singular_values_with_repeated_columns_never_build_a_selector():
    """Checked against the dense matrix on a small case, and on a claimed width of 2^40 columns (a dense
    selector would need terabytes)."""
    from genbound.diagnostics.spectra import singular_values
    from genbound.methods.update import LayerUpdate

    g = torch.Generator().manual_seed(0)
    B = torch.randn(5, 4, generator=g, dtype=torch.float64)
    cols = torch.tensor([1, 1, 3, 6])
    u = LayerUpdate("x", 5, 7, 0.5, B, None, cols)
    A = torch.zeros(4, 7, dtype=torch.float64)
    A[torch.arange(4), cols] = 1.0
    dense = torch.linalg.svdvals(0.5 * B @ A)
    torch.testing.assert_close(singular_values(u), dense[:4], atol=1e-12, rtol=1e-10)  # rank 3: dense[3] = 0
    huge = LayerUpdate("x", 5, 1 << 40, 0.5, B, None, torch.tensor([0, 0, (1 << 40) - 1, 5]))
    assert singular_values(huge).numel() == 4

# -- size bombs ---------------------------------------------------------------------------------------------

def test_cla_checkpoint_claiming_a_huge_layer_is_refused_before_allocating(ckpt_dir, tmp_path, capsys):
    def edit(m):
        m["layers"] = [{"name": "fc1", "out_features": 1024, "in_features": 1 << 20}]
        m["rank"] = 1024
        m["scale"] = m["alpha"] / 1024

    d = _copy(ckpt_dir("cla"), tmp_path / "ck", edit)
    before = rss.start()
    with _Alarm(60), pytest.raises(CheckpointError, match="backbone"):
        load_checkpoint(d)
    _cli_one_line(capsys, "spectra", str(d))
    assert rss.peak() - before < 256 << 20

def _sparse_safetensors(path: Path, key: str, shape: tuple[int, ...]) -> None:
    nbytes = math.prod(shape) * 4
    header = json.dumps({key: {"dtype": "F32", "shape": list(shape), "data_offsets": [0, nbytes]}}).encode()
    header += b" " * (-len(header) % 8)
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(header)) + header)
    with open(path, "r+b") as fh:
        fh.truncate(8 + len(header) + nbytes)  # a hole: kilobytes on disk, gigabytes claimed

def test_sparse_fft_file_claiming_a_huge_layer_is_refused_before_reading(ckpt_dir, tmp_path, capsys):
    d = _copy(ckpt_dir("fft"), tmp_path / "ck",
              lambda m: m["layers"][0].update(out_features=23170, in_features=23170))
    _sparse_safetensors(d / "tensors.safetensors", "model.fc1.weight", (23170, 23170))
    before = rss.start()
    with _Alarm(60), pytest.raises(CheckpointError):
        load_checkpoint(d)
    # The same claim as an extra tensor beside a genuine metadata file: refused by the size bound.
    d2 = _copy(ckpt_dir("fft"), tmp_path / "ck2")
    _sparse_safetensors(d2 / "tensors.safetensors", "model.extra.weight", (23170, 23170))
    with _Alarm(60), pytest.raises(CheckpointError):
        load_checkpoint(d2)
    with pytest.raises(CheckpointError, match="claim"):
        read_safetensors(d2 / "tensors.safetensors", max_bytes=64 << 20)
    _cli_one_line(capsys, "spectra", str(d2))
    assert rss.peak() - before < 256 << 20

@pytest.fixture(scope="module")
def peft_dir(tmp_path_factory):
    from peft import LoraConfig, get_peft_model

    from genbound.models.backbones import get_backbone

    torch.manual_seed(0)
    model = get_backbone("mlp").build(5, 0)
    pm = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["fc1", "fc2"]))
    root = tmp_path_factory.mktemp("peft-hostile")
    pm.save_pretrained(root / "peft")
    return root / "peft"

def test_zip_bomb_adapter_bin_is_refused_before_loading(peft_dir, tmp_path, capsys):
    d = tmp_path / "bomb"
    d.mkdir()
    cfg = json.loads((peft_dir / "adapter_config.json").read_text())
    (d / "adapter_config.json").write_text(json.dumps(cfg))
    plain = tmp_path / "plain.bin"
    torch.save({"base_model.model.fc1.lora_A.weight": torch.zeros(32 << 20 >> 2)}, plain)  # 32 MiB of zeros
    with zipfile.ZipFile(plain) as src, zipfile.ZipFile(d / "adapter_model.bin", "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info.filename))
    plain.unlink()
    assert (d / "adapter_model.bin").stat().st_size < 1 << 20
    before = rss.start()
    with pytest.raises(CheckpointError, match="zip bomb"):
        load_peft(d)
    _cli_one_line(capsys, "spectra", str(d))
    assert rss.peak() - before < 24 << 20

@pytest.mark.parametrize("field, value", [("lora_alpha", 1e308), ("alpha_pattern", {"fc1": 1e308}),
                                          ("lora_alpha", -1), ("r", True), ("rank_pattern", {"fc1": "4"})])
def test_adapter_config_values_out_of_range_are_refused(peft_dir, tmp_path, capsys, field, value):
    d = tmp_path / "a"
    shutil.copytree(peft_dir, d)
    cfg = json.loads((d / "adapter_config.json").read_text())
    cfg[field] = value
    (d / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(GenboundError, match=field):
        load_peft(d)
    _cli_one_line(capsys, "spectra", str(d))

def test_rank_pattern_work_is_bounded_in_total(tmp_path):
    """300 patterns with two quantifiers each over 200 module names of 240 characters: about 12 minutes of
    backtracking before; refused before any pattern runs."""
    d = tmp_path / "a"
    d.mkdir()
    tensors = {}
    for i in range(200):
        module = "a." * 110 + f"m{i:03d}"
        tensors[f"base_model.model.{module}.lora_A.weight"] = torch.zeros(1, 2)
        tensors[f"base_model.model.{module}.lora_B.weight"] = torch.zeros(2, 1)
    save_file(tensors, str(d / "adapter_model.safetensors"))
    cfg = {"peft_type": "LORA", "r": 1, "lora_alpha": 1,
           "rank_pattern": {f"[a.]*[a.]*z{i}": 1 for i in range(300)}}
    (d / "adapter_config.json").write_text(json.dumps(cfg))
    with _Alarm(60), pytest.raises(GenboundError, match="regular-expression steps"):
        load_peft(d)
    cfg["rank_pattern"] = {"m007": 1, "m1[0-9]+": 1}  # real patterns over the same modules load
    (d / "adapter_config.json").write_text(json.dumps(cfg))
    with _Alarm(60):
        assert len(load_peft(d).meta.layers) == 200

# -- bounds configurations ------------------------------------------------------------------------------------

@pytest.mark.parametrize("edit", [{"q": "abc"}, {"head": "1925x"}, {"rank": 1.5}, {"q": 1e400}, {"layers": "9" * 5000},
                                  {"layers": "768x768*99999999"}, {"n": True}, {"sigma": None, "loss": 3}])
def test_bad_bounds_configs_are_one_line(tmp_path, capsys, edit):
    cfg = {"layers": "768x768*24", "rank": 16, "n": 3668}
    cfg.update(edit)
    text = json.dumps(cfg).replace("Infinity", "1e400")
    (tmp_path / "cfg.json").write_text(text)
    _cli_one_line(capsys, "bounds", "--config", str(tmp_path / "cfg.json"))

def test_bounds_config_without_n_takes_the_option(tmp_path, capsys):
    (tmp_path / "cfg.json").write_text(json.dumps({"layers": "768x768*24", "rank": 16}))
    assert main(["bounds", "--config", str(tmp_path / "cfg.json"), "--n", "3668", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)["reports"][0]
    assert report["config"]["n_train"] == 3668 if "config" in report else "3668" in json.dumps(report)

# -- the training state (.<name>.state/state.json) ---------------------------------------------------------------

class _Killed(BaseException):
    pass

@pytest.fixture(scope="module")
def saved_state(tmp_path_factory):
    """A run of 45 steps killed right after its first saved state (step 10), as a pristine copy."""
    import genbound.training.train as train_module
    from genbound.checkpoints.resume import state_dir_for
    from genbound.training.train import TrainConfig, train

    root = tmp_path_factory.mktemp("state")
    out = root / "run"
    original = train_module.save_state

    def save_then_die(path, state):
        original(path, state)
        raise _Killed

    train_module.save_state = save_then_die
    try:
        with pytest.raises(_Killed):
            train(TrainConfig(method="lora", backbone="mlp", dataset="digits", rank=4, alpha=8.0, steps=45,
                              lr=1e-2, progress=False), out, save_every=10)
    finally:
        train_module.save_state = original
    return out, state_dir_for(out)

def _state_case(saved_state, tmp_path, edit_json=None, edit_tensors=None):
    from genbound.checkpoints.resume import state_dir_for

    out, state = saved_state
    new_out = tmp_path / "run"
    shutil.copytree(state, state_dir_for(new_out))
    sj = state_dir_for(new_out) / "state.json"
    if edit_json is not None:
        sj.write_text(edit_json(sj.read_text()))
    if edit_tensors is not None:
        st = state_dir_for(new_out) / "state.safetensors"
        t = load_file(str(st))
        edit_tensors(t)
        save_file(t, str(st), metadata={"format": "genbound-train-state"})
    return new_out

def _edit_field(key, value):
    def edit(text):
        js = json.loads(text)
        js[key] = value
        return json.dumps(js)

    return edit

def _with_lr(optimizer, lr):
    optimizer["param_groups"][0]["lr"] = lr
    return optimizer

STATE_CASES = {
    "running-nan": lambda t: t.replace('"running": ', '"running": NaN, "x": '),
    "running-huge": lambda t: t.replace('"running": ', '"running": 1e400, "x": '),
    "step-string": _edit_field("step", "10"),
    "step-bool": _edit_field("step", True),
    "step-plus-one": lambda t: _edit_field("step", json.loads(t)["step"] + 1)(t),
    "position-1e12": _edit_field("position", 10**12),
    "position-off-batch": _edit_field("position", 5),
    "epoch-negative": _edit_field("epoch", -1),
    "history-wrong-type": _edit_field("history", [1, 2]),
    "links-float": _edit_field("links", {"fc1": 0.5, "fc2": 0}),
    "optimizer-empty": _edit_field("optimizer", {}),
    "optimizer-lr-string": lambda t: _edit_field("optimizer", _with_lr(json.loads(t)["optimizer"], "nan"))(t),
}

@pytest.mark.parametrize("case", sorted(STATE_CASES))
def test_corrupt_resume_state_is_refused_like_a_checkpoint(saved_state, tmp_path, capsys, case):
    out = _state_case(saved_state, tmp_path, STATE_CASES[case])
    line = _cli_one_line(capsys, "train", "--method", "lora", "--backbone", "mlp", "--dataset", "digits", "--rank",
                         "4", "--alpha", "8", "--steps", "45", "--lr", "1e-2", "--out", str(out), "--resume")
    assert "delete it" in line

def test_short_rng_state_is_refused(saved_state, tmp_path):
    from genbound.checkpoints.resume import load_state, state_dir_for

    def short(t):
        t["rng/cpu"] = t["rng/cpu"][:100].contiguous()

    out = _state_case(saved_state, tmp_path, edit_tensors=short)
    with pytest.raises(CheckpointError, match="RNG state"):
        load_state(state_dir_for(out))

def test_a_genuine_state_still_resumes(saved_state, tmp_path, capsys):
    out = _state_case(saved_state, tmp_path)
    assert main(["train", "--method", "lora", "--backbone", "mlp", "--dataset", "digits", "--rank", "4", "--alpha",
                 "8", "--steps", "45", "--lr", "1e-2", "--out", str(out), "--resume"]) == 0
    assert "resumed from the saved state at step(s) 10" in capsys.readouterr().out

def test_hessian_top_k_beyond_what_is_available_says_so(ckpt_dir, capsys):
    assert main(["hessian", str(ckpt_dir("lora")), "--top-k", "5000", "--samples", "32", "--max-steps", "10"]) == 0
    err = capsys.readouterr().err
    assert "--top-k 5000 is more than the 10 eigenvalues available" in err, err

@pytest.mark.parametrize("length", ["20000", "1048576", "1"])
def test_training_refuses_a_max_length_beyond_the_position_table(tmp_path, capsys, monkeypatch, length):
    import genbound.training.train as train_module

    monkeypatch.setattr(train_module, "get_dataset", lambda *a: pytest.fail("tokenizing started"))
    line = _cli_one_line(capsys, "train", "--method", "lora", "--backbone", "minilm", "--max-length", length,
                         "--steps", "2", "--out", str(tmp_path / "x"))
    assert "positions" in line
