"""Reliability (issue 9): resumable training, atomic artefacts, pickle refusal, numerical guards.

The independent reference for resuming is an uninterrupted run with the same seed: a resumed run must end
with the same ``tensors.safetensors`` bytes and the same ``genbound.json`` apart from ``metrics`` (wall
time, memory, ``resumed_at``).
"""

from __future__ import annotations

import json
import os
import pickle
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

import genbound.training.train as train_module
from genbound.checkpoints.checkpoint import load_checkpoint, save_checkpoint
from genbound.checkpoints.resume import state_dir_for
from genbound.core.atomic import atomic_directory, clean_stale, write_bytes
from genbound.core.errors import CheckpointError, GenboundError, NonFiniteError
from genbound.diagnostics.evaluate import evaluate
from genbound.sources.peft_import import load_peft
from genbound.training.train import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    # The same thread count as this process: float reductions are then the same in every process.
    n = str(torch.get_num_threads())
    return {**os.environ, "OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n, "HF_HUB_OFFLINE": "1",
            "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _meta_without_metrics(path: Path) -> dict:
    meta = json.loads((path / "genbound.json").read_text())
    meta.pop("metrics")
    return meta


def _same_run(a: Path, b: Path) -> None:
    assert (a / "tensors.safetensors").read_bytes() == (b / "tensors.safetensors").read_bytes()
    if (a / "trajectory.safetensors").exists():
        assert (a / "trajectory.safetensors").read_bytes() == (b / "trajectory.safetensors").read_bytes()
    assert _meta_without_metrics(a) == _meta_without_metrics(b)


@pytest.fixture(scope="module")
def digits():
    from genbound.data.datasets import get_dataset
    from genbound.models.backbones import get_backbone

    return get_dataset("digits").load(get_backbone("mlp"), 0, 128)


def _config(method: str, **kw) -> TrainConfig:
    chained = method in ("cola", "rac", "c3la", "rc3la")
    settings = dict(method=method, backbone="mlp", dataset="digits", rank=4, alpha=8.0, chain=3 if chained else 1,
                    steps=45, batch_size=32, lr=1e-3 if method == "fft" else 1e-2, seed=0, progress=False,
                    save_trajectory=True, trajectory_every=15)
    settings.update(kw)
    return TrainConfig(**settings)


class Interrupted(BaseException):
    """Stands for a kill right after the n-th state was written."""


_original_save_state = train_module.save_state


def _interrupt_after(monkeypatch, n: int) -> list[int]:
    saved: list[int] = []
    original = train_module.save_state

    def save_then_die(path, state):
        original(path, state)
        saved.append(state.step)
        if len(saved) == n:
            raise Interrupted

    monkeypatch.setattr(train_module, "save_state", save_then_die)
    return saved


# digits: 628 training examples, 20 steps per epoch at batch 32; saves at steps 10, 20, epoch end 20, 30, 40,
# epoch end 40, ... so the interruptions below land mid-epoch, on the last batch before the epoch's
# validation (position = N), and after an epoch's validation; 45 steps put chain boundaries at 15 and 30.
@pytest.mark.parametrize("method, nth", [("lora_plus", 2), ("rac", 3), ("rc3la", 4), ("paca", 2), ("fft", 3),
                                         ("cola", 5)])
def test_interrupted_run_resumes_bit_identical(tmp_path, monkeypatch, digits, method, nth):
    reference = train(_config(method), tmp_path / "ref", splits=digits, save_every=10).path
    saved = _interrupt_after(monkeypatch, nth)
    with pytest.raises(Interrupted):
        train(_config(method), tmp_path / "run", splits=digits, save_every=10)
    monkeypatch.undo()
    assert not (tmp_path / "run").exists() and state_dir_for(tmp_path / "run").is_dir()
    result = train(_config(method), tmp_path / "run", splits=digits, save_every=10, resume=True)
    _same_run(reference, result.path)
    assert result.meta.metrics["resumed_at"] == [saved[-1]]
    assert not state_dir_for(tmp_path / "run").exists(), "the state is removed once the checkpoint is written"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ref", "run"]


def _dropout_loss(logits, labels):
    """Stands in for the trainer's loss (genbound.models.losses.mean_loss): the loss sees dropout on the logits, so
    every step draws from the global torch RNG as MiniLM's dropout does (the mlp backbone has none)."""
    return torch.nn.functional.cross_entropy(torch.nn.functional.dropout(logits, 0.3, training=True), labels)


@pytest.mark.parametrize("restore_rng", [True, False])
def test_dropout_rng_is_restored(tmp_path, monkeypatch, digits, restore_rng):
    monkeypatch.setattr(train_module, "mean_loss", _dropout_loss)
    reference = train(_config("lora", save_trajectory=False), tmp_path / "ref", splits=digits, save_every=10).path
    _interrupt_after(monkeypatch, 2)
    with pytest.raises(Interrupted):
        train(_config("lora", save_trajectory=False), tmp_path / "run", splits=digits, save_every=10)
    monkeypatch.setattr(train_module, "save_state", _original_save_state)
    if not restore_rng:  # the control: without the RNG state the resumed run drifts, so the check can fail
        monkeypatch.setattr(torch, "set_rng_state", lambda state: None)
    result = train(_config("lora", save_trajectory=False), tmp_path / "run", splits=digits, save_every=10,
                   resume=True)
    same = (reference / "tensors.safetensors").read_bytes() == (result.path / "tensors.safetensors").read_bytes()
    assert same == restore_rng


def test_killed_training_subprocess_resumes_bit_identical(tmp_path):
    """A real `genbound train` killed with SIGKILL after its first chain boundary, at a random moment after a
    state was saved, then resumed with --resume: bytes equal an uninterrupted run started beside it. The two
    processes train concurrently into one sweep directory, each with its own state beside its checkpoint:
    neither clobbers the other, and nothing but the two checkpoints is left at the end."""
    args = ["--method", "cola", "--backbone", "mlp", "--dataset", "digits", "--rank", "4", "--alpha", "8",
            "--chain", "3", "--steps", "3000", "--batch-size", "32", "--lr", "1e-2", "--seed", "0",
            "--save-every", "20", "--device", "cpu"]
    cmd = [sys.executable, "-m", "genbound.cli", "train", *args]
    sweep = tmp_path / "sweep"
    ref = subprocess.Popen([*cmd, "--out", str(sweep / "ref")], env=_env(), stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True)
    victim = subprocess.Popen([*cmd, "--out", str(sweep / "run")], env=_env(), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    state = state_dir_for(sweep / "run") / "state.json"
    deadline = time.monotonic() + 240
    killed_after = None
    try:
        while time.monotonic() < deadline and victim.poll() is None:
            try:
                step = json.loads(state.read_text())["step"]
            except (OSError, ValueError, KeyError):
                step = 0
            # past the chain boundary at step 1000; a step of the mlp takes about 1 ms, so the 1,950 or more
            # left outlast the random wait (with 200 steps the run once finished inside it, on a quiet machine)
            if step >= 1050:
                time.sleep(random.Random().uniform(0.0, 0.4))  # anywhere between two saves
                killed_after = step
                victim.send_signal(signal.SIGKILL)
                break
            time.sleep(0.05)
        victim.wait(timeout=60)
    finally:
        if victim.poll() is None:
            victim.kill()
    assert killed_after is not None and victim.returncode == -signal.SIGKILL, victim.stderr.read()
    assert not (sweep / "run").exists(), "a killed run must leave no checkpoint"
    saved = json.loads(state.read_text())
    assert 1050 <= saved["step"] < 3000 and saved["links"] and all(v >= 1 for v in saved["links"].values())
    resumed = subprocess.run([*cmd, "--out", str(sweep / "run"), "--resume"], env=_env(), capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from the saved state at step(s) {saved['step']}" in resumed.stdout
    assert ref.wait(timeout=300) == 0, ref.stderr.read()
    _same_run(sweep / "ref", sweep / "run")
    assert sorted(p.name for p in sweep.iterdir()) == ["ref", "run"], "no state or temporaries left behind"
    print(f"\nkill-and-resume: killed after the state of step {killed_after}, resumed from step {saved['step']}, "
          "tensors.safetensors byte-identical")


def test_resume_refusals_and_idempotence(tmp_path, monkeypatch, digits):
    out = tmp_path / "run"
    _interrupt_after(monkeypatch, 1)
    with pytest.raises(Interrupted):
        train(_config("lora"), out, splits=digits, save_every=10)
    monkeypatch.undo()
    with pytest.raises(GenboundError, match="--resume"):
        train(_config("lora"), out, splits=digits)  # a saved state is not silently discarded
    with pytest.raises(GenboundError, match="lr=0.01, this run has lr=0.02"):
        train(_config("lora", lr=2e-2), out, splits=digits, resume=True)
    first = train(_config("lora"), out, splits=digits, resume=True)
    stamp = (out / "tensors.safetensors").stat().st_mtime_ns
    # A finished run is returned as it is, and a state left by a kill after the checkpoint is cleaned up.
    state_dir_for(out).mkdir()
    again = train(_config("lora"), out, splits=digits, resume=True)
    assert (out / "tensors.safetensors").stat().st_mtime_ns == stamp and again.meta.results == first.meta.results
    assert not state_dir_for(out).exists()
    with pytest.raises(GenboundError, match="rank=4, this run has rank=8"):
        train(_config("lora", rank=8), out, splits=digits, resume=True)
    # Without a state --resume simply starts; --overwrite discards a state.
    fresh = train(_config("lora"), tmp_path / "fresh", splits=digits, resume=True)
    _same_run(fresh.path, out)
    with pytest.raises(GenboundError, match="--save-every"):
        train(_config("lora"), tmp_path / "x", splits=digits, save_every=-1)


def test_corrupt_state_is_a_clear_error(tmp_path, monkeypatch, digits):
    out = tmp_path / "run"
    _interrupt_after(monkeypatch, 1)
    with pytest.raises(Interrupted):
        train(_config("lora"), out, splits=digits, save_every=10)
    monkeypatch.undo()
    st = state_dir_for(out) / "state.safetensors"
    data = bytearray(st.read_bytes())
    st.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(CheckpointError, match="corrupt|truncated"):
        train(_config("lora"), out, splits=digits, resume=True)
    st.write_bytes(bytes(data))
    (state_dir_for(out) / "state.json").write_text("{")
    with pytest.raises(CheckpointError, match="delete it"):
        train(_config("lora"), out, splits=digits, resume=True)
    train(_config("lora"), out, splits=digits, overwrite=True)  # --overwrite discards it
    assert not state_dir_for(out).exists()


# -- atomic artefacts ----------------------------------------------------------------------------------


_WRITER = """
import sys, time
from pathlib import Path
from genbound.core.atomic import atomic_directory
target, value, go, overwrite = sys.argv[1:5]
while not Path(go).exists():
    time.sleep(0.001)
try:
    with atomic_directory(target, overwrite=overwrite == "1") as tmp:
        (tmp / "big.bin").write_bytes(value.encode() * 4_000_000)
        (tmp / "small.txt").write_text(value)
    print("won")
except FileExistsError:
    print("lost")
"""


@pytest.mark.parametrize("overwrite", [False, True])
def test_two_writers_of_one_target_one_wins_whole(tmp_path, overwrite):
    target, go = tmp_path / "target", tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, str(target), v, str(go), "1" if overwrite else "0"],
                              env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for v in "abc"]
    time.sleep(0.5)  # let every writer reach its start line
    go.touch()
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1] for o in outs]
    assert sum(o[0].strip() == "won" for o in outs) == (3 if overwrite else 1), outs
    value = (target / "small.txt").read_text()
    assert value in ("a", "b", "c") and (target / "big.bin").read_bytes() == value.encode() * 4_000_000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["go", "target"], "no temporaries left behind"


