"""``genbound list``: the backbones, datasets and methods genbound knows, with their sizes."""

from __future__ import annotations

from .common import add_json, format_table, print_json

HELP = "list the available backbones, datasets and fine-tuning methods"


def add_arguments(p) -> None:
    p.add_argument("what", nargs="?", default="all", choices=["all", "backbones", "datasets", "methods"])
    add_json(p)


def run(args) -> int:
    from .. import __version__
    from ..core.errors import GenboundError
    from ..data.datasets import DATASETS
    from ..methods.catalogue import METHODS
    from ..models.backbones import BACKBONES, get_backbone

    out: dict = {"source": f"the registries of genbound {__version__}"}
    if args.what in ("all", "backbones"):
        rows = []
        for name in BACKBONES:
            try:
                rows.append(get_backbone(name).summary())
            except GenboundError as exc:
                rows.append({"name": name, "error": str(exc)})
        out["backbones"] = rows
    if args.what in ("all", "datasets"):
        out["datasets"] = []
        for name, spec in DATASETS.items():
            raw, labels, classes = spec.loader()
            out["datasets"].append(
                {"name": name, "description": spec.description, "examples": len(raw), "classes": classes,
                 "fits": spec.data_kind}
            )
    if args.what in ("all", "methods"):
        out["methods"] = [m.summary() for m in METHODS.values()]
    if args.json:
        print_json(out)
        return 0
    if "backbones" in out:
        rows = [[b["name"], b.get("kind"), b.get("weights_bytes"), ",".join(b.get("default_targets", [])),
                 b.get("description", b.get("error"))] for b in out["backbones"]]
        print(format_table(rows, ["backbone", "kind", "bytes", "targets", "description"]) + "\n")
    if "datasets" in out:
        rows = [[d["name"], d["examples"], len(d["classes"]), d["fits"], d["description"]] for d in out["datasets"]]
        print(format_table(rows, ["dataset", "examples", "classes", "backbones", "description"]) + "\n")
    if "methods" in out:
        rows = [[m["name"], m["title"], m["family"], m["trained"], m["frozen"], m["chained"]] for m in out["methods"]]
        print(format_table(rows, ["method", "paper name", "family", "trained", "frozen", "chained"]))
    return 0
