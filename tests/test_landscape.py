"""Loss-landscape slices: exactness of the batched engine, the grid's centre and end points, directions,
summaries, the peer loss-landscapes 3.0.6 at shared points, bad input and the command line."""

from __future__ import annotations

import argparse
import copy
import json
import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from genbound.core.errors import GenboundError
from genbound.data.evalset import EvalSet
from genbound.diagnostics.evaluate import evaluate
from genbound.diagnostics.landscape import (
    GridEvaluator,
    checkpoint_space,
    coordinates,
    cosine,
    grid_axis,
    grid_points,
    interpolate,
    landscape_from_checkpoints,
    pca_directions,
    random_directions,
    random_line,
    random_plane,
    summarize,
)
from genbound.diagnostics.landscape.api import _check_outside_space, model_with


class TinyNet(nn.Module):
    """A small ReLU MLP with a LayerNorm and dropout (to check eval mode and 1-D parameters)."""

    def __init__(self, d_in: int = 12, hidden: int = 24, classes: int = 4):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.drop = nn.Dropout(0.5)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x):
        h = self.drop(torch.relu(self.norm(self.fc1(x))))
        return self.head(torch.relu(self.fc2(h)))


def tiny(seed: int = 0, n: int = 90) -> tuple[TinyNet, EvalSet]:
    torch.manual_seed(seed)
    model = TinyNet()
    g = torch.Generator().manual_seed(100 + seed)
    x = torch.randn(n, 12, generator=g)
    y = torch.randint(0, 4, (n,), generator=g)
    return model, EvalSet({"x": x}, y)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    from genbound.testing import make_checkpoint

    root = tmp_path_factory.mktemp("landscape")
    a = make_checkpoint(root, "lora", name="a", save_trajectory=True, steps=24, trajectory_every=4)
    b = make_checkpoint(root, "lora", name="b", seed=1, steps=24)
    c = make_checkpoint(root, "cla", name="c", steps=24)
    fc1 = make_checkpoint(root, "lora", name="fc1only", steps=8, targets=["fc1"])
    return {"a": a, "b": b, "c": c, "fc1": fc1}


# -- batched engine equals the point-by-point reference ----------------------------------------------


@pytest.mark.parametrize("ppb,batch", [(1, None), (4, None), (7, 32)])
def test_batched_equals_sequential(ppb, batch):
    model, data = tiny()
    coords = coordinates(model)
    dirs = random_directions(coords, 2, seed=5)
    pts = grid_points([grid_axis(5, 1.5)] * 2)
    ev = GridEvaluator(model, coords, [d.tensors for d in dirs], data, points_per_batch=ppb, batch_size=batch)
    fast, ref = ev.evaluate(pts, "batched"), ev.evaluate(pts, "sequential")
    assert fast.cached_layers == ["fc1"]  # the first layer's products are computed once per data batch
    assert torch.allclose(fast.loss, ref.loss, rtol=0, atol=1e-6)
    assert torch.equal(fast.accuracy, ref.accuracy)
    # and the sequential engine is itself a plain evaluation of the displaced model
    for i in (0, 7, 24):
        w = {n: coords[n] + float(pts[i, 0]) * dirs[0].tensors[n] + float(pts[i, 1]) * dirs[1].tensors[n]
             for n in coords}
        plain = evaluate(model_with(model, w), data)
        assert abs(plain.loss - float(ref.loss[i])) < 1e-6


