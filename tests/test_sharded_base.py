"""A base model saved in shards (model.safetensors.index.json + model-0000N-of-0000M.safetensors, as transformers'
``save_pretrained`` writes any model over its ``max_shard_size``): every 7 B base on the Hub is stored so.

The sharded folder is made by transformers itself from a single-file one; genbound must read it as the same
model: the same W0 of every adapted layer (memory-mapped from the shard that holds it), the same intruder
scores, the same built model, a fingerprint over every shard, and one-line refusals of an index that points
outside its folder, at a missing shard, or at the wrong one.
"""

from __future__ import annotations

import io
import json
import shutil
import sys
from contextlib import redirect_stdout
from pathlib import Path

import pytest
import torch

from genbound.cli import main
from genbound.core.errors import GenboundError
from genbound.core.readers import LazyTensors, model_header
from genbound.models.backbones import get_backbone
from genbound.sources.source import load_source

sys.path.insert(0, str(Path(__file__).resolve().parent))

from llama_files import write_llama_base, write_lora_adapter  # noqa: E402

MODS = {f"model.layers.{i}.self_attn.{p}": (64 if p == "q_proj" else 32, 64)
        for i in (0, 1) for p in ("q_proj", "v_proj")}


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("sharded")
    single = write_llama_base(root / "single", hidden=64, layers=2, ffn=128, heads=4, kv=2)
    sharded = root / "sharded"
    model = AutoModelForCausalLM.from_pretrained(str(single), dtype=torch.bfloat16, local_files_only=True)
    model.save_pretrained(sharded, max_shard_size="100KB")  # transformers' own sharding
    for f in single.iterdir():
        if f.name.startswith("tokenizer") or f.name.endswith(".txt"):
            shutil.copy(f, sharded / f.name)
    adapter = write_lora_adapter(root / "adapter", single, MODS, r=4, alpha=8.0)
    return single, sharded, adapter


def test_transformers_wrote_shards_and_genbound_reads_them_as_the_single_file(bases):
    single, sharded, _ = bases
    assert not (sharded / "model.safetensors").exists()
    shards = sorted(sharded.glob("model-*-of-*.safetensors"))
    assert len(shards) >= 2 and (sharded / "model.safetensors.index.json").is_file()
    a, b = get_backbone(str(single)), get_backbone(str(sharded))
    assert b.weights.name == "model.safetensors.index.json"
    ha, hb = model_header(a.weights), model_header(b.weights)
    assert set(ha) == set(hb) and {info["file"] for info in hb.values()} == set(shards)
    assert all(ha[k]["shape"] == hb[k]["shape"] for k in ha)
    assert b.summary()["weights_bytes"] == sum(f.stat().st_size for f in shards)


def test_w0_and_intruders_from_shards_equal_the_single_file(bases):
    single, sharded, adapter = bases
    wa = load_source(adapter, str(single)).base_weights()
    wb = load_source(adapter, str(sharded)).base_weights()
    assert isinstance(wb, LazyTensors)
    for name in wa:
        assert torch.equal(wa[name], wb[name])
        assert torch.equal(wb.as_stored()[name].float(), wa[name])  # a view on the shard's mapping
    outs = []
    for base in (single, sharded):
        buf = io.StringIO()
        with redirect_stdout(buf):
            assert main(["spectra", str(adapter), "--backbone", str(base), "--intruders", "--json"]) == 0
        outs.append({lay["name"]: lay["scores"] for lay in json.loads(buf.getvalue())["intruders"]["layers"]})
    assert outs[0] == outs[1]


def test_the_built_model_is_the_same(bases):
    single, sharded, _ = bases
    ma = get_backbone(str(single), task="causal-lm").build(2, 0)
    mb = get_backbone(str(sharded), task="causal-lm").build(2, 0)
    sa, sb = ma.state_dict(), mb.state_dict()
    assert set(sa) == set(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_the_fingerprint_covers_every_shard(bases, tmp_path):
    _, sharded, _ = bases
    copy = tmp_path / "copy"
    shutil.copytree(sharded, copy)
    before = get_backbone(str(copy)).fingerprint
    assert before == get_backbone(str(sharded)).fingerprint  # content, not place
    last = sorted(copy.glob("model-*-of-*.safetensors"))[-1]
    raw = bytearray(last.read_bytes())
    raw[-1] ^= 1  # one bit of the last tensor of the last shard
    last.write_bytes(bytes(raw))
    assert get_backbone(str(copy)).fingerprint != before


def _index(folder: Path) -> dict:
    return json.loads((folder / "model.safetensors.index.json").read_text())


@pytest.mark.parametrize("damage, message", [
    ("outside", "not a .safetensors file beside the index"),
    ("missing", "is missing or not a regular file"),
    ("moved", "the index is stale"),
    ("empty", "no 'weight_map'"),
])
def test_a_bad_index_is_one_line_naming_it(bases, tmp_path, capsys, damage, message):
    _, sharded, adapter = bases
    bad = tmp_path / "bad"
    shutil.copytree(sharded, bad)
    index = _index(bad)
    key = next(iter(index["weight_map"]))
    shards = sorted({*index["weight_map"].values()})
    if damage == "outside":
        index["weight_map"][key] = "../" + index["weight_map"][key]
    elif damage == "missing":
        (bad / shards[-1]).unlink()
    elif damage == "moved":  # the index says another shard holds it
        index["weight_map"][key] = next(s for s in shards if s != index["weight_map"][key])
    else:
        index["weight_map"] = {}
    (bad / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(GenboundError, match=message):
        get_backbone(str(bad)).summary()
        model_header(get_backbone(str(bad)).weights)
    code = main(["spectra", str(adapter), "--backbone", str(bad), "--intruders", "--json"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and message in err
