"""One output policy for every command that writes a folder (genbound.core.output): ``train``'s checkpoint and
``export``'s peft adapter. ``--overwrite`` replaces only an empty folder or an output genbound wrote of the same
kind; never a user's folder or file, a git work tree, a device, a FIFO, a dangling link's target, the source
being read or a folder that contains it; a second writer of the same output is refused at once. Each case runs
the real command line and checks exit 2, one line, and every byte of what genbound did not write."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
from pathlib import Path

import pytest

from genbound.cli import main
from genbound.core.output import lock_path, run_lock

TRAIN = ["train", "--method", "lora", "--backbone", "mlp", "--dataset", "digits", "--rank", "4", "--alpha", "8",
         "--steps", "2", "--no-progress"]


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A small lora checkpoint (the export's source) and a genbound export of it."""
    from genbound.sources.export import export_peft
    from genbound.testing import make_checkpoint

    root = tmp_path_factory.mktemp("policy-src")
    ck = make_checkpoint(root, "lora", steps=2)
    export_peft(ck, root / "export")
    return ck, root / "export"


def _argv(command: str, out: Path, source) -> list[str]:
    if command == "train":
        return [*TRAIN, "--out", str(out)]
    return ["export", str(source[0]), "--peft", str(out)]


def _run(capsys, argv: list[str]) -> tuple[int, str]:
    code = main(argv)
    _, err = capsys.readouterr()
    return code, err


def _one_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("genbound: error: "), err
    return lines[0]


def _snapshot(path: Path) -> dict[str, str]:
    """Every entry under ``path`` (not following links) with its kind and content digest."""
    out = {}
    for root, dirs, files in os.walk(path, followlinks=False):
        for name in dirs + files:
            p = Path(root) / name
            st = os.lstat(p)
            if stat.S_ISREG(st.st_mode):
                out[str(p.relative_to(path))] = hashlib.sha256(p.read_bytes()).hexdigest()
            else:
                out[str(p.relative_to(path))] = oct(stat.S_IFMT(st.st_mode))
    return out


COMMANDS = ["train", "export"]


def _users_folder(tmp_path: Path) -> Path:
    u = tmp_path / "u"
    (u / "sub").mkdir(parents=True)
    (u / "thesis.tex").write_text("\\documentclass{article}")
    (u / "sub" / "data.csv").write_text("a,b\n1,2\n")
    return u


def _git_tree(tmp_path: Path) -> Path:
    g = tmp_path / "repo"
    (g / ".git" / "objects").mkdir(parents=True)
    (g / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (g / "code.py").write_text("print(1)\n")
    return g


def _users_file(tmp_path: Path) -> Path:
    f = tmp_path / "notes.txt"
    f.write_text("keep me")
    return f


def _fifo(tmp_path: Path) -> Path:
    f = tmp_path / "pipe"
    os.mkfifo(f)
    return f


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("make", [_users_folder, _git_tree, _users_file, _fifo],
                         ids=["users-folder", "git-work-tree", "users-file", "fifo"])
@pytest.mark.parametrize("overwrite", [False, True], ids=["plain", "overwrite"])
def test_foreign_outputs_are_never_replaced(tmp_path, capsys, source, command, make, overwrite):
    out = make(tmp_path)
    before = _snapshot(tmp_path)
    code, err = _run(capsys, _argv(command, out, source) + (["--overwrite"] if overwrite else []))
    assert code == 2, err
    _one_line(err)
    assert _snapshot(tmp_path) == before


@pytest.mark.skipif(os.geteuid() != 0, reason="creating a device node needs root")
@pytest.mark.parametrize("command", COMMANDS)
def test_a_device_is_never_replaced(tmp_path, capsys, source, command):
    dev = tmp_path / "null"
    os.mknod(dev, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # a /dev/null of our own, never the system's
    code, err = _run(capsys, _argv(command, dev, source) + ["--overwrite"])
    assert code == 2 and "a device" in _one_line(err)
    assert stat.S_ISCHR(os.lstat(dev).st_mode)


@pytest.mark.parametrize("command", COMMANDS)
def test_a_dangling_link_is_kept(tmp_path, capsys, source, command):
    link = tmp_path / "out"
    link.symlink_to(tmp_path / "nowhere")
    code, err = _run(capsys, _argv(command, link, source) + ["--overwrite"])
    assert code == 2 and "does not exist" in _one_line(err)
    assert link.is_symlink() and not (tmp_path / "nowhere").exists()


@pytest.mark.parametrize("command", COMMANDS)
def test_the_other_commands_output_is_not_replaced(tmp_path, capsys, source, command):
    # train may replace a checkpoint, export an export; neither replaces the other's output.
    other = source[1] if command == "train" else source[0]
    out = tmp_path / "other"
    shutil.copytree(other, out)
    before = _snapshot(tmp_path)
    code, err = _run(capsys, _argv(command, out, source) + ["--overwrite"])
    assert code == 2 and "genbound did not write" in _one_line(err)
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize("command", COMMANDS)
def test_own_output_is_replaced_only_with_overwrite(tmp_path, capsys, source, command):
    out = tmp_path / "out"
    assert _run(capsys, _argv(command, out, source))[0] == 0
    first = _snapshot(out)
    code, err = _run(capsys, _argv(command, out, source))
    assert code == 2 and "--overwrite" in _one_line(err)
    assert _snapshot(out) == first
    code, err = _run(capsys, _argv(command, out, source) + ["--overwrite"])
    assert code == 0, err
    assert set(_snapshot(out)) == set(first)
    assert {p.name for p in tmp_path.iterdir()} == {"out"}  # no temporaries, no lock left


@pytest.mark.parametrize("command", COMMANDS)
def test_a_second_writer_of_one_output_is_refused(tmp_path, capsys, source, command):
    out = tmp_path / "out"
    with run_lock(out):  # as another process's export or training holds it
        code, err = _run(capsys, _argv(command, out, source))
    assert code == 2 and "another genbound run" in _one_line(err)
    assert not out.exists() and not lock_path(out).exists()


def test_export_never_replaces_its_source_or_a_folder_holding_it(tmp_path, capsys, source):
    from genbound.testing import make_checkpoint

    ck = make_checkpoint(tmp_path / "runs", "lora", steps=2)
    (tmp_path / "runs" / "notes.md").write_text("results")
    before = _snapshot(tmp_path)
    for out in (ck, ck.parent, tmp_path):
        code, err = _run(capsys, ["export", str(ck), "--peft", str(out), "--overwrite"])
        line = _one_line(err)
        assert code == 2 and "which this command reads" in line, line
    assert _snapshot(tmp_path) == before
