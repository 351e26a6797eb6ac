"""The compression certificate of a subspace-trained checkpoint (Lotfi et al. 2022; SubLoRA, Lotfi et al. 2024;
docs/concepts.md, section "Certificates").

1. The run trained w in theta = theta_0 + P w (genbound.methods.subspace; ``genbound train --subspace-dim d``).
2. w is quantized to at most L levels: 1-D k-means (genbound.bounds.occam.quantize), then quantization-aware
   fine-tuning on the training set: the forward pass uses q(w) = c[argmin_l |w - c_l|], the backward pass
   sends the gradient straight through to w (so assignments can change) and, through the indexing, to the
   centroids c (each gets the sum of its members' gradients); Adam on (w, c). A chain's earlier links are
   quantized by k-means alone (they are baked into the base weights before the last link starts); the last
   link is fine-tuned on top of their decoded values.
3. The quantized links are written as a prefix-free message (genbound.bounds.codec) whose length K (bits)
   counts the grid index, codebooks, counts and the arithmetic-coded symbols. The message is decoded again
   and the model rebuilt from what was decoded.
4. R_hat is the 0-1 error of that decoded model on the full training split (N examples), and with
   probability >= 1 - delta over the draw of the training set

       kl(R_hat || R) <= (K ln 2 + ln(2 sqrt(N) / delta)) / N,

   R <= kl^{-1}(R_hat, budget) (genbound.bounds.occam.occam_bound). The test error of the decoded model is
   measured on the test split for comparison; it plays no part in the bound.
5. From the same message, a second certificate on the cross-entropy of the decoded model's prediction
   smoothed with the uniform one, (1 - alpha) p + alpha / V (SubLoRA; genbound.bounds.smoothed): the loss is
   bounded by ln(V / alpha), so Hoeffding / kl bounds apply, with a union bound over a declared alpha grid.

Assumptions (listed in the text output and the JSON, :func:`assumptions`): the training examples are i.i.d.
from the test distribution; every setting the decoder needs is either coded in the message from the declared
grid (``DECLARED_GRID``, the versioned file genbound/assets/certificate-grid.json, whose sha256 every
certificate records: method, chain length, d, L, learning rate, rate, max length, rank, alpha, seed, targets,
excluded layers, PaCA's column choice)
or fixed before the data were seen (backbone, dataset and split, steps, batch size, QAT steps and learning
rate); a comparison over runs outside the message (budgets, presets) is paid by splitting delta
(genbound.bounds.union, recorded under ``unions``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..core.device import where
from ..core.errors import GenboundError
from ..core.progress import Estimate, FirstCall, say
from ..core.readers import read_safetensors
from ..data.evalset import EvalSet
from ..diagnostics.evaluate import skipped_final_eval, source_results
from ..methods.adapters import attach_adapters, trained_tensors
from ..methods.subspace import SUBSPACE_FILE, attach_subspace, detach_subspace, link_dims, set_w
from ..models.losses import mean_loss
from ..models.precision import cast_base, dtype_name
from .codec import HyperGrid, QuantizedVector, decode, encode
from .common import check_probability, kl_inverse_upper
from .defaults import DEFAULT_LEVELS, DEFAULT_QAT_LR, DEFAULT_QAT_STEPS, DEFAULT_RATE, GRID_FILE
from .occam import occam_bound, occam_kl_budget, quantize
from .smoothed import ALPHA_GRID, label_log_probs, mean_smoothed, smoothed_bound
from .subspace_pacbayes import subspace_pac_bayes
from .union import check_split

# Declared before any certified run, in a versioned file that ships with the package; changing it changes what
# every certificate pays and what a message's configuration code means (its digest is in every certificate).
# The method axis is the eleven methods of the paper, as they stood when the grid was fixed; methods added to
# the catalogue since are outside it (a new grid would have to be declared first).
DECLARED_GRID = HyperGrid.from_file(GRID_FILE)
PAPER_METHODS = tuple(dict(DECLARED_GRID.values)["method"])


@dataclass
class Certificate:
    method: str
    d: int
    dims: list[int]
    levels: int
    bound: float  # certified test error (0-1) of the decoded model
    bits: int  # K: the length of the prefix-free message
    bits_breakdown: dict[str, float]
    train_error: float  # decoded model, full training split
    test_error: float | None  # decoded model, test split (measured)
    train_error_trained: float  # the checkpoint's unquantized model
    test_error_trained: float | None
    n: int
    delta: float
    kl_budget: float
    chance_error: float
    vacuous: bool
    verdict: str
    grid: dict[str, list] = field(default_factory=dict)
    grid_choices: int = 0
    config: dict[str, Any] = field(default_factory=dict)
    qat: dict[str, Any] = field(default_factory=dict)
    message_hex: str = ""
    assumed: dict[str, str] = field(default_factory=dict)
    pac_bayes: dict[str, Any] | None = None
    smoothed: dict[str, Any] | None = None  # the prediction-smoothed cross-entropy bound (bounds.smoothed)
    checkpoint: str = ""  # the certified checkpoint's path
    checkpoint_digest: str = ""  # sha256 of its genbound.json
    grid_version: int | None = None
    grid_digest: str | None = None  # sha256 of the declared grid file
    unions: list[dict[str, Any]] = field(default_factory=list)  # genbound.bounds.union records
    statement: str = ""  # the certificate in one plain sentence
    assumptions: list[str] = field(default_factory=list)
    source: dict[str, Any] = field(default_factory=dict)  # the checkpoint certified: path, backbone, dataset
    prior: dict[str, Any] | None = None  # a data-dependent centre's split and centre (genbound.bounds.ddprior)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


MAX_SUBSPACE_DIM = 1 << 24  # the declared grid stops at 20,000; beyond this P alone would not fit in memory


def subspace_dim(ckpt) -> int:
    """The recorded ``subspace_dim`` of a checkpoint's hyperparameters, as a positive integer (a string, list,
    dict, float or bool there is an edited or corrupt checkpoint, refused in one line)."""
    d = ckpt.meta.hyperparameters.get("subspace_dim")
    if isinstance(d, bool) or not isinstance(d, int) or not 1 <= d <= MAX_SUBSPACE_DIM:
        shown = repr(d) if len(repr(d)) <= 40 else repr(d)[:37] + "..."
        raise GenboundError(f"{ckpt.path}: hyperparameter subspace_dim is {shown}, not an integer "
                            f"1..{MAX_SUBSPACE_DIM}; the checkpoint is corrupt or edited")
    return d


def recorded_lr(ckpt) -> float:
    """The recorded learning rate (0 where absent), a finite number."""
    lr = ckpt.meta.hyperparameters.get("lr", 0.0)
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr):
        raise GenboundError(f"{ckpt.path}: hyperparameter lr is {str(repr(lr))[:40]}, not a finite number; the "
                            "checkpoint is corrupt or edited")
    return float(lr)


def load_w(ckpt) -> list[Tensor]:
    """w of every link, from the checkpoint's subspace file (refused when the run was not in a subspace)."""
    d = ckpt.meta.hyperparameters.get("subspace_dim")
    if not d:
        raise GenboundError(f"{ckpt.path} was not trained in a subspace; retrain it with `genbound train "
                            "--subspace-dim d` to certify it")
    dims = link_dims(subspace_dim(ckpt), ckpt.meta.chain if ckpt.method.chained else 1)
    expected = {f"w.link{j}": ((n,), torch.float32) for j, n in enumerate(dims)}
    tensors = read_safetensors(ckpt.path / SUBSPACE_FILE, expected)
    return [tensors[f"w.link{j}"] for j in range(len(dims))]


