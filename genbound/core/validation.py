"""One typed validation layer for every JSON file genbound reads (docs/concepts.md, "Checkpoints").

Four kinds of JSON come from outside the process: a checkpoint's ``genbound.json``, a peft adapter's
``adapter_config.json``, a training state's ``state.json`` (genbound.checkpoints.resume) and a bounds configuration
(``genbound bounds --config FILE``). Each is declared here once as a pydantic model: every field's type
(integers are never booleans, numbers are never strings), its range, and whether it may be missing. The
readers call :func:`read_json` (bounded, strict: NaN, Infinity, numbers that overflow a double, deep nesting
and bad UTF-8 are refused) and then the ``validate_*`` function of their file, which either returns or
raises one :class:`~genbound.core.errors.GenboundError` naming the file, the field and the fix.

What a model cannot know alone (a checkpoint's scale against alpha / r, its layers against the backbone it
names) the readers check afterwards; the bounds here are the ones no genuine file comes near, so that every
later computation stays finite and every allocation small: alpha up to 10^6 (so s B A cannot overflow a
float64 from factors the tensor reader accepts), layer sizes up to 2^20, a module path up to 256 characters,
the total work of peft's ``rank_pattern`` / ``alpha_pattern`` regular expressions bounded before any is run.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import CheckpointError, GenboundError

MAX_SEED = (1 << 63) - 1
MAX_DIM = 1 << 20  # no Linear layer of any model genbound reads has a side this long
MAX_COUNT = 1 << 40
MAX_ALPHA = 1e6  # real adapters use 1..512; beyond this s B A overflows before it means anything
MAX_NAME = 256  # module paths are ~30-100 characters
MAX_LAYERS = 1 << 14
MAX_PATTERNS = 1024
# The regex work that peft's pattern rule may cost: sum over (pattern, module) of len(module)^(quantifiers+1),
# a bound on backtracking for patterns without nested quantifiers. 2e9 is about a second.
MAX_PATTERN_WORK = 2e9

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _printable(v: str) -> str:
    # Names are echoed to terminals: an escape sequence from a file must not reach one.
    if _CONTROL.search(v):
        raise ValueError("contains a control character")
    return v


Int = Annotated[int, Field(strict=True)]
NonNeg = Annotated[int, Field(strict=True, ge=0)]
Count = Annotated[int, Field(strict=True, ge=1, le=MAX_COUNT)]
Dim = Annotated[int, Field(strict=True, ge=1, le=MAX_DIM)]
Seed = Annotated[int, Field(strict=True, ge=0, le=MAX_SEED)]
Finite = Annotated[float, Field(strict=True, allow_inf_nan=False)]
Positive = Annotated[float, Field(strict=True, allow_inf_nan=False, gt=0)]
Alpha = Annotated[float, Field(strict=True, allow_inf_nan=False, gt=0, le=MAX_ALPHA)]
Name = Annotated[str, Field(strict=True, min_length=1, max_length=MAX_NAME)]
Text = Annotated[str, Field(strict=True, max_length=4096)]


class _Model(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)

    @field_validator("*", mode="after")
    @classmethod
    def _no_control_characters(cls, v: Any) -> Any:
        if isinstance(v, str):
            return _printable(v)
        if isinstance(v, list):
            for x in v:
                if isinstance(x, str):
                    _printable(x)
        return v


# -- genbound.json -------------------------------------------------------------------------------------


class LayerEntry(_Model):
    name: Name
    out_features: Dim
    in_features: Dim


class SourceRecord(_Model):
    """One entry of ``sources`` (genbound.checkpoints.provenance): a registered name or an absolute path, and
    fingerprints."""

    name: Annotated[str, Field(strict=True, min_length=1, max_length=4096)] | None = None
    path: Annotated[str, Field(strict=True, min_length=1, max_length=4096)] | None = None
    fingerprint: Annotated[str, Field(strict=True, pattern=r"^sha256:[0-9a-f]{64}$")] | None = None
    files: dict[Annotated[str, Field(strict=True, max_length=MAX_NAME)],
                Annotated[str, Field(strict=True, pattern=r"^sha256:[0-9a-f]{64}$")]] = {}

    @model_validator(mode="after")
    def _named(self) -> SourceRecord:
        if (self.name is None) == (self.path is None):
            raise ValueError("a source has a registered name or a path, exactly one of them")
        if self.path is not None and not self.path.startswith("/") and ":" not in self.path[:3]:
            raise ValueError(f"the source path '{self.path[:60]}' is not absolute")
        return self


class SourcesModel(_Model):
    backbone: SourceRecord | None = None
    dataset: SourceRecord | None = None


class CheckpointMetaModel(_Model):
    """``genbound.json`` (genbound.checkpoints.checkpoint.CheckpointMeta)."""

    format: Literal["genbound-checkpoint"]
    format_version: Literal[1]
    method: Name
    rank: Count
    alpha: Alpha
    scale: Annotated[float, Field(strict=True, allow_inf_nan=False, gt=0, le=MAX_ALPHA)]
    chain: Count
    layers: Annotated[list[LayerEntry], Field(max_length=MAX_LAYERS)]
    backbone: Annotated[str, Field(strict=True, min_length=1, max_length=4096)]
    fingerprint: Text
    dataset: Annotated[str, Field(strict=True, min_length=1, max_length=4096)]
    split_seed: Seed
    max_length: Annotated[int, Field(strict=True, ge=2, le=MAX_DIM)] | None
    num_labels: Annotated[int, Field(strict=True, ge=2, le=1 << 20)]
    head_in_features: Dim
    classes: Annotated[list[Annotated[str, Field(strict=True, max_length=MAX_NAME)]], Field(max_length=1 << 20)]
    n_train: Count
    sizes: dict[str, NonNeg]
    dtype: Literal["float32", "float64", "float16", "bfloat16"]
    seed: Seed
    paca_columns: Literal["random", "first"] = "random"
    split_digest: Text = ""
    dataset_card: dict[str, Any] = {}  # the researcher's data file: source, columns, classes, sizes, digest
    # model and data by absolute path and fingerprint (genbound.checkpoints.provenance)
    sources: SourcesModel = SourcesModel()
    head_bias: Annotated[bool, Field(strict=True)] = True
    hyperparameters: dict[str, Any] = {}
    params: dict[str, NonNeg] = {}
    metrics: dict[str, Any] = {}
    results: dict[str, Finite | None] = {}
    final_eval: Annotated[bool, Field(strict=True)] = True  # False: --no-final-eval, results left empty
    history: list[dict[str, Any]] = []
    trajectory_steps: Annotated[list[NonNeg], Field(max_length=1 << 16)] = []
    genbound_version: Text = ""

    @field_validator("layers")
    @classmethod
    def _layers(cls, v: list[LayerEntry]) -> list[LayerEntry]:
        names = [li.name for li in v]
        if len(set(names)) != len(names):
            raise ValueError("a layer is listed twice")
        if any(n == "head" or n.startswith("head.") for n in names):
            raise ValueError("a layer is named like the classification head, which is trained whole")
        return v


# -- adapter_config.json ------------------------------------------------------------------------------


class PeftConfigModel(_Model):
    """The fields of a peft LoRA ``adapter_config.json`` that genbound reads (others are ignored)."""

    peft_type: Annotated[str, Field(strict=True, max_length=64)]
    r: Annotated[int, Field(strict=True, ge=1, le=1 << 16)]
    lora_alpha: Alpha
    rank_pattern: dict[Annotated[str, Field(max_length=MAX_NAME)],
                       Annotated[int, Field(strict=True, ge=1, le=1 << 16)]] | None = None
    alpha_pattern: dict[Annotated[str, Field(max_length=MAX_NAME)], Alpha] | None = None
    use_rslora: bool | None = None
    use_dora: bool | None = None
    fan_in_fan_out: bool | None = None
    bias: Literal["none", "all", "lora_only"] | None = None
    modules_to_save: Name | Annotated[list[Name], Field(max_length=MAX_LAYERS)] | None = None
    base_model_name_or_path: Annotated[str, Field(strict=True, max_length=4096)] | None = None
    peft_version: Annotated[str, Field(strict=True, max_length=256)] | None = None
    task_type: Annotated[str, Field(strict=True, max_length=256)] | None = None

    @model_validator(mode="after")
    def _pattern_count(self) -> PeftConfigModel:
        if len(self.rank_pattern or {}) + len(self.alpha_pattern or {}) > MAX_PATTERNS:
            raise ValueError(f"rank_pattern and alpha_pattern hold more than {MAX_PATTERNS} patterns")
        return self


def pattern_work(patterns: list[str], modules: list[str]) -> float:
    """An upper estimate of the backtracking work of matching every pattern against every module with
    peft's rule ``(.*\\.)?(P)$``: len(module)^(quantifiers of P + 1) per pair (the rule's own ``.*`` counts)."""
    total = 0.0
    longest = max((len(m) for m in modules), default=0)
    for p in patterns:
        q = sum(p.count(c) for c in "*+?{")
        total += len(modules) * float(max(longest, 1)) ** (q + 1)
    return total


def check_pattern_work(patterns: list[str], modules: list[str], where: Path | str) -> None:
    """Refuse pattern sets whose total matching work could run for minutes (re has no timeout)."""
    work = pattern_work(patterns, modules)
    if work > MAX_PATTERN_WORK:
        raise GenboundError(
            f"{where}: {len(patterns)} rank / alpha patterns over {len(modules)} modules would cost about {work:.1e} "
            f"regular-expression steps (at most {MAX_PATTERN_WORK:.0e}); use fewer patterns or plain module names"
        )


# -- the training state (genbound.checkpoints.resume) ---------------------------------------------------------------


class ParamGroup(_Model):
    model_config = ConfigDict(strict=True, extra="allow", frozen=True)
    lr: Finite
    params: list[NonNeg]


class OptimizerModel(_Model):
    param_groups: Annotated[list[ParamGroup], Field(min_length=1, max_length=64)]
    scalars: dict[Annotated[str, Field(pattern=r"^\d{1,9}$")], dict[str, Any]] = {}


class HistoryEntry(_Model):
    model_config = ConfigDict(strict=True, extra="allow", frozen=True)
    epoch: NonNeg
    step: NonNeg
    train_loss_running: Finite
    val_loss: Finite
    val_accuracy: Annotated[float, Field(strict=True, ge=0, le=1)]


class TrainStateModel(_Model):
    """``state.json`` of a training state (genbound.checkpoints.resume.save_state)."""

    format: Literal["genbound-train-state"]
    format_version: Literal[1]
    config: dict[str, Any]
    step: Annotated[int, Field(strict=True, ge=0, le=MAX_COUNT)]
    epoch: Annotated[int, Field(strict=True, ge=0, le=MAX_COUNT)]
    position: Annotated[int, Field(strict=True, ge=0, le=MAX_COUNT)]
    running: Finite
    history: Annotated[list[HistoryEntry], Field(max_length=1 << 20)]
    traj_steps: Annotated[list[NonNeg], Field(max_length=1 << 16)]
    links: dict[Name, Annotated[int, Field(strict=True, ge=0, le=MAX_COUNT)]]
    optimizer: OptimizerModel
    scheduler: dict[str, Any]
    train_seconds: Annotated[float, Field(strict=True, allow_inf_nan=False, ge=0)] = 0.0
    resumed_at: list[NonNeg] = []


# -- bounds configurations (genbound bounds --config FILE) -------------------------------------------------


LayerSpec = Annotated[str, Field(strict=True, max_length=1 << 16)] | Annotated[list[Dim], Field(min_length=2,
                                                                                               max_length=2)]


class BoundsConfigModel(_Model):
    """A bare configuration for Table 1 (genbound.bounds.mi.config_from_dict)."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)
    layers: Annotated[str, Field(strict=True, max_length=1 << 16)] | Annotated[list[LayerSpec],
                                                                               Field(max_length=MAX_LAYERS)]
    rank: Count
    chain: Count = 1
    q: Annotated[float, Field(strict=True, allow_inf_nan=False, gt=0, le=1024)] = 32
    sigma: Annotated[float, Field(strict=True, allow_inf_nan=False, gt=0, le=1e12)] | None = None
    loss: Annotated[str, Field(strict=True, max_length=64)] | None = None
    clip: Annotated[float, Field(strict=True, allow_inf_nan=False, gt=0, le=1e12)] | None = None
    n: Count | None = None
    n_train: Count | None = None
    head: Annotated[int, Field(strict=True, ge=0, le=MAX_COUNT)] = 0
    total: Count | None = None
    name: Annotated[str, Field(strict=True, max_length=MAX_NAME)] | None = None


