"""Compression certificates for every method: train each in a random subspace, certify, tabulate.

    python -m analysis.certificates --preset minilm --out runs/certificates --doc docs/results/certificates.md
    python -m analysis.certificates --preset mlp --out runs/cert-mlp            (seconds per method)

Every method is trained with ``genbound train --subspace-dim d`` on the preset's configuration (the sweep's
machinery: analysis.sweep.plan / train_runs, so runs are resumable and several processes can share one
``--out``, each claiming runs by lock), then certified (genbound.bounds.certificate: quantize, QAT, arithmetic
code, Occam bound on the decoded model), cached in ``derived/<name>.cert.json``. The report lists per method
d, bits K, decoded train error, certified test error and measured test error, the bits breakdown, Kendall's
tau between certificates and measured test errors (analysis.tables.kendall), and the figure certified
against measured error (genbound.report.figures.certified_vs_measured).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

from genbound.bounds.certificate import DECLARED_GRID, PAPER_METHODS, certify
from genbound.bounds.ddprior import certify_prior
from genbound.bounds.occam import occam_bound
from genbound.bounds.union import Union, best_certificate, member_delta, records
from genbound.checkpoints.checkpoint import load_checkpoint
from genbound.core.atomic import write_json, write_text
from genbound.core.errors import GenboundError
from genbound.methods.catalogue import METHODS
from genbound.report.figures import certified_vs_measured, save

from . import locks
from .presets import Preset
from .runs import _SplitCache
from .sweep import _meta_digest, plan, read_cache, train_runs
from .tables import kendall

# Fixed before any certified run (and inside genbound.bounds.certificate.DECLARED_GRID): subspace dimension,
# learning rate of w (the same for fft), the chain length, the levels and QAT budget.
PRESETS: dict[str, tuple[Preset, dict[str, Any]]] = {
    "minilm": (Preset("cert-minilm", "all-MiniLM-L6-v2 on BBC News, r = 8 on query and value, 32 tokens, 40 steps "
                      "of 32, every method in a 250-dimensional subspace (chains: 3 links)", backbone="minilm",
                      dataset="bbc", rank=8, alpha=16.0, chain=3, lr=0.3, lr_full=0.3, steps=40, batch_size=32,
                      max_length=32, extra={"subspace_dim": 250}),
               {"levels": 3, "qat_steps": 15, "qat_lr": 0.01, "rate": 0.0, "delta": 0.05}),
    # The same corpus with a longer budget (whole leads of the articles, 5x the steps), to see how far the
    # decoded training error, not the code length, was what limited the 32-token certificates. The two BBC
    # budgets are one question (QUESTIONS): each is certified at delta / 2.
    "minilm-long": (Preset("cert-minilm-long", "all-MiniLM-L6-v2 on BBC News, r = 8 on query and value, 128 tokens, "
                           "200 steps of 32, every method in a 250-dimensional subspace (chains: 3 links); the second "
                           "budget tried on BBC News",
                           backbone="minilm", dataset="bbc", rank=8, alpha=16.0, chain=3, lr=0.3, lr_full=0.3,
                           steps=200, batch_size=32, max_length=128, extra={"subspace_dim": 250}),
                    {"levels": 3, "qat_steps": 30, "qat_lr": 0.01, "rate": 0.0, "delta": 0.05}),
    # The larger-N corpus: 26,030 training tweets, so the same K costs 17x fewer nats per example than on BBC.
    "minilm-tweets": (Preset("cert-minilm-tweets", "all-MiniLM-L6-v2 on tweet sentiment (3 classes, N = 26,030), "
                             "r = 8 on query and value, 32 tokens, 40 steps of 32, every method in a 250-dimensional "
                             "subspace (chains: 3 links)", backbone="minilm", dataset="tweets", rank=8, alpha=16.0,
                             chain=3, lr=0.3, lr_full=0.3, steps=40, batch_size=32, max_length=32,
                             extra={"subspace_dim": 250}),
                      {"levels": 3, "qat_steps": 15, "qat_lr": 0.01, "rate": 0.0, "delta": 0.05}),
    # A data-dependent coding centre (genbound.bounds.ddprior): the run is trained on the prior half of the
    # training split (the fraction and split seed declared in the grid file), the message codes the difference
    # from it, and the error is counted on the other half only. A third BBC News budget of the question below,
    # declared before its run; posterior_steps 0: the centre alone is coded (on digits a coded posterior
    # difference cost ~480 bits, far more than it saved).
    "minilm-ddprior": (Preset("cert-minilm-ddprior", "all-MiniLM-L6-v2 on BBC News, r = 8 on query and value, 128 "
                              "tokens, 60 steps of 32 on the prior half of the training split (seeded, declared in the "
                              "grid file), lora in a 250-dimensional subspace; the third budget tried on BBC News",
                              backbone="minilm", dataset="bbc", rank=8, alpha=16.0, chain=3, lr=0.3, lr_full=0.3,
                              steps=60, batch_size=32, max_length=128,
                              extra={"subspace_dim": 250, "prior_fraction": 0.5, "prior_seed": 0}),
                       {"levels": 3, "qat_steps": 15, "qat_lr": 0.01, "rate": 0.0, "delta": 0.05,
                        "prior_fraction": 0.5, "posterior_steps": 0, "posterior_lr": 0.01}),
    "mlp": (Preset("cert-mlp", "the pretrained mlp on digits 5-9, r = 4, 150 steps, every method in a "
                   "250-dimensional subspace (chains: 3 links)", backbone="mlp", dataset="digits", rank=4, alpha=8.0,
                   chain=3, lr=0.3, lr_full=0.3, steps=150, batch_size=32, extra={"subspace_dim": 250}),
            {"levels": 3, "qat_steps": 100, "qat_lr": 0.01, "rate": 0.0, "delta": 0.05}),
}
TARGET_METHODS = ("lora", "asym", "cla", "paca")

# Declared before any run of their members: the presets (training budgets) one question compares and whose best
# certificate it reports. delta (the preset's own, equal for all members) is split equally among them, so the
# best of the members holds with probability >= 1 - delta (genbound.bounds.union). A preset outside every
# question is certified at its own delta.
QUESTIONS: dict[str, Union] = {
    "bbc-budgets": Union("bbc-budgets", "budget", ("minilm", "minilm-long", "minilm-ddprior"), 0.05),
}


def question_of(preset: str) -> Union | None:
    hits = [u for u in QUESTIONS.values() if preset in u.members]
    if len(hits) > 1:
        raise GenboundError(f"preset {preset} is in several questions ({', '.join(u.name for u in hits)}); "
                            "declare one union over all of them")
    return hits[0] if hits else None


def split_settings(preset: str) -> dict[str, Any]:
    """The preset's certification settings with delta replaced by its share of its question's delta and the
    union recorded (``unions``), fixed before certification."""
    settings = dict(PRESETS[preset][1])
    q = question_of(preset)
    if q is None:
        return {**settings, "unions": []}
    if not math.isclose(settings["delta"], q.delta):
        raise GenboundError(f"preset {preset} declares delta {settings['delta']} but its question {q.name} "
                            f"{q.delta}; one delta per question")
    unions = [q]
    return {**settings, "delta": member_delta(unions), "unions": records(unions, {q.name: preset})}


def code_unions(methods: list[str], levels: list[int], delta: float) -> list[dict[str, Any]]:
    """The comparisons a report makes inside the message's grid (paid by the code, delta unchanged): the best
    method, and the best level when several are tried."""
    out = [Union("best method", "method", tuple(methods), delta, "code")]
    if len(levels) > 1:
        out.append(Union("best levels", "levels", tuple(map(str, levels)), delta, "code"))
    return [u.record(u.members[0]) | {"member": None} for u in out]


def certify_run(spec, out: Path, settings: dict[str, Any], device: str, splits_cache,
                suffix: str = "") -> dict[str, Any]:
    """The certificate of one run, from ``derived/<name><suffix>.cert.json`` while checkpoint and settings are the
    same."""
    cache = out / "derived" / f"{spec.name}{suffix}.cert.json"
    key = {"checkpoint": _meta_digest(spec.path), **settings}
    if (data := read_cache(cache, key, "certificate")) is not None:
        return data["certificate"]
    ck = load_checkpoint(spec.path)
    t0 = time.perf_counter()
    splits = splits_cache.get(spec.config)  # all of the training split: a prior run's centre is cut from it
    if "prior_fraction" in settings:
        opts = {k: v for k, v in settings.items() if k != "prior_fraction"}
        cert = certify_prior(ck, splits, settings["prior_fraction"], device=device, progress=False, **opts).to_dict()
    else:
        cert = certify(ck, device=device, splits=splits, progress=False, **settings).to_dict()
    cert["seconds"] = time.perf_counter() - t0
    write_json(cache, {"key": key, "certificate": cert})
    return cert


def certify_levels(spec, out: Path, settings: dict[str, Any], levels: list[int], device: str,
                   splits_cache) -> dict[str, Any]:
    """The smallest certificate of one run over the quantization levels ``levels``, with every level's bound
    under ``levels_tried``. Levels is an axis of the declared grid, so choosing among them after seeing the
    bounds is paid for by the grid index already in every message; the preset's own level keeps the cache
    name ``<name>.cert.json``, others get ``<name>.L<levels>.cert.json``."""
    certs = []
    for lv in levels:
        suffix = "" if lv == settings["levels"] else f".L{lv}"
        certs.append(certify_run(spec, out, {**settings, "levels": int(lv)}, device, splits_cache, suffix))
    best = dict(min(certs, key=lambda c: c["bound"]))
    best["levels_tried"] = {str(c["levels"]): {"bound": c["bound"], "bits": c["bits"], "train_error": c["train_error"]}
                            for c in certs}
    return best


def certify_all(specs, out: Path, settings: dict[str, Any], device: str = "cpu", poll: float = 5.0,
                wait_for_training: float = 0.0, levels: list[int] | None = None) -> dict[str, dict[str, Any] | str]:
    """Certify every trained run (at each of ``levels``, default the preset's, keeping the smallest bound),
    claiming each by lock (other processes certify the rest); waits for runs another live process holds, and up
    to ``wait_for_training`` seconds for runs another process is still training."""
    from tqdm.auto import tqdm

    cache = _SplitCache()
    if specs:
        cache.get(specs[0].config)  # tokenize while the runs are still training
    results: dict[str, dict[str, Any] | str] = {}
    pending = list(specs)
    bar = tqdm(total=len(specs), desc="certify", unit="run")
    give_up = time.monotonic() + wait_for_training
    while pending:
        waiting = []
        for spec in pending:
            if not (spec.path / "genbound.json").is_file():
                if time.monotonic() < give_up:
                    waiting.append(spec)
                    continue
                results[spec.name] = "not trained"
                bar.update(1)
                continue
            lock = spec.path.parent / f".{spec.name}.cert.lock"
            with locks.held(lock) as mine:
                if not mine:
                    waiting.append(spec)
                    continue
                try:
                    results[spec.name] = certify_levels(spec, out, settings, levels or [settings["levels"]],
                                                        device, cache)
                except GenboundError as exc:
                    results[spec.name] = f"failed: {exc}"
            bar.update(1)
        pending = waiting
        if pending:
            time.sleep(poll)
    bar.close()
    return results


def _f(v: float | None, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _code_phrase(rows, settings: dict[str, Any]) -> str:
    """How w was quantized; with a data-dependent centre and no posterior steps, nothing is (the centre is sent)."""
    if "prior_fraction" in settings and not settings.get("posterior_steps"):
        return ("the centre itself (no posterior steps: the difference from the centre is 0, one level, nothing "
                "to quantize)")
    return (f"{_levels_phrase(rows, settings)}, k-means then {settings['qat_steps']} steps of quantization-aware "
            f"training (Adam, lr {settings['qat_lr']})")


def _levels_phrase(rows, settings: dict[str, Any]) -> str:
    used = sorted({int(lv) for _, c in rows for lv in c.get("levels_tried", {str(c["levels"]): None})})
    if len(used) <= 1:
        return f"{used[0] if used else settings['levels']} quantization levels"
    return (f"quantization levels {', '.join(map(str, used))} tried per run (an axis of the declared grid, "
            "paid by the grid index), the smallest certificate kept")


def _limit_phrase(c: dict[str, Any], floor: float) -> str:
    """What dominates the certificate, from its own numbers: the code length (when the floor a perfect decoded
    model would get is most of the bound), else the larger of the two causes of a high decoded training error."""
    trained, decoded = c["train_error_trained"], c["train_error"]
    if floor > 0.5 * c["bound"]:
        return (f"the code length: the training error is low ({decoded:.3f} decoded, {trained:.3f} before "
                f"quantization to {c['levels']} levels) and the {c['bits']} bits are most of the bound, so fewer "
                "bits at the same training error (a smaller d, or fewer levels without their quantization loss) "
                "is what would lower it")
    if decoded - trained > trained:
        return (f"the quantization to {c['levels']} levels, which raises the training error from {trained:.3f} to "
                f"{decoded:.3f}, costs more than the training budget leaves")
    return (f"the short CPU budget (few steps, short inputs) leaves the training error high ({trained:.3f} before "
            f"quantization to {c['levels']} levels, {decoded:.3f} after)")


def _n_phrase(rows) -> str:
    if not rows:
        return "N = - training examples"
    c = rows[0][1]
    if c.get("prior"):
        return (f"n = {c['n']} bound-part examples counted (of N = {c['n'] + c['prior']['n_prior']} training "
                f"examples; the other {c['prior']['n_prior']} chose the coding centre)")
    return f"N = {c['n']} training examples"


def prior_paragraph(c: dict[str, Any]) -> str:
    """What a certificate with a data-dependent centre (genbound.bounds.ddprior) did, and its ceiling: the bound a
    decoded error of 0 would give at the K reached and at the shortest message (the centre alone)."""
    p = c["prior"]
    cands = "; ".join(f"{k}: K = {v['bits']}, error on the bound part {_f(v['train_error'])}, bound {_f(v['bound'])}"
                      for k, v in p["candidates"].items())
    floor_k = min(v["bits"] for v in p["candidates"].values())
    at0 = occam_bound(0.0, c["bits"], c["n"], c["delta"])
    at0_floor = occam_bound(0.0, floor_k, c["n"], c["delta"])
    return (f"Data-dependent centre (genbound/bounds/ddprior.py): the {p['n_prior'] + p['n_bound']:,} training "
            f"examples were cut by the seeded split declared in the grid file (fraction {p['fraction']:g} to the "
            f"prior part, split seed {p['seed']}, prior positions {p['prior_positions_digest'][:19]}...); the run "
            f"trained on the {p['n_prior']:,} prior-part examples alone is the coding centre "
            f"({p['centre_digest'][:19]}...), the message codes the difference from it, and errors are counted on "
            f"the n = {p['n_bound']:,} bound-part examples only, at delta = {c['delta']:.4g}. Candidates (every one "
            f"a message of one code fixed by the prior part, so the smallest is kept at no cost): {cands}; kept: "
            f"{p['chosen']}. Ceiling: a decoded error of 0 on the bound part would certify {at0:.3f} at the "
            f"K = {c['bits']} reached and {at0_floor:.3f} at the shortest message ({floor_k} bits, the centre "
            "itself): the floor that n and the grid index set.")


def _split_phrase(settings: dict[str, Any]) -> str:
    us = [u for u in settings.get("unions") or [] if u["paid_by"] == "delta"]
    return "".join(f" (one of the {len(u['members'])} {u['axis']}s of the question {u['name']}: "
                   f"{', '.join(u['members'])}, declared in advance; delta = {u['delta']:g} split equally)"
                   for u in us)


def report(preset: Preset, settings: dict[str, Any], specs, results: dict[str, Any], command: str,
           figure: Path | None, doc: Path | None) -> tuple[str, dict[str, Any]]:
    """The Markdown report and its JSON summary."""

    rows, notes = [], []
    for spec in specs:
        c = results.get(spec.name)
        if not isinstance(c, dict):
            notes.append(f"{spec.name}: {c}")
            continue
        rows.append((spec, c))
    certs = {s.method: c for s, c in rows}
    tau = kendall({m: c["bound"] for m, c in certs.items()}, {m: c["test_error"] for m, c in certs.items()},
                  "certified test error", "measured test error")
    best = None
    if rows:
        top = best_certificate([c for _, c in rows])  # refuses runs certified under different splits of delta
        best = next(r for r in rows if r[1] is top)
    chance = rows[0][1]["chance_error"] if rows else None
    lines = [f"# Compression certificates per method ({preset.backbone} / {preset.dataset})", "",
             f"Written by `{command}`.", "",
             f"Setting: {preset.description}; learning rate of w {preset.lr}; seed 0. Certificate: "
             f"{_code_phrase(rows, settings)}, range coding (constriction), delta = {settings['delta']:g}"
             f"{_split_phrase(settings)}; the hyperparameter grid declared in genbound/assets/certificate-grid.json "
             f"(version {DECLARED_GRID.version}) has {DECLARED_GRID.size:,} choices (at most {DECLARED_GRID.bits} "
             f"bits in every message). {_n_phrase(rows)}; chance error "
             f"{_f(chance)}. The best certificate below is a minimum over methods (and levels when several are "
             "tried), both coded in the message, so it holds at the same delta.", "",
             "| method | d | bits K | train error (decoded) | certified test error | measured test error "
             "(decoded) | test error before quantization | verdict |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    for spec, c in rows:
        lines.append(f"| {spec.method} | {c['d']} | {c['bits']} | {_f(c['train_error'])} | **{_f(c['bound'])}** | "
                     f"{_f(c['test_error'])} | {_f(c['test_error_trained'])} | "
                     f"{'vacuous' if c['vacuous'] else 'non-vacuous'} |")
    tried = [(spec, c["levels_tried"]) for spec, c in rows if len(c.get("levels_tried", {})) > 1]
    if tried:
        lines += ["", "Quantization levels tried per run (certified test error / K bits / decoded train error); the "
                  "table gives the smallest certificate:", ""]
        lines += [f"- {spec.method}: " + "; ".join(f"L = {lv}: {_f(t['bound'])} / {t['bits']} / {_f(t['train_error'])}"
                                                   for lv, t in lt.items()) for spec, lt in tried]
    lines += ["", "Bits of each message (K is their sum; every part is counted, the code is prefix-free):", "",
              "| method | symbols (range-coded) | ideal n H(counts) | codebook | counts | grid index | levels + "
              "stream length | K |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for spec, c in rows:
        b = c["bits_breakdown"]
        lines.append(f"| {spec.method} | {b['symbols']} | {b['ideal_symbols']:.0f} | {b['codebook']} | {b['counts']} | "
                     f"{b['hyperparameters']} | {b['levels'] + b['stream_length']} | {b['total']} |")
    smoothed = [(spec, c) for spec, c in rows if c.get("smoothed")]
    if smoothed:
        v = smoothed[0][1]["smoothed"]["classes"]
        lines += ["", "## The prediction-smoothed cross-entropy certificate", "",
                  f"From the same message and the same K (SubLoRA; genbound/bounds/smoothed.py): the cross-entropy "
                  f"of (1 - alpha) p + alpha / {v}, bounded for each alpha of the declared grid "
                  f"({', '.join(f'{a:g}' for a in smoothed[0][1]['smoothed']['alpha_grid'])}) in a kl and a "
                  "Hoeffding form, each at delta / (2 |grid|); the table gives the smallest. In nats; the uniform "
                  f"prediction's loss is ln {v} = {smoothed[0][1]['smoothed']['chance_loss']:.3f}.", "",
                  "| method | alpha | form | smoothed train CE | certified smoothed CE | measured smoothed test CE | "
                  "test CE (unsmoothed) | verdict |", "|---|---:|---|---:|---:|---:|---:|---|"]
        for spec, c in smoothed:
            sm = c["smoothed"]
            lines.append(f"| {spec.method} | {sm['alpha']:g} | {sm['form']} | {_f(sm['train_loss'])} | "
                         f"**{_f(sm['bound'])}** | {_f(sm['test_loss'])} | {_f(sm.get('test_cross_entropy'))} | "
                         f"{'vacuous' if sm['vacuous'] else 'non-vacuous'} |")
    lines += ["", "## Do the tighter certificates go with the better methods?", ""]
    if tau.tau is None:
        lines.append(f"Kendall's tau between certified and measured test errors: undefined ({tau.note}).")
    else:
        lines.append(f"Kendall's tau-b between the certified and the measured test errors over {tau.n_methods} "
                     f"methods: **{tau.tau:.2f}** (two-sided p = {tau.p_value:.3g}). {tau.note}")
    if best:
        lines += ["", f"Best certificate: **{best[0].method}**, certified test error {_f(best[1]['bound'])} "
                  f"(measured {_f(best[1]['test_error'])}) with K = {best[1]['bits']} bits and a decoded training "
                  f"error of {_f(best[1]['train_error'])}."]
        if best[1]["test_error"] is not None:
            lines[-1] += (f" The certificate lies {best[1]['bound'] - best[1]['test_error']:.3f} above the measured "
                          "test error.")
    if best and best[1].get("prior"):
        lines += ["", prior_paragraph(best[1])]
    elif best:
        b = best[1]
        at5 = occam_bound(0.05, b["bits"], b["n"], b["delta"])
        at0 = occam_bound(b["train_error_trained"], b["bits"], b["n"], b["delta"])
        ceiling = occam_bound(0.0, b["bits"], b["n"], b["delta"])
        lines += ["", f"What limits it: the {b['bits']} bits cost (K ln 2) / N = "
                  f"{b['bits'] * 0.6931471805599453 / b['n']:.3f} nats per example; the rest is the decoded training "
                  f"error. With the same K, a decoded training error of 0.05 would certify {at5:.3f}, and the "
                  f"unquantized model's training error ({b['train_error_trained']:.3f}) "
                  f"{at0:.3f}: {_limit_phrase(b, ceiling)}. Even a decoded training error of 0 "
                  f"would certify {ceiling:.3f} at this K and N: the floor the code length sets."]
    nonvac = [m for m in TARGET_METHODS if m in certs and not certs[m]["vacuous"]]
    lines += ["", f"Non-vacuous (below chance) among {', '.join(TARGET_METHODS)}: "
              f"{', '.join(nonvac) if nonvac else 'none'}."]
    if figure is not None:
        rel = Path(figure).with_suffix(".png")
        if doc is not None:
            try:
                rel = rel.resolve().relative_to(doc.resolve().parent)
            except ValueError:
                import os

                rel = Path(os.path.relpath(rel.resolve(), doc.resolve().parent))
        lines += ["", f"![Certified against measured test error, one marker per method]({rel})", "",
                  "*Certified test error against the measured test error of the decoded model; the dotted diagonal "
                  "is where a certificate would be exact, the dashed line is chance.*"]
    if notes:
        lines += ["", "Runs without a certificate: " + "; ".join(notes)]
    lines.append("")
    summary = {"preset": preset.to_dict(), "settings": settings,
               "kendall": {"tau": tau.tau, "p": tau.p_value, "n": tau.n_methods},
               "certificates": {s.method: c for s, c in rows}, "notes": notes}
    return "\n".join(lines), summary


def best_of(summaries: list[Path]) -> dict[str, Any]:
    """The best certificate over several reports' ``certificates.json`` (say the two BBC News budgets): every
    record must carry the same declared unions at its split delta (genbound.bounds.union.best_certificate), so
    a minimum over runs certified at different splits is refused. Returns the best record with its report."""
    import json

    certs = []
    for path in summaries:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise GenboundError(f"cannot read the certificates summary {path}: {exc}") from exc
        for c in (data.get("certificates") or {}).values():
            certs.append(dict(c, report=str(path), preset=data.get("preset", {}).get("name")))
    return best_certificate(certs)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m analysis.certificates", description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", choices=list(PRESETS), default="minilm")
    p.add_argument("--out", help="run directory (resumable; may be shared by several processes)")
    p.add_argument("--best-of", nargs="+", default=None, metavar="SUMMARY",
                   help="instead of certifying: the best certificate over these certificates.json files, refused "
                        "unless all were certified under one declared split of delta")
    p.add_argument("--methods", nargs="+", default=None,
                   help="default: the eleven methods of the declared grid (vera, pissa and dora are outside it)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--doc", default=None, help="also write the Markdown report here (docs/results/certificates.md)")
    p.add_argument("--figure", default=None, help="figure stem (default: <doc dir>/../images/certificates or <out>)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--levels", type=int, nargs="+", default=None, metavar="L",
                   help="quantization levels to certify each run at, keeping the smallest bound (each must be in "
                        "the declared grid; default: the preset's)")
    p.add_argument("--train-only", action="store_true", help="train the runs and stop (another process certifies)")
    p.add_argument("--certify-only", action="store_true",
                   help="do not train: certify the runs other processes train (see --wait)")
    p.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                   help="with --certify-only, wait this long for runs still being trained")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.best_of:
            import json

            best = best_of([Path(p) for p in args.best_of])
            print(json.dumps({k: best.get(k) for k in ("preset", "method", "bound", "bits", "train_error", "delta",
                                                         "unions", "statement", "report")}, indent=2))
            return 0
        if not args.out:
            raise GenboundError("--out is required (unless --best-of)")
        preset = PRESETS[args.preset][0]
        settings = split_settings(args.preset)

        methods = args.methods or list(PAPER_METHODS)
        for m in methods:
            if m not in METHODS:
                raise GenboundError(f"unknown method '{m}'; choose from {', '.join(METHODS)}")
            if m not in PAPER_METHODS:  # refused before any training: its message would have no grid index
                raise GenboundError(f"method '{m}' is outside the declared hyperparameter grid; choose from "
                                    f"{', '.join(PAPER_METHODS)}")
        declared = dict(DECLARED_GRID.values)["levels"]
        for lv in args.levels or []:
            if lv not in declared:  # refused before any training: its message would have no grid index
                raise GenboundError(f"--levels {lv} is outside the declared grid; choose from "
                                    f"{', '.join(map(str, declared))}")
        out = Path(args.out)
        specs = plan(preset, methods, [args.seed], out, args.device)
        if not args.certify_only:
            status = train_runs(specs)
            failed = {k: v for k, v in status.items() if v.startswith("failed")}
            if failed:
                print(f"training failed for {failed}", file=sys.stderr)
        if args.train_only:
            return 0
        results = certify_all(specs, out, settings, args.device, wait_for_training=args.wait, levels=args.levels)
        q = question_of(args.preset)
        total = q.delta if q else settings["delta"]
        cu = code_unions(methods, args.levels or [settings["levels"]], total)
        for spec in specs:
            c = results.get(spec.name)
            if isinstance(c, dict):
                c["unions"] = list(c.get("unions") or []) + [dict(u, member=m) for u, m in
                                                             zip(cu, [spec.method, c.get("levels")])]
        doc = Path(args.doc) if args.doc else None
        stem = Path(args.figure) if args.figure else ((doc.parent.parent / "images" / doc.stem) if doc
                                                      else out / "certificates")
        command = "python -m analysis.certificates " + " ".join(argv if argv is not None else sys.argv[1:])
        text, summary = report(preset, settings, specs, results, command, stem, doc)
        pts = [{"method": m, "certified": c["bound"], "measured": c["test_error"]}
               for m, c in summary["certificates"].items()]
        chance = next(iter(summary["certificates"].values()))["chance_error"] if pts else None
        if pts:
            save(certified_vs_measured(pts, chance), stem)
        write_json(out / "certificates.json", summary)
        write_text(out / "certificates.md", text)
        if doc is not None:
            write_text(doc, text)
        print(text)
        return 0
    except GenboundError as exc:
        print(f"analysis.certificates: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