class Replay:
    """The model of a subspace checkpoint rebuilt link by link from the seed and given w's (what a decoder
    does): pretrained backbone, seeded head and adapters, link j's subspace with w_j, merged, next link."""

    def __init__(self, ckpt, device: torch.device | None = None, base_dtype: torch.dtype | str | None = None):
        device = where(device)  # a checkpoint is read onto the CPU

        self.ckpt = ckpt
        m = ckpt.meta
        _, model = ckpt._pristine("cpu")
        self.adapters = attach_adapters(model, ckpt.method, [li.name for li in m.layers], m.rank, m.alpha, m.seed,
                                        m.paca_columns)
        self.dims = link_dims(subspace_dim(ckpt), m.chain if ckpt.method.chained else 1)
        self.space = attach_subspace(model, self.dims[0], m.seed, 0)
        self.model = cast_base(model.to(device), base_dtype)  # the frozen base's precision (models.precision)
        self.device = torch.device(device)
        self.link = 0

    def set_w(self, w: Tensor) -> None:
        set_w(self.space, w.to(self.device))

    def next_link(self) -> None:
        detach_subspace(self.model)
        for ad in self.adapters.values():
            ad.next_link()
        self.link += 1
        self.space = attach_subspace(self.model, self.dims[self.link], self.ckpt.meta.seed, self.link)

    def tensors(self) -> dict[str, Tensor]:
        """The checkpoint-format trained tensors of the current state (for checks against the checkpoint)."""
        with torch.no_grad():
            if not self.ckpt.method.adapter:
                return {f"model.{k}": v.detach().clone() for k, v in _plain_params(self.model).items()}
            return trained_tensors(self.model, self.adapters, False)


