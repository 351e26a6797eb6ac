"""The shape of the code base: the import contracts hold (pyproject.toml's [tool.importlinter]: layers, independent
siblings, no cycles) and a broken one is caught; ``genbound --help`` stays light; nothing shipped names a file
outside the repository; the dependencies are what the library imports."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "genbound"


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imported_modules(path: Path, root: Path = ROOT) -> set[str]:
    """Every module an ``import`` / ``from ... import`` in ``path`` names, relative imports resolved, at any
    depth (imports inside functions count too)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    name = _module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            out.add(module)
            out.update(f"{module}.{alias.name}" for alias in node.names)  # from genbound import commands
    return out


def _lint_imports(root: Path) -> subprocess.CompletedProcess:
    """``lint-imports`` with the contracts of ``root``/pyproject.toml, on the packages under ``root``."""
    pytest.importorskip("importlinter")  # the dev extra (make test installs it)
    exe = Path(sys.executable).with_name("lint-imports")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-c",
                                          "import sys; from importlinter.cli import lint_imports_command; "
                                          "sys.exit(lint_imports_command())"]
    return subprocess.run(cmd + ["--no-cache"], capture_output=True, text=True, cwd=root,
                          env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"}, timeout=300)


def test_import_contracts_hold():
    # The layers (docs/architecture.md), the independent siblings and no cycles: pyproject.toml's
    # [tool.importlinter]. What a contract cannot say is checked below.
    proc = _lint_imports(ROOT)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout


def test_a_new_cycle_breaks_the_contracts(tmp_path):
    # Proof that the check is not vacuous: the same contracts on a copy with one cycle added inside a layer
    # (bounds.mi already imports bounds.common; common importing mi back closes the loop) fail, and fail on
    # the cycle contract alone.
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("genbound", "analysis"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=ignore)
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    common = tmp_path / "genbound" / "bounds" / "common.py"
    common.write_text(common.read_text(encoding="utf-8") + "\nfrom . import mi as _cycle  # noqa: E402\n")
    proc = _lint_imports(tmp_path)
    assert proc.returncode != 0, proc.stdout[-4000:]
    assert "1 broken" in proc.stdout, proc.stdout[-4000:]
    assert "directly or through others BROKEN" in proc.stdout, proc.stdout[-4000:]  # the cycle contract
    assert re.search(r"\.(mi|common) -> \.(common|mi)\b", proc.stdout), proc.stdout[-4000:]  # names the loop


LAYER_PACKAGES = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()
                        and "_SURFACE" in (p / "__init__.py").read_text(encoding="utf-8"))


@pytest.mark.parametrize("package", LAYER_PACKAGES)
def test_each_package_surface_is_what_it_names(package):
    # A package's __all__ (imported on first use) must resolve, each name to the object defined in the
    # submodule the package names for it, and never shadow a submodule of the same name.
    import importlib

    pkg = importlib.import_module(f"genbound.{package}")
    assert LAYER_PACKAGES and sorted(pkg.__all__) == sorted(pkg._SURFACE)
    for name in pkg.__all__:
        module = importlib.import_module(f"genbound.{package}.{pkg._SURFACE[name]}")
        assert getattr(pkg, name) is getattr(module, name), f"genbound.{package}.{name}"
        assert not (PACKAGE / package / f"{name}.py").exists(), f"{name} shadows a submodule of {package}"
    with pytest.raises(AttributeError):
        pkg.no_such_name  # noqa: B018


