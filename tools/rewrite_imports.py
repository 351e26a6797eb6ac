#!/usr/bin/env python3
"""Rewrite imports of moved genbound modules, in place, in the files named on the command line.

The map old module -> new module is the "Moved modules" table of docs/changelog.md (a row whose old name is a
package moves every module inside it). What is rewritten:

- ``from genbound.x import y`` and ``from genbound import x`` (``x`` a moved module: ``from genbound.core import
  errors``), with aliases and parenthesized lists; a statement whose names now live in different modules is
  split into one statement per module;
- relative imports in files under genbound/ and analysis/: resolved against the file's new location, and, when
  that names nothing that exists, against its old location (the file may be an old copy, as on a branch that
  predates the move), then written relative to the new location;
- every other dotted name ``genbound.x.y`` in the text: ``import genbound.x``, ``mock.patch("genbound.train._train")``,
  ``monkeypatch.setattr("genbound.x.f", ...)``, prose and code blocks in Markdown;
- paths ``genbound/x.py`` and ``genbound/hessian/`` in prose;
- notebooks (.ipynb): the same rules on each cell's source; the JSON is rewritten only when a cell changed.

A name is left alone when it already names a module of the new layout (the modules on disk under the
repository's genbound/ and analysis/, and the table's new names), so running the script twice changes nothing
the second time. Exit status 0; it prints each file it changed (``--check``: changes nothing, exit 1 if any file
would change).

Usage: python tools/rewrite_imports.py [--check] [--table docs/changelog.md] FILE...
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TABLE_ROW = re.compile(r"^\|\s*`((?:genbound|analysis)(?:\.\w+)*)`\s*\|\s*`((?:genbound|analysis)(?:\.\w+)*)`\s*\|\s*$")
IDENT = r"[A-Za-z_]\w*"


def read_table(path: Path, heading: str = "### Moved modules") -> dict[str, str]:
    """The old -> new rows of the Markdown table under ``heading`` (rows of two back-quoted dotted names)."""
    rows, inside = {}, False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            inside = line.strip() == heading
            continue
        m = TABLE_ROW.match(line.strip())
        if inside and m and m.group(1) != m.group(2):
            rows[m.group(1)] = m.group(2)
    if not rows and heading == "### Moved modules":
        raise SystemExit(f"{path}: no 'old module | new module' rows found under '{heading}'")
    return rows


def modules_on_disk(root: Path) -> set[str]:
    out = set()
    for top in ("genbound", "analysis"):
        for p in (root / top).rglob("*.py"):
            parts = list(p.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out.add(".".join(parts))
    return out


class Mapper:
    def __init__(self, table: dict[str, str], existing: set[str], names: dict[str, str] | None = None):
        self.table = table
        self.names = names or {}  # moved names, spelled with the new modules: module.name -> module.name
        self.new = set(existing)
        for name in table.values():
            parts = name.split(".")
            self.new.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
        self.new_packages = {n.rpartition(".")[0] for n in self.new if "." in n}
        self.new_packages |= {n for n in existing if any(m.startswith(n + ".") for m in existing)}
        self.inverse = {v: k for k, v in table.items()}

    def map(self, dotted: str) -> str | None:
        """The new spelling of ``dotted`` (a module, or a module followed by attributes), or None when it needs
        none: no old name is a prefix of it, or it already names a module of the new layout; then a name that
        moved to another module (the 'Moved names' table) is looked up."""
        moved = self.map_module(dotted)
        spelled = dotted if moved is None else moved
        for old, new in self.names.items():
            if spelled == old or spelled.startswith(old + "."):
                return new + spelled[len(old):]
        return moved

    def map_module(self, dotted: str) -> str | None:
        parts = dotted.split(".")
        key = None
        for i in range(len(parts), 0, -1):
            if ".".join(parts[:i]) in self.table:
                key = i
                break
        if key is None:
            return None
        for j in range(len(parts), key, -1):  # a longer prefix that is a new module: already rewritten
            if ".".join(parts[:j]) in self.new:
                return None
        return ".".join([self.table[".".join(parts[:key])]] + parts[key:])

    def is_new_module(self, name: str) -> bool:
        return name in self.new

    def old_name_of(self, module: str) -> str:
        """The module a file at the new location ``module`` used to be (itself if it did not move)."""
        if module in self.inverse:
            return self.inverse[module]
        parts = module.split(".")
        for i in range(len(parts) - 1, 0, -1):
            head = ".".join(parts[:i])
            if head in self.inverse:
                return ".".join([self.inverse[head]] + parts[i:])
        return module


# -- from-import statements --------------------------------------------------------------------------------------

FROM_IMPORT = re.compile(
    r"^(?P<lead>[ \t]*(?:(?:>>>|\.\.\.)[ \t]+)?)from[ \t]+(?P<mod>\.*(?:" + IDENT + r"(?:\." + IDENT + r")*)?)"
    r"[ \t]+import[ \t]+(?P<names>\([^)]*\)|[^\n#;]*[^\s#;])",
    re.MULTILINE,
)
NAME_ITEM = re.compile(r"^(" + IDENT + r"|\*)(?:\s+as\s+(" + IDENT + r"))?$")


def _resolve(package: str, level: int, module: str) -> str | None:
    base = package.split(".")
    if level - 1 > len(base) - 1:
        return None
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def _relative(target: str, package: str) -> str:
    """``target`` written relative to ``package`` (dots and the remainder)."""
    t, p = target.split("."), package.split(".")
    common = 0
    while common < min(len(t), len(p)) and t[common] == p[common]:
        common += 1
    if common == 0:
        return target
    dots = "." * (len(p) - common + 1)
    return dots + ".".join(t[common:])


def _parse_names(text: str) -> list[tuple[str, str | None]] | None:
    inner = text.strip()
    if inner.startswith("("):
        inner = inner[1:-1]
    inner = re.sub(r"#[^\n]*", "", inner)
    items = [i.strip() for i in inner.replace("\\\n", " ").split(",")]
    out = []
    for item in items:
        if not item:
            continue
        m = NAME_ITEM.match(re.sub(r"\s+", " ", item))
        if not m:
            return None
        out.append((m.group(1), m.group(2)))
    return out


class FileContext:
    """Where a Python file sits: its package now and before the move (None outside genbound/ and analysis/)."""

    def __init__(self, mapper: Mapper, path: Path | None):
        self.package_new = self.package_old = None
        if path is None:
            return
        try:
            rel = path.resolve().relative_to(ROOT)
        except ValueError:
            rel = path
        parts = list(rel.with_suffix("").parts)
        if not parts or parts[0] not in ("genbound", "analysis") or path.suffix != ".py":
            return
        is_init = parts[-1] == "__init__"
        if is_init:
            parts = parts[:-1]
        module = ".".join(parts)
        old = mapper.old_name_of(module)
        self.package_new = module if is_init else module.rpartition(".")[0]
        self.package_old = old if is_init else old.rpartition(".")[0]


def _valid_new(mapper: Mapper, module: str, names: list[tuple[str, str | None]]) -> str:
    """Does ``from module import names`` name things of the new layout? 'yes'; 'maybe' when some name is an
    attribute of a package's ``__init__`` (it cannot be told from the files); 'no'."""
    verdict = "yes"
    for n, _ in names:
        whole = f"{module}.{n}"
        if mapper.is_new_module(whole) and mapper.map(whole) is None:
            continue  # a module of the new layout
        if mapper.map(whole) is not None or mapper.map(module) is not None or not mapper.is_new_module(module):
            return "no"
        if module in mapper.new_packages and n not in package_names(module):
            verdict = "maybe"
    return verdict


