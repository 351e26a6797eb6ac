"""Portable runs: what a checkpoint was trained on, recorded by content, so that a moved run finds it again.

A checkpoint records its model and its data twice: by path (made absolute at training time, so that the
run does not depend on the directory it was started from) and by *fingerprint*, the sha256 of the content.
``genbound.json`` holds them under ``sources`` (docs/checkpoint-format.md)::

    "sources": {"backbone": {"path": "/abs/tiny-gpt2", "fingerprint": "sha256:…",
                             "files": {"config.json": "sha256:…", "model.safetensors": "sha256:…", …}},
                "dataset":  {"path": "/abs/texts.jsonl", "fingerprint": "sha256:…"}}

A registered backbone (``minilm``, ``paraphrase-minilm-l3``, ``mlp``) or dataset (``bbc``, ``digits``,
``tweets``) keeps its name (``"name"`` instead of ``"path"``); the backbone's fingerprint is recorded all
the same, so that ``compare`` can tell a MiniLM checkpoint and an adapter on MiniLM's folder are one model.

Fingerprints (:func:`model_fingerprint`, :func:`data_fingerprint`):

* a model: sha256 over the lines ``<file name> NUL <sha256 of the file> LF``, sorted by name, of the files that
  decide what the model computes: its weights file, ``config.json`` and the tokenizer's and image processor's
  files present in the folder (:data:`MODEL_FILES`). A file that is not there does not count, so a folder
  gains no new fingerprint when an unrelated file (a README, ``generation_config.json``) is added;
* a data file: the sha256 of its bytes (equal to the dataset card's ``digest``);
* a data folder (an image folder, a ``datasets`` folder): sha256 over the lines ``<relative path> NUL <sha256>
  LF`` of its files in sorted order.

Each file is hashed once by a streaming reader (4 MiB at a time, so a 15 GB weights file needs no memory) and
its digest cached per process and on disk under ``$GENBOUND_CACHE/fingerprints`` (``~/.cache/genbound``;
``GENBOUND_CACHE=off`` disables the disk cache), keyed by the file's absolute path, size, modification time and
inode: a file rewritten in place gets a new modification time and is hashed again. (A tool that restores an
old modification time on changed content with the same size defeats the key, as it defeats ``make``.)

Read side (:func:`relocate`): ``--backbone DIR`` and ``--dataset PATH`` on a genbound checkpoint point a moved
run at its model and data. They are accepted when the content's fingerprint equals the recorded one and
refused (:class:`~genbound.core.errors.CheckpointError`, exit 2) naming both fingerprints when not. A checkpoint
written before ``sources`` existed (genbound 0.x checkpoints) still loads: its recorded ``fingerprint`` (the
sha256 of the weights file alone) and its dataset card's ``digest`` are what a relocation is checked against.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from ..core.errors import CheckpointError, GenboundError
from ..core.fingerprint import file_sha256
from ..core.shards import weight_paths
from ..data.datafiles import content_digest, is_data_path
from ..data.datasets import DATASETS
from ..models.backbones import BACKBONES, get_backbone

# Besides the weights file: the files that decide what the model computes on raw input.
MODEL_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "merges.txt",
               "special_tokens_map.json", "added_tokens.json", "spiece.model", "tokenizer.model",
               "preprocessor_config.json")


def _combine(entries: dict[str, str]) -> str:
    h = hashlib.sha256()
    for name in sorted(entries):
        h.update(name.encode("utf-8", "surrogatepass") + b"\0" + entries[name].encode() + b"\n")
    return "sha256:" + h.hexdigest()


def model_files(backbone) -> dict[str, str]:
    """{file name: "sha256:…"} of a backbone's weights file and the model files beside it (:data:`MODEL_FILES`)."""
    files = {f.name: "sha256:" + file_sha256(f) for f in weight_paths(Path(backbone.weights))}  # index + shards
    folder = getattr(backbone, "folder", None)
    if folder is not None:
        for name in MODEL_FILES:
            f = Path(folder) / name
            if f.is_file():
                files[name] = "sha256:" + file_sha256(f)
    return files


