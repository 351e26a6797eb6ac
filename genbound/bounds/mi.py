"""The mutual-information bound and the paper's Table 1, for any method and any configuration.

Xu & Raginsky (2017): if l(w, Z) is sigma-sub-Gaussian for every fixed w,

    |E[L_test(W) - L_train(W)]| <= sqrt( 2 sigma^2 I(S; W) / N ),

and with D data-dependent parameters stored at q bits each, I(S; W) <= H(W) <= q D ln 2, so

    gap <= sqrt( 2 sigma^2 ln2 q D / N ).                                   (docs/concepts.md, MI bound)

Table 1 of "Beyond LoRA" (Cadenhead et al., arXiv 2606.13767) is this with D = r S, S = k sum_i (m_i + n_i)
when A is trained and k sum_i n_i when a frozen, seed-drawn A costs nothing. D comes only from the method
catalogue (:meth:`genbound.methods.catalogue.Method.data_dependent_params`); the trained head is counted unless
``include_head=False`` (which reproduces the paper's table), and fft counts every parameter.

The bound is on the *expected* gap, not a high-probability certificate. A loss in [a, b] has sigma =
(b - a) / 2 and a gap of at most b - a = 2 sigma, so a value >= 2 sigma is vacuous.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..core.errors import GenboundError
from ..core.validation import BoundsConfigModel, read_json, validate_bounds_config
from ..methods.catalogue import METHODS, Method, get_method
from .common import check_positive, sigma_for_loss

LN2 = math.log(2.0)


def mi_gap_bound(d: int, q: float, sigma: float, n: int) -> float:
    """sqrt(2 sigma^2 ln2 q D / N): Xu-Raginsky with I(S; W) <= q D ln 2 (nats)."""
    if d < 0:
        raise GenboundError(f"the data-dependent parameter count D must be >= 0, got {d}")
    q = check_positive(q, "q (bits per stored parameter)", "--q")
    sigma = check_positive(sigma, "sigma (sub-Gaussian parameter of the loss)", "--sigma or --loss/--clip")
    n = check_positive(n, "the number of training examples N", "--n")
    return math.sqrt(2.0 * sigma * sigma * LN2 * q * d / n)


# --------------------------------------------------------------------------------------------------
# Configurations: a checkpoint or a bare description (layer shapes, r, k, q, sigma, N).

_LAYER_RE = re.compile(r"^\s*(\d{1,9})\s*x\s*(\d{1,9})\s*(?:\*\s*(\d{1,9}))?\s*$")
MAX_LAYERS = 1 << 16  # a list of this many shapes is already far beyond any model


def parse_layers(spec: str | list) -> list[tuple[int, int]]:
    """Layer shapes (out, in) from "768x768*24" or "128x64,128x128" or a JSON list of [out, in] / strings."""
    items: list = spec if isinstance(spec, list) else [s for s in str(spec).split(",") if s.strip()]
    out: list[tuple[int, int]] = []
    for item in items:
        if isinstance(item, (list, tuple)) and len(item) == 2:
            n, m, count = int(item[0]), int(item[1]), 1
        else:
            match = _LAYER_RE.match(str(item))
            if not match:
                raise GenboundError(
                    f"cannot read layer shape '{item}'; write OUTxIN or OUTxIN*COUNT, e.g. --layers 768x768*24"
                )
            n, m, count = int(match[1]), int(match[2]), int(match[3] or 1)
        if n <= 0 or m <= 0 or count <= 0:
            raise GenboundError(f"layer shape '{item}' has a non-positive size; sizes and counts must be >= 1")
        if len(out) + count > MAX_LAYERS:
            raise GenboundError(f"more than {MAX_LAYERS} adapted layers given ('{str(item)[:40]}'); check the counts")
        out.extend([(n, m)] * count)
    if not out:
        raise GenboundError("no adapted layers given; pass --layers OUTxIN*COUNT (e.g. 384x384*12)")
    return out


def compress_layers(layers: list[tuple[int, int]]) -> str:
    """The inverse of :func:`parse_layers` for display: runs of equal shapes as OUTxIN*COUNT."""
    parts: list[str] = []
    i = 0
    while i < len(layers):
        j = i
        while j < len(layers) and layers[j] == layers[i]:
            j += 1
        n, m = layers[i]
        parts.append(f"{n}x{m}" + (f"*{j - i}" if j - i > 1 else ""))
        i = j
    return ",".join(parts)


@dataclass
class BoundConfig:
    """Everything Table 1 needs. ``head`` is the trained head's parameter count; ``total`` is every
    parameter of the model including the head (fft only). ``sources`` says where each value came from."""

    layers: list[tuple[int, int]]
    rank: int
    n_train: int
    chain: int = 1
    q: float = 32.0
    sigma: float = 0.5
    head: int = 0
    total: int | None = None
    name: str = "config"
    loss: str = "0-1 loss"
    sources: dict[str, str] = field(default_factory=dict)

    def validate(self) -> BoundConfig:
        check_positive(self.n_train, "the number of training examples N", "--n")
        check_positive(self.sigma, "sigma (sub-Gaussian parameter of the loss)", "--sigma or --loss/--clip")
        check_positive(self.q, "q (bits per stored parameter)", "--q")
        if int(self.rank) < 1:
            raise GenboundError(f"rank must be at least 1, got {self.rank}; pass --rank")
        if int(self.chain) < 1:
            raise GenboundError(f"chain length must be at least 1, got {self.chain}; pass --chain")
        if self.head < 0:
            raise GenboundError(f"head parameter count must be >= 0, got {self.head}; pass --head")
        if not self.layers:
            raise GenboundError("no adapted layers given; pass --layers OUTxIN*COUNT")
        return self

    @property
    def layer_spec(self) -> str:
        return compress_layers(self.layers)


# Presets: shapes and counts that anyone can check against the public models.
PRESETS: dict[str, dict] = {
    # The worked example of docs/concepts.md ("Mutual-information bound and Table 1"):
    # RoBERTa-base, query and value of 12 layers, MRPC (3,668 training pairs).
    # total = RobertaForSequenceClassification (2 labels) = 124,647,170; its head (dense 768x768 + out_proj
    # 768x2) = 592,130.
    "roberta-base": {"layers": "768x768*24", "rank": 16, "chain": 1, "q": 32, "sigma": 0.5, "n": 3668,
                     "head": 592130, "total": 124647170},
    # genbound's default: all-MiniLM-L6-v2 query+value of 6 layers, BBC News 70% train split of the
    # deduplicated corpus (1,486; 1,558 before duplicates were removed), linear head 384x5 + 5. total = the
    # encoder without pooler (22,565,376) + head.
    "minilm-bbc": {"layers": "384x384*12", "rank": 16, "chain": 1, "q": 32, "sigma": 0.5, "n": 1486,
                   "head": 1925, "total": 22565376 + 1925},
}
PRESETS["roberta-base-like"] = PRESETS["roberta-base"]
PRESETS["minilm"] = PRESETS["minilm-bbc"]


def config_from_dict(d: dict, name: str = "config", source: str = "config", n: int | None = None) -> BoundConfig:
    """A :class:`BoundConfig` from a JSON-like dict (keys: layers, rank, chain, q, sigma | loss + clip,
    n, head, total, name), validated by :class:`genbound.core.validation.BoundsConfigModel` (types and ranges:
    ``"q": "abc"`` or ``"head": "1925x"`` is one clear error). ``n`` is used when the dict has none."""
    known = set(BoundsConfigModel.model_fields)
    unknown = set(d) - known
    if unknown:
        raise GenboundError(f"unknown configuration keys {sorted(unknown)}; use {sorted(known)}")
    if "layers" not in d:
        raise GenboundError("the configuration has no layer shapes; add \"layers\" or pass --layers")
    if "rank" not in d:
        raise GenboundError("the configuration has no rank; add \"rank\" or pass --rank")
    validate_bounds_config(d, source)
    name = str(d.get("name") or name)
    n = d.get("n", d.get("n_train", n))
    if n is None:
        raise GenboundError("the configuration has no number of training examples; add \"n\" or pass --n")

    loss = "0-1 loss"
    if d.get("sigma") is not None:
        sigma = float(d["sigma"])
    elif d.get("loss") is not None:
        sigma = sigma_for_loss(d["loss"], d.get("clip"))
        if d["loss"] in ("ce", "cross_entropy", "cross-entropy"):
            loss = f"cross-entropy clipped at {float(d['clip']):g}"
    else:
        sigma = 0.5
    cfg = BoundConfig(
        layers=parse_layers(d["layers"]), rank=int(d["rank"]), n_train=int(n), chain=int(d.get("chain", 1)),
        q=float(d.get("q", 32)), sigma=sigma, head=int(d.get("head", 0)),
        total=None if d.get("total") is None else int(d["total"]), name=name, loss=loss,
    )
    cfg.sources = {k: source for k in ("layers", "rank", "chain", "q", "sigma", "n_train", "head", "total")}
    return cfg.validate()


def load_config(spec: str, n: int | None = None) -> BoundConfig:
    """A preset name (``roberta-base``, ``minilm-bbc``) or a JSON file path. ``n`` (``--n``) stands in for a
    file that does not record the number of training examples."""
    if spec in PRESETS:
        return config_from_dict(PRESETS[spec], name=spec, source=f"preset {spec}", n=n)
    path = Path(spec)
    if not path.is_file():
        raise GenboundError(
            f"--config '{spec}' is neither a preset ({', '.join(sorted(PRESETS))}) nor a JSON file"
        )

    data = read_json(path, "configuration", 1 << 20, error=GenboundError)
    if not isinstance(data, dict):
        raise GenboundError(f"configuration {path} must hold a JSON object, not {type(data).__name__}")
    return config_from_dict(data, name=path.stem, source=str(path), n=n)


def override(cfg: BoundConfig, **values) -> BoundConfig:
    """``cfg`` with the given non-None values replaced (command-line flags win over the file)."""
    changes = {k: v for k, v in values.items() if v is not None}
    new = replace(cfg, **changes)
    new.sources = dict(cfg.sources)
    new.sources.update({k: "command line" for k in changes})
    return new.validate()


# --------------------------------------------------------------------------------------------------


@dataclass
class MIBound:
    """One row of Table 1: the Xu-Raginsky bound on the expected gap for one method."""

    method: str
    title: str
    chained: bool
    rank: int
    chain: int
    per_link: int  # data-dependent scalars of one link without the head (r S / k of Table 1; 0 for fft)
    head_params: int  # counted in D (0 when the head is excluded)
    data_dependent_params: int  # D
    q: float
    sigma: float
    n_train: int
    value: float | None  # None when it cannot be computed (fft without a total count)
    loss_range: float  # 2 sigma: the largest possible gap
    vacuous: bool
    symbolic: str  # the Table 1 entry as a formula (LaTeX)
    note: str = ""
    assumed: dict = field(default_factory=dict)
    measured: dict = field(default_factory=dict)


def symbolic_entry(method: Method, head: bool) -> str:
    """The Table 1 cell (LaTeX), with the head term when it is counted (the method's own entry)."""
    return method.symbolic(head)


def method_bound(method: Method | str, cfg: BoundConfig, include_head: bool = True) -> MIBound:
    """The Table 1 row of ``method`` for ``cfg``. Unchained methods use k = 1 whatever ``cfg.chain`` says."""
    method = get_method(method) if isinstance(method, str) else method
    cfg.validate()
    k = cfg.chain if method.chained else 1
    head = cfg.head if include_head else 0
    sigma = float(cfg.sigma)
    note = ""
    if not method.adapter:
        per_link = 0
        if cfg.total is None:
            d, value = 0, None
            note = "fft counts every parameter: pass --total-params (the model's parameter count)"
        else:
            # The catalogue's total already includes the head; with the head excluded, subtract it.
            d = method.data_dependent_params(cfg.layers, cfg.rank, total=cfg.total - (cfg.head - head))
            value = mi_gap_bound(d, cfg.q, sigma, cfg.n_train)
    else:
        method.check_rank(cfg.layers, cfg.rank, k)
        d = method.data_dependent_params(cfg.layers, cfg.rank, k, head=head)
        per_link = method.data_dependent_params(cfg.layers, cfg.rank, 1)
        value = mi_gap_bound(d, cfg.q, sigma, cfg.n_train)
    limit = 2.0 * sigma
    vacuous = value is None or value >= limit
    return MIBound(
        method=method.name, title=method.title, chained=method.chained, rank=cfg.rank, chain=k,
        per_link=per_link, head_params=head, data_dependent_params=d, q=cfg.q, sigma=sigma,
        n_train=cfg.n_train, value=value, loss_range=limit, vacuous=vacuous,
        symbolic=symbolic_entry(method, include_head and head > 0), note=note,
        assumed={"q": f"{cfg.q:g} bits per parameter ({cfg.sources.get('q', 'given')})",
                 "sigma": f"{sigma:g} ({cfg.loss}; {cfg.sources.get('sigma', 'given')})",
                 "I(S;W) <= H(W) <= q D ln 2": "every stored bit may depend on the sample",
                 "expected gap": "bounds E[gap], not a high-probability certificate"},
        measured={"N": f"{cfg.n_train} ({cfg.sources.get('n_train', 'given')})",
                  "layers": f"{cfg.layer_spec} ({cfg.sources.get('layers', 'given')})"},
    )


def table1(cfg: BoundConfig, methods: list[str] | None = None, include_head: bool = True) -> list[MIBound]:
    """Table 1 rows for ``methods`` (every registered method by default, in catalogue order)."""
    names = list(METHODS) if methods in (None, ["all"], "all") else list(methods)
    return [method_bound(get_method(m), cfg, include_head) for m in names]
