"""Checks of the researcher's data (``--dataset PATH``) before anything is tokenized or decoded.

* Paths: a FIFO, device or socket where a data file, a ``datasets`` file (arrow, JSON) or an image is expected
  is refused by its kind, never opened (opening a FIFO blocks forever; /dev/zero never ends)
  (:func:`check_data_path`, :func:`check_datasets_folder`, :func:`open_image`).
* Text files (CSV, JSON Lines) are scanned once before pyarrow reads them (:func:`table_options`): invalid
  UTF-8 is reported with its line and byte offset, and the longest row sets pyarrow's block size (a row longer
  than a block is otherwise "straddling block boundaries"); a row beyond :data:`MAX_ROW_BYTES` is refused.
* ``datasets`` folders: their JSON files are read strictly first (deep nesting, bad UTF-8).
* Labels (:func:`labels_from_values`): integers, strings or booleans only (lists, maps, NaN, infinities and
  fractions refused, the value printed as the data holds it); the classes are the distinct values the data
  holds, so integer labels ``{1}`` are one class (refused) and ``{3, 10**9}`` two, never 10^9 rows of a head;
  integers that are exactly 0..C-1 keep their numbering (checkpoints depend on it); more classes than
  :func:`max_classes` of the rows are refused with the count before any per-class work.
* ``--max-length`` against the positions of the model's configuration for every text backbone
  (:func:`check_max_length`), so that no tokenizer is asked for 10^9 tokens.
* Images are opened with PIL's decompression-bomb limit, whose error and warning become one line.
"""

from __future__ import annotations

import codecs
import math
import stat
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..core.errors import GenboundError
from ..core.files import file_kind
from ..core.validation import MAX_SEED, read_json
from ..models.checks import open_image  # noqa: F401 (open_image: part of the data checks)

MAX_ROW_BYTES = 256 << 20  # pyarrow's block must hold a whole row; no text example comes near this
MAX_DATASET_FILES = 100_000
MAX_TOKENS = 1 << 16  # a text backbone whose configuration records no positions


def _mode(path: Path) -> int | None:
    try:
        return path.stat().st_mode
    except OSError:
        return None


def check_data_path(path: Path) -> None:
    """Refuse a data path that is neither a regular file nor a folder (a FIFO, a device, a socket)."""
    mode = _mode(Path(path))
    if mode is not None and not stat.S_ISREG(mode) and not stat.S_ISDIR(mode):
        raise GenboundError(f"{path} is {file_kind(mode)}, not a data file or folder; pass a .csv, .jsonl or "
                            ".parquet file or a folder")


def check_datasets_folder(path: Path) -> None:
    """Refuse a ``save_to_disk`` folder holding something other than regular files and folders, or whose
    JSON files are not strict JSON (deep nesting made ``datasets`` recurse until it crashed)."""
    count = 0
    for p in sorted(Path(path).rglob("*")):
        count += 1
        if count > MAX_DATASET_FILES:
            raise GenboundError(f"{path} holds more than {MAX_DATASET_FILES} files; it is not a datasets folder")
        mode = _mode(p)
        if mode is None or stat.S_ISDIR(mode):
            continue
        if not stat.S_ISREG(mode):
            raise GenboundError(f"{p} is {file_kind(mode)}, not a file of a datasets folder; remove it")
        if p.suffix == ".json":
            read_json(p, f"the datasets file {p.name}", error=GenboundError)


