"""Faults from the machine and from the user's file system (issue 16): nothing lost, nothing half-said.

Each case runs the real command line (``genbound.cli.main``) and checks the promise: one line on stderr
starting ``genbound: error:``, exit code 2, the user's files untouched and nothing half-written (no
checkpoint, no temporaries) where the run failed. Disk-full and read-only filesystems are simulated
in-process (an OSError with ENOSPC / EROFS from the call that would get it), because a real tmpfs or a
read-only mount needs root tricks that would disturb other processes on the machine; permission bits are
not used because root ignores them.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from genbound.cli import main

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ["train", "--method", "lora", "--backbone", "mlp", "--dataset", "digits", "--rank", "4", "--alpha", "8",
         "--steps", "3"]


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _one_line_error(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("genbound: error: "), err
    assert "Traceback" not in err
    return lines[0]


def _no_leftovers(directory: Path, allowed: set[str]) -> None:
    names = {p.name for p in directory.iterdir()}
    assert names <= allowed, f"left behind: {sorted(names - allowed)}"


# -- --overwrite and what it may replace ---------------------------------------------------------------


def test_overwrite_never_deletes_a_users_files(tmp_path, capsys):
    u = tmp_path / "u"
    (u / "sub").mkdir(parents=True)
    (u / "thesis.tex").write_text("x")
    code, _, err = _run(capsys, *TRAIN, "--out", str(u), "--overwrite")
    assert code == 2 and "2 entries" in _one_line_error(err)
    assert (u / "thesis.tex").read_text() == "x" and (u / "sub").is_dir()
    _no_leftovers(tmp_path, {"u"})


def test_overwrite_of_the_current_directory_keeps_its_files(tmp_path, capsys, monkeypatch):
    (tmp_path / "notes.txt").write_text("keep")
    monkeypatch.chdir(tmp_path)
    code, _, err = _run(capsys, *TRAIN, "--out", ".", "--overwrite")
    assert code == 2
    _one_line_error(err)
    assert (tmp_path / "notes.txt").read_text() == "keep"


def test_a_file_put_into_the_target_during_training_is_kept(tmp_path, capsys, monkeypatch):
    """The check is repeated under the lock just before the swap (atomic_directory's may_replace)."""
    import genbound.training.train as train_module

    out = tmp_path / "ck"
    out.mkdir()  # empty: it will be used
    real = train_module.evaluate

    def evaluate_then_user_writes(*a, **kw):
        (out / "late.txt").write_text("mine")
        return real(*a, **kw)

    monkeypatch.setattr(train_module, "evaluate", evaluate_then_user_writes)
    code, _, err = _run(capsys, *TRAIN, "--out", str(out))
    assert code == 2 and "--resume" in _one_line_error(err)
    assert sorted(p.name for p in out.iterdir()) == ["late.txt"]
    # The finished run is not thrown away: with the file moved out, --resume writes it without training.
    (out / "late.txt").rename(tmp_path / "late.txt")
    monkeypatch.setattr(train_module, "evaluate", real)
    monkeypatch.setattr(train_module, "epoch_order", lambda *a: pytest.fail("trained again"))
    code, _, err = _run(capsys, *TRAIN, "--out", str(out), "--resume")
    assert code == 0, err


def test_overwrite_replaces_a_checkpoint_and_an_empty_directory_is_used(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    link = tmp_path / "link"
    (tmp_path / "target").mkdir()
    link.symlink_to(tmp_path / "target")
    for out in (empty, link):
        code, _, err = _run(capsys, *TRAIN, "--out", str(out))
        assert code == 0, err
        assert (out / "genbound.json").is_file() and (out / "tensors.safetensors").is_file()
    assert link.is_symlink() and (tmp_path / "target" / "genbound.json").is_file()
    code, _, err = _run(capsys, *TRAIN, "--out", str(empty), "--overwrite", "--seed", "1")
    assert code == 0, err
    # Permissions: the tensors are as readable as the metadata (safetensors writes 0600 files).
    modes = {f: (empty / f).stat().st_mode & 0o777 for f in ("genbound.json", "tensors.safetensors")}
    assert len(set(modes.values())) == 1, modes
    _no_leftovers(tmp_path, {"empty", "link", "target"})


def test_dangling_symlink_is_refused_before_training(tmp_path, capsys, monkeypatch):
    import genbound.training.train as train_module

    link = tmp_path / "out"
    link.symlink_to(tmp_path / "nowhere")
    monkeypatch.setattr(train_module, "_train", lambda *a, **k: pytest.fail("training started"))
    code, _, err = _run(capsys, *TRAIN, "--out", str(link))
    assert code == 2 and "does not exist" in _one_line_error(err)


# -- unwritable locations, detected before training -----------------------------------------------------


def _no_training(monkeypatch):
    import genbound.training.train as train_module

    monkeypatch.setattr(train_module, "_train", lambda *a, **k: pytest.fail("training started"))


def test_path_under_a_regular_file_is_refused_before_training(tmp_path, capsys, monkeypatch):
    (tmp_path / "file").write_text("x")
    _no_training(monkeypatch)
    code, _, err = _run(capsys, *TRAIN, "--out", str(tmp_path / "file" / "sub" / "ck"))
    assert code == 2 and "is a file" in _one_line_error(err)
    assert (tmp_path / "file").read_text() == "x"


def test_name_too_long_is_refused_before_training(tmp_path, capsys, monkeypatch):
    _no_training(monkeypatch)
    code, _, err = _run(capsys, *TRAIN, "--out", str(tmp_path / ("n" * 240)))
    assert code == 2 and "too long" in _one_line_error(err)
    _no_leftovers(tmp_path, set())


def test_read_only_location_is_refused_before_training(tmp_path, capsys, monkeypatch):
    import genbound.core.output as output

    def read_only(*a, **k):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(tmp_path))

    monkeypatch.setattr(output.tempfile, "mkstemp", read_only)
    _no_training(monkeypatch)
    code, _, err = _run(capsys, *TRAIN, "--out", str(tmp_path / "ck"))
    assert code == 2 and "read-only" in _one_line_error(err)
    _no_leftovers(tmp_path, set())


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores permission bits")
def test_unwritable_directory_is_refused_before_training(tmp_path, capsys, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    _no_training(monkeypatch)
    try:
        code, _, err = _run(capsys, *TRAIN, "--out", str(ro / "ck"))
    finally:
        ro.chmod(0o755)
    assert code == 2 and "not writable" in _one_line_error(err)


def test_too_little_free_space_is_refused_before_training(tmp_path, capsys, monkeypatch):
    import genbound.core.output as output
    import genbound.training.train as train_module

    real_statvfs = os.statvfs

    class Full:
        def __init__(self, st):
            self.f_frsize, self.f_bavail = st.f_frsize, 1

    monkeypatch.setattr(output.os, "statvfs", lambda p: Full(real_statvfs(p)))
    monkeypatch.setattr(train_module, "epoch_order", lambda *a: pytest.fail("training started"))
    code, _, err = _run(capsys, *TRAIN, "--out", str(tmp_path / "ck"))
    assert code == 2 and "MiB free" in _one_line_error(err)
    _no_leftovers(tmp_path, set())


@pytest.mark.parametrize("when", ["state", "checkpoint"])
def test_disk_full_while_writing_leaves_nothing_half_written(tmp_path, capsys, monkeypatch, when):
    """ENOSPC from the tensor writer, at the first saved state or at the final checkpoint: one line, exit 2,
    no checkpoint, no temporaries (a state saved before stays whole and resumable)."""
    import safetensors.torch

    real = safetensors.torch.save_file

    def save_file(tensors, filename, metadata=None):
        is_state = "state.safetensors" in str(filename)
        if (when == "state") == is_state:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(filename))
        return real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", save_file)
    out = tmp_path / "ck"
    code, _, err = _run(capsys, *TRAIN, "--out", str(out), "--save-every", "2")
    line = _one_line_error(err)
    assert code == 2 and "No space left on device" in line and "disk is full" in line
    assert not out.exists()
    allowed = {".ck.state"} if when == "checkpoint" else set()
    _no_leftovers(tmp_path, allowed)
    if when == "checkpoint":  # the state survived whole: --resume finishes the run
        monkeypatch.setattr(safetensors.torch, "save_file", real)
        code, _, err = _run(capsys, *TRAIN, "--out", str(out), "--save-every", "2", "--resume")
        assert code == 0, err
        _no_leftovers(tmp_path, {"ck"})


def test_compare_figures_naming_an_existing_file_is_one_line(tmp_path, capsys, ckpt_dir):
    (tmp_path / "figs").write_text("x")
    code, _, err = _run(capsys, "compare", str(ckpt_dir("lora")), str(ckpt_dir("lora")), "--figures",
                        str(tmp_path / "figs"), "--n", "10")
    assert code == 2
    _one_line_error(err)
    assert (tmp_path / "figs").read_text() == "x"


# -- options that contradict each other ----------------------------------------------------------------


def test_epochs_and_steps_together_are_refused(tmp_path, capsys, monkeypatch):
    _no_training(monkeypatch)
    with pytest.raises(SystemExit) as exc:  # argparse's own refusal: usage and one error line, exit 2
        main([*TRAIN, "--out", str(tmp_path / "ck"), "--epochs", "1"])
    assert exc.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


def test_resume_with_overwrite_is_refused(tmp_path, capsys, monkeypatch):
    _no_training(monkeypatch)
    code, _, err = _run(capsys, *TRAIN, "--out", str(tmp_path / "ck"), "--resume", "--overwrite")
    assert code == 2 and "--resume" in _one_line_error(err)


# -- one run per output -----------------------------------------------------------------------------------


def test_a_second_run_of_the_same_out_is_refused_while_the_first_holds_the_lock(tmp_path, capsys, monkeypatch):
    from genbound.core.output import lock_path, run_lock

    out = tmp_path / "ck"
    _no_training(monkeypatch)
    with run_lock(out):
        for extra in ([], ["--resume"]):
            code, _, err = _run(capsys, *TRAIN, "--out", str(out), *extra)
            assert code == 2 and f"pid {os.getpid()}" in _one_line_error(err)
    assert not lock_path(out).exists()  # released and removed with the run


def test_the_run_lock_leaves_a_sweeps_lock_file_alone(tmp_path, capsys):
    """analysis.sweep claims a run with its own ``.<name>.lock`` (an owner record) around train()."""
    (tmp_path / ".ck.lock").write_text('{"pid": 1}')
    assert _run(capsys, *TRAIN, "--out", str(tmp_path / "ck"))[0] == 0
    assert (tmp_path / ".ck.lock").read_text() == '{"pid": 1}'


def test_lock_is_held_by_a_training_subprocess(tmp_path):
    """A real second process: while one run trains, another on the same --out is refused at once."""
    import time

    out = tmp_path / "ck"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    # far more steps than it can take before it is killed: on a loaded machine 400 finished before the second
    # process had started, which then met the finished checkpoint instead of the lock
    first = subprocess.Popen([sys.executable, "-m", "genbound.cli", *TRAIN[:-1], "1000000", "--out", str(out)], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        lock = tmp_path / ".ck.train.lock"
        deadline = time.monotonic() + 60
        while not (lock.exists() and lock.read_text().strip()) and time.monotonic() < deadline:
            time.sleep(0.05)
        second = subprocess.run([sys.executable, "-m", "genbound.cli", *TRAIN, "--out", str(out), "--resume"],
                                env=env, capture_output=True, text=True, timeout=120)
        assert first.poll() is None, "the first run ended before the second was refused"
        assert second.returncode == 2 and "another genbound run" in second.stderr, second.stderr
    finally:
        first.kill()
        first.wait()


# -- the command line's last line of defence ----------------------------------------------------------------


def test_closed_stdout_ends_quietly():
    r, w = os.pipe()
    os.close(r)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "genbound.cli", "list", "--json"], stdout=w,
                          stderr=subprocess.PIPE, env=env, timeout=120)
    os.close(w)
    assert proc.returncode == 141 and proc.stderr == b"", proc.stderr