def _plain_params(model: nn.Module) -> dict[str, Tensor]:
    """name -> value of every parameter, parametrized ones by their computed value under their plain name."""
    out = {}
    for name, _ in model.named_parameters():
        if ".parametrizations." in name:
            if not name.endswith(".original"):
                continue
            owner_name, _, rest = name.partition(".parametrizations.")
            attr = rest.rsplit(".", 1)[0]
            owner = model.get_submodule(owner_name)
            out[f"{owner_name}.{attr}"] = getattr(owner, attr)
        elif name.startswith("subspace."):
            continue
        else:
            out[name] = model.get_parameter(name)
    return out


def assign(w: Tensor, c: Tensor, penalty: float) -> Tensor:
    """Entropy-constrained assignment (Chou, Lookabaugh & Gray 1989): symbol of each w_i is
    argmin_l (w_i - c_l)^2 + penalty * (-log2 p_l), p_l the current share of level l; penalty 0 is the nearest
    centroid. The rate term pulls values into the frequent levels, so the code gets shorter."""
    cost = (w[:, None] - c[None, :]).pow(2)
    if penalty > 0:
        sym = torch.argmin(cost, dim=1)
        for _ in range(3):  # the shares depend on the assignment: a few fixed-point rounds
            p = torch.bincount(sym, minlength=c.numel()).to(w.dtype).clamp_min(0.5) / w.numel()
            sym = torch.argmin(cost - penalty * torch.log2(p)[None, :], dim=1)
        return sym
    return torch.argmin(cost, dim=1)


def entropy_constrained_kmeans(w: Tensor, levels: int, rate: float, iters: int = 30) -> tuple[Tensor, Tensor]:
    """k-means (genbound.bounds.occam.quantize), then Lloyd rounds with the entropy-constrained assignment,
    penalty = rate * mean(w^2); returns (centers, symbols)."""
    centers, sym = quantize(w.to(torch.float64), int(levels), "kmeans")
    if rate <= 0:
        return centers, sym
    x = w.to(torch.float64)
    penalty = rate * float(x.pow(2).mean())
    for _ in range(iters):
        sym = assign(x, centers, penalty)
        cnt = torch.bincount(sym, minlength=centers.numel()).to(x.dtype)
        sums = torch.zeros_like(centers).index_add_(0, sym, x)
        centers = torch.where(cnt > 0, sums / cnt.clamp_min(1), centers)
    return centers, assign(x, centers, penalty)


