"""Checks of a local model folder (``--backbone DIR``) before anything is built from it, and after the build.

Before building (:func:`check_model_folder`), everything transformers would trust is read defensively:

* ``config.json`` strictly (bounded size, UTF-8, no deep nesting, no NaN: :func:`genbound.core.validation.read_json`);
  a ``quantization_config`` (bitsandbytes, GPTQ, AWQ) is refused, since genbound trains float weights;
* the sizes genbound and transformers allocate from (width, layers, heads, feed-forward width, positions,
  vocabulary, image and patch size, also inside ``text_config`` / ``vision_config``) as typed fields
  (:class:`ConfigSizes`): integers, never strings or floats, in ranges no released model leaves;
* ``model.safetensors``' header through :func:`genbound.core.readers.read_header` (a pickle, a truncated file, a
  header claiming tensors beyond the file or beyond this machine's memory is refused);
* the parameters the config describes, estimated from those sizes (:func:`estimate_parameters`, a lower bound
  for the architectures genbound builds), against the parameters the weights file holds (the header's numel):
  a config describing a model far larger than its weights would allocate that model and train it from random
  values, so it is refused, as is a model whose float32 build exceeds half of this machine's memory.

After building (:func:`require_weights`), transformers' own loading report (``output_loading_info=True``) says
which parameters were missing from the file or had another shape and so were drawn at random: any such key
outside the new task head (``classifier``, ``score``, a pooler) refuses the folder, instead of training from
random weights. A folder without tokenizer files, or a tokenizer that holds only its special tokens, is
refused (:func:`check_tokenizer_folder`, :func:`check_vocabulary`), as is a vision folder without an image
processor (:func:`check_processor_folder`).
"""

from __future__ import annotations

import math
import os
import stat
import warnings
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..core.errors import GenboundError
from ..core.files import file_kind
from ..core.readers import DTYPES, model_header
from ..core.shards import INDEX_NAME, is_index, weight_paths
from ..core.validation import read_json

MAX_WIDTH = 1 << 16  # the widest released transformers are 16-25 k
MAX_LAYERS = 1 << 10
MAX_FFN = 1 << 20
MAX_POSITIONS = 1 << 20
MAX_VOCAB = 1 << 22  # the largest vocabularies are ~256 k
MAX_IMAGE = 1 << 14
# A config may describe a somewhat larger model than its weights (a pooler or head the file lacks is drawn);
# beyond this factor plus slack the weights cannot be the model's.
PARAMS_FACTOR = 2
PARAMS_SLACK = 1 << 16
# A float32 build may take at most this fraction of the machine's memory.
MEMORY_FRACTION = 0.5
# Absolute position tables: other types (rotary) allocate nothing per position.
ABSOLUTE_POSITIONS = ("bert", "roberta", "xlm-roberta", "camembert", "distilbert", "electra", "albert", "gpt2",
                      "deberta", "mpnet")
QUANT_HINT = ("genbound trains and measures float weights; load the model with its quantization library, "
              "dequantize it and save_pretrained the float model")
FLOAT_DTYPES = ("auto", "float32", "float16", "bfloat16", "float64")
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "tokenizer.model", "spiece.model",
                   "sentencepiece.bpe.model")
PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json", "image_processor_config.json")


def _int(lo: int, hi: int):
    return Annotated[int | None, Field(strict=True, ge=lo, le=hi)]


class ConfigSizes(BaseModel):
    """The sizes of ``config.json`` that a build allocates from, under each architecture's own name."""

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)

    hidden_size: _int(1, MAX_WIDTH) = None
    n_embd: _int(1, MAX_WIDTH) = None
    dim: _int(1, MAX_WIDTH) = None
    d_model: _int(1, MAX_WIDTH) = None
    embedding_size: _int(1, MAX_WIDTH) = None
    num_hidden_layers: _int(1, MAX_LAYERS) = None
    n_layer: _int(1, MAX_LAYERS) = None
    n_layers: _int(1, MAX_LAYERS) = None
    num_layers: _int(1, MAX_LAYERS) = None
    num_attention_heads: _int(1, MAX_WIDTH) = None
    n_head: _int(1, MAX_WIDTH) = None
    n_heads: _int(1, MAX_WIDTH) = None
    num_key_value_heads: _int(1, MAX_WIDTH) = None
    head_dim: _int(1, MAX_WIDTH) = None
    intermediate_size: _int(1, MAX_FFN) = None
    n_inner: _int(1, MAX_FFN) = None
    hidden_dim: _int(1, MAX_FFN) = None
    ffn_dim: _int(1, MAX_FFN) = None
    max_position_embeddings: _int(1, MAX_POSITIONS) = None
    n_positions: _int(1, MAX_POSITIONS) = None
    vocab_size: _int(1, MAX_VOCAB) = None
    type_vocab_size: _int(0, 1 << 16) = None
    image_size: _int(1, MAX_IMAGE) = None
    patch_size: _int(1, MAX_IMAGE) = None
    num_channels: _int(1, 64) = None
    num_labels: _int(1, 1 << 20) = None

    def first(self, *names: str) -> int | None:
        return next((getattr(self, n) for n in names if getattr(self, n) is not None), None)

    @property
    def width(self) -> int | None:
        return self.first("hidden_size", "n_embd", "dim", "d_model")

    @property
    def layers(self) -> int | None:
        return self.first("num_hidden_layers", "n_layer", "n_layers", "num_layers")

    @property
    def heads(self) -> int | None:
        return self.first("num_attention_heads", "n_head", "n_heads")

    @property
    def ffn(self) -> int | None:
        return self.first("intermediate_size", "n_inner", "hidden_dim", "ffn_dim")

    @property
    def positions(self) -> int | None:
        return self.first("max_position_embeddings", "n_positions")