def test_auto_schedule_is_exact():
    """With the chunk size left to the planner, the first data batch times a chunk against single points in
    interleaved rounds (best of each) and keeps the faster; whichever it keeps, every value equals the
    reference."""
    model, data = tiny(3)
    coords = coordinates(model)
    dirs = [d.tensors for d in random_directions(coords, 2, seed=7)]
    pts = grid_points([grid_axis(5, 1.0)] * 2)
    ev = GridEvaluator(model, coords, dirs, data, batch_size=45)  # two data batches
    assert ev.points_per_batch > 1
    ev.points_per_batch = 4  # a smaller planned chunk, so that 25 points are enough to time both schedules
    fast, ref = ev.evaluate(pts), ev.evaluate(pts, "sequential")
    assert set(fast.calibration) == {"chunk_seconds_per_point", "single_seconds_per_point", "chunk_points", "rounds",
                                    "clock"}
    assert fast.calibration["clock"] == ("process" if torch.get_num_threads() == 1 else "wall")
    assert fast.calibration["rounds"] == 3  # 1 + 3 x (4 + 4) points of the 25 are timed
    assert fast.points_per_batch in (1, ev.points_per_batch)
    assert torch.allclose(fast.loss, ref.loss, rtol=0, atol=1e-6)
    assert torch.equal(fast.accuracy, ref.accuracy)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_single_point_partial_sums_are_exact(k):
    """One point per forward combines the cached products by a kept partial sum over t_1 .. t_{k-1} plus
    t_k d_k (:meth:`_FoldedLinear._combine`): equal to the matrix product c @ S whatever the order of the
    points (shared leading coordinates or not), and the whole evaluation equals the reference engine."""
    from genbound.diagnostics.landscape.grid import _FoldedLinear

    g = torch.Generator().manual_seed(k)
    w, dw = torch.randn(5, 3, generator=g), torch.randn(k, 5, 3, generator=g)
    fl = _FoldedLinear(w, None, dw, None, shared=False)
    stacked = torch.randn(k + 1, 40, generator=g)
    rows = [[0.5] * (k - 1) + [0.25], [0.5] * (k - 1) + [-1.0], [-0.75] * (k - 1) + [2.0], [0.5] * (k - 1) + [0.0]]
    for r in rows:  # the 2nd and 4th reuse the kept partial sum, the 3rd replaces it
        fl.coef = torch.tensor([[1.0, *r]])
        assert torch.allclose(fl._combine(stacked, "_partial"), fl.coef @ stacked, rtol=1e-6, atol=1e-6)
    fl.coef = torch.tensor([[1.0] + rows[0], [1.0] + rows[2]])  # a chunk: one matrix product
    assert torch.equal(fl._combine(stacked, "_partial"), fl.coef @ stacked)

    model, data = tiny(4)
    coords = coordinates(model)
    dirs = [d.tensors for d in random_directions(coords, min(k, 2), seed=2)]
    if k == 3:  # a third direction (the evaluator takes any number): the first two's sum, biases zeroed
        dirs.append({n: (dirs[0][n] + dirs[1][n]) if t.dim() > 1 else torch.zeros_like(t) for n, t in coords.items()})
    if k < 3:
        pts = grid_points([grid_axis(5, 1.0)] * k)
    else:
        pts = grid_points([grid_axis(3, 1.0)] * 2)
        pts = torch.cat([pts, torch.linspace(-1, 1, len(pts), dtype=torch.float64)[:, None]], 1)
    pts = torch.cat([pts, pts[torch.randperm(len(pts), generator=g)]])  # grid order, then shuffled
    ev = GridEvaluator(model, coords, dirs, data, points_per_batch=1)
    fast, ref = ev.evaluate(pts), ev.evaluate(pts, "sequential")
    assert fast.schedule == "folded" and fast.cached_layers == ["fc1"]
    assert torch.allclose(fast.loss, ref.loss, rtol=0, atol=1e-6)
    assert torch.equal(fast.accuracy, ref.accuracy)
    assert all(fl._partial is None and fl._partial_w is None for fl in ev._grid_modules.values())  # released


class SeqFirst(nn.Module):
    """A Linear that sees (positions, examples, features): its leading dimension is not the batch."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(4, 6)
        self.head = nn.Linear(18, 4)

    def forward(self, x):
        h = torch.tanh(self.proj(x.view(-1, 3, 4).transpose(0, 1)))  # (3, n, 6)
        return self.head(h.transpose(0, 1).reshape(x.shape[0], -1))


class Tied(nn.Module):
    """Two Linear layers sharing one weight: moving it moves both."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(12, 12)
        self.b = nn.Linear(12, 12)
        self.b.weight = self.a.weight
        self.head = nn.Linear(12, 4)

    def forward(self, x):
        return self.head(torch.tanh(self.b(torch.tanh(self.a(x)))))


