"""``genbound list``: the backbones, datasets and methods genbound knows, with their sizes, read from the
registries recorded in package data (genbound.commands.listing), so that it imports no torch and loads no
dataset."""

from __future__ import annotations

from .common import add_json, format_table, print_json

HELP = "list the available backbones, datasets and fine-tuning methods"


def add_arguments(p) -> None:
    p.add_argument("what", nargs="?", default="all", choices=["all", "backbones", "datasets", "methods"])
    add_json(p)


def run(args) -> int:
    # The recorded registries (genbound.commands.listing): no torch imported, no dataset loaded.
    from .. import __version__
    from .listing import available, recorded

    cards = recorded()
    out: dict = {"source": f"the registries of genbound {__version__}"}
    for part in ("backbones", "datasets", "methods"):
        if args.what not in ("all", part):
            continue
        rows = []
        for card in cards[part]:
            missing = available(card["name"]) if part != "methods" else None
            rows.append({"name": card["name"], "error": missing} if missing else card)
        out[part] = rows
    if args.json:
        print_json(out)
        return 0
    if "backbones" in out:
        rows = [[b["name"], b.get("kind"), b.get("weights_bytes"), ",".join(b.get("default_targets", [])),
                 b.get("description", b.get("error"))] for b in out["backbones"]]
        print(format_table(rows, ["backbone", "kind", "bytes", "targets", "description"]) + "\n")
    if "datasets" in out:
        rows = [[d["name"], d.get("examples"), len(d.get("classes", [])), d.get("fits"),
                 d.get("description", d.get("error"))] for d in out["datasets"]]
        print(format_table(rows, ["dataset", "examples", "classes", "backbones", "description"]) + "\n")
    if "methods" in out:
        rows = [[m["name"], m["title"], m["family"], m["trained"], m["frozen"], m["chained"]] for m in out["methods"]]
        print(format_table(rows, ["method", "paper name", "family", "trained", "frozen", "chained"]))
    return 0
