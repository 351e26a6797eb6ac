#!/usr/bin/env python3
"""Recompute a data-dependent-centre certificate (genbound.bounds.ddprior) from its record alone, without
genbound.bounds.ddprior: rebuild the seeded split from the recorded fraction and seed, check the centre's
sha256, decode the recorded message with the declared grid, count the errors of theta_0 + P (c + delta_hat)
on the bound part (genbound.diagnostics.evaluate) and invert kl by bisection.

    python tools/recheck_ddprior.py RECORD.cert.json CHECKPOINT

RECORD is analysis.certificates' cache entry (derived/<run>.cert.json) or `genbound certify --json` output.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys

import torch

from genbound.bounds.certificate import DECLARED_GRID, Replay, load_w
from genbound.bounds.codec import decode
from genbound.checkpoints.checkpoint import load_checkpoint
from genbound.checkpoints.restore import full_splits
from genbound.diagnostics.evaluate import evaluate


def kl(p: float, q: float) -> float:
    return (p * math.log(p / q) if p else 0.0) + (1 - p) * math.log((1 - p) / (1 - q))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("record")
    p.add_argument("checkpoint")
    args = p.parse_args(argv)
    rec = json.loads(open(args.record, encoding="utf-8").read())
    rec = rec.get("certificate", rec)
    ck = load_checkpoint(args.checkpoint)
    splits = full_splits(ck.meta, ck.load_backbone())
    n_all = len(splits.train)
    perm = torch.randperm(n_all, generator=torch.Generator().manual_seed(int(rec["prior"]["seed"])))
    bound_pos = perm[int(round(rec["prior"]["fraction"] * n_all)):].sort().values
    centre = load_w(ck)[0]
    digest = "sha256:" + hashlib.sha256(centre.numpy().astype("<f4").tobytes()).hexdigest()
    checks = {"n is the bound part": len(bound_pos) == rec["n"],
              "centre digest": digest == rec["prior"]["centre_digest"],
              "grid digest": rec["grid_digest"] == DECLARED_GRID.digest}
    cfg, links = decode((bytes.fromhex(rec["message_hex"]), rec["bits"]), DECLARED_GRID)
    rep = Replay(ck)
    rep.set_w(centre + links[0].values())
    err = evaluate(rep.model, splits.train.index(bound_pos)).error
    n, k, delta = rec["n"], rec["bits"], rec["delta"]
    budget = (k * math.log(2) + math.log(2 * math.sqrt(n) / delta)) / n
    lo, hi = err, 1 - 1e-12
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if kl(err, mid) <= budget else (lo, mid)
    print(json.dumps({"checks": checks, "recorded": {key: rec[key] for key in ("bound", "bits", "train_error", "n",
                                                                                 "delta")},
                      "recomputed": {"train_error": err, "bound": hi, "config": cfg}}, indent=1))
    return 0 if all(checks.values()) and err == rec["train_error"] and math.isclose(hi, rec["bound"],
                                                                                     abs_tol=1e-9) else 1


if __name__ == "__main__":
    sys.exit(main())
