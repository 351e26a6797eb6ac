"""Build once: every read-side command builds each source's model once and loads its data once, on genbound
checkpoints and peft adapters, classifiers and causal LMs alike (the run context owns the builds; these counts
pin it). A model build is a ``Backbone.build`` (genbound's mlp and every model folder) or a transformers
``from_pretrained`` of a model; a data load is a ``DatasetSpec.load`` (tokenization included)."""

from __future__ import annotations

import json

import pytest

from genbound.cli import main
from genbound.models.tinymodels import make_causal_lm, make_pairs_csv, make_text_model, make_texts_jsonl

MAX_LEN = 10


def _counters(monkeypatch) -> dict[str, int]:
    import transformers

    from genbound.data.datasets import DatasetSpec, FileDatasetSpec
    from genbound.models.backbones import Backbone

    counts = {"build": 0, "from_pretrained": 0, "load": 0}

    def wrap(owner, name, key, classmethod_=False):
        original = getattr(owner, name)
        if classmethod_:
            func = original.__func__

            def wrapper(cls, *a, **k):
                counts[key] += 1
                return func(cls, *a, **k)

            monkeypatch.setattr(owner, name, classmethod(wrapper))
        else:
            def wrapper(self, *a, **k):
                counts[key] += 1
                return original(self, *a, **k)

            monkeypatch.setattr(owner, name, wrapper)

    wrap(Backbone, "build", "build")
    wrap(DatasetSpec, "load", "load")
    wrap(FileDatasetSpec, "load", "load")
    wrap(transformers.PreTrainedModel, "from_pretrained", "from_pretrained", classmethod_=True)
    return counts


@pytest.fixture(scope="module")
def sources(tmp_path_factory, ckpt_dir):
    """A genbound mlp checkpoint, a genbound GPT-2 causal-LM checkpoint and a peft adapter on a tiny BERT."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    root = tmp_path_factory.mktemp("builds")
    gpt2 = make_causal_lm(root / "gpt2", "gpt2")
    texts = make_texts_jsonl(root / "texts.jsonl", n=30)
    lm = root / "lm-run"
    assert main(["train", "--method", "lora", "--task", "causal-lm", "--backbone", str(gpt2), "--dataset",
                 str(texts), "--max-length", str(MAX_LEN), "--steps", "2", "--rank", "2", "--out", str(lm),
                 "--no-progress"]) == 0
    bert = make_text_model(root / "bert", "bert")
    pairs = make_pairs_csv(root / "pairs.csv", n=60)
    base = AutoModelForSequenceClassification.from_pretrained(str(bert), local_files_only=True)
    pm = get_peft_model(base, LoraConfig(r=2, lora_alpha=4, target_modules=["query", "value"],
                                         task_type="SEQ_CLS"))
    pm.save_pretrained(str(root / "adapter"))
    return {
        "mlp": [str(ckpt_dir("lora"))],
        "causal-lm": [str(lm)],
        "peft": [str(root / "adapter"), "--backbone", str(bert), "--dataset", str(pairs), "--text-columns",
                 "s1,s2", "--max-length", str(MAX_LEN)],
    }


COMMANDS = {
    "evaluate": [],
    "bounds": ["--no-progress"],
    "hessian": ["--top-k", "1", "--max-steps", "8", "--samples", "16", "--no-progress"],
    "landscape": ["--dims", "1", "--grid", "3", "--samples", "16", "--no-progress"],
    "spectra": [],
}


@pytest.mark.parametrize("kind", ["mlp", "causal-lm", "peft"])
@pytest.mark.parametrize("command", list(COMMANDS))
def test_one_build_and_one_load_per_command(sources, monkeypatch, capsys, command, kind):
    given = sources[kind][:3] if command == "spectra" else sources[kind]  # spectra reads factors: no data
    argv = [command, *given, *COMMANDS[command], "--json"]
    counts = _counters(monkeypatch)
    capsys.readouterr()
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 0, err
    json.loads(out)
    builds = counts["build"] if kind == "mlp" else counts["from_pretrained"]
    if command == "spectra":  # factors and W0 from the files: nothing built, nothing loaded
        assert builds == 0 and counts["load"] == 0, counts
        return
    assert builds == 1, counts
    assert counts["load"] == 1, counts


@pytest.mark.parametrize("kind", ["mlp", "causal-lm"])
def test_compare_builds_each_backbone_once(sources, monkeypatch, capsys, kind):
    src = sources[kind][0]
    counts = _counters(monkeypatch)
    code = main(["compare", src, src, "--json"])
    _, err = capsys.readouterr()
    assert code == 0, err
    builds = counts["build"] if kind == "mlp" else counts["from_pretrained"]
    assert builds <= 1 and counts["load"] <= 1, counts