def quantization_aware(model: nn.Module, space, centers: Tensor, train: EvalSet, steps: int, lr: float,
                       batch_size: int, seed: int, device: torch.device, progress: bool | None = None,
                       penalty: float = 0.0, offset: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Fine-tune w and the centroids c through q(w) = c[assign(w, c)] (straight-through to w, so
    assignments can change; the indexing sends each centroid its members' gradients); returns (centers,
    symbols) of the final assignment. With ``offset`` o the model sees o + q(w) (w quantized as a difference from
    a data-dependent centre o, genbound.bounds.ddprior)."""
    from tqdm.auto import tqdm

    c = nn.Parameter(centers.to(device, torch.float32).clone())
    opt = torch.optim.Adam([space.w, c], lr=lr)
    g = torch.Generator().manual_seed(int(seed))
    torch.manual_seed(int(seed))  # dropout
    was = model.training
    model.train()
    n = len(train)

    def step() -> None:
        idx = torch.randperm(n, generator=g)[:batch_size]
        feats = {k: v[idx].to(device) for k, v in train.features.items()}
        labels = train.labels[idx].to(device)
        sym = assign(space.w.detach(), c.detach(), penalty)
        space.override = c[sym] + (space.w - space.w.detach()) + (0 if offset is None else offset)
        loss = mean_loss(model(**feats), labels)  # per example, or per target token (causal LM)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    # The first two steps are timed (part of the training) and give the estimate printed before the rest.
    timed = FirstCall(step, lambda wall, cpu: say(progress, Estimate(
        "certify: quantization-aware training", "training step", steps, wall, cpu,
        note=f"forward and backward on {batch_size} examples").line()))
    try:
        for _ in tqdm(range(steps), desc="quantization-aware training", leave=False,
                      disable=None if progress is None else not progress):
            timed()
    finally:
        space.override = None
        model.train(was)
    with torch.no_grad():
        sym = assign(space.w.detach(), c.detach(), penalty)
    return c.detach(), sym


def certify(ckpt, levels: int = DEFAULT_LEVELS, delta: float = 0.05, qat_steps: int = DEFAULT_QAT_STEPS,
            qat_lr: float = DEFAULT_QAT_LR, rate: float = DEFAULT_RATE, batch_size: int | None = None, seed: int = 0,
            device: torch.device | None = None, splits=None, grid: HyperGrid = DECLARED_GRID,
            progress: bool | None = None, measure_test: bool = True, pac_bayes: bool = False,
            pac_bayes_options: dict[str, Any] | None = None, alpha_grid=ALPHA_GRID,
            unions: list[dict[str, Any]] | None = None, base_dtype: torch.dtype | str | None = None) -> Certificate:
    """The certificate of the module docstring for a loaded subspace checkpoint ``ckpt``, with the
    prediction-smoothed cross-entropy bound (genbound.bounds.smoothed) from the same message as ``smoothed``.
    ``unions`` (genbound.bounds.union records) name the comparisons the certificate is part of; ``delta`` must
    then be the share their split gives. ``base_dtype``: the frozen base's precision of the replayed model
    (genbound.models.precision), part of the hypothesis and recorded in ``source``."""
    device = where(device)  # a checkpoint is read onto the CPU
    delta = _check_options(levels, delta, qat_steps, qat_lr)
    ws = load_w(ckpt)
    m = ckpt.meta
    if (m.hyperparameters or {}).get("task") == "causal-lm":
        raise GenboundError(f"{ckpt.path}: a causal language model's subspace run is not certified: the certificate "
                            "bounds the 0-1 error of one label per example, and a causal LM predicts every token; "
                            "certify a classifier's subspace run")
    config = run_config(ckpt, levels, rate)
    grid.index(config)  # refuse an undeclared configuration before any work
    check_split({"delta": delta, "unions": unions or []})
    device = torch.device(device)
    splits = splits if splits is not None else ckpt.load_splits()
    train_set = splits.train
    bs = int(batch_size or m.hyperparameters.get("batch_size", 32))
    ebs = int(m.hyperparameters.get("eval_batch_size", 64))
    pb = None
    if pac_bayes:
        if len(ws) > 1:
            raise GenboundError("the PAC-Bayes certificate handles single-link runs only; drop --pac-bayes for a "
                                "chain")
        start = Replay(ckpt, device, base_dtype)
        start.set_w(ws[0])
        pb = subspace_pac_bayes(start.model, start.space, train_set, delta=delta, batch_size=bs, seed=seed,
                                device=device, progress=progress, **(pac_bayes_options or {}))
    replay = Replay(ckpt, device, base_dtype)
    links = _quantize_links(replay, ws, int(levels), rate, qat_steps, qat_lr, train_set, bs, seed, device, progress)
    message = encode(links, grid, config)
    model = _decoded_model(ckpt, device, message, grid, config, links, base_dtype)
    # One pass per split gives both the 0-1 error and ln p(y | x) for the smoothed cross-entropy bound.
    train_lp, train_right = label_log_probs(model.model, train_set, ebs, device)
    train_error = 1.0 - float(train_right.double().mean())
    test_lp, test_error = None, None
    if measure_test:
        test_lp, test_right = label_log_probs(model.model, splits.test, ebs, device)
        test_error = 1.0 - float(test_right.double().mean())
    n = len(train_set)
    K = message.nbits
    bound = occam_bound(train_error, K, n, delta)
    smoothed = smoothed_bound(mean_smoothed(train_lp, m.num_labels, alpha_grid), m.num_labels, K, n, delta,
                              mean_smoothed(test_lp, m.num_labels, alpha_grid) if test_lp is not None else None)
    smoothed["train_cross_entropy"] = float(-train_lp.mean())
    smoothed["test_cross_entropy"] = float(-test_lp.mean()) if test_lp is not None else None
    chance = 1.0 - 1.0 / m.num_labels
    vacuous = bound >= chance
    verdict = (f"vacuous: {bound:.4g} >= {chance:.4g}, the error of a uniform random guess" if vacuous
               else f"non-vacuous: {bound:.4g} < {chance:.4g} (chance)")
    # The unquantized model's errors, for comparison: recorded at training, or measured now for a run trained
    # with --no-final-eval (never invented).
    res = source_results(ckpt, device) if skipped_final_eval(m) else m.results
    cert = Certificate(
        method=m.method, d=config["subspace_dim"], dims=list(replay.dims), levels=int(levels), bound=bound, bits=K,
        bits_breakdown=message.bits.to_dict(), train_error=train_error, test_error=test_error,
        train_error_trained=1.0 - float(res.get("train_accuracy", math.nan)),
        test_error_trained=(1.0 - float(res["test_accuracy"])) if "test_accuracy" in res else None,
        n=n, delta=delta, kl_budget=occam_kl_budget(K, n, delta), chance_error=chance, vacuous=vacuous,
        verdict=verdict, grid=grid.to_dict(), grid_choices=grid.size, config=config,
        qat={"steps": int(qat_steps), "lr": float(qat_lr), "rate": float(rate), "batch_size": bs, "seed": int(seed)},
        message_hex=message.data.hex(), assumed=_assumed(grid), pac_bayes=pb, smoothed=smoothed,
        checkpoint=str(ckpt.path), checkpoint_digest=_file_digest(Path(ckpt.path) / "genbound.json"),
        grid_version=grid.version, grid_digest=grid.digest, unions=list(unions or []),
        source={"checkpoint": str(getattr(ckpt, "path", "")), "backbone": m.backbone, "dataset": m.dataset,
                "fingerprint": m.fingerprint, "base_dtype": dtype_name(base_dtype)},
    )
    cert.statement = statement(cert, m.dataset)
    cert.assumptions = assumptions(cert, grid)
    return cert


def _check_options(levels: int, delta: float, qat_steps: int, qat_lr: float) -> float:
    """The codebook and fine-tuning options refused before any work; returns the checked delta."""
    if int(levels) < 2:
        raise GenboundError(f"a codebook needs at least 2 levels, got {levels}; pass --levels 2 or more")
    delta = check_probability(delta, "delta", "--delta")
    if qat_steps < 0:
        raise GenboundError(f"--qat-steps must be 0 or more, got {qat_steps}")
    if not (math.isfinite(qat_lr) and qat_lr > 0):  # a nan rate made the encoded message differ from the decoded
        raise GenboundError(f"--qat-lr must be a finite positive number, got {qat_lr}")
    return delta


def _quantize_links(replay: Replay, ws: list[Tensor], levels: int, rate: float, qat_steps: int, qat_lr: float,
                    train_set, bs: int, seed: int, device: torch.device, progress) -> list[QuantizedVector]:
    """Each link's w quantized by entropy-constrained k-means (the last link then fine-tuned on its codebook
    when ``qat_steps`` > 0), replayed link by link so that every link starts where the quantized one ended."""
    replay.set_w(ws[0])
    links: list[QuantizedVector] = []
    for j, w in enumerate(ws):
        if j:
            replay.next_link()
            replay.set_w(w)
        centers, sym = entropy_constrained_kmeans(w, levels, rate)
        if j == len(ws) - 1 and qat_steps > 0:
            penalty = rate * float(w.double().pow(2).mean())
            centers, sym = quantization_aware(replay.model, replay.space, centers.float(), train_set, qat_steps,
                                              qat_lr, bs, seed, device, progress, penalty)
        q = QuantizedVector.from_tensors(centers, sym)
        links.append(q)
        replay.set_w(q.values())
    return links


def _decoded_model(ckpt, device: torch.device, message, grid: HyperGrid, config: dict[str, Any],
                   links: list[QuantizedVector], base_dtype: torch.dtype | str | None = None) -> Replay:
    """The model rebuilt from the decoded message, never from the encoder's copy (its frozen base in
    ``base_dtype``, as the encoder's); a message that does not decode to what was encoded is an internal error."""
    cfg, decoded = decode(message, grid)
    if cfg != grid.config(grid.index(config)) or any(
            not torch.equal(a.values(), b.values()) for a, b in zip(decoded, links)):
        raise GenboundError("internal error: the decoded message differs from what was encoded")
    model = Replay(ckpt, device, base_dtype)
    model.set_w(decoded[0].values())
    for q in decoded[1:]:
        model.next_link()
        model.set_w(q.values())
    return model