@pytest.mark.parametrize("exc", [OverflowError("int too large to convert to float"), MemoryError(),
                                 OSError(errno.EIO, "Input/output error", "/x/y")])
def test_machine_and_overflow_failures_are_one_line(capsys, monkeypatch, exc):
    import genbound.commands.list as list_cmd

    def boom(args):
        raise exc

    monkeypatch.setattr(list_cmd, "run", boom)
    code, _, err = _run(capsys, "list")
    assert code == 2
    _one_line_error(err)


# -- leftovers ------------------------------------------------------------------------------------------------


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_every_writer_removes_a_killed_writers_temporaries(tmp_path):
    from genbound.core.atomic import atomic_directory, atomic_file, write_text

    pid = _dead_pid()
    orphans = [tmp_path / f".fig.pdf.{pid}-abcdefgh.tmp.pdf", tmp_path / f".t.md.{pid}-abcdefgh.tmp",
               tmp_path / f".d.{pid}-abcdefgh.tmp"]
    orphans[0].write_bytes(b"%PDF")
    orphans[1].write_text("half")
    orphans[2].mkdir()
    with atomic_file(tmp_path / "fig.pdf") as t:
        t.write_bytes(b"%PDF-1.4")
    write_text(tmp_path / "t.md", "whole")
    with atomic_directory(tmp_path / "d") as t:
        (t / "x").write_text("1")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "fig.pdf", "t.md"]