# Sizes a configuration may leave null (GPT-2's n_inner means 4 x width); any other null size is corrupt.
NULLABLE = ("n_inner", "head_dim", "num_key_value_heads", "embedding_size", "num_labels")


def _sizes(raw: dict, where: str) -> ConfigSizes:
    null = next((k for k in ConfigSizes.model_fields if k in raw and raw[k] is None and k not in NULLABLE), None)
    if null is not None:
        raise GenboundError(f"{where}: field '{null}' is null; the config is corrupt or not a model genbound can build")
    try:
        return ConfigSizes.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        loc = ".".join(str(p) for p in err["loc"])
        got = err.get("input")
        shown = "" if isinstance(got, (dict, list)) else f" (got {str(repr(got))[:40]})"
        raise GenboundError(f"{where}: field '{loc}' {err['msg'][0].lower() + err['msg'][1:]}{shown}; the config "
                            "is corrupt or not a model genbound can build") from None


def estimate_parameters(sizes: ConfigSizes, model_type: str | None) -> int:
    """A lower bound on the parameters of a transformer with these sizes: the token (or patch) embedding
    ``V e``, an absolute position table ``P h`` where the type has one, and per layer at least the query and
    output projections ``2 h^2`` plus the feed-forward ``2 h I`` (``I`` = 4 h where absent)."""
    h = sizes.width or 0
    if not h:
        return 0
    e = sizes.embedding_size or h
    n = (sizes.vocab_size or 0) * e
    if model_type in ABSOLUTE_POSITIONS:
        n += (sizes.positions or 0) * h
    if sizes.image_size and sizes.patch_size:
        n += (sizes.image_size // sizes.patch_size) ** 2 * h + (sizes.num_channels or 3) * sizes.patch_size ** 2 * h
    n += (sizes.layers or 0) * (2 * h * h + 2 * h * (sizes.ffn or 4 * h))
    return n


def machine_memory() -> int:
    """Physical memory of this machine in bytes (0 where unknown)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not Linux / macOS
        return 0


def _regular(path: Path, what: str) -> None:
    """Refuse a FIFO, device or socket where a file is expected (opening one blocks or reads forever)."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return
    if not stat.S_ISREG(mode) and not stat.S_ISDIR(mode):
        raise GenboundError(f"{path} is {file_kind(mode)}, not {what}; replace it with the file itself")


def read_config(path: Path) -> dict:
    """``config.json`` of a model folder, parsed strictly (one :class:`GenboundError` for anything else)."""
    f = path / "config.json"
    _regular(f, "a config.json file")
    raw = read_json(f, "config.json", max_bytes=4 << 20, error=GenboundError)
    if not isinstance(raw, dict):
        raise GenboundError(f"{f} is not a JSON object; save the model again with save_pretrained")
    return raw


def find_weights(folder: Path) -> Path | None:
    """model.safetensors, else model.safetensors.index.json, in ``folder``; None if it holds neither."""
    return next((f for f in (folder / "model.safetensors", folder / INDEX_NAME) if f.is_file()), None)


def model_weights(folder: Path) -> Path:
    """A model folder's weights: model.safetensors, or the index of a sharded one
    (model.safetensors.index.json with its model-0000N-of-0000M.safetensors shards, as ``save_pretrained``
    writes a large model). Pickled weights (``*.bin``) are refused: unpickling can execute code."""
    found = find_weights(folder)
    if found is not None:
        return found
    other = sorted(p.name for p in folder.glob("*.bin")) + sorted(p.name for p in folder.glob("*.bin.index.json"))
    raise GenboundError(
        f"'{folder}' has neither model.safetensors nor {INDEX_NAME}"
        + (f" (it has {', '.join(other)}, which genbound does not load: a pickle can execute code)" if other else "")
        + "; save the model with save_pretrained(..., safe_serialization=True)"
    )


def check_model_folder(path: Path, cfg: dict | None = None) -> dict:
    """Refuse a model folder whose config or weights cannot be the model it describes (module docstring);
    return its config."""
    path = Path(path)
    cfg = read_config(path) if cfg is None else cfg
    where = f"{path}/config.json"
    quant = cfg.get("quantization_config")
    if quant is not None:
        method = quant.get("quant_method") if isinstance(quant, dict) else None
        raise GenboundError(f"{where} declares a quantized model ({method or 'quantization_config'}); {QUANT_HINT}")
    model_type = cfg.get("model_type") if isinstance(cfg.get("model_type"), str) else None
    for key in ("torch_dtype", "dtype"):
        if cfg.get(key) is not None and cfg.get(key) not in FLOAT_DTYPES:
            raise GenboundError(f"{where}: field '{key}' is {str(repr(cfg.get(key)))[:40]}, not one of "
                                f"{', '.join(FLOAT_DTYPES)}; genbound builds float models")
    sizes = _sizes(cfg, where)
    for sub in ("text_config", "vision_config"):
        if isinstance(cfg.get(sub), dict):
            _sizes(cfg[sub], f"{where} ({sub})")
        elif cfg.get(sub) is not None:
            raise GenboundError(f"{where}: field '{sub}' is not an object; the config is corrupt")
    h, heads = sizes.width, sizes.heads
    if h and heads and sizes.head_dim is None and h % heads:
        raise GenboundError(f"{where}: width {h} is not a multiple of the {heads} attention heads; the config is "
                            "corrupt")
    if heads and sizes.num_key_value_heads and heads % sizes.num_key_value_heads:
        raise GenboundError(f"{where}: {heads} attention heads are not a multiple of num_key_value_heads "
                            f"{sizes.num_key_value_heads}; the config is corrupt")
    if sizes.image_size and sizes.patch_size and sizes.patch_size > sizes.image_size:
        raise GenboundError(f"{where}: patch_size {sizes.patch_size} exceeds image_size {sizes.image_size}")
    _transformers_config(path, model_type)
    weights = model_weights(path)
    for f in weight_paths(weights):
        _regular(f, "a sharded checkpoint's index" if is_index(f) else "a safetensors file")
        refuse_sparse(f)
    memory = machine_memory()
    header = model_header(weights, dtypes=MODEL_DTYPES)
    numel = sum(math.prod(info["shape"]) for info in header.values())
    claimed = sum(info["data_offsets"][1] - info["data_offsets"][0] for info in header.values())
    if memory and claimed > MEMORY_FRACTION * memory:
        raise GenboundError(f"{weights}: the tensors claim {claimed / 2**30:.1f} GiB, more than half of this "
                            f"machine's {memory / 2**30:.1f} GiB; the file is corrupt or too large to train here")
    need = estimate_parameters(sizes, model_type)
    if need > PARAMS_FACTOR * numel + PARAMS_SLACK:
        raise GenboundError(f"{where} describes a model of at least {need / 1e6:.1f} M parameters but {weights.name} "
                            f"holds {numel / 1e6:.1f} M; the config does not belong to these weights (save the "
                            "model and its config together with save_pretrained)")
    if memory and 4 * need > MEMORY_FRACTION * memory:
        raise GenboundError(f"{where}: building this model takes at least {4 * need / 2**30:.1f} GiB in float32, "
                            f"more than half of this machine's {memory / 2**30:.1f} GiB")
    return cfg


# A file whose apparent size exceeds its disk blocks by this factor (and this many bytes) is mostly holes: a
# sparse file claiming gigabytes it does not hold. Trained or even freshly initialised float tensors compress
# by far less on a compressing filesystem.
SPARSE_RATIO = 8
SPARSE_MIN_BYTES = 64 << 20


def refuse_sparse(path: Path) -> None:
    """Refuse a tensor file that is mostly holes (reading it would allocate its apparent size in zeros), where
    no base model bounds what it may claim."""
    try:
        st = Path(path).stat()
    except OSError:
        return
    blocks = getattr(st, "st_blocks", None)
    if blocks is None:  # pragma: no cover - not POSIX
        return
    on_disk = 512 * blocks
    if st.st_size > SPARSE_MIN_BYTES and st.st_size > SPARSE_RATIO * on_disk:
        raise GenboundError(f"{path} claims {st.st_size / 2**30:.1f} GiB but holds {on_disk / 2**20:.0f} MiB on disk "
                            "(a sparse file); it is corrupt or hostile")


def _transformers_config(path: Path, model_type: str | None) -> None:
    """Let transformers' own configuration class validate the file (its types and relations), after the sizes
    above were bounded, so that no build later fails on a value of the wrong type with a traceback."""
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)
    except Exception as exc:  # noqa: BLE001 - any failure on an untrusted config is a config genbound cannot build
        first = (str(exc).strip().splitlines() or [type(exc).__name__])
        text = " ".join(line.strip() for line in first[:3])[:200]
        raise GenboundError(f"{path}/config.json is not a valid {model_type or 'model'} configuration for "
                            f"transformers ({type(exc).__name__}: {text}); save the model again with "
                            "save_pretrained") from None


