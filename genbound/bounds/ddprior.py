"""The compression certificate with a data-dependent coding centre (data-dependent priors: Dziugaite, Hsu,
Gharbieh, Arpino & Roy 2021, "On the role of data in PAC-Bayes bounds"; Perez-Ortiz, Rivasplata, Shawe-Taylor &
Szepesvari 2021, "Tighter risk certificates for neural networks"; the code itself: genbound.bounds.certificate).

1. A seeded split (genbound.data.prior_split; fraction and seed declared in genbound/assets/
   certificate-grid.json under "prior") cuts the N training examples into a prior part S_p and a bound part S_b,
   n = |S_b| = N - round(f N).
2. The checkpoint certified was trained in a subspace on S_p alone (``genbound train --subspace-dim d
   --prior-fraction f``; its recorded split digest must be that of S_p): its w is the centre c, a function of
   S_p and the recorded seed, never of S_b.
3. The message codes a difference: the model is theta_0 + P (c + delta_hat), and delta_hat is quantized and coded
   exactly as in the plain certificate (same codec, same declared grid). Candidates: delta_hat = 0 (one level at
   0: the centre itself, a few dozen bits), and, with ``posterior_steps`` > 0, the difference after training w
   from c on the whole training set (S_p and S_b) for that many Adam steps, quantized by k-means and
   quantization-aware training around c. Every candidate is a message of one prefix-free code fixed by S_p, so
   the Occam bound holds for all of them at once and the smallest may be kept.
4. R_hat is the 0-1 error of the decoded model on S_b only, and with probability >= 1 - delta over the draw of
   S_b (for every S_p)

       kl(R_hat || R) <= (K ln 2 + ln(2 sqrt(n) / delta)) / n,

   which then holds over the draw of the whole training set too. delta is the certificate's share: the total over
   the declared fractions (a union paid by delta, genbound.bounds.union) and any question the caller records.

Training the posterior on S_b is allowed (the bound is uniform over the messages); what must not see S_b is the
code: the centre, the grid, the split. The test suite checks that the centre does not change when S_b's
examples do, that n is |S_b|, and that the reported message decodes to a model with the reported error on S_b.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor

from ..checkpoints.restore import full_splits
from ..core.device import where
from ..core.errors import GenboundError
from ..data.evalset import EvalSet
from ..data.prior_split import PriorSplit, check_fraction, split_train
from ..models.losses import mean_loss
from .certificate import (
    DECLARED_GRID,
    DEFAULT_QAT_LR,
    DEFAULT_QAT_STEPS,
    DEFAULT_RATE,
    GRID_FILE,
    Certificate,
    Replay,
    entropy_constrained_kmeans,
    load_w,
    quantization_aware,
    run_config,
    statement,
)
from .codec import HyperGrid, QuantizedVector, decode, encode
from .common import check_probability
from .defaults import DEFAULT_POSTERIOR_LR, DEFAULT_POSTERIOR_STEPS, grid_section
from .occam import occam_bound, occam_kl_budget
from .smoothed import label_log_probs
from .union import Union, check_split


def declared_prior(path=GRID_FILE) -> dict[str, Any]:
    """The "prior" section of the declared grid file: ``fractions`` (tuple) and ``split_seed``."""
    data = grid_section("prior", path)
    if not isinstance(data, dict) or not data.get("fractions") or "split_seed" not in data:
        raise GenboundError(f"{path} declares no data-dependent prior (a 'prior' section with fractions and "
                            "split_seed)")
    return {"fractions": tuple(float(f) for f in data["fractions"]), "split_seed": int(data["split_seed"])}


DECLARED_PRIOR = declared_prior()


def fraction_union(fraction: float, total_delta: float, declared: dict[str, Any] = DECLARED_PRIOR) -> list[dict]:
    """The union over the declared prior fractions (paid by delta) as a certificate records it; none when one
    fraction is declared."""
    fr = declared["fractions"]
    if len(fr) == 1:
        return []
    u = Union("prior fraction", "prior_fraction", tuple(f"{f:g}" for f in fr), total_delta)
    return [u.record(f"{fraction:g}")]


def centre_digest(w: Tensor) -> str:
    """sha256 of the centre's float32 bytes (little-endian): what a certificate records of c."""
    return "sha256:" + hashlib.sha256(w.detach().to("cpu", torch.float32).contiguous().numpy()
                                      .astype("<f4").tobytes()).hexdigest()


