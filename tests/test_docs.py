"""The documentation is true of the code: the CLI reference matches the parser, the getting-started code
runs, every relative link resolves, and the numbers quoted in concepts.md are what the code computes."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def _gen_cli():
    spec = importlib.util.spec_from_file_location("gen_cli", DOCS / "gen_cli.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _strip_fences(text: str) -> str:
    return re.sub(r"^(```|~~~).*?^\1[^\n]*$", "", text, flags=re.S | re.M)


def _strip_code(text: str) -> str:
    """Markdown without fenced code blocks and inline code (links there are not links)."""
    return re.sub(r"`[^`\n]*`", "", _strip_fences(text))


def _markdown_files() -> list[Path]:
    files = sorted(DOCS.glob("*.md"))
    readme = ROOT / "README.md"
    return files + ([readme] if readme.is_file() else [])


def _python_blocks(path: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", path.read_text(encoding="utf-8"), flags=re.S | re.M)


# --------------------------------------------------------------------------------------------------


def test_cli_reference_is_up_to_date():
    expected = _gen_cli().generate()
    current = (DOCS / "cli.md").read_text(encoding="utf-8") if (DOCS / "cli.md").is_file() else ""
    assert current == expected, "docs/cli.md is out of date with genbound's parser; run `python docs/gen_cli.py`"


def test_cli_reference_does_not_depend_on_the_terminal(monkeypatch):
    gen = _gen_cli()
    monkeypatch.setenv("COLUMNS", "200")
    wide = gen.generate()
    monkeypatch.setenv("COLUMNS", "40")
    assert gen.generate() == wide


def test_cli_reference_has_every_command():
    from genbound.cli import COMMANDS

    text = _gen_cli().generate()
    for name in COMMANDS:
        assert f"\n## genbound {name}\n" in text
        assert f"usage: genbound {name}" in text


def _anchors(path: Path) -> set[str]:
    """GitHub's heading anchors of a Markdown file: lower case, punctuation dropped, spaces to hyphens,
    repeats numbered -1, -2, ..."""
    seen: dict[str, int] = {}
    out = set()
    for line in _strip_fences(path.read_text(encoding="utf-8")).splitlines():
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def test_relative_links_resolve():
    bad = []
    checked = 0
    for md in _markdown_files():
        for target in re.findall(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", _strip_code(md.read_text(encoding="utf-8"))):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):
                continue  # an external URL
            path, _, anchor = target.partition("#")
            dest = md if not path else md.parent / path
            checked += 1
            if not dest.exists():
                bad.append(f"{md.relative_to(ROOT)} -> {target}")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                bad.append(f"{md.relative_to(ROOT)} -> {target} (no such heading)")
    assert checked > 10, "the link checker found almost no links; is the pattern broken?"
    assert not bad, "broken relative links: " + ", ".join(bad)


def test_index_links_every_doc():
    index = (DOCS / "index.md").read_text(encoding="utf-8")
    for name in ("getting-started.md", "concepts.md", "cli.md", "checkpoint-format.md", "benchmarks.md",
                 "../README.md"):
        assert f"]({name})" in index, f"docs/index.md does not link {name}"


def test_getting_started_code_runs(tmp_path):
    blocks = _python_blocks(DOCS / "getting-started.md")
    assert len(blocks) >= 3
    code = "\n\n".join(blocks)
    assert 'backbone="mlp"' in code, "the walk-through must use the fast mlp backbone"
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1", MPLBACKEND="Agg")
    script = tmp_path / "getting_started.py"
    script.write_text(code, encoding="utf-8")
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, f"docs/getting-started.md code failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    # What the walk-through says it produces.
    assert (tmp_path / "runs" / "lora" / "genbound.json").is_file()
    assert (tmp_path / "runs" / "cla" / "tensors.safetensors").is_file()
    assert (tmp_path / "runs" / "lm" / "genbound.json").is_file()  # the causal-LM example
    assert "per token: train loss" in proc.stdout and "training sequences" in proc.stdout
    assert "moved run, same test loss" in proc.stdout  # a moved run, pointed at its model and data
    assert (tmp_path / "compare.md").read_text().startswith("|")


# --------------------------------------------------------------------------------------------------
# Numbers quoted in concepts.md


def _concepts() -> str:
    return (DOCS / "concepts.md").read_text(encoding="utf-8")


def test_concepts_covers_every_method():
    from genbound.methods.catalogue import METHODS

    text = _concepts()
    for name in METHODS:
        assert re.search(rf"^### `{name}`", text, flags=re.M), f"concepts.md has no section for method {name}"


def test_concepts_method_table_matches_catalogue():
    from genbound.methods.catalogue import METHODS

    rows = {}
    table = _concepts().split("<!-- methods-table -->", 2)[1]
    for line in table.splitlines():
        m = re.match(r"^\| `(\w+)` \|(.*)\|\s*$", line)
        if m and m.group(1) in METHODS:
            rows[m.group(1)] = [c.strip() for c in m.group(2).split("|")]
    for name, spec in METHODS.items():
        assert name in rows, f"the method table of concepts.md lacks {name}"
        cells = rows[name]
        # columns: paper name | update | trained | frozen | chained | D per layer
        assert cells[0] == spec.title, name
        assert cells[4] == ("yes" if spec.chained else "no"), name


def test_concepts_table1_numbers_are_what_the_code_computes():
    from genbound.bounds.mi import load_config, method_bound, override
    from genbound.methods.catalogue import METHODS

    text = _concepts()
    block = text.split("<!-- table1-check -->", 2)[1]
    rows = re.findall(r"^\| `(\w+)` \| (\d+) \| ([\d,]+) \| ([\d.]+) \|", block, flags=re.M)
    assert len(rows) >= len(METHODS)
    base = load_config("roberta-base")
    for name, k, d, value in rows:
        cfg = override(base, chain=int(k))
        row = method_bound(name, cfg, include_head=False)
        assert row.data_dependent_params == int(d.replace(",", "")), (name, k)
        assert f"{row.value:.2f}" == value, (name, k, row.value)


def test_concepts_counterexample_numbers():
    import warnings

    from genbound.bounds.theorem1 import phi_printed, phi_recursion

    text = " ".join(_concepts().split())
    assert "printed form gives 0.1" in text and "recursion gives 2.0" in text
    args = dict(a=(1, 2), b=(0.1, 0.1), lam=(1, 1), offsets=(1, 0), C=0.0, loss_lipschitz=1.0, branch="W0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert phi_printed(**args) / 2 == pytest.approx(0.1)
    assert phi_recursion(**args) / 2 == pytest.approx(2.0)


def test_concepts_quotes_the_code_defaults():
    from genbound.bounds.occam import compression_bound
    from genbound.bounds.pacbayes import DEFAULT_LAMBDA_GRID, DEFAULT_S_GRID
    from genbound.diagnostics.intruders import DENSE_MAX
    from genbound.diagnostics.spectra import MIN_POWER_LAW_POINTS
    from genbound.methods.catalogue import METHODS

    text = " ".join(_concepts().split())
    assert f"dense path up to min(n, m) = {DENSE_MAX}" in text
    assert f"at least {MIN_POWER_LAW_POINTS} nonzero eigenvalues" in text
    assert f"j = 2..40 ({len(DEFAULT_S_GRID)} values)" in text
    assert f"j = 0..60 ({len(DEFAULT_LAMBDA_GRID)} values)" in text
    defaults = compression_bound.__defaults__  # (delta, levels_grid, kinds, ...)
    levels, kinds = defaults[1], defaults[2]
    assert f"{len(kinds)} kinds" in text and f"{len(levels)} level counts ({', '.join(map(str, levels[:-1]))}, " in text
    assert f"lr(B) = {METHODS['lora_plus'].b_lr_ratio:g} lr(A)" in text


def test_readme_python_snippet_runs(tmp_path):
    blocks = _python_blocks(ROOT / "README.md")
    assert len(blocks) == 1
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1", MPLBACKEND="Agg")
    script = tmp_path / "readme.py"
    script.write_text(blocks[0], encoding="utf-8")
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, f"README.md code failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert "test accuracy" in proc.stdout


def test_readme_has_no_placeholder():
    assert "PLACEHOLDER" not in (ROOT / "README.md").read_text()


# docs/architecture.md: the layer diagram is the import contracts, and names every package there is


def _diagram_lines() -> list[str]:
    text = (DOCS / "architecture.md").read_text(encoding="utf-8")
    block = re.search(r"^## Layers\n.*?^```text\n(.*?)^```", text, flags=re.S | re.M)
    assert block, "docs/architecture.md has no ```text layer diagram under '## Layers'"
    return [line.strip() for line in block.group(1).splitlines() if line.strip()]


def test_architecture_diagram_is_the_layer_contract():
    tomllib = pytest.importorskip("tomllib")
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["importlinter"]
    layered = [c for c in config["contracts"] if c["type"] == "layers" and c.get("containers")][0]
    container = layered["containers"][0]
    expected = [" | ".join(f"{container}.{p.strip()}" for p in layer.split("|")) for layer in layered["layers"]]
    top = [c for c in config["contracts"] if c["type"] == "layers" and not c.get("containers")][0]["layers"]
    assert top == ["analysis", container]
    assert _diagram_lines() == ["analysis"] + expected, "docs/architecture.md's diagram differs from pyproject.toml"


def test_architecture_names_exactly_the_packages_there_are():
    on_disk = {f"genbound.{p.name}" for p in (ROOT / "genbound").iterdir() if (p / "__init__.py").is_file()}
    on_disk |= {"genbound.cli", "analysis"}
    drawn = {name.strip() for line in _diagram_lines() for name in line.split("|")}
    assert drawn == on_disk, f"drawn but absent: {sorted(drawn - on_disk)}; not drawn: {sorted(on_disk - drawn)}"
    text = (DOCS / "architecture.md").read_text(encoding="utf-8")
    for name in sorted(on_disk):
        assert f"**{name}**" in text, f"docs/architecture.md has no paragraph on {name}"