def _model_dtypes() -> dict:
    import torch

    return {**DTYPES, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
            "BOOL": torch.bool}


# Tensor types a model's weights may hold (genbound's own checkpoints allow fewer): buffers of integer or
# boolean type too.
MODEL_DTYPES = _model_dtypes()


def _head_key(key: str, prefix: str) -> bool:
    """Keys that a task model may draw fresh: outside the base model (classifier, score, pre_classifier) or
    its pooler."""
    return (bool(prefix) and not key.startswith(prefix + ".")) or ".pooler." in f".{key}"


def require_weights(loaded: Any, folder: Path | str, head_may_be_new: bool = True):
    """The model of ``from_pretrained(..., output_loading_info=True)``, or a refusal when transformers drew any
    parameter outside the new task head at random (missing from the file, or of another shape)."""
    model, info = loaded
    prefix = getattr(model, "base_model_prefix", "") if head_may_be_new else ""
    if prefix and not any(n.startswith(prefix + ".") for n, _ in model.named_parameters()):
        prefix = ""  # a bare base model: only a pooler may be new
    missing = sorted(k for k in info.get("missing_keys", ()) if not _head_key(k, prefix))
    mismatched = [m for m in info.get("mismatched_keys", ()) if not _head_key(m[0], prefix)]
    total = sum(1 for _ in model.named_parameters())
    if missing:
        raise GenboundError(f"{folder}/model.safetensors lacks {len(missing)} of the model's {total} parameters "
                            f"(first: '{missing[0]}'), which would be trained from random values; save the whole "
                            "model with save_pretrained")
    if mismatched:
        key, got, want = mismatched[0][:3]
        raise GenboundError(f"{folder}/model.safetensors holds '{key}' of shape {tuple(got)} where the model "
                            f"described by config.json has {tuple(want)} ({len(mismatched)} such); the weights "
                            "and the config do not belong together")
    return model


