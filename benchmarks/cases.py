"""Models and data shared by the peer benchmarks, defined once so that every benchmark times the same case.

The reference MLP of docs/benchmarks.md: 512-1024-512-10 with ReLU (1,055,242 parameters), on n Gaussian inputs
labelled by
a seeded random linear teacher (optionally with label noise), briefly trained by full-batch Adam so that the
centre is a trained point with a trained network's curvature.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from genbound.data.evalset import EvalSet


class PeerMLP(nn.Module):
    """512-1024-512-10 ReLU, called as model(x=...) like every genbound model."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(512, 1024), nn.ReLU(), nn.Linear(1024, 512), nn.ReLU(), nn.Linear(512, 10))

    def forward(self, x):
        return self.net(x)


def peer_mlp(n: int, seed: int = 0, train_steps: int = 20, label_noise: float = 0.0) -> tuple[PeerMLP, EvalSet]:
    """The trained MLP (eval mode, no grad) and its n examples; the same seed gives the same case."""
    torch.manual_seed(seed)
    model = PeerMLP()
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 512, generator=g)
    teacher = torch.randn(512, 10, generator=g)
    logits = x @ teacher
    if label_noise:
        logits = logits + label_noise * torch.randn(n, 10, generator=g)
    y = logits.argmax(1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(train_steps):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, EvalSet({"x": x}, y)
