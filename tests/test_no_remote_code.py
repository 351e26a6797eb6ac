"""A model folder never runs code: every transformers load passes ``trust_remote_code=False``, so a folder whose
config or tokenizer points at a .py file (``auto_map``) is refused in one line even when stdin answers "y" to
transformers' "Do you wish to run the custom code?" question."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from genbound.models.tinymodels import make_pairs_csv, make_text_model

ROOT = Path(__file__).resolve().parent.parent


def _from_pretrained_calls(path: Path):
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "from_pretrained":
            yield node


def test_every_transformers_load_refuses_remote_code():
    calls = 0
    missing = []
    for folder in ("genbound", "analysis", "benchmarks"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for call in _from_pretrained_calls(path):
                calls += 1
                kw = {k.arg: k.value for k in call.keywords}
                value = kw.get("trust_remote_code")
                if not (isinstance(value, ast.Constant) and value.value is False):
                    missing.append(f"{path.relative_to(ROOT)}:{call.lineno}")
                if not (isinstance(kw.get("local_files_only"), ast.Constant) and kw["local_files_only"].value is True):
                    missing.append(f"{path.relative_to(ROOT)}:{call.lineno} (local_files_only)")
    assert calls >= 10  # the walker sees the loads at all
    assert not missing, f"from_pretrained without trust_remote_code=False / local_files_only=True: {missing}"


PAYLOAD = """from pathlib import Path
Path({marker!r}).write_text("ran")
from transformers import PretrainedConfig
class EvilConfig(PretrainedConfig):
    model_type = "evilnet"
"""


def _evil_config_folder(root: Path, marker: Path) -> Path:
    folder = make_text_model(root / "evil-config", "bert")
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(model_type="evilnet", architectures=["EvilModel"],
               auto_map={"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilModel",
                         "AutoModelForSequenceClassification": "evil.EvilModel"})
    (folder / "config.json").write_text(json.dumps(cfg))
    (folder / "evil.py").write_text(PAYLOAD.format(marker=str(marker)))
    return folder


def _evil_tokenizer_folder(root: Path, marker: Path) -> Path:
    # A known model type, but the tokenizer is declared as code in the folder.
    folder = make_text_model(root / "evil-tokenizer", "bert")
    tc = json.loads((folder / "tokenizer_config.json").read_text())
    tc.update(auto_map={"AutoTokenizer": ["evil.EvilTokenizer", None]}, tokenizer_class="EvilTokenizer")
    (folder / "tokenizer_config.json").write_text(json.dumps(tc))
    (folder / "evil.py").write_text(PAYLOAD.format(marker=str(marker)))
    return folder


@pytest.mark.parametrize("make", [_evil_config_folder, _evil_tokenizer_folder], ids=["config", "tokenizer"])
def test_auto_map_folder_is_refused_without_running_code(tmp_path, make):
    marker = tmp_path / "MARKER"
    folder = make(tmp_path, marker)
    data = make_pairs_csv(tmp_path / "pairs.csv", n=30)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "genbound", "train", "--backbone", str(folder), "--dataset", str(data),
         "--text-columns", "s1,s2", "--method", "lora", "--steps", "1", "--out", str(tmp_path / "run"),
         "--no-progress"],
        input="y\ny\ny\n", capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert not marker.exists(), "code from the model folder ran"
    if make is _evil_tokenizer_folder:
        # transformers' own BERT tokenizer (tokenizer.json) is used and the auto_map ignored: safe to train.
        assert proc.returncode == 0, proc.stderr[-2000:]
        return
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "genbound: error" in lines[0], proc.stderr[-2000:]
    assert "never runs code" in lines[0]
    assert not (tmp_path / "run").exists()