def _assumed(grid: HyperGrid) -> dict[str, str]:
    """What the certificate assumes, in words."""
    return {"i.i.d.": "training examples drawn i.i.d. from the test distribution",
            "grid": f"{', '.join(k for k, _ in grid.values)} coded in the message from the declared grid "
                    f"(version {grid.version}); every other option fixed before training",
            "theta_0": "data-independent: pretrained weights, adapters and head drawn from the recorded seed"}


def run_config(ckpt, levels: int, rate: float) -> dict[str, Any]:
    """Every setting the decoder of the message needs, as the checkpoint records it (the grid's axes)."""
    m = ckpt.meta
    hp = m.hyperparameters
    return {"method": m.method, "chain": m.chain, "subspace_dim": subspace_dim(ckpt), "levels": int(levels),
            "lr": recorded_lr(ckpt), "rate": float(rate), "max_length": m.max_length, "rank": int(m.rank),
            "alpha": float(m.alpha), "seed": int(m.seed), "targets": hp.get("targets"), "exclude": hp.get("exclude"),
            "paca_columns": m.paca_columns}


def _file_digest(path: Path) -> str:
    import hashlib

    try:
        return "sha256:" + hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return ""


# What a training example is called in the plain sentence, per registered dataset.
UNITS = {"bbc": "articles", "tweets": "tweets", "digits": "images"}