@pytest.mark.parametrize("argv", [["--help"], []])
def test_top_level_help_does_not_import_torch(argv):
    code = ("import contextlib, io, sys\n"
            "from genbound.cli import main\n"
            "buf = io.StringIO()\n"
            "with contextlib.redirect_stdout(buf):\n"
            "    try:\n"
            f"        rc = main({argv!r})\n"
            "    except SystemExit as exc:\n"
            "        rc = exc.code\n"
            "assert rc in (0, None), rc\n"
            "assert 'train' in buf.getvalue() and 'compare' in buf.getvalue(), buf.getvalue()\n"
            "heavy = sorted(m for m in ('torch', 'numpy', 'transformers', 'matplotlib', 'scipy') if m in sys.modules)\n"
            "print(','.join(heavy))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "", f"genbound {' '.join(argv)} imported {proc.stdout.strip()}"


def test_a_command_still_gets_its_arguments():
    from genbound.cli import build_parser

    parser = build_parser("spectra", all_arguments=False)
    args = parser.parse_args(["spectra", "ck", "--top-k", "3"])
    assert args.top_k == 3
    full = build_parser()  # docs/gen_cli.py: every command with every argument
    assert full.parse_args(["train", "--method", "lora", "--out", "x"]).method == "lora"


# -- nothing names a file outside the repository -------------------------------------------------------------

SCANNED = ["genbound", "analysis", "docs", "notebooks", "README.md", "tests", "benchmarks"]
TEXT_SUFFIXES = {".py", ".md", ".ipynb", ".txt", ".toml", ".cfg", ".json", ".yaml", ".yml", ".tex", ""}
# An upper-case document name (THEORY.md, NOTES.txt) is a project document: it must exist in the repository.
DOC_NAME = re.compile(r"(?<![\w/.-])(?:[\w.-]+/)*([A-Z][A-Z0-9_-]{2,}\.(?:md|txt|rst))\b")
OUTSIDE = [
    re.compile(r"(?<![\w.])shared/[\w.-]+"),  # a sibling folder of the checkout
    re.compile(r"(?<![\w.~])/(?:work|home|root|Users|mnt)/[\w.-]+"),  # an absolute path on some machine
    re.compile(r"(?<![\w.])\.\./\.\./[\w.-]+"),  # climbing out of the repository
]


def _scanned_files() -> list[Path]:
    files = []
    for entry in SCANNED:
        p = ROOT / entry
        if p.is_file():
            files.append(p)
        elif p.is_dir():
            files += [f for f in sorted(p.rglob("*")) if f.is_file() and f.suffix in TEXT_SUFFIXES
                      and "__pycache__" not in f.parts
                      and not any(x.startswith(".") for x in f.relative_to(ROOT).parts)]
    return files


def _outside_references(text: str, repo_names: set[str]) -> list[str]:
    found = [m.group(0) for pat in OUTSIDE for m in pat.finditer(text)]
    found += [m.group(0) for m in DOC_NAME.finditer(text) if m.group(1) not in repo_names]
    return found


def test_the_scanner_finds_outside_references():
    names = {"README.md"}
    text = ("see shared/THEORY.md section 3; THEORY.md's example; /work/main/x.py; ../../PEERS.md; "
            "the README.md; docs/concepts.md; `--out /tmp/run`; outputs summary.md")
    found = _outside_references(text, names)
    assert "shared/THEORY.md" in found and "THEORY.md" in found and "/work/main" in found
    assert any("PEERS.md" in f for f in found) and "../../PEERS.md" in found
    assert not any("README" in f or "concepts" in f or "/tmp" in f or "summary" in f for f in found)


def test_nothing_names_a_file_outside_the_repository():
    this_file = Path(__file__).resolve()  # it spells the patterns out
    repo_names = {p.name for p in ROOT.rglob("*")
                  if p.is_file() and not any(x.startswith(".") for x in p.relative_to(ROOT).parts)}
    offenders = []
    for path in _scanned_files():
        if path == this_file:
            continue
        for i, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            for ref in _outside_references(line, repo_names):
                offenders.append(f"{path.relative_to(ROOT)}:{i}: {ref}")
    assert not offenders, ("these name files outside the repository; cite docs/concepts.md (with its section) "
                           "instead:\n" + "\n".join(offenders))


# -- dependencies: what `pip install genbound` pulls is what the library imports ---------------------------------


def _canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", re.split(r"[<>=!~;\[ ]", name, maxsplit=1)[0]).lower()


def _third_party_imports(folders: list[str]) -> set[str]:
    out = set()
    for folder in folders:
        for path in (ROOT / folder).rglob("*.py"):
            for module in _imported_modules(path):
                top = module.split(".")[0]
                if top and top not in sys.stdlib_module_names and top not in ("genbound", "analysis", "__future__") \
                        and not (folder == "tests" and any((ROOT / local / f"{top}.py").exists()
                                                           for local in ("tests", "benchmarks"))):  # ours
                    out.add(top)
    return out


def test_required_dependencies_are_what_the_library_imports():
    import importlib.metadata

    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    required = {_canon(d) for d in project["dependencies"]}
    dists = importlib.metadata.packages_distributions()
    used = {_canon(d) for m in _third_party_imports(["genbound", "analysis"]) for d in dists.get(m, [m])}
    # The cluster engines (ray, submitit) are an extra: analysis.executors imports them lazily, when their
    # executor runs, so that the library works without them (checked below: never at a module's top level).
    # Likewise the backbones extra (onnx, read by genbound.models.onnx_bert when paraphrase-minilm-l3 is converted).
    cluster = {_canon(d) for d in project["optional-dependencies"]["cluster"]}
    cluster |= {_canon(d) for d in project["optional-dependencies"]["backbones"]}
    # The experiment trackers (genbound.training.trackers) are an extra too, imported only when --report-to names one.
    trackers = {_canon(d) for d in project["optional-dependencies"]["trackers"]}
    extra = sorted(used - required - cluster - trackers)
    assert not extra, f"the library imports {extra} but pyproject does not require them"
    for folder in ("genbound", "analysis"):
        for path in (ROOT / folder).rglob("*.py"):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            top = {a.name.split(".")[0] for n in tree.body if isinstance(n, ast.Import) for a in n.names}
            top |= {(n.module or "").split(".")[0] for n in tree.body if isinstance(n, ast.ImportFrom)}
            lazy = {_canon(d) for m in top for d in dists.get(m, [m])} & (cluster | trackers)
            assert not lazy, f"{path.relative_to(ROOT)} imports {sorted(lazy)} at import time; import it lazily"
    assert cluster <= {_canon(d) for d in project["optional-dependencies"]["dev"]}, "make test installs .[dev]"
    assert required <= used, (f"pyproject requires {sorted(required - used)} but the library never imports them: "
                              "move them to an extra (dev / bench)")
    # The peers that only tests and benchmarks use are extras that `make test` (.[dev]) installs.
    dev = {_canon(d) for d in project["optional-dependencies"]["dev"]}
    only_tests = {_canon(d) for m in _third_party_imports(["tests"]) for d in dists.get(m, [m])} - required
    assert only_tests <= dev | {"genbound"}, f"tests import {sorted(only_tests - dev)}, missing from the dev extra"


MAX_FUNCTION_LINES = 80


def _long_functions(root: Path, limit: int = MAX_FUNCTION_LINES) -> list[str]:
    """Every function or method under ``root`` longer than ``limit`` lines (decorators excluded, the
    signature, docstring and body included: end_lineno - lineno + 1)."""
    found = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > limit:
                    found.append(f"{path.relative_to(root.parent)}:{node.lineno} {node.name} ({lines} lines)")
    return found


def test_no_function_in_the_library_is_over_80_lines():
    long = _long_functions(PACKAGE)
    assert not long, "split these into named pieces: " + "; ".join(long)


def test_the_function_length_check_catches_a_long_function(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    body = "".join(f"    x{i} = {i}\n" for i in range(MAX_FUNCTION_LINES))  # 80 body lines + the def line
    (pkg / "m.py").write_text(f"def short():\n    return 1\n\n\ndef long():\n{body}\n\nclass C:\n"
                              f"    def method(self):\n{''.join('    ' + ln + chr(10) for ln in body.splitlines())}")
    found = _long_functions(pkg)
    assert [f.split()[1] for f in found] == ["long", "method"]
    assert found[0].endswith("(81 lines)")