def test_a_checkpoint_written_meanwhile_is_kept(tmp_path, ckpt_dir, monkeypatch):
    """save_checkpoint without overwrite, when another process puts the target in place while this one
    writes: the other's checkpoint stays and this one ends in a CheckpointError."""
    import contextlib

    import genbound.checkpoints.checkpoint as ckmod

    ck = load_checkpoint(ckpt_dir("lora"))
    target = tmp_path / "ck"
    original = ckmod.atomic_directory

    @contextlib.contextmanager
    def racing(path, overwrite=False, **kw):
        with original(path, overwrite=overwrite, **kw) as tmp:
            yield tmp
            Path(path).mkdir()  # the other writer finishes first
            (Path(path) / "genbound.json").write_text("{}")

    monkeypatch.setattr(ckmod, "atomic_directory", racing)
    with pytest.raises(CheckpointError, match="written meanwhile"):
        save_checkpoint(target, ck.meta, ck.tensors)
    assert (target / "genbound.json").read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]


def test_write_bytes_concurrent_writers_leave_one_whole_file(tmp_path):
    target = tmp_path / "table.md"
    code = ("import sys; from genbound.core.atomic import write_bytes\n"
            "for _ in range(30): write_bytes(sys.argv[1], sys.argv[2].encode() * 200_000)")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(target), ch], env=_env()) for ch in "ab"]
    seen = set()
    while any(p.poll() is None for p in procs):
        if target.exists():
            data = target.read_bytes()
            assert len(data) == 200_000 and len(set(data)) == 1, "a reader saw a partial or mixed file"
            seen.add(data[:1])
    assert all(p.wait() == 0 for p in procs)
    assert target.read_bytes() in (b"a" * 200_000, b"b" * 200_000)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["table.md"]


