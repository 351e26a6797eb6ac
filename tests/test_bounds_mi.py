"""Table 1 (mutual-information bound): worked example, properties, configurations and bad input."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from genbound.bounds.mi import BoundConfig, load_config, method_bound, mi_gap_bound, parse_layers, table1
from genbound.bounds.report import config_from_meta, report_for_config, to_latex, to_markdown
from genbound.core.errors import GenboundError
from genbound.methods.catalogue import METHODS

ROBERTA = dict(layers=[(768, 768)] * 24, rank=16, n_train=3668, q=32, sigma=0.5)


def test_roberta_lora_row_is_42_23_and_vacuous():
    row = method_bound("lora", BoundConfig(**ROBERTA), include_head=False)
    assert row.data_dependent_params == 16 * 24 * (768 + 768)
    assert round(row.value, 2) == 42.23
    assert row.vacuous
    # Independent arithmetic, straight from docs/concepts.md ("Mutual-information bound and Table 1").
    assert row.value == pytest.approx(math.sqrt(2 * 16 * 32 * 0.25 * math.log(2) * 24 * 1536 / 3668), rel=1e-12)


def test_preset_reproduces_the_paper_table_and_every_row_is_vacuous():
    rows = {r.method: r for r in table1(load_config("roberta-base"), include_head=False)}
    assert set(rows) == set(METHODS)
    assert round(rows["lora"].value, 2) == 42.23
    for name in ("asym", "cla", "rcla", "paca"):
        assert rows[name].value == pytest.approx(rows["lora"].value / math.sqrt(2))
    assert all(r.vacuous for r in rows.values())


def test_d_comes_from_the_catalogue_and_the_head_counts_by_default():
    cfg = BoundConfig(layers=[(128, 64), (128, 128)], rank=4, n_train=628, head=645, chain=3)
    for name, method in METHODS.items():
        if not method.adapter:
            continue
        k = 3 if method.chained else 1
        with_head = method_bound(name, cfg)
        assert with_head.data_dependent_params == method.data_dependent_params(cfg.layers, 4, k, head=645)
        without = method_bound(name, cfg, include_head=False)
        assert with_head.data_dependent_params - without.data_dependent_params == 645


def test_fft_counts_every_parameter_and_needs_the_total():
    cfg = BoundConfig(layers=[(384, 384)] * 12, rank=16, n_train=1558, head=1925)
    row = method_bound("fft", cfg)
    assert row.value is None and "--total-params" in row.note and row.vacuous
    cfg.total = 22_567_301
    assert method_bound("fft", cfg).data_dependent_params == 22_567_301
    assert method_bound("fft", cfg, include_head=False).data_dependent_params == 22_567_301 - 1925


sizes = st.integers(1, 64)


@settings(max_examples=60, deadline=None)
@given(r=st.integers(1, 8), q=st.integers(1, 64), n=st.integers(1, 10**6), k=st.integers(2, 6),
       out=sizes, inn=sizes, count=st.integers(1, 6), head=st.integers(0, 500))
def test_monotonicity_and_scaling(r, q, n, k, out, inn, count, head):
    layers = [(out + 8, inn + 8)] * count
    base = BoundConfig(layers=layers, rank=r, n_train=n, q=q, head=head, chain=k)

    def val(method="lora", include_head=True, **kw):
        cfg = BoundConfig(**{**base.__dict__, **kw, "sources": {}})
        return method_bound(method, cfg, include_head).value

    assert val(rank=r + 1) > val()
    assert val(q=q + 1) > val()
    assert val(layers=layers + [(out + 8, inn + 8)]) > val()  # more parameters D
    assert val(head=head + 1) > val()
    assert val(n_train=4 * n) == pytest.approx(val() / 2, rel=1e-12)  # 1/sqrt(N)
    assert val("asym") <= val("lora")
    for chained, plain in (("cola", "lora"), ("rac", "asym"), ("c3la", "cla"), ("rc3la", "rcla")):
        if chained in ("c3la", "rc3la") and k * r > inn + 8:
            continue
        assert val(chained, False) == pytest.approx(math.sqrt(k) * val(plain, False), rel=1e-12)


@pytest.mark.parametrize("kwargs, option", [
    (dict(n_train=0), "--n"), (dict(n_train=-3), "--n"), (dict(sigma=0.0), "--sigma"),
    (dict(sigma=-1.0), "--sigma"), (dict(q=0), "--q"), (dict(q=-8), "--q"),
])
def test_bad_input_is_a_one_line_error_naming_the_option(kwargs, option):
    with pytest.raises(GenboundError) as err:
        method_bound("lora", BoundConfig(**{**ROBERTA, **kwargs}))
    assert option in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(GenboundError):
        mi_gap_bound(10, kwargs.get("q", 32), kwargs.get("sigma", 0.5), kwargs.get("n_train", 10))


def test_layer_syntax():
    assert parse_layers("768x768*24") == [(768, 768)] * 24
    assert parse_layers("128x64, 128x128") == [(128, 64), (128, 128)]
    assert parse_layers([[5, 3], "2x2*2"]) == [(5, 3), (2, 2), (2, 2)]
    for bad in ("768by768", "0x5", "", "3x3*0"):
        with pytest.raises(GenboundError):
            parse_layers(bad)


def test_json_config(tmp_path):
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({"layers": "384x384*12", "rank": 16, "n": 1558, "head": 1925, "loss": "ce",
                                "clip": 2.0}))
    cfg = load_config(str(path))
    assert cfg.sigma == 1.0 and cfg.head == 1925 and len(cfg.layers) == 12
    path.write_text(json.dumps({"layers": "384x384", "rank": 16}))
    with pytest.raises(GenboundError, match="--n"):
        load_config(str(path))
    with pytest.raises(GenboundError, match="preset"):
        load_config(str(tmp_path / "missing.json"))


def test_checkpoint_metadata_missing_quantities_name_the_option():
    meta = SimpleNamespace(layers=[SimpleNamespace(out_features=4, in_features=4)], rank=2, chain=1, n_train=100,
                           dtype="float32", params={"head": 10, "total": 100}, num_labels=2, head_in_features=4,
                           shapes=lambda: [(4, 4)])
    assert config_from_meta(meta).q == 32
    for field, value, option in (("n_train", None, "--n"), ("dtype", None, "--q"), ("dtype", "weird", "--q"),
                                 ("rank", None, "--rank"), ("layers", [], "--layers")):
        bad = SimpleNamespace(**{**meta.__dict__, field: value})
        with pytest.raises(GenboundError, match=option):
            config_from_meta(bad)
    assert config_from_meta(SimpleNamespace(**{**meta.__dict__, "n_train": None}), n=7).n_train == 7


def test_exports_have_the_table1_layout():
    rep = report_for_config(load_config("roberta-base"), include_head=False)
    md = to_markdown([rep])
    assert md.count("\n| ") == len(METHODS) + 1 - 1 and "42.23" in md and "yes (>= 1)" in md
    tex = to_latex([rep])
    assert r"\toprule" in tex and r"\bottomrule" in tex and tex.count(r"\\") >= 12 and "42.23" in tex
    assert r"\checkmark" in tex and r"\times" in tex