def model_fingerprint(backbone) -> str:
    """The fingerprint of a :class:`genbound.models.backbones.Backbone` (module docstring)."""
    return _combine(model_files(backbone))


def data_fingerprint(path: str | Path) -> str:
    """The fingerprint of a data file (the sha256 of its bytes) or a data folder (module docstring)."""
    p = Path(path)
    if p.is_file():
        return "sha256:" + file_sha256(p)
    if not p.is_dir():
        raise GenboundError(f"dataset {p} does not exist; pass a .csv, .jsonl, .parquet file or a folder")
    return _combine({str(f.relative_to(p)): file_sha256(f) for f in sorted(p.rglob("*")) if f.is_file()})


# -- the record -------------------------------------------------------------------------------------------


def absolute(name: str, registry) -> str:
    """A backbone or dataset name as a checkpoint records it: a registered name as it is, a path made absolute
    (not resolved through symbolic links: the path the researcher chose)."""
    if name in registry:
        return name
    return os.path.abspath(os.path.expanduser(name))


def backbone_record(name: str, backbone) -> dict[str, Any]:
    """What a checkpoint records about its backbone: name or absolute path, fingerprint and per-file digests."""
    files = model_files(backbone)
    where = {"name": name} if name in BACKBONES else {"path": absolute(name, BACKBONES)}
    return {**where, "fingerprint": _combine(files), "files": files}


def dataset_record(name: str) -> dict[str, Any]:
    """What a checkpoint records about its data: a registered name, or the absolute path and its fingerprint."""
    if name in DATASETS:
        return {"name": name}
    return {"path": absolute(name, DATASETS), "fingerprint": data_fingerprint(name)}


def sources_record(backbone_name: str, backbone, dataset_name: str) -> dict[str, Any]:
    return {"backbone": backbone_record(backbone_name, backbone), "dataset": dataset_record(dataset_name)}


def same_backbone(a, b) -> bool | None:
    """Whether the metadata ``a`` and ``b`` name one model, by content: their model fingerprints where both
    record one (``sources``), else their weights files' sha256 (``fingerprint``, which every checkpoint and every
    resolved peft adapter has); None where a side knows neither (a peft adapter whose base is not available)."""
    ra = ((getattr(a, "sources", None) or {}).get("backbone") or {}).get("fingerprint")
    rb = ((getattr(b, "sources", None) or {}).get("backbone") or {}).get("fingerprint")
    if ra and rb:
        return ra == rb
    fa, fb = getattr(a, "fingerprint", None), getattr(b, "fingerprint", None)
    if fa and fb:
        return fa == fb
    return None


def dataset_identity(meta) -> str | None:
    """What says which data a source was trained or evaluated on: the recorded fingerprint, a registered
    name, or the fingerprint of the data file or folder the source names (None where it names none)."""
    rec = (getattr(meta, "sources", None) or {}).get("dataset") or {}
    if rec.get("fingerprint"):
        return rec["fingerprint"]
    name = getattr(meta, "dataset", None)
    if not name:
        return None
    if name in DATASETS:
        return f"registered:{name}"
    card = getattr(meta, "dataset_card", None) or {}
    if card.get("digest") and Path(name).is_file():
        return card["digest"]  # a data file's digest is its fingerprint
    try:
        return data_fingerprint(name)
    except (GenboundError, OSError):
        return f"path:{name}"


# -- the read side ----------------------------------------------------------------------------------------


def _differing(recorded: dict[str, str], now: dict[str, str]) -> str:
    names = sorted(set(recorded) | set(now))
    diff = [n for n in names if recorded.get(n) != now.get(n)]
    if not diff:
        return ""
    shown = ", ".join(f"{n} {'missing' if n not in now else ('added' if n not in recorded else 'differs')}"
                      for n in diff[:3])
    return f" ({shown}{', …' if len(diff) > 3 else ''})"