def test_folded_schedule_and_its_fallbacks():
    """Points are folded into the batch dimension when only Linear weights and biases move; a moving
    LayerNorm, tied weights, or a Linear whose input is not (examples, ...) fall back to vmap, and every
    schedule equals the point-by-point reference."""
    pts = torch.randn(7, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    model, data = tiny(2)
    coords = coordinates(model)
    cases = {"folded": ("zero", model, data), "vmap": ("keep", model, data)}
    g = torch.Generator().manual_seed(9)
    x = torch.randn(30, 12, generator=g)
    y = torch.randint(0, 4, (30,), generator=g)
    for name, m in (("seqfirst", SeqFirst()), ("tied", Tied())):
        torch.manual_seed(0)
        m.eval()
        cases[name] = ("zero", m, EvalSet({"x": x}, y))
    for name, (one_d, m, d) in cases.items():
        coords = coordinates(m)
        dirs = [t.tensors for t in random_directions(coords, 2, seed=4, one_d=one_d)]
        ev = GridEvaluator(m, coords, dirs, d, points_per_batch=3)
        fast, ref = ev.evaluate(pts), ev.evaluate(pts, "sequential")
        assert fast.schedule == ("folded" if name == "folded" else "vmap"), name
        assert torch.allclose(fast.loss, ref.loss, rtol=0, atol=1e-6), name
        assert torch.equal(fast.accuracy, ref.accuracy), name
        if name == "seqfirst":  # found at run time, from the layer's input shape
            assert "expected" in ev._fold_error


def test_batched_equals_sequential_later_layers_and_no_cache():
    model, data = tiny(1)
    names = ["fc2.weight", "fc2.bias", "head.weight"]  # only later layers move: fc2's input is a fixed prefix
    coords = coordinates(model, names)
    dirs = [d.tensors for d in random_directions(coords, 2, seed=1, normalization="layer", one_d="keep")]
    pts = torch.randn(9, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ev = GridEvaluator(model, coords, dirs, data, points_per_batch=4)
    fast, ref = ev.evaluate(pts, "batched"), ev.evaluate(pts, "sequential")
    assert fast.cached_layers == ["fc2"]
    assert torch.allclose(fast.loss, ref.loss, rtol=0, atol=1e-6)
    nocache = GridEvaluator(model, coords, dirs, data, points_per_batch=4, cache_prefix=False).evaluate(pts)
    assert nocache.cached_layers == []
    assert torch.allclose(nocache.loss, ref.loss, rtol=0, atol=1e-6)


def small_bert(seed: int = 0):
    """A randomly initialised 3-block BERT (BertConfig, no download) with genbound's text head."""
    from transformers import BertConfig, BertModel

    from genbound.models.backbones import TextClassifier

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=60, hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=16)
    model = TextClassifier(BertModel(cfg, add_pooling_layer=False), 3).eval()
    g = torch.Generator().manual_seed(seed + 1)
    ids = torch.randint(0, 60, (10, 8), generator=g)
    mask = torch.ones(10, 8, dtype=torch.long)
    mask[3:, 6:] = 0  # padded examples: the mask takes part in every cached block
    return model, EvalSet({"input_ids": ids, "attention_mask": mask}, torch.randint(0, 3, (10,), generator=g))


_MOVING = {
    "mlp": {"head": ["head"], "last": ["fc2", "head"], "all": None},
    "bert": {"head": ["head"], "last": ["backbone.encoder.layer.2", "head"], "all": None},
}
_MEMOIZED = {
    ("mlp", "head"): ["fc1", "norm", "drop", "fc2"],
    ("mlp", "last"): ["fc1", "norm", "drop"],
    ("bert", "head"): ["backbone"],
    ("bert", "last"): ["backbone.embeddings", "backbone.encoder.layer.0", "backbone.encoder.layer.1"],
}


@pytest.mark.parametrize("arch", ["mlp", "bert"])
@pytest.mark.parametrize("which", ["head", "last", "all"])
@pytest.mark.parametrize("one_d", ["zero", "keep"])
def test_prefix_activations_cached_exactly(arch, which, one_d):
    """Head-only, last-block and all-layers planes: the modules before the first one that depends on the
    point run once per data batch (memoized), and every value equals the point-by-point reference to 1e-6,
    for folded chunks, vmap chunks (one_d keep moves LayerNorms) and single points."""
    model, data = tiny(4) if arch == "mlp" else small_bert()
    names = None
    if _MOVING[arch][which] is not None:
        prefixes = _MOVING[arch][which]
        names = [n for n, _ in model.named_parameters() if any(n.startswith(p + ".") for p in prefixes)]
    coords = coordinates(model, names)
    dirs = [d.tensors for d in random_directions(coords, 2, seed=3, one_d=one_d)]
    # Within the usual span (losses of order 1, where float32 rounding of the loss is ~1e-7).
    pts = torch.rand(9, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 2 - 1
    pts[0] = 0.0
    ref = None
    for ppb in (1, 4):
        ev = GridEvaluator(model, coords, dirs, data, points_per_batch=ppb, batch_size=6)  # two data batches
        fast = ev.evaluate(pts)
        ref = ref if ref is not None else ev.evaluate(pts, "sequential")
        assert fast.memoized == _MEMOIZED.get((arch, which), []), (ppb, fast.schedule)
        assert torch.allclose(fast.loss, ref.loss, rtol=0, atol=1e-6), (ppb, fast.schedule)
        assert torch.equal(fast.accuracy, ref.accuracy)
    plain = evaluate(model, data)
    assert abs(float(ref.loss[0]) - plain.loss) < 1e-6


class InPlace(nn.Module):
    """A frozen layer whose output the next module changes in place: a cached activation must not be reused."""

    def __init__(self):
        super().__init__()
        self.body = nn.Linear(12, 12)
        self.act = nn.ReLU(inplace=True)
        self.head = nn.Linear(12, 4)

    def forward(self, x):
        return self.head(self.act(self.body(x)))


def test_prefix_cache_never_reuses_a_tensor_changed_in_place():
    torch.manual_seed(0)
    model = InPlace().eval()
    g = torch.Generator().manual_seed(2)
    data = EvalSet({"x": torch.randn(20, 12, generator=g)}, torch.randint(0, 4, (20,), generator=g))
    coords = coordinates(model, ["head.weight", "head.bias"])
    dirs = [d.tensors for d in random_directions(coords, 2, seed=1)]
    pts = torch.randn(6, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ev = GridEvaluator(model, coords, dirs, data, points_per_batch=1)
    fast, ref = ev.evaluate(pts), ev.evaluate(pts, "sequential")
    assert torch.allclose(fast.loss, ref.loss, rtol=0, atol=1e-6)


@pytest.mark.parametrize("space", ["dw", "factors", "all"])
def test_batched_equals_sequential_on_checkpoint(ckpts, space):
    from genbound.checkpoints.checkpoint import load_checkpoint

    ck = load_checkpoint(ckpts["c"])  # cla: the factors space holds B only (a selector A)
    model, coords = checkpoint_space(ck, space)
    data = ck.load_splits().val
    dirs = [d.tensors for d in random_directions(coords, 2, seed=2)]
    pts = grid_points([grid_axis(3, 1.0)] * 2)
    ev = GridEvaluator(model, coords, dirs, data, points_per_batch=4)
    assert torch.allclose(ev.evaluate(pts).loss, ev.evaluate(pts, "sequential").loss, rtol=0, atol=1e-6)


# -- the grid's centre and end points ---------------------------------------------------------------


def test_centre_equals_model_loss_and_caller_model_untouched():
    model, data = tiny(2)
    model.train()  # dropout on: the landscape must still evaluate in eval mode
    model.fc2.weight.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    res = random_plane(model, coordinates(model), data, grid=5, span=0.5, seed=3)
    assert model.training
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    plain = evaluate(model, data)  # eval mode inside, mode restored
    assert res.loss.shape == (5, 5) and res.accuracy.shape == (5, 5)
    assert abs(res.centre_loss - plain.loss) < 1e-6
    assert abs(res.reference_loss - plain.loss) < 1e-6  # batch sizes differ: summation order only
    assert res.summary.centre_accuracy == pytest.approx(plain.accuracy)
    assert float(res.axes[0][2]) == 0.0 and float(res.axes[0][0]) == -0.5 and float(res.axes[0][-1]) == 0.5


def test_centre_equals_recorded_checkpoint_loss(ckpts):
    res = landscape_from_checkpoints([ckpts["a"]], "random", grid=3, samples=None, split="train", seed=0)
    from genbound.checkpoints.checkpoint import load_checkpoint

    recorded = load_checkpoint(ckpts["a"]).meta.results["train_loss"]
    assert abs(res.centre_loss - res.reference_loss) < 1e-6
    assert abs(res.centre_loss - recorded) < 1e-5
    assert res.directions[0].seed == 0 and res.directions[1].draw == 1
    assert abs(res.cosine) < 1e-6


def test_interpolation_end_points_equal_each_checkpoint(ckpts):
    from genbound.checkpoints.checkpoint import load_checkpoint

    line = landscape_from_checkpoints([ckpts["a"], ckpts["b"]], grid=5, samples=None, split="val")
    data = load_checkpoint(ckpts["a"]).load_splits().val
    la = evaluate(load_checkpoint(ckpts["a"]).build_model(merged=True), data).loss
    lb = evaluate(load_checkpoint(ckpts["b"]).build_model(merged=True), data).loss
    assert line.kind == "line" and line.loss.shape == (5,)
    assert abs(float(line.loss[2]) - la) < 1e-6
    assert abs(float(line.loss[4]) - lb) < 1e-6
    assert abs(float(line.loss[2]) - float(line.loss[4])) > 1e-3  # the two checkpoints do differ
    plane = landscape_from_checkpoints([ckpts["a"], ckpts["b"], ckpts["c"]], grid=3, samples=None, split="val")
    lc = evaluate(load_checkpoint(ckpts["c"]).build_model(merged=True), data).loss
    assert abs(float(plane.loss[1, 1]) - la) < 1e-6
    assert abs(float(plane.loss[2, 1]) - lb) < 1e-6
    assert abs(float(plane.loss[1, 2]) - lc) < 1e-6
    assert plane.path.tolist() == [[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]


# -- directions -------------------------------------------------------------------------------------


def test_directions_reproducible_orthogonal_and_filter_normalized():
    model, _ = tiny()
    coords = coordinates(model)
    d1 = random_directions(coords, 2, seed=11)
    d2 = random_directions(coords, 2, seed=11)
    d3 = random_directions(coords, 2, seed=12)
    for a, b in zip(d1, d2):
        assert all(torch.equal(a.tensors[n], b.tensors[n]) for n in coords)
    assert not torch.equal(d1[0].tensors["fc1.weight"], d3[0].tensors["fc1.weight"])
    assert abs(cosine(d1[0].tensors, d1[1].tensors)) < 1e-6
    for d in d1:
        for n, c in coords.items():
            t = d.tensors[n]
            if c.dim() == 1:  # biases and LayerNorm: zero direction (Li et al.)
                assert torch.count_nonzero(t) == 0 and n in d.info.zeroed
            else:
                assert torch.allclose(t.norm(dim=1), c.norm(dim=1), rtol=1e-5, atol=0)
        assert d.info.filter_norm_error < 1e-5 and d.info.seed == 11


def test_global_gram_schmidt_then_filter_normalization_is_not_orthogonal():
    """Why the block-wise construction: projecting globally and re-normalizing filters breaks it."""
    model, _ = tiny()
    coords = {n: c for n, c in coordinates(model).items() if c.dim() == 2}
    g = torch.Generator().manual_seed(0)
    a = {n: torch.rand(c.shape, generator=g) for n, c in coords.items()}  # uniform, as loss-landscapes draws
    b = {n: torch.rand(c.shape, generator=g) for n, c in coords.items()}
    k = sum(float((a[n] * b[n]).sum()) for n in a) / sum(float((a[n] ** 2).sum()) for n in a)
    b = {n: b[n] - k * a[n] for n in a}
    assert abs(cosine(a, b)) < 1e-6

    def fnorm(d):
        return {n: d[n] * (coords[n].norm(dim=1, keepdim=True) / d[n].norm(dim=1, keepdim=True)) for n in d}

    assert abs(cosine(fnorm(a), fnorm(b))) > 1e-3


def test_line_and_layer_normalization_and_none():
    model, data = tiny()
    coords = coordinates(model)
    (d,) = random_directions(coords, 1, seed=4, normalization="layer", one_d="keep")
    for n, c in coords.items():
        assert float(d.tensors[n].norm()) == pytest.approx(float(c.norm()), rel=1e-5)
    pair = random_directions(coords, 2, seed=4, normalization="none")
    assert abs(cosine(pair[0].tensors, pair[1].tensors)) < 1e-6
    res = random_line(model, coords, data, grid=7, seed=4)
    assert res.kind == "line" and res.loss.shape == (7,) and res.cosine is None


def test_pca_directions_recover_a_planar_trajectory():
    g = torch.Generator().manual_seed(0)
    centre = {"w": torch.zeros(6, 5), "b": torch.zeros(6)}
    u = {"w": torch.randn(6, 5, generator=g), "b": torch.randn(6, generator=g)}
    v = {"w": torch.randn(6, 5, generator=g), "b": torch.randn(6, generator=g)}
    coeff = [(3.0, 1.0), (2.0, -1.0), (1.5, 0.5), (0.5, 0.2), (0.0, 0.0)]
    traj = [{n: a * u[n] + b * v[n] for n in centre} for a, b in coeff]
    pca = pca_directions(traj, centre, 2)
    d1, d2 = (d.tensors for d in pca.directions)
    assert abs(cosine(d1, d2)) < 1e-6
    assert math.sqrt(sum(float((t.double() ** 2).sum()) for t in d1.values())) == pytest.approx(1.0, rel=1e-6)
    assert sum(pca.explained_variance) == pytest.approx(1.0, abs=1e-9)  # the path lies in a plane
    assert pca.explained_variance[0] >= pca.explained_variance[1]
    assert torch.allclose(pca.projections[-1], torch.zeros(2, dtype=torch.float64))
    flat = torch.cat([(traj[0][n] - traj[-1][n]).reshape(-1) for n in centre]).double()
    back = sum(float(pca.projections[0, j]) * torch.cat([pca.directions[j].tensors[n].reshape(-1)
               for n in centre]).double() for j in range(2))
    assert torch.allclose(back, flat, atol=1e-5)  # the start point is reconstructed exactly
    assert (pca.projections[0] >= 0).all()  # sign convention


def test_pca_plane_from_checkpoint(ckpts):
    res = landscape_from_checkpoints([ckpts["a"]], "pca", grid=3, samples=64)
    ev = res.source["explained_variance"]
    assert len(ev) == 2 and ev[0] >= ev[1] > 0 and sum(ev) <= 1 + 1e-9
    assert res.path.shape[1] == 2 and res.path_labels[0] == "step 0"
    assert float(res.axes[0].max()) >= float(res.path.abs().max())  # the whole path is inside the grid
    assert abs(res.cosine) < 1e-6
    assert abs(res.centre_loss - res.reference_loss) < 1e-6


# -- the peer at shared points ----------------------------------------------------------------------


def test_matches_loss_landscapes_linear_interpolation():
    """loss-landscapes 3.0.6 evaluates start + (i + 1) / steps (end - start), i = 0..steps-1, by repeated
    in-place addition; with steps = 10 those are our grid points t = 0.1 .. 1.0 of a 21-point line."""
    from loss_landscapes import linear_interpolation
    from loss_landscapes.metrics import Loss

    a, data = tiny(0)
    b, _ = tiny(1)
    a.eval(), b.eval()
    ours = interpolate(a, coordinates(a), [coordinates(b)], data, grid=21, span=1.0)
    metric = Loss(nn.CrossEntropyLoss(), data.features["x"], data.labels)
    peer = linear_interpolation(copy.deepcopy(a), copy.deepcopy(b), metric, steps=10, deepcopy_model=True)
    shared = ours.loss[11:].numpy()
    assert peer.shape == (10,)
    assert abs(shared - peer).max() < 1e-5  # the peer accumulates 10 in-place float32 additions
    assert abs(float(ours.loss[20]) - evaluate(b, data).loss) < 1e-6


# -- summaries --------------------------------------------------------------------------------------


def test_summaries_on_a_known_quadratic():
    axes = [grid_axis(9, 2.0), grid_axis(9, 2.0)]
    t1, t2 = torch.meshgrid(axes[0], axes[1], indexing="ij")
    loss = 0.3 + 1.5 * t1**2 + 0.25 * t2**2  # curvatures 3 and 0.5
    acc = torch.ones_like(loss)
    s = summarize(axes, loss, acc, radii=[1.0], basin_threshold=0.3 + 0.9)
    assert s.centre_loss == pytest.approx(0.3)
    assert s.curvature[0].finite_difference == pytest.approx(3.0) and s.curvature[1].quadratic_fit == pytest.approx(0.5)
    hess = torch.tensor(s.hessian, dtype=torch.float64)
    assert torch.allclose(hess, torch.tensor([[3.0, 0.0], [0.0, 0.5]], dtype=torch.float64), atol=1e-9)
    assert s.hessian_eigenvalues == pytest.approx([3.0, 0.5])
    assert s.sharpness[0].max_rise == pytest.approx(1.5) and s.sharpness[0].at in ([1.0, 0.0], [-1.0, 0.0])
    assert s.sharpness[0].relative == pytest.approx(100 * 1.5 / 1.3)
    inside = (loss <= 1.2).sum().item()  # the region is convex, hence connected
    assert s.basin.points == inside and s.basin.fraction == pytest.approx(inside / 81)
    assert s.basin.area == pytest.approx(inside * 0.5**2) and not s.basin.touches_edge
    # a disconnected low region does not count
    loss2 = loss.clone()
    loss2[0, 0] = 0.0
    assert summarize(axes, loss2, acc, basin_threshold=1.2).basin.points == inside
    edge = summarize(axes, loss, acc, basin_threshold=1.3).basin  # reaches t2 = +-2: a lower bound
    assert edge.touches_edge and edge.points > inside


# -- bad input --------------------------------------------------------------------------------------


@pytest.mark.parametrize("grid", [0, -3, 4, 20])
def test_bad_grid(grid):
    model, data = tiny()
    with pytest.raises(GenboundError, match="grid resolution"):
        random_plane(model, coordinates(model), data, grid=grid)


def test_bad_checkpoint_combinations(ckpts, tmp_path):
    import shutil

    with pytest.raises(GenboundError, match="saved without a trajectory"):
        landscape_from_checkpoints([ckpts["b"]], "pca", grid=3)
    with pytest.raises(GenboundError, match="same layers"):
        landscape_from_checkpoints([ckpts["a"], ckpts["fc1"]], grid=3)
    with pytest.raises(GenboundError, match="different coordinates"):  # lora factors vs cla factors
        landscape_from_checkpoints([ckpts["a"], ckpts["c"]], space="factors", grid=3)
    a, data = tiny(0)
    b = copy.deepcopy(a)
    with torch.no_grad():
        b.fc2.weight.add_(1.0)
    with pytest.raises(GenboundError, match="does not move"):  # the end of the line would not be b
        _check_outside_space(a, b, coordinates(a, ["head.weight"]), "b", "dw")
    other = tmp_path / "other"
    shutil.copytree(ckpts["b"], other)
    meta = json.loads((other / "genbound.json").read_text())
    meta["backbone"], meta["fingerprint"] = "minilm", "sha256:" + "0" * 64
    (other / "genbound.json").write_text(json.dumps(meta))
    # Refused at load already (its layers are not minilm's: genbound.checkpoints.claims), or by the landscape's own
    # check.
    with pytest.raises(GenboundError, match="same backbone|made for another backbone"):
        landscape_from_checkpoints([ckpts["a"], other], grid=3)
    with pytest.raises(GenboundError, match="one checkpoint"):
        landscape_from_checkpoints([ckpts["a"], ckpts["b"]], "random", grid=3)


def _cli(argv: list[str]) -> int:
    from genbound import cli
    from genbound.commands import landscape as cmd

    if "landscape" in cli.COMMANDS:
        return cli.main(["landscape", *argv])
    parser = argparse.ArgumentParser(prog="genbound landscape")
    cmd.add_arguments(parser)
    try:
        return cmd.run(parser.parse_args(argv))
    except GenboundError as exc:
        print(f"genbound: error: {exc}")
        return exc.exit_code


def test_cli(ckpts, tmp_path, capsys):
    out, fig = tmp_path / "r.json", tmp_path / "r.png"
    assert _cli([str(ckpts["a"]), "--grid", "5", "--samples", "64", "--device", "cpu", "--json",
                 "--output", str(out), "--plot", str(fig)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["kind"] == "plane" and len(printed["loss"]) == 5 and printed["n_examples"] == 64
    assert json.loads(out.read_text())["directions"][0]["seed"] == 0
    assert fig.stat().st_size > 1000
    assert _cli([str(ckpts["a"]), str(ckpts["b"]), "--grid", "3", "--samples", "32", "--device", "cpu",
                 "--plot", str(tmp_path / "line.svg")]) == 0
    assert "line slice" in capsys.readouterr().out
    assert _cli([str(ckpts["a"]), "--grid", "4", "--device", "cpu"]) == 2
    cap = capsys.readouterr()
    assert "odd" in cap.out + cap.err
    assert _cli([str(ckpts["b"]), "--directions", "pca", "--device", "cpu"]) == 2


# -- real MiniLM and CUDA ---------------------------------------------------------------------------


@pytest.mark.slow
def test_minilm_batched_equals_sequential():
    from genbound.models.backbones import get_backbone

    bb = get_backbone("minilm")
    model = bb.build(5).eval()
    tok = bb.tokenizer()
    enc = tok(["the markets fell sharply today", "a late goal won the match", "new phone chips unveiled"],
              padding="max_length", truncation=True, max_length=8, return_tensors="pt")
    data = EvalSet({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}, torch.tensor([0, 3, 4]))
    names = [n for n, _ in model.named_parameters() if n.endswith(("query.weight", "value.weight"))]
    names += ["head.weight", "head.bias"]
    coords = coordinates(model, names)
    dirs = [d.tensors for d in random_directions(coords, 2, seed=0)]
    pts = torch.tensor([[0.0, 0.0], [0.5, -0.5], [-1.0, 0.25]], dtype=torch.float64)
    ev = GridEvaluator(model, coords, dirs, data, points_per_batch=3)
    fast, ref = ev.evaluate(pts), ev.evaluate(pts, "sequential")
    assert "backbone.encoder.layer.0.attention.self.query" in fast.cached_layers
    assert fast.schedule == "folded"  # only Linear weights move: the points ride in the batch dimension
    assert torch.allclose(fast.loss, ref.loss, rtol=0, atol=1e-6)
    plain = F.cross_entropy(model(**data.features), data.labels).item()
    assert abs(float(fast.loss[0]) - plain) < 1e-6


@pytest.mark.cuda
def test_cuda_matches_cpu():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    model, data = tiny()
    coords = coordinates(model)
    cpu = random_plane(model, coords, data, grid=5, seed=1, device="cpu")
    gpu = random_plane(model, coords, data, grid=5, seed=1, device="cuda")
    assert gpu.timing["device"].startswith("cuda")
    assert torch.allclose(cpu.loss, gpu.loss, atol=1e-4)