_PACKAGE_NAMES: dict[str, set[str]] = {}


def package_names(package: str) -> set[str]:
    """The names a package's ``__init__.py`` on disk defines, imports or lists in ``__all__``."""
    if package not in _PACKAGE_NAMES:
        names: set[str] = set()
        init = ROOT.joinpath(*package.split("."), "__init__.py")
        if init.exists():
            for node in ast.walk(ast.parse(init.read_text(encoding="utf-8"))):
                if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                    names.add(node.name)
                elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                    names.add(node.id)
                elif isinstance(node, (ast.Import, ast.ImportFrom)):
                    names.update((a.asname or a.name).split(".")[0] for a in node.names)
                elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.isidentifier():
                    names.add(node.value)  # __all__ entries, lazy-surface keys
        _PACKAGE_NAMES[package] = names
    return _PACKAGE_NAMES[package]


def rewrite_from(match: re.Match, mapper: Mapper, ctx: FileContext) -> str:
    lead, mod, names_text = match.group("lead"), match.group("mod"), match.group("names")
    names = _parse_names(names_text)
    if names is None:
        return match.group(0)
    level = len(mod) - len(mod.lstrip("."))
    relative = level > 0
    if relative:
        if ctx.package_new is None:
            return match.group(0)
        here = _resolve(ctx.package_new, level, mod[level:])
        verdict = "no" if here is None else _valid_new(mapper, here, names)
        there = _resolve(ctx.package_old, level, mod[level:])
        if verdict == "yes" or there is None:
            return match.group(0)
        if verdict == "maybe" and there == here:  # a name the package's __init__ may define at run time
            return match.group(0)
        absolute, package = there, ctx.package_new
    else:
        if not (mod == "genbound" or mod.startswith("genbound.")):
            return match.group(0)
        absolute, package = mod, None

    # each name: which module it comes from now, and under what name
    groups: dict[str, list[str]] = {}
    changed = relative and absolute != here
    for name, alias in names:
        whole = f"{absolute}.{name}"
        if mapper.is_new_module(whole) and mapper.map(whole) is None:  # already a module of the new layout
            groups.setdefault(absolute, []).append(name if alias is None else f"{name} as {alias}")
            continue
        mapped = mapper.map(whole) if name != "*" else None
        if mapped is not None and (mapper.is_new_module(mapped) or mapper.is_new_module(whole) or
                                   whole in mapper.table):
            # the name is a module that moved: import it from its new parent
            parent, _, last = mapped.rpartition(".")
            item = last if (alias or name) == last else f"{last} as {alias or name}"
            groups.setdefault(parent, []).append(item)
            changed = True
            continue
        new_mod = mapper.map(absolute) or absolute
        moved_name = mapper.names.get(f"{new_mod}.{name}")
        if moved_name is not None:  # the name itself moved to another module
            new_mod = moved_name.rpartition(".")[0]
        changed |= new_mod != absolute
        groups.setdefault(new_mod, []).append(name if alias is None else f"{name} as {alias}")
    if not changed:
        return match.group(0)
    original = [n if a is None else f"{n} as {a}" for n, a in names]
    lines = []
    for target, items in groups.items():
        spelled = _relative(target, package) if relative else target
        if len(groups) == 1 and items == original:  # keep the names as written (parentheses, comments)
            lines.append(f"{lead}from {spelled} import {names_text}")
        else:
            lines.append(f"{lead}from {spelled} import {', '.join(items)}")
    return "\n".join(lines)