def check_tokenizer_folder(folder: Path | str) -> None:
    """Refuse a model folder without tokenizer files (transformers would build a vocabulary of special tokens
    only, in which every word is unknown) or with one that is not a regular file."""
    folder = Path(folder)
    for name in (*TOKENIZER_FILES, "tokenizer_config.json", "special_tokens_map.json", "merges.txt"):
        _regular(folder / name, "a tokenizer file")
    if not any((folder / n).is_file() for n in TOKENIZER_FILES):
        raise GenboundError(f"{folder} holds no tokenizer (none of {', '.join(TOKENIZER_FILES[:4])}); save the "
                            "model's tokenizer into the folder with tokenizer.save_pretrained")


def check_vocabulary(tok, folder: Path | str) -> None:
    """Refuse a tokenizer whose vocabulary holds nothing but its special tokens."""
    special = set(getattr(tok, "all_special_tokens", []) or [])
    if len(tok) <= len(special) + 1:
        raise GenboundError(f"the tokenizer in {folder} holds {len(tok)} tokens, all special: every word would "
                            "be unknown; save the model's own tokenizer into the folder")


def check_processor_folder(folder: Path | str) -> None:
    """Refuse a vision model folder without an image processor configuration."""
    folder = Path(folder)
    for name in PROCESSOR_FILES:
        _regular(folder / name, "an image processor file")
    if not any((folder / n).is_file() for n in PROCESSOR_FILES):
        raise GenboundError(f"{folder} holds no image processor (preprocessor_config.json); save the model's "
                            "image processor into the folder with save_pretrained")


def open_image(path: str | Path):
    """An image file as RGB, with PIL's decompression-bomb limit: a non-regular file, an unreadable image or
    one of more than ``Image.MAX_IMAGE_PIXELS`` pixels is one :class:`GenboundError`."""
    from PIL import Image, UnidentifiedImageError

    try:
        mode = Path(path).stat().st_mode
    except OSError:
        mode = None
    if mode is None:
        raise GenboundError(f"{path} cannot be read; remove it from the image folder")
    if not stat.S_ISREG(mode):
        raise GenboundError(f"{path} is {file_kind(mode)}, not an image file; remove it from the image folder")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                return im.convert("RGB")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise GenboundError(f"{path} claims more pixels than PIL decodes safely ({str(exc).split('.')[0]}); "
                            "remove or shrink it") from None
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, EOFError, MemoryError):
        raise GenboundError(f"{path} is not a readable image; remove it from the image folder") from None

