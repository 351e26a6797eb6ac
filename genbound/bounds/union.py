"""One delta per question: the union bounds a certificate is part of, declared before the runs.

A report that compares several certificates and keeps the best (several training budgets, presets, quantization
levels or methods) makes a claim about the minimum, and the minimum holds with probability 1 - delta only if
the union over the members is paid. There are two ways, and every certificate records which applies to it:

* **by the code**: a choice coded in the message (an axis of the declared grid, genbound/assets/
  certificate-grid.json: method, levels, ...) is paid in bits; the Occam bound holds for every message at
  once, so each member keeps the whole delta (share 1);
* **by delta**: a choice outside the message (a training budget, a preset) splits delta in advance:
  P(some member's bound fails) <= sum_j delta_j = delta, with delta_j = delta / |members| (an equal split,
  fixed before any member is certified).

A record carries ``unions``: one entry per union, ``{"name", "axis", "members", "member", "delta",
"share", "paid_by"}``. :func:`best_certificate` takes the minimum bound over records only when they were
certified under the same unions (same names, members and total delta) at the delta their split gives; a mix
(say one budget certified at delta and the other at delta / 2) is refused.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from ..core.errors import GenboundError

AXES_BY_CODE = ("method", "levels", "subspace_dim", "chain", "lr", "rate", "max_length", "rank", "alpha", "seed")
AXES_BY_DELTA = ("budget", "preset", "dataset")


@dataclass(frozen=True)
class Union:
    """A declared union: ``members`` compared or minimised over on one ``axis``, at total ``delta``."""

    name: str
    axis: str
    members: tuple[str, ...]
    delta: float
    paid_by: str = "delta"  # "delta" (split equally) or "code" (an axis of the message's grid)

    def __post_init__(self) -> None:
        if not self.members or len(set(self.members)) != len(self.members):
            raise GenboundError(f"union {self.name!r} needs distinct members, got {list(self.members)}")
        if self.paid_by not in ("delta", "code"):
            raise GenboundError(f"union {self.name!r}: paid_by is 'delta' or 'code', got {self.paid_by!r}")
        if self.paid_by == "code" and self.axis not in AXES_BY_CODE:
            raise GenboundError(f"union {self.name!r}: axis {self.axis!r} is not coded in the message; pay it by "
                                f"delta (coded axes: {', '.join(AXES_BY_CODE)})")
        if not 0 < self.delta < 1:
            raise GenboundError(f"union {self.name!r}: delta must lie in (0, 1), got {self.delta}")

    @property
    def share(self) -> float:
        """The part of delta each member is certified at: 1 / |members| when paid by delta, else 1."""
        return 1.0 / len(self.members) if self.paid_by == "delta" else 1.0

    def record(self, member: str) -> dict[str, Any]:
        if member not in self.members:
            raise GenboundError(f"{member!r} is not a member of union {self.name!r} ({', '.join(self.members)})")
        return {**asdict(self), "members": list(self.members), "member": member, "share": self.share}


def member_delta(unions: Sequence[Union]) -> float:
    """The delta one member is certified at: the product of the shares of the unions paid by delta, times
    their common total (every union of one question shares the question's delta)."""
    totals = {u.delta for u in unions}
    if len(totals) > 1:
        raise GenboundError(f"the unions of one certificate must share one delta, got {sorted(totals)}")
    if not unions:
        raise GenboundError("no union declared; a single certificate needs none (pass delta directly)")
    return totals.pop() * math.prod(u.share for u in unions)


def records(unions: Sequence[Union], member: dict[str, str]) -> list[dict[str, Any]]:
    """The ``unions`` entry of a certificate: ``member`` maps each union's name to this certificate's member."""
    missing = [u.name for u in unions if u.name not in member]
    if missing:
        raise GenboundError(f"no member named for union(s) {', '.join(missing)}")
    return [u.record(member[u.name]) for u in unions]


def _signature(cert: dict[str, Any]) -> tuple:
    return tuple(sorted((u["name"], u["axis"], tuple(u["members"]), float(u["delta"]), u["paid_by"])
                        for u in cert.get("unions") or []))


def check_split(cert: dict[str, Any]) -> None:
    """A record is certified at the delta its unions give (refused otherwise)."""
    us = cert.get("unions") or []
    if not us:
        return
    totals = {float(u["delta"]) for u in us}
    want = totals.pop() * math.prod(float(u["share"]) for u in us)
    if len(totals) or not math.isclose(float(cert["delta"]), want, rel_tol=1e-12):
        raise GenboundError(f"a certificate at delta = {cert['delta']:g} records unions that give {want:g}; "
                            "recertify it at the split delta")


def best_certificate(certs: Iterable[dict[str, Any]], key: str = "bound") -> dict[str, Any]:
    """The record with the smallest ``key`` among ``certs``, refused when they were certified under different
    unions or at deltas other than their split gives, or when a member they compare over is not in the
    union they record (the minimum would then hold with probability below 1 - delta)."""
    certs = list(certs)
    if not certs:
        raise GenboundError("no certificate to take the best of")
    sigs = {_signature(c) for c in certs}
    if len(sigs) > 1:
        shown = "; ".join(", ".join(f"{n} ({a}) over {len(m)} at delta {d:g}" for n, a, m, d, _ in s) or "no union"
                          for s in sorted(sigs))
        raise GenboundError(f"the certificates were certified under different unions ({shown}); certify them all "
                            "under one declared split of delta before taking the best")
    deltas = {float(c["delta"]) for c in certs}
    if len(deltas) > 1:
        shown = ", ".join(map(str, sorted(deltas)))
        raise GenboundError(f"the certificates were certified at different deltas ({shown}); certify them at one "
                            "split before taking the best")
    for c in certs:
        check_split(c)
    if len(certs) > 1 and not sigs.pop():
        raise GenboundError(f"{len(certs)} certificates record no union; declare the union they are compared over "
                            "(analysis.certificates QUESTIONS) and certify each at its share of delta")
    return min(certs, key=lambda c: c[key])
