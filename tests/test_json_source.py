"""Every command's ``--json`` names its source under the top-level key ``source``: the checkpoint(s) or
adapter read (a path, a list of paths, or a record holding them), the model and data a run was trained on, or
the registry listed."""

from __future__ import annotations

import json

from genbound.cli import COMMANDS, main


def _json(capsys, argv):
    capsys.readouterr()
    assert main(argv) == 0, argv
    return json.loads(capsys.readouterr().out)


def test_every_command_json_names_its_source(tmp_path, capsys):
    run, sub, peft = str(tmp_path / "run"), str(tmp_path / "sub"), str(tmp_path / "peft")
    fast = ["--backbone", "mlp", "--steps", "3", "--rank", "2", "--no-progress", "--json"]
    seen = {}
    seen["train"] = _json(capsys, ["train", "--method", "lora", "--out", run, "--save-trajectory", *fast])
    assert seen["train"]["source"] == {"backbone": "mlp", "dataset": "digits"}
    _json(capsys, ["train", "--method", "lora", "--out", sub, "--subspace-dim", "50", "--lr", "0.1", *fast])
    seen["evaluate"] = _json(capsys, ["evaluate", run, "--json"])
    seen["export"] = _json(capsys, ["export", run, "--peft", peft, "--json"])
    seen["spectra"] = _json(capsys, ["spectra", run, "--json", "--no-progress"])
    seen["bounds"] = _json(capsys, ["bounds", run, "--no-compression", "--json", "--no-progress"])
    seen["hessian"] = _json(capsys, ["hessian", run, "--top-k", "1", "--samples", "16", "--json", "--no-progress"])
    seen["landscape"] = _json(capsys, ["landscape", run, "--dims", "1", "--grid", "3", "--samples", "16", "--json",
                                       "--no-progress"])
    seen["compare"] = _json(capsys, ["compare", run, sub, "--json", "--no-progress"])
    seen["certify"] = _json(capsys, ["certify", sub, "--levels", "3", "--qat-steps", "0", "--json",
                                     "--no-progress"])
    seen["list"] = _json(capsys, ["list", "backbones", "--json"])
    seen["demo"] = _json(capsys, ["demo", "--backbone", "mlp", "--steps", "2", "--out", str(tmp_path / "demo"),
                                  "--json", "--no-progress"])
    seen["cost"] = _json(capsys, ["cost", run, "--json"])
    seen["report"] = _json(capsys, ["report", run, "--out", str(tmp_path / "report"), "--json", "--no-progress"])
    assert set(seen) == set(COMMANDS), "a new command: add it here"
    for cmd, out in seen.items():
        assert "source" in out, cmd
    named = {cmd: json.dumps(out["source"]) for cmd, out in seen.items()}
    for cmd in ("evaluate", "export", "spectra", "bounds", "hessian", "landscape", "cost"):
        assert run in named[cmd], (cmd, named[cmd])
    assert run in named["compare"] and sub in named["compare"]
    assert run in named["report"]
    assert sub in named["certify"] and "mlp" in named["certify"] and "digits" in named["certify"]
    assert "genbound" in named["list"]
    assert str(tmp_path / "demo") in named["demo"]


def test_compare_report_reads_back_with_its_source(tmp_path):
    from genbound.report.compare import CompareReport, compare
    from genbound.testing import make_checkpoint

    a, b = make_checkpoint(tmp_path, "lora"), make_checkpoint(tmp_path, "cla")
    rep = compare(a, b)
    d = rep.to_dict()
    assert d["source"] == [str(a), str(b)]
    assert CompareReport.from_dict(d).to_dict() == d