def check_trained_on_prior(ckpt, splits, part: PriorSplit) -> None:
    """The checkpoint (the centre) must have been trained on the prior part alone: its recorded split digest is
    that of ``splits`` with the training split cut to S_p."""
    m = ckpt.meta
    want = replace(splits, train=splits.train.index(part.prior)).digest()
    if m.split_digest != want or int(m.n_train) != part.n_prior:
        raise GenboundError(f"{ckpt.path} was not trained on the prior part ({part.n_prior} of {len(splits.train)} "
                            f"training examples, fraction {part.fraction:g}, split seed {part.seed}); train the "
                            f"centre with `genbound train --subspace-dim d --prior-fraction {part.fraction:g}`")


def train_posterior(replay: Replay, centre: Tensor, train: EvalSet, steps: int, lr: float, batch_size: int,
                    seed: int, device: torch.device, progress: bool | None = None) -> Tensor:
    """w trained from the centre c on ``train`` for ``steps`` Adam steps (seeded batches, gradient norm clipped at
    1); returns the difference w - c."""
    from tqdm.auto import tqdm

    replay.set_w(centre)
    space, model = replay.space, replay.model
    opt = torch.optim.Adam([space.w], lr=lr)
    g = torch.Generator().manual_seed(int(seed))
    torch.manual_seed(int(seed))  # dropout
    model.train()
    for _ in tqdm(range(steps), desc="posterior from the centre", leave=False,
                  disable=None if progress is None else not progress):
        idx = torch.randperm(len(train), generator=g)[:batch_size]
        loss = mean_loss(model(**{k: v[idx].to(device) for k, v in train.features.items()}),
                         train.labels[idx].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([space.w], 1.0)
        opt.step()
    model.eval()
    return space.w.detach().cpu() - centre


def quantize_difference(replay: Replay, centre: Tensor, diff: Tensor, train: EvalSet, levels: int, rate: float,
                        qat_steps: int, qat_lr: float, batch_size: int, seed: int, device: torch.device,
                        progress: bool | None) -> QuantizedVector:
    """k-means (entropy-constrained at ``rate``) on the difference, then quantization-aware training of the
    model theta_0 + P (c + q(delta))."""
    centers, sym = entropy_constrained_kmeans(diff, int(levels), rate)
    if qat_steps > 0:
        replay.set_w(diff)
        penalty = rate * float(diff.double().pow(2).mean())
        centers, sym = quantization_aware(replay.model, replay.space, centers.float(), train, qat_steps, qat_lr,
                                          batch_size, seed, device, progress, penalty, offset=centre.to(device))
    return QuantizedVector.from_tensors(centers, sym)


def zero_difference(d: int) -> QuantizedVector:
    """The message "the centre itself": one level at 0.0."""
    return QuantizedVector.from_tensors(torch.zeros(1), torch.zeros(d, dtype=torch.long))


def decoded_model(ckpt, centre: Tensor, message, grid: HyperGrid, device) -> Replay:
    """The model a decoder rebuilds from the centre and the message alone: theta_0 + P (c + delta_hat)."""
    _, links = decode(message, grid)
    model = Replay(ckpt, device)
    model.set_w(centre + links[0].values())
    return model


def score(ckpt, centre: Tensor, q: QuantizedVector, grid: HyperGrid, config: dict, bound_set: EvalSet,
          test_set: EvalSet | None, n_delta: float, ebs: int, device) -> dict[str, Any]:
    """Encode one candidate difference, rebuild the model from the decoded message, and bound it on S_b."""
    message = encode([q], grid, config)
    _, back = decode(message, grid)
    if not torch.equal(back[0].values(), q.values()):
        raise GenboundError("internal error: the decoded message differs from what was encoded")
    model = decoded_model(ckpt, centre, message, grid, device)
    _, right = label_log_probs(model.model, bound_set, ebs, device)
    err = 1.0 - float(right.double().mean())
    test = None
    if test_set is not None:
        _, tr = label_log_probs(model.model, test_set, ebs, device)
        test = 1.0 - float(tr.double().mean())
    n = len(bound_set)
    return {"message": message, "bits": message.nbits, "train_error": err, "test_error": test,
            "bound": occam_bound(err, message.nbits, n, n_delta), "levels_used": int(q.centers.size)}


def certify_prior(ckpt, splits=None, fraction: float | None = None, levels: int = 3, delta: float = 0.05,
                  posterior_steps: int = DEFAULT_POSTERIOR_STEPS, posterior_lr: float = DEFAULT_POSTERIOR_LR,
                  qat_steps: int = DEFAULT_QAT_STEPS, qat_lr: float = DEFAULT_QAT_LR, rate: float = DEFAULT_RATE,
                  batch_size: int | None = None, seed: int = 0, device: torch.device | None = None,
                  grid: HyperGrid = DECLARED_GRID, progress: bool | None = None, measure_test: bool = True,
                  unions: list[dict[str, Any]] | None = None, prior: dict[str, Any] = DECLARED_PRIOR) -> Certificate:
    """The certificate of the module docstring for ``ckpt``, a subspace run trained on the prior part of
    ``splits`` (default: the checkpoint's own dataset, rebuilt). ``delta`` is the total of the caller's question
    (its share when ``unions`` are given, as genbound.bounds.certificate.certify takes it); the certificate holds
    at that delta divided by the number of declared fractions."""
    device = torch.device(where(device))
    if int(levels) < 2:
        raise GenboundError(f"a codebook needs at least 2 levels, got {levels}; pass --levels 2 or more")
    delta = check_probability(delta, "delta", "--delta")
    if posterior_steps < 0 or qat_steps < 0:
        raise GenboundError(f"--posterior-steps and --qat-steps must be 0 or more, got {posterior_steps}, {qat_steps}")
    for name, lr in (("--posterior-lr", posterior_lr), ("--qat-lr", qat_lr)):
        if not (math.isfinite(lr) and lr > 0):
            raise GenboundError(f"{name} must be a finite positive number, got {lr}")
    fraction = prior["fractions"][0] if fraction is None else float(fraction)
    check_fraction(fraction, prior["fractions"])
    ws = load_w(ckpt)
    if len(ws) > 1:
        raise GenboundError("a data-dependent centre is certified for single-link runs only; certify a method "
                            "without a chain")
    config = run_config(ckpt, levels, rate)
    grid.index(config)  # refuse an undeclared configuration before any work
    check_split({"delta": delta, "unions": unions or []})
    total = float((unions or [{"delta": delta}])[0]["delta"])
    fu = fraction_union(fraction, total, prior)
    n_delta = delta * math.prod(u["share"] for u in fu)
    splits = splits if splits is not None else full_splits(ckpt.meta, ckpt.load_backbone())
    part = split_train(len(splits.train), fraction, prior["split_seed"])
    check_trained_on_prior(ckpt, splits, part)
    centre = ws[0].detach().to(torch.float32).cpu()
    bound_set = splits.train.index(part.bound)
    bs = int(batch_size or ckpt.meta.hyperparameters.get("batch_size", 32))
    ebs = int(ckpt.meta.hyperparameters.get("eval_batch_size", 64))
    test_set = splits.test if measure_test else None
    cands = {"centre": zero_difference(centre.numel())}
    if posterior_steps > 0:
        replay = Replay(ckpt, device)
        diff = train_posterior(replay, centre.to(device), splits.train, posterior_steps, posterior_lr, bs, seed,
                               device, progress)
        cands["posterior"] = quantize_difference(replay, centre, diff, splits.train, levels, rate, qat_steps,
                                                 qat_lr, bs, seed, device, progress)
    scored = {k: score(ckpt, centre, q, grid, config, bound_set, test_set, n_delta, ebs, device)
              for k, q in cands.items()}
    best = min(scored, key=lambda k: scored[k]["bound"])
    record = {**part.record(), "centre_digest": centre_digest(centre), "centre_checkpoint": str(ckpt.path),
              "chosen": best, "error_counted_on": "the bound part only",
              "posterior": {"steps": int(posterior_steps), "lr": float(posterior_lr), "batch_size": bs,
                            "seed": int(seed)},
              "candidates": {k: {kk: v for kk, v in s.items() if kk != "message"} for k, s in scored.items()}}
    return _certificate(ckpt, scored[best], record, config, grid, levels, n_delta, list(unions or []) + fu,
                        {"steps": int(qat_steps), "lr": float(qat_lr), "rate": float(rate), "batch_size": bs,
                         "seed": int(seed)})


def _certificate(ckpt, s: dict[str, Any], record: dict[str, Any], config: dict, grid: HyperGrid, levels: int,
                 delta: float, unions: list[dict], qat: dict) -> Certificate:
    """The Certificate record of the chosen candidate ``s`` (its ``prior`` entry: ``record``)."""
    from .certificate import _file_digest

    m = ckpt.meta
    res = m.results
    n, K = record["n_bound"], s["bits"]
    chance = 1.0 - 1.0 / m.num_labels
    vacuous = s["bound"] >= chance
    cert = Certificate(
        method=m.method, d=config["subspace_dim"], dims=[config["subspace_dim"]], levels=int(levels),
        bound=s["bound"], bits=K, bits_breakdown=s["message"].bits.to_dict(), train_error=s["train_error"],
        test_error=s["test_error"], train_error_trained=1.0 - float(res.get("train_accuracy", math.nan)),
        test_error_trained=(1.0 - float(res["test_accuracy"])) if "test_accuracy" in res else None,
        n=n, delta=delta, kl_budget=occam_kl_budget(K, n, delta), chance_error=chance, vacuous=vacuous,
        verdict=(f"vacuous: {s['bound']:.4g} >= {chance:.4g}, the error of a uniform random guess" if vacuous
                 else f"non-vacuous: {s['bound']:.4g} < {chance:.4g} (chance)"),
        grid=grid.to_dict(), grid_choices=grid.size, config=config, qat=qat, message_hex=s["message"].data.hex(),
        assumed={"i.i.d.": "training examples drawn i.i.d. from the test distribution",
                 "centre": "a function of the prior part of the training set and the recorded seed only",
                 "grid": f"{', '.join(k for k, _ in grid.values)} coded in the message from the declared grid "
                         f"(version {grid.version}); the prior fraction and split seed declared in it"},
        checkpoint=str(ckpt.path), checkpoint_digest=_file_digest(ckpt.path / "genbound.json"),
        grid_version=grid.version, grid_digest=grid.digest, unions=unions,
        source={"checkpoint": str(ckpt.path), "backbone": m.backbone, "dataset": m.dataset,
                "fingerprint": m.fingerprint},
        prior=record,
    )
    cert.statement = statement(cert, m.dataset).replace(
        "training ", "bound-part training ", 1) + (f" The other {record['n_prior']:,} training examples chose the "
                                                    "coding centre and are not counted.")
    cert.assumptions = [
        "The training examples were drawn i.i.d. from the distribution the test error is measured on, and the "
        "test examples were never used in training or certification.",
        f"The training set was split by a seeded permutation (seed {record['seed']}, fraction {record['fraction']:g} "
        f"to the prior part, both declared in the grid file {grid.digest}) independently of the examples' contents.",
        "The coding centre (the checkpoint's w) was trained on the prior part alone; the error is counted on the "
        f"other {n} examples only.",
        "The decoded model is the one certified: its error is measured after decoding the message.",
    ]
    return cert


def recompute_prior_bound(cert: dict[str, Any], ckpt, splits, grid: HyperGrid = DECLARED_GRID,
                          device=None) -> tuple[float, float]:
    """Independently of :func:`certify_prior`: the centre read from the checkpoint (its digest checked against
    the record), the recorded message decoded, the model rebuilt, its error counted on the bound part cut from the
    record's fraction and seed; returns (that error, kl^-1 of it at the record's bits, n and delta)."""
    from .common import kl_inverse_upper

    p = cert["prior"]
    centre = load_w(ckpt)[0].to(torch.float32)
    if centre_digest(centre) != p["centre_digest"]:
        raise GenboundError("the checkpoint's centre is not the one the certificate recorded")
    part = split_train(len(splits.train), p["fraction"], p["seed"])
    if part.digest() != p["prior_positions_digest"] or part.n_bound != cert["n"]:
        raise GenboundError("the recorded split does not match the one rebuilt from its fraction and seed")
    model = decoded_model(ckpt, centre, (bytes.fromhex(cert["message_hex"]), cert["bits"]), grid, device)
    _, right = label_log_probs(model.model, splits.train.index(part.bound), 64, torch.device(where(device)))
    err = 1.0 - float(right.double().mean())
    n, k, d = cert["n"], cert["bits"], cert["delta"]
    return err, kl_inverse_upper(err, (k * math.log(2.0) + math.log(2.0 * math.sqrt(n) / d)) / n)