# -- reading and reporting ----------------------------------------------------------------------------------


def _reject_constant(name: str) -> float:
    raise ValueError(f"non-finite number {name}")


def _finite_float(text: str) -> float:
    v = float(text)
    if not math.isfinite(v):
        raise ValueError(f"number {text[:40]} overflows a double")
    return v


def parse_json(data: bytes | str, where: Path | str, what: str, error: type[GenboundError] = CheckpointError) -> Any:
    """Strict JSON for untrusted files: NaN / Infinity and numbers beyond a double refused; deep nesting,
    integers too long to parse and bad UTF-8 become one ``error``."""
    try:
        if isinstance(data, bytes):
            data = data.decode("utf-8")
        return json.loads(data, parse_constant=_reject_constant, parse_float=_finite_float)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise error(f"{where}: {what} is not valid JSON ({exc.__class__.__name__}); the file is corrupt") from None


def read_json(path: Path, what: str, max_bytes: int = 16 << 20, error: type[GenboundError] = CheckpointError) -> Any:
    """Read at most ``max_bytes`` of ``path`` (even if the file grows or lies about its size) and parse it
    strictly (:func:`parse_json`)."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(max_bytes + 1)
    except OSError as exc:
        raise error(f"{path}: cannot read {what} ({exc.strerror or exc})") from None
    if len(data) > max_bytes:
        raise error(f"{path}: {what} is implausibly large (over {max_bytes >> 20} MiB); the file is corrupt")
    return parse_json(data, path, what, error)


def _describe(exc: ValidationError) -> str:
    err = exc.errors(include_url=False)[0]
    loc = ".".join(str(p) for p in err["loc"])
    msg = err["msg"]
    if err["type"] == "missing":
        return f"lacks field '{loc}'"
    got = err.get("input")
    shown = "" if isinstance(got, (dict, list)) else f", got {_short(got)}"
    return f"field '{loc}': {msg[0].lower() + msg[1:]}{shown}" if loc else f"{msg[0].lower() + msg[1:]}{shown}"


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


def _validate(model: type[BaseModel], raw: Any, where: Path | str, what: str, fix: str,
              error: type[GenboundError]) -> BaseModel:
    if not isinstance(raw, dict):
        raise error(f"{where}: {what} is not a JSON object; {fix}")
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise error(f"{where}: {what} {_describe(exc)}; {fix}") from None
    except (RecursionError, OverflowError, ValueError, TypeError) as exc:
        raise error(f"{where}: {what} is malformed ({exc.__class__.__name__}); {fix}") from None


def validate_checkpoint_meta(raw: Any, where: Path | str) -> CheckpointMetaModel:
    """``genbound.json``: types and ranges (the format and version first, with their own messages)."""
    if isinstance(raw, dict):
        if raw.get("format") != "genbound-checkpoint":
            raise CheckpointError(f"{where}: not a genbound checkpoint (format field is {_short(raw.get('format'))})")
        if raw.get("format_version") != 1 or isinstance(raw.get("format_version"), bool):
            raise CheckpointError(f"{where}: checkpoint format version {_short(raw.get('format_version'))} is not "
                                  "supported (this genbound reads version 1)")
    return _validate(CheckpointMetaModel, raw, where, "metadata", "the checkpoint is corrupt or was edited",
                     CheckpointError)


def validate_peft_config(raw: Any, where: Path | str) -> PeftConfigModel:
    """``adapter_config.json`` of a peft LoRA adapter (only after its peft_type was found to be LoRA)."""
    return _validate(PeftConfigModel, raw, where, "adapter_config.json", "the adapter is corrupt or was edited",
                     GenboundError)


def validate_train_state(raw: Any, where: Path | str) -> TrainStateModel:
    """``state.json`` of a training state."""
    if isinstance(raw, dict) and raw.get("format") != "genbound-train-state":
        raise CheckpointError(f"{where}: training state is corrupt (not a genbound training state); delete it to "
                              "start the run again")
    return _validate(TrainStateModel, raw, where, "training state", "delete it to start the run again",
                     CheckpointError)


def validate_bounds_config(raw: Any, where: Path | str) -> BoundsConfigModel:
    """A ``genbound bounds --config`` file or preset."""
    return _validate(BoundsConfigModel, raw, where, "configuration",
                     "fix the value (see `genbound bounds --help`) or pass it as an option", GenboundError)


def architectures(cfg: dict, where: str | Path = "config.json") -> list[str]:
    """The class names under config.json's ``architectures`` (none: an empty list); anything but a list of
    names is one :class:`GenboundError`, before any code iterates over it."""
    archs = cfg.get("architectures")
    if archs is None:
        return []
    if not isinstance(archs, list) or not all(isinstance(a, str) for a in archs):
        raise GenboundError(f"{where}: 'architectures' must be a list of class names, got {str(archs)[:60]}; save "
                            "the model again with save_pretrained")
    return list(archs)