def statement(cert: Certificate, dataset: str | None = None) -> str:
    """The certificate in one plain sentence: the probability, over what draw, of which claim about which model."""
    unit = UNITS.get(str(dataset), "examples")
    pct = f"{math.floor(100 * (1 - cert.delta) * 100 + 1e-9) / 100:g}%"  # rounded down, never above 1 - delta
    # rounded up: a sentence must never claim less error than the certificate does
    s = (f"With probability at least {pct} over the draw of the {cert.n:,} training {unit}, the decoded model's "
         f"test error is at most {math.ceil(cert.bound * 100 - 1e-9) / 100:.2f}")
    s += (" (no better than guessing, which errs " f"{cert.chance_error:.2f} of the time)." if cert.vacuous
          else f" (guessing errs {cert.chance_error:.2f} of the time).")
    by_delta = [u for u in cert.unions if u.get("paid_by") == "delta"]
    if by_delta:
        s += " " + " ".join(f"It is one of {len(u['members'])} {u['axis']}s compared ({', '.join(u['members'])}), "
                            f"each certified at {100 * u['delta'] * u['share']:.4g}% of the {100 * u['delta']:.4g}% "
                            "risk, so the best of them holds at the full level too." for u in by_delta)
    return s


def assumptions(cert: Certificate, grid: HyperGrid) -> list[str]:
    """What the certificate assumes, in words (listed in the text output and the JSON)."""
    out = [
        "The training examples were drawn i.i.d. from the distribution the test error is measured on, and the "
        "test examples were never used in training or certification.",
        "The starting point theta_0 (pretrained weights, seeded adapters, head and projection) was fixed before "
        "the data were seen.",
        f"Every setting the decoder needs ({', '.join(k for k, _ in grid.values)}) is coded in the message from "
        f"the grid declared in advance (version {grid.version}, {grid.digest}); the training budget (steps, batch "
        "size), the backbone, the dataset and its split, and the quantization-aware training settings were fixed "
        "in advance.",
        "The decoded model is the one certified: its training error is measured after decoding the message, not "
        "on the trained checkpoint.",
    ]
    for u in cert.unions:
        if u.get("paid_by") == "delta":
            out.append(f"The comparison over {u['axis']}s {', '.join(u['members'])} ({u['name']}) was declared in "
                       f"advance and paid by splitting delta = {u['delta']:g} equally (this one: {cert.delta:g}).")
        else:
            out.append(f"The comparison over {u['axis']} ({u['name']}: {', '.join(map(str, u['members']))}) is "
                       "paid by the message's grid code.")
    return out


def recompute_bound(cert: dict[str, Any]) -> float:
    """The bound from a certificate's reported parts alone: kl^{-1}(train_error, (bits ln 2 +
    ln(2 sqrt(n) / delta)) / n), written out here rather than through occam_bound (a check on it)."""
    n, k, delta = cert["n"], cert["bits"], cert["delta"]
    budget = (k * math.log(2.0) + math.log(2.0 * math.sqrt(n) / delta)) / n
    return kl_inverse_upper(cert["train_error"], budget)