# -- every other dotted name and path ---------------------------------------------------------------------------

DOTTED = re.compile(r"(?<![\w.])(?:genbound|analysis)(?:\.\w+)+")
PATH = re.compile(r"(?<![\w./-])genbound(?:/\w+)+(?:\.py\b|/)?")


def rewrite_dotted(text: str, mapper: Mapper) -> str:
    def one(m: re.Match) -> str:
        if m.group(0) in mapper.table and mapper.is_new_module(m.group(0)):
            return m.group(0)  # an old module that is now a package of the same name (genbound.methods): both read
        mapped = mapper.map(m.group(0))
        return m.group(0) if mapped is None else mapped

    def path(m: re.Match) -> str:
        s = m.group(0)
        suffix = ".py" if s.endswith(".py") else ("/" if s.endswith("/") else "")
        body = s[: len(s) - len(suffix)] if suffix else s
        dotted = body.replace("/", ".")
        mapped = mapper.map(dotted)
        if mapped is None:
            return s
        if suffix != ".py" and mapped not in mapper.new_packages:
            return s  # a folder only moves when it was a package that moved
        return mapped.replace(".", "/") + suffix

    return PATH.sub(path, DOTTED.sub(one, text))


def rewrite_text(text: str, mapper: Mapper, ctx: FileContext) -> str:
    out, pos = [], 0
    for m in FROM_IMPORT.finditer(text):
        out.append(rewrite_dotted(text[pos:m.start()], mapper))
        out.append(rewrite_from(m, mapper, ctx))
        pos = m.end()
    out.append(rewrite_dotted(text[pos:], mapper))
    return "".join(out)


def rewrite_notebook(text: str, mapper: Mapper) -> str:
    nb = json.loads(text)
    changed = False
    for cell in nb.get("cells", []):
        src = cell.get("source")
        joined = "".join(src) if isinstance(src, list) else (src or "")
        new = rewrite_text(joined, mapper, FileContext(mapper, None))
        if new != joined:
            changed = True
            cell["source"] = new.splitlines(keepends=True) if isinstance(src, list) else new
    if not changed:
        return text
    return json.dumps(nb, indent=1, ensure_ascii=False) + "\n"


def rewrite_file(path: Path, mapper: Mapper) -> str | None:
    """The file's new text, or None when nothing changes."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".ipynb":
        new = rewrite_notebook(text, mapper)
    else:
        new = rewrite_text(text, mapper, FileContext(mapper, path))
    return None if new == text else new


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="+", type=Path)
    ap.add_argument("--table", type=Path, default=ROOT / "docs" / "changelog.md")
    ap.add_argument("--check", action="store_true", help="change nothing; exit 1 if a file would change")
    args = ap.parse_args(argv)
    mapper = Mapper(read_table(args.table), modules_on_disk(ROOT), read_table(args.table, "### Moved names"))
    would = 0
    for path in args.files:
        if path.resolve() == args.table.resolve():
            continue  # the table itself names the old modules on purpose
        if path.is_dir() or path.suffix in (".pyc", ".safetensors", ".png", ".pdf"):
            continue
        try:
            new = rewrite_file(path, mapper)
        except UnicodeDecodeError:
            continue
        if new is None:
            continue
        would += 1
        print(path)
        if not args.check:
            path.write_text(new, encoding="utf-8")
    return 1 if (args.check and would) else 0


if __name__ == "__main__":
    sys.exit(main())