def test_overwriting_a_checkpoint_never_hides_it_from_readers(tmp_path, ckpt_dir):
    """With renameat2(RENAME_EXCHANGE) the path names a complete checkpoint at every moment."""
    ck = load_checkpoint(ckpt_dir("lora"))
    target = tmp_path / "ck"
    save_checkpoint(target, ck.meta, ck.tensors)
    errors: list[Exception] = []
    stop = threading.Event()

    def reader():
        while not stop.is_set():
            try:
                load_checkpoint(target)
            except Exception as exc:  # noqa: BLE001 - any failure is the finding
                errors.append(exc)

    t = threading.Thread(target=reader)
    t.start()
    try:
        for _ in range(25):
            save_checkpoint(target, ck.meta, ck.tensors, overwrite=True)
    finally:
        stop.set()
        t.join()
    assert not errors, errors[:3]


def test_atomic_directory_refuses_existing_and_cleans_up_on_failure(tmp_path):
    target = tmp_path / "d"
    target.mkdir()
    (target / "keep").write_text("k")  # an empty directory would be replaced (it holds nothing to lose)
    with pytest.raises(FileExistsError):
        with atomic_directory(target) as tmp:
            (tmp / "f").write_text("x")
    assert (target / "keep").read_text() == "k"
    with pytest.raises(RuntimeError):
        with atomic_directory(tmp_path / "e") as tmp:
            (tmp / "f").write_text("half")
            raise RuntimeError("killed mid-write")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_clean_stale_removes_only_dead_writers_temporaries(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    stale = tmp_path / f".run.{dead_pid}-abcd1234.tmp"
    stale.mkdir()
    (stale / "tensors.safetensors").write_bytes(b"half")
    live = tmp_path / f".run.{os.getpid()}-abcd1234.tmp"
    live.mkdir()
    other = tmp_path / f".run2.{dead_pid}-abcd1234.tmp"
    other.mkdir()
    write_bytes(tmp_path / "run.md", b"x")
    assert clean_stale(tmp_path / "run") == [stale]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, other.name, "run.md"])