def _scan(path: Path) -> int:
    """Validate ``path`` as UTF-8 and return its longest line in bytes (one pass, 4 MiB at a time)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    longest = current = offset = 0
    line = 1
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as exc:
                at = line + chunk[: exc.start].count(b"\n")
                raise GenboundError(f"{path}: line {at} (byte {offset + exc.start}) is not valid UTF-8 ({exc.reason}); "
                                    "save the file as UTF-8") from None
            parts = chunk.split(b"\n")
            if len(parts) == 1:
                current += len(chunk)
            else:
                longest = max(longest, current + len(parts[0]), *(len(p) for p in parts[1:-1]))
                current = len(parts[-1])
            line += len(parts) - 1
            offset += len(chunk)
            if max(longest, current) > MAX_ROW_BYTES:
                raise GenboundError(f"{path}: line {line} is longer than {MAX_ROW_BYTES >> 20} MiB; split such "
                                    "texts into rows of reasonable size")
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise GenboundError(f"{path}: the file ends inside a UTF-8 character (line {line}); save the file "
                                "as UTF-8") from None
    return max(longest, current)


def table_options(path: Path, fmt: str) -> dict:
    """Keyword arguments for pyarrow's CSV / JSON reader after the file was scanned (:func:`_scan`): a block
    size that holds the longest row."""
    if fmt not in ("csv", "jsonl"):
        return {}
    block = max(1 << 20, 2 * _scan(Path(path)) + 4096)
    if fmt == "csv":
        from pyarrow import csv

        return {"read_options": csv.ReadOptions(block_size=block)}
    from pyarrow import json

    return {"read_options": json.ReadOptions(block_size=block)}


def to_dataset(table, path: Path):
    """A ``datasets.Dataset`` over a pyarrow table read from ``path``: column names must be distinct, non-empty
    and printable (a NUL in a CSV header made ``datasets`` fail to cast), and a table ``datasets`` cannot take
    (a column of lists of nulls broke its fingerprinting inside pyarrow) is one line."""
    import datasets

    names = list(table.column_names)
    for name in names:
        if not name or not name.isprintable():
            raise GenboundError(f"{path}: column name {_shown(name)} is empty or holds control characters; fix the "
                                "header")
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise GenboundError(f"{path}: column {_shown(dup)} appears twice; give every column its own name")
    try:
        return datasets.Dataset(table)
    except Exception as exc:  # noqa: BLE001 - any failure on untrusted data is a file genbound cannot use
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise GenboundError(f"cannot use {path} as a table ({type(exc).__name__}: {first}); check the file's "
                            "columns and their types") from None


def cut_long_texts(texts: list[str], tok, max_length: int) -> list[str]:
    """``texts`` with every very long text cut where the cut provably changes none of the first ``max_length``
    tokens, so that a 10 MB row is not tokenized whole (40 s) to keep 128 tokens.

    A text longer than ``64 max_length`` characters (at least 4096) is cut at the first whitespace after that
    length. Pre-tokenizers split at whitespace (WordPiece, byte-level BPE, SentencePiece's metaspace), so the
    tokens before the cut are those of the whole text; if the prefix alone has more than ``max_length`` tokens,
    truncation keeps only tokens of the prefix and the result equals the whole text's. Otherwise (a long run of
    whitespace, one giant word) the text is kept whole."""
    limit = max(4096, 64 * int(max_length))
    out = list(texts)
    for i, text in enumerate(texts):
        if not isinstance(text, str) or len(text) <= limit:
            continue
        cut = next((j for j in range(limit, min(len(text), limit + 4096)) if text[j].isspace()), None)
        if cut is None:
            continue
        prefix = text[:cut]
        if len(tok(prefix, add_special_tokens=False, verbose=False)["input_ids"]) > max_length:
            out[i] = prefix
    return out


def max_classes(n: int) -> int:
    """The most classes ``n`` labelled rows may hold: every class needs examples in train and test, so more
    than n / 2 classes means the column is not a class label (an id, a score, a text)."""
    return max(2, n // 2)


def _check_count(count: int, n: int, column: str, where: str) -> None:
    if count > max_classes(n):
        raise GenboundError(f"{where}: label column '{column}' holds {count} distinct values in {n} rows (at most "
                            f"{max_classes(n)} classes); is it the label column? name it with --label-column")


def _shown(v) -> str:
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


def labels_from_values(values: list, column: str, names: list[str] | None, where: str) -> tuple[np.ndarray, list[str]]:
    """Integer labels 0..C-1 and the class names of a label column (see the module docstring)."""
    n = len(values)
    if any(v is None for v in values):
        raise GenboundError(f"{where}: label column '{column}' has empty values; fill or drop those rows")
    nested = next((v for v in values if isinstance(v, (list, tuple, dict))), None)
    if nested is not None:
        kind = "maps" if isinstance(nested, dict) else "lists"
        raise GenboundError(f"{where}: label column '{column}' holds {kind} (such as {_shown(nested)}); a label is "
                            "one class name, integer or boolean")
    if names is not None:
        _check_count(len(names), n, column, where)
        y = np.asarray(values, dtype=np.int64)
        bad = y[(y < 0) | (y >= len(names))]
        if bad.size:
            raise GenboundError(f"{where}: label {int(bad[0])} in '{column}' is out of range 0..{len(names) - 1} "
                                "(unlabelled rows, such as GLUE's test split, have -1); drop those rows")
        return y, list(names)
    if all(isinstance(v, (bool, str)) for v in values):
        distinct = {str(v) for v in values}
        _check_count(len(distinct), n, column, where)
        classes = sorted(distinct)
        index = {c: i for i, c in enumerate(classes)}
        return np.fromiter((index[str(v)] for v in values), dtype=np.int64, count=n), classes
    ints = []
    for v in values:
        if isinstance(v, bool) or isinstance(v, str):
            raise GenboundError(f"{where}: label column '{column}' mixes types (numbers and {_shown(v)}); use class "
                                "names or integers")
        if isinstance(v, float) or isinstance(v, np.floating):
            if not math.isfinite(v):
                raise GenboundError(f"{where}: label {_shown(float(v))} in '{column}' is not a class; drop or fix "
                                    "those rows")
            if v != round(v):
                raise GenboundError(f"{where}: label column '{column}' holds non-integer numbers (such as "
                                    f"{_shown(float(v))}); a classifier needs class names or integer labels")
            v = int(v)
        elif isinstance(v, (int, np.integer)):
            v = int(v)
        else:
            raise GenboundError(f"{where}: label column '{column}' holds values of type {type(v).__name__}; a "
                                "label is a class name, an integer or a boolean")
        ints.append(v)
    distinct = sorted(set(ints))
    if distinct[-1] > MAX_SEED:  # beyond int64: no class numbering anyone wrote (a uint64 overflow, a hash)
        raise GenboundError(f"{where}: label {distinct[-1]} in '{column}' is beyond 64-bit integers; use class names "
                            "or integers up to 2^63-1")
    if distinct[0] < 0:
        raise GenboundError(f"{where}: label {distinct[0]} in '{column}' is out of range (labels are 0..C-1); "
                            "drop unlabelled rows or relabel")
    _check_count(len(distinct), n, column, where)
    if distinct[-1] == len(distinct) - 1:  # exactly 0..C-1: the numbering is kept
        return np.asarray(ints, dtype=np.int64), [str(i) for i in distinct]
    index = {v: i for i, v in enumerate(distinct)}
    return np.fromiter((index[v] for v in ints), dtype=np.int64, count=n), [str(v) for v in distinct]


@lru_cache(maxsize=16)
def _positions(folder: str, size: int = 0, mtime_ns: int = 0) -> tuple[int | None, str | None]:
    """The usable positions of a model folder's configuration (cached per config.json size and mtime)."""
    from transformers import AutoConfig

    try:
        cfg = AutoConfig.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise GenboundError(f"cannot read {folder}/config.json: {str(exc).splitlines()[0][:120]}") from None
    text = getattr(cfg, "text_config", None) or cfg
    for name in ("max_position_embeddings", "n_positions", "max_positions", "n_ctx"):
        value = getattr(text, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            if getattr(cfg, "model_type", None) in ("roberta", "xlm-roberta", "camembert"):
                # RoBERTa's positions start after the padding index: pad_token_id + 1 rows are never used.
                value -= int(getattr(cfg, "pad_token_id", None) or 0) + 1
            return value, name
    return None, None


def check_max_length(backbone, max_length: int) -> None:
    """Refuse a ``--max-length`` outside 2..the positions of a text backbone's configuration."""
    if backbone.kind != "hf" or backbone.data_kind != "text" or backbone.folder is None:
        return
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
        raise GenboundError(f"--max-length must be an integer of at least 2 tokens, got {max_length!r}")
    try:
        st = (Path(backbone.folder) / "config.json").stat()
    except OSError:
        raise GenboundError(f"{backbone.folder} has no readable config.json; save the model again") from None
    positions, field = _positions(str(backbone.folder), st.st_size, st.st_mtime_ns)
    limit = positions or MAX_TOKENS
    if max_length > limit:
        raise GenboundError(f"--max-length {max_length} exceeds the {limit} positions of backbone '{backbone.name}'"
                            + (f" (config {field})" if field else "") + f"; use --max-length {min(limit, 512)} or less")