def relocate_backbone(meta, where: Path | str, folder: str) -> None:
    """Point ``meta`` at the model folder (or registered name) ``folder`` if its fingerprint is the recorded
    one; refuse naming both fingerprints otherwise."""
    task = meta.hyperparameters.get("task") or ("pooled" if meta.backbone not in BACKBONES else None)
    rec = (meta.sources or {}).get("backbone") or {}
    if folder in BACKBONES or meta.backbone in BACKBONES:
        if folder != meta.backbone:
            raise CheckpointError(f"{where}: --backbone {folder} is not the checkpoint's backbone "
                                  f"'{meta.backbone}'; drop --backbone or pass '{meta.backbone}'")
        return
    try:
        backbone = get_backbone(folder, task if meta.backbone not in BACKBONES else None)
    except GenboundError as exc:
        raise CheckpointError(f"{where}: --backbone {folder}: {exc}") from None
    if rec.get("fingerprint"):
        files = model_files(backbone)
        got = _combine(files)
        if got != rec["fingerprint"]:
            raise CheckpointError(
                f"{where}: --backbone {folder} has fingerprint {got} but the checkpoint was trained on "
                f"{rec['fingerprint']}{_differing(rec.get('files') or {}, files)}; point --backbone at the model "
                "the run was trained on")
    else:  # a checkpoint from before sources: its weights file's sha256
        got = backbone.fingerprint
        if got != meta.fingerprint:
            raise CheckpointError(
                f"{where}: --backbone {folder} has weights fingerprint {got} but the checkpoint was trained on "
                f"{meta.fingerprint}; point --backbone at the model the run was trained on")
    meta.backbone = absolute(folder, BACKBONES)


def relocate_dataset(meta, where: Path | str, path: str) -> None:
    """Point ``meta`` at the data file or folder ``path`` if its fingerprint is the recorded one; refuse naming
    both fingerprints otherwise."""
    if path in DATASETS or meta.dataset in DATASETS:
        if path != meta.dataset:
            raise CheckpointError(f"{where}: --dataset {path} is not the checkpoint's dataset '{meta.dataset}'; "
                                  f"drop --dataset or pass '{meta.dataset}'")
        return
    if not is_data_path(path) or not Path(path).exists():
        raise CheckpointError(f"{where}: --dataset {path} does not exist; pass the data file or folder the run was "
                              "trained on")
    rec = (meta.sources or {}).get("dataset") or {}
    if rec.get("fingerprint"):
        want, got = rec["fingerprint"], data_fingerprint(path)
    elif (meta.dataset_card or {}).get("digest"):  # a checkpoint from before sources: the card's digest
        want, got = meta.dataset_card["digest"], content_digest(Path(path))
    else:
        want = got = None  # nothing recorded to compare with: the split digest is checked when the data loads
    if want != got:
        raise CheckpointError(f"{where}: --dataset {path} has fingerprint {got} but the checkpoint was trained on "
                              f"{want}; point --dataset at the data the run was trained on")
    meta.dataset = absolute(path, DATASETS)


def relocate(meta, where: Path | str, backbone: str | None = None, dataset: str | None = None):
    """``meta`` pointed at a moved model folder and data (each checked by fingerprint); returned for chaining."""
    if backbone:
        relocate_backbone(meta, where, str(backbone))
    if dataset:
        relocate_dataset(meta, where, str(dataset))
    return meta


def missing_backbone(meta, where: Path | str) -> CheckpointError | None:
    """The error for a checkpoint whose recorded model folder is not here (moved), or None."""
    if meta.backbone in BACKBONES or Path(meta.backbone).exists():
        return None
    rec = (meta.sources or {}).get("backbone") or {}
    fp = rec.get("fingerprint") or meta.fingerprint
    return CheckpointError(f"{where}: the model folder {meta.backbone} it was trained on is not here (moved?); "
                           f"pass --backbone DIR, the folder with fingerprint {fp}")


def missing_dataset(meta, where: Path | str | None = None) -> CheckpointError | None:
    """The error for a checkpoint whose recorded data file or folder is not here (moved), or None."""
    if meta.dataset in DATASETS or Path(meta.dataset).exists():
        return None
    rec = (meta.sources or {}).get("dataset") or {}
    fp = rec.get("fingerprint") or (meta.dataset_card or {}).get("digest")
    return CheckpointError(("" if where is None else f"{where}: ") + f"the data {meta.dataset} the checkpoint was "
                           "trained on is not here (moved?); pass --dataset PATH"
                           + (f", the data with fingerprint {fp}" if fp else ""))