# -- pickle payloads -------------------------------------------------------------------------------------


class _TouchOnUnpickle:
    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))  # executing the payload would create the file


def _peft_dir_with_bin(tmp_path: Path, payload: bytes) -> Path:
    d = tmp_path / "evil"
    d.mkdir()
    (d / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2, "lora_alpha": 4,
                                                       "target_modules": ["fc1"]}))
    (d / "adapter_model.bin").write_bytes(payload)
    return d


@pytest.mark.parametrize("fmt", ["raw-pickle", "torch-zip"])
def test_pickle_payload_is_refused_and_not_executed(tmp_path, fmt):
    """A legacy adapter_model.bin whose unpickling would create a file: torch.load(weights_only=True)
    refuses it, the CLI exits 2 with one line, and the file does not appear."""
    marker = tmp_path / "pwned"
    obj = {"base_model.model.fc1.lora_A.weight": _TouchOnUnpickle(marker)}
    if fmt == "raw-pickle":
        payload = pickle.dumps(obj)
    else:
        buf = tmp_path / "buf.pt"
        torch.save(obj, buf)
        payload = buf.read_bytes()
        buf.unlink()
    assert not marker.exists()
    d = _peft_dir_with_bin(tmp_path, payload)
    with pytest.raises(CheckpointError, match="refused by the safe tensor loader") as exc:
        load_peft(d)
    assert "weights_only=False" not in str(exc.value)
    assert not marker.exists(), "the pickle payload was executed"
    if fmt != "raw-pickle":
        return
    proc = subprocess.run([sys.executable, "-m", "genbound.cli", "spectra", str(d)], env=_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "refused" in proc.stderr, proc.stderr
    # One line: torch's UserWarning is not shown, and its advice to load with weights_only=False is not repeated.
    assert len(proc.stderr.strip().splitlines()) == 1 and "weights_only=False" not in proc.stderr, proc.stderr
    assert not marker.exists()


def test_pickle_in_place_of_genbound_tensors_is_refused(tmp_path, ckpt_dir):
    import shutil

    marker = tmp_path / "pwned"
    d = tmp_path / "ck"
    shutil.copytree(ckpt_dir("lora"), d)
    (d / "tensors.safetensors").write_bytes(pickle.dumps({"head.weight": _TouchOnUnpickle(marker)}))
    with pytest.raises(CheckpointError):
        load_checkpoint(d)
    assert not marker.exists()


# -- numerical guards ---------------------------------------------------------------------------------------


def test_trainer_names_the_step_where_the_loss_became_non_finite(tmp_path, digits):
    with pytest.raises(NonFiniteError, match=r"at step \d+ \(epoch 0\); lower --lr"):
        train(_config("fft", lr=1e30, steps=10, save_trajectory=False), tmp_path / "nan", splits=digits)
    assert not (tmp_path / "nan").exists()


def test_evaluate_says_where_a_non_finite_loss_arose(ckpt_dir, digits):
    model = load_checkpoint(ckpt_dir("lora")).build_model()
    with torch.no_grad():
        model.head.weight[0, 0] = float("inf")
    with pytest.raises(NonFiniteError, match="the test split"):
        evaluate(model, digits.test, where="the test split")
